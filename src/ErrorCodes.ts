/**
 * The error codes a node reports to a client, with their HTTP status and meaning: the plain
 * table that src/Errors.ts builds ApiError on and that the client (src/client/) reads. It
 * imports nothing, so the client carries no server dependency (effect) into a browser.
 */

/** Codes, their HTTP status, and what each means (the docs table is checked against this). */
export const errorCodes = {
  bad_request: { status: 400, meaning: "malformed key, parameter, header, body or context" },
  unauthorized: { status: 401, meaning: "a token is required and was missing or wrong" },
  not_found: { status: 404, meaning: "no value for the key (X-Context is sent if a delete is stored), or no such route" },
  method_not_allowed: { status: 405, meaning: "the path exists but not with this method; the Allow header lists the methods it answers" },
  too_many_siblings: { status: 409, meaning: "the key holds too many concurrent versions; read it and write back one value with its X-Context" },
  value_too_large: { status: 413, meaning: "the value, or the object with its siblings, is over the limit" },
  quorum_not_met: { status: 503, meaning: "fewer replicas answered than r or w require; carries `needed` and `got`" },
  not_joined: { status: 503, meaning: "this node is not yet a ring member (no seed has accepted it): nothing was written; use another node or wait" },
  storage_error: { status: 503, meaning: "this node's storage failed (I/O error, damaged record, engine stopped); retry on another node" },
  unavailable: { status: 503, meaning: "the node is shutting down, or its storage has more writes waiting than it accepts; retry shortly" },
  timeout: { status: 504, meaning: "the replicas did not answer within `timeout` ms" },
  disk_full: { status: 507, meaning: "a replica's disk is full; nothing was written there" },
  internal_error: { status: 500, meaning: "a bug: no input should cause it; please report it with the node's log" }
} as const

/** A stable error code. */
export type ErrorCode = keyof typeof errorCodes

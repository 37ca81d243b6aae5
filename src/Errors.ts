/**
 * Every error a node reports to a client: one definition site, a stable code, an HTTP
 * status, documented in docs/api.md (test/api/errors-doc.test.ts fails when they differ).
 * Engine errors are mapped here too, so no storage failure reaches a client as a 500.
 */
import { Schema } from "effect"
import type { EngineError } from "../engine/Errors.ts"

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

/** An error a client sees: `{"error": code, "message": ..., ...details}` with the code's status. */
export class ApiError extends Schema.TaggedError<ApiError>()("ApiError", {
  code: Schema.Literals(Object.keys(errorCodes) as [ErrorCode, ...ErrorCode[]]),
  message: Schema.String,
  needed: Schema.optional(Schema.Number),
  got: Schema.optional(Schema.Number)
}) {
  get status(): number {
    return errorCodes[this.code].status
  }

  /** The JSON body. */
  toBody(): Record<string, unknown> {
    const body: Record<string, unknown> = { error: this.code, message: this.message }
    if (this.needed !== undefined) body.needed = this.needed
    if (this.got !== undefined) body.got = this.got
    return body
  }
}

/** Shorthand constructor. */
export const apiError = (code: ErrorCode, message: string, extra?: { needed?: number; got?: number }): ApiError =>
  new ApiError({ code, message, ...extra })

/** What a client sees for an engine failure. */
export const fromEngineError = (e: EngineError): ApiError => {
  switch (e._tag) {
    case "InvalidKey":
      return apiError("bad_request", e.message)
    case "ValueTooLarge":
      return apiError("value_too_large", e.message)
    case "DiskFull":
      return apiError("disk_full", e.message)
    case "Overloaded":
      return apiError("unavailable", e.message)
    case "IoError":
    case "CorruptRecord":
    case "EngineClosed":
    case "DataDirLocked":
    case "StorageFailed":
    case "UnknownFormat":
    case "CorruptFile":
    case "SnapshotRequired":
      return apiError("storage_error", e.message)
  }
}

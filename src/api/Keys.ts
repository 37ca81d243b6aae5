/**
 * `GET /kv?prefix=&limit=&cursor=`: one page of the cluster's live keys, in UTF-8 byte order,
 * by a coverage query (src/keys/KeyListing.ts). The cursor is opaque to clients: the last key
 * of the page and the prefix it was listed with, so a page never repeats or skips a key that
 * existed throughout, whatever node serves the next page. Expensive (every page reads one
 * replica of every partition): for operators and batch jobs, documented so in docs/api.md.
 */
import { Cause, Exit } from "effect"
import type { FastifyInstance, FastifyReply } from "fastify"
import { ApiError, apiError } from "../Errors.ts"
import { type KeyPage, type ListQuery, MAX_PAGE_KEYS } from "../keys/KeyListing.ts"
import { errorResponses, SECURED } from "./OpenApi.ts"
import { MAX_TIMEOUT_MS } from "./Request.ts"

/** Keys per page when the request does not say. */
export const DEFAULT_PAGE_KEYS = 1000

/** Longest cursor accepted: a 1024-byte key and a 1024-byte prefix, JSON-escaped, in base64url. */
const MAX_CURSOR = 16_384

/** The query string of GET /kv (the route's schema; docs/api.md states it). */
export const LIST_QUERY_SCHEMA = {
  type: "object",
  additionalProperties: false,
  properties: {
    prefix: { type: "string", maxLength: 1024, description: "only keys that start with this (default: every key)" },
    limit: { type: "string", pattern: "^[1-9][0-9]{0,4}$", description: `keys per page, 1..${MAX_PAGE_KEYS} (default ${DEFAULT_PAGE_KEYS})` },
    cursor: { type: "string", pattern: `^[A-Za-z0-9_-]{1,${MAX_CURSOR}}$`, description: "the `cursor` of the previous page, with the same prefix" },
    timeout: { type: "string", pattern: "^[1-9][0-9]{0,6}$", description: `ms to wait for the replicas, 1..${MAX_TIMEOUT_MS} (default 10000)` }
  }
} as const

/** The answer's schema. */
export const KEY_PAGE_SCHEMA = {
  type: "object",
  required: ["keys", "cursor"],
  properties: {
    keys: { type: "array", items: { type: "string" }, description: "live keys in UTF-8 byte order; tombstoned keys are left out" },
    cursor: { type: ["string", "null"], description: "pass it as `cursor` for the next page; null on the last page" }
  }
} as const

interface ListQueryString {
  readonly prefix?: string
  readonly limit?: string
  readonly cursor?: string
  readonly timeout?: string
}

interface Cursor {
  readonly prefix: string
  readonly after: string
}

/** The opaque cursor after `after`, for a listing of `prefix`. */
export const encodeCursor = (c: Cursor): string => Buffer.from(JSON.stringify({ v: 1, p: c.prefix, a: c.after }), "utf8").toString("base64url")

/** A cursor this API made, or undefined. */
export const decodeCursor = (s: string): Cursor | undefined => {
  let v: unknown
  try {
    v = JSON.parse(Buffer.from(s, "base64url").toString("utf8"))
  } catch {
    return undefined
  }
  const x = v as { v?: unknown; p?: unknown; a?: unknown } | null
  if (typeof x !== "object" || x === null || x.v !== 1 || typeof x.p !== "string" || typeof x.a !== "string") return undefined
  if (!x.a.startsWith(x.p) || Buffer.byteLength(x.a, "utf8") > 1024 || !x.a.isWellFormed()) return undefined
  return { prefix: x.p, after: x.a }
}

/** What the route needs from the node. */
export interface KeysDeps {
  /** Runs one page of a coverage query. */
  readonly list: (q: ListQuery) => Promise<Exit.Exit<KeyPage, ApiError>>
  /** The request timeout when the query does not give one, ms. */
  readonly defaultTimeoutMs: () => number
}

const sendError = (reply: FastifyReply, e: ApiError) => reply.code(e.status).type("application/json").send(e.toBody())

const HINT = `query parameters are prefix, limit (1..${MAX_PAGE_KEYS}), cursor (from the previous page) and timeout (ms)`

/** Parses a request's query into a page to list, or the 400 that says what to send instead. */
export const parseListQuery = (q: ListQueryString, defaultTimeoutMs: number): ListQuery | ApiError => {
  const prefix = q.prefix ?? ""
  if (!prefix.isWellFormed()) return apiError("bad_request", "prefix is not valid UTF-8")
  if (Buffer.byteLength(prefix, "utf8") > 1024) return apiError("bad_request", "prefix is longer than a key (1024 bytes of UTF-8)")
  const limit = q.limit === undefined ? DEFAULT_PAGE_KEYS : Number(q.limit)
  if (limit > MAX_PAGE_KEYS) return apiError("bad_request", `limit=${limit} is over ${MAX_PAGE_KEYS}; page through with cursor instead`)
  const timeoutMs = q.timeout === undefined ? defaultTimeoutMs : Number(q.timeout)
  if (timeoutMs > MAX_TIMEOUT_MS) return apiError("bad_request", `timeout=${timeoutMs} is over the ${MAX_TIMEOUT_MS} ms limit`)
  let after: string | undefined
  if (q.cursor !== undefined) {
    const c = decodeCursor(q.cursor)
    if (c === undefined) return apiError("bad_request", "cursor is malformed: send back exactly the cursor of the previous page")
    if (c.prefix !== prefix) return apiError("bad_request", `the cursor belongs to a listing of prefix ${JSON.stringify(c.prefix)}, not ${JSON.stringify(prefix)}: send the same prefix with it`)
    after = c.after
  }
  return { prefix, after, limit, timeoutMs }
}

/** Registers GET /kv on `app`. */
export const registerKeys = (app: FastifyInstance, deps: KeysDeps): void => {
  app.get<{ Querystring: ListQueryString }>("/kv", {
    attachValidation: true,
    config: { op: "keys" },
    schema: {
      summary: "List keys (expensive: a coverage query over every partition)",
      description: "One page of the cluster's live keys in UTF-8 byte order, read from one replica of every partition (r=1). For operators and batch jobs, not request paths. Page with `cursor`.",
      tags: ["kv"],
      security: SECURED,
      querystring: LIST_QUERY_SCHEMA,
      response: {
        200: { description: "a page of keys; `cursor` is null on the last page", ...KEY_PAGE_SCHEMA },
        ...errorResponses(["unauthorized", "quorum_not_met", "not_joined", "timeout"])
      }
    }
  }, async (req, reply) => {
    if (req.validationError !== undefined) return sendError(reply, apiError("bad_request", `invalid request: ${req.validationError.message}; ${HINT}`))
    const q = parseListQuery(req.query, deps.defaultTimeoutMs())
    if (q instanceof ApiError) return sendError(reply, q)
    const exit = await deps.list(q)
    if (Exit.isFailure(exit)) {
      const failure = exit.cause.reasons.find(Cause.isFailReason)
      if (failure !== undefined) return sendError(reply, failure.error)
      if (exit.cause.reasons.every(Cause.isInterruptReason)) return sendError(reply, apiError("unavailable", "the node is shutting down; retry on another node"))
      throw Cause.squash(exit.cause)
    }
    const page = exit.value
    const last = page.keys.at(-1)
    return reply.code(200).type("application/json").send({ keys: page.keys, cursor: page.more && last !== undefined ? encodeCursor({ prefix: q.prefix, after: last }) : null })
  })
}

/**
 * Reading a client request into what the coordinator needs: the key, the quorum options and
 * the causal context, each checked with an error that says what to send instead. Fastify's
 * schema (QUERY_SCHEMA) rejects malformed parameters; these functions check what a schema
 * cannot (r and w against N, key length in bytes, the context's encoding).
 */
import type { Quorum } from "../coordinator/Coordinator.ts"
import { apiError, type ApiError } from "../Errors.ts"
import * as Dvv from "../versions/Dvv.ts"

/** The query string every /kv route accepts. */
export const QUERY_SCHEMA = {
  type: "object",
  additionalProperties: false,
  properties: {
    r: { type: "string", pattern: "^([1-9][0-9]{0,2}|quorum|all)$" },
    w: { type: "string", pattern: "^([1-9][0-9]{0,2}|quorum|all)$" },
    sloppy: { type: "string", enum: ["true", "false"] },
    timeout: { type: "string", pattern: "^[1-9][0-9]{0,6}$" }
  }
} as const

/** The query string after schema validation. */
export interface KvQuery {
  readonly r?: string
  readonly w?: string
  readonly sloppy?: "true" | "false"
  readonly timeout?: string
}

/** Longest timeout a request may ask for, in ms. */
export const MAX_TIMEOUT_MS = 600_000

/** Defaults that apply when a request does not say. */
export interface RequestDefaults {
  readonly n: number
  readonly r: number
  readonly w: number
  readonly timeoutMs: number
}

/** A key from the path: 1 to 1024 bytes of UTF-8. */
export const parseKey = (key: unknown): string | ApiError => {
  if (typeof key !== "string" || key.length === 0) return apiError("bad_request", "the key is empty; keys are 1 to 1024 bytes of UTF-8, URL-encoded in the path")
  if (!key.isWellFormed()) return apiError("bad_request", "the key is not valid UTF-8")
  const bytes = Buffer.byteLength(key, "utf8")
  if (bytes > 1024) return apiError("bad_request", `the key is ${bytes} bytes of UTF-8; the limit is 1024`)
  return key
}

const count = (name: "r" | "w", raw: string | undefined, fallback: number, n: number): number | ApiError => {
  if (raw === undefined) return Math.min(fallback, n)
  if (raw === "quorum") return Math.floor(n / 2) + 1
  if (raw === "all") return n
  const v = Number(raw)
  if (v > n) return apiError("bad_request", `${name}=${v} is more than the ${n} replicas of a key (N); use 1..${n}, quorum or all`)
  return v
}

/** The quorum of a read (`which` = "r") or a write ("w"). */
export const parseQuorum = (which: "r" | "w", q: KvQuery, d: RequestDefaults): Quorum | ApiError => {
  const c = count(which, q[which], d[which], d.n)
  if (typeof c !== "number") return c
  const timeoutMs = q.timeout === undefined ? d.timeoutMs : Number(q.timeout)
  if (timeoutMs > MAX_TIMEOUT_MS) return apiError("bad_request", `timeout=${timeoutMs} is over the ${MAX_TIMEOUT_MS} ms limit`)
  return { count: c, sloppy: q.sloppy !== "false", timeoutMs }
}

/** The X-Context header: absent means "concurrent with everything stored". */
export const parseContext = (header: string | string[] | undefined): Dvv.Context | ApiError => {
  if (header === undefined || header === "") return { vector: new Map(), dots: [] }
  if (Array.isArray(header)) return apiError("bad_request", "send X-Context once")
  const c = Dvv.decodeContext(header.trim())
  return c ?? apiError("bad_request", "X-Context is malformed: send back exactly the X-Context a read or write returned")
}

/** A content type to store: the request's, or application/octet-stream. */
export const parseContentType = (header: string | undefined): string | ApiError => {
  if (header === undefined || header === "") return "application/octet-stream"
  if (header.length > 255) return apiError("bad_request", "Content-Type is longer than 255 characters")
  return header
}

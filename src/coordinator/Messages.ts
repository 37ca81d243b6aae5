/**
 * The internode messages of the data path, as they travel in transport frames (msgpack).
 * A replicated write carries the key's encoded object: the very bytes the engine stores, so
 * a write is one shape from coordinator to replica, into a parked handoff log, and out again.
 */
import type { ErrorCode } from "../Errors.ts"
import { NODE_ID } from "../versions/Dvv.ts"

/**
 * Store (merge) an object; with `hint`, park it for that absent owner instead. A copy of a
 * forwarded write carries its request id and write context (`rid`, `ctx`): the receiver then
 * recognises a retry of that write sent to it, and answers it without a second version.
 */
export interface PutMessage {
  readonly t: "put"
  readonly key: string
  readonly object: Uint8Array
  readonly hint?: string
  readonly rid?: string
  readonly ctx?: string
}
/** Read an object; with `hint`, from what is parked for that owner. */
export interface GetMessage { readonly t: "get"; readonly key: string; readonly hint?: string }
/**
 * A client write forwarded to a node in the key's preference list, which coordinates it.
 * `rid` is the same on every attempt of one client request: a primary coordinates it once.
 */
export interface CoordMessage {
  readonly t: "coord"
  readonly rid?: string
  readonly key: string
  readonly context: string
  readonly sibling: Uint8Array
  readonly w: number
  readonly sloppy: boolean
  readonly timeoutMs: number
}
/** Parked writes delivered to their owner (Handoff.ts builds these). */
export interface HandoffMessage { readonly t: "handoff"; readonly records: ReadonlyArray<{ readonly key: string; readonly object: Uint8Array }> }

export type DataMessage = PutMessage | GetMessage | CoordMessage | HandoffMessage

/** Replies. */
export type DataReply =
  | { readonly t: "ok" }
  | { readonly t: "obj"; readonly object: Uint8Array | null }
  | { readonly t: "coorded"; readonly context: string; readonly object: Uint8Array }
  | { readonly t: "apierr"; readonly code: ErrorCode; readonly message: string; readonly needed?: number; readonly got?: number }

const str = (v: unknown): v is string => typeof v === "string"
const optStr = (v: unknown, max: number) => v === undefined || v === null || (str(v) && v.length <= max)
const bytes = (v: unknown): v is Uint8Array => v instanceof Uint8Array
/** A hint names the node a copy is parked for: a node id (it names a directory), or none. */
const hint = (v: unknown) => v === undefined || v === null || (str(v) && NODE_ID.test(v))
/** Longest key in UTF-16 units a key of at most 1024 UTF-8 bytes can have. */
const MAX_KEY_CHARS = 1024
const key = (v: unknown): v is string => str(v) && v.length >= 1 && v.length <= MAX_KEY_CHARS
/** A forwarded write's timeout: not negative, and at most a day (setTimeout's range is 24.8 days). */
const MAX_TIMEOUT_MS = 86_400_000

/**
 * Checks an untrusted payload is a data message: keys of 1 to 1024 characters, hints that are
 * node ids, quorums 1..64, timeouts within a day. Whether a hint names a ring member is the
 * coordinator's check; objects are decoded (and bounded, Dvv.MAX_COUNTER) where they are used.
 * Hand-written rather than a Schema: it runs on every replicated write.
 */
export const isDataMessage = (m: unknown): m is DataMessage => {
  const x = m as Record<string, unknown> | null
  if (typeof x !== "object" || x === null) return false
  switch (x.t) {
    case "put":
      return key(x.key) && bytes(x.object) && hint(x.hint) && optStr(x.rid, 200) && optStr(x.ctx, 1 << 20)
    case "get":
      // "*": a fallback's read of everything it holds parked under the key, for any owner.
      return key(x.key) && (x.hint === "*" || hint(x.hint))
    case "coord":
      return key(x.key) && str(x.context) && bytes(x.sibling) && Number.isInteger(x.w) && (x.w as number) >= 1 && (x.w as number) <= 64 &&
        typeof x.sloppy === "boolean" && Number.isInteger(x.timeoutMs) && (x.timeoutMs as number) >= 0 && (x.timeoutMs as number) <= MAX_TIMEOUT_MS && optStr(x.rid, 200)
    case "handoff":
      return Array.isArray(x.records) && x.records.every((r: { key?: unknown; object?: unknown }) => key(r?.key) && bytes(r.object))
    default:
      return false
  }
}

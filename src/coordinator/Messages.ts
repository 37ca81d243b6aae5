/**
 * The internode messages of the data path, as they travel in transport frames (msgpack).
 * A replicated write carries the key's encoded object: the very bytes the engine stores, so
 * a write is one shape from coordinator to replica, into a parked handoff log, and out again.
 */
import type { ErrorCode } from "../Errors.ts"

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

/** Checks an untrusted payload is a data message. */
export const isDataMessage = (m: unknown): m is DataMessage => {
  const x = m as Record<string, unknown> | null
  if (typeof x !== "object" || x === null) return false
  switch (x.t) {
    case "put":
      return str(x.key) && bytes(x.object) && (x.hint === undefined || x.hint === null || str(x.hint)) && optStr(x.rid, 200) && optStr(x.ctx, 1 << 20)
    case "get":
      return str(x.key) && (x.hint === undefined || x.hint === null || str(x.hint))
    case "coord":
      return str(x.key) && str(x.context) && bytes(x.sibling) && Number.isInteger(x.w) && typeof x.sloppy === "boolean" && Number.isInteger(x.timeoutMs) && optStr(x.rid, 200)
    case "handoff":
      return Array.isArray(x.records) && x.records.every((r: { key?: unknown; object?: unknown }) => str(r?.key) && bytes(r.object))
    default:
      return false
  }
}

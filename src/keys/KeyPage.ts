/**
 * The internode message of a key listing: one node asked for one page of the live keys it
 * holds in some partitions (those a coverage plan gave it, KeyListing.ts), and its answer.
 * Keys are ordered by code point, which is UTF-8 byte order, the same on every node; a page
 * holds the first `limit` keys after `after`. Both directions are checked before use: a
 * request that is not this shape is refused, an answer that is not one is not merged.
 */
import { MAX_PARTITIONS } from "../ring/Ring.ts"

/** Most keys one page may ask for. */
export const MAX_PAGE_KEYS = 10_000
/** Longest key, in UTF-16 code units (1024 bytes of UTF-8 are at most 1024 code units). */
const MAX_KEY_CHARS = 1024

/** Asks for the first `limit` live keys with `prefix`, after `after` (exclusive), of `partitions`. */
export interface KeyPageRequest {
  readonly t: "keys-page"
  readonly partitions: ReadonlyArray<number>
  readonly prefix: string
  /** null: from the first key. */
  readonly after: string | null
  readonly limit: number
}

/** The page: sorted, at most `limit` keys; `more` when the partitions hold further keys. */
export interface KeyPageReply {
  readonly t: "keys-page"
  readonly keys: ReadonlyArray<string>
  readonly more: boolean
}

/** The asked node could not list (its storage failed). */
export interface KeyPageError {
  readonly t: "keys-err"
  readonly message: string
}

/**
 * Code point order (UTF-8 byte order). JavaScript's `<` compares UTF-16 code units, which puts
 * characters above U+FFFF (surrogate pairs) before U+E000..U+FFFF; this puts them after.
 */
export const compareKeys = (a: string, b: string): number => {
  const n = Math.min(a.length, b.length)
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i)
    const y = b.charCodeAt(i)
    if (x === y) continue
    const xs = x >= 0xd800 && x <= 0xdfff
    const ys = y >= 0xd800 && y <= 0xdfff
    if (xs !== ys) return xs ? 1 : -1
    return x - y
  }
  return a.length - b.length
}

const keyLike = (v: unknown): v is string => typeof v === "string" && v.length <= MAX_KEY_CHARS

/** Checks an untrusted payload is a key page request. */
export const isKeyPageRequest = (m: unknown): m is KeyPageRequest => {
  const x = m as Record<string, unknown> | null
  if (typeof x !== "object" || x === null || x.t !== "keys-page") return false
  const ps = x.partitions
  return Array.isArray(ps) && ps.length > 0 && ps.length <= MAX_PARTITIONS && ps.every((p) => Number.isInteger(p) && p >= 0 && p < MAX_PARTITIONS) &&
    new Set(ps).size === ps.length &&
    keyLike(x.prefix) &&
    (x.after === null || keyLike(x.after)) &&
    Number.isInteger(x.limit) && (x.limit as number) >= 1 && (x.limit as number) <= MAX_PAGE_KEYS
}

/**
 * Whether `r` answers `req`: at most `limit` keys, strictly ascending, each with the prefix and
 * after `after`. Anything else (another node's bug, or a hostile one) is not merged.
 */
export const isKeyPageReply = (r: unknown, req: KeyPageRequest): r is KeyPageReply => {
  const x = r as Record<string, unknown> | null
  if (typeof x !== "object" || x === null || x.t !== "keys-page" || typeof x.more !== "boolean" || !Array.isArray(x.keys)) return false
  const keys = x.keys as unknown[]
  if (keys.length > req.limit) return false
  let prev = req.after
  for (const k of keys) {
    if (!keyLike(k) || !k.startsWith(req.prefix)) return false
    if (prev !== null && compareKeys(k, prev) <= 0) return false
    prev = k
  }
  return true
}

/**
 * The benchmark's data set, the same for every store: 16-byte keys (16 hex characters,
 * spread uniformly) and 1 KiB incompressible values. Key i is unique for i < 2^32.
 */
import { randomBytes } from "node:crypto"

/** Bytes of a key (16 one-byte characters). */
export const KEY_BYTES = 16
/** Bytes of a value. */
export const VALUE_BYTES = 1024

/** lowbias32: a bijection on 32-bit integers, so distinct i give distinct keys. */
const mix32 = (x: number): number => {
  x ^= x >>> 16
  x = Math.imul(x, 0x7feb352d)
  x ^= x >>> 15
  x = Math.imul(x, 0x846ca68b)
  x ^= x >>> 16
  return x >>> 0
}

const scratch = Buffer.alloc(8)

/** Key number i: a fresh flat one-byte string of 16 hex characters. */
export const keyOf = (i: number): string => {
  scratch.writeUInt32BE(mix32(i), 0)
  scratch.writeUInt32BE(mix32(i ^ 0x5bd1e995), 4)
  return scratch.toString("hex")
}

/** Random bytes the values are cut from, so no store can compress them. */
const POOL = randomBytes(4 * 1024 * 1024)

/** Value number i: 1 KiB view of random bytes (distinct i almost always differ). */
export const valueOf = (i: number): Buffer => {
  const at = mix32(i + 0x9e3779b9) % (POOL.length - VALUE_BYTES)
  return POOL.subarray(at, at + VALUE_BYTES)
}

/** A seeded xorshift32 generator of integers in [0, n). */
export const uniform = (seed: number) => {
  let s = seed >>> 0 || 1
  return (n: number): number => {
    s ^= s << 13
    s >>>= 0
    s ^= s >>> 17
    s ^= s << 5
    s >>>= 0
    return s % n
  }
}

/** `count` fresh key strings drawn uniformly from keys [0, n), the same sequence on every call. */
export const randomKeys = (n: number, count: number, seed = 42): string[] => {
  const next = uniform(seed)
  const out = new Array<string>(count)
  for (let i = 0; i < count; i++) out[i] = keyOf(next(n))
  return out
}

/** A V8 sequential one-byte string: 16-byte header (map, hash, length) + characters, 8-aligned. */
export const stringBytes = (length: number): number => 16 + Math.ceil(length / 8) * 8

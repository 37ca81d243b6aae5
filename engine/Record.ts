/**
 * The on-disk record: the one layout every segment, every hint-less scan and every
 * replication stream shares. Pure encode and decode; nothing here touches a file.
 *
 * Layout (little-endian), a 36-byte header then the body:
 *
 *   offset size field
 *        0    4 crc       CRC-32 (zlib) of bytes [4, end of record)
 *        4    1 magic     0x54 ("T")
 *        5    1 version   1
 *        6    1 type      1 = put, 2 = tombstone (other values reserved)
 *        7    1 flags     0 (reserved; a reader rejects non-zero)
 *        8    8 lsn       per-node log sequence number, u64, < 2^53
 *       16    8 timestamp wall-clock ms when the record was made, u64, < 2^53
 *       24    2 keyLen    1..1024
 *       26    2 reserved  0
 *       28    4 metaLen   opaque metadata length (the node keeps version vectors here)
 *       32    4 valueLen  value length (0 for a tombstone)
 *       36      key, meta, value
 *
 * The checksum covers every header field after itself and the whole body, so a flipped
 * bit anywhere is seen. Length fields are checked against hard bounds before the CRC,
 * which keeps the forward resynchronisation of Recovery.ts cheap and never lets a corrupt
 * length send a reader past the end of the data it holds.
 */
import { crc32 } from "node:zlib"

/** Bytes of the fixed header. */
export const HEADER_SIZE = 36
/** First byte after the CRC: identifies a record start during resynchronisation. */
export const MAGIC = 0x54
/** Format version written by this code. */
export const VERSION = 1
/** Longest key in bytes. */
export const MAX_KEY_BYTES = 1024
/** Hard bound on metadata, whatever the configuration: a larger length field is corrupt. */
export const MAX_META_BYTES = 16 * 1024 * 1024
/** Hard bound on a value, whatever the configuration: a larger length field is corrupt. */
export const MAX_VALUE_BYTES = 256 * 1024 * 1024

/** What a record says about its key. */
export const RecordType = { Put: 1, Tombstone: 2 } as const
export type RecordType = (typeof RecordType)[keyof typeof RecordType]

const isRecordType = (t: number): t is RecordType => t === RecordType.Put || t === RecordType.Tombstone

/** A decoded record. `key`, `meta` and `value` are views into the buffer it came from. */
export interface LogRecord {
  readonly type: RecordType
  readonly lsn: number
  readonly timestamp: number
  readonly key: Uint8Array
  readonly meta: Uint8Array
  readonly value: Uint8Array
}

/** What to write: the record minus the CRC, which encode computes. */
export interface RecordInput {
  readonly type: RecordType
  readonly lsn: number
  readonly timestamp: number
  readonly key: Uint8Array
  readonly meta?: Uint8Array | undefined
  readonly value?: Uint8Array | undefined
}

const EMPTY = new Uint8Array(0)

/** Total encoded size of a record with these body lengths. */
export const encodedSize = (keyLen: number, metaLen: number, valueLen: number): number =>
  HEADER_SIZE + keyLen + metaLen + valueLen

const writeU64 = (buf: Buffer, value: number, at: number): void => {
  buf.writeUInt32LE(value % 0x1_0000_0000, at)
  buf.writeUInt32LE(Math.floor(value / 0x1_0000_0000), at + 4)
}

const readU64 = (buf: Buffer, at: number): number =>
  buf.readUInt32LE(at) + buf.readUInt32LE(at + 4) * 0x1_0000_0000

/** Encodes one record into `out` at `at` (which must have room) and returns its size. */
export const encodeInto = (input: RecordInput, out: Buffer, at: number): number => {
  const meta = input.meta ?? EMPTY
  const value = input.value ?? EMPTY
  const size = encodedSize(input.key.length, meta.length, value.length)
  out[at + 4] = MAGIC
  out[at + 5] = VERSION
  out[at + 6] = input.type
  out[at + 7] = 0
  writeU64(out, input.lsn, at + 8)
  writeU64(out, input.timestamp, at + 16)
  out.writeUInt16LE(input.key.length, at + 24)
  out.writeUInt16LE(0, at + 26)
  out.writeUInt32LE(meta.length, at + 28)
  out.writeUInt32LE(value.length, at + 32)
  let p = at + HEADER_SIZE
  out.set(input.key, p)
  p += input.key.length
  out.set(meta, p)
  p += meta.length
  out.set(value, p)
  out.writeUInt32LE(crc32(out.subarray(at + 4, at + size)), at)
  return size
}

/** Encodes one record into a fresh buffer. */
export const encode = (input: RecordInput): Buffer => {
  const out = Buffer.allocUnsafe(
    encodedSize(input.key.length, input.meta?.length ?? 0, input.value?.length ?? 0)
  )
  encodeInto(input, out, 0)
  return out
}

/**
 * The outcome of looking for a record at an offset:
 * - `ok`: a whole record whose checksum matches;
 * - `short`: the bytes end before the record would (a torn tail, or more data is needed);
 * - `bad`: the bytes here are not a valid record (bad magic, impossible lengths, bad CRC).
 */
export type Probe =
  | { readonly _tag: "ok"; readonly size: number }
  | { readonly _tag: "short"; readonly need: number }
  | { readonly _tag: "bad"; readonly reason: string }

const SHORT_HEADER: Probe = { _tag: "short", need: HEADER_SIZE }

/**
 * Checks whether a valid record starts at `at` in `buf[at, end)`. Plausibility checks
 * come first so that resynchronisation rejects most offsets without computing a CRC.
 */
export const probe = (buf: Buffer, at: number, end: number): Probe => {
  if (end - at < HEADER_SIZE) return SHORT_HEADER
  if (buf[at + 4] !== MAGIC) return { _tag: "bad", reason: "bad magic" }
  if (buf[at + 5] !== VERSION) return { _tag: "bad", reason: "unknown version" }
  if (!isRecordType(buf[at + 6]!)) return { _tag: "bad", reason: "unknown type" }
  if (buf[at + 7] !== 0 || buf.readUInt16LE(at + 26) !== 0) return { _tag: "bad", reason: "reserved bits set" }
  const keyLen = buf.readUInt16LE(at + 24)
  const metaLen = buf.readUInt32LE(at + 28)
  const valueLen = buf.readUInt32LE(at + 32)
  if (keyLen === 0 || keyLen > MAX_KEY_BYTES) return { _tag: "bad", reason: "impossible key length" }
  if (metaLen > MAX_META_BYTES) return { _tag: "bad", reason: "impossible metadata length" }
  if (valueLen > MAX_VALUE_BYTES) return { _tag: "bad", reason: "impossible value length" }
  if (buf[at + 6] === RecordType.Tombstone && valueLen !== 0) return { _tag: "bad", reason: "tombstone with a value" }
  const size = encodedSize(keyLen, metaLen, valueLen)
  if (end - at < size) return { _tag: "short", need: size }
  if (crc32(buf.subarray(at + 4, at + size)) !== buf.readUInt32LE(at)) return { _tag: "bad", reason: "checksum mismatch" }
  return { _tag: "ok", size }
}

/** Reads the fields of a record already validated by `probe` (no checks repeated). */
export const decodeValid = (buf: Buffer, at: number): LogRecord => {
  const keyLen = buf.readUInt16LE(at + 24)
  const metaLen = buf.readUInt32LE(at + 28)
  const valueLen = buf.readUInt32LE(at + 32)
  const k = at + HEADER_SIZE
  const m = k + keyLen
  const v = m + metaLen
  return {
    type: buf[at + 6] as RecordType,
    lsn: readU64(buf, at + 8),
    timestamp: readU64(buf, at + 16),
    key: buf.subarray(k, m),
    meta: buf.subarray(m, v),
    value: buf.subarray(v, v + valueLen)
  }
}

/** Decodes and verifies the record at `at`; undefined if it is not a whole valid record. */
export const decode = (buf: Buffer, at = 0, end = buf.length): LogRecord | undefined =>
  probe(buf, at, end)._tag === "ok" ? decodeValid(buf, at) : undefined

/** The LSN of a record already validated by `probe`. */
export const lsnAt = (buf: Buffer, at: number): number => readU64(buf, at + 8)

/**
 * The on-disk record: the one layout every segment, every scan and every replication stream
 * shares. Pure encode and decode; nothing here touches a file.
 *
 * Layout (little-endian), a 36-byte header then the body:
 *
 *   offset size field
 *        0    4 crc       CRC-32 (zlib) of bytes [4, end of record), seeded with the segment's salt
 *        4    1 magic     0x54 ("T")
 *        5    1 version   2 (1 = the first format: unseeded CRC, no partition)
 *        6    1 type      1 = put, 2 = tombstone (other values: a newer format; never skipped)
 *        7    1 flags     0 (reserved; a reader rejects non-zero)
 *        8    8 lsn       per-node log sequence number, u64, < 2^53
 *       16    8 timestamp wall-clock ms when the record was made, u64, < 2^53
 *       24    2 keyLen    1..1024
 *       26    2 partition the ring partition the caller named (version 1: reserved, 0)
 *       28    4 metaLen   opaque metadata length (the node keeps version vectors here)
 *       32    4 valueLen  value length (0 for a tombstone)
 *       36      key, meta, value
 *
 * The checksum covers every header field after itself and the whole body, so a flipped bit
 * anywhere is seen. It is seeded with a random salt kept in the segment's header
 * (SegmentHeader.ts): a record is valid only in the segment it was written to, so bytes that
 * merely look like records (a segment file stored as a value, a record copied from another
 * node) never validate during resynchronisation. Version 1 segments have no header; their
 * records are checked with seed 0. Length fields are checked against hard bounds before the
 * CRC, so a corrupt length never sends a reader past the data it holds.
 */
import { crc32 } from "node:zlib"

/** Bytes of the fixed header. */
export const HEADER_SIZE = 36
/** First byte after the CRC: identifies a record start during resynchronisation. */
export const MAGIC = 0x54
/** Format version written by this code. */
export const VERSION = 2
/** The first format, still read: no salt (seed 0), no partition field. */
export const LEGACY_VERSION = 1
/** Longest key in bytes. */
export const MAX_KEY_BYTES = 1024
/** Hard bound on metadata, whatever the configuration: a larger length field is corrupt. */
export const MAX_META_BYTES = 16 * 1024 * 1024
/** Hard bound on a value, whatever the configuration: a larger length field is corrupt. */
export const MAX_VALUE_BYTES = 256 * 1024 * 1024
/** LSNs and timestamps are integers below 2^53, so a JavaScript number holds them exactly. */
export const MAX_LSN = Number.MAX_SAFE_INTEGER
/** Partitions are u16. */
export const MAX_PARTITION = 0xffff

/** What a record says about its key. */
export const RecordType = { Put: 1, Tombstone: 2 } as const
export type RecordType = (typeof RecordType)[keyof typeof RecordType]

const isRecordType = (t: number): t is RecordType => t === RecordType.Put || t === RecordType.Tombstone

/** A decoded record. `key`, `meta` and `value` are views into the buffer it came from. */
export interface LogRecord {
  readonly type: RecordType
  readonly lsn: number
  readonly timestamp: number
  readonly partition: number
  readonly key: Uint8Array
  readonly meta: Uint8Array
  readonly value: Uint8Array
}

/** What to write: the record minus the CRC, which encode computes. */
export interface RecordInput {
  readonly type: RecordType
  readonly lsn: number
  readonly timestamp: number
  readonly partition?: number | undefined
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

/**
 * Encodes one record (current version) into `out` at `at`, which must have room, with the
 * CRC seeded by `seed` (the segment's salt). Returns its size.
 */
export const encodeInto = (input: RecordInput, out: Buffer, at: number, seed: number): number => {
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
  out.writeUInt16LE(input.partition ?? 0, at + 26)
  out.writeUInt32LE(meta.length, at + 28)
  out.writeUInt32LE(value.length, at + 32)
  let p = at + HEADER_SIZE
  out.set(input.key, p)
  p += input.key.length
  out.set(meta, p)
  p += meta.length
  out.set(value, p)
  out.writeUInt32LE(crc32(out.subarray(at + 4, at + size), seed), at)
  return size
}

/** Encodes one record into a fresh buffer (seed 0 unless given). */
export const encode = (input: RecordInput, seed = 0): Buffer => {
  const out = Buffer.allocUnsafe(
    encodedSize(input.key.length, input.meta?.length ?? 0, input.value?.length ?? 0)
  )
  encodeInto(input, out, 0, seed)
  return out
}

/**
 * Re-frames a valid record for another segment: the current version, the partition given
 * (a version 1 record has none), and the CRC under the new segment's seed. In place.
 */
export const reseal = (buf: Buffer, at: number, size: number, partition: number, seed: number): void => {
  buf[at + 5] = VERSION
  buf.writeUInt16LE(partition, at + 26)
  buf.writeUInt32LE(crc32(buf.subarray(at + 4, at + size), seed), at)
}

/**
 * The outcome of looking for a record at an offset:
 * - `ok`: a whole record whose checksum matches;
 * - `short`: the bytes end before the record would (a torn tail, or more data is needed);
 * - `bad`: the bytes here are not a valid record (bad magic, impossible lengths, bad CRC);
 * - `future`: a whole record whose checksum matches but whose version or type this code does
 *   not know: written by a newer Tally. Never skipped as damage: the caller refuses to open.
 */
export type Probe =
  | { readonly _tag: "ok"; readonly size: number }
  | { readonly _tag: "short"; readonly need: number }
  | { readonly _tag: "bad"; readonly reason: string }
  | { readonly _tag: "future"; readonly size: number; readonly version: number; readonly type: number }

const SHORT_HEADER: Probe = { _tag: "short", need: HEADER_SIZE }
const BAD_MAGIC: Probe = { _tag: "bad", reason: "bad magic" }
const BAD_CRC: Probe = { _tag: "bad", reason: "checksum mismatch" }

/**
 * Checks whether a valid record starts at `at` in `buf[at, end)` under `seed` (0: a version
 * 1 segment, whose records must be version 1; otherwise they must be version 2).
 * Plausibility checks come first, so resynchronisation rejects most offsets without a CRC.
 */
export const probe = (buf: Buffer, at: number, end: number, seed = 0): Probe => {
  if (end - at < HEADER_SIZE) return SHORT_HEADER
  if (buf[at + 4] !== MAGIC) return BAD_MAGIC
  const keyLen = buf.readUInt16LE(at + 24)
  const metaLen = buf.readUInt32LE(at + 28)
  const valueLen = buf.readUInt32LE(at + 32)
  if (keyLen === 0 || keyLen > MAX_KEY_BYTES) return { _tag: "bad", reason: "impossible key length" }
  if (metaLen > MAX_META_BYTES) return { _tag: "bad", reason: "impossible metadata length" }
  if (valueLen > MAX_VALUE_BYTES) return { _tag: "bad", reason: "impossible value length" }
  const size = encodedSize(keyLen, metaLen, valueLen)
  if (end - at < size) return { _tag: "short", need: size }
  if (crc32(buf.subarray(at + 4, at + size), seed) !== buf.readUInt32LE(at)) return BAD_CRC
  const version = buf[at + 5]!
  const type = buf[at + 6]!
  if (version !== (seed === 0 ? LEGACY_VERSION : VERSION) || !isRecordType(type)) {
    if (version > VERSION || (version === VERSION && !isRecordType(type))) return { _tag: "future", size, version, type }
    return { _tag: "bad", reason: `version ${version} record in a segment of another version` }
  }
  if (buf[at + 7] !== 0) return { _tag: "bad", reason: "reserved bits set" }
  if (version === LEGACY_VERSION && buf.readUInt16LE(at + 26) !== 0) return { _tag: "bad", reason: "reserved bits set" }
  if (type === RecordType.Tombstone && valueLen !== 0) return { _tag: "bad", reason: "tombstone with a value" }
  if (buf.readUInt32LE(at + 12) > 0x1f_ffff || buf.readUInt32LE(at + 20) > 0x1f_ffff) return { _tag: "bad", reason: "LSN or timestamp at or above 2^53" }
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
    partition: buf.readUInt16LE(at + 26),
    key: buf.subarray(k, m),
    meta: buf.subarray(m, v),
    value: buf.subarray(v, v + valueLen)
  }
}

/** Decodes and verifies the record at `at`; undefined if it is not a whole valid record. */
export const decode = (buf: Buffer, at = 0, end = buf.length, seed = 0): LogRecord | undefined =>
  probe(buf, at, end, seed)._tag === "ok" ? decodeValid(buf, at) : undefined

/** The LSN of a record already validated by `probe`. */
export const lsnAt = (buf: Buffer, at: number): number => readU64(buf, at + 8)
/** The timestamp of a record already validated by `probe`. */
export const timestampAt = (buf: Buffer, at: number): number => readU64(buf, at + 16)
/** The type of a record already validated by `probe`. */
export const typeAt = (buf: Buffer, at: number): RecordType => buf[at + 6] as RecordType
/** The key bytes of a record already validated by `probe`. */
export const keyAt = (buf: Buffer, at: number): Buffer => buf.subarray(at + HEADER_SIZE, at + HEADER_SIZE + buf.readUInt16LE(at + 24))

/**
 * Hint files (Bitcask's): written beside a segment once it is sealed, listing the newest
 * record of each key in that segment without its value (its location, partition and content
 * hash), so that start-up, and the anti-entropy trees built at start-up, read keys instead of
 * whole segments. A hint is trusted only if its own checksum holds and it names the
 * segment's exact size; otherwise the segment is scanned.
 *
 * Layout (little-endian):
 *   header  40 bytes: magic "THNT", version u8 = 2, 3 reserved, segment id u32, count u32,
 *                     minLsn u64, maxLsn u64, segment size u64
 *   entries count x : lsn u64, offset u32, size u32, keyLen u16, flags u8 (1 = tombstone),
 *                     partition u16, content hash u64 (high word first), key
 *   trailer  4 bytes: CRC-32 of everything before it
 *
 * Version 1 entries lack the partition and the hash (lsn u64, offset u32, size u32, keyLen
 * u16, flags u8, key); they are still read, and the caller fills in what they lack.
 */
import { crc32 } from "node:zlib"

const MAGIC = 0x544e4854 // "THNT" read as u32 LE
/** Hint format version written by this code. */
export const HINT_VERSION = 2
const HEADER = 40
const FIXED_V1 = 19
const FIXED_V2 = 29

/** One key's newest record in a segment. */
export interface HintEntry {
  readonly key: string
  readonly lsn: number
  readonly offset: number
  readonly size: number
  readonly tombstone: boolean
  readonly partition: number
  readonly hashHi: number
  readonly hashLo: number
}

/** What a hint file says about its segment as a whole. */
export interface HintHeader {
  readonly version: number
  readonly segment: number
  readonly count: number
  readonly minLsn: number
  readonly maxLsn: number
  readonly segmentSize: number
}

const u64 = (buf: Buffer, v: number, at: number) => {
  buf.writeUInt32LE(v % 0x1_0000_0000, at)
  buf.writeUInt32LE(Math.floor(v / 0x1_0000_0000), at + 4)
}
const r64 = (buf: Buffer, at: number) => buf.readUInt32LE(at) + buf.readUInt32LE(at + 4) * 0x1_0000_0000

/** Encodes a hint file (current version). `entries` should hold one entry per key (the newest). */
export const encodeHint = (header: Omit<HintHeader, "count" | "version">, entries: ReadonlyArray<HintEntry>): Buffer => {
  const keys = entries.map((e) => Buffer.from(e.key, "utf8"))
  let size = HEADER + 4
  for (const k of keys) size += FIXED_V2 + k.length
  const buf = Buffer.alloc(size)
  buf.writeUInt32LE(MAGIC, 0)
  buf[4] = HINT_VERSION
  buf.writeUInt32LE(header.segment, 8)
  buf.writeUInt32LE(entries.length, 12)
  u64(buf, header.minLsn, 16)
  u64(buf, header.maxLsn, 24)
  u64(buf, header.segmentSize, 32)
  let p = HEADER
  for (let i = 0; i < entries.length; i++) {
    const e = entries[i]!
    const k = keys[i]!
    u64(buf, e.lsn, p)
    buf.writeUInt32LE(e.offset, p + 8)
    buf.writeUInt32LE(e.size, p + 12)
    buf.writeUInt16LE(k.length, p + 16)
    buf[p + 18] = e.tombstone ? 1 : 0
    buf.writeUInt16LE(e.partition, p + 19)
    buf.writeUInt32LE(e.hashHi, p + 21)
    buf.writeUInt32LE(e.hashLo, p + 25)
    k.copy(buf, p + FIXED_V2)
    p += FIXED_V2 + k.length
  }
  buf.writeUInt32LE(crc32(buf.subarray(0, p)), p)
  return buf
}

/** The header of a hint file (version 1 or 2) whose checksum holds, or undefined. */
export const readHintHeader = (buf: Buffer): HintHeader | undefined => {
  if (buf.length < HEADER + 4) return undefined
  if (buf.readUInt32LE(0) !== MAGIC || (buf[4] !== 1 && buf[4] !== HINT_VERSION)) return undefined
  const body = buf.length - 4
  if (crc32(buf.subarray(0, body)) !== buf.readUInt32LE(body)) return undefined
  return {
    version: buf[4]!,
    segment: buf.readUInt32LE(8),
    count: buf.readUInt32LE(12),
    minLsn: r64(buf, 16),
    maxLsn: r64(buf, 24),
    segmentSize: r64(buf, 32)
  }
}

/**
 * Calls `f` for each entry of a hint file already accepted by `readHintHeader`. A version 1
 * entry has no partition or hash: `partition` is -1 and the hash 0. Returns false (after
 * possibly calling `f` for a prefix) if the entries do not fit the declared count exactly.
 */
export const forEachHint = (buf: Buffer, f: HintVisitor): boolean => walkHint(buf, f)

/** Whether the entries of an accepted hint file fit its declared count exactly (keys not decoded). */
export const hintFits = (buf: Buffer): boolean => walkHint(buf, undefined)

/** Receives one hint entry. */
export type HintVisitor = (key: string, lsn: number, offset: number, size: number, tombstone: boolean, partition: number, hashHi: number, hashLo: number) => void

const walkHint = (buf: Buffer, f: HintVisitor | undefined): boolean => {
  const v2 = buf[4] === HINT_VERSION
  const fixed = v2 ? FIXED_V2 : FIXED_V1
  const count = buf.readUInt32LE(12)
  const end = buf.length - 4
  let p = HEADER
  for (let i = 0; i < count; i++) {
    if (p + fixed > end) return false
    const keyLen = buf.readUInt16LE(p + 16)
    const flags = buf[p + 18]!
    if (keyLen === 0 || flags > 1 || p + fixed + keyLen > end) return false
    if (f !== undefined) {
      const key = buf.toString("utf8", p + fixed, p + fixed + keyLen)
      if (v2) f(key, r64(buf, p), buf.readUInt32LE(p + 8), buf.readUInt32LE(p + 12), flags === 1, buf.readUInt16LE(p + 19), buf.readUInt32LE(p + 21), buf.readUInt32LE(p + 25))
      else f(key, r64(buf, p), buf.readUInt32LE(p + 8), buf.readUInt32LE(p + 12), flags === 1, -1, 0, 0)
    }
    p += fixed + keyLen
  }
  return p === end
}

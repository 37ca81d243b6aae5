/**
 * Hint files (Bitcask's): written beside a segment when it is sealed, listing the newest
 * record of each key in that segment without its value, so that start-up reads keys and
 * locations instead of whole segments. A hint is trusted only if its own checksum holds
 * and it names the segment's exact size; otherwise the segment is scanned.
 *
 * Layout (little-endian):
 *   header  40 bytes: magic "THNT", version u8 = 1, 3 reserved, segment id u32, count u32,
 *                     minLsn u64, maxLsn u64, segment size u64
 *   entries count x : lsn u64, offset u32, size u32, keyLen u16, flags u8 (1 = tombstone), key
 *   trailer  4 bytes: CRC-32 of everything before it
 */
import { crc32 } from "node:zlib"

const MAGIC = 0x544e4854 // "THNT" read as u32 LE
const VERSION = 1
const HEADER = 40
const ENTRY_FIXED = 19

/** One key's newest record in a segment. */
export interface HintEntry {
  readonly key: string
  readonly lsn: number
  readonly offset: number
  readonly size: number
  readonly tombstone: boolean
}

/** What a hint file says about its segment as a whole. */
export interface HintHeader {
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

/** Encodes a hint file. `entries` should hold one entry per key (the newest). */
export const encodeHint = (header: Omit<HintHeader, "count">, entries: ReadonlyArray<HintEntry>): Buffer => {
  const keys = entries.map((e) => Buffer.from(e.key, "utf8"))
  let size = HEADER + 4
  for (const k of keys) size += ENTRY_FIXED + k.length
  const buf = Buffer.alloc(size)
  buf.writeUInt32LE(MAGIC, 0)
  buf[4] = VERSION
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
    k.copy(buf, p + ENTRY_FIXED)
    p += ENTRY_FIXED + k.length
  }
  buf.writeUInt32LE(crc32(buf.subarray(0, p)), p)
  return buf
}

/** The header of a hint file whose checksum and structure hold, or undefined. */
export const readHintHeader = (buf: Buffer): HintHeader | undefined => {
  if (buf.length < HEADER + 4) return undefined
  if (buf.readUInt32LE(0) !== MAGIC || buf[4] !== VERSION) return undefined
  const body = buf.length - 4
  if (crc32(buf.subarray(0, body)) !== buf.readUInt32LE(body)) return undefined
  return {
    segment: buf.readUInt32LE(8),
    count: buf.readUInt32LE(12),
    minLsn: r64(buf, 16),
    maxLsn: r64(buf, 24),
    segmentSize: r64(buf, 32)
  }
}

/**
 * Calls `f` for each entry of a hint file already accepted by `readHintHeader`.
 * Returns false (after possibly calling `f` for a prefix) if the entries do not fit the
 * declared count exactly; the caller then discards what it applied and scans instead.
 */
export const forEachHint = (buf: Buffer, f: HintVisitor): boolean => walkHint(buf, f)

/** Whether the entries of an accepted hint file fit its declared count exactly (keys not decoded). */
export const hintFits = (buf: Buffer): boolean => walkHint(buf, undefined)

type HintVisitor = (key: string, lsn: number, offset: number, size: number, tombstone: boolean) => void

const walkHint = (
  buf: Buffer,
  f: HintVisitor | undefined
): boolean => {
  const count = buf.readUInt32LE(12)
  const end = buf.length - 4
  let p = HEADER
  for (let i = 0; i < count; i++) {
    if (p + ENTRY_FIXED > end) return false
    const keyLen = buf.readUInt16LE(p + 16)
    const flags = buf[p + 18]!
    if (keyLen === 0 || flags > 1 || p + ENTRY_FIXED + keyLen > end) return false
    f?.(buf.toString("utf8", p + ENTRY_FIXED, p + ENTRY_FIXED + keyLen), r64(buf, p), buf.readUInt32LE(p + 8), buf.readUInt32LE(p + 12), flags === 1)
    p += ENTRY_FIXED + keyLen
  }
  return p === end
}

/**
 * The segment header: what a segment file says about itself before its first record. It
 * carries the random salt that seeds every record's CRC in the file (Record.ts), so framing
 * found during resynchronisation cannot have been forged by a value, and the format version,
 * so that a file written by a newer Tally is refused instead of read as damage.
 *
 * Layout (little-endian), 32 bytes, written twice (bytes 0..31 and 32..63) so that one
 * damaged copy does not make the salt, and with it the whole file, unreadable:
 *
 *   offset size field
 *        0    4 magic    "TSEG"
 *        4    1 version  2 (the first format had no header: see `classify`)
 *        5    1 kind     0 = appended by the log, 1 = written by compaction
 *        6    2 reserved 0
 *        8    4 segment  the segment id (its file name)
 *       12    4 salt     random, non-zero
 *       16    8 created  wall-clock ms
 *       24    4 reserved 0
 *       28    4 crc      CRC-32 of bytes [0, 28)
 *
 * Records start at byte 64. A file of format version 1 starts directly with a record.
 */
import { crc32 } from "node:zlib"
import { LEGACY_VERSION, MAGIC as RECORD_MAGIC } from "./Record.ts"

const MAGIC = 0x47455354 // "TSEG" read as u32 LE
const COPY = 32
/** Bytes before the first record of a current-format segment. */
export const SEGMENT_HEADER_BYTES = 2 * COPY
/** Segment format version written by this code. */
export const SEGMENT_VERSION = 2

/** Who wrote a segment: the log appends to `log` segments; compaction writes `compacted` ones whole. */
export type SegmentKind = "log" | "compacted"

/** A decoded header. */
export interface SegmentHeader {
  readonly id: number
  readonly kind: SegmentKind
  readonly salt: number
  readonly created: number
}

/** Encodes both copies of a header. */
export const encodeSegmentHeader = (h: SegmentHeader): Buffer => {
  const one = Buffer.alloc(COPY)
  one.writeUInt32LE(MAGIC, 0)
  one[4] = SEGMENT_VERSION
  one[5] = h.kind === "log" ? 0 : 1
  one.writeUInt32LE(h.id, 8)
  one.writeUInt32LE(h.salt, 12)
  one.writeUInt32LE(h.created % 0x1_0000_0000, 16)
  one.writeUInt32LE(Math.floor(h.created / 0x1_0000_0000), 20)
  one.writeUInt32LE(crc32(one.subarray(0, 28)), 28)
  return Buffer.concat([one, one])
}

/** A fresh random salt: never 0, which means "no salt" (format version 1). */
export const newSalt = (random: () => number): number => {
  for (;;) {
    const s = Math.floor(random() * 0x1_0000_0000) >>> 0
    if (s !== 0) return s
  }
}

/**
 * What the first bytes of a segment file are:
 * - `header`: a current header (either copy intact);
 * - `future`: an intact header of a format this code does not know: refuse to open;
 * - `damaged`: no intact header and no format-1 record start (both copies damaged, or an
 *   unknown file): the salt is lost or the format unknown; refuse;
 * - `empty`: nothing but zeros (a segment whose creation a crash interrupted);
 * - `legacy`: no header; the file starts with a format-1 record (or damage in one).
 */
export type Classified =
  | { readonly _tag: "header"; readonly header: SegmentHeader }
  | { readonly _tag: "future"; readonly version: number }
  | { readonly _tag: "damaged" }
  | { readonly _tag: "empty" }
  | { readonly _tag: "legacy" }

const readCopy = (buf: Buffer, at: number): Classified | undefined => {
  if (buf.length < at + COPY || buf.readUInt32LE(at) !== MAGIC) return undefined
  if (crc32(buf.subarray(at, at + 28)) !== buf.readUInt32LE(at + 28)) return { _tag: "damaged" }
  const version = buf[at + 4]!
  if (version !== SEGMENT_VERSION || buf[at + 5]! > 1) return { _tag: "future", version }
  return {
    _tag: "header",
    header: {
      kind: buf[at + 5] === 0 ? "log" : "compacted",
      id: buf.readUInt32LE(at + 8),
      salt: buf.readUInt32LE(at + 12),
      created: buf.readUInt32LE(at + 16) + buf.readUInt32LE(at + 20) * 0x1_0000_0000
    }
  }
}

/** Classifies a segment from its first bytes (at least 64 of them when the file has that many). */
export const classify = (buf: Buffer): Classified => {
  const a = readCopy(buf, 0)
  const b = readCopy(buf, COPY)
  for (const c of [a, b]) if (c !== undefined && c._tag !== "damaged") return c
  if (a !== undefined || b !== undefined) return { _tag: "damaged" }
  if (buf.every((x) => x === 0)) return { _tag: "empty" }
  // No header: format 1 starts with a record of version 1. Anything else (a header whose
  // magic is damaged in both copies, a format this code does not know) is refused rather
  // than scanned as format 1, whose torn-tail rule would cut it away.
  if (buf.length >= 6 && buf[4] === RECORD_MAGIC && buf[5] === LEGACY_VERSION) return { _tag: "legacy" }
  return { _tag: "damaged" }
}

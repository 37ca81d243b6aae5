/**
 * A segment file's life: made (header written and synced, optionally preallocated so that
 * fdatasync of an append does not have to commit a new file size), appended to by the log,
 * sealed (preallocated space cut off, then a hint file written, both off the request path),
 * and dropped. Names: `<id, 8 digits>.seg`, hints `<id>.hint`.
 */
import * as path from "node:path"
import type { FilesApi } from "./Files.ts"
import { encodeSegmentHeader, newSalt, SEGMENT_HEADER_BYTES, type SegmentKind } from "./SegmentHeader.ts"

/** A segment file and what is known of it. */
export interface Segment {
  readonly id: number
  readonly file: string
  readonly fd: number
  /** `legacy`: format 1, no header, records checked with seed 0. */
  readonly kind: SegmentKind | "legacy"
  /** The CRC seed of its records (0 for format 1). */
  readonly salt: number
  /** Offset of the first record. */
  readonly dataStart: number
  /** Bytes of the file that readers may use (committed records only). */
  size: number
  /** Length of the file, preallocated space included. */
  allocated: number
  /** Bytes of records the index points at. */
  live: number
  minLsn: number
  maxLsn: number
  sealed: boolean
  removed: boolean
  damaged: number
}

const SEG_RE = /^(\d{8})\.seg$/

/** File name of segment `id`. */
export const segName = (id: number): string => `${String(id).padStart(8, "0")}.seg`
/** File name of the hint of segment `id`. */
export const hintName = (id: number): string => `${String(id).padStart(8, "0")}.hint`
/** The segment id of a file name, or undefined. */
export const segmentIdOf = (name: string): number | undefined => {
  const m = SEG_RE.exec(name)
  return m ? Number(m[1]) : undefined
}

/** What making a segment needs. */
export interface MakeSegment {
  readonly files: FilesApi
  readonly dir: string
  readonly id: number
  readonly kind: SegmentKind
  readonly now: () => number
  readonly random: () => number
  /** Bytes to preallocate (0: none). */
  readonly preallocate: number
  /** File to write instead of `<id>.seg` (compaction writes `<id>.seg.tmp`). */
  readonly file?: string | undefined
}

const describe = (m: MakeSegment, fd: number, file: string, salt: number, allocated: number): Segment => ({
  id: m.id, file, fd, kind: m.kind, salt, dataStart: SEGMENT_HEADER_BYTES, size: SEGMENT_HEADER_BYTES, allocated,
  live: 0, minLsn: Infinity, maxLsn: -1, sealed: m.kind === "compacted", removed: false, damaged: 0
})

/** Undoes a segment whose making failed: nothing refers to it yet. */
const abandon = (m: MakeSegment, fd: number, file: string): void => {
  m.files.close(fd)
  try {
    m.files.unlink(file)
  } catch {
    // never created
  }
}

/**
 * Makes a segment synchronously: header written, preallocated, fdatasynced, and its
 * directory entry synced, so that after return a crash cannot lose the file or its salt.
 */
export const makeSegment = (m: MakeSegment): Segment => {
  const file = m.file ?? path.join(m.dir, segName(m.id))
  const fd = m.files.open(file, true)
  try {
    const salt = newSalt(m.random)
    const header = encodeSegmentHeader({ id: m.id, kind: m.kind, salt, created: m.now() })
    m.files.writeAll(fd, header, 0, header.length, 0)
    if (m.preallocate > header.length) m.files.preallocate(fd, m.preallocate)
    m.files.datasyncSync(fd)
    m.files.syncDir(m.dir)
    return describe(m, fd, file, salt, Math.max(header.length, m.preallocate))
  } catch (e) {
    abandon(m, fd, file)
    throw e
  }
}

const ZEROS = Buffer.alloc(1024 * 1024)

/** Makes a segment off the request path: the same steps as `makeSegment`, asynchronously. */
export const makeSegmentAsync = async (m: MakeSegment): Promise<Segment> => {
  const file = m.file ?? path.join(m.dir, segName(m.id))
  const fd = m.files.open(file, true)
  try {
    const salt = newSalt(m.random)
    const header = encodeSegmentHeader({ id: m.id, kind: m.kind, salt, created: m.now() })
    await m.files.writeAllAsync(fd, header, 0, header.length, 0)
    for (let at = header.length; at < m.preallocate; at += ZEROS.length) {
      await m.files.writeAllAsync(fd, ZEROS, 0, Math.min(ZEROS.length, m.preallocate - at), at)
    }
    await m.files.datasync(fd)
    await m.files.syncDirAsync(m.dir)
    return describe(m, fd, file, salt, Math.max(header.length, m.preallocate))
  } catch (e) {
    abandon(m, fd, file)
    throw e
  }
}

/** Cuts preallocated space off a sealed segment and makes the new length durable. */
export const trimSegment = async (files: FilesApi, seg: Segment): Promise<void> => {
  if (seg.allocated <= seg.size || seg.removed) return
  files.truncate(seg.fd, seg.size)
  await files.datasync(seg.fd)
  seg.allocated = seg.size
}

/** Unlinks a segment and its hint (absent ones are fine); its descriptor is the caller's to close. */
const unlinkSegmentFiles = (files: FilesApi, dir: string, seg: Segment): void => {
  seg.removed = true
  for (const f of [seg.file, path.join(dir, hintName(seg.id))]) {
    try {
      files.unlink(f)
    } catch {
      // absent hint
    }
  }
}

/** Closes and unlinks a segment and its hint (absent ones are fine). */
export const unlinkSegment = (files: FilesApi, dir: string, seg: Segment): void => {
  unlinkSegmentFiles(files, dir, seg)
  files.close(seg.fd)
}

/** `unlinkSegment`, closing the descriptor off the event loop (compaction drops many at once). */
export const unlinkSegmentAsync = async (files: FilesApi, dir: string, seg: Segment): Promise<void> => {
  unlinkSegmentFiles(files, dir, seg)
  await files.closeAsync(seg.fd)
}

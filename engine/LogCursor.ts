/**
 * Reading the log as a stream of events from a given LSN: the records of every segment
 * merged by LSN (each segment is in LSN order, so a k-way merge suffices), up to the
 * newest committed record; called again, it continues where it stopped.
 *
 * A page is read synchronously, so compaction (which swaps segments between event-loop
 * turns) never changes a segment under a page. Between pages a segment may be replaced by
 * a compaction output: the cursor keeps an LSN watermark, not file positions, as its truth,
 * so it skips what it already delivered and never delivers an LSN twice. Records that were
 * superseded and compacted away before the cursor reached them are not delivered; the
 * newest record of every key always is. A `strict` cursor (the engine's `changes`) refuses
 * instead, with SnapshotRequired, once compaction may have removed history it has not read.
 * Records of dropped partitions are never delivered.
 *
 * A cursor that starts (or restarts on a compaction output) inside a segment must pass over
 * the records below its LSN. Every cursor leaves behind, per segment, a sparse list of
 * (LSN, offset) of record starts it passed (one per STRIDE bytes; a segment's bytes never
 * change once written and its records are in LSN order), so the next cursor seeks to within
 * STRIDE of its LSN instead of scanning from the segment's first record. A `maxScanBytes`
 * budget bounds the bytes one `readPage` passes over, delivered or skipped: a page that hits
 * it is short (even empty) with `paused` set, and the caller yields before the next one.
 */
import { SnapshotRequired } from "./Errors.ts"
import { decodeValid, probe, type LogRecord } from "./Record.ts"
import { findNextRecord } from "./Recovery.ts"
import type { Entry, Log, Segment } from "./Log.ts"

const CHUNK = 1024 * 1024
/** Bytes between two remembered record starts of a segment. */
const STRIDE = 64 * 1024

/** Record starts of a segment that cursors passed: LSNs and offsets, both increasing. */
interface Positions {
  readonly lsns: number[]
  readonly offsets: number[]
}

/** Per segment (the object: a compaction output is a new one), the record starts seen. */
const positions = new WeakMap<Segment, Positions>()

const positionsOf = (seg: Segment): Positions => {
  let p = positions.get(seg)
  if (p === undefined) {
    p = { lsns: [], offsets: [] }
    positions.set(seg, p)
  }
  return p
}

/** Notes that a record with `lsn` starts at `offset`, if it extends what is known by a stride. */
const remember = (p: Positions, lsn: number, offset: number): void => {
  const n = p.lsns.length
  if (n === 0 || (offset >= p.offsets[n - 1]! + STRIDE && lsn > p.lsns[n - 1]!)) {
    p.lsns.push(lsn)
    p.offsets.push(offset)
  }
}

/** The offset of the last remembered record start of `seg` whose LSN is at most `lsn` (dataStart if none). */
const seek = (seg: Segment, p: Positions, lsn: number): number => {
  if (p.lsns.length === 0 || p.lsns[0]! > lsn) return seg.dataStart
  let lo = 0
  let hi = p.lsns.length - 1
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1
    if (p.lsns[mid]! <= lsn) lo = mid
    else hi = mid - 1
  }
  return p.offsets[lo]!
}

interface Reader {
  readonly seg: Segment
  readonly known: Positions
  /** File offset of the next record to look at. */
  pos: number
  buf: Buffer
  /** File offset of buf[0], and how many bytes of buf are valid. */
  bufAt: number
  bufLen: number
  head: LogRecord | undefined
  headSize: number
}

/** A position in the log and the means to read onward from it. */
export class LogCursor {
  /** The next LSN this cursor will deliver (everything below was delivered or skipped). */
  next: number
  /** Whether the last `readPage` stopped at its scan budget (call again: more may be there). */
  paused = false
  /** Bytes the current `readPage` has passed over. */
  private scanned = 0
  private budget = Infinity
  private readonly readers = new Map<number, Reader>()
  private readonly log: Log

  private readonly strict: boolean

  constructor(log: Log, fromLsn: number, options?: { readonly strict?: boolean }) {
    this.log = log
    this.next = Math.max(1, fromLsn)
    this.strict = options?.strict === true
    this.check()
  }

  /** Fails a strict cursor whose unread history compaction may have removed. */
  private check(): void {
    if (this.strict && this.log.compactedThrough >= this.next) {
      throw new SnapshotRequired({
        fromLsn: this.next,
        lowWatermark: this.log.compactedThrough + 1,
        message: `records from LSN ${this.next} may have been compacted away (history is complete from ${this.log.compactedThrough + 1}); take a snapshot of the partitions and read changes from its LSN`
      })
    }
  }

  /** Whether committed records at or past `next` exist. */
  get hasMore(): boolean {
    return this.log.committedLsn >= this.next
  }

  /**
   * Reads up to `maxRecords` / about `maxBytes` of records, in LSN order, passing over at
   * most about `maxScanBytes` (records delivered and skipped; at least one record a call).
   */
  readPage(maxRecords = 512, maxBytes = 4 * CHUNK, maxScanBytes = Infinity): Entry[] {
    const out: Entry[] = []
    this.paused = false
    this.scanned = 0
    this.budget = maxScanBytes
    this.check()
    if (!this.hasMore) return out
    for (const [id, r] of this.readers) if (r.seg.removed) this.readers.delete(id)
    for (const seg of this.log.segments.values()) {
      if (seg.maxLsn >= this.next && !this.readers.has(seg.id)) {
        const known = positionsOf(seg)
        this.readers.set(seg.id, { seg, known, pos: seek(seg, known, this.next), buf: Buffer.alloc(0), bufAt: 0, bufLen: 0, head: undefined, headSize: 0 })
      }
    }
    let bytes = 0
    while (out.length < maxRecords && bytes < maxBytes) {
      if (this.scanned >= this.budget) {
        this.paused = true
        break
      }
      let best: Reader | undefined
      for (const r of this.readers.values()) {
        const h = this.head(r)
        if (h !== undefined && (best === undefined || h.lsn < best.head!.lsn)) best = r
      }
      // A reader that ran out of budget has no head yet: the others' heads may not be the next LSN.
      if (this.paused) break
      if (best === undefined) break
      const rec = best.head!
      best.pos += best.headSize
      best.head = undefined
      this.next = rec.lsn + 1
      bytes += best.headSize
      this.scanned += best.headSize
      const partition = best.seg.kind === "legacy" ? -1 : rec.partition
      const key = Buffer.from(rec.key.buffer, rec.key.byteOffset, rec.key.length).toString("utf8")
      const p = partition < 0 ? this.log.config.partitionOf(key) : partition
      if (this.log.isDropped(p, rec.lsn)) continue
      out.push({
        key,
        type: rec.type,
        lsn: rec.lsn,
        timestamp: rec.timestamp,
        partition: p,
        meta: Uint8Array.prototype.slice.call(rec.meta),
        value: Uint8Array.prototype.slice.call(rec.value)
      })
    }
    return out
  }

  /** The next record of `r` at or past the watermark, skipping older ones and damage. */
  private head(r: Reader): LogRecord | undefined {
    while (r.head === undefined) {
      const limit = r.seg.size
      if (r.pos >= limit || r.seg.maxLsn < this.next) return undefined
      if (this.scanned >= this.budget) {
        this.paused = true
        return undefined
      }
      let at = r.pos - r.bufAt
      const seed = r.seg.salt
      let p = r.bufLen - at >= 0 && at >= 0 ? probe(r.buf, at, r.bufLen, seed) : ({ _tag: "short", need: 0 } as const)
      if (p._tag === "short") {
        this.fill(r, Math.max(CHUNK, p._tag === "short" ? p.need : 0))
        at = 0
        p = probe(r.buf, 0, r.bufLen, seed)
      }
      if (p._tag === "short") {
        r.pos = limit // a torn tail recovery already reported: nothing more here
        return undefined
      }
      if (p._tag === "bad" || p._tag === "future") {
        // Damage recovery reported at start-up (an open log never holds a newer format).
        this.fill(r, limit - r.pos)
        const q = findNextRecord(r.buf, 1, r.bufLen, seed, 0)
        r.pos = q < 0 ? limit : r.pos + q
        continue
      }
      const rec = decodeValid(r.buf, at)
      remember(r.known, rec.lsn, r.pos)
      if (rec.lsn < this.next) {
        r.pos += p.size
        this.scanned += p.size
        continue
      }
      r.head = rec
      r.headSize = p.size
    }
    return r.head
  }

  private fill(r: Reader, want: number): void {
    const len = Math.min(want, r.seg.size - r.pos)
    if (r.buf.length < len) r.buf = Buffer.allocUnsafe(Math.max(len, CHUNK))
    let got = 0
    while (got < len) {
      const n = this.log.files.read(r.seg.fd, r.buf, got, len - got, r.pos + got)
      if (n === 0) break
      got += n
    }
    r.bufAt = r.pos
    r.bufLen = got
  }
}

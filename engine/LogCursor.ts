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
 */
import { SnapshotRequired } from "./Errors.ts"
import { decodeValid, probe, type LogRecord } from "./Record.ts"
import { findNextRecord } from "./Recovery.ts"
import type { Entry, Log, Segment } from "./Log.ts"

const CHUNK = 1024 * 1024

interface Reader {
  readonly seg: Segment
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

  /** Reads up to `maxRecords` / about `maxBytes` of records, in LSN order. */
  readPage(maxRecords = 512, maxBytes = 4 * CHUNK): Entry[] {
    const out: Entry[] = []
    this.check()
    if (!this.hasMore) return out
    for (const [id, r] of this.readers) if (r.seg.removed) this.readers.delete(id)
    for (const seg of this.log.segments.values()) {
      if (seg.maxLsn >= this.next && !this.readers.has(seg.id)) {
        this.readers.set(seg.id, { seg, pos: seg.dataStart, buf: Buffer.alloc(0), bufAt: 0, bufLen: 0, head: undefined, headSize: 0 })
      }
    }
    let bytes = 0
    while (out.length < maxRecords && bytes < maxBytes) {
      let best: Reader | undefined
      for (const r of this.readers.values()) {
        const h = this.head(r)
        if (h !== undefined && (best === undefined || h.lsn < best.head!.lsn)) best = r
      }
      if (best === undefined) break
      const rec = best.head!
      best.pos += best.headSize
      best.head = undefined
      this.next = rec.lsn + 1
      bytes += best.headSize
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
      if (rec.lsn < this.next) {
        r.pos += p.size
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

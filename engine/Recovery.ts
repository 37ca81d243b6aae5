/**
 * The recovery policy for one segment, in one place (docs/storage.md states it in prose):
 *
 * 1. A segment is read record by record from its first record. A record is accepted only
 *    if its header is plausible, its CRC matches under the segment's salt, and its LSN is
 *    above the previous record's (a segment holds its records in LSN order) and below 2^53.
 * 2. After a bad record the reader never trusts that record's length field. It searches
 *    forward byte by byte for the next offset where a whole record starts that passes every
 *    check of 1. Because the CRC is seeded with the salt of this very segment, bytes inside a
 *    value (a segment file or a backup stored as a value, a record from another node) never
 *    pass; the LSN order rules out a value holding a copy of this segment's own records.
 *    - If one is found, the bytes between are a damaged range: reported, skipped, and
 *      every complete record after it stays readable.
 *    - If none is found before the end, the bytes from the bad record on are a torn tail.
 *      Nothing after the tail's start passed the checks, so nothing acknowledged is there:
 *      in the segment that was being appended to the tail is the batch whose fsync never
 *      completed (LevelDB's rule), and is truncated; bytes that are all zero are unused
 *      preallocated space, not damage. In any other segment a torn tail is reported and
 *      the immutable file is left as it is.
 * 3. A record whose CRC matches but whose version or type this code does not know was
 *    written by a newer Tally: the scan stops and reports it, and the engine refuses to open
 *    rather than treating someone else's data as damage.
 *
 * Format 1 segments (no header, seed 0) are read under the same rules; only the salt's
 * protection against forged framing is missing there.
 */
import { decodeValid, lsnAt, MAGIC, MAX_LSN, probe, type LogRecord } from "./Record.ts"

/** A range of bytes that held no valid record. */
export interface Damage {
  readonly offset: number
  readonly length: number
  readonly reason: string
}

/** What a scan found. */
export interface ScanResult {
  /** End of the last complete record (the truncation point for a torn tail). */
  readonly validEnd: number
  /** Bytes after `validEnd` with no valid record in them, if any (not set when they are all zero). */
  readonly tornTail: Damage | undefined
  /** Whether bytes after `validEnd` exist and are all zero (unused preallocated space). */
  readonly zeroTail: boolean
  /** Damaged ranges before `validEnd`, in file order. */
  readonly damaged: ReadonlyArray<Damage>
  readonly records: number
  /** A record of a newer format, if one was met (the scan stopped there). */
  readonly future: { readonly offset: number; readonly version: number; readonly type: number } | undefined
}

/**
 * The offset of the next record in `buf[from, end)` that passes every check under `seed`
 * with an LSN above `afterLsn`, or -1. A newer-format record also ends the search (its
 * offset is returned; the caller probes it again).
 */
export const findNextRecord = (buf: Buffer, from: number, end: number, seed: number, afterLsn: number): number => {
  for (let q = from; q + 6 <= end; q++) {
    // Jump to the next byte that could be a record's magic (most bytes cannot).
    const m = buf.indexOf(MAGIC, q + 4)
    if (m < 0 || m + 2 > end) return -1
    q = m - 4
    const p = probe(buf, q, end, seed)
    if (p._tag === "future") return q
    if (p._tag === "ok") {
      const lsn = lsnAt(buf, q)
      if (lsn > afterLsn && lsn <= MAX_LSN) return q
    }
  }
  return -1
}

const allZero = (buf: Buffer, from: number, end: number): boolean => {
  for (let i = from; i < end; i++) if (buf[i] !== 0) return false
  return true
}

/**
 * Scans `buf[start, end)` under the policy above with the segment's `seed`, calling
 * `onRecord(record, offset, size)` for every accepted record in file order.
 */
export const scan = (
  buf: Buffer,
  start: number,
  end: number,
  seed: number,
  onRecord: (record: LogRecord, offset: number, size: number) => void
): ScanResult => {
  const damaged: Damage[] = []
  let p = start
  let validEnd = start
  let records = 0
  let lastLsn = 0
  while (p < end) {
    const r = probe(buf, p, end, seed)
    if (r._tag === "future") {
      return { validEnd, tornTail: undefined, zeroTail: false, damaged, records, future: { offset: p, version: buf[p + 5]!, type: buf[p + 6]! } }
    }
    let reason: string
    if (r._tag === "ok") {
      const lsn = lsnAt(buf, p)
      if (lsn > lastLsn) {
        onRecord(decodeValid(buf, p), p, r.size)
        records++
        lastLsn = lsn
        p += r.size
        validEnd = p
        continue
      }
      reason = `LSN ${lsn} does not follow ${lastLsn}`
    } else {
      reason = r._tag === "bad" ? r.reason : "record runs past the end"
    }
    const next = findNextRecord(buf, p + 1, end, seed, lastLsn)
    if (next < 0) {
      if (allZero(buf, p, end)) return { validEnd, tornTail: undefined, zeroTail: true, damaged, records, future: undefined }
      return { validEnd, tornTail: { offset: p, length: end - p, reason }, zeroTail: false, damaged, records, future: undefined }
    }
    damaged.push({ offset: p, length: next - p, reason })
    p = next
  }
  return { validEnd, tornTail: undefined, zeroTail: false, damaged, records, future: undefined }
}

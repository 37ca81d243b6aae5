/**
 * The recovery policy, in one place (docs/storage.md states it in prose):
 *
 * 1. A segment is read record by record. A record is accepted only if its header is
 *    plausible and its CRC matches; nothing is ever returned from a record that fails.
 * 2. After a bad record the reader never trusts that record's length field. It searches
 *    forward byte by byte for the next offset where a whole valid record starts.
 *    - If one is found, the bytes between are a damaged range: reported, skipped, and
 *      every complete record after it stays readable.
 *    - If none is found before the end, the bytes from the bad record on are a torn tail:
 *      the writer died mid-batch. In the segment that was being appended to, the tail is
 *      truncated to the last complete record; in any other segment it is reported as
 *      damage and the immutable file is left as it is.
 */
import { MAGIC, VERSION, probe, decodeValid, type LogRecord } from "./Record.ts"

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
  /** Bytes after `validEnd` with no valid record in them, if any. */
  readonly tornTail: Damage | undefined
  /** Damaged ranges before `validEnd`, in file order. */
  readonly damaged: ReadonlyArray<Damage>
  readonly records: number
}

/** The offset of the next whole valid record in `buf[from, end)`, or -1. */
export const findNextRecord = (buf: Buffer, from: number, end: number): number => {
  for (let q = from; q + 6 <= end; q++) {
    if (buf[q + 4] === MAGIC && buf[q + 5] === VERSION && probe(buf, q, end)._tag === "ok") return q
  }
  return -1
}

/**
 * Scans `buf[0, end)` under the policy above, calling `onRecord(record, offset, size)`
 * for every valid record in file order.
 */
export const scan = (
  buf: Buffer,
  end: number,
  onRecord: (record: LogRecord, offset: number, size: number) => void
): ScanResult => {
  const damaged: Damage[] = []
  let p = 0
  let validEnd = 0
  let records = 0
  while (p < end) {
    const r = probe(buf, p, end)
    if (r._tag === "ok") {
      onRecord(decodeValid(buf, p), p, r.size)
      records++
      p += r.size
      validEnd = p
      continue
    }
    const next = findNextRecord(buf, p + 1, end)
    const reason = r._tag === "bad" ? r.reason : "record runs past the end"
    if (next < 0) {
      return { validEnd, tornTail: { offset: p, length: end - p, reason }, damaged, records }
    }
    damaged.push({ offset: p, length: next - p, reason })
    p = next
  }
  return { validEnd, tornTail: undefined, damaged, records }
}

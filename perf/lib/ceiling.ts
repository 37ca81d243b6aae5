/**
 * The raw ceiling of the disk for durable appends of Tally's records: no index, no
 * callbacks, no encoding on the clock, only write(2) and fdatasync(2) of records encoded
 * beforehand by engine/Record.ts, appended to a fresh file.
 *
 * - `groupCommitCeiling`: group commit every 1 ms: write K records, fdatasync, repeat, with
 *   K adjusted continuously so that one write+fdatasync cycle takes the period. This is
 *   the most a 1 ms group commit can make durable, and the figure the engine is held to.
 *   With `fixedRecords` K is fixed instead (64: what 64 outstanding puts can offer one
 *   fdatasync); with `prewrittenBytes` the records overwrite a file written and synced
 *   beforehand (wrapping around), so no fdatasync has to commit a new file size.
 * - `bandwidthCeiling`: a writer appending as fast as it can while fdatasync runs back to
 *   back (a 1 ms timer starts one whenever none is in flight); writes overlap syncs, so
 *   this is the disk's durable bandwidth, at whatever sync latency that takes.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { setImmediate as tick } from "node:timers/promises"
import { encode, RecordType } from "../../engine/Record.ts"
import { keyOf, valueOf } from "./data.ts"

const POOL_RECORDS = 8192

/** Distinct encoded records, back to back in one buffer. */
const encodedPool = () => {
  const records = Array.from({ length: POOL_RECORDS }, (_, i) =>
    encode({ type: RecordType.Put, lsn: i + 1, timestamp: Date.now(), key: Buffer.from(keyOf(i)), value: valueOf(i) })
  )
  return { pool: Buffer.concat(records), recordBytes: records[0]!.length }
}

const fdatasync = (fd: number) => new Promise<void>((resolve, reject) => fs.fdatasync(fd, (e) => (e ? reject(e) : resolve())))

/** What a ceiling run made durable. */
export interface Ceiling {
  readonly perSecond: number
  readonly syncs: number
  /** Mean time from the start of a sync's write to its completion, ms. */
  readonly meanCycleMs: number
  readonly recordsPerSync: number
  readonly recordBytes: number
}

/** How `groupCommitCeiling` batches. */
export interface GroupCommitOptions {
  /** Target length of one write+fdatasync cycle, ms (default 1). */
  readonly periodMs?: number
  /** Write exactly this many records per fdatasync instead of adapting to the period. */
  readonly fixedRecords?: number
  /** Overwrite a file of this many bytes, written and synced first, instead of appending. */
  readonly prewrittenBytes?: number
}

/** Records per second made durable by write-K-then-fdatasync cycles. */
export const groupCommitCeiling = async (dir: string, ms: number, options: GroupCommitOptions = {}): Promise<Ceiling> => {
  const periodMs = options.periodMs ?? 1
  const { pool, recordBytes } = encodedPool()
  const fd = fs.openSync(path.join(dir, "ceiling-group.seg"), "w+")
  const wrap = options.prewrittenBytes
  if (wrap !== undefined) {
    const zeros = Buffer.alloc(1024 * 1024)
    for (let at = 0; at < wrap; at += zeros.length) fs.writeSync(fd, zeros, 0, zeros.length, at)
    fs.fsyncSync(fd)
  }
  let pos = 0
  let durable = 0
  let syncs = 0
  let k = options.fixedRecords ?? 16
  let from = 0
  let cycles = 0
  const t0 = performance.now()
  const end = t0 + ms
  let now = t0
  while (now < end) {
    const c0 = now
    const n = Math.min(Math.round(k), POOL_RECORDS)
    if (from + n > POOL_RECORDS) from = 0
    if (wrap !== undefined && pos + n * recordBytes > wrap) pos = 0
    fs.writeSync(fd, pool, from * recordBytes, n * recordBytes, pos)
    pos += n * recordBytes
    from += n
    await fdatasync(fd)
    durable += n
    syncs++
    now = performance.now()
    const cycle = now - c0
    cycles += cycle
    if (options.fixedRecords === undefined) {
      const target = k * periodMs / Math.max(cycle, 0.01)
      k = Math.max(1, 0.8 * k + 0.2 * Math.min(target, 2 * k))
    }
  }
  fs.closeSync(fd)
  return { perSecond: durable / ((now - t0) / 1000), syncs, meanCycleMs: cycles / syncs, recordsPerSync: durable / syncs, recordBytes }
}

/** Records per second made durable by a free-running writer with fdatasync back to back. */
export const bandwidthCeiling = async (dir: string, ms: number): Promise<Ceiling> => {
  const AHEAD_BYTES = 16 * 1024 * 1024
  const CHUNK_RECORDS = 60
  const { pool, recordBytes } = encodedPool()
  const fd = fs.openSync(path.join(dir, "ceiling-bandwidth.seg"), "w+")
  let pos = 0
  let written = 0
  let durable = 0
  let syncs = 0
  let cycles = 0
  let syncing: Promise<void> | undefined
  const t0 = performance.now()
  const end = t0 + ms
  const timer = setInterval(() => {
    if (syncing !== undefined) return
    const upTo = written
    const s0 = performance.now()
    syncing = fdatasync(fd).then(() => {
      durable = upTo
      syncs++
      cycles += performance.now() - s0
      syncing = undefined
    })
  }, 1)
  let chunk = 0
  while (performance.now() < end) {
    if ((written - durable) * recordBytes < AHEAD_BYTES) {
      const from = (chunk++ * CHUNK_RECORDS) % (POOL_RECORDS - CHUNK_RECORDS)
      fs.writeSync(fd, pool, from * recordBytes, CHUNK_RECORDS * recordBytes, pos)
      pos += CHUNK_RECORDS * recordBytes
      written += CHUNK_RECORDS
    }
    await tick()
  }
  const atEnd = durable
  const elapsed = performance.now() - t0
  clearInterval(timer)
  await syncing
  fs.closeSync(fd)
  return { perSecond: atEnd / (elapsed / 1000), syncs, meanCycleMs: cycles / Math.max(1, syncs), recordsPerSync: atEnd / Math.max(1, syncs), recordBytes }
}

/**
 * Compaction (Bitcask's merge): rewrites sealed segments that are mostly dead into new
 * segments holding only their live records, in LSN order, while reads and writes go on.
 * Off the request path: records are copied in slices of about 1 MiB with a turn of the
 * event loop between slices (and a rate limit, if set); writes, fsyncs and renames are
 * asynchronous; the passes over the index (finding the live records, sorting them by LSN,
 * swapping the index to the outputs) take a turn of the event loop per few thousand records.
 *
 * Crash safety, step by step:
 *   1. outputs are written as `<id>.seg.tmp` (each record re-framed under the output's salt),
 *      fsynced, and read back against the CRC-32 computed while writing them;
 *   2. STATE records that history through the inputs' LSNs may now be gone (for `changes`);
 *   3. the MERGE manifest (inputs, and each output's size and CRC) is written durably: the
 *      commit point;
 *   4. outputs are renamed, the directory synced, the index swapped, inputs unlinked, the
 *      directory synced, the manifest removed.
 * A crash before 3 leaves only `.tmp` files, deleted at start-up. After 3, start-up finishes
 * the compaction (`finishCompaction`): every step is idempotent, and no input is deleted
 * before every output has been checked against the manifest. In a running engine an error
 * after 3 makes the log fail-stop: the next start finishes the work.
 *
 * Tombstones: one is dropped only if its record is no newer than its partition's cutoff
 * (`reapBefore`, asked once per partition when the compaction starts; by default the grace
 * period), no segment outside this compaction could hold an older record of its key (every
 * such segment starts at a higher LSN). Otherwise it is copied like a live record. Dropping
 * the record that holds the log's highest LSN is safe: the STATE file's `compactedThrough`,
 * made durable before the manifest, carries that LSN, and start-up never hands out an LSN
 * at or below it. This avoids Bitcask
 * #82 (a partial merge that dropped a tombstone resurrected the deleted value from an older
 * file); the cutoff is how the node keeps a tombstone until every replica holds it.
 */
import * as path from "node:path"
import { crc32 } from "node:zlib"
import { hashRecordInto, scratch } from "./ContentHash.ts"
import { CorruptFile, UnknownFormat } from "./Errors.ts"
import { writeFileDurableAsync, type FilesApi } from "./Files.ts"
import { encodeHint, type HintEntry } from "./HintFile.ts"
import { decodeManifest, encodeManifest, MERGE_MANIFEST, type Manifest } from "./Manifest.ts"
import type { Log, Segment } from "./Log.ts"
import { probe, reseal, timestampAt } from "./Record.ts"
import { scan } from "./Recovery.ts"
import { classify, SEGMENT_HEADER_BYTES } from "./SegmentHeader.ts"
import { hintName, makeSegmentAsync, segName } from "./SegmentFile.ts"

/** What one compaction did. */
export interface CompactionResult {
  readonly inputs: number[]
  readonly outputs: number[]
  readonly bytesBefore: number
  readonly bytesAfter: number
  readonly liveRecords: number
  readonly droppedTombstones: number
  readonly damagedRecords: number
}

interface Live {
  readonly key: string
  readonly seg: Segment
  readonly offset: number
  readonly size: number
  readonly lsn: number
  readonly tombstone: boolean
  readonly partition: number
}

/** Dead bytes of a segment: its records the index no longer points at. */
const deadBytes = (s: Segment) => s.size - s.dataStart - s.live

/** Sealed segments worth compacting now under the log's thresholds, oldest first. */
export const selectInputs = (log: Log, full = false): Segment[] => {
  const c = log.config
  const sealed = [...log.segments.values()].filter((s) => s.sealed && !s.removed && s !== log.active)
  if (full) return sealed.length > 0 ? sealed : []
  const picked = sealed.filter((s) => s.damaged > 0 || s.kind === "legacy" || deadBytes(s) >= c.compactDeadBytes || (s.size > s.dataStart && deadBytes(s) / (s.size - s.dataStart) >= c.compactDeadRatio))
  const small = sealed.filter((s) => s.size < c.compactSmallBytes && !picked.includes(s))
  if (small.length >= 2 || (small.length === 1 && picked.length > 0)) picked.push(...small)
  return picked.sort((a, b) => a.id - b.id)
}

const SLICE_BYTES = 256 * 1024
const yieldTurn = (log: Log) => log.config.sleep(0)
/**
 * Records handled between two turns of the event loop in compaction's in-memory passes
 * (finding the live records, sorting them, swapping the index): a few milliseconds of work.
 * Done in one turn, each pass over a million keys held the loop for hundreds of ms, and a
 * put waiting behind it saw that as its latency (bench:engine's compacting phase).
 */
const TURN_RECORDS = 4 * 1024

/**
 * `records` in LSN order (an output segment must be in LSN order, as every segment is),
 * sorted a turn at a time: runs of TURN_RECORDS sorted natively, then merged pairwise.
 */
const sortByLsnInTurns = async (log: Log, records: Live[]): Promise<Live[]> => {
  const byLsn = (a: Live, b: Live) => a.lsn - b.lsn
  let runs: Live[][] = []
  for (let i = 0; i < records.length; i += TURN_RECORDS) {
    runs.push(records.slice(i, i + TURN_RECORDS).sort(byLsn))
    await yieldTurn(log)
  }
  while (runs.length > 1) {
    const next: Live[][] = []
    for (let r = 0; r < runs.length; r += 2) {
      const a = runs[r]!
      const b = runs[r + 1]
      if (b === undefined) {
        next.push(a)
        continue
      }
      const out = new Array<Live>(a.length + b.length)
      let i = 0
      let j = 0
      for (let k = 0; k < out.length; k++) {
        out[k] = j >= b.length || (i < a.length && a[i]!.lsn <= b[j]!.lsn) ? a[i++]! : b[j++]!
        if (k % (4 * TURN_RECORDS) === 0) await yieldTurn(log)
      }
      next.push(out)
    }
    runs = next
  }
  return runs[0] ?? []
}

/** Test seams: called at the named steps, so a test can crash the process or fail I/O there. */
export interface CompactionHooks {
  readonly beforeManifest?: () => void
  readonly afterManifest?: () => void
  readonly afterRename?: () => void
  readonly beforeUnlink?: () => void
}

interface Out {
  readonly seg: Segment
  readonly tmp: string
  /** Records copied but not yet written, and the file offset where they go. */
  buffered: Buffer[]
  writtenTo: number
  /** Bytes written since the output's last fdatasync (LogConfig.compactSyncBytes). */
  unsynced: number
  crc: number
  hints: HintEntry[]
  moved: Live[]
  at: number[]
}

/**
 * Compacts `inputs` (from `selectInputs`). Returns undefined when there is nothing to do.
 * `abort()` true stops it between slices, before the commit point, leaving only `.tmp`
 * files, which it deletes.
 */
export const compact = async (log: Log, inputs: Segment[], abort: () => boolean = () => false, hooks: CompactionHooks = {}): Promise<CompactionResult | undefined> => {
  if (inputs.length === 0) return undefined
  const { files } = log
  const dir = log.config.dir
  const inputSet = new Set(inputs.map((s) => s.id))
  const found: Live[] = []
  for (const batch of log.index.locationsIn(inputSet, TURN_RECORDS)) {
    for (const loc of batch) found.push({ ...loc, seg: log.segments.get(loc.segment)! })
    await yieldTurn(log)
  }
  const live = await sortByLsnInTurns(log, found)
  const outside = [...log.segments.values()].filter((s) => !inputSet.has(s.id) && s.maxLsn >= 0)
  const oldestOutside = Math.min(...outside.map((s) => s.minLsn))
  const tombstoned = new Set<number>()
  for (const r of live) if (r.tombstone) tombstoned.add(r.partition)
  const cutoffs = reapCutoffs(log, tombstoned)
  const inputsThrough = Math.max(...inputs.map((s) => s.maxLsn))

  const outs: Out[] = []
  let cur: Out | undefined
  let dropped = 0
  let damaged = 0
  const forget: Live[] = []
  /** Inputs in which this compaction met damage (start-up may have found more: `damaged`). */
  const damagedIn = new Set(inputs.filter((s) => s.damaged > 0).map((s) => s.id))
  const cleanup = () => {
    for (const o of outs) {
      try {
        files.close(o.seg.fd)
      } catch {
        // already closed
      }
      try {
        files.unlink(o.tmp)
      } catch {
        // already gone
      }
    }
  }
  const newOutput = async (): Promise<Out> => {
    const id = log.nextSegmentId++
    const tmp = `${log.pathOf(id, "seg")}.tmp`
    const seg = await makeSegmentAsync({ files, dir, id, kind: "compacted", now: log.config.now, random: log.config.random, preallocate: 0, file: tmp })
    const head = Buffer.alloc(SEGMENT_HEADER_BYTES)
    files.read(seg.fd, head, 0, head.length, 0)
    const o: Out = { seg, tmp, buffered: [], writtenTo: seg.size, unsynced: 0, crc: crc32(head), hints: [], moved: [], at: [] }
    outs.push(o)
    return o
  }
  /** One write per slice, not per record: a write is a trip through libuv's thread pool. */
  const writeOut = async (o: Out) => {
    if (o.buffered.length === 0) return
    const data = Buffer.concat(o.buffered)
    o.buffered = []
    await files.writeAllAsync(o.seg.fd, data, 0, data.length, o.writtenTo)
    o.writtenTo += data.length
    o.unsynced += data.length
    const every = log.config.compactSyncBytes
    if (every > 0 && o.unsynced >= every) {
      o.unsynced = 0
      await files.datasync(o.seg.fd)
    }
  }
  try {
    let slice = 0
    const started = log.config.now()
    let copied = 0
    for (const rec of live) {
      if (slice >= SLICE_BYTES) {
        slice = 0
        const rate = log.config.compactBytesPerSecond
        const ahead = rate > 0 ? (copied / rate) * 1000 - (log.config.now() - started) : 0
        await log.config.sleep(Math.max(0, ahead))
        if (abort()) {
          cleanup()
          return undefined
        }
      }
      if (rec.seg.removed) continue
      const raw = log.readRaw(rec.seg, rec.offset, rec.size)
      if (raw === undefined) {
        refuseFuture(log, rec)
        damaged++
        damagedIn.add(rec.seg.id)
        forget.push(rec)
        continue
      }
      if (rec.tombstone && oldestOutside > rec.lsn && timestampAt(raw, 0) <= cutoffs.get(rec.partition)!) {
        dropped++
        forget.push(rec)
        continue
      }
      if (cur === undefined || (cur.seg.size > cur.seg.dataStart && cur.seg.size + rec.size > log.config.maxSegmentBytes)) {
        if (cur !== undefined) await writeOut(cur)
        cur = await newOutput()
      }
      reseal(raw, 0, rec.size, rec.partition, cur.seg.salt)
      cur.buffered.push(raw)
      cur.crc = crc32(raw, cur.crc)
      // The index keeps 32 bits of the content hash; the hint file keeps all 64, from the record.
      hashRecordInto(raw, 0, rec.size)
      cur.hints.push({ key: rec.key, lsn: rec.lsn, offset: cur.seg.size, size: rec.size, tombstone: rec.tombstone, partition: rec.partition, hashHi: scratch.hi, hashLo: scratch.lo })
      cur.moved.push(rec)
      cur.at.push(cur.seg.size)
      cur.seg.size += rec.size
      cur.seg.minLsn = Math.min(cur.seg.minLsn, rec.lsn)
      cur.seg.maxLsn = Math.max(cur.seg.maxLsn, rec.lsn)
      slice += rec.size
      copied += rec.size
      if (slice >= SLICE_BYTES) await writeOut(cur)
    }
    if (cur !== undefined) await writeOut(cur)
    for (const o of outs) {
      await files.datasync(o.seg.fd)
      if (await fileCrc(log, o.seg.fd, o.seg.size) !== o.crc) {
        throw new CorruptFile({ file: o.tmp, message: `compaction output ${o.tmp} did not read back as written; compaction abandoned, nothing changed` })
      }
    }
    hooks.beforeManifest?.()
    if (abort()) {
      cleanup()
      return undefined
    }
    if (inputsThrough > log.compactedThrough) {
      log.compactedThrough = inputsThrough
      // Synchronously, as dropPartitions writes it: an async write in flight would share
      // STATE.tmp with a drop's and land a snapshot without the drop's marks over it.
      log.saveState()
    }
    await writeFileDurableAsync(files, path.join(dir, MERGE_MANIFEST), encodeManifest({ inputs: [...inputSet], damaged: [...damagedIn], outputs: outs.map((o) => ({ id: o.seg.id, size: o.seg.size, crc: o.crc })) }))
  } catch (e) {
    cleanup()
    throw e
  }
  // Committed: from here an error leaves the work to the next start, which rolls it forward.
  try {
    hooks.afterManifest?.()
    for (const o of outs) await files.renameAsync(o.tmp, log.pathOf(o.seg.id, "seg"))
    await files.syncDirAsync(dir)
    hooks.afterRename?.()
    const bytesBefore = inputs.reduce((n, s) => n + s.size, 0)
    // A turn at a time: a reader between two turns finds a key at its input or at its
    // output, the same record either way (inputs stay readable until dropped below), and a
    // write between turns wins, as moveIfAt checks each key's LSN when it gets to it.
    let n = 0
    for (const o of outs) {
      const seg: Segment = { ...o.seg, file: log.pathOf(o.seg.id, "seg") }
      log.addSegment(seg)
      for (let i = 0; i < o.moved.length; i++) {
        const m = o.moved[i]!
        if (log.index.moveIfAt(m.key, m.lsn, seg.id, o.at[i]!)) seg.live += m.size
        if (++n % TURN_RECORDS === 0) await yieldTurn(log)
      }
    }
    for (const t of forget) {
      if (log.index.lsnOf(t.key) === t.lsn) log.index.delete(t.key)
      if (++n % TURN_RECORDS === 0) await yieldTurn(log)
    }
    for (const s of inputs) s.removed = true
    for (const o of outs) {
      const seg = log.segments.get(o.seg.id)!
      await writeFileDurableAsync(files, log.pathOf(seg.id, "hint"), hintBytes(seg, o.hints)).catch(() => undefined)
    }
    hooks.beforeUnlink?.()
    // An input holding damage is kept aside as <id>.seg.damaged, never deleted: its bytes
    // are evidence (and may be all that is left of something) for whoever investigates.
    for (const s of inputs) {
      if (damagedIn.has(s.id)) log.quarantineSegment(s)
      else await log.dropSegmentAsync(s)
    }
    await files.syncDirAsync(dir)
    await files.unlinkAsync(path.join(dir, MERGE_MANIFEST))
    await files.syncDirAsync(dir)
    const bytesAfter = outs.reduce((n, o) => n + o.seg.size, 0)
    log.stats.compactions++
    log.stats.compactedBytes += bytesBefore
    log.stats.reclaimedBytes += bytesBefore - bytesAfter
    log.stats.droppedTombstones += dropped
    return {
      inputs: [...inputSet],
      outputs: outs.map((o) => o.seg.id),
      bytesBefore,
      bytesAfter,
      liveRecords: live.length - dropped - damaged,
      droppedTombstones: dropped,
      damagedRecords: damaged
    }
  } catch (e) {
    log.failStop(`compaction failed after its commit point (${(e as Error)?.message ?? String(e)}); restart the node to finish it`)
    throw e
  }
}

/**
 * The tombstone cutoff of each of `partitions` for one compaction: `reapBefore` (by default
 * the grace period) asked once per partition when the compaction starts, so one compaction
 * applies one rule throughout. A cutoff that is not a number, or a `reapBefore` that throws,
 * keeps the partition's tombstones.
 */
export const reapCutoffs = (log: Log, partitions: Iterable<number>): ReadonlyMap<number, number> => {
  const { reapBefore, tombstoneGraceMs } = log.config
  const graceEnd = log.config.now() - tombstoneGraceMs
  const out = new Map<number, number>()
  for (const p of partitions) {
    let c: unknown
    try {
      c = reapBefore === undefined ? graceEnd : reapBefore(p)
    } catch {
      c = -Infinity
    }
    out.set(p, typeof c === "number" && !Number.isNaN(c) ? c : -Infinity)
  }
  return out
}

/** A record that fails its checks may be of a newer format: never treated as damage and dropped. */
const refuseFuture = (log: Log, rec: Live): void => {
  const buf = Buffer.alloc(rec.size)
  const n = log.files.read(rec.seg.fd, buf, 0, rec.size, rec.offset)
  const p = probe(buf, 0, n, rec.seg.salt)
  if (p._tag === "future") {
    throw new UnknownFormat({ file: rec.seg.file, version: p.version, message: `segment ${rec.seg.file} holds a record of version ${p.version}, type ${p.type} at byte ${rec.offset}, which this build does not know; compaction stopped, nothing changed` })
  }
}

const hintBytes = (seg: Segment, hints: HintEntry[]) => encodeHint({ segment: seg.id, minLsn: seg.minLsn, maxLsn: seg.maxLsn, segmentSize: seg.size }, hints)

/** CRC-32 of the first `size` bytes of a file, read in slices. */
const fileCrc = async (log: Log, fd: number, size: number): Promise<number> => {
  const { files } = log
  const buf = Buffer.allocUnsafe(Math.min(size, SLICE_BYTES))
  let crc = 0
  for (let at = 0; at < size; at += buf.length) {
    const len = Math.min(buf.length, size - at)
    const n = files.read(fd, buf, 0, len, at)
    if (n !== len) return -1
    crc = crc32(buf.subarray(0, len), crc)
    await yieldTurn(log)
  }
  return crc
}

const fileCrcSync = (files: FilesApi, file: string): { size: number; crc: number } => {
  const buf = files.readFile(file)
  return { size: buf.length, crc: crc32(buf) }
}

/**
 * Finishes or undoes a compaction a crash (or a fail-stop) interrupted, at start-up. With no
 * manifest, `.tmp` outputs are incomplete and the caller deletes them. With one, every output
 * is checked against it (size and CRC; a version 1 manifest: a scan without damage) before
 * any input is deleted; if an output does not check and every input is still there, the
 * compaction is undone instead. Every step may be repeated.
 */
export const finishCompaction = (files: FilesApi, dir: string): void => {
  const manifestFile = path.join(dir, MERGE_MANIFEST)
  if (!files.exists(manifestFile)) return
  const m = decodeManifest(files.readFile(manifestFile))
  if (m === undefined) {
    throw new CorruptFile({ file: manifestFile, message: `${manifestFile} is damaged: an interrupted compaction cannot be finished safely. Nothing was changed; restore the file, or remove it and the .seg.tmp files if every input segment it names is present` })
  }
  const segFile = (id: number) => path.join(dir, segName(id))
  const tmpFile = (id: number) => `${segFile(id)}.tmp`
  const outputOk = (o: Manifest["outputs"][number]): boolean => {
    const file = files.exists(segFile(o.id)) ? segFile(o.id) : files.exists(tmpFile(o.id)) ? tmpFile(o.id) : undefined
    if (file === undefined) return false
    if (o.crc !== undefined) {
      const got = fileCrcSync(files, file)
      return got.size === o.size && got.crc === o.crc
    }
    const buf = files.readFile(file)
    const c = classify(buf.subarray(0, SEGMENT_HEADER_BYTES))
    const seed = c._tag === "header" ? c.header.salt : 0
    const start = c._tag === "header" ? SEGMENT_HEADER_BYTES : 0
    const r = scan(buf, start, buf.length, seed, () => {})
    return r.damaged.length === 0 && r.tornTail === undefined && r.future === undefined
  }
  if (m.outputs.every(outputOk)) {
    for (const o of m.outputs) if (files.exists(tmpFile(o.id))) files.rename(tmpFile(o.id), segFile(o.id))
    files.syncDir(dir)
    for (const id of m.inputs) {
      if (m.damaged.includes(id) && files.exists(segFile(id))) files.rename(segFile(id), `${segFile(id)}.damaged`)
      for (const f of [segFile(id), path.join(dir, hintName(id))]) if (files.exists(f)) files.unlink(f)
    }
    files.syncDir(dir)
  } else if (m.inputs.every((id) => files.exists(segFile(id)))) {
    for (const o of m.outputs) {
      for (const f of [segFile(o.id), tmpFile(o.id), path.join(dir, hintName(o.id))]) if (files.exists(f)) files.unlink(f)
    }
    files.syncDir(dir)
  } else {
    throw new CorruptFile({ file: manifestFile, message: `an interrupted compaction left an output that does not match ${manifestFile} after some of its inputs were deleted; nothing more was changed. Restore the directory from a replica` })
  }
  files.unlink(manifestFile)
  files.syncDir(dir)
}

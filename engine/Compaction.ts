/**
 * Compaction (Bitcask's merge): rewrites sealed segments that are mostly dead into new
 * segments holding only their live records, in LSN order, while reads and writes go on.
 *
 * Crash safety, step by step: outputs are written as `.tmp` and fsynced; then the MERGE
 * manifest (inputs -> outputs) is written durably, which is the commit point; then outputs
 * are renamed, the index swapped (synchronously, so no reader sees a half swap), inputs
 * unlinked, and the manifest removed. A crash before the manifest leaves only `.tmp` files,
 * deleted at start-up; after it, start-up rolls the compaction forward (Log.finishCompaction).
 *
 * Tombstones: one is dropped only if it is older than the grace period, no segment outside
 * this compaction could hold an older record of its key (every such segment starts at a
 * higher LSN), and some newer record survives outside it, so the highest LSN is never lost.
 * Otherwise it is copied like a live record. This avoids Bitcask #82 (a partial merge that
 * dropped a tombstone resurrected the deleted value from an older file).
 */
import * as path from "node:path"
import { writeFileDurable } from "./Files.ts"
import type { HintEntry } from "./HintFile.ts"
import { encodeManifest, MERGE_MANIFEST, type Log, type Segment } from "./Log.ts"

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
}

/** Sealed segments worth compacting now under the log's thresholds, oldest first. */
export const selectInputs = (log: Log, full = false): Segment[] => {
  const c = log.config
  const sealed = [...log.segments.values()].filter((s) => s.sealed && !s.removed && s !== log.active)
  if (full) return sealed.length > 0 ? sealed : []
  const dead = (s: Segment) => s.size - s.live
  const picked = sealed.filter((s) => s.damaged > 0 || dead(s) >= c.compactDeadBytes || (s.size > 0 && dead(s) / s.size >= c.compactDeadRatio))
  const small = sealed.filter((s) => s.size < c.compactSmallBytes && !picked.includes(s))
  if (small.length >= 2 || (small.length === 1 && picked.length > 0)) picked.push(...small)
  return picked.sort((a, b) => a.id - b.id)
}

const YIELD_EVERY = 2000
const yieldTurn = () => new Promise<void>((resolve) => setImmediate(resolve))

/**
 * Compacts `inputs` (from `selectInputs`). Returns undefined when there is nothing to do.
 * `abort()` true stops it between slices, leaving only `.tmp` files to delete.
 */
export const compact = async (log: Log, inputs: Segment[], abort: () => boolean = () => false, hooks: CompactionHooks = {}): Promise<CompactionResult | undefined> => {
  if (inputs.length === 0) return undefined
  const dir = log.config.dir
  const inputSet = new Set(inputs.map((s) => s.id))
  const live: Live[] = []
  for (const [key, loc] of log.index.entries()) {
    if (inputSet.has(loc.segment)) live.push({ key, seg: log.segments.get(loc.segment)!, offset: loc.offset, size: loc.size, lsn: loc.lsn, tombstone: loc.tombstone })
  }
  live.sort((a, b) => a.lsn - b.lsn)
  const outside = [...log.segments.values()].filter((s) => !inputSet.has(s.id) && s.maxLsn >= 0)
  const oldestOutside = Math.min(...outside.map((s) => s.minLsn))
  const newerSurvives = outside.length > 0
  const graceEnd = log.config.now() - log.config.tombstoneGraceMs

  interface Out { id: number; fd: number; tmp: string; size: number; minLsn: number; maxLsn: number; hints: HintEntry[]; moved: Live[]; at: number[] }
  const outs: Out[] = []
  let cur: Out | undefined
  let dropped = 0
  let damaged = 0
  const droppedTombs: Live[] = []
  const damagedKeys: Live[] = []
  const cleanup = () => {
    for (const o of outs) {
      try {
        log.files.close(o.fd)
      } catch {
        // already closed
      }
      try {
        log.files.unlink(o.tmp)
      } catch {
        // already gone
      }
    }
  }
  try {
    for (let i = 0; i < live.length; i++) {
      if (i % YIELD_EVERY === YIELD_EVERY - 1) {
        await yieldTurn()
        if (abort()) {
          cleanup()
          return undefined
        }
      }
      const rec = live[i]!
      if (rec.seg.removed) continue
      const raw = log.readRaw(rec.seg, rec.offset, rec.size)
      if (raw === undefined) {
        damaged++
        damagedKeys.push(rec)
        continue
      }
      if (rec.tombstone && newerSurvives && oldestOutside > rec.lsn && tombTime(raw) <= graceEnd) {
        dropped++
        droppedTombs.push(rec)
        continue
      }
      if (cur === undefined || (cur.size > 0 && cur.size + rec.size > log.config.maxSegmentBytes)) {
        const id = log.nextSegmentId++
        const tmp = `${log.pathOf(id, "seg")}.tmp`
        cur = { id, fd: log.files.open(tmp, true), tmp, size: 0, minLsn: Infinity, maxLsn: -1, hints: [], moved: [], at: [] }
        outs.push(cur)
      }
      log.files.writeAll(cur.fd, raw, 0, raw.length, cur.size)
      cur.hints.push({ key: rec.key, lsn: rec.lsn, offset: cur.size, size: rec.size, tombstone: rec.tombstone })
      cur.moved.push(rec)
      cur.at.push(cur.size)
      cur.size += rec.size
      cur.minLsn = Math.min(cur.minLsn, rec.lsn)
      cur.maxLsn = Math.max(cur.maxLsn, rec.lsn)
    }
    for (const o of outs) log.files.datasyncSync(o.fd)
    hooks.beforeManifest?.()
    if (abort()) {
      cleanup()
      return undefined
    }
    writeFileDurable(log.files, path.join(dir, MERGE_MANIFEST), encodeManifest({ inputs: [...inputSet], outputs: outs.map((o) => o.id) }))
  } catch (e) {
    cleanup()
    throw e
  }
  // Committed: from here a crash rolls forward.
  hooks.afterManifest?.()
  for (const o of outs) {
    log.files.close(o.fd)
    log.files.rename(o.tmp, log.pathOf(o.id, "seg"))
  }
  log.files.syncDir(dir)
  const bytesBefore = inputs.reduce((n, s) => n + s.size, 0)
  for (const o of outs) {
    const seg = log.adoptSegment(o.id, o.size, o.minLsn, o.maxLsn)
    for (let i = 0; i < o.moved.length; i++) {
      const m = o.moved[i]!
      const loc = log.index.get(m.key)
      if (loc !== undefined && loc.lsn === m.lsn) {
        log.index.set(m.key, seg.id, o.at[i]!, m.size, m.lsn, m.tombstone)
        seg.live += m.size
      }
    }
    log.sealHint(seg, o.hints)
  }
  for (const t of [...droppedTombs, ...damagedKeys]) {
    if (log.index.lsnOf(t.key) === t.lsn) log.index.delete(t.key)
  }
  hooks.beforeUnlink?.()
  for (const s of inputs) log.dropSegment(s)
  log.files.syncDir(dir)
  log.files.unlink(path.join(dir, MERGE_MANIFEST))
  log.files.syncDir(dir)
  const bytesAfter = outs.reduce((n, o) => n + o.size, 0)
  log.stats.compactions++
  log.stats.compactedBytes += bytesBefore
  log.stats.reclaimedBytes += bytesBefore - bytesAfter
  log.stats.droppedTombstones += dropped
  return {
    inputs: [...inputSet],
    outputs: outs.map((o) => o.id),
    bytesBefore,
    bytesAfter,
    liveRecords: live.length - dropped - damaged,
    droppedTombstones: dropped,
    damagedRecords: damaged
  }
}

/** Test seams: called at the named steps, so a test can crash the process there. */
export interface CompactionHooks {
  readonly beforeManifest?: () => void
  readonly afterManifest?: () => void
  readonly beforeUnlink?: () => void
}

const tombTime = (raw: Buffer): number => raw.readUInt32LE(16) + raw.readUInt32LE(20) * 0x1_0000_0000

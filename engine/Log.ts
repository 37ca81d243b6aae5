/**
 * The segment log: the per-node, append-only sequence of records that everything else is
 * built on. One active segment takes appends through group commit; sealed segments are
 * immutable and carry hint files; the KeyIndex points at each key's newest record.
 *
 * Invariants: a record is visible to readers and streams only once it is as durable as the
 * fsync mode promises; LSNs only grow; every segment holds its records in LSN order (which
 * lets a stream merge segments by LSN); the record with the highest LSN is never dropped.
 *
 * Plain code on purpose: this is the per-record hot path. Engine.ts wraps it in Effect.
 */
import * as path from "node:path"
import { crc32 } from "node:zlib"
import { fromFsError, CorruptRecord, DataDirLocked, EngineClosed, InvalidKey, ValueTooLarge, type DiskFull, type IoError } from "./Errors.ts"
import { writeFileDurable, type FilesApi } from "./Files.ts"
import { encodeHint, forEachHint, hintFits, readHintHeader, type HintEntry } from "./HintFile.ts"
import { KeyIndex } from "./KeyIndex.ts"
import { decodeValid, encodeInto, encodedSize, MAX_KEY_BYTES, probe, RecordType } from "./Record.ts"
import { scan, type Damage } from "./Recovery.ts"

/** When a write is acknowledged. */
export type FsyncMode = "always" | "batch" | "never"

/** Engine settings. Those marked live may be changed on an open log with `reconfigure`. */
export interface LogConfig {
  readonly dir: string
  readonly fsync: FsyncMode
  /** A segment is sealed once it reaches this size. */
  readonly maxSegmentBytes: number
  /** Largest value accepted (live). */
  readonly maxValueBytes: number
  /** Largest metadata accepted (live). */
  readonly maxMetaBytes: number
  /** A sealed segment is compacted once this share of its bytes is dead (live). */
  readonly compactDeadRatio: number
  /** ...or once it holds at least this many dead bytes (live). */
  readonly compactDeadBytes: number
  /** Sealed segments smaller than this are merged together (live). */
  readonly compactSmallBytes: number
  /** Tombstones younger than this are never dropped, so replicas can learn of the delete (live). */
  readonly tombstoneGraceMs: number
  /** Wall clock, in ms. */
  readonly now: () => number
}

/** Defaults for everything but `dir`. */
export const defaultLogConfig: Omit<LogConfig, "dir"> = {
  fsync: "batch",
  maxSegmentBytes: 64 * 1024 * 1024,
  maxValueBytes: 1024 * 1024,
  maxMetaBytes: 1024 * 1024,
  compactDeadRatio: 0.4,
  compactDeadBytes: 32 * 1024 * 1024,
  compactSmallBytes: 4 * 1024 * 1024,
  tombstoneGraceMs: 24 * 60 * 60 * 1000,
  now: Date.now
}

/** A segment file and what is known of it. */
export interface Segment {
  readonly id: number
  readonly file: string
  readonly fd: number
  /** Bytes of the file that readers may use (committed records only). */
  size: number
  /** Bytes of records the index points at. */
  live: number
  minLsn: number
  maxLsn: number
  sealed: boolean
  removed: boolean
  damaged: number
}

/** A record as a reader receives it: the key decoded, the rest as stored. */
export interface Entry {
  readonly key: string
  readonly type: RecordType
  readonly lsn: number
  readonly timestamp: number
  readonly meta: Uint8Array
  readonly value: Uint8Array
}

/** What an acknowledged write returns. */
export interface Written {
  readonly lsn: number
  readonly timestamp: number
}

/** A damaged range found by recovery, with the file it is in. */
export interface DamageReport extends Damage {
  readonly segment: number
  readonly action: "skipped" | "truncated"
}

/** Figures for /metrics and docs. */
export interface LogStats {
  keys: number
  segments: number
  bytes: number
  liveBytes: number
  deadBytes: number
  lastLsn: number
  fsyncs: number
  fsyncSeconds: number
  batches: number
  records: number
  compactions: number
  compactedBytes: number
  reclaimedBytes: number
  droppedTombstones: number
  corruptions: number
  startupMs: number
  startupKeysFromHints: number
  startupKeysFromScans: number
}

type Callback = (err: InvalidKey | ValueTooLarge | DiskFull | IoError | EngineClosed | undefined, w: Written | undefined) => void

interface Pending {
  readonly buf: Buffer
  readonly key: string
  readonly lsn: number
  readonly timestamp: number
  readonly type: RecordType
  readonly cb: Callback
}

const SEG_RE = /^(\d{8})\.seg$/
const segName = (id: number) => `${String(id).padStart(8, "0")}.seg`
const hintName = (id: number) => `${String(id).padStart(8, "0")}.hint`
/** The compaction manifest (Compaction.ts): its presence means "roll forward". */
export const MERGE_MANIFEST = "MERGE"
const LOCK = "LOCK"

/** Encodes and checks a key: 1..1024 bytes of UTF-8. */
export const keyBytes = (key: string): Buffer => {
  if (typeof key !== "string" || key.length === 0) throw new InvalidKey({ message: "key must be 1 to 1024 bytes of UTF-8; got an empty key" })
  if (key.length > MAX_KEY_BYTES) throw new InvalidKey({ message: `key must be at most ${MAX_KEY_BYTES} bytes of UTF-8` })
  const b = Buffer.from(key, "utf8")
  if (b.length > MAX_KEY_BYTES) throw new InvalidKey({ message: `key must be at most ${MAX_KEY_BYTES} bytes of UTF-8; got ${b.length}` })
  return b
}

/** The open log of one data directory. */
export class Log {
  readonly index = new KeyIndex()
  readonly segments = new Map<number, Segment>()
  readonly damage: DamageReport[] = []
  readonly stats: LogStats = {
    keys: 0, segments: 0, bytes: 0, liveBytes: 0, deadBytes: 0, lastLsn: 0, fsyncs: 0, fsyncSeconds: 0,
    batches: 0, records: 0, compactions: 0, compactedBytes: 0, reclaimedBytes: 0, droppedTombstones: 0,
    corruptions: 0, startupMs: 0, startupKeysFromHints: 0, startupKeysFromScans: 0
  }
  config: LogConfig
  active!: Segment
  /** Highest LSN made visible. */
  committedLsn = 0
  nextLsn = 1
  nextSegmentId = 1
  private pending: Pending[] = []
  private flushing = false
  private flushQueued = false
  private failed: EngineClosed | undefined
  private closed = false
  /** Newest record per key of the active segment, for its hint file. */
  private activeHints = new Map<string, HintEntry>()
  private waiters: Array<() => void> = []
  private drained: Array<() => void> = []

  readonly files: FilesApi

  private constructor(files: FilesApi, config: LogConfig) {
    this.files = files
    this.config = config
  }

  /** Opens (or creates) the log in `config.dir`, recovering whatever a crash left. */
  static open(files: FilesApi, config: LogConfig): Log {
    const started = performance.now()
    const log = new Log(files, config)
    files.mkdirp(config.dir)
    log.lock()
    try {
      log.recover()
    } catch (e) {
      log.unlock()
      throw e
    }
    log.stats.startupMs = performance.now() - started
    return log
  }

  // ---- locking -------------------------------------------------------------------------

  private lock(): void {
    const file = path.join(this.config.dir, LOCK)
    if (this.files.exists(file)) {
      const pid = Number.parseInt(this.files.readFile(file).toString("utf8"), 10)
      if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && processAlive(pid)) {
        throw new DataDirLocked({ dir: this.config.dir, pid, message: `data directory ${this.config.dir} is in use by process ${pid}; stop it or choose another --data` })
      }
      if (pid === process.pid && lockedHere.has(path.resolve(this.config.dir))) {
        throw new DataDirLocked({ dir: this.config.dir, pid, message: `data directory ${this.config.dir} is already open in this process` })
      }
    }
    writeFileDurable(this.files, file, Buffer.from(String(process.pid)))
    lockedHere.add(path.resolve(this.config.dir))
  }

  private unlock(): void {
    lockedHere.delete(path.resolve(this.config.dir))
    try {
      this.files.unlink(path.join(this.config.dir, LOCK))
    } catch {
      // already gone: nothing to release
    }
  }

  // ---- recovery ------------------------------------------------------------------------

  private segPath(id: number) {
    return path.join(this.config.dir, segName(id))
  }

  private hintPath(id: number) {
    return path.join(this.config.dir, hintName(id))
  }

  private recover(): void {
    const { dir } = this.config
    finishCompaction(this.files, dir)
    const names = this.files.list(dir)
    for (const n of names) if (n.endsWith(".tmp")) this.files.unlink(path.join(dir, n))
    const ids = names.flatMap((n) => {
      const m = SEG_RE.exec(n)
      return m ? [Number(m[1])] : []
    }).sort((a, b) => a - b)
    for (const n of names) {
      if (n.endsWith(".hint") && !ids.includes(Number(n.slice(0, 8)))) this.files.unlink(path.join(dir, n))
    }
    const scanned: Array<{ seg: Segment; torn: Damage | undefined; hints: Map<string, HintEntry> }> = []
    for (const id of ids) {
      const file = this.segPath(id)
      const fd = this.files.open(file, false)
      const seg: Segment = { id, file, fd, size: this.files.size(fd), live: 0, minLsn: Infinity, maxLsn: -1, sealed: true, removed: false, damaged: 0 }
      this.segments.set(id, seg)
      this.nextSegmentId = Math.max(this.nextSegmentId, id + 1)
      if (!this.loadHint(seg)) scanned.push(this.scanSegment(seg))
    }
    // The segment that was being appended to holds the newest records (or none at all).
    let globalMax = -1
    for (const s of this.segments.values()) globalMax = Math.max(globalMax, s.maxLsn)
    const tail = scanned.filter((s) => s.seg.maxLsn === globalMax || s.seg.maxLsn < 0).at(-1)
    for (const s of scanned) {
      if (s.torn === undefined) continue
      if (s === tail) {
        this.files.truncate(s.seg.fd, s.torn.offset)
        this.files.datasyncSync(s.seg.fd)
        s.seg.size = s.torn.offset
        this.report(s.seg.id, s.torn, "truncated")
      } else {
        s.seg.damaged += s.torn.length
        this.report(s.seg.id, s.torn, "skipped")
      }
    }
    for (const s of scanned) {
      if (s.seg.size === 0 || s.seg.maxLsn < 0) {
        this.dropSegment(s.seg)
        continue
      }
      this.writeHint(s.seg, [...s.hints.values()])
    }
    for (const [, loc] of this.index.entries()) this.segments.get(loc.segment)!.live += loc.size
    for (const s of this.segments.values()) this.nextLsn = Math.max(this.nextLsn, s.maxLsn + 1)
    this.committedLsn = this.nextLsn - 1
    this.openActive()
  }

  private loadHint(seg: Segment): boolean {
    const hintFile = this.hintPath(seg.id)
    if (!this.files.exists(hintFile)) return false
    let buf: Buffer
    try {
      buf = this.files.readFile(hintFile)
    } catch {
      return false
    }
    const h = readHintHeader(buf)
    if (h === undefined || h.segment !== seg.id || h.segmentSize !== seg.size || !hintFits(buf)) return false
    forEachHint(buf, (key, lsn, offset, size, tomb) => {
      if (lsn > this.index.lsnOf(key)) this.index.set(key, seg.id, offset, size, lsn, tomb)
    })
    seg.minLsn = h.minLsn
    seg.maxLsn = h.maxLsn
    this.stats.startupKeysFromHints += h.count
    return true
  }

  private scanSegment(seg: Segment) {
    const buf = Buffer.allocUnsafe(seg.size)
    let got = 0
    while (got < seg.size) {
      const n = this.files.read(seg.fd, buf, got, seg.size - got, got)
      if (n === 0) break
      got += n
    }
    const hints = new Map<string, HintEntry>()
    const result = scan(buf, got, (r, offset, size) => {
      const key = Buffer.from(r.key.buffer, r.key.byteOffset, r.key.length).toString("utf8")
      const tombstone = r.type === RecordType.Tombstone
      if (r.lsn > this.index.lsnOf(key)) this.index.set(key, seg.id, offset, size, r.lsn, tombstone)
      const prev = hints.get(key)
      if (prev === undefined || prev.lsn < r.lsn) hints.set(key, { key, lsn: r.lsn, offset, size, tombstone })
      if (r.lsn < seg.minLsn) seg.minLsn = r.lsn
      if (r.lsn > seg.maxLsn) seg.maxLsn = r.lsn
    })
    this.stats.startupKeysFromScans += hints.size
    for (const d of result.damaged) {
      seg.damaged += d.length
      this.report(seg.id, d, "skipped")
    }
    return { seg, torn: result.tornTail, hints }
  }

  private report(segment: number, d: Damage, action: DamageReport["action"]) {
    this.damage.push({ segment, ...d, action })
    this.stats.corruptions++
  }

  private writeHint(seg: Segment, entries: HintEntry[]): void {
    try {
      writeFileDurable(this.files, this.hintPath(seg.id), encodeHint({ segment: seg.id, minLsn: seg.minLsn, maxLsn: seg.maxLsn, segmentSize: seg.size }, entries))
    } catch {
      // A hint is an optimisation: without it the next start scans this segment.
    }
  }

  private openActive(): void {
    const id = this.nextSegmentId++
    const file = this.segPath(id)
    const fd = this.files.open(file, true)
    this.files.syncDir(this.config.dir)
    const seg: Segment = { id, file, fd, size: 0, live: 0, minLsn: Infinity, maxLsn: -1, sealed: false, removed: false, damaged: 0 }
    this.segments.set(id, seg)
    this.active = seg
    this.activeHints = new Map()
  }

  /** Seals the active segment (its hint file is written) and opens a new one. */
  private rotate(): void {
    const old = this.active
    const hints = [...this.activeHints.values()]
    this.openActive()
    old.sealed = true
    this.writeHint(old, hints)
  }

  /** Removes a segment from the log: the file is unlinked and its descriptor closed. */
  dropSegment(seg: Segment): void {
    seg.removed = true
    this.segments.delete(seg.id)
    for (const f of [seg.file, this.hintPath(seg.id)]) {
      try {
        this.files.unlink(f)
      } catch {
        // absent hint
      }
    }
    this.files.close(seg.fd)
  }

  // ---- writes --------------------------------------------------------------------------

  /** Appends a record; `cb` runs once it is as durable as the fsync mode promises. */
  append(type: RecordType, key: string, value: Uint8Array | undefined, meta: Uint8Array | undefined, cb: Callback): void {
    if (this.closed || this.failed) return cb(this.failed ?? new EngineClosed({ message: "the storage engine is closed" }), undefined)
    let k: Buffer
    try {
      k = keyBytes(key)
    } catch (e) {
      return cb(e as InvalidKey, undefined)
    }
    const vlen = value?.length ?? 0
    const mlen = meta?.length ?? 0
    if (vlen > this.config.maxValueBytes) {
      return cb(new ValueTooLarge({ size: vlen, limit: this.config.maxValueBytes, message: `value is ${vlen} bytes; the limit is ${this.config.maxValueBytes}` }), undefined)
    }
    if (mlen > this.config.maxMetaBytes) {
      return cb(new ValueTooLarge({ size: mlen, limit: this.config.maxMetaBytes, message: `metadata is ${mlen} bytes; the limit is ${this.config.maxMetaBytes}` }), undefined)
    }
    const lsn = this.nextLsn++
    const timestamp = this.config.now()
    const buf = Buffer.allocUnsafe(encodedSize(k.length, mlen, vlen))
    encodeInto({ type, lsn, timestamp, key: k, meta, value }, buf, 0)
    this.pending.push({ buf, key, lsn, timestamp, type, cb })
    this.scheduleFlush()
  }

  /**
   * Starts a flush at the end of this microtask checkpoint, unless one runs: writers resumed
   * by the last commit (promise continuations) append first and share the next batch,
   * instead of the first of them being flushed alone.
   */
  private scheduleFlush(): void {
    if (this.flushing || this.flushQueued) return
    this.flushQueued = true
    queueMicrotask(() => {
      this.flushQueued = false
      if (!this.flushing) this.flush()
    })
  }

  private flush(): void {
    if (this.pending.length === 0) {
      for (const d of this.drained.splice(0)) d()
      return
    }
    this.flushing = true
    const batch = this.config.fsync === "always" ? this.pending.splice(0, 1) : this.pending.splice(0)
    let total = 0
    for (const p of batch) total += p.buf.length
    const fail = (e: unknown) => {
      const err = e instanceof EngineClosed ? e : fromFsError(this.active.file, e)
      for (const p of batch) p.cb(err, undefined)
      this.flushing = false
      this.flush()
    }
    try {
      if (this.active.size > 0 && this.active.size + total > this.config.maxSegmentBytes) this.rotate()
    } catch (e) {
      return fail(e)
    }
    const seg = this.active
    const pos = seg.size
    const data = batch.length === 1 ? batch[0]!.buf : Buffer.concat(batch.map((p) => p.buf), total)
    try {
      this.files.writeAll(seg.fd, data, 0, total, pos)
    } catch (e) {
      this.rollback(seg, pos)
      return fail(e)
    }
    if (this.config.fsync === "never") return this.commit(seg, pos, batch)
    const t0 = performance.now()
    this.files.datasync(seg.fd).then(
      () => {
        this.stats.fsyncs++
        this.stats.fsyncSeconds += (performance.now() - t0) / 1000
        this.commit(seg, pos, batch)
      },
      (e) => {
        // After a failed fsync the page cache's state is unknown (PostgreSQL's "fsyncgate"):
        // cut the batch off and make sure the cut is durable, or stop taking writes.
        if (!this.rollback(seg, pos)) {
          this.failed = new EngineClosed({ message: `fsync failed on ${seg.file} and could not be undone; restart the node` })
        }
        fail(e)
      }
    )
  }

  /** Cuts a failed batch off the file. False if even that failed. */
  private rollback(seg: Segment, pos: number): boolean {
    try {
      this.files.truncate(seg.fd, pos)
      this.files.datasyncSync(seg.fd)
      return true
    } catch {
      return false
    }
  }

  private commit(seg: Segment, pos: number, batch: Pending[]): void {
    let off = pos
    for (const p of batch) {
      const size = p.buf.length
      const tomb = p.type === RecordType.Tombstone
      this.place(p.key, seg, off, size, p.lsn, tomb)
      this.activeHints.set(p.key, { key: p.key, lsn: p.lsn, offset: off, size, tombstone: tomb })
      if (p.lsn < seg.minLsn) seg.minLsn = p.lsn
      seg.maxLsn = p.lsn
      off += size
    }
    seg.size = off
    this.committedLsn = batch[batch.length - 1]!.lsn
    this.stats.batches++
    this.stats.records += batch.length
    for (const p of batch) p.cb(undefined, { lsn: p.lsn, timestamp: p.timestamp })
    for (const w of this.waiters.splice(0)) w()
    this.flushing = false
    if (this.pending.length > 0) this.scheduleFlush()
    else for (const d of this.drained.splice(0)) d()
  }

  /** Points the index at a newer record, keeping per-segment live bytes exact. */
  place(key: string, seg: Segment, offset: number, size: number, lsn: number, tombstone: boolean): boolean {
    const idx = this.index
    if (!idx.replaceIfNewer(key, seg.id, offset, size, lsn, tombstone)) return false
    if (idx.replacedSegment >= 0) {
      const os = this.segments.get(idx.replacedSegment)
      if (os !== undefined) os.live -= idx.replacedSize
    }
    seg.live += size
    return true
  }

  // ---- reads ---------------------------------------------------------------------------

  /** The newest record of `key` (tombstones included), or undefined. One positional read. */
  read(key: string): Entry | undefined {
    const loc = this.index.get(key)
    if (loc === undefined) return undefined
    const seg = this.segments.get(loc.segment)!
    const buf = Buffer.allocUnsafe(loc.size)
    const n = this.files.read(seg.fd, buf, 0, loc.size, loc.offset)
    if (n !== loc.size || probe(buf, 0, loc.size)._tag !== "ok") {
      this.stats.corruptions++
      throw new CorruptRecord({ segment: seg.id, offset: loc.offset, message: `record of key ${JSON.stringify(key)} in segment ${seg.id} at ${loc.offset} failed its checksum; the value is not returned` })
    }
    const r = decodeValid(buf, 0)
    return { key, type: r.type, lsn: r.lsn, timestamp: r.timestamp, meta: r.meta, value: r.value }
  }

  /** Reads the raw bytes of a record and checks them; undefined if damaged. */
  readRaw(seg: Segment, offset: number, size: number): Buffer | undefined {
    const buf = Buffer.allocUnsafe(size)
    const n = this.files.read(seg.fd, buf, 0, size, offset)
    return n === size && probe(buf, 0, size)._tag === "ok" ? buf : undefined
  }

  /** Calls `f` once the next commit lands (or at close). */
  onCommit(f: () => void): void {
    this.waiters.push(f)
  }

  // ---- life cycle ----------------------------------------------------------------------

  /** Settings that can change on an open log. */
  reconfigure(patch: Partial<Pick<LogConfig, "maxValueBytes" | "maxMetaBytes" | "compactDeadRatio" | "compactDeadBytes" | "compactSmallBytes" | "tombstoneGraceMs">>): void {
    this.config = { ...this.config, ...patch }
  }

  get isClosed(): boolean {
    return this.closed
  }

  /** Waits for every accepted write to be acknowledged or failed. */
  drain(): Promise<void> {
    if (!this.flushing && this.pending.length === 0) return Promise.resolve()
    return new Promise((resolve) => this.drained.push(resolve))
  }

  /** Stops taking writes, finishes those accepted, seals the active segment, releases the lock. */
  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    await this.drain()
    const a = this.active
    try {
      if (a.size > 0) {
        this.files.datasyncSync(a.fd)
        this.writeHint(a, [...this.activeHints.values()])
      }
    } finally {
      for (const s of this.segments.values()) {
        if (s === a && a.size === 0) this.dropSegment(a)
        else this.files.close(s.fd)
      }
      for (const w of this.waiters.splice(0)) w()
      this.unlock()
    }
  }

  /**
   * Test seam: forgets this open log as a crash would, without flushing, sealing or
   * removing the lock file, so the same process can reopen the directory.
   */
  abandonForTest(): void {
    this.closed = true
    lockedHere.delete(path.resolve(this.config.dir))
  }

  /** Current figures. */
  snapshotStats(): LogStats {
    let bytes = 0
    let live = 0
    for (const s of this.segments.values()) {
      bytes += s.size
      live += s.live
    }
    return { ...this.stats, keys: this.index.size, segments: this.segments.size, bytes, liveBytes: live, deadBytes: bytes - live, lastLsn: this.committedLsn }
  }

  /** Path helpers for Compaction.ts. */
  pathOf(id: number, kind: "seg" | "hint"): string {
    return kind === "seg" ? this.segPath(id) : this.hintPath(id)
  }

  /** Registers a finished compaction output as a sealed segment. */
  adoptSegment(id: number, size: number, minLsn: number, maxLsn: number): Segment {
    const file = this.segPath(id)
    const seg: Segment = { id, file, fd: this.files.open(file, false), size, live: 0, minLsn, maxLsn, sealed: true, removed: false, damaged: 0 }
    this.segments.set(id, seg)
    return seg
  }

  /** Writes a hint for a sealed segment from its entries. */
  sealHint(seg: Segment, entries: HintEntry[]): void {
    this.writeHint(seg, entries)
  }
}

const lockedHere = new Set<string>()

const processAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM"
  }
}

/**
 * Completes or undoes a compaction a crash interrupted. With a manifest, its outputs are
 * whole: rename any left as .tmp and delete the inputs. Without one, the .tmp outputs are
 * incomplete and are deleted by the caller.
 */
export const finishCompaction = (files: FilesApi, dir: string): void => {
  const manifest = path.join(dir, MERGE_MANIFEST)
  if (!files.exists(manifest)) return
  const m = decodeManifest(files.readFile(manifest))
  if (m !== undefined) {
    for (const id of m.outputs) {
      const tmp = path.join(dir, `${segName(id)}.tmp`)
      if (files.exists(tmp)) files.rename(tmp, path.join(dir, segName(id)))
    }
    for (const id of m.inputs) {
      for (const f of [segName(id), hintName(id)]) if (files.exists(path.join(dir, f))) files.unlink(path.join(dir, f))
    }
    files.syncDir(dir)
  }
  files.unlink(manifest)
  files.syncDir(dir)
}

/** The compaction manifest: which outputs replace which inputs. JSON with a CRC line. */
export const encodeManifest = (m: { inputs: number[]; outputs: number[] }): Buffer => {
  const body = JSON.stringify(m)
  return Buffer.from(`${body}\n${crc32(Buffer.from(body))}\n`)
}

const decodeManifest = (buf: Buffer): { inputs: number[]; outputs: number[] } | undefined => {
  const [body, sum] = buf.toString("utf8").split("\n")
  if (body === undefined || sum === undefined || String(crc32(Buffer.from(body))) !== sum) return undefined
  try {
    const m = JSON.parse(body) as { inputs: number[]; outputs: number[] }
    return Array.isArray(m.inputs) && Array.isArray(m.outputs) ? m : undefined
  } catch {
    return undefined
  }
}

/** Segment and hint file names, for Compaction.ts and tests. */
export const fileNames = { segName, hintName }


/**
 * The segment log: the per-node, append-only sequence of records that everything else is
 * built on. One active segment takes appends through group commit; sealed segments are
 * immutable and carry hint files; the KeyIndex points at each key's newest record, with its
 * partition and content hash. Opening a directory is Startup.ts; the format of a record is
 * Record.ts, of a segment's header SegmentHeader.ts, of hints HintFile.ts, of the control
 * files Manifest.ts; compaction is Compaction.ts; reading onward from an LSN, LogCursor.ts.
 *
 * Invariants: a record is visible to readers and streams only once it is as durable as the
 * fsync mode promises; LSNs only grow; every segment holds its records in LSN order (which
 * lets a stream merge segments by LSN); the record with the highest LSN is never dropped.
 * After a failure that cannot be undone in this process (an fsync or a write that failed,
 * an error after a compaction's commit point) the log is fail-stop: reads go on, every
 * write fails with StorageFailed, and a restart recovers from what the disk holds.
 *
 * Plain code on purpose: this is the per-record hot path. Engine.ts wraps it in Effect.
 */
import * as path from "node:path"
import { hashRecordInto, scratch, type ContentHash } from "./ContentHash.ts"
import { CorruptRecord, DataDirLocked, EngineClosed, fromFsError, InvalidKey, Overloaded, StorageFailed, ValueTooLarge, type DiskFull, type IoError } from "./Errors.ts"
import { writeFileDurable, writeFileDurableAsync, type FileLock, type FilesApi } from "./Files.ts"
import { encodeHint, type HintEntry } from "./HintFile.ts"
import { KeyIndex } from "./KeyIndex.ts"
import { encodeState, STATE_FILE, type Identity } from "./Manifest.ts"
import { decodeValid, encodedSize, encodeInto, MAX_KEY_BYTES, MAX_LSN, MAX_META_BYTES, MAX_PARTITION, MAX_VALUE_BYTES, probe, RecordType } from "./Record.ts"
import type { Damage } from "./Recovery.ts"
import { hintName, makeSegment, makeSegmentAsync, segName, trimSegment, unlinkSegment, unlinkSegmentAsync, type Segment } from "./SegmentFile.ts"
import { RecordCache } from "./RecordCache.ts"
import { recover } from "./Startup.ts"

export type { Segment } from "./SegmentFile.ts"

/** When a write is acknowledged. */
export type FsyncMode = "always" | "batch" | "never"

/** Engine settings. Those marked live may be changed on an open log with `reconfigure`. */
export interface LogConfig {
  readonly dir: string
  readonly fsync: FsyncMode
  /** A segment is sealed once it reaches this size (at most 2 GiB: offsets are u32). */
  readonly maxSegmentBytes: number
  /** Make each new segment at its full size ahead of use, so fdatasync need not commit a new file size. */
  readonly preallocate: boolean
  /** Largest value accepted (live). */
  readonly maxValueBytes: number
  /** Largest metadata accepted (live). */
  readonly maxMetaBytes: number
  /** Bytes of accepted writes waiting for the disk beyond which new writes fail with Overloaded (live). */
  readonly maxPendingBytes: number
  /** Most bytes one write(2) and fdatasync(2) of group commit carries. */
  readonly maxBatchBytes: number
  /** A sealed segment is compacted once this share of its bytes is dead (live). */
  readonly compactDeadRatio: number
  /** ...or once it holds at least this many dead bytes (live). */
  readonly compactDeadBytes: number
  /** Sealed segments smaller than this are merged together (live). */
  readonly compactSmallBytes: number
  /** Tombstones younger than this are never dropped, so replicas can learn of the delete (live). */
  readonly tombstoneGraceMs: number
  /**
   * Per partition, the newest record timestamp (ms) at which a tombstone of that partition may
   * be dropped; -Infinity keeps them all. Asked once per partition per compaction. Absent:
   * `now() - tombstoneGraceMs` for every partition. The node sets it so that a tombstone goes
   * only once every replica holds it (live).
   */
  readonly reapBefore?: ((partition: number) => number) | undefined
  /**
   * Compaction copies at most this many bytes per second (0: no limit) (live). The default,
   * 16 MiB/s, is Cassandra's long-standing `compaction_throughput`: unlimited, a full
   * compaction took the disk from the puts' fdatasyncs (bench:engine, 100k keys: put p50
   * 5.7 ms, p99 54 ms against 0.3 ms and 20-25 ms at 16 MiB/s; 32 MiB/s gave p99 31 ms).
   * A 64 MiB segment takes 4 s; a node overwriting faster than this falls behind, and the
   * operator raises it.
   */
  readonly compactBytesPerSecond: number
  /**
   * Compaction fdatasyncs an output after every this many bytes written (RocksDB's
   * `bytes_per_sync`). Without it hundreds of MB of dirty pages pile up and, on ext4's ordered
   * journal, every put's fdatasync waits for their writeback: puts took ~1 s during a full
   * compaction. 0: sync only at the end.
   */
  readonly compactSyncBytes: number
  /** The partition of a key, for records of format 1, which do not carry one. */
  readonly partitionOf: (key: string) => number
  /** Wall clock, in ms (the simulator's seam). */
  readonly now: () => number
  /** Uniform in [0, 1) (the simulator's seam): segment salts, directory identity. */
  readonly random: () => number
  /** Resolves after `ms` (0: the next turn of the event loop): compaction's pauses (the simulator's seam). */
  readonly sleep: (ms: number) => Promise<void>
  /** Told once when the log becomes fail-stop. */
  readonly onFailure?: ((failure: StorageFailed) => void) | undefined
  /** Bytes of recently read records kept in memory (RecordCache.ts); 0 keeps none. */
  readonly readCacheBytes?: number | undefined
}

/** Upper bound of `maxSegmentBytes`: offsets and sizes are u32 in the index and hints. */
export const MAX_SEGMENT_BYTES = 2 ** 31
/**
 * Keys a partition drop forgets between two yields to the event loop: a few milliseconds of
 * index deletes (the drop visits only the dropped partitions' keys, KeyIndex.keysIn).
 */
const DROP_STEP = 4_096

/** Defaults for everything but `dir`. */
export const defaultLogConfig: Omit<LogConfig, "dir"> = {
  fsync: "batch",
  maxSegmentBytes: 64 * 1024 * 1024,
  preallocate: true,
  maxValueBytes: 1024 * 1024,
  maxMetaBytes: 1024 * 1024,
  maxPendingBytes: 64 * 1024 * 1024,
  maxBatchBytes: 4 * 1024 * 1024,
  compactDeadRatio: 0.4,
  compactDeadBytes: 32 * 1024 * 1024,
  compactSmallBytes: 4 * 1024 * 1024,
  tombstoneGraceMs: 24 * 60 * 60 * 1000,
  compactBytesPerSecond: 16 * 1024 * 1024,
  compactSyncBytes: 1024 * 1024,
  partitionOf: () => 0,
  now: Date.now,
  random: Math.random,
  sleep: (ms) => new Promise((resolve) => (ms <= 0 ? setImmediate(resolve) : setTimeout(resolve, ms)))
}

/** A record as a reader receives it: the key decoded, the rest as stored. */
export interface Entry {
  readonly key: string
  readonly type: RecordType
  readonly lsn: number
  readonly timestamp: number
  readonly partition: number
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
  overloaded: number
  failed: number
  startupMs: number
  startupKeysFromHints: number
  startupKeysFromScans: number
}

/** Errors a write's callback may receive. */
export type WriteError = InvalidKey | ValueTooLarge | DiskFull | IoError | EngineClosed | StorageFailed | Overloaded

type Callback = (err: WriteError | undefined, w: Written | undefined) => void

interface Pending {
  readonly type: RecordType
  readonly key: string
  readonly k: Buffer
  readonly partition: number
  readonly value: Uint8Array | undefined
  readonly meta: Uint8Array | undefined
  readonly size: number
  readonly lsn: number
  readonly timestamp: number
  readonly cb: Callback
  hashHi: number
  hashLo: number
}

const LOCK = "LOCK"

/** Encodes and checks a key: 1..1024 bytes of UTF-8. */
export const keyBytes = (key: string): Buffer => {
  if (typeof key !== "string" || key.length === 0) throw new InvalidKey({ message: "key must be 1 to 1024 bytes of UTF-8; got an empty key" })
  if (key.length > MAX_KEY_BYTES) throw new InvalidKey({ message: `key must be at most ${MAX_KEY_BYTES} bytes of UTF-8` })
  // A lone surrogate has no UTF-8 form: its bytes would read back as another key (U+FFFD),
  // which after a restart would replace that key's record by LSN instead of merging with it.
  if (!key.isWellFormed()) throw new InvalidKey({ message: "key must be valid UTF-8; got a string with a lone surrogate" })
  const b = Buffer.from(key, "utf8")
  if (b.length > MAX_KEY_BYTES) throw new InvalidKey({ message: `key must be at most ${MAX_KEY_BYTES} bytes of UTF-8; got ${b.length}` })
  return b
}

/**
 * Limits beyond the format's hard bounds would write records that every reader rejects as
 * damage: the configured limits are clamped to them.
 */
const withinFormat = (c: LogConfig): LogConfig => ({
  ...c,
  maxValueBytes: Math.min(c.maxValueBytes, MAX_VALUE_BYTES),
  maxMetaBytes: Math.min(c.maxMetaBytes, MAX_META_BYTES)
})

const isPartition = (p: number) => Number.isInteger(p) && p >= 0 && p <= MAX_PARTITION

/** The open log of one data directory. */
export class Log {
  readonly index = new KeyIndex()
  /** Recently read records, used only while the index names the same LSN. */
  readonly cache: RecordCache
  readonly segments = new Map<number, Segment>()
  readonly damage: DamageReport[] = []
  readonly stats: LogStats = {
    keys: 0, segments: 0, bytes: 0, liveBytes: 0, deadBytes: 0, lastLsn: 0, fsyncs: 0, fsyncSeconds: 0,
    batches: 0, records: 0, compactions: 0, compactedBytes: 0, reclaimedBytes: 0, droppedTombstones: 0,
    corruptions: 0, overloaded: 0, failed: 0, startupMs: 0, startupKeysFromHints: 0, startupKeysFromScans: 0
  }
  config: LogConfig
  active!: Segment
  /** Highest LSN made visible. */
  committedLsn = 0
  nextLsn = 1
  nextSegmentId = 1
  /** The directory's identity (Manifest.ts). */
  identity!: Identity
  /** LSN through which compaction may have removed superseded records. */
  compactedThrough = 0
  /** Per dropped partition, the LSN through which its records are gone. */
  readonly drops = new Map<number, number>()
  private pending: Pending[] = []
  private pendingBytes = 0
  private flushing = false
  private flushQueued = false
  private sealWaiters: Array<(sealed: boolean) => void> = []
  private failure: StorageFailed | undefined
  private closed = false
  /** Newest record per key of the active segment, for its hint file. */
  private activeHints = new Map<string, HintEntry>()
  private waiters: Array<() => void> = []
  private drained: Array<() => void> = []
  private lockHandle: FileLock | undefined
  /** The next active segment, made ahead off the request path. */
  private spare: Segment | undefined
  private spareMaking: Promise<void> | undefined
  /** Sealing work (trim, hint) runs here, in order, off the request path. */
  private background: Promise<void> = Promise.resolve()

  readonly files: FilesApi

  private constructor(files: FilesApi, config: LogConfig) {
    this.files = files
    if (!(config.maxSegmentBytes > 0 && config.maxSegmentBytes <= MAX_SEGMENT_BYTES)) {
      throw new RangeError(`maxSegmentBytes must be in 1..${MAX_SEGMENT_BYTES}; got ${config.maxSegmentBytes}`)
    }
    this.config = withinFormat(config)
    this.cache = new RecordCache(config.readCacheBytes ?? 0)
  }

  /** Opens (or creates) the log in `config.dir`, recovering whatever a crash left. */
  static open(files: FilesApi, config: LogConfig): Log {
    const started = performance.now()
    const log = new Log(files, config)
    makeDirDurable(files, config.dir)
    log.lock()
    try {
      recover(log)
      log.openActive()
    } catch (e) {
      for (const s of log.segments.values()) {
        try {
          files.close(s.fd)
        } catch {
          // already closed
        }
      }
      log.unlock()
      throw e
    }
    log.stats.startupMs = performance.now() - started
    return log
  }

  // ---- locking -------------------------------------------------------------------------

  private lock(): void {
    const file = path.join(this.config.dir, LOCK)
    const held = this.files.tryLock(file)
    if (held === undefined) {
      let pid = 0
      try {
        pid = Number.parseInt(this.files.readFile(file).toString("utf8"), 10) || 0
      } catch {
        // unreadable: the pid is only a hint for the message
      }
      const by = pid === process.pid ? " by this process (it is already open here)" : pid > 0 ? ` by process ${pid}` : ""
      throw new DataDirLocked({ dir: this.config.dir, pid, message: `data directory ${this.config.dir} is in use${by}; stop it or choose another --data` })
    }
    this.lockHandle = held
  }

  private unlock(): void {
    this.lockHandle?.release()
    this.lockHandle = undefined
  }

  // ---- segments ------------------------------------------------------------------------

  /** Path of a segment or hint file. */
  pathOf(id: number, kind: "seg" | "hint"): string {
    return path.join(this.config.dir, kind === "seg" ? segName(id) : hintName(id))
  }

  private segmentSpec(kind: "log" | "compacted", preallocate: boolean) {
    return {
      files: this.files, dir: this.config.dir, id: this.nextSegmentId++, kind, now: this.config.now, random: this.config.random,
      preallocate: preallocate ? this.config.maxSegmentBytes : 0
    }
  }

  /** Makes a new compaction output segment (header written and synced). */
  makeOutput(): Segment {
    return makeSegment(this.segmentSpec("compacted", false))
  }

  private openActive(): void {
    const seg = this.spare ?? makeSegment(this.segmentSpec("log", false))
    this.spare = undefined
    this.segments.set(seg.id, seg)
    this.active = seg
    this.activeHints = new Map()
    this.makeSpare()
  }

  /**
   * Starts making the next active segment in the background (preallocated if configured),
   * so that a rotation is a switch of descriptors, not two fsyncs on the request path.
   */
  private makeSpare(): void {
    if (this.spare !== undefined || this.spareMaking !== undefined || this.closed) return
    const spec = this.segmentSpec("log", this.config.preallocate)
    this.spareMaking = makeSegmentAsync(spec).then(
      (seg) => {
        this.spareMaking = undefined
        if (this.closed) unlinkSegment(this.files, this.config.dir, seg)
        else this.spare = seg
      },
      () => {
        // No spare (a full disk, say): the next rotation makes its segment synchronously.
        this.spareMaking = undefined
      }
    )
  }

  /** Seals the active segment and switches to the spare (or a new segment); sealing finishes in the background. */
  private rotate(): void {
    const old = this.active
    const hints = [...this.activeHints.values()]
    this.openActive()
    old.sealed = true
    this.afterSeal(old, hints)
  }

  private afterSeal(seg: Segment, hints: HintEntry[]): void {
    this.background = this.background.then(async () => {
      try {
        await trimSegment(this.files, seg)
        if (!seg.removed) await writeFileDurableAsync(this.files, this.pathOf(seg.id, "hint"), this.hintOf(seg, hints))
      } catch {
        // A hint is an optimisation and untrimmed space is zeros: the next start copes with both.
      }
    })
  }

  private hintOf(seg: Segment, entries: ReadonlyArray<HintEntry>): Buffer {
    return encodeHint({ segment: seg.id, minLsn: seg.minLsn, maxLsn: seg.maxLsn, segmentSize: seg.size }, entries)
  }

  /** Writes the hint of a sealed segment now (start-up, compaction outputs). Failure is not an error. */
  writeHintNow(seg: Segment, entries: ReadonlyArray<HintEntry>): void {
    try {
      writeFileDurable(this.files, this.pathOf(seg.id, "hint"), this.hintOf(seg, entries))
    } catch {
      // without it the next start scans this segment
    }
  }

  /** Removes a segment from the log: the file is unlinked and its descriptor closed. */
  dropSegment(seg: Segment): void {
    this.segments.delete(seg.id)
    unlinkSegment(this.files, this.config.dir, seg)
  }

  /** `dropSegment`, closing the descriptor off the event loop; the segment is gone when it returns. */
  dropSegmentAsync(seg: Segment): Promise<void> {
    this.segments.delete(seg.id)
    return unlinkSegmentAsync(this.files, this.config.dir, seg)
  }

  /** Takes a damaged segment out of the log, keeping its file aside as `<name>.damaged`. */
  quarantineSegment(seg: Segment): void {
    this.segments.delete(seg.id)
    try {
      this.files.rename(seg.file, `${seg.file}.damaged`)
    } finally {
      // The segment's name is gone now; this removes its hint and closes it.
      unlinkSegment(this.files, this.config.dir, seg)
    }
  }

  /** Registers a sealed segment (start-up, compaction outputs). */
  addSegment(seg: Segment): void {
    this.segments.set(seg.id, seg)
    this.nextSegmentId = Math.max(this.nextSegmentId, seg.id + 1)
  }

  /** Records damage found by recovery. */
  report(segment: number, d: Damage, action: DamageReport["action"]): void {
    this.damage.push({ segment, ...d, action })
    this.stats.corruptions++
  }

  // ---- writes --------------------------------------------------------------------------

  /**
   * Appends a record of `partition`; `cb` runs once it is as durable as the fsync mode
   * promises. `value` and `meta` must not change until then.
   */
  append(type: RecordType, key: string, partition: number, value: Uint8Array | undefined, meta: Uint8Array | undefined, cb: Callback): void {
    if (this.closed) return cb(new EngineClosed({ message: "the storage engine is closed" }), undefined)
    if (this.failure !== undefined) return cb(this.failure, undefined)
    if (!isPartition(partition)) throw new RangeError(`partition must be an integer in 0..${MAX_PARTITION}; got ${partition}`)
    let k: Buffer
    try {
      k = keyBytes(key)
    } catch (e) {
      return cb(e as InvalidKey, undefined)
    }
    const vlen = type === RecordType.Tombstone ? 0 : value?.length ?? 0
    const mlen = meta?.length ?? 0
    if (vlen > this.config.maxValueBytes) {
      return cb(new ValueTooLarge({ size: vlen, limit: this.config.maxValueBytes, message: `value is ${vlen} bytes; the limit is ${this.config.maxValueBytes}` }), undefined)
    }
    if (mlen > this.config.maxMetaBytes) {
      return cb(new ValueTooLarge({ size: mlen, limit: this.config.maxMetaBytes, message: `metadata is ${mlen} bytes; the limit is ${this.config.maxMetaBytes}` }), undefined)
    }
    const size = encodedSize(k.length, mlen, vlen)
    if (this.pending.length > 0 && this.pendingBytes + size > this.config.maxPendingBytes) {
      this.stats.overloaded++
      return cb(new Overloaded({ pendingBytes: this.pendingBytes, message: `${this.pendingBytes} bytes of writes are waiting for the disk (limit ${this.config.maxPendingBytes}); retry shortly` }), undefined)
    }
    if (this.nextLsn > MAX_LSN) {
      this.failStop(`the log sequence number space is exhausted (${MAX_LSN})`)
      return cb(this.failure, undefined)
    }
    const lsn = this.nextLsn++
    this.pending.push({ type, key, k, partition, value: type === RecordType.Tombstone ? undefined : value, meta, size, lsn, timestamp: this.config.now(), cb, hashHi: 0, hashLo: 0 })
    this.pendingBytes += size
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
      this.flush()
    })
  }

  /** Fails a batch's writers; a throwing callback does not stop the others. */
  private failBatch(batch: ReadonlyArray<Pending>, err: WriteError): void {
    for (const p of batch) {
      try {
        p.cb(err, undefined)
      } catch {
        // the caller's bug; the log goes on
      }
    }
  }

  /** Writes batches until one waits for its fsync or nothing is pending. Iterative: no recursion per failed batch. */
  private flush(): void {
    if (this.flushing) return
    for (;;) {
      this.sealForWaiters()
      if (this.pending.length === 0) {
        for (const d of this.drained.splice(0)) d()
        return
      }
      if (this.failure !== undefined) {
        const all = this.pending.splice(0)
        this.pendingBytes = 0
        this.failBatch(all, this.failure)
        continue
      }
      const first = this.pending[0]!
      if (this.active.size > this.active.dataStart && this.active.size + first.size > this.config.maxSegmentBytes) {
        try {
          this.rotate()
        } catch (e) {
          const batch = this.pending.splice(0, 1)
          this.pendingBytes -= first.size
          this.failBatch(batch, fromFsError(this.config.dir, e))
          continue
        }
      }
      const seg = this.active
      // A record larger than a segment goes alone into an empty one.
      const room = Math.max(this.config.maxSegmentBytes - seg.size, first.size)
      const limit = Math.max(this.config.maxBatchBytes, first.size)
      let n = 0
      let total = 0
      while (n < this.pending.length) {
        const s = this.pending[n]!.size
        if (n > 0 && (total + s > room || total + s > limit || this.config.fsync === "always")) break
        total += s
        n++
      }
      const batch = this.pending.splice(0, n)
      this.pendingBytes -= total
      const buf = Buffer.allocUnsafe(total)
      let at = 0
      for (const p of batch) {
        encodeInto({ type: p.type, lsn: p.lsn, timestamp: p.timestamp, partition: p.partition, key: p.k, meta: p.meta, value: p.value }, buf, at, seg.salt)
        hashRecordInto(buf, at, p.size)
        p.hashHi = scratch.hi
        p.hashLo = scratch.lo
        at += p.size
      }
      const pos = seg.size
      try {
        this.files.writeAll(seg.fd, buf, 0, total, pos)
      } catch (e) {
        const err = fromFsError(seg.file, e)
        if (err._tag === "DiskFull" && this.rollback(seg, pos)) this.failBatch(batch, err)
        else {
          this.failStop(`writing to ${seg.file} failed (${err.message}); the file's state is unknown`)
          this.failBatch(batch, this.failure!)
        }
        continue
      }
      if (this.config.fsync === "never") {
        this.commit(seg, pos, batch)
        continue
      }
      this.flushing = true
      const t0 = performance.now()
      this.files.datasync(seg.fd).then(
        () => {
          this.stats.fsyncs++
          this.stats.fsyncSeconds += (performance.now() - t0) / 1000
          this.flushing = false
          this.commit(seg, pos, batch)
          this.scheduleFlush()
        },
        (e) => {
          // After a failed fsync the page cache's state is unknown (PostgreSQL's "fsyncgate"):
          // retrying or truncating cannot be trusted, so the log stops taking writes.
          this.flushing = false
          this.failStop(`fsync of ${seg.file} failed (${fromFsError(seg.file, e).message}); restart the node to recover`)
          this.failBatch(batch, this.failure!)
          this.flush()
        }
      )
      return
    }
  }

  /** Cuts a batch that a full disk refused off the file. False if even that failed. */
  private rollback(seg: Segment, pos: number): boolean {
    try {
      this.files.truncate(seg.fd, pos)
      this.files.datasyncSync(seg.fd)
      seg.allocated = pos
      return true
    } catch {
      return false
    }
  }

  /** Makes the log fail-stop (see the module comment). Idempotent. */
  failStop(reason: string): void {
    if (this.failure !== undefined) return
    this.failure = new StorageFailed({ message: `storage stopped taking writes: ${reason}` })
    this.stats.failed = 1
    try {
      this.config.onFailure?.(this.failure)
    } catch {
      // a listener's bug must not hide the failure
    }
  }

  /** Why the log stopped taking writes, if it did. */
  get failed(): StorageFailed | undefined {
    return this.failure
  }

  private commit(seg: Segment, pos: number, batch: Pending[]): void {
    let off = pos
    for (const p of batch) {
      const tomb = p.type === RecordType.Tombstone
      this.place(p.key, seg, off, p.size, p.lsn, tomb, p.partition, p.hashHi, p.hashLo)
      this.activeHints.set(p.key, { key: p.key, lsn: p.lsn, offset: off, size: p.size, tombstone: tomb, partition: p.partition, hashHi: p.hashHi, hashLo: p.hashLo })
      if (p.lsn < seg.minLsn) seg.minLsn = p.lsn
      seg.maxLsn = p.lsn
      off += p.size
    }
    seg.size = off
    this.committedLsn = batch[batch.length - 1]!.lsn
    this.stats.batches++
    this.stats.records += batch.length
    for (const p of batch) {
      try {
        p.cb(undefined, { lsn: p.lsn, timestamp: p.timestamp })
      } catch {
        // the caller's bug; the log goes on
      }
    }
    for (const w of this.waiters.splice(0)) w()
  }

  /** Points the index at a newer record, keeping per-segment live bytes exact. */
  place(key: string, seg: Segment, offset: number, size: number, lsn: number, tombstone: boolean, partition: number, hashHi: number, hashLo: number): boolean {
    const idx = this.index
    if (!idx.replaceIfNewer(key, seg.id, offset, size, lsn, tombstone, partition, hashHi, hashLo)) return false
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
    const cached = this.cache.get(key, loc.lsn)
    if (cached !== undefined) return cached
    const seg = this.segments.get(loc.segment)!
    const buf = this.readRaw(seg, loc.offset, loc.size)
    const r = buf === undefined ? undefined : decodeValid(buf, 0)
    // The record must be the one the index names: a stale location is as bad as a bad CRC.
    if (r === undefined || r.lsn !== loc.lsn || Buffer.from(r.key.buffer, r.key.byteOffset, r.key.length).toString("utf8") !== key) {
      this.stats.corruptions++
      throw new CorruptRecord({ segment: seg.id, offset: loc.offset, message: `record of key ${JSON.stringify(key)} in segment ${seg.id} at ${loc.offset} is damaged or not the indexed one; the value is not returned` })
    }
    if (!this.cache.admits(key, loc.lsn, loc.size)) {
      return { key, type: r.type, lsn: r.lsn, timestamp: r.timestamp, partition: loc.partition, meta: r.meta, value: r.value }
    }
    // A kept record gets bytes of its own: `buf` shares an 8 KiB slab of Node's pool with
    // other reads, which the cache's byte bound would not count.
    const own = Buffer.allocUnsafeSlow(loc.size)
    own.set(buf!)
    const at = (part: Uint8Array) => own.subarray(part.byteOffset - buf!.byteOffset, part.byteOffset - buf!.byteOffset + part.length)
    const meta = at(r.meta)
    const value = at(r.value)
    const entry: Entry = { key, type: r.type, lsn: r.lsn, timestamp: r.timestamp, partition: loc.partition, meta, value }
    this.cache.put(key, loc.lsn, entry, loc.size)
    return entry
  }

  /** The content hash of the newest record of `key`, or undefined. No disk read. */
  contentHash(key: string): number | undefined {
    const loc = this.index.get(key)
    return loc?.hash
  }

  /** Reads the raw bytes of a record and checks them under its segment's salt; undefined if damaged. */
  readRaw(seg: Segment, offset: number, size: number): Buffer | undefined {
    // From Node's pool: a fresh allocation per read costs more than the pread itself (new
    // memory is faulted in by the kernel's copy). `read` copies what the cache keeps.
    const buf = Buffer.allocUnsafe(size)
    const n = this.files.read(seg.fd, buf, 0, size, offset)
    return n === size && probe(buf, 0, size, seg.salt)._tag === "ok" ? buf : undefined
  }

  /** Calls `f` once the next commit lands (or at close). */
  onCommit(f: () => void): void {
    this.waiters.push(f)
  }

  // ---- partitions ----------------------------------------------------------------------

  /** Keys (tombstones included) in `partition`. */
  countPartition(partition: number): number {
    return this.index.countOf(partition)
  }

  /**
   * Drops every record of `partition` written so far, durably: after return (and after a
   * crash) none of them is read, streamed or kept by compaction. Writes to the partition
   * accepted later are kept. Cheap: one small file written, the partition's keys visited once.
   */
  dropPartition(partition: number): Promise<number> {
    return this.dropPartitions([partition])
  }

  /**
   * Drops several partitions at once (what moved away after a rebalance): one durable STATE
   * write, then their keys forgotten in steps that yield to the event loop, so requests are
   * not held while hundreds of thousands of keys go. The drop marks are
   * durable before the first key is forgotten: a crash in between is finished at start-up.
   * Returns how many keys went.
   */
  async dropPartitions(partitions: ReadonlyArray<number>): Promise<number> {
    for (const p of partitions) {
      if (!isPartition(p)) throw new RangeError(`partition must be an integer in 0..${MAX_PARTITION}; got ${p}`)
    }
    if (this.closed) throw new EngineClosed({ message: "the storage engine is closed" })
    if (partitions.length === 0) return 0
    const through = this.nextLsn - 1
    await this.drain()
    for (const p of partitions) this.drops.set(p, Math.max(this.drops.get(p) ?? 0, through))
    this.saveState()
    let n = 0
    for (const keys of this.index.keysIn(new Set(partitions), DROP_STEP)) {
      n += this.forgetKeys(keys, through)
      if (this.closed) break
      await this.config.sleep(0)
    }
    return n
  }

  /** Removes from the index the keys of `partition` at or below `through` (start-up); returns how many. */
  forgetDropped(partition: number, through: number): number {
    return this.forgetKeys(this.index.keysOf(partition), through)
  }

  private forgetKeys(keys: ReadonlyArray<string>, through: number): number {
    let n = 0
    for (const key of keys) {
      const loc = this.index.get(key)
      if (loc === undefined || loc.lsn > through) continue
      this.index.delete(key)
      const s = this.segments.get(loc.segment)
      if (s !== undefined) s.live -= loc.size
      n++
    }
    return n
  }

  /** Whether a record of `partition` with `lsn` was dropped. */
  isDropped(partition: number, lsn: number): boolean {
    const d = this.drops.get(partition)
    return d !== undefined && lsn <= d
  }

  /** Persists compactedThrough and the partition drops (STATE). */
  saveState(): void {
    writeFileDurable(this.files, path.join(this.config.dir, STATE_FILE), encodeState({ compactedThrough: this.compactedThrough, drops: this.drops }))
  }

  // ---- life cycle ----------------------------------------------------------------------

  /** Settings that can change on an open log. */
  reconfigure(patch: Partial<Pick<LogConfig, "maxValueBytes" | "maxMetaBytes" | "maxPendingBytes" | "compactDeadRatio" | "compactDeadBytes" | "compactSmallBytes" | "tombstoneGraceMs" | "reapBefore" | "compactBytesPerSecond">>): void {
    this.config = withinFormat({ ...this.config, ...patch })
  }

  get isClosed(): boolean {
    return this.closed
  }

  /** Highest LSN made visible (the same as `committedLsn`). */
  get lastLsn(): number {
    return this.committedLsn
  }

  /** Waits for every accepted write to be acknowledged or failed. */
  drain(): Promise<void> {
    if (!this.flushing && !this.flushQueued && this.pending.length === 0) return Promise.resolve()
    return new Promise((resolve) => this.drained.push(resolve))
  }

  /**
   * Seals the active segment now if it holds records, so that a full compaction reaches them
   * (an operator's POST /admin/compact after deletes: the tombstones are in the active
   * segment, which compaction never reads). Rotating under a batch in flight would commit it
   * to the wrong segment, so with a flush running the flush loop seals between two batches
   * (waiting for the log to go idle would never end under steady writes). False when there
   * was nothing to seal, the log is closed or failed, or the next segment could not be made.
   */
  async sealActive(): Promise<boolean> {
    if (this.closed || this.failure !== undefined) return false
    const sealed = !this.flushing && !this.flushQueued && this.pending.length === 0
      ? this.sealNow()
      : await new Promise<boolean>((resolve) => {
        this.sealWaiters.push(resolve)
        this.scheduleFlush()
      })
    if (sealed) await this.settle()
    return sealed
  }

  private sealNow(): boolean {
    if (this.closed || this.failure !== undefined || this.active.size <= this.active.dataStart) return false
    try {
      this.rotate()
      return true
    } catch {
      // No room for a new segment: the writes that follow meet the same and fail with it.
      return false
    }
  }

  /** Seals for the callers of sealActive; only where no batch is in flight. */
  private sealForWaiters(): void {
    if (this.sealWaiters.length === 0) return
    // Writes queued before the call go into the segment being sealed: seal after their batch.
    if (this.active.size <= this.active.dataStart && this.pending.length > 0 && !this.closed && this.failure === undefined) return
    const sealed = this.sealNow()
    for (const w of this.sealWaiters.splice(0)) w(sealed)
  }

  /** Waits for background sealing work (trims, hints, the spare segment). */
  async settle(): Promise<void> {
    await this.background
    await this.spareMaking
  }

  /** Stops taking writes, finishes those accepted, seals the active segment, releases the lock. */
  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    await this.drain()
    await this.settle()
    const a = this.active
    try {
      if (a.size > a.dataStart) {
        if (a.allocated > a.size) this.files.truncate(a.fd, a.size)
        this.files.datasyncSync(a.fd)
        this.writeHintNow(a, [...this.activeHints.values()])
      }
    } finally {
      for (const s of this.segments.values()) {
        if (s === a && a.size <= a.dataStart) this.dropSegment(a)
        else this.files.close(s.fd)
      }
      if (this.spare !== undefined) unlinkSegment(this.files, this.config.dir, this.spare)
      for (const w of this.waiters.splice(0)) w()
      for (const w of this.sealWaiters.splice(0)) w(false)
      this.unlock()
    }
  }

  /**
   * Test seam: forgets this open log as a crash would, without flushing or sealing; the lock
   * is released (the process "died"), the LOCK file is left, so the same process can reopen.
   */
  abandonForTest(): void {
    this.closed = true
    this.unlock()
  }

  /** Current figures. */
  snapshotStats(): LogStats {
    let bytes = 0
    let live = 0
    for (const s of this.segments.values()) {
      bytes += s.size - s.dataStart
      live += s.live
    }
    return { ...this.stats, keys: this.index.size, segments: this.segments.size, bytes, liveBytes: live, deadBytes: bytes - live, lastLsn: this.committedLsn }
  }
}

/**
 * Creates `dir` (and missing parents) so that a power cut cannot take it back: each new
 * directory's entry is made durable by syncing its parent. An existing directory costs one
 * stat per level.
 */
export const makeDirDurable = (files: FilesApi, dir: string): void => {
  const missing: string[] = []
  for (let d = path.resolve(dir); !files.exists(d); d = path.dirname(d)) {
    missing.push(d)
    if (path.dirname(d) === d) break
  }
  files.mkdirp(dir)
  for (const d of missing) files.syncDir(path.dirname(d))
}

/** Segment and hint file names, for Compaction.ts and tests. */
export const fileNames = { segName, hintName }

/**
 * The storage engine as an Effect service: a segment log (Log.ts) opened as a scoped
 * resource, background compaction on a schedule, partitions (scan, count, drop), content
 * hashes, and the log as a stream of changes. This is the engine's boundary: the node uses
 * these calls, never the log's fields. Layers: `layer` (node:fs), `layerMemory` (in-memory
 * files), `layerWith` (any Files), `layerFiles` (a given one).
 */
import { Context, Effect, Layer, Option, Schedule, Stream } from "effect"
import { compact as runCompaction, selectInputs, type CompactionResult } from "./Compaction.ts"
import type { ContentHash } from "./ContentHash.ts"
import { fromFsError, isEngineError, type EngineError, type StorageFailed } from "./Errors.ts"
import { Files, type FilesApi } from "./Files.ts"
import { defaultLogConfig, Log, type DamageReport, type Entry, type LogConfig, type LogStats, type Written } from "./Log.ts"
import { LogCursor } from "./LogCursor.ts"
import { RecordType } from "./Record.ts"
import type { KeyHash, PartitionTree } from "./TictacTree.ts"

/** Engine settings: the log's (see LogConfig) plus the compaction schedule. */
export interface EngineConfig extends Partial<Omit<LogConfig, "dir">> {
  readonly dir: string
  /** How often to look for segments to compact; 0 turns background compaction off. */
  readonly compactionIntervalMs?: number
}

/** How often background compaction looks for work unless configured. */
export const DEFAULT_COMPACTION_INTERVAL_MS = 30_000
/** Bytes of recently read records an engine keeps in memory unless configured (RecordCache.ts). */
export const DEFAULT_READ_CACHE_BYTES = 32 * 1024 * 1024

/** Settings that may change while the engine runs. */
export type LiveSettings = Parameters<Log["reconfigure"]>[0]

/** Whether the engine takes writes, and if not why (fail-stop after an I/O failure). */
export type EngineHealth =
  | { readonly writable: true }
  | { readonly writable: false; readonly reason: string }

/** A consistent listing of one partition: every key it held at `lsn`, each with its newest record. */
export interface PartitionSnapshot {
  /** Changes after this LSN (`changes(lsn + 1)`) cover every write the listing may miss. */
  readonly lsn: number
  readonly keys: number
  readonly entries: Stream.Stream<Entry, EngineError>
}

/** Options of `scanPartition`. */
export interface ScanOptions {
  /** Most bytes of records read per second (0 or absent: no limit). */
  readonly bytesPerSecond?: number
}

/** Options of `changes`. */
export interface StreamOptions {
  /** Keep the stream open and deliver records as they are committed (default true). */
  readonly follow?: boolean
  /** Records per page read from disk (default 512). */
  readonly pageSize?: number
}

/** The per-node storage engine. */
export class Engine extends Context.Service<Engine, {
  /** Stores `value` (and opaque `meta`) under `key` in `partition`; succeeds once durable per the fsync mode. */
  readonly put: (key: string, partition: number, value: Uint8Array, meta?: Uint8Array) => Effect.Effect<Written, EngineError>
  /** Writes a tombstone for `key` in `partition` carrying `meta`. */
  readonly remove: (key: string, partition: number, meta?: Uint8Array) => Effect.Effect<Written, EngineError>
  /** The newest record of `key`, tombstones included. */
  readonly get: (key: string) => Effect.Effect<Option.Option<Entry>, EngineError>
  /** The newest record of `key`'s content hash as anti-entropy compares it (32 bits, TictacTree.contribution; from the index: no disk read). */
  readonly contentHash: (key: string) => Effect.Effect<Option.Option<number>>
  /** Lists one partition consistently with concurrent writes (see PartitionSnapshot), rate-limited. */
  readonly scanPartition: (partition: number, options?: ScanOptions) => Effect.Effect<PartitionSnapshot>
  /** The keys (tombstones included) held in `partition` now, in no particular order. */
  readonly partitionKeys: (partition: number) => Effect.Effect<ReadonlyArray<string>>
  /** A copy of the anti-entropy tree's branches of `partition` (TictacTree.ts); no disk read. */
  readonly tree: (partition: number) => Effect.Effect<PartitionTree>
  /** Every key of `partition` with its key hash and tree contribution (one index pass, no disk read). */
  readonly partitionHashes: (partition: number) => Effect.Effect<ReadonlyArray<KeyHash & { readonly h: number }>>
  /** Keys (tombstones included) held in `partition`. */
  readonly countPartition: (partition: number) => Effect.Effect<number>
  /** Drops every record of `partition` written so far, durably; returns how many keys went. */
  readonly dropPartition: (partition: number) => Effect.Effect<number, EngineError>
  /** Drops several partitions with one durable write and one walk of the index, yielding as it goes; returns how many keys went. */
  readonly dropPartitions: (partitions: ReadonlyArray<number>) => Effect.Effect<number, EngineError>
  /**
   * Every record from `fromLsn` on, in LSN order, then (with follow) new ones as they commit.
   * Fails with SnapshotRequired when compaction may have removed records from `fromLsn` on
   * (the low watermark is `lowWatermark`): take `scanPartition` snapshots instead.
   */
  readonly changes: (fromLsn: number, options?: StreamOptions) => Stream.Stream<Entry, EngineError>
  /** The lowest LSN from which `changes` is complete. */
  readonly lowWatermark: Effect.Effect<number>
  /** The next LSN this engine will assign (every record it holds has a lower one). */
  readonly nextLsn: Effect.Effect<number>
  /** The data directory's identity, made with it (Manifest.ts). */
  readonly identity: string
  /** Whether writes are taken; after an unrecoverable I/O failure, why not. */
  readonly health: Effect.Effect<EngineHealth>
  /** Compacts now: the segments past the thresholds, or all sealed ones with `full`. */
  readonly compact: (options?: { readonly full?: boolean }) => Effect.Effect<CompactionResult | undefined, EngineError>
  readonly stats: Effect.Effect<LogStats>
  /** Damage found by recovery since this engine opened. */
  readonly damage: Effect.Effect<ReadonlyArray<DamageReport>>
  readonly reconfigure: (patch: LiveSettings) => Effect.Effect<void>
  /**
   * The per-request calls as plain functions, for the request path's fast lane (the Effect
   * calls above are built on them): `read` throws an EngineError, `write` calls back once the
   * record is durable per the fsync mode, `nextLsn` is `nextLsn`'s value now.
   */
  readonly now: {
    readonly read: (key: string) => Entry | undefined
    readonly write: (type: RecordType, key: string, partition: number, value: Uint8Array | undefined, meta: Uint8Array | undefined, cb: (err: EngineError | undefined, w: Written | undefined) => void) => void
    readonly nextLsn: () => number
  }
  /** The open log: for benchmarks and engine tests only; the node uses the calls above. */
  readonly log: Log
}>()("tally/engine/Engine") {
  /** The engine over whatever Files is provided. */
  static readonly layerWith = (config: EngineConfig) => Layer.effect(Engine, make(config))
  /** The engine on node:fs. */
  static readonly layer = (config: EngineConfig) => Engine.layerWith(config).pipe(Layer.provide(Files.layer))
  /** The engine on a fresh in-memory file system. */
  static readonly layerMemory = (config: EngineConfig) => Engine.layerWith(config).pipe(Layer.provide(Files.layerMemory))
  /** The engine on a given file system (e.g. a MemoryFiles a test will crash). */
  static readonly layerFiles = (config: EngineConfig, files: FilesApi) => Engine.layerWith(config).pipe(Layer.provide(Files.layerFrom(files)))
}

const mapError = (dir: string) => (e: unknown): EngineError => (isEngineError(e) ? e : fromFsError(dir, e))

/** Opens the engine in the current scope; it closes (flushing and sealing) with the scope. */
export const make = Effect.fnUntraced(function*(config: EngineConfig) {
  const files = yield* Files
  const toError = mapError(config.dir)
  let failure: StorageFailed | undefined
  const onFailure: Array<(f: StorageFailed) => void> = []
  const cfg: LogConfig = {
    ...defaultLogConfig,
    ...config,
    readCacheBytes: config.readCacheBytes ?? DEFAULT_READ_CACHE_BYTES,
    onFailure: (f) => {
      failure = f
      config.onFailure?.(f)
      for (const l of onFailure.splice(0)) l(f)
    }
  }
  const compactions = new Compactions()
  const log = yield* Effect.acquireRelease(
    Effect.try({ try: () => Log.open(files, cfg), catch: toError }),
    (log) => Effect.promise(() => compactions.stop().then(() => log.close())).pipe(Effect.ignore)
  )
  for (const d of log.damage) {
    yield* Effect.logWarning(`recovery: segment ${d.segment} bytes ${d.offset}..${d.offset + d.length} ${d.action} (${d.reason})`)
  }
  // A fail-stop is reported once, as an error line, by a fiber that waits for it.
  yield* Effect.callback<StorageFailed>((resume) => {
    if (failure !== undefined) resume(Effect.succeed(failure))
    else onFailure.push((f) => resume(Effect.succeed(f)))
  }).pipe(
    Effect.flatMap((f) => Effect.logError(`storage is read-only until restart: ${f.message}`)),
    Effect.forkScoped
  )

  const compact = (options?: { readonly full?: boolean }) =>
    Effect.tryPromise({ try: () => compactions.run(log, options?.full === true), catch: toError })

  const interval = config.compactionIntervalMs ?? DEFAULT_COMPACTION_INTERVAL_MS
  if (interval > 0) {
    yield* compact().pipe(
      Effect.tap((r) => (r === undefined ? Effect.void : Effect.logInfo(`compaction: segments ${r.inputs.join(",")} -> ${r.outputs.join(",") || "none"}, ${r.bytesBefore} -> ${r.bytesAfter} bytes`))),
      Effect.catch((e) => Effect.logWarning(`compaction failed: ${e.message}`)),
      Effect.repeat(Schedule.spaced(interval)),
      Effect.delay(interval),
      Effect.forkScoped
    )
  }

  const readNow = (key: string): Entry | undefined => {
    try {
      return log.read(key)
    } catch (e) {
      throw toError(e)
    }
  }
  const append = (type: RecordType, key: string, partition: number, value: Uint8Array | undefined, meta: Uint8Array | undefined) =>
    Effect.callback<Written, EngineError>((resume) => {
      log.append(type, key, partition, value, meta, (err, w) => resume(err !== undefined ? Effect.fail(err) : Effect.succeed(w!)))
    })

  const scanPartition = (partition: number, options?: ScanOptions): Effect.Effect<PartitionSnapshot> =>
    Effect.sync(() => {
      const lsn = log.lastLsn
      const keys = log.index.keysOf(partition)
      const rate = options?.bytesPerSecond ?? 0
      let i = 0
      let bytes = 0
      const started = cfg.now()
      // A page is read synchronously (a pread per key): at most PAGE records or PAGE_BYTES,
      // and an event-loop turn before every page but the first.
      const PAGE = 256
      const PAGE_BYTES = 1024 * 1024
      let first = true
      const readPage: Effect.Effect<readonly [ReadonlyArray<Entry>, Option.Option<void>], EngineError> = Effect.suspend(() => {
        const page: Entry[] = []
        let pageBytes = 0
        try {
          while (page.length < PAGE && pageBytes < PAGE_BYTES && i < keys.length) {
            const e = log.read(keys[i++]!)
            // A key dropped or moved since the listing is not in this partition any more.
            if (e !== undefined && e.partition === partition) {
              page.push(e)
              pageBytes += e.key.length + e.meta.length + e.value.length
            }
          }
        } catch (e) {
          return Effect.fail(toError(e))
        }
        bytes += pageBytes
        const done = i >= keys.length
        const ahead = rate > 0 ? (bytes / rate) * 1000 - (cfg.now() - started) : 0
        const out = Effect.succeed([page, done ? Option.none() : Option.some(undefined)] as const)
        return ahead > 1 ? Effect.delay(out, ahead) : out
      })
      const nextPage = Effect.suspend(() => {
        if (first) {
          first = false
          return readPage
        }
        return Effect.andThen(Effect.yieldNow, readPage)
      })
      return { lsn, keys: keys.length, entries: Stream.paginate(undefined, () => nextPage) }
    })

  /** Bytes of log one page of `changes` passes over at most (records delivered or skipped). */
  const CHANGES_SCAN_BYTES = 1024 * 1024
  /**
   * Pages are read synchronously (LogCursor), each passing over at most CHANGES_SCAN_BYTES,
   * with an event-loop turn before every page but the first: a reader far behind, or one
   * that starts inside a large segment, never holds the loop for more than one page.
   */
  const changes = (fromLsn: number, options?: StreamOptions): Stream.Stream<Entry, EngineError> =>
    Stream.suspend(() => {
      let cursor: LogCursor
      try {
        cursor = new LogCursor(log, fromLsn, { strict: true })
      } catch (e) {
        return Stream.fail(toError(e))
      }
      const follow = options?.follow ?? true
      const pageSize = options?.pageSize ?? 512
      const waitForCommit = Effect.callback<void>((resume) => {
        if (log.isClosed || cursor.hasMore) resume(Effect.void)
        else log.onCommit(() => resume(Effect.void))
      })
      let first = true
      const readNext: Effect.Effect<readonly [ReadonlyArray<Entry>, Option.Option<void>], EngineError> = Effect.suspend(() => {
        if (log.isClosed) return Effect.succeed([[], Option.none()] as const)
        return Effect.try({ try: () => cursor.readPage(pageSize, undefined, CHANGES_SCAN_BYTES), catch: toError }).pipe(
          Effect.flatMap((page) => {
            if (page.length > 0) return Effect.succeed([page, Option.some(undefined)] as const)
            // Out of scan budget before a record of this page: more may follow, after a turn.
            if (cursor.paused) return Effect.andThen(Effect.yieldNow, readNext)
            if (!follow) return Effect.succeed([[], Option.none()] as const)
            return Effect.andThen(waitForCommit, readNext)
          })
        )
      })
      const nextPage = Effect.suspend(() => {
        if (first) {
          first = false
          return readNext
        }
        return Effect.andThen(Effect.yieldNow, readNext)
      })
      return Stream.paginate(undefined, () => nextPage)
    })

  return Engine.of({
    put: (key, partition, value, meta) => append(RecordType.Put, key, partition, value, meta),
    remove: (key, partition, meta) => append(RecordType.Tombstone, key, partition, undefined, meta),
    get: (key) => Effect.try({ try: () => Option.fromNullishOr(readNow(key)), catch: (e) => e as EngineError }),
    contentHash: (key) => Effect.sync(() => Option.fromNullishOr(log.contentHash(key))),
    scanPartition,
    tree: (partition) => Effect.sync(() => log.index.trees.branches(partition)),
    partitionHashes: (partition) => Effect.sync(() => log.index.hashesOf(partition)),
    countPartition: (partition) => Effect.sync(() => log.countPartition(partition)),
    partitionKeys: (partition) => Effect.sync(() => log.index.keysOf(partition)),
    dropPartition: (partition) => Effect.tryPromise({ try: () => log.dropPartition(partition), catch: toError }),
    dropPartitions: (partitions) => Effect.tryPromise({ try: () => log.dropPartitions(partitions), catch: toError }),
    changes,
    lowWatermark: Effect.sync(() => log.compactedThrough + 1),
    nextLsn: Effect.sync(() => log.nextLsn),
    identity: log.identity.id,
    health: Effect.sync((): EngineHealth => (log.failed === undefined ? { writable: true } : { writable: false, reason: log.failed.message })),
    compact,
    stats: Effect.sync(() => log.snapshotStats()),
    damage: Effect.sync(() => log.damage.slice()),
    reconfigure: (patch) => Effect.sync(() => log.reconfigure(patch)),
    now: {
      read: readNow,
      write: (type, key, partition, value, meta, cb) => log.append(type, key, partition, value, meta, cb),
      nextLsn: () => log.nextLsn
    },
    log
  })
})

/** Serialises compactions and lets close abandon a running one. */
class Compactions {
  private tail: Promise<unknown> = Promise.resolve()
  private stopping = false

  run(log: Log, full: boolean): Promise<CompactionResult | undefined> {
    // A full compaction is what an operator asks for to reap now: it seals the active
    // segment first, or the newest writes (and the tombstones just deleted) stay out of it.
    const go = async () => {
      if (this.stopping || log.isClosed) return undefined
      if (full) await log.sealActive()
      if (this.stopping || log.isClosed) return undefined
      return runCompaction(log, selectInputs(log, full), () => this.stopping || log.isClosed)
    }
    const p = this.tail.then(go, go)
    this.tail = p.catch(() => undefined)
    return p
  }

  async stop(): Promise<void> {
    this.stopping = true
    await this.tail
  }
}

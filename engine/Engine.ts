/**
 * The storage engine as an Effect service: a segment log (Log.ts) opened as a scoped
 * resource, background compaction on a schedule, and the log as a stream of events.
 * Layers: `layer` (node:fs), `layerMemory` (in-memory files), `layerWith` (any Files).
 */
import { Context, Effect, Layer, Option, Schedule, Stream } from "effect"
import { compact as runCompaction, selectInputs, type CompactionResult } from "./Compaction.ts"
import { fromFsError, isEngineError, type EngineError } from "./Errors.ts"
import { Files, type FilesApi } from "./Files.ts"
import { defaultLogConfig, Log, type DamageReport, type Entry, type LogConfig, type LogStats, type Written } from "./Log.ts"
import { LogCursor } from "./LogCursor.ts"
import { RecordType } from "./Record.ts"

/** Engine settings: the log's (see LogConfig) plus the compaction schedule. */
export interface EngineConfig extends Partial<Omit<LogConfig, "dir">> {
  readonly dir: string
  /** How often to look for segments to compact; 0 turns background compaction off. */
  readonly compactionIntervalMs?: number
}

/** How often background compaction looks for work unless configured. */
export const DEFAULT_COMPACTION_INTERVAL_MS = 30_000

/** Settings that may change while the engine runs. */
export type LiveSettings = Parameters<Log["reconfigure"]>[0]

/** Options of `stream`. */
export interface StreamOptions {
  /** Keep the stream open and deliver records as they are committed (default true). */
  readonly follow?: boolean
  /** Records per page read from disk (default 512). */
  readonly pageSize?: number
}

/** The per-node storage engine. */
export class Engine extends Context.Service<Engine, {
  /** Stores `value` (and opaque `meta`) under `key`; succeeds once durable per the fsync mode. */
  readonly put: (key: string, value: Uint8Array, meta?: Uint8Array) => Effect.Effect<Written, EngineError>
  /** Writes a tombstone for `key` carrying `meta`. */
  readonly remove: (key: string, meta?: Uint8Array) => Effect.Effect<Written, EngineError>
  /** The newest record of `key`, tombstones included. */
  readonly get: (key: string) => Effect.Effect<Option.Option<Entry>, EngineError>
  /** Every record from `fromLsn` on, in LSN order, then (with follow) new ones as they commit. */
  readonly stream: (fromLsn: number, options?: StreamOptions) => Stream.Stream<Entry, EngineError>
  /** Compacts now: the segments past the thresholds, or all sealed ones with `full`. */
  readonly compact: (options?: { readonly full?: boolean }) => Effect.Effect<CompactionResult | undefined, EngineError>
  readonly stats: Effect.Effect<LogStats>
  /** Damage found by recovery since this engine opened. */
  readonly damage: Effect.Effect<ReadonlyArray<DamageReport>>
  readonly reconfigure: (patch: LiveSettings) => Effect.Effect<void>
  /** The open log, for plain-function hot paths (reads in benchmarks, index walks). */
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
  const cfg: LogConfig = { ...defaultLogConfig, ...config }
  const toError = mapError(cfg.dir)
  const compactions = new Compactions()
  const log = yield* Effect.acquireRelease(
    Effect.try({ try: () => Log.open(files, cfg), catch: toError }),
    (log) => Effect.promise(() => compactions.stop().then(() => log.close())).pipe(Effect.ignore)
  )
  for (const d of log.damage) {
    yield* Effect.logWarning(`recovery: segment ${d.segment} bytes ${d.offset}..${d.offset + d.length} ${d.action} (${d.reason})`)
  }

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

  const append = (type: RecordType, key: string, value: Uint8Array | undefined, meta: Uint8Array | undefined) =>
    Effect.callback<Written, EngineError>((resume) => {
      log.append(type, key, value, meta, (err, w) => resume(err !== undefined ? Effect.fail(err) : Effect.succeed(w!)))
    })

  const stream = (fromLsn: number, options?: StreamOptions): Stream.Stream<Entry, EngineError> =>
    Stream.suspend(() => {
      const cursor = new LogCursor(log, fromLsn)
      const follow = options?.follow ?? true
      const pageSize = options?.pageSize ?? 512
      const waitForCommit = Effect.callback<void>((resume) => {
        if (log.isClosed || cursor.hasMore) resume(Effect.void)
        else log.onCommit(() => resume(Effect.void))
      })
      const nextPage: Effect.Effect<readonly [ReadonlyArray<Entry>, Option.Option<void>], EngineError> = Effect.suspend(() => {
        if (log.isClosed) return Effect.succeed([[], Option.none()] as const)
        return Effect.try({ try: () => cursor.readPage(pageSize), catch: toError }).pipe(
          Effect.flatMap((page) => {
            if (page.length > 0) return Effect.succeed([page, Option.some(undefined)] as const)
            if (!follow) return Effect.succeed([[], Option.none()] as const)
            return Effect.andThen(waitForCommit, nextPage)
          })
        )
      })
      return Stream.paginate(undefined, () => nextPage)
    })

  return Engine.of({
    put: (key, value, meta) => append(RecordType.Put, key, value, meta),
    remove: (key, meta) => append(RecordType.Tombstone, key, undefined, meta),
    get: (key) => Effect.try({ try: () => Option.fromNullishOr(log.read(key)), catch: toError }),
    stream,
    compact,
    stats: Effect.sync(() => log.snapshotStats()),
    damage: Effect.sync(() => log.damage.slice()),
    reconfigure: (patch) => Effect.sync(() => log.reconfigure(patch)),
    log
  })
})

/** Serialises compactions and lets close abandon a running one. */
class Compactions {
  private tail: Promise<unknown> = Promise.resolve()
  private stopping = false

  run(log: Log, full: boolean): Promise<CompactionResult | undefined> {
    const go = () =>
      this.stopping || log.isClosed
        ? undefined
        : runCompaction(log, selectInputs(log, full), () => this.stopping || log.isClosed)
    const p = this.tail.then(go, go)
    this.tail = p.catch(() => undefined)
    return p
  }

  async stop(): Promise<void> {
    this.stopping = true
    await this.tail
  }
}

/**
 * Hinted handoff. When a write's primary replica is unreachable, a fallback node parks the
 * write for it: a separate segment log per absent owner (<data>/handoff/<owner>/), durable
 * and in order, surviving restarts. When the owner is seen up again, the parked log is
 * shipped to it in LSN order, in rate-limited batches; the shipped position advances (and is
 * fsynced) only after the owner acknowledged a batch durable, and the log is deleted once
 * all of it was acknowledged. Parked entries are the same encoded objects the engine stores.
 */
import * as path from "node:path"
import { Context, Effect, Layer, Schedule } from "effect"
import { writeFileDurable, type FilesApi } from "../../engine/Files.ts"
import { defaultLogConfig, Log, makeDirDurable } from "../../engine/Log.ts"
import { LogCursor } from "../../engine/LogCursor.ts"
import { RecordType } from "../../engine/Record.ts"
import { apiError, type ApiError } from "../Errors.ts"
import { KeyLocks } from "../replica/KeyLocks.ts"
import { partitionOf } from "../ring/Ring.ts"
import * as Dvv from "../versions/Dvv.ts"
import { allDeleted, decodeObject, encodeObject, objectBytes, type StoredObject } from "../versions/Sibling.ts"

/** Handoff settings. */
export interface HandoffConfig {
  readonly dataDir: string
  readonly files: FilesApi
  readonly fsync: "always" | "batch" | "never"
  /** Ring size: parked records carry their key's partition, as every record does. */
  readonly partitions: number
  /** Most records shipped per second to one owner. */
  readonly ratePerSecond?: number
  /** Records per batch. */
  readonly batchSize?: number
}

/** A batch of parked records on its way to their owner. */
export interface HandoffBatch {
  readonly t: "handoff"
  readonly records: ReadonlyArray<{ readonly key: string; readonly object: Uint8Array }>
}

/** Sends a batch to its owner; succeeds once the owner has it durable. */
export type Ship = (owner: string, batch: HandoffBatch) => Effect.Effect<void, unknown>

interface Parked {
  readonly owner: string
  readonly log: Log
  /** Highest LSN the owner acknowledged. */
  shipped: number
  /** Where shipping reads next; dropped when a batch fails, to resume from `shipped`. */
  cursor: LogCursor | undefined
  /** Parks between reading the log and their append's acknowledgement. */
  inflight: number
}

/** Parked writes for absent owners. */
export class Handoff extends Context.Service<Handoff, {
  /** Durably merges `object` into what is parked for `owner` under `key`. */
  readonly park: (owner: string, key: string, object: StoredObject) => Effect.Effect<void, ApiError>
  /** What is parked for `owner` under `key`. */
  readonly read: (owner: string, key: string) => Effect.Effect<StoredObject | undefined, ApiError>
  /** Everything parked here under `key`, for any owner, merged (a sloppy read's fallback). */
  readonly readAll: (key: string) => Effect.Effect<StoredObject | undefined, ApiError>
  /** Parked entries not yet acknowledged, per owner. */
  readonly pending: () => ReadonlyMap<string, number>
  /**
   * The partitions of the writes parked here, for any owner, until their parked log is
   * delivered and deleted (parks in flight included): tombstone reaping waits for them.
   */
  readonly parkedPartitions: () => ReadonlySet<number>
  /** Whether writes of `partition` are parked here (`parkedPartitions().has(partition)`, cheaper). */
  readonly parks: (partition: number) => boolean
  /**
   * The parked keys of `partition` with their key hash and tree contribution, for any owner
   * (a key parked for two owners appears twice): what a fallback compares with the primaries
   * (aae/HintExchange.ts). From the parked logs' indexes, no disk read.
   */
  readonly parkedHashes: (partition: number) => ReadonlyArray<{ readonly key: string; readonly h: number; readonly hash: number }>
  /** How many (key, owner) entries of `partition` are parked here (`parkedHashes(partition).length`, without listing them). */
  readonly parkedCount: (partition: number) => number
  /** Ships everything parked for `owner` now (the shipping loop also does, when it is up). */
  readonly drain: (owner: string, ship: Ship) => Effect.Effect<number, unknown>
}>()("tally/handoff/Handoff") {
  static readonly layer = (config: HandoffConfig) => Layer.effect(Handoff, make(config))
}

const SHIPPED = "SHIPPED"

/** Builds the service; parked logs found on disk are reopened. */
export const make = Effect.fnUntraced(function*(config: HandoffConfig) {
  const root = path.join(config.dataDir, "handoff")
  makeDirDurable(config.files, root)
  const parked = new Map<string, Parked>()
  /** Parks between their call and their append's acknowledgement, per partition. */
  const parking = new Map<number, number>()
  const locks = new KeyLocks()
  const batchSize = config.batchSize ?? 200
  const rate = config.ratePerSecond ?? 5000

  const open = (owner: string): Parked => {
    let p = parked.get(owner)
    if (p !== undefined) return p
    const dir = path.join(root, owner)
    // Parked logs keep their tombstones: the owner must learn of every delete.
    // No preallocation: a parked log per owner is usually small and short-lived.
    const log = Log.open(config.files, { ...defaultLogConfig, dir, fsync: config.fsync, preallocate: false, maxValueBytes: 64 * 1024 * 1024, tombstoneGraceMs: Number.MAX_SAFE_INTEGER, partitionOf: (k) => partitionOf(k, config.partitions) })
    const shippedFile = path.join(dir, SHIPPED)
    const shipped = config.files.exists(shippedFile) ? Number(config.files.readFile(shippedFile).toString("utf8")) || 0 : 0
    p = { owner, log, shipped, cursor: undefined, inflight: 0 }
    parked.set(owner, p)
    return p
  }

  for (const owner of config.files.list(root)) {
    if (owner.startsWith(".")) config.files.removeDir(path.join(root, owner))
    else if (Dvv.NODE_ID.test(owner)) open(owner)
  }
  yield* Effect.addFinalizer(() => Effect.promise(() => Promise.all([...parked.values()].map((p) => p.log.close()))))

  const readIn = (p: Parked, key: string): StoredObject | undefined => {
    const e = p.log.read(key)
    if (e === undefined) return undefined
    return decodeObject(objectBytes(e))
  }

  const append = (p: Parked, key: string, o: StoredObject) =>
    Effect.callback<void, ApiError>((resume) => {
      const bytes = encodeObject(o)
      const tomb = allDeleted(o)
      p.log.append(tomb ? RecordType.Tombstone : RecordType.Put, key, partitionOf(key, config.partitions), tomb ? undefined : bytes, tomb ? bytes : undefined, (err) =>
        resume(err === undefined ? Effect.void : Effect.fail(apiError(err._tag === "DiskFull" ? "disk_full" : "storage_error", `parking a write for ${p.owner}: ${err.message}`)))
      )
    })

  const park = (owner: string, key: string, object: StoredObject) =>
    Effect.suspend(() => {
      // The owner names a directory: a peer's "../../x" must not open a log outside this one.
      if (!Dvv.NODE_ID.test(owner)) return Effect.fail(apiError("bad_request", `cannot park a write for ${JSON.stringify(owner.slice(0, 80))}: not a node id`))
      const q = partitionOf(key, config.partitions)
      parking.set(q, (parking.get(q) ?? 0) + 1)
      return locks.with(`${owner}\u0000${key}`, Effect.suspend(() => {
        const p = open(owner)
        p.inflight++
        const have = readIn(p, key)
        return append(p, key, have === undefined ? object : Dvv.sync(have, object)).pipe(Effect.ensuring(Effect.sync(() => p.inflight--)))
      })).pipe(Effect.ensuring(Effect.sync(() => {
        const n = (parking.get(q) ?? 1) - 1
        if (n > 0) parking.set(q, n)
        else parking.delete(q)
      })))
    })

  /** Ships one batch; returns how many records it shipped (0 when caught up). */
  const shipBatch = (p: Parked, ship: Ship) =>
    Effect.suspend(() => {
      p.cursor ??= new LogCursor(p.log, p.shipped + 1)
      const page = p.cursor.readPage(batchSize)
      if (page.length === 0) return Effect.succeed(0)
      const batch: HandoffBatch = {
        t: "handoff",
        records: page.map((e) => ({ key: e.key, object: objectBytes(e) }))
      }
      return ship(p.owner, batch).pipe(
        Effect.tapError(() => Effect.sync(() => (p.cursor = undefined))),
        Effect.map(() => {
          p.shipped = page[page.length - 1]!.lsn
          writeFileDurable(config.files, path.join(root, p.owner, SHIPPED), Buffer.from(String(p.shipped)))
          return page.length
        })
      )
    })

  const drain = (owner: string, ship: Ship): Effect.Effect<number, unknown> =>
    Effect.gen(function*() {
      const p = parked.get(owner)
      if (p === undefined) return 0
      let total = 0
      while (true) {
        const n = yield* shipBatch(p, ship)
        total += n
        if (n === 0) break
        yield* Effect.sleep(Math.ceil((n / rate) * 1000))
      }
      // Everything acknowledged and no park in flight: the log has done its job. It is moved
      // aside first, so a park arriving now starts a fresh log instead of joining this one.
      if (p.log.lastLsn <= p.shipped && p.inflight === 0 && parked.get(owner) === p) {
        parked.delete(owner)
        const done = path.join(root, `.${owner}.done-${Date.now()}`)
        config.files.renameDir(path.join(root, owner), done)
        // Durable, so that a power cut cannot bring a delivered log back to be shipped again.
        config.files.syncDir(root)
        yield* Effect.promise(() => p.log.close())
        config.files.removeDir(done)
        config.files.syncDir(root)
        yield* Effect.logInfo(`handoff to ${owner} complete: ${total} entries delivered`)
      }
      return total
    })

  return Handoff.of({
    park,
    read: (owner, key) => Effect.sync(() => {
      const p = parked.get(owner)
      return p === undefined ? undefined : readIn(p, key)
    }),
    readAll: (key) => Effect.sync(() => {
      let merged: StoredObject | undefined
      for (const p of parked.values()) {
        const o = readIn(p, key)
        if (o !== undefined) merged = merged === undefined ? o : Dvv.sync(merged, o)
      }
      return merged
    }),
    pending: () => new Map([...parked.values()].map((p) => [p.owner, Math.max(0, p.log.lastLsn - p.shipped)])),
    parkedPartitions: () => {
      const out = new Set<number>(parking.keys())
      for (const p of parked.values()) {
        if (p.log.index.size === 0) continue
        for (let q = 0; q < config.partitions; q++) if (p.log.index.countOf(q) > 0) out.add(q)
      }
      return out
    },
    parks: (partition) => {
      if (parking.has(partition)) return true
      for (const p of parked.values()) if (p.log.index.countOf(partition) > 0) return true
      return false
    },
    parkedHashes: (partition) => [...parked.values()].flatMap((p) => p.log.index.hashesOf(partition)),
    parkedCount: (partition) => {
      let n = 0
      for (const p of parked.values()) n += p.log.index.countOf(partition)
      return n
    },
    drain
  })
})

/** Runs `drain` for every owner with parked entries that `isUp` says is reachable, every `everyMs`. */
export const shipLoop = (isUp: (owner: string) => boolean, ship: Ship, everyMs = 1000) =>
  Effect.gen(function*() {
    const handoff = yield* Handoff
    const busy = new Set<string>()
    yield* Effect.suspend(() =>
      Effect.forEach([...handoff.pending().keys()].filter((o) => isUp(o) && !busy.has(o)), (owner) => {
        busy.add(owner)
        return handoff.drain(owner, ship).pipe(
          Effect.catch((e) => Effect.logWarning(`handoff to ${owner} paused: ${(e as Error)?.message ?? String(e)}`)),
          Effect.ensuring(Effect.sync(() => busy.delete(owner))),
          Effect.forkDetach
        )
      }, { discard: true })
    ).pipe(Effect.repeat(Schedule.spaced(everyMs)), Effect.forkScoped)
  })

/**
 * A node's own copy of the keys it replicates: each key's versions (a DvvSet of Siblings)
 * stored as one engine record. Two ways in: `coordinate` makes a new version (this node is
 * the write's coordinator and names its dot), `merge` folds in versions another replica
 * sent (replication, read repair, handoff). Both hold the key's lock for the whole
 * read-modify-write. Limits: siblings (warn at 25, refuse client writes at 100; merges are
 * never refused, so no replicated write is dropped) and the encoded object's size.
 */
import { Context, Effect, Layer, Option, Random } from "effect"
import { Engine } from "../../engine/Engine.ts"
import type { EngineError } from "../../engine/Errors.ts"
import { ApiError, apiError, fromEngineError } from "../Errors.ts"
import { RecordType } from "../../engine/Record.ts"
import * as Dvv from "../versions/Dvv.ts"
import { allDeleted, decodeObject, encodeObject, objectBytes, type Sibling, type StoredObject } from "../versions/Sibling.ts"
import { partitionOf } from "../ring/Ring.ts"
import { KeyLocks } from "./KeyLocks.ts"

/**
 * Test-only switch that reintroduces Riak's kv679 bug, so the simulator can show its checker
 * catches it (sim/, test/sim). Never set outside tests. `reuseEpoch`: every start of a node
 * uses the same epoch, so a node that lost its disk mints dots its peers have already seen.
 */
export const unsafeTesting = { reuseEpoch: false }

/** Replica limits. */
export interface ReplicaConfig {
  readonly nodeId: string
  /** Ring size: every record is stored under its key's partition. */
  readonly partitions: number
  /** Log a warning when a key reaches this many siblings. */
  readonly siblingWarn: number
  /** Refuse client writes that would leave more siblings than this. */
  readonly siblingMax: number
  /** Largest encoded object (all siblings) a client write may produce. */
  readonly maxObjectBytes: number
  /** Version vector entries kept per key (Dvv.prune). */
  readonly maxVectorEntries: number
}

/** Defaults (Riak's sibling thresholds). */
export const defaultReplicaConfig: Omit<ReplicaConfig, "nodeId" | "partitions"> = {
  siblingWarn: 25,
  siblingMax: 100,
  maxObjectBytes: 16 * 1024 * 1024,
  maxVectorEntries: Dvv.DEFAULT_MAX_ENTRIES
}

/** A stored object and what it cost. */
export interface Stored {
  readonly object: StoredObject
  readonly bytes: number
}

/** A stored object with its encoding. */
export interface Encoded {
  readonly object: StoredObject
  readonly bytes: Uint8Array
}

/** Result of a coordinated write. */
export interface Coordinated extends Stored {
  /** The context of the new version for its writer (the PUT's X-Context). */
  readonly context: Dvv.Context
}

/** The local versioned store. */
export class Replica extends Context.Service<Replica, {
  readonly nodeId: string
  /** The actor id this process's writes carry: the node id and this start's epoch. */
  readonly actor: string
  readonly read: (key: string) => Effect.Effect<Option.Option<StoredObject>, ApiError>
  /** The object and the bytes it is stored as (a read compares replicas by their bytes). */
  readonly readEncoded: (key: string) => Effect.Effect<Encoded | undefined, ApiError>
  readonly coordinate: (key: string, context: Dvv.Context, sibling: Sibling) => Effect.Effect<Coordinated, ApiError>
  /**
   * `readEncoded` and `coordinate` as plain functions, for the request path's plain lane (the
   * Effect calls are built on them): `readEncoded` throws an ApiError, `coordinate` rejects
   * with one. `coordinate`'s result says whether the key has reached the sibling warning.
   */
  readonly now: {
    readonly readEncoded: (key: string) => Encoded | undefined
    readonly coordinate: (key: string, context: Dvv.Context, sibling: Sibling) => Promise<Coordinated & { readonly warn: boolean }>
    /** `merge`, rejecting with an ApiError. */
    readonly merge: (key: string, incoming: StoredObject) => Promise<Stored>
  }
  readonly merge: (key: string, incoming: StoredObject) => Effect.Effect<Stored, ApiError>
}>()("tally/replica/Replica") {
  /** The replica over the Engine in context. */
  static readonly layer = (config: ReplicaConfig) => Layer.effect(Replica, make(config))
}

/** The warning logged when a write leaves a key at the sibling warning or beyond. */
export const siblingWarning = (key: string, o: StoredObject): string => `key ${JSON.stringify(key)} has ${Dvv.size(o)} siblings; clients should resolve them`

/** Builds the replica service over the Engine. */
export const make = Effect.fnUntraced(function*(config: ReplicaConfig) {
  const engine = yield* Engine
  // This process's actor: a fresh epoch per start (Random: the simulator's seam). Counters of
  // an epoch only grow (they start above the engine's LSN for a key with no local history),
  // and no epoch is used by two processes, so no dot is ever minted twice.
  const drawn = (yield* Random.nextInt).toString(36).replace("-", "").slice(0, 12).padStart(1, "0")
  const epoch = unsafeTesting.reuseEpoch ? "0" : drawn
  const actor = Dvv.actorOf(config.nodeId, epoch)
  const locks = new KeyLocks()
  const mapEngine = (e: EngineError) => fromEngineError(e)

  const readEncodedNow = (key: string): Encoded | undefined => {
    let found
    try {
      found = engine.now.read(key)
    } catch (e) {
      throw mapEngine(e as EngineError)
    }
    if (found === undefined) return undefined
    const bytes = objectBytes(found)
    const object = decodeObject(bytes)
    if (object === undefined) throw apiError("storage_error", `the stored object of key ${JSON.stringify(key)} is not readable`)
    return { object, bytes }
  }
  const readEncoded = (key: string): Effect.Effect<Encoded | undefined, ApiError> => Effect.try({ try: () => readEncodedNow(key), catch: (e) => e as ApiError })
  const readNow = (key: string) => readEncoded(key).pipe(Effect.map((r) => r?.object))

  /** Stores `o` as the key's record (a tombstone when every version is a delete); resolves once durable. */
  const storeNow = (key: string, o: StoredObject, bytes: Uint8Array) =>
    new Promise<void>((resolve, reject) => {
      const deleted = allDeleted(o)
      engine.now.write(deleted ? RecordType.Tombstone : RecordType.Put, key, partitionOf(key, config.partitions), deleted ? undefined : bytes, deleted ? bytes : undefined, (err) =>
        err === undefined ? resolve() : reject(mapEngine(err)))
    })

  /** The new version of a coordinated write over `local`, checked against the limits. */
  const newVersion = (key: string, local: StoredObject, context: Dvv.Context, sibling: Sibling) => {
    const updated = Dvv.prune(Dvv.update(local, context, actor, sibling), config.maxVectorEntries)
    // Only a context or object built to overflow gets here; refused, so encoding never throws.
    if (Dvv.exhausted(updated)) {
      throw apiError("bad_request", `key ${JSON.stringify(key)}: this write would take a version counter past ${Dvv.MAX_COUNTER}; its X-Context claims more writes than can exist`)
    }
    const n = Dvv.size(updated)
    if (n > config.siblingMax) {
      throw apiError("too_many_siblings", `key ${JSON.stringify(key)} would have ${n} siblings (limit ${config.siblingMax}); read it and write back one value with its X-Context to resolve them`)
    }
    const bytes = encodeObject(updated)
    if (bytes.length > config.maxObjectBytes) {
      throw apiError("value_too_large", `key ${JSON.stringify(key)} would be ${bytes.length} bytes with its ${n} siblings (limit ${config.maxObjectBytes}); resolve siblings or write a smaller value`)
    }
    return { updated, bytes, n }
  }

  /**
   * A coordinated write, holding the key's lock for the whole read-modify-write. Once begun
   * it runs to its end: an Effect caller that is interrupted stops waiting for it, not it.
   */
  const coordinateNow = async (key: string, context: Dvv.Context, sibling: Sibling): Promise<Coordinated & { readonly warn: boolean }> => {
    const wait = locks.acquireNow(key)
    if (wait !== undefined) await wait
    try {
      // A key with no record here (new, or its tombstone was reaped) starts its counter above
      // this node's LSN: every dot this node made for the key before had a lower counter, so
      // a reaped key can never reuse a dot another replica still remembers.
      const local = readEncodedNow(key)?.object ?? { entries: [], floor: engine.now.nextLsn() }
      const { updated, bytes, n } = newVersion(key, local, context, sibling)
      await storeNow(key, updated, bytes)
      return { object: updated, bytes: bytes.length, context: Dvv.writeContext(updated, context, actor), warn: n >= config.siblingWarn }
    } finally {
      locks.release(key)
    }
  }

  const coordinate = (key: string, context: Dvv.Context, sibling: Sibling): Effect.Effect<Coordinated, ApiError> =>
    Effect.tryPromise({ try: () => coordinateNow(key, context, sibling), catch: (e) => (e instanceof ApiError ? e : apiError("storage_error", `the write of key ${JSON.stringify(key)} failed: ${String(e)}`)) }).pipe(
      Effect.tap((r) => (r.warn ? Effect.logWarning(siblingWarning(key, r.object)) : Effect.void)),
      Effect.map(({ warn: _, ...res }) => res)
    )

  /** Folds `incoming` into the key's copy under its lock; stores only when that changes it. */
  const mergeNow = async (key: string, incoming: StoredObject): Promise<Stored> => {
    const wait = locks.acquireNow(key)
    if (wait !== undefined) await wait
    try {
      const local = readEncodedNow(key)
      const merged = local === undefined ? incoming : Dvv.sync(local.object, incoming)
      const bytes = encodeObject(merged)
      if (local === undefined || Buffer.compare(bytes, local.bytes) !== 0) await storeNow(key, merged, bytes)
      return { object: merged, bytes: bytes.length }
    } finally {
      locks.release(key)
    }
  }
  const merge = (key: string, incoming: StoredObject): Effect.Effect<Stored, ApiError> =>
    Effect.tryPromise({ try: () => mergeNow(key, incoming), catch: (e) => (e instanceof ApiError ? e : apiError("storage_error", `the merge into key ${JSON.stringify(key)} failed: ${String(e)}`)) })

  return Replica.of({
    nodeId: config.nodeId,
    actor,
    read: (key) => readNow(key).pipe(Effect.map(Option.fromNullishOr)),
    readEncoded,
    coordinate,
    merge,
    now: { readEncoded: readEncodedNow, coordinate: coordinateNow, merge: mergeNow }
  })
})

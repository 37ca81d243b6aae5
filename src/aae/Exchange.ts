/**
 * One anti-entropy exchange between two replicas of a partition, both sides: `exchange` asks,
 * `answer` replies. Plain of any service but the engine and replica, so a benchmark or a
 * test can run it between two engines in one process; AntiEntropy.ts schedules it between
 * nodes. The steps are described in AntiEntropy.ts.
 */
import { Effect, Option } from "effect"
import type { Engine } from "../../engine/Engine.ts"
import { BRANCHES, branchOf, childOf, children, childWidthBits, type Subtree } from "../../engine/TictacTree.ts"
import type { Replica } from "../replica/Replica.ts"
import { allDeleted, decodeObject, objectBytes } from "../versions/Sibling.ts"

/** What an exchange needs: the local engine and replica, a clock, the limits. */
export interface ExchangeDeps {
  readonly engine: Engine["Service"]
  readonly replica: Replica["Service"]
  readonly now: () => number
  readonly config: {
    /** Most keys repaired by one exchange (Riak's max_results). */
    readonly maxRepairs: number
    /** Delay between the two looks at the branches, ms. */
    readonly confirmDelayMs: number
    /** Tombstones older than this are not pushed to a replica that has no record of the key. */
    readonly tombstoneGraceMs: number
  }
}

/** Sends a message to the other replica and returns its reply (an `aae-err` reply is a failure). */
export type Ask = (msg: AaeMessage) => Effect.Effect<unknown, Error>

/** Internode messages of anti-entropy (validated by `isAaeMessage`). */
export type AaeMessage =
  | { readonly t: "aae-branches"; readonly partition: number }
  | { readonly t: "aae-children"; readonly partition: number; readonly nodes: ReadonlyArray<Subtree> }
  | { readonly t: "aae-keys"; readonly partition: number; readonly nodes: ReadonlyArray<Subtree & { readonly child: number }> }
  | { readonly t: "aae-sync"; readonly partition: number; readonly records: ReadonlyArray<{ readonly key: string; readonly object: Uint8Array | null }> }

const MAX_NODES = BRANCHES * 4
const MAX_SYNC = 10_000

const isPartition = (p: unknown): p is number => Number.isInteger(p) && (p as number) >= 0 && (p as number) <= 0xffff
const isSubtree = (n: unknown): n is Subtree => {
  const x = n as Record<string, unknown> | null
  return typeof x === "object" && x !== null && Number.isInteger(x.branch) && (x.branch as number) >= 0 && (x.branch as number) < BRANCHES &&
    Number.isInteger(x.bits) && (x.bits as number) >= 0 && (x.bits as number) <= 10
}

/** Whether an untrusted payload is an anti-entropy message. */
export const isAaeMessage = (m: unknown): m is AaeMessage => {
  const x = m as Record<string, unknown> | null
  if (typeof x !== "object" || x === null || !isPartition(x.partition)) return false
  switch (x.t) {
    case "aae-branches":
      return true
    case "aae-children":
      return Array.isArray(x.nodes) && x.nodes.length <= MAX_NODES && x.nodes.every(isSubtree)
    case "aae-keys":
      return Array.isArray(x.nodes) && x.nodes.length <= MAX_NODES * 1024 &&
        x.nodes.every((n: Record<string, unknown>) => isSubtree(n) && Number.isInteger(n.child) && (n.child as number) >= 0 && (n.child as number) < 1 << (n.bits as number))
    case "aae-sync":
      return Array.isArray(x.records) && x.records.length <= MAX_SYNC &&
        x.records.every((r: Record<string, unknown>) => typeof r?.key === "string" && (r.object === null || r.object instanceof Uint8Array))
    default:
      return false
  }
}

/** The outcome of one exchange. */
export interface ExchangeResult {
  readonly partition: number
  /** When it started (ms since the epoch): a clean exchange means the peer holds what this node held then. */
  readonly started: number
  readonly roundTrips: number
  readonly bytes: number
  readonly keysCompared: number
  readonly differing: number
  readonly repaired: number
  readonly clean: boolean
}

const u32 = (b: Uint8Array): Uint32Array => {
  const copy = new Uint8Array(b.length)
  copy.set(b)
  return new Uint32Array(copy.buffer, 0, b.length >> 2)
}
const bytesOf = (a: Uint32Array): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength)

/** Reads a key's record, or undefined. */
const local = (engine: Engine["Service"], key: string) =>
  engine.get(key).pipe(Effect.map((o) => Option.getOrUndefined(o)))

/** Whether a stored object is a tombstone past the grace period (not worth pushing to a replica that lacks the key). */
const oldTombstone = (deps: ExchangeDeps, object: Uint8Array, timestamp: number): boolean => {
  const o = decodeObject(object)
  return o !== undefined && allDeleted(o) && timestamp + deps.config.tombstoneGraceMs <= deps.now()
}

/** Answers an exchange message from another replica (errors become an `aae-err` reply). */
export const answer = (deps: ExchangeDeps, msg: AaeMessage): Effect.Effect<unknown> => {
    const { engine, replica } = deps
    const reply: Effect.Effect<unknown, unknown> = Effect.gen(function*() {
      switch (msg.t) {
        case "aae-branches": {
          const t = yield* engine.tree(msg.partition)
          return { t: "aae-branches", hashes: bytesOf(t.hashes), counts: bytesOf(t.counts) }
        }
        case "aae-children": {
          const t = yield* engine.tree(msg.partition)
          const kids = children(yield* engine.partitionHashes(msg.partition), msg.nodes)
          return {
            t: "aae-children",
            nodes: msg.nodes.map((n) => ({ branch: n.branch, hash: t.hashes[n.branch]!, children: bytesOf(kids.get(n.branch)!) }))
          }
        }
        case "aae-keys": {
          const want = new Set(msg.nodes.map((n) => n.branch * 1024 + n.child))
          const bits = new Map(msg.nodes.map((n) => [n.branch, n.bits]))
          const keys: string[] = []
          const hashes: number[] = []
          for (const e of yield* engine.partitionHashes(msg.partition)) {
            const b = branchOf(e.h)
            const k = bits.get(b)
            if (k !== undefined && want.has(b * 1024 + childOf(e.h, k))) {
              keys.push(e.key)
              hashes.push(e.hash)
            }
          }
          return { t: "aae-keys", keys, hashes: bytesOf(Uint32Array.from(hashes)) }
        }
        case "aae-sync": {
          const out: Array<{ key: string; object: Uint8Array | null }> = []
          for (const r of msg.records) {
            if (r.object !== null) {
              const o = decodeObject(r.object)
              if (o !== undefined) yield* replica.merge(r.key, o)
            }
            const mine = yield* local(engine, r.key)
            const bytes = mine === undefined ? null : objectBytes(mine)
            // A tombstone past its grace is not sent to a replica that never had the key (or
            // reaped it): that would only bring back what reaping removed.
            out.push({ key: r.key, object: bytes !== null && r.object === null && oldTombstone(deps, bytes, mine!.timestamp) ? null : bytes })
          }
          return { t: "aae-sync", records: out }
        }
      }
    })
    return reply.pipe(Effect.catch((e: unknown) => Effect.succeed({ t: "aae-err", message: String((e as Error)?.message ?? e) })))
  }

  // ---- the asking side -----------------------------------------------------------------

/**
 * Runs one exchange of `partition` against the replica `ask` reaches (see the module
 * comment for the steps); `bytes` counts the payloads both ways.
 */
export const exchange = (deps: ExchangeDeps, ask: Ask, partition: number): Effect.Effect<ExchangeResult, Error> =>
    Effect.gen(function*() {
      const { engine, replica, config } = deps
      const started = deps.now()
      let bytes = 0
      let roundTrips = 0
      const result = (over: Partial<ExchangeResult>): ExchangeResult =>
        ({ partition, started, roundTrips, bytes, keysCompared: 0, differing: 0, repaired: 0, clean: true, ...over })

      // 1. Branches.
      const mine1 = yield* engine.tree(partition)
      const r1 = (yield* ask({ t: "aae-branches", partition })) as { hashes: Uint8Array; counts: Uint8Array }
      roundTrips++
      bytes += 16 + r1.hashes.length + r1.counts.length
      const theirs1 = u32(r1.hashes)
      const theirCounts = u32(r1.counts)
      if (theirs1.length !== BRANCHES || theirCounts.length !== BRANCHES) return yield* Effect.fail(new Error(`the peer sent a tree of ${theirs1.length} branches`))
      const differ1: number[] = []
      for (let b = 0; b < BRANCHES; b++) if (mine1.hashes[b] !== theirs1[b]) differ1.push(b)
      if (differ1.length === 0) return result({})

      // 2. The second look, with the children of what differed.
      yield* Effect.sleep(config.confirmDelayMs)
      const nodes: Subtree[] = differ1.map((b) => ({ branch: b, bits: childWidthBits(Math.max(mine1.counts[b]!, theirCounts[b]!)) }))
      const r2 = (yield* ask({ t: "aae-children", partition, nodes })) as { nodes: ReadonlyArray<{ branch: number; hash: number; children: Uint8Array }> }
      roundTrips++
      bytes += 16 + nodes.length * 4
      const mine2 = yield* engine.tree(partition)
      const entries = yield* engine.partitionHashes(partition)
      const myKids = children(entries, nodes)
      const leaves: Array<Subtree & { child: number }> = []
      const bitsOf = new Map(nodes.map((n) => [n.branch, n.bits]))
      for (const n of r2.nodes) {
        bytes += 8 + n.children.length
        if (mine2.hashes[n.branch] === n.hash) continue // equal at the second look: in flight
        const bits = bitsOf.get(n.branch)
        const mineK = myKids.get(n.branch)
        if (bits === undefined || mineK === undefined) continue
        const theirsK = u32(n.children)
        for (let c = 0; c < mineK.length; c++) if (mineK[c] !== theirsK[c]) leaves.push({ branch: n.branch, bits, child: c })
      }
      if (leaves.length === 0) return result({ roundTrips })

      // 3. Key lists of the differing children.
      const r3 = (yield* ask({ t: "aae-keys", partition, nodes: leaves })) as { keys: ReadonlyArray<string>; hashes: Uint8Array }
      roundTrips++
      bytes += 16 + leaves.length * 12 + r3.hashes.length + r3.keys.reduce((n, k) => n + k.length + 2, 0)
      const theirKeys = new Map<string, number>()
      const th = u32(r3.hashes)
      r3.keys.forEach((k, i) => theirKeys.set(k, th[i]!))
      const wanted = new Set(leaves.map((l) => l.branch * 1024 + l.child))
      const myKeys = new Map<string, number>()
      for (const e of entries) {
        const b = branchOf(e.h)
        const bits = bitsOf.get(b)
        if (bits !== undefined && wanted.has(b * 1024 + childOf(e.h, bits))) myKeys.set(e.key, e.hash)
      }
      const differing: string[] = []
      for (const [k, h] of myKeys) if (theirKeys.get(k) !== h) differing.push(k)
      for (const k of theirKeys.keys()) if (!myKeys.has(k)) differing.push(k)
      const keysCompared = myKeys.size + theirKeys.size
      if (differing.length === 0) return result({ roundTrips, keysCompared })

      // 4. Repair both ways, through the merge.
      const batch = differing.slice(0, config.maxRepairs)
      const records: Array<{ key: string; object: Uint8Array | null }> = []
      for (const key of batch) {
        const mine = yield* local(engine, key)
        const object = mine === undefined ? null : objectBytes(mine)
        const theyLack = !theirKeys.has(key)
        records.push({ key, object: object !== null && theyLack && oldTombstone(deps, object, mine!.timestamp) ? null : object })
      }
      const r4 = (yield* ask({ t: "aae-sync", partition, records })) as { records: ReadonlyArray<{ key: string; object: Uint8Array | null }> }
      bytes += records.reduce((n, r) => n + r.key.length + (r.object?.length ?? 0) + 4, 0)
      for (const r of r4.records) {
        bytes += r.key.length + (r.object?.length ?? 0) + 4
        if (r.object === null) continue
        const o = decodeObject(r.object)
        if (o === undefined) continue
        yield* Effect.mapError(replica.merge(r.key, o), (e) => new Error(e.message))
      }
      const clean = differing.length <= config.maxRepairs
      return result({ roundTrips, keysCompared, differing: differing.length, repaired: batch.length, clean })
    })


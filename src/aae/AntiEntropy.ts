/**
 * Active anti-entropy: the replicas of each partition compare their Tictac trees (the
 * engine keeps them current, engine/TictacTree.ts) and repair what differs both ways through
 * the ordinary replica merge, so replicas converge without any client read.
 *
 * One exchange, this node against one other primary of one partition:
 *  1. branches: the peer's 1024 branch hashes (4 KiB); equal trees end the exchange here.
 *  2. after `confirmDelayMs`, children of the branches that differed, at a width fitted to
 *     the branch's key count (about one key per child), with the peer's fresh branch
 *     hashes: a branch is followed only if it differs at both looks (Tictac's "compare
 *     twice", so writes in flight to both replicas do not cause repairs).
 *  3. keys: the (key, content hash) lists of the children that differ.
 *  4. repair: up to `maxRepairs` differing keys; this node sends its objects, the peer merges
 *     them and answers with its own (merged) objects, which this node merges. Siblings stay
 *     siblings and tombstones win over what they cover, because it is the same merge.
 * An exchange that found differences and repaired them all, or found none, is clean: every
 * key this node held when it started is now held by the peer too. `syncedAt` is what
 * tombstone reaping needs from that (Reaping.ts).
 *
 * Exchanges run one at a time, `intervalMs` apart, only inside the configured UTC window;
 * an exchange that hit `maxRepairs` is followed at once by another with the same peer, so a
 * wiped replica refills at the repair rate rather than one batch per interval.
 */
import { Clock, Context, Effect, Layer, Option } from "effect"
import { Engine } from "../../engine/Engine.ts"
import { BRANCHES, branchOf, childOf, children, childWidthBits, type Subtree } from "../../engine/TictacTree.ts"
import { Membership } from "../membership/Membership.ts"
import { Replica } from "../replica/Replica.ts"
import { preferenceList } from "../ring/Ring.ts"
import { Transport } from "../transport/Transport.ts"
import { allDeleted, decodeObject, objectBytes } from "../versions/Sibling.ts"

/** Anti-entropy settings (all live). */
export interface AaeConfig {
  /** Pause between exchanges, ms; 0 turns anti-entropy off. */
  intervalMs: number
  /** UTC hours [from, to) in which exchanges run (from > to wraps midnight); undefined: always. */
  window: { readonly from: number; readonly to: number } | undefined
  /** Most keys repaired by one exchange (Riak's max_results). */
  maxRepairs: number
  /** Delay between the two looks at the branches, ms. */
  confirmDelayMs: number
  /** Tombstones older than this are not pushed to a replica that has no record of the key. */
  tombstoneGraceMs: number
}

/** Defaults. */
export const defaultAaeConfig: AaeConfig = {
  intervalMs: 1_000,
  window: undefined,
  maxRepairs: 1_000,
  confirmDelayMs: 500,
  tombstoneGraceMs: 86_400_000
}

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

/** What /admin/aae shows for one partition. */
export interface PartitionAae {
  readonly partition: number
  /** This node's tree root for the partition (equal on replicas that hold the same objects). */
  readonly root: number
  /** Keys (tombstones included) this node holds in the partition. */
  readonly keys: number
  /** Other primaries this node exchanges with. */
  readonly peers: ReadonlyArray<string>
  readonly lastExchange: number | undefined
  readonly lastPeer: string | undefined
  readonly exchanges: number
  readonly keysCompared: number
  readonly keysRepaired: number
  readonly bytes: number
  /** Start of the latest clean exchange with each peer (ms since the epoch). */
  readonly cleanSince: Readonly<Record<string, number>>
}

/** The outcome of one exchange. */
export interface ExchangeResult {
  readonly partition: number
  readonly peer: string
  readonly roundTrips: number
  readonly bytes: number
  readonly keysCompared: number
  readonly differing: number
  readonly repaired: number
  readonly clean: boolean
}

interface Stats {
  lastExchange: number | undefined
  lastPeer: string | undefined
  exchanges: number
  keysCompared: number
  keysRepaired: number
  bytes: number
  readonly cleanSince: Map<string, number>
}

/** The anti-entropy service. */
export class AntiEntropy extends Context.Service<AntiEntropy, {
  readonly handle: (from: string, msg: AaeMessage) => Effect.Effect<unknown>
  /** Runs one exchange of `partition` with `peer` now. */
  readonly exchange: (partition: number, peer: string) => Effect.Effect<ExchangeResult, Error>
  /** Per partition this node is a primary of. */
  readonly status: () => ReadonlyArray<PartitionAae>
  /**
   * The start of the oldest of the latest clean exchanges with every other current primary
   * of `partition`, or undefined if some primary has had none: every record this node held
   * before that time is held by all of them.
   */
  readonly syncedAt: (partition: number) => number | undefined
  readonly reconfigure: (patch: Partial<AaeConfig>) => void
}>()("tally/aae/AntiEntropy") {
  static readonly layer = (config: Partial<AaeConfig> = {}) => Layer.effect(AntiEntropy, make({ ...defaultAaeConfig, ...config }))
}

const u32 = (b: Uint8Array): Uint32Array => {
  const copy = new Uint8Array(b.length)
  copy.set(b)
  return new Uint32Array(copy.buffer, 0, b.length >> 2)
}
const bytesOf = (a: Uint32Array): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength)

/** Builds the service and starts its loop in the layer's scope. */
export const make = Effect.fnUntraced(function*(config: AaeConfig) {
  const engine = yield* Engine
  const replica = yield* Replica
  const membership = yield* Membership
  const transport = yield* Transport
  const clock = yield* Clock.Clock
  const now = () => clock.currentTimeMillisUnsafe()
  const self = membership.self.id
  const stats = new Map<number, Stats>()
  const statsOf = (p: number): Stats => {
    let s = stats.get(p)
    if (s === undefined) {
      s = { lastExchange: undefined, lastPeer: undefined, exchanges: 0, keysCompared: 0, keysRepaired: 0, bytes: 0, cleanSince: new Map() }
      stats.set(p, s)
    }
    return s
  }

  /** Other current primaries of `partition`, if this node is one. */
  const peersOf = (partition: number): ReadonlyArray<string> => {
    const prefs = preferenceList(membership.ring(), partition, membership.state().n)
    return prefs.includes(self) ? prefs.filter((id) => id !== self) : []
  }

  // ---- the answering side --------------------------------------------------------------

  /** Reads a key's object with its record timestamp, or undefined. */
  const local = (key: string) =>
    engine.get(key).pipe(Effect.map((o) => Option.getOrUndefined(o)))

  /** Whether a stored object is a tombstone past the grace period (not worth pushing to a replica that lacks the key). */
  const oldTombstone = (object: Uint8Array, timestamp: number): boolean => {
    const o = decodeObject(object)
    return o !== undefined && allDeleted(o) && timestamp + config.tombstoneGraceMs <= now()
  }

  const handle = (from: string, msg: AaeMessage): Effect.Effect<unknown> => {
    void from
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
            const mine = yield* local(r.key)
            const bytes = mine === undefined ? null : objectBytes(mine)
            // A tombstone past its grace is not sent to a replica that never had the key (or
            // reaped it): that would only bring back what reaping removed.
            out.push({ key: r.key, object: bytes !== null && r.object === null && oldTombstone(bytes, mine!.timestamp) ? null : bytes })
          }
          return { t: "aae-sync", records: out }
        }
      }
    })
    return reply.pipe(Effect.catch((e: unknown) => Effect.succeed({ t: "aae-err", message: String((e as Error)?.message ?? e) })))
  }

  // ---- the asking side -----------------------------------------------------------------

  const ask = (peerId: string, msg: AaeMessage, timeoutMs = 30_000) =>
    Effect.gen(function*() {
      const peer = membership.peer(peerId)
      if (peer === undefined) return yield* Effect.fail(new Error(`unknown node ${peerId}`))
      const r = (yield* Effect.mapError(transport.request(peer, msg, timeoutMs), (e) => new Error(`${peerId}: ${e.message}`))) as { t: string; message?: string }
      if (r?.t === "aae-err") return yield* Effect.fail(new Error(`${peerId}: ${r.message}`))
      if (r?.t !== msg.t) return yield* Effect.fail(new Error(`${peerId} answered ${msg.t} with ${String(r?.t)}`))
      return r as unknown
    })

  const exchange = (partition: number, peer: string): Effect.Effect<ExchangeResult, Error> =>
    Effect.gen(function*() {
      const started = now()
      let bytes = 0
      let roundTrips = 0
      const result = (over: Partial<ExchangeResult>): ExchangeResult => {
        const r: ExchangeResult = { partition, peer, roundTrips, bytes, keysCompared: 0, differing: 0, repaired: 0, clean: true, ...over }
        const s = statsOf(partition)
        s.lastExchange = now()
        s.lastPeer = peer
        s.exchanges++
        s.keysCompared += r.keysCompared
        s.keysRepaired += r.repaired
        s.bytes += r.bytes
        if (r.clean) s.cleanSince.set(peer, started)
        return r
      }

      // 1. Branches.
      const mine1 = yield* engine.tree(partition)
      const r1 = (yield* ask(peer, { t: "aae-branches", partition })) as { hashes: Uint8Array; counts: Uint8Array }
      roundTrips++
      bytes += 16 + r1.hashes.length + r1.counts.length
      const theirs1 = u32(r1.hashes)
      const theirCounts = u32(r1.counts)
      if (theirs1.length !== BRANCHES || theirCounts.length !== BRANCHES) return yield* Effect.fail(new Error(`${peer} sent a tree of ${theirs1.length} branches`))
      const differ1: number[] = []
      for (let b = 0; b < BRANCHES; b++) if (mine1.hashes[b] !== theirs1[b]) differ1.push(b)
      if (differ1.length === 0) return result({})

      // 2. The second look, with the children of what differed.
      yield* Effect.sleep(config.confirmDelayMs)
      const nodes: Subtree[] = differ1.map((b) => ({ branch: b, bits: childWidthBits(Math.max(mine1.counts[b]!, theirCounts[b]!)) }))
      const r2 = (yield* ask(peer, { t: "aae-children", partition, nodes })) as { nodes: ReadonlyArray<{ branch: number; hash: number; children: Uint8Array }> }
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
      const r3 = (yield* ask(peer, { t: "aae-keys", partition, nodes: leaves })) as { keys: ReadonlyArray<string>; hashes: Uint8Array }
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
        const mine = yield* local(key)
        const object = mine === undefined ? null : objectBytes(mine)
        const theyLack = !theirKeys.has(key)
        records.push({ key, object: object !== null && theyLack && oldTombstone(object, mine!.timestamp) ? null : object })
      }
      const r4 = (yield* ask(peer, { t: "aae-sync", partition, records })) as { records: ReadonlyArray<{ key: string; object: Uint8Array | null }> }
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

  const inWindow = (): boolean => {
    const w = config.window
    if (w === undefined) return true
    const h = new Date(now()).getUTCHours()
    return w.from <= w.to ? h >= w.from && h < w.to : h >= w.from || h < w.to
  }

  // The loop: round-robin over (partition, peer) pairs of the partitions this node is a primary of.
  let cursor = 0
  const tick = Effect.gen(function*() {
    if (config.intervalMs <= 0 || !inWindow() || !membership.joined()) return config.intervalMs > 0 ? config.intervalMs : 1_000
    const q = membership.ring().partitions
    const pairs: Array<[number, string]> = []
    for (let p = 0; p < q; p++) for (const peer of peersOf(p)) if (membership.status(peer) === "up") pairs.push([p, peer])
    if (pairs.length === 0) return config.intervalMs
    const [p, peer] = pairs[cursor++ % pairs.length]!
    const r = yield* exchange(p, peer).pipe(
      Effect.tapError((e) => Effect.logDebug(`anti-entropy: partition ${p} with ${peer}: ${e.message}`)),
      Effect.option
    )
    if (Option.isSome(r) && r.value.repaired > 0) {
      yield* Effect.logInfo(`anti-entropy: partition ${p} with ${peer}: ${r.value.differing} keys differed, ${r.value.repaired} repaired`)
    }
    // More to repair with this peer: go again at once (the repair itself paces it).
    if (Option.isSome(r) && !r.value.clean) {
      cursor--
      return 0
    }
    return config.intervalMs
  })
  yield* Effect.gen(function*() {
    while (true) {
      const wait = yield* tick
      if (wait > 0) yield* Effect.sleep(wait)
    }
  }).pipe(Effect.forkScoped)

  return AntiEntropy.of({
    handle,
    exchange,
    status: () => {
      const q = membership.ring().partitions
      const out: PartitionAae[] = []
      for (let p = 0; p < q; p++) {
        const peers = peersOf(p)
        if (peers.length === 0 && !stats.has(p)) continue
        const s = statsOf(p)
        const tree = Effect.runSync(engine.tree(p))
        let root = 0
        let keys = 0
        for (let b = 0; b < BRANCHES; b++) {
          root ^= tree.hashes[b]!
          keys += tree.counts[b]!
        }
        out.push({ partition: p, root: root >>> 0, keys, peers, lastExchange: s.lastExchange, lastPeer: s.lastPeer, exchanges: s.exchanges, keysCompared: s.keysCompared, keysRepaired: s.keysRepaired, bytes: s.bytes, cleanSince: Object.fromEntries(s.cleanSince) })
      }
      return out
    },
    syncedAt: (partition) => {
      const peers = peersOf(partition)
      if (peers.length === 0) return undefined
      const s = stats.get(partition)
      let oldest = Infinity
      for (const peer of peers) {
        const at = s?.cleanSince.get(peer)
        if (at === undefined) return undefined
        oldest = Math.min(oldest, at)
      }
      return oldest
    },
    reconfigure: (patch) => Object.assign(config, patch)
  })
})

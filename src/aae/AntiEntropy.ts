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
 * an exchange that hit `maxRepairs` is followed by another with the same peer as soon as
 * `repairsPerSecond` allows, so a wiped replica refills at that rate rather than one batch
 * per interval.
 */
import { Clock, Context, Effect, Layer, Option } from "effect"
import { Engine } from "../../engine/Engine.ts"
import { BRANCHES } from "../../engine/TictacTree.ts"
import { type AaeMessage as TreeMessage, answer, exchange, type ExchangeDeps, type ExchangeResult, isAaeMessage as isTreeMessage } from "./Exchange.ts"
import { answerHints, type HintMessage, isHintMessage, pushHints } from "./HintExchange.ts"
import { Handoff } from "../handoff/Handoff.ts"
import { Membership } from "../membership/Membership.ts"
import { Replica } from "../replica/Replica.ts"
import { partitionOf, preferenceList } from "../ring/Ring.ts"
import { Transport } from "../transport/Transport.ts"

export { type ExchangeResult } from "./Exchange.ts"

/** Internode messages of anti-entropy: the primaries' tree exchange and the fallbacks' push. */
export type AaeMessage = TreeMessage | HintMessage

/** Whether an untrusted payload is an anti-entropy message. */
export const isAaeMessage = (m: unknown): m is AaeMessage => isTreeMessage(m) || isHintMessage(m)

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
  /** Most keys repaired per second while a replica is far behind (the pace of back-to-back exchanges). */
  repairsPerSecond: number
  /** Tombstones older than this are not pushed to a replica that has no record of the key. */
  tombstoneGraceMs: number
}

/** Whether `at` (ms since the epoch) falls in the UTC hours [from, to); from > to wraps midnight, from = to is all day. */
export const withinWindow = (w: AaeConfig["window"], at: number): boolean => {
  if (w === undefined || w.from === w.to) return true
  const h = new Date(at).getUTCHours()
  return w.from < w.to ? h >= w.from && h < w.to : h >= w.from || h < w.to
}

/** Defaults. */
export const defaultAaeConfig: AaeConfig = {
  intervalMs: 1_000,
  window: undefined,
  maxRepairs: 1_000,
  confirmDelayMs: 500,
  repairsPerSecond: 5_000,
  tombstoneGraceMs: 86_400_000
}

/** Totals of the exchanges this node started for one partition, since it started. */
export interface ExchangeTotals {
  readonly lastExchange: number | undefined
  readonly lastPeer: string | undefined
  readonly exchanges: number
  readonly keysCompared: number
  readonly keysRepaired: number
  readonly bytes: number
}

/** What /admin/aae shows for one partition. */
export interface PartitionAae extends ExchangeTotals {
  readonly partition: number
  /** This node's tree root for the partition (equal on replicas that hold the same objects). */
  readonly root: number
  /** Keys (tombstones included) this node holds in the partition. */
  readonly keys: number
  /** Other primaries this node exchanges with. */
  readonly peers: ReadonlyArray<string>
  /** Start of the latest clean exchange with each peer (ms since the epoch). */
  readonly cleanSince: Readonly<Record<string, number>>
}

/**
 * What /admin/aae shows for one partition whose writes are parked here for an absent owner:
 * the pushes of those writes to the partition's primaries (HintExchange.ts).
 */
export interface FallbackAae extends ExchangeTotals {
  readonly partition: number
  /** Parked (key, owner) entries of the partition. */
  readonly parked: number
  /** The partition's primaries that are up, whom this node pushes to. */
  readonly peers: ReadonlyArray<string>
}

type Stats = { -readonly [K in keyof ExchangeTotals]: ExchangeTotals[K] } & { readonly cleanSince: Map<string, number> }

const newStats = (): Stats => ({ lastExchange: undefined, lastPeer: undefined, exchanges: 0, keysCompared: 0, keysRepaired: 0, bytes: 0, cleanSince: new Map() })

/** Adds one exchange's outcome to `s`. */
const count = (s: Stats, at: number, peer: string, r: ExchangeResult): void => {
  s.lastExchange = at
  s.lastPeer = peer
  s.exchanges++
  s.keysCompared += r.keysCompared
  s.keysRepaired += r.repaired
  s.bytes += r.bytes
}

/** The anti-entropy service. */
export class AntiEntropy extends Context.Service<AntiEntropy, {
  readonly handle: (from: string, msg: AaeMessage) => Effect.Effect<unknown>
  /** Runs one exchange of `partition` with `peer` now. */
  readonly exchange: (partition: number, peer: string) => Effect.Effect<ExchangeResult & { readonly peer: string }, Error>
  /** Per partition this node is a primary of. */
  readonly status: () => ReadonlyArray<PartitionAae>
  /** Per partition whose writes are parked here, or were pushed from here since the start. */
  readonly fallbacks: () => ReadonlyArray<FallbackAae>
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

/** Builds the service and starts its loop in the layer's scope. */
export const make = Effect.fnUntraced(function*(config: AaeConfig) {
  const engine = yield* Engine
  const replica = yield* Replica
  const membership = yield* Membership
  const transport = yield* Transport
  const handoff = yield* Handoff
  const clock = yield* Clock.Clock
  const now = () => clock.currentTimeMillisUnsafe()
  const self = membership.self.id
  const stats = new Map<number, Stats>()
  /** Pushes of parked writes, per partition; and where the next push to each primary starts. */
  const fallbackStats = new Map<number, Stats>()
  const statsIn = (m: Map<number, Stats>, p: number): Stats => {
    let s = m.get(p)
    if (s === undefined) m.set(p, s = newStats())
    return s
  }
  const statsOf = (p: number): Stats => statsIn(stats, p)
  const pushFrom = new Map<string, number>()

  /** Other current primaries of `partition`, if this node is one. */
  const peersOf = (partition: number): ReadonlyArray<string> => {
    const prefs = preferenceList(membership.ring(), partition, membership.state().n)
    return prefs.includes(self) ? prefs.filter((id) => id !== self) : []
  }

  const deps: ExchangeDeps = { engine, replica, now, config }
  const hintDeps = { engine, replica, partitionOf: (key: string) => partitionOf(key, membership.ring().partitions) }
  const parkedView = { entries: handoff.parkedHashes, read: handoff.readAll }

  const ask = (peerId: string, timeoutMs = 30_000) => (msg: AaeMessage) =>
    Effect.gen(function*() {
      const peer = membership.peer(peerId)
      if (peer === undefined) return yield* Effect.fail(new Error(`unknown node ${peerId}`))
      const r = (yield* Effect.mapError(transport.request(peer, msg, timeoutMs), (e) => new Error(`${peerId}: ${e.message}`))) as { t: string; message?: string }
      if (r?.t === "aae-err") return yield* Effect.fail(new Error(`${peerId}: ${r.message}`))
      if (r?.t !== msg.t) return yield* Effect.fail(new Error(`${peerId} answered ${msg.t} with ${String(r?.t)}`))
      return r as unknown
    })

  const exchangeWith = (partition: number, peer: string): Effect.Effect<ExchangeResult & { readonly peer: string }, Error> =>
    exchange(deps, ask(peer), partition).pipe(Effect.map((r) => {
      const s = statsOf(partition)
      count(s, now(), peer, r)
      if (r.clean) s.cleanSince.set(peer, r.started)
      return { ...r, peer }
    }))

  /** Pushes what is parked here of `partition` to the primary `peer` (a fallback's exchange). */
  const pushTo = (partition: number, peer: string): Effect.Effect<ExchangeResult & { readonly peer: string }, Error> =>
    pushHints(parkedView, ask(peer), partition, { from: pushFrom.get(`${partition}/${peer}`) ?? 0, maxRepairs: config.maxRepairs, now }).pipe(Effect.map((r) => {
      pushFrom.set(`${partition}/${peer}`, r.next)
      count(statsIn(fallbackStats, partition), now(), peer, r)
      return { ...r, peer }
    }))

  /** The primaries of `partition` other than this node: whom its parked writes are pushed to. */
  const primariesOf = (partition: number): ReadonlyArray<string> =>
    preferenceList(membership.ring(), partition, membership.state().n).filter((id) => id !== self)

  const inWindow = (): boolean => withinWindow(config.window, now())

  // The loop: round-robin over (partition, peer) pairs of the partitions this node is a primary of.
  let cursor = 0
  const tick = Effect.gen(function*() {
    if (config.intervalMs <= 0 || !inWindow() || !membership.joined()) return config.intervalMs > 0 ? config.intervalMs : 1_000
    const q = membership.ring().partitions
    // (partition, peer, whether this node pushes parked writes rather than comparing trees)
    const pairs: Array<[number, string, boolean]> = []
    for (let p = 0; p < q; p++) for (const peer of peersOf(p)) if (membership.status(peer) === "up") pairs.push([p, peer, false])
    for (const p of handoff.parkedPartitions()) for (const peer of primariesOf(p)) if (membership.status(peer) === "up") pairs.push([p, peer, true])
    if (pairs.length === 0) return config.intervalMs
    const [p, peer, fallback] = pairs[cursor++ % pairs.length]!
    const r = yield* (fallback ? pushTo(p, peer) : exchangeWith(p, peer)).pipe(
      Effect.tapError((e) => Effect.logDebug(`anti-entropy: partition ${p} with ${peer}: ${e.message}`)),
      Effect.option
    )
    if (Option.isSome(r) && r.value.repaired > 0) {
      yield* Effect.logInfo(`anti-entropy: partition ${p} with ${peer}${fallback ? " (parked writes pushed)" : ""}: ${r.value.differing} keys differed, ${r.value.repaired} repaired`)
    }
    // More to repair with this peer: go again as soon as the repair rate allows. Not for a
    // fallback's push: a primary holding newer versions differs from parked copies for good,
    // and repeating the push would starve every tree exchange while the owner stays down.
    if (Option.isSome(r) && !r.value.clean && !fallback) {
      cursor--
      return Math.ceil((r.value.repaired * 1000) / Math.max(1, config.repairsPerSecond))
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
    handle: (_from, msg) => (isHintMessage(msg) ? answerHints(hintDeps, msg) : answer(deps, msg)),
    exchange: exchangeWith,
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
    fallbacks: () => {
      const parkedHere = handoff.parkedPartitions()
      const ps = [...new Set([...parkedHere, ...fallbackStats.keys()])].sort((a, b) => a - b)
      return ps.map((partition) => {
        const s = fallbackStats.get(partition)
        return {
          partition,
          // Counted, not listed: /metrics reads this on every scrape.
          parked: handoff.parkedCount(partition),
          peers: primariesOf(partition).filter((id) => membership.status(id) === "up"),
          lastExchange: s?.lastExchange, lastPeer: s?.lastPeer, exchanges: s?.exchanges ?? 0,
          keysCompared: s?.keysCompared ?? 0, keysRepaired: s?.keysRepaired ?? 0, bytes: s?.bytes ?? 0
        }
      })
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

/**
 * When a tombstone may go (CONTRACT.md, "Anti-entropy and deletes"): per partition, the
 * newest local record time at which compaction may drop a tombstone (the engine's
 * `reapBefore`). A tombstone of partition p goes only if this node is a current primary of p,
 * the ring is not moving p, no member parks writes for p (their parked copies could be older
 * than the delete and bring the value back), the grace has passed, and a clean anti-entropy
 * exchange with every other primary of p started after the tombstone was written here, so
 * each of them holds it (AntiEntropy.syncedAt). Otherwise the cutoff is -Infinity.
 *
 * Other members' parked writes are learnt by asking every member, every `refreshMs`, which
 * partitions it parks writes for; a member whose answer is older than `staleMs`, or that
 * answered under another ring version, blocks reaping everywhere. A member gone for good
 * blocks nothing once it is removed: it leaves the preference lists, its parked writes are
 * delivered to the new owners, and the next clean exchanges let reaping go on.
 */
import { Clock, Context, Effect, Layer } from "effect"
import { Handoff } from "../handoff/Handoff.ts"
import { Membership } from "../membership/Membership.ts"
import { preferenceList } from "../ring/Ring.ts"
import { Transport } from "../transport/Transport.ts"
import { AntiEntropy } from "./AntiEntropy.ts"

/** Reaping settings (all live). */
export interface ReapingConfig {
  /** Tombstones younger than this (ms, by their local record time) are kept. */
  tombstoneGraceMs: number
  /** How often every member is asked which partitions it parks writes for, ms. */
  refreshMs: number
  /** An answer older than this (ms since it was asked for) counts as no answer. */
  staleMs: number
}

/** Defaults. */
export const defaultReapingConfig: ReapingConfig = {
  tombstoneGraceMs: 86_400_000,
  refreshMs: 2_000,
  staleMs: 10_000
}

/** The internode message of reaping: "which partitions do you park writes for?" (validated by `isReapingMessage`). */
export interface ReapingMessage {
  readonly t: "reap-parked"
}

/** The answer: the ring version the member is on and the partitions it parks writes for. */
export interface ReapingAnswer {
  readonly t: "reap-parked"
  readonly version: number
  readonly partitions: ReadonlyArray<number>
}

/** Whether an untrusted payload is a reaping message. */
export const isReapingMessage = (m: unknown): m is ReapingMessage =>
  typeof m === "object" && m !== null && (m as { t?: unknown }).t === "reap-parked"

/** Whether an untrusted answer is a ReapingAnswer for a ring of `partitions`. */
export const isReapingAnswer = (a: unknown, partitions: number): a is ReapingAnswer => {
  const x = a as Record<string, unknown> | null
  return typeof x === "object" && x !== null && x.t === "reap-parked" && Number.isInteger(x.version) &&
    Array.isArray(x.partitions) && x.partitions.length <= partitions &&
    x.partitions.every((p) => Number.isInteger(p) && (p as number) >= 0 && (p as number) < partitions)
}

/** One partition's cutoff, and when it is -Infinity, why. */
export interface PartitionCutoff {
  readonly partition: number
  /** Tombstones whose local record time is at or before this (ms since the epoch) may go. */
  readonly reapBefore: number
  readonly blocked: string | undefined
}

/** What this node last heard from another member. */
export interface MemberAnswer {
  readonly id: string
  /** When the answer was asked for (ms since the epoch), or undefined: never answered. */
  readonly at: number | undefined
  readonly version: number | undefined
  readonly parked: ReadonlyArray<number>
}

/** The reaping service. */
export class Reaping extends Context.Service<Reaping, {
  /** Answers another member's question. */
  readonly handle: (from: string, msg: ReapingMessage) => Effect.Effect<ReapingAnswer>
  /** The engine's `reapBefore`: the cutoff of `partition` now. */
  readonly reapBefore: (partition: number) => number
  /** The cutoff of `partition` now, with the reason when nothing may go. */
  readonly cutoff: (partition: number) => PartitionCutoff
  /** What every other member last answered. */
  readonly members: () => ReadonlyArray<MemberAnswer>
  /** Asks every other member now (the refresh fiber does it every `refreshMs`). */
  readonly refresh: Effect.Effect<void>
  readonly reconfigure: (patch: Partial<ReapingConfig>) => void
}>()("tally/aae/Reaping") {
  static readonly layer = (config: Partial<ReapingConfig> = {}) => Layer.effect(Reaping, make({ ...defaultReapingConfig, ...config }))
}

/** Builds the service and starts its refresh fiber in the layer's scope. */
export const make = Effect.fnUntraced(function*(config: ReapingConfig) {
  const membership = yield* Membership
  const handoff = yield* Handoff
  const aae = yield* AntiEntropy
  const transport = yield* Transport
  const clock = yield* Clock.Clock
  const now = () => clock.currentTimeMillisUnsafe()
  const self = membership.self.id
  const answers = new Map<string, { readonly at: number; readonly version: number; readonly parked: ReadonlySet<number> }>()

  /** The members whose parked writes count: those of the current and the next ring, but this node. */
  const others = (): ReadonlyArray<string> => {
    const r = membership.state().ring
    return [...new Set([...r.members, ...r.nextMembers])].filter((id) => id !== self).sort()
  }

  const parkedHere = (): ReadonlyArray<number> => [...handoff.parkedPartitions()].sort((a, b) => a - b)

  const handle = (_from: string, _msg: ReapingMessage): Effect.Effect<ReapingAnswer> =>
    Effect.sync(() => ({ t: "reap-parked", version: membership.state().ring.version, partitions: parkedHere() }))

  const askOne = (id: string) =>
    Effect.suspend(() => {
      const peer = membership.peer(id)
      if (peer === undefined) return Effect.void
      const at = now()
      const q = membership.state().partitions
      return transport.request(peer, { t: "reap-parked" } satisfies ReapingMessage, Math.max(500, config.refreshMs)).pipe(
        Effect.map((a) => {
          if (isReapingAnswer(a, q)) answers.set(id, { at, version: a.version, parked: new Set(a.partitions) })
        }),
        Effect.ignore
      )
    })

  const refresh = Effect.suspend(() => {
    const ids = others()
    for (const id of answers.keys()) if (!ids.includes(id)) answers.delete(id)
    return Effect.forEach(ids, askOne, { concurrency: "unbounded", discard: true })
  })
  yield* refresh.pipe(
    Effect.andThen(Effect.suspend(() => Effect.sleep(config.refreshMs))),
    Effect.forever,
    Effect.forkScoped
  )

  const blockedBy = (partition: number, reason: string): PartitionCutoff => ({ partition, reapBefore: -Infinity, blocked: reason })

  const cutoff = (partition: number): PartitionCutoff => {
    if (!membership.joined()) return blockedBy(partition, "this node is not a ring member")
    const s = membership.state()
    const prefs = preferenceList(membership.ring(), partition, s.n)
    if (!prefs.includes(self)) return blockedBy(partition, "this node is not one of its primaries")
    const next = preferenceList(membership.nextRing(), partition, s.n)
    if (next.length !== prefs.length || next.some((id) => !prefs.includes(id))) return blockedBy(partition, "the ring is moving it")
    if (handoff.parks(partition)) return blockedBy(partition, "writes for it are parked on this node")
    const t = now()
    for (const id of others()) {
      const a = answers.get(id)
      if (a === undefined || t - a.at > config.staleMs) return blockedBy(partition, `no recent answer from ${id} about its parked writes`)
      if (a.version !== s.ring.version) return blockedBy(partition, `${id} answered on ring version ${a.version}, this node is on ${s.ring.version}`)
      if (a.parked.has(partition)) return blockedBy(partition, `writes for it are parked on ${id}`)
    }
    // A sole replica holds every copy there is; otherwise each other primary must have had a
    // clean exchange with this node since the tombstone was written here.
    const synced = prefs.length === 1 ? Infinity : aae.syncedAt(partition)
    if (synced === undefined) return blockedBy(partition, "no clean anti-entropy exchange with every other primary yet")
    return { partition, reapBefore: Math.min(t - config.tombstoneGraceMs, synced), blocked: undefined }
  }

  return Reaping.of({
    handle,
    reapBefore: (partition) => cutoff(partition).reapBefore,
    cutoff,
    members: () =>
      others().map((id) => {
        const a = answers.get(id)
        return { id, at: a?.at, version: a?.version, parked: a === undefined ? [] : [...a.parked].sort((x, y) => x - y) }
      }),
    refresh,
    reconfigure: (patch) => void Object.assign(config, patch)
  })
})

/**
 * Anti-entropy from a fallback: a node that parks writes of a partition for an absent owner
 * compares them with each primary of the partition that is up and pushes what that primary
 * lacks, both sides here (`pushHints` asks, `answerHints` replies).
 *
 * Why: handoff ships a parked write only to the owner it was parked for. A write that reached
 * only fallbacks (all three primaries down, w=2) lives in two parked logs, one for each of two
 * owners; if one fallback then loses its disk, the other's copy waits for its own owner, and
 * the primaries that are back hold nothing of the write until that owner returns. Pushing
 * parked writes to every live primary closes that window, as the issue asks ("fallback holders
 * exchange with the owners too, so a lost hint is repaired"). Handoff still delivers to the
 * owner it parked for and deletes the log; the push is a merge, so doing both is harmless.
 *
 * No tree comparison: a fallback holds only the parked keys of a partition, so its tree never
 * equals a primary's and comparing roots or branches would always descend. The fallback sends
 * its (32-bit key hash, contribution) pairs at once (8 bytes a key, at most `MAX_PAIRS` per
 * exchange, going round the hash space over successive exchanges), the primary answers which
 * hashes it holds differently or not at all, and the fallback pushes its objects for those.
 * The push is one-way: a fallback keeps what it parked and takes nothing back (it is not a
 * replica of the partition). A primary that holds a newer version merges the parked one as
 * the no-op it is, so a key can be pushed again while its parked log lives; parked logs are
 * short-lived and small, and exchanges are paced with the others.
 *
 * Tombstones are pushed whatever their age: tombstone reaping waits while any member parks
 * writes of the partition (Reaping.ts), so no primary can have reaped what a fallback parks.
 */
import { Effect } from "effect"
import type { Replica } from "../replica/Replica.ts"
import type { Engine } from "../../engine/Engine.ts"
import { decodeObject, encodeObject, type StoredObject } from "../versions/Sibling.ts"
import { bytesOf, type ExchangeResult, isPartition, u32 } from "./Exchange.ts"
import type { ApiError } from "../Errors.ts"

/** Most key hashes compared by one exchange. */
export const MAX_PAIRS = 10_000

/**
 * Internode messages of the fallback push (validated by `isHintMessage`):
 *  - `aae-hint-keys`: (key hash, contribution) pairs, 8 bytes each, one per hash (keys
 *    sharing a hash XORed, as the tree does); the answer names the hashes the primary holds
 *    with another contribution (`differ`) and those it holds no key of (`lack`).
 *  - `aae-hint-push`: parked objects for keys of the partition; the primary merges them and
 *    answers how many it merged.
 */
export type HintMessage =
  | { readonly t: "aae-hint-keys"; readonly partition: number; readonly pairs: Uint8Array }
  | { readonly t: "aae-hint-push"; readonly partition: number; readonly records: ReadonlyArray<{ readonly key: string; readonly object: Uint8Array }> }

/** Whether an untrusted payload is a fallback push message. */
export const isHintMessage = (m: unknown): m is HintMessage => {
  const x = m as Record<string, unknown> | null
  if (typeof x !== "object" || x === null || !isPartition(x.partition)) return false
  switch (x.t) {
    case "aae-hint-keys":
      return x.pairs instanceof Uint8Array && x.pairs.length % 8 === 0 && x.pairs.length / 8 <= MAX_PAIRS
    case "aae-hint-push":
      return Array.isArray(x.records) && x.records.length <= MAX_PAIRS &&
        x.records.every((r: Record<string, unknown>) => typeof r?.key === "string" && r.object instanceof Uint8Array)
    default:
      return false
  }
}

/** What the primary's side needs. */
export interface HintAnswerDeps {
  readonly engine: Engine["Service"]
  readonly replica: Replica["Service"]
  /** The partition of a key, to refuse pushed keys of another partition than the message names. */
  readonly partitionOf: (key: string) => number
}

/** Answers a fallback's message (errors become an `aae-err` reply). */
export const answerHints = (deps: HintAnswerDeps, msg: HintMessage): Effect.Effect<unknown> => {
  const reply: Effect.Effect<unknown, unknown> = Effect.gen(function*() {
    switch (msg.t) {
      case "aae-hint-keys": {
        const pairs = u32(msg.pairs)
        const theirs = new Map<number, number>()
        for (let i = 0; i < pairs.length; i += 2) theirs.set(pairs[i]!, pairs[i + 1]!)
        const mine = new Map<number, number>()
        for (const e of yield* deps.engine.partitionHashes(msg.partition)) {
          if (theirs.has(e.h)) mine.set(e.h, ((mine.get(e.h) ?? 0) ^ e.hash) >>> 0)
        }
        const differ: number[] = []
        const lack: number[] = []
        for (const [h, c] of theirs) {
          const m = mine.get(h)
          if (m === undefined) lack.push(h)
          else if (m !== c) differ.push(h)
        }
        return { t: "aae-hint-keys", differ: bytesOf(Uint32Array.from(differ)), lack: bytesOf(Uint32Array.from(lack)) }
      }
      case "aae-hint-push": {
        let merged = 0
        for (const r of msg.records) {
          if (deps.partitionOf(r.key) !== msg.partition) return yield* Effect.fail(new Error(`key ${JSON.stringify(r.key.slice(0, 80))} is not in partition ${msg.partition}`))
        }
        for (const r of msg.records) {
          const o = decodeObject(r.object)
          if (o === undefined) continue
          yield* deps.replica.merge(r.key, o)
          merged++
        }
        return { t: "aae-hint-push", merged }
      }
    }
  })
  return reply.pipe(Effect.catch((e: unknown) => Effect.succeed({ t: "aae-err", message: String((e as Error)?.message ?? e) })))
}

/** What the fallback's side needs: its parked writes. */
export interface ParkedView {
  /** Every parked (key, key hash, contribution) of a partition, for any owner; a key parked for two owners appears twice. */
  readonly entries: (partition: number) => ReadonlyArray<{ readonly key: string; readonly h: number; readonly hash: number }>
  /** Everything parked under a key, for any owner, merged. */
  readonly read: (key: string) => Effect.Effect<StoredObject | undefined, ApiError>
}

/** Sends a message to the primary and returns its reply (an `aae-err` reply is a failure). */
export type HintAsk = (msg: HintMessage) => Effect.Effect<unknown, Error>

const lied = (what: string) => Effect.fail(new Error(`the primary's ${what} is malformed`))

/**
 * Compares the parked writes of `partition` whose key hash is at or after `from` (going round)
 * with one primary and pushes what it lacks or holds otherwise, at most `maxRepairs` keys.
 * Returns the outcome and where the next exchange with this primary starts (`next`): clean
 * means every parked hash was compared and every difference pushed.
 */
export const pushHints = (parked: ParkedView, ask: HintAsk, partition: number, opts: { readonly from: number; readonly maxRepairs: number; readonly now: () => number }): Effect.Effect<ExchangeResult & { readonly next: number }, Error> =>
  Effect.gen(function*() {
    const started = opts.now()
    // Per key hash: its keys, and the XOR of their contributions when each key has one
    // parked version; a key parked in two versions (for two owners) is always pushed.
    const byHash = new Map<number, { keys: Set<string>; hash: number; mixed: boolean; seen: Map<string, number> }>()
    for (const e of parked.entries(partition)) {
      let g = byHash.get(e.h)
      if (g === undefined) byHash.set(e.h, g = { keys: new Set(), hash: 0, mixed: false, seen: new Map() })
      const before = g.seen.get(e.key)
      if (before === undefined) {
        g.seen.set(e.key, e.hash)
        g.keys.add(e.key)
        g.hash = (g.hash ^ e.hash) >>> 0
      } else if (before !== e.hash) g.mixed = true
    }
    const hashes = [...byHash.keys()].sort((a, b) => a - b)
    // Going round: the hashes at or after `from`, then those before it.
    const start = hashes.findIndex((h) => h >= opts.from)
    const ordered = start <= 0 ? hashes : [...hashes.slice(start), ...hashes.slice(0, start)]
    const batch = ordered.slice(0, MAX_PAIRS)
    const next = batch.length < ordered.length ? ordered[batch.length]! : 0
    const result = (over: Partial<ExchangeResult & { next: number }>) => ({ partition, started, roundTrips: 0, bytes: 0, keysCompared: 0, differing: 0, repaired: 0, clean: batch.length === ordered.length, next, ...over })
    if (batch.length === 0) return result({})

    const pairs = new Uint32Array(batch.length * 2)
    batch.forEach((h, i) => {
      pairs[2 * i] = h
      pairs[2 * i + 1] = byHash.get(h)!.hash
    })
    const r1 = (yield* ask({ t: "aae-hint-keys", partition, pairs: bytesOf(pairs) })) as { differ?: unknown; lack?: unknown }
    if (!(r1.differ instanceof Uint8Array) || !(r1.lack instanceof Uint8Array) || r1.differ.length % 4 !== 0 || r1.lack.length % 4 !== 0) return yield* lied("key comparison")
    let bytes = pairs.byteLength + r1.differ.length + r1.lack.length
    const asked = new Set(batch)
    const push = new Set<number>()
    for (const h of [...u32(r1.differ), ...u32(r1.lack)]) {
      if (!asked.has(h)) return yield* lied("key comparison")
      push.add(h)
    }
    for (const h of batch) if (byHash.get(h)!.mixed) push.add(h)
    const keysCompared = batch.reduce((n, h) => n + byHash.get(h)!.keys.size, 0)
    if (push.size === 0) return result({ roundTrips: 1, bytes, keysCompared })

    // In hash order, so that a window with more differences than one push takes goes on
    // where this push stopped next time (a primary holding newer versions differs for good).
    const records: Array<{ key: string; object: Uint8Array }> = []
    let differing = 0
    let stoppedAt: number | undefined
    for (const h of batch) {
      if (!push.has(h)) continue
      const keys = byHash.get(h)!.keys
      differing += keys.size
      if (stoppedAt !== undefined) continue
      if (records.length > 0 && records.length + keys.size > opts.maxRepairs) {
        stoppedAt = h
        continue
      }
      for (const key of keys) {
        const o = yield* Effect.mapError(parked.read(key), (e) => new Error(e.message))
        if (o !== undefined) records.push({ key, object: encodeObject(o) })
      }
    }
    const r2 = (yield* ask({ t: "aae-hint-push", partition, records })) as { merged?: unknown }
    if (typeof r2.merged !== "number") return yield* lied("push answer")
    bytes += records.reduce((n, r) => n + Buffer.byteLength(r.key) + r.object.length, 0)
    return result({
      roundTrips: 2, bytes, keysCompared, differing, repaired: records.length,
      clean: batch.length === ordered.length && stoppedAt === undefined,
      next: stoppedAt ?? next
    })
  })

/**
 * One anti-entropy exchange between two replicas of a partition, both sides: `exchange` asks,
 * `answer` replies. Plain of any service but the engine and replica, so a benchmark or a
 * test can run it between two engines in one process; AntiEntropy.ts schedules it between
 * nodes. The steps are described in AntiEntropy.ts.
 */
import { Effect, Option } from "effect"
import type { Engine } from "../../engine/Engine.ts"
import { BRANCHES, branchOf, childOf, children, childWidthBits, keyHash, type KeyHash, type Subtree } from "../../engine/TictacTree.ts"
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

/**
 * Internode messages of anti-entropy (validated by `isAaeMessage`). Node lists travel packed
 * in bytes, 4 per node, since a 1% divergence asks for thousands of them:
 *  - `aae-branches`: the asker's root; the answer is `equal`, or the 1024 branch hashes.
 *  - `aae-children`: per branch, `branch << 20 | min(asker's keys in it, 2^20 - 1)`; the
 *    answerer picks the width from the larger key count (`childWidthBits`) and answers
 *    per branch its current hash, the width, and the children hashes, concatenated.
 *  - `aae-keys`: per child, `branch << 14 | bits << 10 | child`; the answer lists, for the
 *    keys under those children, (32-bit key hash, contribution) pairs, 8 bytes a key: the
 *    key names travel only for the keys repaired. Keys whose hashes collide are one entry
 *    (their contributions XORed) and are repaired together.
 *  - `aae-sync`: the asker's objects for its keys to repair (null where it has none), and
 *    `want`, the differing key hashes; the answerer merges the objects and answers with its
 *    own for the keys named, then for its other keys (in the partition) with a hash in `want`.
 */
export type AaeMessage =
  | { readonly t: "aae-branches"; readonly partition: number; readonly root: number }
  | { readonly t: "aae-children"; readonly partition: number; readonly nodes: Uint8Array }
  | { readonly t: "aae-keys"; readonly partition: number; readonly leaves: Uint8Array }
  | { readonly t: "aae-sync"; readonly partition: number; readonly records: ReadonlyArray<{ readonly key: string; readonly object: Uint8Array | null }>; readonly want: Uint8Array }

const MAX_SYNC = 10_000
/** A request names at most every child of every branch. */
const MAX_LEAVES = BRANCHES * 1024

/** A partition number as messages carry it (at most 2^16 partitions). */
export const isPartition = (p: unknown): p is number => Number.isInteger(p) && (p as number) >= 0 && (p as number) <= 0xffff
const isU32s = (b: unknown, max: number): b is Uint8Array => b instanceof Uint8Array && b.length % 4 === 0 && b.length / 4 <= max

/** A child request packed as `branch << 14 | bits << 10 | child`. */
const packLeaf = (branch: number, bits: number, child: number): number => ((branch << 14) | (bits << 10) | child) >>> 0
const unpackLeaf = (x: number): { branch: number; bits: number; child: number } => ({ branch: x >>> 14, bits: (x >>> 10) & 0xf, child: x & 0x3ff })

/** Whether an untrusted payload is an anti-entropy message. */
export const isAaeMessage = (m: unknown): m is AaeMessage => {
  const x = m as Record<string, unknown> | null
  if (typeof x !== "object" || x === null || !isPartition(x.partition)) return false
  switch (x.t) {
    case "aae-branches":
      return Number.isInteger(x.root) && (x.root as number) >= 0 && (x.root as number) <= 0xffff_ffff
    case "aae-children":
      return isU32s(x.nodes, BRANCHES)
    case "aae-keys": {
      if (!isU32s(x.leaves, MAX_LEAVES)) return false
      const v = u32(x.leaves)
      for (let i = 0; i < v.length; i++) {
        const l = unpackLeaf(v[i]!)
        if (l.branch >= BRANCHES || l.bits > 10 || l.child >= 1 << l.bits) return false
      }
      return true
    }
    case "aae-sync":
      return Array.isArray(x.records) && x.records.length <= MAX_SYNC && isU32s(x.want, MAX_SYNC) &&
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
  /** Payload bytes both ways, values and keys as sent (framing not counted). */
  readonly bytes: number
  readonly keysCompared: number
  readonly differing: number
  readonly repaired: number
  readonly clean: boolean
}

/** A little-endian u32 view of (a copy of) bytes: msgpack may hand out unaligned views. */
export function u32(b: Uint8Array): Uint32Array {
  const copy = new Uint8Array(b.length - (b.length % 4))
  copy.set(b.subarray(0, copy.length))
  return new Uint32Array(copy.buffer)
}
/** The bytes of a u32 array, for a message. */
export const bytesOf = (a: Uint32Array): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength)

/** Reads a key's record, or undefined. */
const local = (engine: Engine["Service"], key: string) =>
  engine.get(key).pipe(Effect.map((o) => Option.getOrUndefined(o)))

/** Whether a stored object is a tombstone past the grace period (not worth pushing to a replica that lacks the key). */
const oldTombstone = (deps: ExchangeDeps, object: Uint8Array, timestamp: number): boolean => {
  const o = decodeObject(object)
  return o !== undefined && allDeleted(o) && timestamp + deps.config.tombstoneGraceMs <= deps.now()
}

const rootOf = (hashes: Uint32Array): number => {
  let r = 0
  for (let i = 0; i < hashes.length; i++) r ^= hashes[i]!
  return r >>> 0
}

/**
 * The entries under the given children (`want`: branch * 1024 + child, `bitsOf`: width per
 * branch), by key hash: the XOR of the contributions of the keys sharing it, and the keys.
 */
const under = (entries: ReadonlyArray<KeyHash & { readonly h: number }>, bitsOf: ReadonlyMap<number, number>, want: ReadonlySet<number>) => {
  const out = new Map<number, { hash: number; keys: string[] }>()
  for (const e of entries) {
    const b = branchOf(e.h)
    const bits = bitsOf.get(b)
    if (bits === undefined || !want.has(b * 1024 + childOf(e.h, bits))) continue
    const at = out.get(e.h)
    if (at === undefined) out.set(e.h, { hash: e.hash, keys: [e.key] })
    else {
      at.hash = (at.hash ^ e.hash) >>> 0
      at.keys.push(e.key)
    }
  }
  return out
}

/** (key hash, contribution) pairs, packed. */
const packPairs = (m: ReadonlyMap<number, { readonly hash: number }>): Uint8Array => {
  const a = new Uint32Array(m.size * 2)
  let i = 0
  for (const [h, e] of m) {
    a[i++] = h
    a[i++] = e.hash
  }
  return bytesOf(a)
}

/** Answers an exchange message from another replica (errors become an `aae-err` reply). */
export const answer = (deps: ExchangeDeps, msg: AaeMessage): Effect.Effect<unknown> => {
  const { engine, replica } = deps
  const reply: Effect.Effect<unknown, unknown> = Effect.gen(function*() {
    switch (msg.t) {
      case "aae-branches": {
        const t = yield* engine.tree(msg.partition)
        return rootOf(t.hashes) === msg.root ? { t: "aae-branches", equal: true } : { t: "aae-branches", hashes: bytesOf(t.hashes) }
      }
      case "aae-children": {
        const t = yield* engine.tree(msg.partition)
        const asked = u32(msg.nodes)
        const nodes: Subtree[] = []
        for (let i = 0; i < asked.length; i++) {
          const branch = asked[i]! >>> 20
          nodes.push({ branch, bits: childWidthBits(Math.max(asked[i]! & 0xfffff, t.counts[branch]!)) })
        }
        const kids = children(yield* engine.partitionHashes(msg.partition), nodes)
        const hashes = new Uint32Array(nodes.length)
        const bits = new Uint8Array(nodes.length)
        const all = new Uint32Array(nodes.reduce((n, x) => n + (1 << x.bits), 0))
        let at = 0
        nodes.forEach((n, i) => {
          hashes[i] = t.hashes[n.branch]!
          bits[i] = n.bits
          all.set(kids.get(n.branch)!, at)
          at += 1 << n.bits
        })
        return { t: "aae-children", hashes: bytesOf(hashes), bits, children: bytesOf(all) }
      }
      case "aae-keys": {
        const leaves = [...u32(msg.leaves)].map(unpackLeaf)
        const mine = under(yield* engine.partitionHashes(msg.partition), new Map(leaves.map((l) => [l.branch, l.bits])), new Set(leaves.map((l) => l.branch * 1024 + l.child)))
        return { t: "aae-keys", pairs: packPairs(mine) }
      }
      case "aae-sync": {
        const out: Array<{ key: string; object: Uint8Array | null }> = []
        const named = new Set<string>()
        const send = (key: string, theyLack: boolean) =>
          Effect.gen(function*() {
            const mine = yield* local(engine, key)
            const bytes = mine === undefined ? null : objectBytes(mine)
            // A tombstone past its grace is not sent to a replica that never had the key (or
            // reaped it): that would only bring back what reaping removed.
            out.push({ key, object: bytes !== null && theyLack && oldTombstone(deps, bytes, mine!.timestamp) ? null : bytes })
          })
        for (const r of msg.records) {
          named.add(r.key)
          if (r.object !== null) {
            const o = decodeObject(r.object)
            if (o !== undefined) yield* replica.merge(r.key, o)
          }
          yield* send(r.key, r.object === null)
        }
        const want = new Set(u32(msg.want))
        if (want.size > 0) {
          for (const e of yield* engine.partitionHashes(msg.partition)) {
            if (want.has(e.h) && !named.has(e.key) && out.length < MAX_SYNC) yield* send(e.key, true)
          }
        }
        return { t: "aae-sync", records: out }
      }
    }
  })
  return reply.pipe(Effect.catch((e: unknown) => Effect.succeed({ t: "aae-err", message: String((e as Error)?.message ?? e) })))
}

const lied = (what: string) => Effect.fail(new Error(`the peer's ${what} is malformed`))

/**
 * Runs one exchange of `partition` against the replica `ask` reaches (see AntiEntropy.ts
 * for the steps). A malformed answer fails the exchange and changes nothing.
 */
export const exchange = (deps: ExchangeDeps, ask: Ask, partition: number): Effect.Effect<ExchangeResult, Error> =>
  Effect.gen(function*() {
    const { engine, replica, config } = deps
    const started = deps.now()
    let bytes = 0
    let roundTrips = 0
    const result = (over: Partial<ExchangeResult>): ExchangeResult =>
      ({ partition, started, roundTrips, bytes, keysCompared: 0, differing: 0, repaired: 0, clean: true, ...over })

    // 1. Branches (or only the root, when the roots agree).
    const mine1 = yield* engine.tree(partition)
    const r1 = (yield* ask({ t: "aae-branches", partition, root: rootOf(mine1.hashes) })) as { equal?: boolean; hashes?: Uint8Array }
    roundTrips++
    bytes += 8
    if (r1.equal === true) return result({ bytes })
    if (!(r1.hashes instanceof Uint8Array) || r1.hashes.length !== BRANCHES * 4) return yield* lied("branch list")
    bytes += r1.hashes.length
    const theirs1 = u32(r1.hashes)
    const differ1: number[] = []
    for (let b = 0; b < BRANCHES; b++) if (mine1.hashes[b] !== theirs1[b]) differ1.push(b)
    if (differ1.length === 0) return result({ bytes })

    // 2. The second look, with the children of what differed.
    yield* Effect.sleep(config.confirmDelayMs)
    const asked = Uint32Array.from(differ1, (b) => ((b << 20) | Math.min(mine1.counts[b]!, 0xfffff)) >>> 0)
    const r2 = (yield* ask({ t: "aae-children", partition, nodes: bytesOf(asked) })) as { hashes?: Uint8Array; bits?: Uint8Array; children?: Uint8Array }
    roundTrips++
    if (!(r2.hashes instanceof Uint8Array) || !(r2.bits instanceof Uint8Array) || !(r2.children instanceof Uint8Array) ||
      r2.hashes.length !== differ1.length * 4 || r2.bits.length !== differ1.length || r2.bits.some((b) => b > 10) ||
      r2.children.length !== r2.bits.reduce((n, b) => n + (1 << b), 0) * 4) return yield* lied("children list")
    bytes += asked.byteLength + r2.hashes.length + r2.bits.length + r2.children.length
    const mine2 = yield* engine.tree(partition)
    const entries = yield* engine.partitionHashes(partition)
    const nodes: Subtree[] = differ1.map((branch, i) => ({ branch, bits: r2.bits![i]! }))
    const myKids = children(entries, nodes)
    const theirHashes = u32(r2.hashes)
    const theirKids = u32(r2.children)
    const leaves: number[] = []
    let at = 0
    nodes.forEach((n, i) => {
      const width = 1 << n.bits
      // Equal at the second look: the difference was a write in flight.
      if (mine2.hashes[n.branch] !== theirHashes[i]) {
        const mineK = myKids.get(n.branch)!
        for (let c = 0; c < width; c++) if (mineK[c] !== theirKids[at + c]) leaves.push(packLeaf(n.branch, n.bits, c))
      }
      at += width
    })
    if (leaves.length === 0) return result({ roundTrips, bytes })

    // 3. (key hash, contribution) pairs under the differing children.
    const leafBytes = bytesOf(Uint32Array.from(leaves))
    const r3 = (yield* ask({ t: "aae-keys", partition, leaves: leafBytes })) as { pairs?: Uint8Array }
    roundTrips++
    if (!(r3.pairs instanceof Uint8Array) || r3.pairs.length % 8 !== 0) return yield* lied("key list")
    bytes += leafBytes.length + r3.pairs.length
    const theirs = new Map<number, number>()
    const tp = u32(r3.pairs)
    for (let i = 0; i < tp.length; i += 2) theirs.set(tp[i]!, tp[i + 1]!)
    const unpacked = leaves.map(unpackLeaf)
    const mine = under(entries, new Map(unpacked.map((l) => [l.branch, l.bits])), new Set(unpacked.map((l) => l.branch * 1024 + l.child)))
    // Differing key hashes: mine with another contribution or none on their side, then theirs I lack.
    const differing: number[] = []
    for (const [h, e] of mine) if (theirs.get(h) !== e.hash) differing.push(h)
    for (const h of theirs.keys()) if (!mine.has(h)) differing.push(h)
    const keysCompared = mine.size + theirs.size
    if (differing.length === 0) return result({ roundTrips, bytes, keysCompared })

    // 4. Repair both ways, through the merge: my objects for my keys, and the hashes I lack.
    const batch = differing.slice(0, config.maxRepairs)
    const records: Array<{ key: string; object: Uint8Array | null }> = []
    const want: number[] = []
    for (const h of batch) {
      // Every differing hash is wanted, mine too: the other side may hold another key that
      // shares the hash, which naming my keys alone would never fetch.
      want.push(h)
      const e = mine.get(h)
      if (e === undefined) continue
      for (const key of e.keys) {
        const stored = yield* local(engine, key)
        const object = stored === undefined ? null : objectBytes(stored)
        records.push({ key, object: object !== null && !theirs.has(h) && oldTombstone(deps, object, stored!.timestamp) ? null : object })
      }
    }
    const wantBytes = bytesOf(Uint32Array.from(want))
    const r4 = (yield* ask({ t: "aae-sync", partition, records, want: wantBytes })) as { records?: ReadonlyArray<{ key?: unknown; object?: unknown }> }
    const wanted = new Set(want)
    // The answer holds the keys asked for, in order, then only keys whose hash was wanted.
    if (!Array.isArray(r4.records) || r4.records.length < records.length || r4.records.length > MAX_SYNC ||
      !r4.records.every((r, i) => (r?.object === null || r?.object instanceof Uint8Array) &&
        (i < records.length ? r.key === records[i]!.key : typeof r.key === "string" && wanted.has(keyHash(r.key))))) return yield* lied("repair answer")
    bytes += wantBytes.length + records.reduce((n, r) => n + Buffer.byteLength(r.key) + (r.object?.length ?? 0), 0)
    for (const r of r4.records as ReadonlyArray<{ key: string; object: Uint8Array | null }>) {
      bytes += Buffer.byteLength(r.key) + (r.object?.length ?? 0)
      if (r.object === null) continue
      const o = decodeObject(r.object)
      if (o === undefined) continue
      yield* Effect.mapError(replica.merge(r.key, o), (e) => new Error(e.message))
    }
    return result({ roundTrips, bytes, keysCompared, differing: differing.length, repaired: batch.length, clean: differing.length <= config.maxRepairs })
  })

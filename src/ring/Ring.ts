/**
 * The consistent-hash ring: Q fixed partitions, each owned by one member. Every node folds the same
 * gossiped set of membership events in the same order, so equal event sets give equal rings.
 * Invariants after every event: members sorted, every partition owned by a member, every member
 * owning floor(Q/S) or ceil(Q/S); a join moves partitions only to the joiner, a leave only the leaver's.
 */
import { hash } from "node:crypto"

/** Ring size when the cluster is created without `--partitions`. */
export const DEFAULT_PARTITIONS = 64
/** Largest ring size. */
export const MAX_PARTITIONS = 4096

/** A membership change, gossiped as part of a grow-only set; `seq` orders the fold. */
export interface RingEvent {
  readonly seq: number
  readonly node: string
  readonly kind: "join" | "leave"
}

/**
 * Who owns what. `owners[p]` is the member owning partition `p` (empty when there are no members);
 * `version` counts the events that changed something; `members` is sorted by code unit.
 */
export interface Ring {
  readonly partitions: number
  readonly owners: ReadonlyArray<string>
  readonly version: number
  readonly members: ReadonlyArray<string>
}

/** One partition whose owner differs between two rings; `undefined` where a ring has no members. */
export interface Move {
  readonly partition: number
  readonly from: string | undefined
  readonly to: string | undefined
}

const TWO_32 = 2 ** 32

/**
 * The partition of a key: the first 4 bytes of the md5 of its UTF-8 bytes, big-endian, scaled to
 * `q`. One-shot `hash` with a "binary" (latin1) digest, one char per byte: no Hash object and no
 * Buffer per call, which is what this hot path spends its time on besides md5 itself.
 */
export const partitionOf = (key: string, q: number): number => {
  const d = hash("md5", key, "binary")
  const h = d.charCodeAt(0) * 0x1000000 + ((d.charCodeAt(1) << 16) | (d.charCodeAt(2) << 8) | d.charCodeAt(3))
  return Math.floor((h * q) / TWO_32)
}

/** A ring of `q` partitions and no members. */
export const emptyRing = (q: number = DEFAULT_PARTITIONS): Ring => {
  if (!Number.isInteger(q) || q < 1 || q > MAX_PARTITIONS) {
    throw new RangeError(`partitions must be an integer in 1..${MAX_PARTITIONS}, got ${q}`)
  }
  return make(q, [], [], 0)
}

/**
 * The ring after one event. A join of a member or a leave of a non-member returns `ring` itself.
 * A joiner takes floor(Q/S) partitions, each from a most loaded node; a leaver's partitions each
 * go to a least loaded node. Nothing else moves.
 */
export const applyEvent = (ring: Ring, event: RingEvent): Ring => {
  const isMember = ring.members.includes(event.node)
  if (event.kind === "join") {
    if (isMember) return ring
    const members = [...ring.members, event.node].sort(compareIds)
    return make(ring.partitions, claim(ring, event.node), members, ring.version + 1)
  }
  if (!isMember) return ring
  const members = ring.members.filter((m) => m !== event.node)
  const owners = members.length === 0 ? [] : release(ring, event.node, members)
  return make(ring.partitions, owners, members, ring.version + 1)
}

/** The ring every node computes from the same set of events, whatever their order or repetition. */
export const fromEvents = (q: number, events: Iterable<RingEvent>): Ring =>
  [...events].sort(compareEvents).reduce(applyEvent, emptyRing(q))

/**
 * The first `n` nodes of `ringWalk`: the owner of `partition`, then the next distinct owners
 * clockwise; fewer when the ring has fewer members.
 */
export const preferenceList = (ring: Ring, partition: number, n: number): string[] =>
  walk(ring, partition, Math.min(n, ring.members.length))

/**
 * Every member once, in the order sloppy quorum falls back on: distinct owners clockwise from
 * `partition`, then members owning nothing (only when S > Q), sorted.
 */
export const ringWalk = (ring: Ring, partition: number): string[] => walk(ring, partition, ring.members.length)

/** How many partitions each member owns, in member order, zeros included. */
export const partitionCounts = (ring: Ring): Map<string, number> => {
  const counts = new Map(ring.members.map((m) => [m, 0]))
  for (const o of ring.owners) counts.set(o, counts.get(o)! + 1)
  return counts
}

/** The partitions whose owner differs from `a` to `b`, in partition order. */
export const diff = (a: Ring, b: Ring): Move[] => {
  if (a.partitions !== b.partitions) {
    throw new RangeError(`cannot diff rings of ${a.partitions} and ${b.partitions} partitions`)
  }
  const moves: Move[] = []
  for (let p = 0; p < a.partitions; p++) {
    if (a.owners[p] !== b.owners[p]) moves.push({ partition: p, from: a.owners[p], to: b.owners[p] })
  }
  return moves
}

const make = (partitions: number, owners: string[], members: string[], version: number): Ring =>
  Object.freeze({ partitions, owners: Object.freeze(owners), version, members: Object.freeze(members) })

const compareIds = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0)

const compareEvents = (a: RingEvent, b: RingEvent): number =>
  a.seq - b.seq || compareIds(a.node, b.node) || compareIds(a.kind, b.kind)

/**
 * Claim rule: the joiner aims at `share` evenly spaced targets, Q/share (about S) apart, starting at
 * `partitionOf(joiner)` so that joiners start at different places. For each target in turn it takes
 * the nearest partition owned by a currently most loaded node, clockwise first on a tie. Its
 * partitions end up spread around the ring, about S apart, so a preference list of a few consecutive
 * partitions rarely meets it twice, and each old node gives up partitions from all around the ring.
 */
const claim = (ring: Ring, joiner: string): string[] => {
  const q = ring.partitions
  if (ring.members.length === 0) return new Array<string>(q).fill(joiner)
  const owners = [...ring.owners]
  const counts = partitionCounts(ring)
  const share = Math.floor(q / (ring.members.length + 1))
  const start = partitionOf(joiner, q)
  for (let taken = 0; taken < share; taken++) {
    const most = Math.max(...counts.values())
    const target = start + Math.floor((taken * q) / share)
    let best = -1
    for (let i = 0; best < 0 && i <= q >> 1; i++) {
      const after = (target + i) % q
      const before = (target - i + q) % q
      if (counts.get(owners[after]!) === most) best = after
      else if (counts.get(owners[before]!) === most) best = before
    }
    if (best < 0) throw new Error("ring owners and members disagree")
    counts.set(owners[best]!, most - 1)
    owners[best] = joiner
  }
  return owners
}

/**
 * The leaver's partitions, in order, each to a least loaded member; among several, the one whose
 * nearest partition is farthest from it (a member owning nothing first), then the first in order.
 */
const release = (ring: Ring, leaver: string, members: string[]): string[] => {
  const q = ring.partitions
  const owners = [...ring.owners]
  const counts = partitionCounts(ring)
  counts.delete(leaver)
  for (let p = 0; p < q; p++) {
    if (owners[p] !== leaver) continue
    const least = Math.min(...counts.values())
    const candidates = members.filter((m) => counts.get(m) === least)
    const pending = new Set(candidates)
    for (let d = 1; d <= q >> 1 && pending.size > 1; d++) {
      const near = new Set([owners[(p + d) % q]!, owners[(p - d + q) % q]!].filter((o) => pending.has(o)))
      if (near.size === pending.size) break
      for (const o of near) pending.delete(o)
    }
    const heir = candidates.find((m) => pending.has(m))!
    owners[p] = heir
    counts.set(heir, least + 1)
  }
  return owners
}

const walk = (ring: Ring, start: number, n: number): string[] => {
  const q = ring.partitions
  if (!Number.isInteger(start) || start < 0 || start >= q) {
    throw new RangeError(`partition must be an integer in 0..${q - 1}, got ${start}`)
  }
  const nodes: string[] = []
  for (let i = 0; i < q && nodes.length < n; i++) {
    const o = ring.owners[(start + i) % q]!
    if (!nodes.includes(o)) nodes.push(o)
  }
  for (const m of ring.members) {
    if (nodes.length >= n) break
    if (!nodes.includes(m)) nodes.push(m)
  }
  return nodes
}

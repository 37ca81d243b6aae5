/**
 * What gossip spreads: the cluster's fixed settings (N, Q), its members' addresses, and the
 * grow-only set of ring events (Ring.ts folds them into owners). Merging two states is a
 * union (events) and a per-member "higher incarnation wins" (addresses), so it is
 * commutative, associative and idempotent: any gossip order converges. Pure.
 */
import { fromEvents, type Ring, type RingEvent } from "../ring/Ring.ts"

/** How to reach a member. `incarnation` grows each time the node starts. */
export interface MemberInfo {
  readonly id: string
  readonly host: string
  /** Client HTTP port. */
  readonly port: number
  /** Internode port. */
  readonly clusterPort: number
  readonly incarnation: number
}

/** The gossiped state. */
export interface ClusterState {
  readonly n: number
  readonly partitions: number
  readonly members: ReadonlyArray<MemberInfo>
  readonly events: ReadonlyArray<RingEvent>
}

const eventKey = (e: RingEvent) => `${e.seq}/${e.node}/${e.kind}`
const byId = (a: { readonly id: string }, b: { readonly id: string }) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)

/** A new cluster of one member. */
export const founding = (self: MemberInfo, n: number, partitions: number): ClusterState => ({
  n,
  partitions,
  members: [self],
  events: [{ seq: 1, node: self.id, kind: "join" }]
})

/** The union of two states (they must share N and Q; the transport's hello refuses others). */
export const merge = (a: ClusterState, b: ClusterState): ClusterState => {
  const members = new Map(a.members.map((m) => [m.id, m]))
  for (const m of b.members) {
    const have = members.get(m.id)
    if (have === undefined || m.incarnation > have.incarnation) members.set(m.id, m)
  }
  const events = new Map(a.events.map((e) => [eventKey(e), e]))
  for (const e of b.events) events.set(eventKey(e), e)
  return {
    n: a.n,
    partitions: a.partitions,
    members: [...members.values()].sort(byId),
    events: [...events.values()].sort((x, y) => x.seq - y.seq || (eventKey(x) < eventKey(y) ? -1 : 1))
  }
}

/** Whether `b` adds anything to `a`. */
export const adds = (a: ClusterState, b: ClusterState): boolean => {
  const m = merge(a, b)
  return m.events.length !== a.events.length || m.members.some((x, i) => a.members[i]?.id !== x.id || a.members[i]?.incarnation !== x.incarnation)
}

/** `state` with `member` joined (a no-op for a current member, except to update its address). */
export const join = (state: ClusterState, member: MemberInfo): ClusterState => {
  const ring = ringOf(state)
  const withMember = merge(state, { ...state, members: [member], events: [] })
  if (ring.members.includes(member.id)) return withMember
  const seq = state.events.reduce((s, e) => Math.max(s, e.seq), 0) + 1
  return merge(withMember, { ...state, members: [], events: [{ seq, node: member.id, kind: "join" }] })
}

/** `state` with `member` leaving the ring. */
export const leave = (state: ClusterState, id: string): ClusterState => {
  const seq = state.events.reduce((s, e) => Math.max(s, e.seq), 0) + 1
  return merge(state, { ...state, members: [], events: [{ seq, node: id, kind: "leave" }] })
}

let cache: { events: ReadonlyArray<RingEvent>; partitions: number; ring: Ring } | undefined

/** The ring the events describe (memoized on the last events array). */
export const ringOf = (state: ClusterState): Ring => {
  if (cache?.events === state.events && cache.partitions === state.partitions) return cache.ring
  const ring = fromEvents(state.partitions, state.events)
  cache = { events: state.events, partitions: state.partitions, ring }
  return ring
}

/** Checks an untrusted value (from a peer or a file) is a ClusterState. */
export const isClusterState = (v: unknown): v is ClusterState => {
  const s = v as ClusterState
  return typeof s === "object" && s !== null && Number.isInteger(s.n) && Number.isInteger(s.partitions) &&
    Array.isArray(s.members) && s.members.every((m) => typeof m?.id === "string" && typeof m.host === "string" && Number.isInteger(m.port) && Number.isInteger(m.clusterPort) && Number.isInteger(m.incarnation)) &&
    Array.isArray(s.events) && s.events.every((e) => Number.isInteger(e?.seq) && typeof e.node === "string" && (e.kind === "join" || e.kind === "leave"))
}

/**
 * What gossip spreads: the cluster's fixed settings (N, Q), its members' addresses, the ring
 * as a versioned state, membership requests, and which transfers are done. Pure.
 *
 * One order of ring changes (Riak's claimant): nodes only *ask* for changes (a request:
 * join, leave, remove), and one member, the claimant (the lowest id among the ring's members
 * that is up), turns pending requests into the next ring version. A ring state names the
 * current owners (reads and acknowledgements use them) and the `next` owners; while they
 * differ the cluster is moving: every partition that gains a replica is transferred to it
 * (Transfer.ts), and only when every transfer of the version is done does the claimant make
 * `next` current, in a new version. Merging states keeps the higher ring version (a tie,
 * which two claimants could make during a partition, is broken by content, the same way
 * everywhere), unions the requests and the done marks, and keeps each member's highest
 * incarnation: commutative, associative, idempotent, so any gossip order converges.
 */
import { applyEvent, emptyRing, fromEvents, partitionCounts, preferenceList, type Ring, type RingEvent } from "../ring/Ring.ts"

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

/** A membership change a node asked for. `id` is unique per request. */
export interface Request {
  readonly id: string
  readonly kind: "join" | "leave" | "remove"
  readonly node: string
}

/** The ring at one version: current owners and, while moving, the next ones. */
export interface RingState {
  readonly version: number
  readonly members: ReadonlyArray<string>
  readonly owners: ReadonlyArray<string>
  readonly nextMembers: ReadonlyArray<string>
  readonly next: ReadonlyArray<string>
  /** Requests this or an earlier version carried out (never pending again). */
  readonly applied: ReadonlyArray<string>
  /** Members that left or were removed: their hints go to the current owners. */
  readonly gone: ReadonlyArray<string>
}

/** The gossiped state. */
export interface ClusterState {
  readonly n: number
  readonly partitions: number
  readonly members: ReadonlyArray<MemberInfo>
  readonly ring: RingState
  readonly requests: ReadonlyArray<Request>
  /** Transfers done, as `taskId`s (`<version>:<partition>:<receiver>`). */
  readonly done: ReadonlyArray<string>
  /** The highest ring version each member has adopted (a transfer's last pass waits for all). */
  readonly seen: Readonly<Record<string, number>>
}

const byId = (a: { readonly id: string }, b: { readonly id: string }) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)
const sorted = (xs: Iterable<string>) => [...new Set(xs)].sort()

/** The ring state with no members. */
export const emptyRingState = (q: number): RingState => {
  const r = emptyRing(q)
  return { version: 0, members: [], owners: r.owners, nextMembers: [], next: r.owners, applied: [], gone: [] }
}

/** A new cluster of one member. */
export const founding = (self: MemberInfo, n: number, partitions: number): ClusterState => {
  const ring = applyEvent(emptyRing(partitions), { seq: 1, node: self.id, kind: "join" })
  return {
    n,
    partitions,
    members: [self],
    ring: { version: 1, members: ring.members, owners: ring.owners, nextMembers: ring.members, next: ring.owners, applied: [], gone: [] },
    requests: [],
    done: [],
    seen: { [self.id]: 1 }
  }
}

/** A node that is not a member yet: it knows only itself. */
export const outsider = (self: MemberInfo, n: number, partitions: number): ClusterState => ({
  n, partitions, members: [self], ring: emptyRingState(partitions), requests: [], done: [], seen: {}
})

const ringKey = (r: RingState) => JSON.stringify([r.members, r.owners, r.nextMembers, r.next, r.applied, r.gone])

/** The union of two states (they must share N and Q; the transport's hello refuses others). */
export const merge = (a: ClusterState, b: ClusterState): ClusterState => {
  const members = new Map(a.members.map((m) => [m.id, m]))
  for (const m of b.members) {
    const have = members.get(m.id)
    if (have === undefined || m.incarnation > have.incarnation) members.set(m.id, m)
  }
  const ring = b.ring.version > a.ring.version || (b.ring.version === a.ring.version && ringKey(b.ring) > ringKey(a.ring)) ? b.ring : a.ring
  const requests = new Map(a.requests.map((r) => [r.id, r]))
  for (const r of b.requests) requests.set(r.id, r)
  const applied = new Set(ring.applied)
  const seen: Record<string, number> = { ...a.seen }
  for (const [id, v] of Object.entries(b.seen)) seen[id] = Math.max(seen[id] ?? 0, v)
  return {
    n: a.n,
    partitions: a.partitions,
    members: [...members.values()].sort(byId),
    ring,
    // Requests carried out are dropped; their ids stay in `applied`, so they never come back.
    requests: [...requests.values()].filter((r) => !applied.has(r.id)).sort(byId),
    // Only marks of the current version matter; older ones are dropped.
    done: sorted([...a.done, ...b.done].filter((d) => Number(d.split(":")[0]) === ring.version)),
    seen
  }
}

/** Whether `b` adds anything to `a`. */
export const adds = (a: ClusterState, b: ClusterState): boolean => JSON.stringify(merge(a, b)) !== JSON.stringify(a)

/** `state` with `member`'s address (a newer incarnation replaces an older one). */
export const withMember = (state: ClusterState, member: MemberInfo): ClusterState =>
  merge(state, { ...state, members: [member], requests: [], done: [], seen: {} })

/** `state` with a request added (a no-op if one of that kind is pending for the node). */
export const request = (state: ClusterState, r: Request): ClusterState => {
  if (state.requests.some((x) => x.kind === r.kind && x.node === r.node)) return state
  return merge(state, { ...state, members: [], requests: [r], done: [], seen: {} })
}

/** `state` with this node's adopted ring version recorded. */
export const sawVersion = (state: ClusterState, id: string): ClusterState =>
  (state.seen[id] ?? 0) >= state.ring.version ? state : { ...state, seen: { ...state.seen, [id]: state.ring.version } }

/** `state` with a transfer marked done. */
export const markDone = (state: ClusterState, taskId: string): ClusterState =>
  state.done.includes(taskId) ? state : merge(state, { ...state, members: [], requests: [], done: [taskId], seen: {} })

const asRing = (partitions: number, members: ReadonlyArray<string>, owners: ReadonlyArray<string>, version: number): Ring =>
  ({ partitions, owners, members, version })

/** The current ring: reads, acknowledgements and the preference lists of writes. */
export const currentRing = (state: ClusterState): Ring => asRing(state.partitions, state.ring.members, state.ring.owners, state.ring.version)

/** The ring being moved to (the current one when settled). */
export const nextRing = (state: ClusterState): Ring => asRing(state.partitions, state.ring.nextMembers, state.ring.next, state.ring.version)

/**
 * The replica sets a quorum of `partition` must be met in: its preference list in `current`
 * and, when the ring moves and the list changes, its list in `next` too (Cassandra's pending
 * ranges, counted separately as a quorum of their own). Reads need r in each, writes w in
 * each. A node on a moving version and one that already adopted the switch (which counts
 * `next` alone) then always share a quorum: every quorum of either includes one of `next`,
 * and before the switch every quorum includes one of `current`. `n` is the replication factor.
 */
export const quorumSets = (current: Ring, next: Ring, partition: number, n: number): ReadonlyArray<ReadonlyArray<string>> => {
  const now = preferenceList(current, partition, n)
  if (next === current) return [now]
  const then = preferenceList(next, partition, n)
  return then.length === now.length && then.every((x) => now.includes(x)) ? [now] : [now, then]
}

/** Whether the ring is settled: nothing moving, no request pending. */
export const settled = (state: ClusterState): boolean =>
  state.requests.length === 0 && state.ring.owners.every((o, p) => o === state.ring.next[p]) && sameMembers(state.ring.members, state.ring.nextMembers)

/** Whether a ring state's next owners and members are its current ones. */
export const sameRing = (r: RingState): boolean => r.owners.every((o, p) => o === r.next[p]) && sameMembers(r.members, r.nextMembers)

const sameMembers = (a: ReadonlyArray<string>, b: ReadonlyArray<string>) => a.length === b.length && a.every((x, i) => x === b[i])

/** One partition's records going to a node that becomes one of its replicas. */
export interface TransferTask {
  readonly id: string
  readonly partition: number
  readonly to: string
  /** Where the records come from: the replica it replaces, or every surviving replica. */
  readonly from: ReadonlyArray<string>
}

/**
 * The transfers of the current move: for each key partition, every node in its next
 * preference list and not in its current one receives the partition, from the node it
 * replaces there (so it holds every write that node acknowledged: R + W > N still holds
 * after the switch) or, if that node is gone, from every surviving replica.
 */
export const transferTasks = (state: ClusterState): TransferTask[] => {
  const cur = currentRing(state)
  const nxt = nextRing(state)
  if (cur.members.length === 0) return []
  const gone = new Set(state.ring.gone)
  const tasks: TransferTask[] = []
  for (let q = 0; q < state.partitions; q++) {
    const before = preferenceList(cur, q, state.n)
    const after = preferenceList(nxt, q, state.n)
    const gaining = after.filter((x) => !before.includes(x))
    const losing = before.filter((x) => !after.includes(x))
    gaining.forEach((to, i) => {
      const replaced = losing[i]
      const from = replaced !== undefined && !gone.has(replaced) ? [replaced] : before.filter((x) => !gone.has(x))
      tasks.push({ id: `${state.ring.version}:${q}:${to}`, partition: q, to, from })
    })
  }
  return tasks
}

/**
 * The claimant's step, or undefined when there is nothing to do: finish the move once every
 * transfer is done (next becomes current), or else turn the pending requests into a move.
 * Pure: `now` the state, `claimant` the node acting.
 */
export const claimantStep = (state: ClusterState, claimant: string): ClusterState | undefined => {
  const r = state.ring
  const moving = !r.owners.every((o, p) => o === r.next[p]) || !sameMembers(r.members, r.nextMembers)
  const pending = state.requests.filter((x) => !r.applied.includes(x.id))
  // A remove cannot wait for the move in progress: that move may be waiting for the very
  // node being removed (a transfer source that is gone). It re-plans the move instead.
  const removes = pending.filter((x) => x.kind === "remove" && r.nextMembers.includes(x.node))
  if (moving && removes.length === 0) {
    const done = new Set(state.done)
    if (!transferTasks(state).every((t) => done.has(t.id))) return undefined
    // Those who left with this move are gone now: their hints go to the new owners.
    const left = r.members.filter((m) => !r.nextMembers.includes(m))
    return adopt(state, { ...r, version: r.version + 1, members: r.nextMembers, owners: r.next, gone: sorted([...r.gone, ...left]) }, claimant)
  }
  const work = moving ? removes : pending
  if (work.length === 0) return undefined
  let ring: Ring = moving ? asRing(state.partitions, r.nextMembers, r.next, r.version) : asRing(state.partitions, r.members, r.owners, r.version)
  const gone = new Set(r.gone)
  const order = { remove: 0, leave: 1, join: 2 } as const
  for (const x of [...work].sort((a, b) => order[a.kind] - order[b.kind] || (a.node < b.node ? -1 : a.node > b.node ? 1 : 0))) {
    if (x.kind === "join") {
      gone.delete(x.node)
      ring = applyEvent(ring, { seq: 0, node: x.node, kind: "join" })
    } else if (ring.members.includes(x.node) && ring.members.length > 1) {
      // A removed node is gone at once (its data comes from the survivors); a leaving one
      // hands its partitions over itself and is gone once the move is done.
      if (x.kind === "remove") gone.add(x.node)
      ring = applyEvent(ring, { seq: 0, node: x.node, kind: "leave" })
    }
  }
  const next: RingState = {
    version: r.version + 1,
    members: r.members,
    owners: r.owners,
    nextMembers: ring.members,
    next: ring.owners,
    applied: [...r.applied, ...work.map((x) => x.id)].slice(-1000),
    gone: sorted(gone)
  }
  return adopt(state, next, claimant)
}

const adopt = (state: ClusterState, ring: RingState, by: string): ClusterState => {
  const s: ClusterState = { ...state, ring, requests: state.requests.filter((x) => !ring.applied.includes(x.id)), done: [] }
  return sawVersion(s, by)
}

/** Per member, how many partitions it owns now. */
export const ownedCounts = (state: ClusterState): Map<string, number> => partitionCounts(currentRing(state))

/** Checks an untrusted value (from a peer or a file) is a ClusterState. */
export const isClusterState = (v: unknown): v is ClusterState => {
  const s = v as ClusterState
  const strs = (x: unknown): x is string[] => Array.isArray(x) && x.every((y) => typeof y === "string")
  const r = s?.ring
  return typeof s === "object" && s !== null && Number.isInteger(s.n) && Number.isInteger(s.partitions) &&
    Array.isArray(s.members) && s.members.every((m) => typeof m?.id === "string" && typeof m.host === "string" && Number.isInteger(m.port) && Number.isInteger(m.clusterPort) && Number.isInteger(m.incarnation)) &&
    typeof r === "object" && r !== null && Number.isInteger(r.version) && strs(r.members) && strs(r.owners) && strs(r.nextMembers) && strs(r.next) && strs(r.applied) && strs(r.gone) &&
    (r.owners.length === 0 || r.owners.length === s.partitions) && (r.next.length === 0 || r.next.length === s.partitions) &&
    Array.isArray(s.requests) && s.requests.every((x) => typeof x?.id === "string" && typeof x.node === "string" && (x.kind === "join" || x.kind === "leave" || x.kind === "remove")) &&
    strs(s.done) && typeof s.seen === "object" && s.seen !== null && Object.values(s.seen).every((x) => Number.isInteger(x))
}

/** Longest host name a member may advertise (DNS allows 253). */
const MAX_HOST = 255
/** Most members, requests a state may name: far above any real cluster, so a state stays small. */
const MAX_MEMBERS = 1024
const MAX_ID_CHARS = 200
const port = (x: unknown) => Number.isInteger(x) && (x as number) >= 0 && (x as number) <= 65535
const count = (x: unknown) => Number.isSafeInteger(x) && (x as number) >= 0

/**
 * Why a member's address cannot be taken, or undefined: an id of `nodeId` (Dvv.NODE_ID), a
 * host without spaces or slashes, ports 0..65535 (0 on simulated networks), a non-negative
 * incarnation. Every member stored passes it, so a persisted cluster.json always loads again.
 */
export const memberProblem = (m: unknown, nodeId: RegExp): string | undefined => {
  const x = m as Partial<Record<keyof MemberInfo, unknown>> | null
  if (typeof x !== "object" || x === null) return "a member must be an object"
  if (typeof x.id !== "string" || !nodeId.test(x.id)) return `member id ${JSON.stringify(x.id)?.slice(0, 80)} is not a node id`
  if (typeof x.host !== "string" || x.host.length === 0 || x.host.length > MAX_HOST || /[\s/]/.test(x.host)) return `member ${x.id} has no valid host`
  if (!port(x.port) || !port(x.clusterPort)) return `member ${x.id} needs a port and a cluster port from 0 to 65535`
  if (!count(x.incarnation)) return `member ${x.id} needs a non-negative integer incarnation`
  return undefined
}

/**
 * Why a state from a peer must not be merged, or undefined. Beyond `isClusterState`: the same
 * N and Q as ours; every id a node id; every member well-formed (memberProblem); every ring
 * member, next member and joining node listed with an address; owners among the ring's
 * members; versions and counts non-negative safe integers; sizes bounded. A state refused
 * changes nothing: it is never merged.
 */
export const stateProblem = (v: unknown, ours: { readonly n: number; readonly partitions: number }, nodeId: RegExp): string | undefined => {
  if (!isClusterState(v)) return "not a cluster state"
  if (v.n !== ours.n || v.partitions !== ours.partitions) return `cluster settings differ: N=${v.n}, Q=${v.partitions}; ours are N=${ours.n}, Q=${ours.partitions}`
  if (v.members.length > MAX_MEMBERS || v.requests.length > MAX_MEMBERS) return `more than ${MAX_MEMBERS} members or requests`
  const listed = new Set<string>()
  for (const m of v.members) {
    const p = memberProblem(m, nodeId)
    if (p !== undefined) return p
    if (listed.has(m.id)) return `member ${m.id} is listed twice`
    listed.add(m.id)
  }
  const r = v.ring
  if (!count(r.version)) return "the ring version must be a non-negative integer"
  const ids = [...r.members, ...r.nextMembers, ...r.gone, ...r.owners.filter((o) => o !== ""), ...r.next.filter((o) => o !== ""), ...v.requests.map((x) => x.node), ...Object.keys(v.seen)]
  const bad = ids.find((id) => !nodeId.test(id))
  if (bad !== undefined) return `${JSON.stringify(bad.slice(0, 80))} is not a node id`
  const unlisted = [...r.members, ...r.nextMembers, ...v.requests.filter((x) => x.kind === "join").map((x) => x.node)].find((id) => !listed.has(id))
  if (unlisted !== undefined) return `ring member ${unlisted} has no address in the state`
  const current = new Set(r.members)
  const next = new Set(r.nextMembers)
  if (r.owners.some((o) => o !== "" && !current.has(o)) || r.next.some((o) => o !== "" && !next.has(o))) return "an owner is not a member of its ring"
  if (v.requests.some((x) => x.id.length > MAX_ID_CHARS) || r.applied.some((a) => a.length > MAX_ID_CHARS)) return "a request id is too long"
  if (!Object.values(v.seen).every(count)) return "seen versions must be non-negative integers"
  return undefined
}

/** A state persisted by the first format (a grow-only set of ring events), upgraded. */
export const fromLegacy = (v: unknown): ClusterState | undefined => {
  const s = v as { n?: unknown; partitions?: unknown; members?: unknown; events?: unknown }
  if (typeof s !== "object" || s === null || !Number.isInteger(s.n) || !Number.isInteger(s.partitions) || !Array.isArray(s.events) || !Array.isArray(s.members)) return undefined
  const events = s.events as RingEvent[]
  if (!events.every((e) => Number.isInteger(e?.seq) && typeof e.node === "string" && (e.kind === "join" || e.kind === "leave"))) return undefined
  const ring = fromEvents(s.partitions as number, events)
  const candidate: ClusterState = {
    n: s.n as number,
    partitions: s.partitions as number,
    members: s.members as MemberInfo[],
    ring: { version: ring.version, members: ring.members, owners: ring.owners, nextMembers: ring.members, next: ring.owners, applied: [], gone: [] },
    requests: [],
    done: [],
    seen: {}
  }
  return isClusterState(candidate) ? candidate : undefined
}

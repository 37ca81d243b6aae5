/**
 * Who is in the cluster and who is alive. Gossip: every second this node exchanges its
 * ClusterState with one random member (push-pull), so membership and ring changes spread in
 * O(log S) rounds. Failure detection: every second it pings every member; replies (and
 * pings received) are heartbeats for a phi accrual detector (FailureDetector.ts). A new node
 * asks a seed (found through its client address) to add a join request; the claimant, the
 * lowest-id ring member that is up, turns requests into ring versions (ClusterState.ts), one
 * move at a time, and finishes a move once its transfers are done. The state is kept in
 * <data>/cluster.json so a restarted node knows the ring before anyone answers.
 */
import * as path from "node:path"
import { Clock, Context, Effect, Layer, Random, Schedule } from "effect"
import { writeFileDurable, type FilesApi } from "../../engine/Files.ts"
import { makeDirDurable } from "../../engine/Log.ts"
import type { ClusterView } from "../coordinator/Coordinator.ts"
import type { Ring } from "../ring/Ring.ts"
import { HostileMessage, Transport, type Peer } from "../transport/Transport.ts"
import * as Dvv from "../versions/Dvv.ts"
import * as State from "./ClusterState.ts"
import { FailureDetector, type NodeStatus } from "./FailureDetector.ts"

/** Membership settings. */
export interface MembershipConfig {
  readonly self: Omit<State.MemberInfo, "incarnation">
  readonly n: number
  readonly partitions: number
  readonly dataDir: string
  /** Client addresses of members to join through; empty: found a new cluster. */
  readonly seeds: ReadonlyArray<{ readonly host: string; readonly port: number }>
  /** How seeds' client APIs are asked: "https" when the cluster's nodes serve HTTPS (--tls-cert). */
  readonly seedScheme?: "http" | "https"
  /** Seeds given by their internode address, skipping the client API (simulated clusters). */
  readonly seedPeers?: ReadonlyArray<Peer>
  readonly files: FilesApi
  readonly heartbeatMs?: number
  readonly gossipMs?: number
  /** How long start-up keeps trying the seeds before going on (and retrying in the background). */
  readonly joinWaitMs?: number
}

/** Internode messages this service answers. */
export type MembershipMessage =
  | { readonly t: "ping" }
  | { readonly t: "gossip"; readonly state: State.ClusterState }
  | { readonly t: "join"; readonly member: State.MemberInfo; readonly request?: string }

/** A node could not join: its seeds refused it (different N or Q) or none answered. */
export class JoinRefused extends Error {
  readonly code = "join_refused"
}

/** The membership service. */
export class Membership extends Context.Service<Membership, {
  readonly self: State.MemberInfo
  readonly state: () => State.ClusterState
  /** The current ring: reads, acknowledgements, write preference lists. */
  readonly ring: () => Ring
  /** The ring being moved to (the current one when settled). */
  readonly nextRing: () => Ring
  /** Whether the ring is moving (next owners differ from the current ones). */
  readonly moving: () => boolean
  /** Per other member, the failure detector's phi now (for /metrics). */
  readonly phis: () => ReadonlyMap<string, number>
  /** Asks for a membership change (gossiped; the claimant carries it out). */
  readonly requestChange: (kind: "leave" | "remove", node: string) => Effect.Effect<void>
  /** Records a transfer of the current move as done. */
  readonly markDone: (taskId: string) => void
  /** Calls `f` after every change of the ring version this node adopts. */
  readonly onRing: (f: (state: State.ClusterState) => void) => void
  readonly status: (id: string) => NodeStatus
  readonly peer: (id: string) => Peer | undefined
  readonly view: () => ClusterView
  /** Whether this node is a ring member (until then it acknowledges nothing). */
  readonly joined: () => boolean
  /** Handles a membership message from another node. */
  readonly handle: (from: string, msg: MembershipMessage) => Effect.Effect<unknown, HostileMessage>
  /** Calls `f` with a node's id each time it is seen coming back up. */
  readonly onUp: (f: (id: string) => void) => void
}>()("tally/membership/Membership") {
  static readonly layer = (config: MembershipConfig) => Layer.effect(Membership, make(config))
}

/** Whether a message is for Membership. */
export const isMembershipMessage = (m: unknown): m is MembershipMessage => {
  const t = (m as { t?: unknown } | null)?.t
  return t === "ping" || t === "gossip" || t === "join"
}

const STATE_FILE = "cluster.json"

const loadState = (config: MembershipConfig): State.ClusterState | undefined => {
  const file = path.join(config.dataDir, STATE_FILE)
  if (!config.files.exists(file)) return undefined
  const raw: unknown = JSON.parse(config.files.readFile(file).toString("utf8"))
  const parsed = State.isClusterState(raw) ? raw : State.fromLegacy(raw)
  if (parsed === undefined) throw new Error(`${file} is not a cluster state; move it away to rejoin from the seeds`)
  if (parsed.n !== config.n || parsed.partitions !== config.partitions) {
    throw new JoinRefused(`this node's data belongs to a cluster with N=${parsed.n} and ${parsed.partitions} partitions, but it was started with N=${config.n} and ${config.partitions}; these are fixed when a cluster is created`)
  }
  return parsed
}

/** Builds the service and starts its heartbeat, gossip and join loops in the layer's scope. */
export const make = Effect.fnUntraced(function*(config: MembershipConfig) {
  const transport = yield* Transport
  const heartbeatMs = config.heartbeatMs ?? 1000
  const gossipMs = config.gossipMs ?? 1000
  // Durable (the parent synced): this may be the first to make the data directory, and a
  // directory whose entry a power loss can drop takes every file in it along, acknowledged
  // writes included; the engine's own makeDirDurable finds it there and syncs nothing.
  makeDirDurable(config.files, config.dataDir)
  const stored = loadState(config)
  /** Why a peer's state must not be merged (ClusterState.stateProblem), or undefined. */
  const stateProblem = (v: unknown) => State.stateProblem(v, { n: config.n, partitions: config.partitions }, Dvv.NODE_ID)
  const incarnation = (stored?.members.find((m) => m.id === config.self.id)?.incarnation ?? 0) + 1
  const self: State.MemberInfo = { ...config.self, incarnation }
  const hasSeeds = config.seeds.length > 0 || (config.seedPeers ?? []).length > 0
  let state = stored === undefined
    ? (hasSeeds ? State.outsider(self, config.n, config.partitions) : State.founding(self, config.n, config.partitions))
    : State.withMember(stored, self)
  // One clock for heartbeats and verdicts: the Effect Clock, so a TestClock drives both.
  const clock = yield* Clock.Clock
  const nowMs = () => clock.currentTimeMillisUnsafe()
  const detector = new FailureDetector()
  const upListeners: Array<(id: string) => void> = []
  const lastStatus = new Map<string, NodeStatus>()

  const ringListeners: Array<(s: State.ClusterState) => void> = []
  const persist = () => writeFileDurable(config.files, path.join(config.dataDir, STATE_FILE), Buffer.from(JSON.stringify(state)))
  /** Adopts `next` as this node's state: records the ring version seen, persists, tells listeners. */
  const adopt = (next: State.ClusterState) => {
    const before = state.ring.version
    const known = new Set(state.members.map((m) => m.id))
    state = State.sawVersion(next, self.id)
    for (const m of state.members) if (!known.has(m.id)) detector.heartbeat(m.id, nowMs())
    persist()
    if (state.ring.version !== before) for (const f of ringListeners) f(state)
  }
  const absorb = (other: State.ClusterState) => {
    if (other.n !== state.n || other.partitions !== state.partitions) return
    if (!State.adds(state, other)) return
    adopt(State.merge(state, other))
  }
  adopt(state)

  const now = () => Effect.sync(nowMs)
  const peerOf = (m: State.MemberInfo): Peer => ({ id: m.id, host: m.host, port: m.clusterPort })
  /** Nodes to ping and gossip with: ring members, joiners, and nodes asking to join; not the gone. */
  const others = () => {
    const r = state.ring
    const gone = new Set(r.gone.filter((g) => !r.nextMembers.includes(g)))
    return state.members.filter((m) => m.id !== self.id && !gone.has(m.id))
  }

  const status = (id: string): NodeStatus => {
    if (id === self.id) return "up"
    return detector.status(id, nowMs())
  }

  const noteStatus = (id: string) => {
    const s = status(id)
    const before = lastStatus.get(id)
    lastStatus.set(id, s)
    if (s === "up" && before !== undefined && before !== "up") for (const f of upListeners) f(id)
  }

  const heartbeatOne = (m: State.MemberInfo) =>
    transport.request(peerOf(m), { t: "ping" }, heartbeatMs).pipe(
      Effect.flatMap(() => now()),
      Effect.map((t) => detector.heartbeat(m.id, t)),
      Effect.ignore,
      Effect.ensuring(Effect.sync(() => noteStatus(m.id)))
    )

  const gossipOnce = Effect.suspend(() => {
    const candidates = others()
    if (candidates.length === 0) return Effect.void
    return Random.nextIntBetween(0, candidates.length, { halfOpen: true }).pipe(Effect.flatMap((i) => transport.request(peerOf(candidates[i]!), { t: "gossip", state }, heartbeatMs * 2).pipe(
      Effect.map((reply) => {
        const s = (reply as { state?: unknown } | null)?.state
        if (stateProblem(s) === undefined) absorb(s as State.ClusterState)
      }),
      Effect.ignore
    )))
  })

  /** A loop's step that fails or dies is logged and the loop goes on: membership must not stop silently. */
  const survive = (what: string) => <A, E, R>(step: Effect.Effect<A, E, R>) =>
    step.pipe(Effect.asVoid, Effect.catchCause((cause) => Effect.logError(`membership ${what} step failed: ${String(cause)}`)))

  /** The internode address of a seed: asked of its client API, or given (simulated clusters). */
  const seedPeers: ReadonlyArray<{ readonly name: string; readonly peer: Effect.Effect<Peer | undefined, unknown> }> = [
    ...config.seeds.map((seed) => ({
      name: `${seed.host}:${seed.port}`,
      peer: Effect.tryPromise({
        try: async (signal) => {
          const res = await fetch(`${config.seedScheme ?? "http"}://${seed.host}:${seed.port}/health`, { signal })
          return (await res.json()) as { node?: string; cluster?: { host?: string; port?: number } }
        },
        catch: (e) => e
      }).pipe(
        Effect.flatMap((h) => {
          if (typeof h.node !== "string" || typeof h.cluster?.host !== "string" || typeof h.cluster.port !== "number") {
            return Effect.fail(new Error(`seed ${seed.host}:${seed.port} is not a Tally node`))
          }
          return Effect.succeed(h.node === self.id ? undefined : { id: h.node, host: h.cluster.host, port: h.cluster.port })
        })
      )
    })),
    ...(config.seedPeers ?? []).map((peer) => ({ name: peer.id, peer: Effect.succeed(peer.id === self.id ? undefined : peer) }))
  ]
  const joinRequest = `join:${self.id}:${incarnation}:${(yield* Random.nextInt).toString(36)}`

  /** One attempt at joining through each seed; true once a seed accepted us. */
  const joinOnce = Effect.suspend(() =>
    Effect.forEach(seedPeers, (seed) =>
      seed.peer.pipe(
        Effect.flatMap((peer) => {
          if (peer === undefined) return Effect.succeed(false)
          return transport.request(peer, { t: "join", member: self, request: joinRequest }, 5000).pipe(
            Effect.map((reply) => {
              const s = (reply as { state?: unknown } | null)?.state
              if (stateProblem(s) !== undefined) return false
              absorb(s as State.ClusterState)
              return true
            })
          )
        }),
        Effect.catch((e: unknown) => {
          if ((e as { reason?: string }).reason === "refused") return Effect.fail(new JoinRefused(`seed ${seed.name} refused this node: ${(e as Error).message}`))
          return Effect.logWarning(`cannot reach seed ${seed.name} yet: ${(e as Error).message ?? e}`).pipe(Effect.as(false))
        })
      )
    ).pipe(Effect.map((oks) => oks.some(Boolean)))
  )

  // The rings, built once per state (the request path asks for them on every request).
  let ringsOf: { state: State.ClusterState; current: Ring; next: Ring } | undefined
  const rings = () => {
    if (ringsOf?.state !== state) ringsOf = { state, current: State.currentRing(state), next: State.nextRing(state) }
    return ringsOf
  }
  const currentRing = () => rings().current
  const nextRing = () => rings().next
  let movingOf: { state: State.ClusterState | undefined; moving: boolean } = { state: undefined, moving: false }

  /** A member of the ring, or of the one being moved to (a joiner coordinates at once). */
  const joined = () => state.ring.members.includes(self.id) || state.ring.nextMembers.includes(self.id)

  if (!joined() && seedPeers.length > 0) {
    // Wait a while for a seed (a cluster's nodes often start together) and for the claimant
    // to take the request into a ring version, then go on trying in the background.
    const deadline = nowMs() + (config.joinWaitMs ?? 15_000)
    // Asked again until the answer shows us in the ring: the seed's reply carries its state,
    // and this node serves no gossip until it has started.
    while (!joined() && nowMs() < deadline) {
      yield* joinOnce
      if (!joined()) yield* Effect.sleep("250 millis")
    }
    if (!joined()) {
      yield* Effect.logWarning("no seed answered; this node will keep trying to join in the background")
      yield* joinOnce.pipe(
        Effect.flatMap((done) => (done || joined() ? Effect.fail("joined" as const) : Effect.void)),
        Effect.catch((e) => (e === "joined" ? Effect.fail(e) : Effect.logError(String(e)))),
        Effect.repeat(Schedule.spaced("2 seconds")),
        Effect.ignore,
        Effect.forkScoped
      )
    }
  }

  // Optimistic start: a known member counts as up until the detector has heard otherwise, so a
  // restarted node routes normally at once; requests to a dead one fail and fall back anyway.
  const t0 = nowMs()
  for (const m of others()) detector.heartbeat(m.id, t0)
  yield* Effect.suspend(() => Effect.forEach(others(), heartbeatOne, { concurrency: "unbounded", discard: true })).pipe(
    survive("heartbeat"),
    Effect.repeat(Schedule.spaced(heartbeatMs)),
    Effect.forkScoped
  )
  yield* gossipOnce.pipe(survive("gossip"), Effect.repeat(Schedule.spaced(gossipMs)), Effect.forkScoped)

  /** The claimant: the lowest-id member of the current ring that this node sees up. */
  const claimant = () => state.ring.members.find((m) => status(m) === "up")
  const claimantTick = Effect.sync(() => {
    if (claimant() !== self.id) return
    const next = State.claimantStep(state, self.id)
    if (next !== undefined) adopt(next)
  })
  yield* claimantTick.pipe(survive("claimant"), Effect.repeat(Schedule.spaced(Math.max(100, Math.floor(gossipMs / 2)))), Effect.forkScoped)

  /** Why a message must be refused before it touches any state, or undefined. */
  const messageProblem = (from: string, msg: MembershipMessage): string | undefined => {
    switch (msg.t) {
      case "ping":
        return undefined
      case "gossip":
        return stateProblem(msg.state)
      case "join": {
        const p = State.memberProblem(msg.member, Dvv.NODE_ID)
        if (p !== undefined) return p
        if (msg.member.id !== from) return `node ${from} asked to join as ${msg.member.id}: a node joins only as itself`
        if (msg.request !== undefined && (typeof msg.request !== "string" || msg.request.length > 200)) return "a join request id must be a string of at most 200 characters"
        return undefined
      }
    }
  }

  const handle = (from: string, msg: MembershipMessage): Effect.Effect<unknown, HostileMessage> =>
    Effect.gen(function*() {
      const problem = messageProblem(from, msg)
      if (problem !== undefined) return yield* new HostileMessage({ message: `${msg.t} from ${from} refused, nothing changed: ${problem}` })
      const t = yield* now()
      // Only members get failure-detector state (checked once the message is taken, so a
      // gossip that introduces its sender counts): a stranger's id must not grow the table.
      const beat = () => {
        if (!state.members.some((m) => m.id === from)) return
        detector.heartbeat(from, t)
        noteStatus(from)
      }
      switch (msg.t) {
        case "ping":
          beat()
          return { t: "pong" }
        case "gossip":
          absorb(msg.state)
          beat()
          return { t: "gossip", state }
        case "join": {
          const m = msg.member
          let next = State.withMember(state, m)
          const member = next.ring.members.includes(m.id) || next.ring.nextMembers.includes(m.id)
          if (!member) next = State.request(next, { id: typeof msg.request === "string" ? msg.request : `join:${m.id}:${m.incarnation}`, kind: "join", node: m.id })
          adopt(next)
          beat()
          if (!member) yield* Effect.logInfo(`node ${m.id} asked to join through this node`)
          return { t: "state", state }
        }
      }
    })

  return Membership.of({
    self,
    state: () => state,
    ring: () => currentRing(),
    nextRing: () => nextRing(),
    phis: () => new Map(others().map((m) => [m.id, detector.phi(m.id, nowMs())])),
    moving: () => {
      if (movingOf.state !== state) movingOf = { state, moving: !State.sameRing(state.ring) }
      return movingOf.moving
    },
    requestChange: (kind, node) =>
      Random.nextInt.pipe(Effect.map((r) => adopt(State.request(state, { id: `${kind}:${node}:${r.toString(36)}`, kind, node })))),
    markDone: (taskId) => {
      if (!state.done.includes(taskId)) adopt(State.markDone(state, taskId))
    },
    onRing: (f) => void ringListeners.push(f),
    status,
    peer: (id) => {
      const m = state.members.find((x) => x.id === id)
      return m === undefined ? undefined : peerOf(m)
    },
    view: () => {
      const r = state.ring
      const counts = State.ownedCounts(state)
      const listed = state.members.filter((m) => r.members.includes(m.id) || r.nextMembers.includes(m.id) || state.requests.some((x) => x.node === m.id && x.kind === "join"))
      return {
        n: state.n,
        partitions: state.partitions,
        settled: State.settled(state),
        ringVersion: r.version,
        nodes: listed.map((m) => ({
          id: m.id,
          address: `${m.host}:${m.port}`,
          status: !r.members.includes(m.id) ? ("joining" as const) : !r.nextMembers.includes(m.id) ? ("leaving" as const) : status(m.id),
          partitions: counts.get(m.id) ?? 0
        }))
      }
    },
    handle,
    joined,
    onUp: (f) => void upListeners.push(f)
  })
})

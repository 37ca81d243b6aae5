/**
 * Who is in the cluster and who is alive. Gossip: every second this node exchanges its
 * ClusterState with one random member (push-pull), so membership and ring events spread in
 * O(log S) rounds. Failure detection: every second it pings every member; replies (and
 * pings received) are heartbeats for a phi accrual detector (FailureDetector.ts). A new node
 * joins through a seed's client address. The state is kept in <data>/cluster.json so a
 * restarted node knows the ring before anyone answers.
 */
import * as path from "node:path"
import { Clock, Context, Effect, Layer, Schedule } from "effect"
import { writeFileDurable, type FilesApi } from "../../engine/Files.ts"
import type { ClusterView } from "../coordinator/Coordinator.ts"
import { partitionCounts, type Ring } from "../ring/Ring.ts"
import { Transport, type Peer } from "../transport/Transport.ts"
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
  | { readonly t: "join"; readonly member: State.MemberInfo }

/** A node could not join: its seeds refused it (different N or Q) or none answered. */
export class JoinRefused extends Error {
  readonly code = "join_refused"
}

/** The membership service. */
export class Membership extends Context.Service<Membership, {
  readonly self: State.MemberInfo
  readonly state: () => State.ClusterState
  readonly ring: () => Ring
  readonly status: (id: string) => NodeStatus
  readonly peer: (id: string) => Peer | undefined
  readonly view: () => ClusterView
  /** Whether this node is a ring member (until then it acknowledges nothing). */
  readonly joined: () => boolean
  /** Handles a membership message from another node. */
  readonly handle: (from: string, msg: MembershipMessage) => Effect.Effect<unknown>
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
  const parsed: unknown = JSON.parse(config.files.readFile(file).toString("utf8"))
  if (!State.isClusterState(parsed)) throw new Error(`${file} is not a cluster state; move it away to rejoin from the seeds`)
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
  config.files.mkdirp(config.dataDir)
  const stored = loadState(config)
  const incarnation = (stored?.members.find((m) => m.id === config.self.id)?.incarnation ?? 0) + 1
  const self: State.MemberInfo = { ...config.self, incarnation }
  let state = stored === undefined
    ? (config.seeds.length === 0 && (config.seedPeers ?? []).length === 0 ? State.founding(self, config.n, config.partitions) : { n: config.n, partitions: config.partitions, members: [self], events: [] })
    : State.join(stored, self)
  // One clock for heartbeats and verdicts: the Effect Clock, so a TestClock drives both.
  const clock = yield* Clock.Clock
  const nowMs = () => clock.currentTimeMillisUnsafe()
  const detector = new FailureDetector()
  const upListeners: Array<(id: string) => void> = []
  const lastStatus = new Map<string, NodeStatus>()

  const persist = () => writeFileDurable(config.files, path.join(config.dataDir, STATE_FILE), Buffer.from(JSON.stringify(state)))
  const absorb = (other: State.ClusterState) => {
    if (other.n !== state.n || other.partitions !== state.partitions) return
    if (!State.adds(state, other)) return
    const known = new Set(state.members.map((m) => m.id))
    state = State.merge(state, other)
    for (const m of state.members) if (!known.has(m.id)) detector.heartbeat(m.id, nowMs())
    persist()
  }
  persist()

  const now = () => Effect.sync(nowMs)
  const peerOf = (m: State.MemberInfo): Peer => ({ id: m.id, host: m.host, port: m.clusterPort })
  const others = () => state.members.filter((m) => m.id !== self.id)

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
    const m = candidates[Math.floor(Math.random() * candidates.length)]!
    return transport.request(peerOf(m), { t: "gossip", state }, heartbeatMs * 2).pipe(
      Effect.map((reply) => {
        const s = (reply as { state?: unknown } | null)?.state
        if (State.isClusterState(s)) absorb(s)
      }),
      Effect.ignore
    )
  })

  /** The internode address of a seed: asked of its client API, or given (simulated clusters). */
  const seedPeers: ReadonlyArray<{ readonly name: string; readonly peer: Effect.Effect<Peer | undefined, unknown> }> = [
    ...config.seeds.map((seed) => ({
      name: `${seed.host}:${seed.port}`,
      peer: Effect.tryPromise({
        try: async (signal) => {
          const res = await fetch(`http://${seed.host}:${seed.port}/health`, { signal })
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

  /** One attempt at joining through each seed; true once a seed accepted us. */
  const joinOnce = Effect.suspend(() =>
    Effect.forEach(seedPeers, (seed) =>
      seed.peer.pipe(
        Effect.flatMap((peer) => {
          if (peer === undefined) return Effect.succeed(false)
          return transport.request(peer, { t: "join", member: self }, 5000).pipe(
            Effect.map((reply) => {
              const s = (reply as { state?: unknown } | null)?.state
              if (!State.isClusterState(s)) return false
              absorb(s)
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

  const joined = () => State.ringOf(state).members.includes(self.id)

  if (!joined() && seedPeers.length > 0) {
    // Wait a while for a seed (a cluster's nodes often start together), then go on trying.
    const deadline = Date.now() + (config.joinWaitMs ?? 15_000)
    let ok = false
    while (!ok && Date.now() < deadline) {
      ok = yield* joinOnce
      if (!ok) yield* Effect.sleep("500 millis")
    }
    if (!ok) {
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
    Effect.repeat(Schedule.spaced(heartbeatMs)),
    Effect.forkScoped
  )
  yield* gossipOnce.pipe(Effect.repeat(Schedule.spaced(gossipMs)), Effect.forkScoped)

  const handle = (from: string, msg: MembershipMessage): Effect.Effect<unknown> =>
    Effect.gen(function*() {
      const t = yield* now()
      detector.heartbeat(from, t)
      noteStatus(from)
      switch (msg.t) {
        case "ping":
          return { t: "pong" }
        case "gossip":
          if (State.isClusterState(msg.state)) absorb(msg.state)
          return { t: "gossip", state }
        case "join": {
          const m = msg.member
          if (typeof m?.id === "string" && typeof m.host === "string") {
            state = State.join(state, m)
            persist()
            yield* Effect.logInfo(`node ${m.id} joined through this node`)
          }
          return { t: "state", state }
        }
      }
    })

  return Membership.of({
    self,
    state: () => state,
    ring: () => State.ringOf(state),
    status,
    peer: (id) => {
      const m = state.members.find((x) => x.id === id)
      return m === undefined ? undefined : peerOf(m)
    },
    view: () => {
      const ring = State.ringOf(state)
      const counts = partitionCounts(ring)
      return {
        n: state.n,
        partitions: state.partitions,
        nodes: state.members.map((m) => ({
          id: m.id,
          address: `${m.host}:${m.port}`,
          status: ring.members.includes(m.id) ? status(m.id) : ("leaving" as const),
          partitions: counts.get(m.id) ?? 0
        }))
      }
    },
    handle,
    joined,
    onUp: (f) => void upListeners.push(f)
  })
})

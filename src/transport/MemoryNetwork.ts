/**
 * A simulated network for running a whole cluster in one process, and the transport layer
 * over it. Messages are encoded as real frames (so payloads are copied and limited exactly as
 * on TCP) and delivered after the link's latency, unless lost or cut by a partition.
 *
 * Time is Effect's Clock: under TestClock nothing moves until the test adjusts the clock, so
 * latency, timeouts and partitions are deterministic; loss draws from a seeded generator.
 * Equal latencies keep a link's order; jitter may reorder messages (requests are independent).
 * A node that is not on the network fails requests fast with `unreachable`, like a refused
 * TCP connection; a partitioned, lossy or dropped link is silence and requests time out.
 * For the simulator: one-way cuts, duplicated messages, paused nodes (what they send and what
 * is sent to them waits, in order, until they resume, as with SIGSTOP), a node pulled off the
 * network at once (a crash: it sends nothing more), and a hook that sees every delivery.
 */
import { Effect, FiberSet } from "effect"
import { DEFAULT_MAX_FRAME_BYTES, HEADER_BYTES, MalformedFrame, bodyBytes, decodeBody, encodeFrame, hello, helloProblem, type ClusterSettings, type Frame } from "./Frame.ts"
import { HandlerSlot, handleIncoming, type Incoming } from "./Reply.ts"
import { asEffect, asPromise, failed, succeeded, type Outcome } from "./Outcome.ts"
import type { Peer, TransportApi, TransportStats } from "./Transport.ts"
import { transportError, type TransportError } from "./TransportError.ts"

/** How one direction of a link behaves. */
export interface LinkConditions {
  /** One-way delay of every message (default 0). */
  readonly latencyMs?: number
  /** Extra delay, uniform in [0, jitterMs) (default 0). */
  readonly jitterMs?: number
  /** Probability that a message is lost, 0..1 (default 0). */
  readonly loss?: number
  /** Probability that a message is delivered twice, 0..1 (default 0); the copy takes its own delay. */
  readonly duplicate?: number
}

/** Settings of a node on a MemoryNetwork. */
export interface MemoryTransportConfig {
  readonly nodeId: string
  readonly cluster: ClusterSettings
  readonly maxFrameBytes?: number
  /** Requests to one peer not yet answered, at most (default 1024); more wait. */
  readonly maxInFlight?: number
}

/** A node as the network sees it; used by the memory transport only. */
interface Endpoint {
  readonly id: string
  readonly cluster: ClusterSettings
  readonly deliver: (from: string, frame: Frame) => void
  readonly peerLeft: (id: string) => void
}

const linkKey = (from: string, to: string) => `${from}\u0000${to}`

/** The wires between in-process nodes: latency, loss and partitions, per directed link. */
export class MemoryNetwork {
  private readonly defaults: LinkConditions
  private readonly links = new Map<string, LinkConditions>()
  private readonly cuts = new Set<string>()
  private readonly endpoints = new Map<string, Endpoint>()
  private readonly paused = new Map<string, Array<() => void>>()
  private seed: number
  /** Told of every message delivered (the simulator's event log); `kind` is its payload's `t`. */
  onDeliver: ((from: string, to: string, kind: string) => void) | undefined

  constructor(options: { readonly defaults?: LinkConditions; readonly seed?: number } = {}) {
    this.defaults = options.defaults ?? {}
    this.seed = (options.seed ?? 1) >>> 0
  }

  /** Sets the conditions of the links a→b and b→a (replacing the defaults for them). */
  setLink(a: string, b: string, conditions: LinkConditions): void {
    this.links.set(linkKey(a, b), conditions)
    this.links.set(linkKey(b, a), conditions)
  }

  /** Cuts every link between the nodes of `a` and those of `b`, both ways, until `heal`. */
  partition(a: string | ReadonlyArray<string>, b: string | ReadonlyArray<string>): void {
    const as = typeof a === "string" ? [a] : a
    const bs = typeof b === "string" ? [b] : b
    for (const x of as) {
      for (const y of bs) {
        this.cuts.add(linkKey(x, y))
        this.cuts.add(linkKey(y, x))
      }
    }
  }

  /** Cuts the links from the nodes of `from` to those of `to`, one way only, until `heal`. */
  cutOneWay(from: string | ReadonlyArray<string>, to: string | ReadonlyArray<string>): void {
    for (const x of typeof from === "string" ? [from] : from) for (const y of typeof to === "string" ? [to] : to) this.cuts.add(linkKey(x, y))
  }

  /** Removes every partition (link conditions stay). */
  heal(): void {
    this.cuts.clear()
  }

  /** Sets the conditions of every link back to the defaults. */
  clearLinks(): void {
    this.links.clear()
  }

  /** Pauses `id`: messages from and to it wait (in order) until `resume`; its requests time out meanwhile. */
  pause(id: string): void {
    if (!this.paused.has(id)) this.paused.set(id, [])
  }

  /** Resumes a paused node: the messages that waited go on, oldest first. */
  resume(id: string): void {
    const held = this.paused.get(id)
    this.paused.delete(id)
    for (const f of held ?? []) f()
  }

  /** True when `id` is paused. */
  isPaused(id: string): boolean {
    return this.paused.has(id)
  }

  /**
   * Pulls `id` off the network at once, as a crash does: messages in flight to it are lost,
   * it sends nothing more, and the others' requests to it fail. Its transport may still be
   * shut down later, which then changes nothing.
   */
  disconnect(id: string): void {
    const e = this.endpoints.get(id)
    if (e !== undefined) this.detach(e)
    this.paused.delete(id)
  }

  /** @internal Delivers now, or when both ends are no longer paused. */
  deliverWhenAwake(from: string, to: string, deliver: () => void): void {
    const held = this.paused.get(to) ?? this.paused.get(from)
    if (held === undefined) return deliver()
    held.push(() => this.deliverWhenAwake(from, to, deliver))
  }

  /** @internal Whether a second copy of a message goes too. */
  duplicated(from: string, to: string): boolean {
    const c = this.links.get(linkKey(from, to)) ?? this.defaults
    return (c.duplicate ?? 0) > 0 && this.random() < c.duplicate!
  }

  /** True when messages from `from` to `to` are cut. */
  isPartitioned(from: string, to: string): boolean {
    return this.cuts.has(linkKey(from, to))
  }

  /** Ids of the nodes on the network. */
  members(): ReadonlyArray<string> {
    return [...this.endpoints.keys()]
  }

  /** @internal Joins a node; its id must be free. */
  attach(endpoint: Endpoint): void {
    if (this.endpoints.has(endpoint.id)) throw new Error(`node ${endpoint.id} is already on this MemoryNetwork`)
    this.endpoints.set(endpoint.id, endpoint)
  }

  /** @internal Removes a node and tells the others, whose requests to it fail at once. */
  detach(endpoint: Endpoint): void {
    if (this.endpoints.get(endpoint.id) !== endpoint) return
    this.endpoints.delete(endpoint.id)
    for (const other of this.endpoints.values()) other.peerLeft(endpoint.id)
  }

  /** @internal */
  endpoint(id: string): Endpoint | undefined {
    return this.endpoints.get(id)
  }

  /** @internal The delay of a message from `from` to `to`, or undefined when it is cut or lost. */
  route(from: string, to: string): number | undefined {
    if (this.isPartitioned(from, to)) return undefined
    const c = this.links.get(linkKey(from, to)) ?? this.defaults
    if ((c.loss ?? 0) > 0 && this.random() < c.loss!) return undefined
    const jitter = c.jitterMs ?? 0
    return (c.latencyMs ?? 0) + (jitter > 0 ? this.random() * jitter : 0)
  }

  /** mulberry32: small, seeded, good enough to pick lost messages. */
  private random(): number {
    let x = (this.seed = (this.seed + 0x6d2b79f5) >>> 0)
    x = Math.imul(x ^ (x >>> 15), x | 1)
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61)
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}

type Resume = (outcome: Outcome) => void

/** A request of this node's, from its send to its answer, timeout or failure. */
interface Request {
  readonly id: number
  readonly to: string
  readonly bytes: Uint8Array
  resume: Resume | undefined
  timer: ReturnType<typeof setTimeout> | undefined
  /** Holds one of its peer's `maxInFlight` slots. */
  holds: boolean
  done: boolean
}

/** setTimeout treats anything over 2^31-1 ms as 1 ms. */
const MAX_TIMER_MS = 2 ** 31 - 1

/** Joins `network` as `config.nodeId` for the current scope. */
export const makeMemory = Effect.fnUntraced(function*(network: MemoryNetwork, config: MemoryTransportConfig) {
  const nodeId = config.nodeId
  const cluster: ClusterSettings = { n: config.cluster.n, partitions: config.cluster.partitions }
  const maxFrameBytes = config.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES
  const maxInFlight = config.maxInFlight ?? 1024
  const run = yield* FiberSet.makeRuntime<never>()
  const warn = (message: string) => void run(Effect.logWarning(message).pipe(Effect.annotateLogs({ module: "transport", node: nodeId })))
  let closed = false
  const handlers = new HandlerSlot()
  let dropped: ReadonlySet<string> = new Set()
  let nextId = 1
  /** Requests sent and not yet answered, by id. */
  const pending = new Map<number, Request>()
  /** Per peer: requests holding a slot, and those waiting for one (settled ones are skipped). */
  const inFlight = new Map<string, number>()
  const slotWaiters = new Map<string, Request[]>()
  /** Messages on their way (timers), cleared when this node's transport closes. */
  const onTheWire = new Set<ReturnType<typeof setTimeout>>()
  const incoming: Incoming = { nodeId, maxFrameBytes, run, warn, gone: () => closed }

  /** Puts a frame on the wire to `to`; it arrives after the link's delay, if at all. */
  const transmit = (to: string, bytes: Uint8Array, copy = false) => {
    // A node pulled off the network (crashed) sends nothing.
    if (network.endpoint(nodeId) !== endpoint) return
    const target = network.endpoint(to)
    const delay = target === undefined ? undefined : network.route(nodeId, to)
    if (target === undefined || delay === undefined) return
    const frame = decodeBody(bytes.subarray(HEADER_BYTES), maxFrameBytes)
    if (frame instanceof MalformedFrame) return warn(`dropping a malformed frame to ${to}: ${frame.message}`)
    // A plain timer, not a fiber: the simulator sends about 12,000 messages a run. Even with no
    // delay it arrives on a later turn, as from a socket, never inside the sender's call.
    const arrive = () => {
      onTheWire.delete(timer as ReturnType<typeof setTimeout>)
      network.deliverWhenAwake(nodeId, to, () => {
        // A message in flight is lost when its link is cut or its receiver left meanwhile.
        if (network.endpoint(to) !== target || network.isPartitioned(nodeId, to)) return
        network.onDeliver?.(nodeId, to, frame.k === "req" || frame.k === "one" ? String((frame.p as { t?: unknown } | null)?.t) : frame.k)
        target.deliver(nodeId, frame)
      })
    }
    // setTimeout would make "no delay" a millisecond; setImmediate keeps it the next turn.
    const timer = delay > 0 ? setTimeout(arrive, delay) : setImmediate(arrive)
    onTheWire.add(timer as ReturnType<typeof setTimeout>)
    if (!copy && network.duplicated(nodeId, to)) transmit(to, bytes, true)
  }

  const reply = (from: string) => (bytes: Uint8Array) => {
    if (!closed && !dropped.has(from)) transmit(from, bytes)
  }

  const endpoint: Endpoint = {
    id: nodeId,
    cluster,
    deliver: (from, frame) => {
      if (closed || dropped.has(from)) return
      switch (frame.k) {
        case "req":
        case "one":
          return handleIncoming(incoming, handlers.current, from, frame.k === "req", frame.id, frame.p, reply(from))
        case "res":
        case "err": {
          const p = pending.get(frame.id)
          if (p === undefined || p.to !== from) return
          return finish(p, frame.k === "res" ? succeeded(frame.p) : failed(transportError("remote", from, frame.message, frame.code)))
        }
        case "hello":
          return
      }
    },
    peerLeft: (id) => {
      for (const p of [...pending.values()]) {
        if (p.to === id) finish(p, failed(transportError("unreachable", id, `node ${id} left the network with the request in flight`)))
      }
    }
  }

  yield* Effect.acquireRelease(
    Effect.sync(() => network.attach(endpoint)),
    () =>
      Effect.sync(() => {
        closed = true
        network.detach(endpoint)
        for (const t of onTheWire) {
          clearTimeout(t)
          clearImmediate(t as unknown as ReturnType<typeof setImmediate>)
        }
        onTheWire.clear()
        for (const p of [...pending.values()]) finish(p, failed(transportError("closed", p.to, `the transport of node ${nodeId} was shut down`)))
        for (const queue of slotWaiters.values()) for (const p of queue) finish(p, failed(transportError("closed", p.to, `the transport of node ${nodeId} was shut down`)))
        slotWaiters.clear()
      })
  )

  /**
   * Encodes a message to `to`, or says why it cannot go (closed, too large, not there,
   * refused). Throws only what the encoder throws (a payload msgpack cannot carry).
   */
  const prepare = (to: Peer, frame: Frame): Uint8Array | TransportError => {
    if (closed) return transportError("closed", to.id, `the transport of node ${nodeId} is shut down`)
    const bytes = encodeFrame(frame)
    if (bodyBytes(bytes) > maxFrameBytes) {
      return transportError("too_large", to.id, `a message of ${bodyBytes(bytes)} bytes to node ${to.id} is over the frame limit of ${maxFrameBytes}`)
    }
    if (dropped.has(to.id)) return bytes
    const target = network.endpoint(to.id)
    if (target === undefined) return transportError("unreachable", to.id, `cannot connect to node ${to.id}: it is not on the network`)
    const problem = helloProblem({ nodeId, cluster }, hello(target.id, target.cluster), to.id)
    if (problem !== undefined) return transportError("refused", to.id, `node ${to.id} refused: ${problem}`)
    return bytes
  }

  /** Settles a request once: frees its slot (letting the next waiter go) and tells its caller. */
  const finish = (r: Request, outcome: Outcome | undefined) => {
    if (r.done) return
    r.done = true
    if (r.timer !== undefined) clearTimeout(r.timer)
    pending.delete(r.id)
    const resume = r.resume
    r.resume = undefined
    if (r.holds) {
      r.holds = false
      inFlight.set(r.to, inFlight.get(r.to)! - 1)
      const queue = slotWaiters.get(r.to)
      while (queue !== undefined && queue.length > 0) {
        const next = queue.shift()!
        if (!next.done) {
          grant(next)
          break
        }
      }
    }
    if (resume !== undefined && outcome !== undefined) resume(outcome)
  }
  const grant = (r: Request) => {
    r.holds = true
    inFlight.set(r.to, (inFlight.get(r.to) ?? 0) + 1)
    pending.set(r.id, r)
    transmit(r.to, r.bytes)
  }

  /**
   * Sends a request; `resume` gets its outcome once, unless the returned canceller runs first.
   * A peer has at most `maxInFlight` requests unanswered; more wait for a slot, inside their
   * timeout. A dropped peer gets nothing and the request runs out its time.
   */
  const requestWith = (to: Peer, payload: unknown, timeoutMs: number, resume: Resume): (() => void) | undefined => {
    const id = nextId++
    let bytes: Uint8Array | TransportError
    try {
      bytes = prepare(to, { k: "req", id, p: payload })
    } catch (e) {
      return void resume({ ok: false, error: e, defect: true })
    }
    if (!(bytes instanceof Uint8Array)) return void resume(failed(bytes))
    const r: Request = { id, to: to.id, bytes, resume, timer: undefined, holds: false, done: false }
    if (timeoutMs !== Infinity) {
      r.timer = setTimeout(() => finish(r, failed(transportError("timeout", to.id, `node ${to.id} did not answer within ${Math.round(timeoutMs)} ms`))), Math.min(Math.max(0, timeoutMs), MAX_TIMER_MS))
    }
    if (!dropped.has(to.id)) {
      if ((inFlight.get(to.id) ?? 0) < maxInFlight) grant(r)
      else {
        let queue = slotWaiters.get(to.id)
        if (queue === undefined) slotWaiters.set(to.id, (queue = []))
        queue.push(r)
      }
    }
    return () => finish(r, undefined)
  }

  const request = (to: Peer, payload: unknown, timeoutMs: number): Effect.Effect<unknown, TransportError> => asEffect((resume) => requestWith(to, payload, timeoutMs, resume))

  const api: TransportApi = {
    self: { id: nodeId, host: "memory", port: 0 },
    cluster,
    request,
    requestNow: (to, payload, timeoutMs) => asPromise((resume) => requestWith(to, payload, timeoutMs, resume)),
    send: (to, payload) =>
      Effect.suspend(() => {
        const bytes = prepare(to, { k: "one", id: nextId++, p: payload })
        if (!(bytes instanceof Uint8Array)) return Effect.fail(bytes)
        if (!dropped.has(to.id)) transmit(to.id, bytes)
        return Effect.void
      }),
    serve: (h) => handlers.serve(h),
    setDropped: (ids) => {
      dropped = new Set(ids)
    },
    getDropped: () => [...dropped],
    stats: (): TransportStats => ({ inbound: 0, outbound: 0, pending: pending.size })
  }
  return api
})

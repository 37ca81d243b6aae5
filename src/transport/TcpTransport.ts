/**
 * The TCP transport: a listener for peers' connections, and one outgoing connection per peer
 * (opened on first use, reused, reopened after failure with exponential backoff). Requests go
 * out on our connection and come back on it; a peer's requests arrive on its connection to us.
 *
 * Invariants: every request settles exactly once (answer, `timeout`, `unreachable` when its
 * connection drops, `closed` at shutdown); a peer never has more than `maxInFlight` messages
 * written but unanswered (more wait, inside their timeout); writes stop at socket.write's
 * false and resume on 'drain'; damaged bytes close their connection only. Timers are plain
 * Node timers: this layer is for real time, MemoryNetwork is for simulated time.
 *
 * With `tls` (Tls.ts) every connection is TLS and the frames below run on its decrypted
 * stream: an inbound socket exists for us only after its handshake, an outbound one is used
 * only after "secureConnect", so nothing from a peer without our secret is ever decoded.
 */
import * as net from "node:net"
import { Effect, FiberSet } from "effect"
import { HandlerSlot, handleIncoming, type Incoming } from "./Reply.ts"
import { DEFAULT_MAX_FRAME_BYTES, FrameDecoder, bodyBytes, encodeFrame, hello, helloProblem, type ClusterSettings, type Frame, type Hello, type MalformedFrame } from "./Frame.ts"
import * as Tls from "./Tls.ts"
import { asEffect, asPromise, failed, succeeded, type Outcome } from "./Outcome.ts"
import type { Peer, TransportApi, TransportStats } from "./Transport.ts"
import { transportError, type TransportError } from "./TransportError.ts"

/** Settings of the TCP layer. */
export interface TcpTransportConfig {
  readonly nodeId: string
  /** Address to listen on and to advertise. */
  readonly host: string
  /** Cluster port; 0 picks a free one (see `self.port`). */
  readonly port: number
  readonly cluster: ClusterSettings
  readonly maxFrameBytes?: number
  /**
   * Largest frame before the peer's hello is accepted (default 64 KiB): a hello is a few dozen
   * bytes, so a stranger cannot make a node buffer 64 MiB per connection before saying who it is.
   */
  readonly maxHelloFrameBytes?: number
  /** Connections accepted from peers at once (default 512); more are closed as they arrive. */
  readonly maxInboundConnections?: number
  /** Messages written to one peer and not yet answered, at most (default 1024). */
  readonly maxInFlight?: number
  /**
   * Messages waiting for one of a peer's `maxInFlight` slots, at most (default 4096, four times the default maxInFlight).
   * Past it a request or one-way message fails at once with `timeout` (the peer is too slow to
   * take more; waiting would only time out later, holding its frame meanwhile), counted as
   * tally_limit_hits_total{limit="internode_slot_waiters"}.
   */
  readonly maxSlotWaiters?: number
  /**
   * Limit on a TCP connect (default 5000 ms). The hello exchange after it has none: a peer
   * that drops us stays silent, so requests wait there and time out, as in a partition.
   */
  readonly connectTimeoutMs?: number
  /** First and longest wait before reconnecting after a failed connection (default 50, 2000 ms). */
  readonly reconnectMinMs?: number
  readonly reconnectMaxMs?: number
  /**
   * How long a one-way message may wait for a slot (then `send` fails with `timeout`) or, once
   * accepted, for the connection to be ready (then it is dropped). Default 5000 ms.
   */
  readonly sendTimeoutMs?: number
  /** Internode TLS with the cluster secret (Tls.ts); absent: plain TCP. */
  readonly tls?: Tls.InternodeTls | undefined
}

type Resume = (outcome: Outcome) => void

/** A request or one-way message on its way out. */
interface Outgoing {
  readonly id: number
  /** The frame; emptied once a request is written, so a large payload is not kept for the answer. */
  bytes: Uint8Array
  readonly oneWay: boolean
  /** Completes the caller's effect; cleared once used. */
  resume: Resume | undefined
  timer: ReturnType<typeof setTimeout> | undefined
  /** The connection that gave it a slot. */
  out: { release(o: Outgoing): void } | undefined
  holdsSlot: boolean
  /** Waiting in its connection's slot queue (counted in `queued`). */
  queued: boolean
  done: boolean
}

/** A socket with a frame decoder on its input and a queue that respects 'drain' on its output. */
class Wire {
  readonly socket: net.Socket
  private readonly decoder: FrameDecoder
  private queue: Array<{ readonly bytes: Uint8Array; readonly written: (() => void) | undefined }> = []
  private queueHead = 0
  queuedBytes = 0
  private blocked = false
  private corked = false
  closed = false
  lastError: Error | undefined
  private readonly uncork = () => {
    this.corked = false
    if (!this.closed) this.socket.uncork()
  }

  constructor(
    socket: net.Socket,
    maxFrameBytes: number,
    onFrame: (frame: Frame) => void,
    onMalformed: (error: MalformedFrame) => void,
    onClose: () => void,
    onDrained: () => void
  ) {
    this.socket = socket
    this.decoder = new FrameDecoder(maxFrameBytes)
    socket.setNoDelay(true)
    socket.on("data", (chunk: Buffer) => {
      const { frames, error } = this.decoder.push(chunk)
      for (const f of frames) {
        if (socket.destroyed) return
        onFrame(f)
      }
      if (error !== undefined && !socket.destroyed) {
        onMalformed(error)
        this.destroy()
      }
    })
    socket.on("drain", () => {
      this.blocked = false
      this.flush()
      if (!this.blocked) onDrained()
    })
    socket.on("error", (e) => {
      this.lastError = e
    })
    socket.on("close", () => {
      this.closed = true
      // Whatever was still queued is lost with the connection; its senders must not wait on it.
      const lost = this.queue.slice(this.queueHead)
      this.queue = []
      this.queueHead = 0
      this.queuedBytes = 0
      for (const item of lost) item?.written?.()
      onClose()
    })
  }

  /** Accepts frames up to `n` bytes from now on (the peer's hello was accepted). */
  raiseLimit(n: number): void {
    this.decoder.maxFrameBytes = n
  }

  /** Writes `bytes`, or queues them while the socket is over its high-water mark. `written` runs once they reach the socket. */
  write(bytes: Uint8Array, written?: () => void): void {
    if (this.closed || this.socket.destroyed) return void written?.()
    if (this.blocked) {
      this.queue.push({ bytes, written })
      this.queuedBytes += bytes.length
      return
    }
    // Frames written in one turn of the event loop leave in one writev: uncorked by
    // setImmediate, after every I/O callback of this poll phase (a request arriving on each
    // of many client connections), not by nextTick after the current one alone.
    if (!this.corked) {
      this.corked = true
      this.socket.cork()
      setImmediate(this.uncork)
    }
    if (!this.socket.write(bytes)) this.blocked = true
    written?.()
  }

  private flush(): void {
    while (!this.blocked && this.queueHead < this.queue.length) {
      const item = this.queue[this.queueHead]!
      this.queue[this.queueHead++] = undefined!
      this.queuedBytes -= item.bytes.length
      if (!this.socket.write(item.bytes)) this.blocked = true
      item.written?.()
    }
    if (this.queueHead === this.queue.length) {
      this.queue = []
      this.queueHead = 0
    }
  }

  get isBlocked(): boolean {
    return this.blocked
  }

  destroy(): void {
    this.socket.destroy()
  }
}

const MAX_TIMER_MS = 2 ** 31 - 1
const SENT = new Uint8Array(0)
/** Default of `maxHelloFrameBytes`. */
export const DEFAULT_MAX_HELLO_FRAME_BYTES = 64 * 1024
/** Default of `maxInboundConnections`. */
export const DEFAULT_MAX_INBOUND = 512

/** How long an accepted connection may stay silent before its hello. */
const HELLO_TIMEOUT_MS = 10_000

const remoteAddress = (s: net.Socket) => `${s.remoteAddress}:${s.remotePort}`

/** Opens the transport in the current scope. */
export const makeTcp = Effect.fnUntraced(function*(config: TcpTransportConfig) {
  const nodeId = config.nodeId
  const cluster: ClusterSettings = { n: config.cluster.n, partitions: config.cluster.partitions }
  const maxFrameBytes = config.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES
  const maxHelloFrameBytes = Math.min(config.maxHelloFrameBytes ?? DEFAULT_MAX_HELLO_FRAME_BYTES, maxFrameBytes)
  const maxInbound = config.maxInboundConnections ?? DEFAULT_MAX_INBOUND
  /** Refusals by the bounds above, for /metrics (tally_limit_hits_total). */
  const limits = { internode_connections: 0, internode_frame_too_large: 0, internode_hello_frame_too_large: 0, internode_hostile_messages: 0, internode_slot_waiters: 0 }
  const countMalformed = (e: MalformedFrame, authenticated: boolean) => {
    if (e.reason === "too_large") limits[authenticated ? "internode_frame_too_large" : "internode_hello_frame_too_large"]++
  }
  const maxInFlight = config.maxInFlight ?? 1024
  const maxSlotWaiters = config.maxSlotWaiters ?? 4096
  const connectTimeoutMs = config.connectTimeoutMs ?? 5000
  const reconnectMinMs = config.reconnectMinMs ?? 50
  const reconnectMaxMs = config.reconnectMaxMs ?? 2000
  const sendTimeoutMs = config.sendTimeoutMs ?? 5000
  const ourHello = encodeFrame(hello(nodeId, cluster))

  const run = yield* FiberSet.makeRuntime<never>()
  const warn = (message: string) => void run(Effect.logWarning(message).pipe(Effect.annotateLogs({ module: "transport", node: nodeId })))
  const incoming: Incoming = { nodeId, maxFrameBytes, run, warn, gone: () => closed }

  let closed = false
  const handlers = new HandlerSlot()
  let dropped: ReadonlySet<string> = new Set()
  let nextId = 1
  const outbounds = new Map<string, Outbound>()
  const inbounds = new Set<Inbound>()
  /** Every unsettled request and slot-waiting one-way, so shutdown can fail them. */
  const live = new Set<Outgoing>()

  const settle = (o: Outgoing, result: Outcome | undefined) => {
    if (o.done) return
    o.done = true
    live.delete(o)
    if (o.timer !== undefined) clearTimeout(o.timer)
    const resume = o.resume
    o.resume = undefined
    if (o.out !== undefined) o.out.release(o)
    if (resume !== undefined && result !== undefined) resume(result)
  }

  /** Our connection to one peer, and the messages bound for it. */
  class Outbound {
    peer: Peer
    private wire: Wire | undefined
    private state: "idle" | "connecting" | "handshaking" | "ready" | "failed" = "idle"
    /** Messages with a slot, waiting for the handshake. */
    private waiting: Outgoing[] = []
    /** Requests written and not yet answered, by id. */
    private readonly pending = new Map<number, Outgoing>()
    private slotWaiters: Outgoing[] = []
    private slotWaitersHead = 0
    /** Unsettled messages in `slotWaiters` (settled ones stay there until the pump passes them). */
    private queued = 0
    private inFlight = 0
    private pumping = false
    private failures = 0
    private retryAt = 0
    private lastFailure: TransportError | undefined

    constructor(peer: Peer) {
      this.peer = peer
    }

    get connected(): boolean {
      return this.wire !== undefined
    }

    submit(o: Outgoing): void {
      o.out = this
      if (this.inFlight < maxInFlight) return this.grant(o)
      if (this.queued >= maxSlotWaiters) {
        limits.internode_slot_waiters++
        return settle(o, failed(transportError("timeout", this.peer.id, `no slot for a message to node ${this.peer.id}: ${maxInFlight} in flight and ${this.queued} waiting already (the peer is too slow to take more); failed at once`)))
      }
      // Messages that timed out while waiting stay until the pump passes them: drop them when
      // they are most of the queue, so a peer that never frees a slot cannot grow it for ever.
      if (this.slotWaiters.length - this.slotWaitersHead >= 2 * maxSlotWaiters) {
        this.slotWaiters = this.slotWaiters.slice(this.slotWaitersHead).filter((w) => !w.done)
        this.slotWaitersHead = 0
      }
      o.queued = true
      this.queued++
      this.slotWaiters.push(o)
    }

    /** Frees the slot of a settled message (or forgets a waiting one) and lets the next waiter go. */
    release(o: Outgoing): void {
      if (!o.oneWay) this.pending.delete(o.id)
      if (o.queued) {
        o.queued = false
        this.queued--
      }
      if (!o.holdsSlot) return
      o.holdsSlot = false
      this.inFlight--
      this.pump()
    }

    /** Grants free slots to waiters in order; a grant that fails at once re-enters here and is absorbed by the loop. */
    private pump(): void {
      if (this.pumping) return
      this.pumping = true
      while (this.inFlight < maxInFlight && this.slotWaitersHead < this.slotWaiters.length) {
        const next = this.slotWaiters[this.slotWaitersHead]!
        this.slotWaiters[this.slotWaitersHead++] = undefined!
        if (next.done) continue
        next.queued = false
        this.queued--
        this.grant(next)
      }
      if (this.slotWaitersHead > 0 && this.slotWaitersHead === this.slotWaiters.length) {
        this.slotWaiters.length = 0
        this.slotWaitersHead = 0
      }
      this.pumping = false
    }

    private grant(o: Outgoing): void {
      o.holdsSlot = true
      this.inFlight++
      if (this.state === "failed") {
        if (performance.now() < this.retryAt) return settle(o, failed(this.lastFailure!))
        this.state = "idle"
      }
      if (o.oneWay) {
        const resume = o.resume
        o.resume = undefined
        resume?.(succeeded(undefined))
      }
      if (this.state === "ready") return this.transmit(o)
      // Settled messages stay in `waiting` until the handshake; keep it bounded if that never comes.
      if (this.waiting.length >= 2 * maxInFlight) this.waiting = this.waiting.filter((w) => !w.done)
      this.waiting.push(o)
      if (this.state === "idle") this.connect()
    }

    private transmit(o: Outgoing): void {
      if (o.oneWay) {
        this.wire!.write(o.bytes, () => settle(o, undefined))
      } else {
        this.pending.set(o.id, o)
        this.wire!.write(o.bytes)
        o.bytes = SENT
      }
    }

    private connect(): void {
      this.state = "connecting"
      const socket = Tls.connect(config.tls, this.peer.host, this.peer.port)
      const timer = setTimeout(() => socket.destroy(new Error(`connect timed out after ${connectTimeoutMs} ms`)), connectTimeoutMs)
      let refusal: TransportError | undefined
      const wire = new Wire(
        socket,
        maxHelloFrameBytes,
        (frame) => {
          if (frame.k === "hello") return this.onHello(wire, frame)
          if (this.state !== "ready") {
            if (frame.k === "err" && frame.id === 0) {
              refusal = transportError(frame.code === "refused" ? "refused" : "unreachable", this.peer.id, `node ${this.peer.id} refused the connection: ${frame.message}`)
              return wire.destroy()
            }
            warn(`closing connection to ${this.peer.id}: ${frame.k} frame before its hello`)
            return wire.destroy()
          }
          if (dropped.has(this.peer.id)) return
          if (frame.k === "res" || frame.k === "err") {
            const o = this.pending.get(frame.id)
            if (o === undefined) return
            if (frame.k === "res") return settle(o, succeeded(frame.p))
            return settle(o, failed(transportError("remote", this.peer.id, frame.message, frame.code)))
          }
          warn(`closing connection to ${this.peer.id}: unexpected ${frame.k} frame`)
          wire.destroy()
        },
        (error) => {
          countMalformed(error, this.state === "ready")
          warn(`closing connection to ${this.peer.id}: malformed frame (${error.reason}): ${error.message}`)
        },
        () => {
          clearTimeout(timer)
          if (this.wire === wire) this.wire = undefined
          if (refusal === undefined && this.refusal === undefined && config.tls !== undefined && this.state !== "ready" && Tls.isHandshakeFailure(wire.lastError)) {
            refusal = transportError("refused", this.peer.id, `node ${this.peer.id} at ${this.peer.host}:${this.peer.port} failed the TLS handshake (does it hold another cluster secret?): ${wire.lastError!.message.split("\n")[0]}`)
            warn(refusal.message)
          }
          this.onClosed(wire, refusal ?? this.refusal)
          this.refusal = undefined
        },
        () => {}
      )
      this.wire = wire
      socket.setKeepAlive(true, 10_000)
      socket.once(Tls.readyEvent(config.tls), () => {
        clearTimeout(timer)
        if (this.wire !== wire) return wire.destroy()
        this.state = "handshaking"
        wire.write(ourHello)
      })
    }

    private refusal: TransportError | undefined

    private onHello(wire: Wire, theirs: Hello): void {
      if (this.state !== "handshaking") {
        warn(`closing connection to ${this.peer.id}: second hello`)
        return wire.destroy()
      }
      const problem = helloProblem({ nodeId, cluster }, theirs, this.peer.id)
      if (problem !== undefined) {
        this.refusal = transportError("refused", this.peer.id, `node ${this.peer.id} at ${this.peer.host}:${this.peer.port} refused: ${problem}`)
        warn(this.refusal.message)
        return wire.destroy()
      }
      this.state = "ready"
      wire.raiseLimit(maxFrameBytes)
      this.failures = 0
      const ready = this.waiting
      this.waiting = []
      for (const o of ready) if (!o.done) this.transmit(o)
    }

    private onClosed(wire: Wire, refusal: TransportError | undefined): void {
      const wasReady = this.state === "ready"
      const cause = wire.lastError?.message ?? "connection closed"
      const failure = refusal ??
        transportError("unreachable", this.peer.id, wasReady
          ? `connection to node ${this.peer.id} at ${this.peer.host}:${this.peer.port} dropped: ${cause}`
          : `cannot connect to node ${this.peer.id} at ${this.peer.host}:${this.peer.port}: ${cause}`)
      // A working connection that drops may be retried at once; a failed attempt backs off.
      if (wasReady && refusal === undefined) {
        this.failures = 0
        this.retryAt = 0
      } else {
        this.retryAt = performance.now() + Math.min(reconnectMaxMs, reconnectMinMs * 2 ** this.failures)
        this.failures = Math.min(this.failures + 1, 30)
      }
      this.state = "failed"
      this.lastFailure = failure
      const victims = [...this.waiting, ...this.pending.values()]
      this.waiting = []
      for (const o of victims) settle(o, failed(failure))
    }

    /** Fails everything, closes the connection. */
    shutdown(failure: TransportError): void {
      this.state = "failed"
      this.retryAt = Infinity
      this.lastFailure = failure
      const victims = [...this.waiting, ...this.pending.values(), ...this.slotWaiters.slice(this.slotWaitersHead)]
      for (const o of victims) if (o !== undefined) settle(o, failed(failure))
      this.wire?.destroy()
    }
  }

  /** A peer's connection to us. */
  class Inbound {
    readonly wire: Wire
    from: string | undefined
    /** We stayed silent after its hello because the peer was dropped; our hello is owed. */
    silenced = false
    private active = 0
    private paused = false

    constructor(socket: net.Socket) {
      this.wire = new Wire(
        socket,
        maxHelloFrameBytes,
        (frame) => this.onFrame(frame),
        (error) => {
          countMalformed(error, this.from !== undefined)
          warn(`closing connection from ${this.from ?? remoteAddress(socket)}: malformed frame (${error.reason}): ${error.message}`)
        },
        () => inbounds.delete(this),
        () => this.adjustReading()
      )
      const timer = setTimeout(() => {
        if (this.from !== undefined) return
        warn(`closing connection from ${remoteAddress(socket)}: no hello within ${HELLO_TIMEOUT_MS} ms`)
        this.wire.destroy()
      }, HELLO_TIMEOUT_MS)
      timer.unref()
      socket.once("close", () => clearTimeout(timer))
    }

    private onFrame(frame: Frame): void {
      if (this.from === undefined) {
        if (frame.k !== "hello") {
          warn(`closing connection from ${remoteAddress(this.wire.socket)}: ${frame.k} frame before its hello`)
          return this.wire.destroy()
        }
        const problem = helloProblem({ nodeId, cluster }, frame)
        if (problem !== undefined) {
          warn(`refused node ${frame.from} from ${remoteAddress(this.wire.socket)}: ${problem}`)
          this.wire.write(ourHello)
          this.wire.write(encodeFrame({ k: "err", id: 0, code: "refused", message: problem }))
          this.wire.socket.end()
          setTimeout(() => this.wire.destroy(), 1000).unref()
          this.from = frame.from
          this.silenced = true
          return
        }
        this.from = frame.from
        this.wire.raiseLimit(maxFrameBytes)
        if (dropped.has(frame.from)) this.silenced = true
        else this.wire.write(ourHello)
        return
      }
      if (dropped.has(this.from) || this.silenced) return
      if (frame.k !== "req" && frame.k !== "one") {
        warn(`closing connection from ${this.from}: unexpected ${frame.k} frame`)
        return this.wire.destroy()
      }
      this.handle(this.from, frame.k === "req", frame.id, frame.p)
    }

    /** Sends our owed hello once the peer is no longer dropped. */
    undrop(): void {
      if (this.silenced && this.from !== undefined && !dropped.has(this.from) && !this.wire.socket.writableEnded) {
        this.silenced = false
        this.wire.write(ourHello)
      }
    }

    private handle(from: string, answer: boolean, id: number, payload: unknown): void {
      this.active++
      this.adjustReading()
      handleIncoming(incoming, handlers.current, from, answer, id, payload, (bytes) => this.reply(from, bytes), () => {
        this.active--
        this.adjustReading()
      }, () => {
        limits.internode_hostile_messages++
        // After the err frame is flushed: the peer learns why, then must reconnect to be heard.
        this.wire.socket.end()
        setTimeout(() => this.wire.destroy(), 1000).unref()
      })
    }

    private reply(from: string, bytes: Uint8Array): void {
      if (!dropped.has(from)) this.wire.write(bytes)
    }

    /** Stops reading while too many handlers run or too many bytes wait to go out. */
    private adjustReading(): void {
      const busy = this.active >= maxInFlight || this.wire.isBlocked
      if (busy && !this.paused) {
        this.paused = true
        this.wire.socket.pause()
      } else if (!busy && this.paused) {
        this.paused = false
        this.wire.socket.resume()
      }
    }
  }

  let handshakeFailures = 0
  const server = Tls.createServer(config.tls, HELLO_TIMEOUT_MS, (socket) => {
    if (closed) return void socket.destroy()
    inbounds.add(new Inbound(socket))
  }, (e, socket) => {
    // One warning per power of two failures: a scanner must not flood the log.
    handshakeFailures++
    if ((handshakeFailures & (handshakeFailures - 1)) === 0) {
      warn(`closing connection from ${remoteAddress(socket)}: TLS handshake failed (${handshakeFailures} so far; another cluster secret, or no TLS): ${e.message.split("\n")[0]}`)
    }
  })

  // Past the bound Node closes a new connection as it arrives, before any TLS or frame work.
  server.maxConnections = maxInbound
  let dropsLogged = 0
  server.on("drop", () => {
    limits.internode_connections++
    if ((limits.internode_connections & (limits.internode_connections - 1)) === 0 && limits.internode_connections > dropsLogged) {
      dropsLogged = limits.internode_connections
      warn(`closed an internode connection: ${maxInbound} are open, the limit (--max-inbound-connections); ${limits.internode_connections} closed so far`)
    }
  })

  const port = yield* Effect.acquireRelease(
    Effect.callback<number, TransportError>((resume) => {
      const onError = (e: Error) => resume(Effect.fail(transportError("listen", "", `node ${nodeId} cannot listen on ${config.host}:${config.port}: ${e.message}`)))
      server.once("error", onError)
      server.listen(config.port, config.host, () => {
        server.off("error", onError)
        server.on("error", (e) => warn(`listener error: ${e.message}`))
        resume(Effect.succeed((server.address() as net.AddressInfo).port))
      })
    }),
    () =>
      Effect.callback<void>((resume) => {
        closed = true
        const failure = transportError("closed", "", `the transport of node ${nodeId} was shut down`)
        for (const out of outbounds.values()) out.shutdown(transportError("closed", out.peer.id, failure.message))
        for (const o of [...live]) settle(o, failed(failure))
        for (const i of inbounds) i.wire.destroy()
        server.close(() => resume(Effect.void))
      })
  )
  const self: Peer = { id: nodeId, host: config.host, port }

  const outboundFor = (to: Peer): Outbound => {
    let out = outbounds.get(to.id)
    if (out !== undefined && (out.peer.host !== to.host || out.peer.port !== to.port)) {
      out.shutdown(transportError("unreachable", to.id, `node ${to.id} moved to ${to.host}:${to.port}`))
      out = undefined
    }
    if (out === undefined) {
      out = new Outbound(to)
      outbounds.set(to.id, out)
    }
    return out
  }

  const encodeOutgoing = (to: Peer, frame: Frame): Uint8Array | TransportError => {
    const bytes = encodeFrame(frame)
    if (bodyBytes(bytes) > maxFrameBytes) {
      return transportError("too_large", to.id, `a message of ${bodyBytes(bytes)} bytes to node ${to.id} is over the frame limit of ${maxFrameBytes}`)
    }
    return bytes
  }

  /**
   * Queues a request or one-way message; `resume` gets its outcome exactly once, unless the
   * returned canceller runs first. Plain callbacks, so that the request path's plain lane
   * (`requestNow`) and the Effect calls share one implementation.
   */
  const enqueue = (to: Peer, oneWay: boolean, payload: unknown, timeoutMs: number, resume: Resume): (() => void) | undefined => {
    if (closed) return void resume(failed(transportError("closed", to.id, `the transport of node ${nodeId} is shut down`)))
    const id = nextId++
    let bytes: Uint8Array | TransportError
    try {
      bytes = encodeOutgoing(to, { k: oneWay ? "one" : "req", id, p: payload })
    } catch (e) {
      return void resume({ ok: false, error: e, defect: true })
    }
    if (!(bytes instanceof Uint8Array)) return void resume(failed(bytes))
    if (oneWay && dropped.has(to.id)) return void resume(succeeded(undefined))
    const o: Outgoing = { id, bytes, oneWay, resume, timer: undefined, out: undefined, holdsSlot: false, queued: false, done: false }
    live.add(o)
    const limit = oneWay ? sendTimeoutMs : timeoutMs
    const onTimeout = () =>
      settle(o, failed(transportError("timeout", to.id, oneWay ? `no room for a message to node ${to.id} within ${limit} ms` : `node ${to.id} did not answer within ${Math.round(limit)} ms`)))
    // setTimeout treats anything over 2^31-1 ms as 1 ms; Infinity means no limit.
    if (limit !== Infinity) o.timer = setTimeout(onTimeout, Math.min(Math.max(0, limit), MAX_TIMER_MS))
    // A dropped peer gets nothing; the request just runs out its time.
    if (oneWay || !dropped.has(to.id)) outboundFor(to).submit(o)
    return () => {
      o.resume = undefined
      settle(o, undefined)
    }
  }
  const enqueueEffect = (to: Peer, oneWay: boolean, payload: unknown, timeoutMs: number) => asEffect((resume) => enqueue(to, oneWay, payload, timeoutMs, resume))

  const api: TransportApi = {
    self,
    cluster,
    request: (to, payload, timeoutMs) => enqueueEffect(to, false, payload, timeoutMs),
    requestNow: (to, payload, timeoutMs) => asPromise((resume) => enqueue(to, false, payload, timeoutMs, resume)),
    send: (to, payload) => Effect.asVoid(enqueueEffect(to, true, payload, 0)),
    serve: (h) => handlers.serve(h),
    setDropped: (ids) => {
      dropped = new Set(ids)
      for (const i of inbounds) i.undrop()
    },
    getDropped: () => [...dropped],
    stats: (): TransportStats => {
      let outbound = 0
      let pending = 0
      for (const out of outbounds.values()) if (out.connected) outbound++
      for (const o of live) if (!o.oneWay) pending++
      return { inbound: inbounds.size, outbound, pending, limits: { ...limits } }
    }
  }
  return api
})

/**
 * Request/response and one-way messages between Tally nodes, multiplexed by request id.
 * Two layers with one behaviour: `layer` speaks TCP on the cluster port (TcpTransport.ts),
 * `layerMemory` runs over an in-process MemoryNetwork so a whole cluster fits in one test.
 *
 * Fault injection (`setDropped`) makes a peer look partitioned, not dead: nothing is sent to
 * it, nothing from it is handled or answered, and requests to it fail with `timeout` after
 * exactly their timeout. A peer that is really down fails fast with `unreachable`.
 */
import { Context, type Effect, Layer, type Scope } from "effect"
import type { ClusterSettings } from "./Frame.ts"
import { makeMemory, type MemoryNetwork, type MemoryTransportConfig } from "./MemoryNetwork.ts"
import { makeTcp, type TcpTransportConfig } from "./TcpTransport.ts"
import type { TransportError } from "./TransportError.ts"

export type { ClusterSettings } from "./Frame.ts"
export { MemoryNetwork, type LinkConditions, type MemoryTransportConfig } from "./MemoryNetwork.ts"
export type { TcpTransportConfig } from "./TcpTransport.ts"
export type { Outcome } from "./Outcome.ts"
export { HostileMessage, TransportError, transportErrorReasons, type TransportErrorReason } from "./TransportError.ts"

/** Another node, as the transport reaches it. `port` is its cluster port. */
export interface Peer {
  readonly id: string
  readonly host: string
  readonly port: number
}

/**
 * Handles an incoming request or one-way message from node `from`. Its success is the
 * response; its failure (or defect) becomes an "err" frame the requester sees as `remote`.
 * A Promise is the plain lane (the request path's replica reads and writes, run with no
 * fiber): it resolves with the response, and a rejection is answered as a defect.
 */
export type Handler = (from: string, payload: unknown) => Effect.Effect<unknown, unknown> | Promise<unknown>

/** Counters for tests and metrics. */
export interface TransportStats {
  /** Open connections accepted from peers. */
  readonly inbound: number
  /** Open connections to peers (handshake done or not). */
  readonly outbound: number
  /** Requests sent or waiting to be sent, not yet answered. */
  readonly pending: number
  /** Refusals by the transport's bounds since it started, by limit name (TCP only). */
  readonly limits?: Readonly<Record<string, number>>
}

/** What both layers provide. */
export interface TransportApi {
  /** This node as its peers reach it (with the port actually bound, when 0 was asked). */
  readonly self: Peer
  readonly cluster: ClusterSettings
  /** Sends `payload` to `to` and waits at most `timeoutMs` for the answer. */
  readonly request: (to: Peer, payload: unknown, timeoutMs: number) => Effect.Effect<unknown, TransportError>
  /**
   * `request` as a plain Promise, for the request path's plain lane (no fiber per replica
   * call): it resolves with the answer or rejects with a TransportError (or, for a payload that
   * cannot be encoded, the encoder's error). It cannot be cancelled; its timeout ends it.
   */
  readonly requestNow: (to: Peer, payload: unknown, timeoutMs: number) => Promise<unknown>
  /**
   * Sends a one-way message, best effort: it succeeds once the message is handed to the
   * connection, waiting while the peer has `maxInFlight` messages in flight (`timeout` if no
   * room frees up in time), and fails only when the peer is known to be unreachable or
   * refused, or the transport is closed. Delivery is never confirmed; to a dropped peer it
   * succeeds and nothing is sent.
   */
  readonly send: (to: Peer, payload: unknown) => Effect.Effect<void, TransportError>
  /** Handles incoming requests and one-way messages with `handler` until the scope closes. */
  readonly serve: (handler: Handler) => Effect.Effect<void, never, Scope.Scope>
  /** Fault injection: drop all traffic to and from these node ids (replaces the previous set). */
  readonly setDropped: (ids: ReadonlyArray<string>) => void
  readonly getDropped: () => ReadonlyArray<string>
  readonly stats: () => TransportStats
}

/** The internode transport of this node. */
export class Transport extends Context.Service<Transport, TransportApi>()("tally/transport/Transport") {
  /** TCP on `host:port`; closes the listener and every connection when its scope closes. */
  static readonly layer = (config: TcpTransportConfig) => Layer.effect(Transport, makeTcp(config))
  /** A node on an in-process network; leaves the network when its scope closes. */
  static readonly layerMemory = (network: MemoryNetwork, config: MemoryTransportConfig) => Layer.effect(Transport, makeMemory(network, config))
}

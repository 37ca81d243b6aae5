/**
 * The one error the transport reports. Its `reason` is the stable code callers branch on
 * (the coordinator treats timeout and unreachable as "this replica did not answer"). The
 * table below is the documentation; test/transport/tcp.test.ts provokes every reason.
 */
import { Schema } from "effect"

/** Every reason, with what it means. A reason is never renamed; new ones may be added. */
export const transportErrorReasons = {
  timeout: "no answer within the request's timeout: the peer is slow or partitioned, the message was lost, or fault injection drops the peer",
  unreachable: "no connection to the peer: it refused the connection, or the connection dropped with the request in flight, or reconnection is backing off",
  closed: "this node's transport was shut down",
  remote: "the peer's handler failed; `remoteCode` and the message say how",
  refused: "the peer will not talk to us: its cluster settings (n, partitions), protocol version or node id differ from what we expect",
  too_large: "the payload encodes to more than the maximum frame size",
  listen: "the transport could not listen on its cluster port (in use, or not permitted)"
} as const

/** A stable transport error code. */
export type TransportErrorReason = keyof typeof transportErrorReasons

const reasons = Object.keys(transportErrorReasons) as [TransportErrorReason, ...TransportErrorReason[]]

/** A failed internode exchange. */
export class TransportError extends Schema.TaggedError<TransportError>()("TransportError", {
  reason: Schema.Literals(reasons),
  /** The node the exchange was with ("" when none, e.g. for `listen`). */
  peer: Schema.String,
  message: Schema.String,
  /** For `remote`: the handler's error code (its `code`, else its `_tag`, else "error"). */
  remoteCode: Schema.optional(Schema.String)
}) {
  /** The stable code: the reason. */
  get code(): TransportErrorReason {
    return this.reason
  }
}

/** Shorthand constructor. */
export const transportError = (reason: TransportErrorReason, peer: string, message: string, remoteCode?: string): TransportError =>
  new TransportError(remoteCode === undefined ? { reason, peer, message } : { reason, peer, message, remoteCode })

/**
 * What a handler fails with for a message it refuses as hostile or malformed (bad ids, an
 * impossible state, a node speaking for another): it changed nothing, the peer gets an "err"
 * frame with code `hostile`, and the TCP transport then closes the connection, so a peer
 * that sends one must reconnect (and say hello again) before it is heard.
 */
export class HostileMessage extends Schema.TaggedError<HostileMessage>()("HostileMessage", {
  message: Schema.String
}) {
  get code(): "hostile" {
    return "hostile"
  }
}

/** Whether a handler's failure is a HostileMessage (by code, as it crosses the transport). */
export const isHostile = (e: unknown): boolean => (e as { code?: unknown } | null | undefined)?.code === "hostile"

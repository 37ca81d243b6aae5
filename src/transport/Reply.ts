/**
 * How a handler's outcome becomes the frame that answers a request, for both layers: its
 * value as "res", its failure as "err" with the error's code, a defect as "err" "defect"
 * (logged here, not described to the peer), a value too big or not msgpack-able as "err".
 */
import { Cause, Effect, Exit, type Fiber, Option, type Scope } from "effect"
import { bodyBytes, encodeFrame } from "./Frame.ts"
import type { Handler } from "./Transport.ts"
import { isHostile } from "./TransportError.ts"

/** The handler a layer dispatches to; `serve` installs one for the caller's scope. */
export class HandlerSlot {
  current: Handler | undefined = undefined

  /** Installs `h` until the scope closes, then restores the one it replaced. */
  serve(h: Handler): Effect.Effect<void, never, Scope.Scope> {
    return Effect.acquireRelease(
      Effect.sync(() => {
        const previous = this.current
        this.current = h
        return previous
      }),
      (previous) =>
        Effect.sync(() => {
          if (this.current === h) this.current = previous
        })
    ).pipe(Effect.asVoid)
  }
}

/** Forks an effect into the transport's scope (a FiberSet runtime). */
export type Runner = <A, E>(effect: Effect.Effect<A, E>) => Fiber.Fiber<A, E>

/** What `handleIncoming` needs from its layer. */
export interface Incoming {
  readonly nodeId: string
  readonly maxFrameBytes: number
  readonly run: Runner
  readonly warn: (message: string) => void
  /** True once the answer would go nowhere (transport or connection closed). */
  readonly gone: () => boolean
}

/**
 * Runs `handler` on one incoming request (`answer` set) or one-way message, in its own fiber.
 * `reply` receives the answer frame of a request; `finished` runs when the handler is done.
 */
export const handleIncoming = (
  ctx: Incoming,
  handler: Handler | undefined,
  from: string,
  answer: boolean,
  id: number,
  payload: unknown,
  reply: (bytes: Uint8Array) => void,
  finished?: () => void,
  hostile?: (message: string) => void
): void => {
  if (handler === undefined) {
    if (answer) reply(encodeFrame({ k: "err", id, code: "unavailable", message: `node ${ctx.nodeId} is not serving requests yet` }))
    finished?.()
    return
  }
  let handled: ReturnType<Handler>
  try {
    handled = handler(from, payload)
  } catch (e) {
    handled = Effect.die(e)
  }
  if (handled instanceof Promise) {
    handled.then(
      (value) => {
        finished?.()
        if (answer) reply(encodeResponse(id, value, ctx.maxFrameBytes))
      },
      (e: unknown) => {
        finished?.()
        if (answer) reply(encodeFailure(id, Cause.die(e), ctx.warn))
        else ctx.warn(`one-way message from ${from} failed: ${String(e)}`)
      }
    )
    return
  }
  const fiber = ctx.run(handled)
  fiber.addObserver((exit) => {
    finished?.()
    // Refused as hostile (TransportError.ts): answered if asked, then the layer drops the peer's connection.
    const refusal = Exit.isFailure(exit) ? Cause.findErrorOption(exit.cause) : Option.none()
    if (Exit.isFailure(exit) && Option.isSome(refusal) && isHostile(refusal.value)) {
      if (answer) reply(encodeFailure(id, exit.cause, ctx.warn))
      const message = (refusal.value as { message?: unknown }).message
      ctx.warn(`refused a hostile message from ${from}: ${typeof message === "string" ? message : "malformed"}`)
      hostile?.(typeof message === "string" ? message : "malformed")
      return
    }
    if (!answer) {
      if (Exit.isFailure(exit) && !Cause.hasInterruptsOnly(exit.cause)) ctx.warn(`one-way message from ${from} failed: ${Cause.pretty(exit.cause)}`)
      return
    }
    if (Exit.isSuccess(exit)) return reply(encodeResponse(id, exit.value, ctx.maxFrameBytes))
    if (Cause.hasInterruptsOnly(exit.cause) && ctx.gone()) return
    reply(encodeFailure(id, exit.cause, ctx.warn))
  })
}

/** The answer to request `id`, or an err frame when the value cannot be sent. */
export const encodeResponse = (id: number, value: unknown, maxFrameBytes: number): Uint8Array => {
  let bytes: Uint8Array
  try {
    bytes = encodeFrame({ k: "res", id, p: value })
  } catch (e) {
    return encodeFrame({ k: "err", id, code: "bad_response", message: `the response is not msgpack-able: ${(e as Error)?.message ?? e}` })
  }
  if (bodyBytes(bytes) <= maxFrameBytes) return bytes
  return encodeFrame({ k: "err", id, code: "too_large", message: `the response of ${bodyBytes(bytes)} bytes is over the frame limit of ${maxFrameBytes}` })
}

const codeOf = (e: unknown): string => {
  const o = e as { code?: unknown; _tag?: unknown } | null | undefined
  if (typeof o?.code === "string") return o.code
  if (typeof o?._tag === "string") return o._tag
  return "error"
}

/** The err frame for a failed handler; defects are logged and not described to the peer. */
export const encodeFailure = (id: number, cause: Cause.Cause<unknown>, warn: (m: string) => void): Uint8Array => {
  const error = Cause.findErrorOption(cause)
  if (Option.isSome(error)) {
    const e = error.value as { message?: unknown } | null | undefined
    const message = typeof e?.message === "string" ? e.message : String(error.value)
    return encodeFrame({ k: "err", id, code: codeOf(error.value), message })
  }
  warn(`request handler died: ${Cause.pretty(cause)}`)
  return encodeFrame({ k: "err", id, code: "defect", message: "the handler failed unexpectedly; see the node's log" })
}

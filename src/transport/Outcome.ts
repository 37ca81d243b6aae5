/**
 * How a request to a peer ended, as the plain callbacks under both transport layers see it.
 * Each layer settles a request once with an Outcome; its Effect call (`request`) and its
 * Promise call (`requestNow`, the request path's plain lane) are both built on that.
 */
import { Effect } from "effect"
import type { TransportError } from "./TransportError.ts"

/** How a request ended, for the plain callbacks under both layers' Effect and Promise calls. */
export type Outcome =
  | { readonly ok: true; readonly value: unknown }
  /** `defect`: the message could not be encoded at all (a bug in the caller), not a transport failure. */
  | { readonly ok: false; readonly error: unknown; readonly defect?: boolean }

export const succeeded = (value: unknown): Outcome => ({ ok: true, value })
export const failed = (error: TransportError): Outcome => ({ ok: false, error })
/** The outcome as an Effect: a value, a TransportError, or a defect. */
export const fromOutcome = (o: Outcome): Effect.Effect<unknown, TransportError> =>
  o.ok ? Effect.succeed(o.value) : o.defect === true ? Effect.die(o.error) : Effect.fail(o.error as TransportError)

/** Starts a message with a callback for its outcome; returns a canceller, or undefined once settled at once. */
export type Start = (resume: (o: Outcome) => void) => (() => void) | undefined

/** A started message as an Effect; interrupting it runs the canceller. */
export const asEffect = (start: Start): Effect.Effect<unknown, TransportError> =>
  Effect.callback<unknown, TransportError>((resume) => {
    const cancel = start((o) => resume(fromOutcome(o)))
    return cancel === undefined ? undefined : Effect.sync(cancel)
  })

/** A started message as a Promise: the value, or a rejection with the error (it cannot be cancelled). */
export const asPromise = (start: Start): Promise<unknown> =>
  new Promise((resolve, reject) => void start((o) => (o.ok ? resolve(o.value) : reject(o.error))))

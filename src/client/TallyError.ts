/**
 * What a TallyClient call fails with: one error class whose `code` is the node's error code
 * from the registry (src/ErrorCodes.ts, the same codes docs/api.md lists), or one of the client's
 * own for what no node said: `unreachable`, `bad_answer`, `unresolved_siblings`. Whether a
 * code is worth retrying on another node follows from its status in the registry.
 */
import { errorCodes, type ErrorCode } from "../ErrorCodes.ts"

/** The client's own codes: no node answered; an answer not as CONTRACT.md says; siblings without a resolver. */
export type ClientErrorCode = "unreachable" | "bad_answer" | "unresolved_siblings"

/** Every code a TallyError may carry. */
export type TallyErrorCode = ErrorCode | ClientErrorCode

/** One failed attempt, for `unreachable` and for retries that ran out. */
export interface Attempt {
  readonly node: string
  /** The error code, or what went wrong on the connection. */
  readonly reason: string
}

/** Whether a node's error code is worth another node or another try: 503s and 504s. */
export const isRetryableCode = (code: string): boolean => {
  const entry = (errorCodes as Readonly<Record<string, { readonly status: number } | undefined>>)[code]
  return entry !== undefined && (entry.status === 503 || entry.status === 504)
}

/** Whether `code` is one of the registry's. */
export const isErrorCode = (code: string): code is ErrorCode => Object.hasOwn(errorCodes, code)

/** A failed Tally call. */
export class TallyError extends Error {
  override readonly name = "TallyError"
  /** The registry's code (the node's `error` field), or the client's own. */
  readonly code: TallyErrorCode
  /** The HTTP status of the last answer, when a node answered. */
  readonly status: number | undefined
  /** The node whose answer (or silence) this is. */
  readonly node: string | undefined
  /** `quorum_not_met`: how many replicas were needed and how many answered. */
  readonly needed: number | undefined
  readonly got: number | undefined
  /** Every attempt this call made, in order, when it tried more than one. */
  readonly attempts: ReadonlyArray<Attempt>

  constructor(fields: {
    readonly code: TallyErrorCode
    readonly message: string
    readonly status?: number | undefined
    readonly node?: string | undefined
    readonly needed?: number | undefined
    readonly got?: number | undefined
    readonly attempts?: ReadonlyArray<Attempt> | undefined
  }) {
    super(fields.message)
    this.code = fields.code
    this.status = fields.status
    this.node = fields.node
    this.needed = fields.needed
    this.got = fields.got
    this.attempts = fields.attempts ?? []
  }

  /** Whether trying again (on another node, a little later) may succeed. */
  get retryable(): boolean {
    return this.code === "unreachable" || isRetryableCode(this.code)
  }

  /** `e` is a TallyError, with `code` if given: `if (TallyError.is(e, "quorum_not_met")) e.needed`. */
  static is<C extends TallyErrorCode>(e: unknown, code?: C): e is TallyError & { readonly code: C } {
    return e instanceof TallyError && (code === undefined || e.code === code)
  }
}

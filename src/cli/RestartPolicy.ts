/**
 * When `tally cluster` restarts a node that died: after 1 s, then twice as long each time
 * it dies again without having run a minute, up to 30 s; never again once it has died 5
 * times within a minute, since a node that crashes that often needs a person, not a loop.
 * Pure: the caller passes the clock's readings.
 */

/** The policy's numbers. */
export interface RestartLimits {
  /** Delay before the first restart; it doubles on each death in a row. */
  readonly baseDelayMs: number
  readonly maxDelayMs: number
  /** A run at least this long resets the doubling. */
  readonly stableMs: number
  /** Give up at this many deaths within `windowMs`. */
  readonly maxDeaths: number
  readonly windowMs: number
}

/** 1 s doubling to 30 s; a minute of running resets it; 5 deaths within a minute stop it. */
export const DEFAULT_LIMITS: RestartLimits = { baseDelayMs: 1_000, maxDelayMs: 30_000, stableMs: 60_000, maxDeaths: 5, windowMs: 60_000 }

/** What the policy remembers of one node's deaths. */
export interface RestartState {
  /** When it died, within the last window. */
  readonly deaths: ReadonlyArray<number>
  /** Deaths in a row without a stable run between them. */
  readonly streak: number
}

/** A node that has not died yet. */
export const initial: RestartState = { deaths: [], streak: 0 }

/** What to do about a death. */
export type Decision =
  | { readonly _tag: "Restart"; readonly delayMs: number }
  | { readonly _tag: "GiveUp"; readonly deaths: number; readonly windowMs: number }

/** The decision for a node started at `startedAt` that died at `diedAt`, and the state to keep. */
export const onDeath = (
  state: RestartState,
  run: { readonly startedAt: number; readonly diedAt: number },
  limits: RestartLimits = DEFAULT_LIMITS
): { readonly state: RestartState; readonly decision: Decision } => {
  const deaths = [...state.deaths.filter((t) => run.diedAt - t < limits.windowMs), run.diedAt]
  const streak = (run.diedAt - run.startedAt >= limits.stableMs ? 0 : state.streak) + 1
  const next = { deaths, streak }
  if (deaths.length >= limits.maxDeaths) return { state: next, decision: { _tag: "GiveUp", deaths: deaths.length, windowMs: limits.windowMs } }
  const delayMs = Math.min(limits.maxDelayMs, limits.baseDelayMs * 2 ** (streak - 1))
  return { state: next, decision: { _tag: "Restart", delayMs } }
}

/** A delay as people say it: "1 s", "0.25 s", "30 s". */
export const formatDelay = (ms: number): string => `${Number((ms / 1000).toFixed(3))} s`

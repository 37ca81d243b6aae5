/**
 * Waiting for a quorum of replica operations, as plain Promises and timers: a request runs
 * one task per replica, and a fiber each (with their race, timeout and join) cost more than
 * the replica's read itself. Timers are the global ones, which the simulator replaces.
 */

/** Tasks (by index) of which at least `needed` must succeed: one replica set's quorum. */
export interface QuorumGroup {
  readonly tasks: ReadonlyArray<number>
  readonly needed: number
}

/** How a wait for a quorum ended. */
export interface Quorate<A> {
  /** Successes when the wait ended, in the order they came (every group met if `ok`). */
  readonly results: ReadonlyArray<A>
  readonly ok: boolean
  readonly timedOut: boolean
  /** Per group, its tasks that had succeeded when the wait ended. */
  readonly counts: ReadonlyArray<number>
  /** Every success, once every task has settled. */
  readonly all: Promise<ReadonlyArray<A>>
}

/** A replica operation, started when called. */
export type Task<A> = () => Promise<A>

/** Starts `task`; a synchronous throw becomes a rejection. */
const start = <A>(task: Task<A>): Promise<A> => {
  try {
    return task()
  } catch (e) {
    return Promise.reject(e)
  }
}

/**
 * Runs `tasks` concurrently and resolves once every group has `needed` successes, or after
 * `timeoutMs`. Once some group can no longer be met, it still waits (within the timeout) for
 * the tasks in flight, so that a failure counts every replica that did acknowledge: a replica
 * known to be down fails at once, before a healthy one could answer. The tasks left running
 * go on in the background.
 */
export const awaitQuorum = <A>(tasks: ReadonlyArray<Task<A>>, groups: ReadonlyArray<QuorumGroup>, timeoutMs: number): Promise<Quorate<A>> =>
  new Promise((resolve) => {
    const state = new Array<"running" | "ok" | "failed">(tasks.length).fill("running")
    const results: A[] = []
    let settledTasks = 0
    let allDone: (all: ReadonlyArray<A>) => void = () => {}
    const all = new Promise<ReadonlyArray<A>>((r) => (allDone = r))
    let finished = false
    /** Whether the quorum is still undecided (a timeout then is `timedOut`), or hopeless and draining. */
    let deciding = true
    const count = (g: QuorumGroup, s: "ok" | "failed") => g.tasks.reduce((n, i) => n + (state[i] === s ? 1 : 0), 0)
    const met = () => groups.every((g) => count(g, "ok") >= g.needed)
    const hopeless = () => groups.some((g) => g.tasks.length - count(g, "failed") < g.needed)
    const finish = (timedOut: boolean) => {
      if (finished) return
      finished = true
      clearTimeout(timer)
      const ok = met()
      resolve({ results: [...results], ok, timedOut: timedOut && !ok, counts: groups.map((g) => count(g, "ok")), all })
    }
    const check = () => {
      if (settledTasks === tasks.length) allDone(results)
      if (finished) return
      if (met()) return finish(false)
      if (hopeless()) {
        deciding = false
        if (settledTasks === tasks.length) finish(false)
      }
    }
    const timer = setTimeout(() => finish(deciding), timeoutMs)
    for (let i = 0; i < tasks.length; i++) {
      start(tasks[i]!).then(
        (value) => {
          settledTasks++
          state[i] = "ok"
          results.push(value)
          check()
        },
        () => {
          settledTasks++
          state[i] = "failed"
          check()
        }
      )
    }
    check()
  })

/** The groups for tasks labelled by the node each stands for: per replica set, its tasks, and min(count, size). */
export const groupsOf = (sets: ReadonlyArray<ReadonlyArray<string>>, labels: ReadonlyArray<string>, count: number): QuorumGroup[] =>
  sets.map((set) => ({ tasks: labels.flatMap((l, i) => (set.includes(l) ? [i] : [])), needed: Math.min(count, set.length) }))

/** How long a replica operation may take before its hedge starts: a quarter of the timeout, 250 ms at most. */
export const hedgeDelayMs = (timeoutMs: number): number => Math.min(250, Math.floor(timeoutMs / 4))

/**
 * A replica operation with a hedge: if it has not succeeded within `hedgeDelayMs`, `backup`
 * (the fallback) runs too and the first success counts; it fails once both have. A silent
 * primary, partitioned away before the failure detector says so, then costs a fraction of
 * the request's timeout instead of all of it. The loser is not stopped: a hedge's copy that
 * lands anyway is one more hinted copy, delivered and merged like any other.
 */
export const hedged = <A>(task: Task<A>, backup: Task<A> | undefined, timeoutMs: number): Task<A> =>
  backup === undefined
    ? task
    : () =>
      new Promise<A>((resolve, reject) => {
        let done = false
        let failures = 0
        const ok = (value: A) => {
          if (done) return
          done = true
          clearTimeout(timer)
          resolve(value)
        }
        // Both must fail: a task that fails before the hedge's time still lets the hedge run then.
        const failed = (e: unknown) => {
          if (done || ++failures < 2) return
          done = true
          reject(e)
        }
        const timer = setTimeout(() => void start(backup).then(ok, failed), hedgeDelayMs(timeoutMs))
        start(task).then(ok, failed)
      })

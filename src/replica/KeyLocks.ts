/**
 * One writer per key at a time on this node: a read-modify-write of a key's versions must
 * not interleave with another, or one of the two writes would be lost. Waiters queue in
 * arrival order; an idle key costs nothing.
 */
import { Effect } from "effect"

/** Per-key mutual exclusion. */
export class KeyLocks {
  private readonly queues = new Map<string, Array<() => void>>()

  /** Number of keys currently locked. */
  get size(): number {
    return this.queues.size
  }

  private acquire(key: string): Effect.Effect<void> {
    return Effect.callback<void>((resume) => {
      const q = this.queues.get(key)
      if (q === undefined) {
        this.queues.set(key, [])
        resume(Effect.void)
        return
      }
      const go = () => resume(Effect.void)
      q.push(go)
      // Interrupted while waiting: leave the queue without taking the lock.
      return Effect.sync(() => {
        const i = q.indexOf(go)
        if (i >= 0) q.splice(i, 1)
      })
    })
  }

  /**
   * Takes the lock of `key` for a plain (non-Effect) caller: undefined when it was free and is
   * now held, else a promise that resolves once it is, in arrival order. Give it back with
   * `release`, whatever happens.
   */
  acquireNow(key: string): Promise<void> | undefined {
    const q = this.queues.get(key)
    if (q === undefined) {
      this.queues.set(key, [])
      return undefined
    }
    return new Promise<void>((resolve) => q.push(resolve))
  }

  /** Gives back the lock of `key`: the next waiter, if any, has it. */
  release(key: string): void {
    const q = this.queues.get(key)
    if (q === undefined) return
    const next = q.shift()
    if (next === undefined) this.queues.delete(key)
    else next()
  }

  /** Runs `effect` holding the lock of `key`. */
  with<A, E, R>(key: string, effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> {
    return Effect.acquireUseRelease(this.acquire(key), () => effect, () => Effect.sync(() => this.release(key)))
  }
}

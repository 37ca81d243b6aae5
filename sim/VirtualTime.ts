/**
 * A virtual event loop for the simulator: for the length of one run it replaces the global
 * timers (setTimeout, setInterval, setImmediate and their clears), the clocks (Date, Date.now,
 * performance.now, process.hrtime) and Math.random (a seeded generator), so that everything
 * in the process, Effect's scheduler and Clock included, runs on virtual time. Effect reads
 * these globals at call time (its Clock calls Date.now and setTimeout, its scheduler
 * globalThis.setImmediate, its Random Math.random), so no Effect layer has to be swapped.
 *
 * Virtual time moves only when the process is idle: after each task the loop waits for one
 * real setImmediate (saved before the globals are replaced), by which time every microtask and
 * nextTick the task caused has run; only then does it take the next task, advancing the clock
 * to that task's time if it lies ahead. Tasks run in (time, order scheduled) order, so a run
 * is a function of its seed. Why not @sinonjs/fake-timers: it is not installed here, and what
 * the simulator needs beyond it (idle detection with the saved real setImmediate, one run at a
 * time with a stall report, hrtime and performance.now on the same clock) is most of the code.
 */

import { prng } from "../engine/Prng.ts"

/** The real globals, saved when this module loads (before any run replaces them). */
const real = {
  setTimeout: globalThis.setTimeout,
  clearTimeout: globalThis.clearTimeout,
  setInterval: globalThis.setInterval,
  clearInterval: globalThis.clearInterval,
  setImmediate: globalThis.setImmediate,
  clearImmediate: globalThis.clearImmediate,
  Date: globalThis.Date,
  random: Math.random,
  performanceNow: performance.now,
  hrtime: process.hrtime
}

/** Waits until every microtask and nextTick queued so far, and those they queue, have run. */
export const realTurn = (): Promise<void> => new Promise((resolve) => real.setImmediate(resolve))

/** Wall time, unaffected by a run (for measuring the simulator itself). */
export const wallNow = (): number => real.Date.now()

interface Task {
  readonly id: number
  at: number
  seq: number
  /** The delay it was scheduled with (refresh restarts it). */
  readonly delay: number
  readonly fn: (...args: unknown[]) => void
  readonly args: unknown[]
  /** Repeat period (setInterval), or undefined. */
  readonly every: number | undefined
  cancelled: boolean
  /** In the queue now (a cancelled task stays there until popped or the queue is rebuilt). */
  queued: boolean
}

/** A handle as Node's timers return: ref/unref (no effect: a run ends when its main does), refresh. */
class VirtualTimer {
  task: Task
  private readonly loop: VirtualLoop
  constructor(task: Task, loop: VirtualLoop) {
    this.task = task
    this.loop = loop
  }
  ref(): this {
    return this
  }
  unref(): this {
    return this
  }
  hasRef(): boolean {
    return true
  }
  refresh(): this {
    if (!this.task.cancelled) this.task = this.loop.reschedule(this.task)
    return this
  }
  close(): this {
    this.loop.cancelTask(this.task)
    return this
  }
  [Symbol.toPrimitive](): number {
    return this.task.id
  }
}

/** Thrown when the run's main has not finished but nothing is left to run. */
export class Stalled extends Error {
  override readonly name = "Stalled"
}


/** What a run did. */
export interface LoopStats {
  /** Tasks (timer and immediate callbacks) run. */
  readonly tasks: number
  /** Virtual ms elapsed. */
  readonly virtualMs: number
}

/** Node clamps a timeout below 1 ms (or not a number) to 1 ms. */
const delayOf = (ms: unknown): number => {
  const n = Number(ms)
  return Number.isFinite(n) && n >= 1 ? Math.min(n, 2 ** 31 - 1) : 1
}

/** A binary heap of tasks by (at, seq). */
class Heap {
  private readonly items: Task[] = []
  get size(): number {
    return this.items.length
  }
  private less(a: Task, b: Task): boolean {
    return a.at < b.at || (a.at === b.at && a.seq < b.seq)
  }
  push(t: Task): void {
    const xs = this.items
    t.queued = true
    xs.push(t)
    let i = xs.length - 1
    while (i > 0) {
      const p = (i - 1) >> 1
      if (!this.less(xs[i]!, xs[p]!)) break
      ;[xs[i], xs[p]] = [xs[p]!, xs[i]!]
      i = p
    }
  }
  pop(): Task | undefined {
    const xs = this.items
    const top = xs[0]
    if (top !== undefined) top.queued = false
    const last = xs.pop()
    if (xs.length > 0 && last !== undefined) {
      xs[0] = last
      let i = 0
      for (;;) {
        const l = 2 * i + 1
        const r = l + 1
        let m = i
        if (l < xs.length && this.less(xs[l]!, xs[m]!)) m = l
        if (r < xs.length && this.less(xs[r]!, xs[m]!)) m = r
        if (m === i) break
        ;[xs[i], xs[m]] = [xs[m]!, xs[i]!]
        i = m
      }
    }
    return top
  }
  /** Drops the cancelled tasks (timeouts cleared long before they are due pile up otherwise). */
  compact(): void {
    const live = this.items.filter((t) => !t.cancelled)
    for (const t of this.items) if (t.cancelled) t.queued = false
    this.items.length = 0
    for (const t of live.sort((a, b) => a.at - b.at || a.seq - b.seq)) this.items.push(t)
  }
}

/** Where a run starts on the virtual wall clock: 2026-01-01T00:00:00Z. */
export const EPOCH_MS = 1_767_225_600_000

let active: VirtualLoop | undefined

/** One run's virtual time, randomness and task queue. */
export class VirtualLoop {
  private now = EPOCH_MS
  private seq = 0
  private nextId = 1
  private readonly queue = new Heap()
  private tasks = 0
  readonly random: () => number

  constructor(seed: number) {
    this.random = prng(seed ^ 0x9e3779b9)
  }

  /** Virtual wall time, ms (Date.now's: whole ms; timers may fall between). */
  nowMs(): number {
    return Math.floor(this.now)
  }

  private schedule(fn: (...args: unknown[]) => void, delay: number, args: unknown[], every: number | undefined): VirtualTimer {
    if (typeof fn !== "function") throw new TypeError("The \"callback\" argument must be of type function")
    const task: Task = { id: this.nextId++, at: this.now + delay, seq: this.seq++, delay, fn, args, every, cancelled: false, queued: false }
    this.queue.push(task)
    return new VirtualTimer(task, this)
  }

  /** Timeout.refresh: the task again, its delay counted from now (the old entry is dropped). */
  reschedule(task: Task): Task {
    this.cancelTask(task)
    const next: Task = { ...task, at: this.now + task.delay, seq: this.seq++, cancelled: false, queued: false }
    this.queue.push(next)
    return next
  }

  private cancelled = 0

  /** Cancels a task (clearTimeout and the like). */
  cancelTask(task: Task): void {
    if (task.cancelled) return
    task.cancelled = true
    if (!task.queued) return
    // A sorted array is a heap: rebuilding when most of the queue is dead keeps pops cheap.
    if (++this.cancelled > 1024 && this.cancelled * 2 > this.queue.size) {
      this.queue.compact()
      this.cancelled = 0
    }
  }

  private cancel(handle: unknown): void {
    if (handle instanceof VirtualTimer) this.cancelTask(handle.task)
  }

  /** Replaces the globals with this loop's. */
  private install(): void {
    const loop = this
    const g = globalThis as Record<string, unknown>
    g.setTimeout = (fn: (...a: unknown[]) => void, ms?: number, ...args: unknown[]) => loop.schedule(fn, delayOf(ms), args, undefined)
    g.setInterval = (fn: (...a: unknown[]) => void, ms?: number, ...args: unknown[]) => loop.schedule(fn, delayOf(ms), args, delayOf(ms))
    g.setImmediate = (fn: (...a: unknown[]) => void, ...args: unknown[]) => loop.schedule(fn, 0, args, undefined)
    g.clearTimeout = g.clearInterval = g.clearImmediate = (h: unknown) => loop.cancel(h)
    const RealDate = real.Date
    class VirtualDate extends RealDate {
      constructor(...args: unknown[]) {
        if (args.length === 0) super(Math.floor(loop.now))
        else super(...(args as [number]))
      }
      static override now(): number {
        return Math.floor(loop.now)
      }
    }
    g.Date = VirtualDate
    Math.random = loop.random
    performance.now = () => loop.now - EPOCH_MS
    const hrtime = ((prev?: [number, number]) => {
      const ns = BigInt(Math.round((loop.now - EPOCH_MS) * 1_000_000))
      const s = Number(ns / 1_000_000_000n)
      const n = Number(ns % 1_000_000_000n)
      if (prev === undefined) return [s, n]
      const ds = s - prev[0]
      const dn = n - prev[1]
      return dn < 0 ? [ds - 1, dn + 1e9] : [ds, dn]
    }) as typeof process.hrtime
    hrtime.bigint = () => BigInt(Math.round((loop.now - EPOCH_MS) * 1_000_000))
    process.hrtime = hrtime
  }

  private uninstall(): void {
    const g = globalThis as Record<string, unknown>
    g.setTimeout = real.setTimeout
    g.clearTimeout = real.clearTimeout
    g.setInterval = real.setInterval
    g.clearInterval = real.clearInterval
    g.setImmediate = real.setImmediate
    g.clearImmediate = real.clearImmediate
    g.Date = real.Date
    Math.random = real.random
    performance.now = real.performanceNow
    process.hrtime = real.hrtime
  }

  /**
   * Runs `main` on virtual time: resolves with its result once it settles, or rejects with
   * Stalled when nothing is left to run before it does, or when virtual time passes
   * `maxVirtualMs`. The globals are the real ones again when this returns. One run at a time.
   */
  async run<A>(main: () => Promise<A>, maxVirtualMs = 24 * 3600_000): Promise<A> {
    if (active !== undefined) throw new Error("a simulation is already running in this process")
    active = this
    this.install()
    let settled = false
    let value: A | undefined
    let failure: { readonly e: unknown } | undefined
    try {
      main().then((v) => {
        settled = true
        value = v
      }, (e: unknown) => {
        settled = true
        failure = { e }
      })
      const limit = this.now + maxVirtualMs
      for (;;) {
        await realTurn()
        if (settled) break
        const task = this.queue.pop()
        if (task === undefined) throw new Stalled(`the simulation stalled at virtual ${this.now - EPOCH_MS} ms: nothing left to run, and the run has not finished`)
        if (task.cancelled) {
          this.cancelled = Math.max(0, this.cancelled - 1)
          continue
        }
        if (task.at > this.now) this.now = task.at
        if (this.now > limit) throw new Stalled(`the simulation ran past ${maxVirtualMs} virtual ms without finishing`)
        this.tasks++
        if (task.every !== undefined) {
          // The same task again (its handle cancels it): popped, so it may be pushed back.
          task.at = this.now + task.every
          task.seq = this.seq++
          this.queue.push(task)
        }
        task.fn(...task.args)
      }
    } finally {
      this.uninstall()
      active = undefined
    }
    if (failure !== undefined) throw failure.e
    return value as A
  }

  stats(): LoopStats {
    return { tasks: this.tasks, virtualMs: this.now - EPOCH_MS }
  }
}

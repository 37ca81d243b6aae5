/**
 * Timing and memory helpers for the perf scripts: fixed-time loops (synchronous, sequential
 * async, a pool of c concurrent async loops, and a paced load with latency percentiles),
 * garbage collection, temp directories, and a plain-text table.
 */
import { execFileSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { setImmediate as tick } from "node:timers/promises"

/** What every store run is given. */
export interface RunOptions {
  /** Keys loaded before reads: keyOf(0 .. keys-1). Durable writes then add keyOf(keys ..). */
  readonly keys: number
  readonly writeMs: number
  readonly readMs: number
  readonly warmMs: number
  /** Uniform random keys of the loaded set; length a power of two. */
  readonly readKeys: ReadonlyArray<string>
  readonly concurrency: ReadonlyArray<number>
}

/** Runs a full garbage collection (twice, with a turn between for finalizers). */
export const settle = async (): Promise<void> => {
  const gc = (globalThis as { gc?: () => void }).gc
  if (gc === undefined) throw new Error("run with node --expose-gc (npm run bench:engine)")
  gc()
  await tick()
  gc()
}

/**
 * Lets the disk and the heap go quiet before the next measurement: sync(1) writes back every
 * dirty page and commits the file system's journal (on a file system mounted with
 * `discard`, that includes discarding the blocks of the directories just removed, which
 * would otherwise slow the next measurement's fdatasyncs), then a full GC. Failing to
 * run sync(1) is not an error: the GC still runs.
 */
export const quiesce = async (): Promise<void> => {
  try {
    execFileSync("sync", { stdio: "ignore" })
  } catch {
    // no sync(1) on this machine
  }
  await settle()
}

/** A fresh directory under os.tmpdir(); `remove` deletes it and everything in it. */
export const tempDir = (prefix: string) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `tally-perf-${prefix}-`))
  return { dir, remove: () => fs.rmSync(dir, { recursive: true, force: true }) }
}

/** Operations per second of a synchronous `op(i)` called in a loop for `ms`. */
export const syncRate = (ms: number, op: (i: number) => void): number => {
  let i = 0
  const t0 = performance.now()
  const end = t0 + ms
  let now = t0
  while (now < end) {
    for (let j = 0; j < 256; j++) op(i++)
    now = performance.now()
  }
  return i / ((now - t0) / 1000)
}

/** Operations per second of `op(i)` awaited one after another for `ms`; `op` returns how many operations it did. */
export const serialRate = async (ms: number, op: (i: number) => Promise<number>): Promise<number> => {
  let ops = 0
  let i = 0
  const t0 = performance.now()
  const end = t0 + ms
  let now = t0
  while (now < end) {
    ops += await op(i++)
    now = performance.now()
  }
  return ops / ((now - t0) / 1000)
}

/** A rate and its spread: the slowest and fastest whole second of the run. */
export interface Throughput {
  readonly perSecond: number
  readonly slowestSecond: number
  readonly fastestSecond: number
}

/** Counts completions, remembering the rate of each whole second. */
export class Meter {
  done = 0
  private readonly t0 = performance.now()
  private mark = this.t0
  private markDone = 0
  private readonly slices: number[] = []

  hit(): void {
    this.done++
    const now = performance.now()
    if (now - this.mark >= 1000) {
      this.slices.push((this.done - this.markDone) / ((now - this.mark) / 1000))
      this.mark = now
      this.markDone = this.done
    }
  }

  result(): Throughput {
    const perSecond = this.done / ((performance.now() - this.t0) / 1000)
    const s = this.slices.length > 0 ? this.slices : [perSecond]
    return { perSecond, slowestSecond: Math.min(...s), fastestSecond: Math.max(...s) }
  }
}

/**
 * `c` async loops, each awaiting `op()` until `ms` have passed: c operations outstanding at
 * a time. Counts every completed operation, over the time until the last one completes.
 */
export const poolRate = async (c: number, ms: number, op: () => PromiseLike<unknown>): Promise<Throughput> => {
  const meter = new Meter()
  const end = performance.now() + ms
  const loop = async () => {
    while (performance.now() < end) {
      await op()
      meter.hit()
    }
  }
  await Promise.all(Array.from({ length: c }, loop))
  return meter.result()
}

/** Latency percentiles of a paced run, ms, measured from each operation's scheduled start. */
export interface Latency {
  /** Operations per second offered (the schedule) and completed. */
  readonly offered: number
  readonly achieved: number
  readonly count: number
  readonly seconds: number
  readonly p50: number
  readonly p90: number
  readonly p99: number
  readonly p999: number
  readonly max: number
}

/** The `p` quantile (0..1) of ascending `sorted`: the smallest value with at least p of them at or below it. */
export const quantile = (sorted: Float64Array, p: number): number =>
  sorted.length === 0 ? Number.NaN : sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1))]!

/**
 * A fixed offered load: `clients` loops, together starting `rate` operations per second on a
 * fixed schedule (client i's k-th at t0 + (i + k * clients) / rate), each awaiting its own
 * operation before the next. Latency is measured from the scheduled start, not from the
 * moment the operation was issued, so a client held up by a slow operation or a blocked event
 * loop counts the wait of every operation it starts late (no coordinated omission). The wait
 * for a start time spins on setImmediate instead of a timer, whose 1 ms granularity would
 * add up to 1 ms to every latency. The schedule runs for `ms`, and on while `more()` holds.
 */
export const pacedLatency = async (clients: number, rate: number, ms: number, op: () => PromiseLike<unknown>, more: () => boolean = () => false): Promise<Latency> => {
  const interval = (1000 * clients) / rate
  const samples: number[] = []
  const t0 = performance.now() + 1
  const end = t0 + ms
  let last = t0
  const loop = async (i: number) => {
    for (let slot = t0 + (i * interval) / clients; slot < end || more(); slot += interval) {
      while (performance.now() < slot) await tick()
      await op()
      const now = performance.now()
      samples.push(now - slot)
      if (now > last) last = now
    }
  }
  await Promise.all(Array.from({ length: clients }, (_, i) => loop(i)))
  const sorted = Float64Array.from(samples).sort()
  const n = sorted.length
  return {
    offered: rate,
    achieved: n / ((last - t0) / 1000),
    count: n,
    seconds: (last - t0) / 1000,
    p50: quantile(sorted, 0.5),
    p90: quantile(sorted, 0.9),
    p99: quantile(sorted, 0.99),
    p999: quantile(sorted, 0.999),
    max: sorted[n - 1] ?? Number.NaN
  }
}

/** Middle value. */
export const median = (xs: ReadonlyArray<number>): number => {
  const s = [...xs].sort((a, b) => a - b)
  return s.length % 2 === 1 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2
}

/** A number for a table: thousands separated, `digits` decimals. */
export const fmt = (x: number | undefined, digits = 0): string =>
  x === undefined || Number.isNaN(x) ? "-" : x.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits })

/** Renders rows as an aligned text table; the first row is the header. Numbers-looking cells align right. */
export const table = (rows: ReadonlyArray<ReadonlyArray<string>>): string => {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => (r[c] ?? "").length)))
  const numeric = /^[-\d.,x%]+$/
  const line = (r: ReadonlyArray<string>) =>
    r.map((cell, c) => (c > 0 && numeric.test(cell) ? cell.padStart(widths[c]!) : cell.padEnd(widths[c]!))).join("  ").trimEnd()
  const sep = widths.map((w) => "-".repeat(w)).join("  ")
  return [line(rows[0]!), sep, ...rows.slice(1).map(line)].join("\n")
}

/** Logs a progress line to stderr, so stdout keeps only the report. */
export const progress = (msg: string): void => {
  process.stderr.write(`[${new Date().toISOString().slice(11, 19)}] ${msg}\n`)
}

/**
 * Put latency under background work, for perf/engine.ts: the same fixed offered load of
 * durable puts (`Engine.put`, `fsync: "batch"`, overwrites of uniformly random keys of a
 * preloaded set) measured three times on one data directory, in one process:
 *
 *   1. idle: default 64 MiB segments, the active segment a preallocated spare with room for
 *      the whole run, nothing in the background (no rotation, no compaction);
 *   2. rotating: small segments (`maxSegmentBytes` of SEGMENT_BYTES), so the log seals a
 *      segment and switches to the spare every few hundred milliseconds (each rotation makes
 *      a new preallocated spare, trims the sealed segment and writes its hint);
 *   3. compacting and rotating: the same, while a full compaction (`compact({ full: true })`)
 *      rewrites every sealed segment; the run lasts until the first compaction has finished
 *      (at least as long as the others), and further compactions start if it is done early.
 *
 * The data set is `keys` keys written, then the first half of them written again (so the
 * compaction has dead records to drop), all through small segments: hundreds of sealed ones.
 * Also recorded per phase: the event loop's delay (perf_hooks, 1 ms resolution; the load
 * spins on setImmediate, so this measures how long synchronous work held the loop).
 */
import { monitorEventLoopDelay } from "node:perf_hooks"
import { Effect } from "effect"
import { Engine, type EngineConfig } from "../../engine/Engine.ts"
import { keyOf, uniform, valueOf } from "./data.ts"
import { pacedLatency, progress, quiesce, tempDir, type Latency } from "./measure.ts"
import { appendRange } from "./tally.ts"

/** Segment size of the rotating and compacting phases. */
export const SEGMENT_BYTES = 2 * 1024 * 1024

/** What the latency runs are given. */
export interface LatencyOptions {
  /** Keys preloaded (then half of them overwritten). */
  readonly keys: number
  /** Concurrent clients of the paced load. */
  readonly clients: number
  /** Puts per second offered by all clients together. */
  readonly rate: number
  /** Length of the idle and rotating runs, and the least length of the compacting one. */
  readonly ms: number
}

/** One phase's latencies and what happened in the background meanwhile. */
export interface LatencyPhase extends Latency {
  readonly rotations: number
  readonly compactions: number
  /** Length of the first compaction, ms (NaN if none ran). */
  readonly firstCompactionMs: number
  /** Share of the run during which a compaction was in flight. */
  readonly compactingShare: number
  readonly compactedBytes: number
  /** Event-loop delay, ms. */
  readonly loopDelayP99: number
  readonly loopDelayMax: number
  /** The log's group commits during the run: how many records each carried, how long its fdatasync took. */
  readonly recordsPerFsync: number
  readonly fsyncMs: number
}

/** Everything measured. */
export interface LatencyResult {
  readonly keys: number
  readonly clients: number
  readonly rate: number
  readonly segmentBytes: number
  readonly sealedSegments: number
  readonly idle: LatencyPhase
  readonly rotating: LatencyPhase
  readonly compacting: LatencyPhase
}

type EngineService = Engine["Service"]

const withEngine = <A>(config: EngineConfig, f: (e: EngineService) => Promise<A>): Promise<A> =>
  Effect.runPromise(Effect.scoped(Effect.provide(
    Effect.gen(function*() {
      const e = yield* Engine
      return yield* Effect.promise(() => f(e))
    }),
    Engine.layer(config)
  )))

/** Background work run alongside a phase: `more` keeps the load going; `intervals` are its busy times. */
interface Background {
  readonly more: () => boolean
  readonly finished: Promise<{ readonly compactions: number; readonly firstCompactionMs: number; readonly compactedBytes: number; readonly intervals: ReadonlyArray<readonly [number, number]> }>
}

/** Runs the paced load on `e`, counting rotations, with `background` started alongside (told when the load stopped). */
const phase = async (e: EngineService, o: LatencyOptions, pick: (n: number) => number, background?: (stopped: () => boolean) => Background): Promise<LatencyPhase> => {
  const log = e.log
  let active = log.active
  let rotations = 0
  const put = () => {
    const k = pick(o.keys)
    return Effect.runPromise(e.put(keyOf(k), 0, valueOf(k))).then(() => {
      if (log.active !== active) {
        active = log.active
        rotations++
      }
    })
  }
  let stopped = false
  const h = monitorEventLoopDelay({ resolution: 1 })
  h.enable()
  const s0 = log.snapshotStats()
  const t0 = performance.now()
  const bg = background?.(() => stopped)
  const lat = await pacedLatency(o.clients, o.rate, o.ms, put, bg?.more)
  const t1 = performance.now()
  const s1 = log.snapshotStats()
  h.disable()
  stopped = true
  const b = bg === undefined ? { compactions: 0, firstCompactionMs: Number.NaN, compactedBytes: 0, intervals: [] } : await bg.finished
  const busy = b.intervals.reduce((n, [from, to]) => n + Math.max(0, Math.min(to, t1) - Math.max(from, t0)), 0)
  await log.settle()
  return {
    ...lat, rotations, compactions: b.compactions, firstCompactionMs: b.firstCompactionMs, compactedBytes: b.compactedBytes,
    compactingShare: busy / (t1 - t0), loopDelayP99: h.percentile(99) / 1e6, loopDelayMax: h.max / 1e6,
    recordsPerFsync: (s1.records - s0.records) / Math.max(1, s1.fsyncs - s0.fsyncs),
    fsyncMs: ((s1.fsyncSeconds - s0.fsyncSeconds) * 1000) / Math.max(1, s1.fsyncs - s0.fsyncs)
  }
}

/** Full compactions back to back until the load has stopped; the load runs at least until the first is done. */
const compactions = (e: EngineService) => (stopped: () => boolean): Background => {
  let running = true
  const t0 = performance.now()
  let first = Number.NaN
  let n = 0
  let bytes = 0
  const intervals: Array<readonly [number, number]> = []
  const finished = (async () => {
    do {
      const c0 = performance.now()
      const r = await Effect.runPromise(e.compact({ full: true }))
      intervals.push([c0, performance.now()])
      if (r !== undefined) {
        n++
        bytes += r.bytesBefore
      }
      if (Number.isNaN(first)) {
        first = performance.now() - t0
        running = false
      }
    } while (!stopped())
    return { compactions: n, firstCompactionMs: first, compactedBytes: bytes, intervals }
  })()
  return { more: () => running, finished }
}

/** Puts with `c` outstanding until `done()` (checked before each), or `ms` pass. */
const putUntil = async (e: EngineService, keys: number, pick: (n: number) => number, c: number, ms: number, done: () => boolean) => {
  const end = performance.now() + ms
  const loop = async () => {
    while (!done() && performance.now() < end) {
      const k = pick(keys)
      await Effect.runPromise(e.put(keyOf(k), 0, valueOf(k)))
    }
  }
  await Promise.all(Array.from({ length: c }, loop))
}

/** Runs the three phases on a fresh directory, removed afterwards. */
export const runLatency = async (o: LatencyOptions): Promise<LatencyResult> => {
  const tmp = tempDir("latency")
  const small: EngineConfig = { dir: tmp.dir, fsync: "batch", compactionIntervalMs: 0, maxSegmentBytes: SEGMENT_BYTES }
  const pick = uniform(7)
  try {
    progress(`latency: loading ${o.keys} keys (+ ${Math.floor(o.keys / 2)} overwrites) in ${SEGMENT_BYTES / 1024 / 1024} MiB segments`)
    const sealedSegments = await withEngine(small, async (e) => {
      await appendRange(e.log, 0, o.keys, 4096)
      await appendRange(e.log, 0, Math.floor(o.keys / 2), 4096)
      await e.log.settle()
      return e.log.segments.size - 1
    })
    await quiesce()

    progress(`latency: idle, ${o.clients} clients offering ${o.rate} puts/s`)
    const idle = await withEngine({ dir: tmp.dir, fsync: "batch", compactionIntervalMs: 0 }, async (e) => {
      // Fill the segment the open made (not preallocated) until the log moves to its
      // preallocated spare, then let the sealing finish: the run sees a quiet log.
      const first = e.log.active
      await putUntil(e, o.keys, pick, 64, 60_000, () => e.log.active !== first)
      if (e.log.active === first) throw new Error("latency: no rotation within 60 s")
      await e.log.settle()
      await quiesce()
      return phase(e, o, pick)
    })
    await quiesce()

    const [rotating, compacting] = await withEngine(small, async (e) => {
      progress(`latency: rotating every ${SEGMENT_BYTES / 1024 / 1024} MiB, ${o.clients} clients offering ${o.rate} puts/s`)
      await pacedLatency(o.clients, o.rate, 500, () => {
        const k = pick(o.keys)
        return Effect.runPromise(e.put(keyOf(k), 0, valueOf(k)))
      })
      await e.log.settle()
      await quiesce()
      const rotating = await phase(e, o, pick)
      await quiesce()
      progress(`latency: rotating while a full compaction runs over ${e.log.segments.size - 1} sealed segments`)
      const compacting = await phase(e, o, pick, compactions(e))
      return [rotating, compacting] as const
    })
    return { keys: o.keys, clients: o.clients, rate: o.rate, segmentBytes: SEGMENT_BYTES, sealedSegments, idle, rotating, compacting }
  } finally {
    tmp.remove()
  }
}

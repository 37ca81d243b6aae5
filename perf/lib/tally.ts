/**
 * Tally's side of perf/engine.ts: load a fresh engine (measuring its index memory), reopen
 * it from hint files and from a full scan, then random reads and durable writes through the
 * Engine service and through the plain Log.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { Effect, Option } from "effect"
import { Engine } from "../../engine/Engine.ts"
import { nodeFilesApi } from "../../engine/Files.ts"
import { defaultLogConfig, Log, type Written } from "../../engine/Log.ts"
import { RecordType } from "../../engine/Record.ts"
import { KEY_BYTES, keyOf, stringBytes, valueOf } from "./data.ts"
import { median, Meter, poolRate, progress, settle, syncRate, tempDir, type RunOptions, type Throughput } from "./measure.ts"

/** Start-up figures of one reopen. */
export interface Startup {
  readonly ms: number
  readonly keys: number
  readonly keysPerSecond: number
}

/** A durable-write case: its rate, the average records per fdatasync and how long one took. */
export interface WriteCase extends Throughput {
  readonly recordsPerFsync: number
  readonly fsyncMs: number
}

/** Everything measured on Tally. */
export interface TallyResult {
  readonly loadPerSecond: number
  readonly segments: number
  readonly heapBytesPerKey: number
  readonly arrayBufferBytesPerKey: number
  readonly keyStringBytes: number
  readonly indexBytesPerKey: number
  readonly rssBytesPerKey: number
  readonly startupHints: Startup
  readonly startupScan: Startup
  readonly reads: number
  readonly readsEffect: number
  readonly puts: Record<number, WriteCase>
  readonly appends: Record<number, WriteCase>
}

const config = (dir: string) => ({ dir, fsync: "batch" as const, compactionIntervalMs: 0 })

/** Appends keys [from, to) through the plain log with `window` appends outstanding. */
export const appendRange = (log: Log, from: number, to: number, window: number) =>
  new Promise<void>((resolve, reject) => {
    let next = from
    let inflight = 0
    let failed = false
    const done = (err: unknown) => {
      if (err !== undefined) {
        failed = true
        return reject(err)
      }
      inflight--
      pump()
    }
    const pump = () => {
      while (!failed && inflight < window && next < to) {
        const i = next++
        inflight++
        log.append(RecordType.Put, keyOf(i), 0, valueOf(i), undefined, done)
      }
      if (inflight === 0 && next >= to) resolve()
    }
    pump()
  })

const appendOne = (log: Log, key: string, value: Uint8Array) =>
  new Promise<Written>((resolve, reject) =>
    log.append(RecordType.Put, key, 0, value, undefined, (err, w) => (err !== undefined ? reject(err) : resolve(w!)))
  )

const reopen = async (dir: string): Promise<Startup> => {
  const log = Log.open(nodeFilesApi, { ...defaultLogConfig, dir })
  const s = log.snapshotStats()
  await log.close()
  const keys = s.startupKeysFromHints + s.startupKeysFromScans
  return { ms: s.startupMs, keys, keysPerSecond: keys / (s.startupMs / 1000) }
}

/** Runs every Tally measurement on a fresh data directory, removed afterwards. */
export const runTally = async (o: RunOptions): Promise<TallyResult> => {
  const tmp = tempDir("tally")
  try {
    // 1. Load a fresh engine, measuring memory before and after.
    progress(`tally: loading ${o.keys} keys`)
    const loaded = await Effect.runPromise(Effect.scoped(Effect.provide(
      Effect.gen(function*() {
        const e = yield* Engine
        yield* Effect.promise(settle)
        const m0 = process.memoryUsage()
        const t0 = performance.now()
        yield* Effect.promise(() => appendRange(e.log, 0, o.keys, 4096))
        const loadPerSecond = o.keys / ((performance.now() - t0) / 1000)
        yield* Effect.promise(settle)
        const m1 = process.memoryUsage()
        if (e.log.index.size !== o.keys) throw new Error(`expected ${o.keys} keys, index has ${e.log.index.size}`)
        return { loadPerSecond, m0, m1, segments: e.log.segments.size }
      }),
      Engine.layer(config(tmp.dir))
    )))
    const n = o.keys
    const heapBytesPerKey = (loaded.m1.heapUsed - loaded.m0.heapUsed) / n
    const arrayBufferBytesPerKey = (loaded.m1.arrayBuffers - loaded.m0.arrayBuffers) / n
    const keyStringBytes = stringBytes(KEY_BYTES)
    await settle()

    // 2. Start-up: from hint files (written by the clean close), then from a full scan.
    progress("tally: reopening from hints")
    const hints: Startup[] = []
    for (let i = 0; i < 3; i++) {
      hints.push(await reopen(tmp.dir))
      await settle()
    }
    progress("tally: reopening by full scan")
    const scans: Startup[] = []
    for (let i = 0; i < 2; i++) {
      for (const f of fs.readdirSync(tmp.dir)) if (f.endsWith(".hint")) fs.rmSync(path.join(tmp.dir, f))
      scans.push(await reopen(tmp.dir))
      await settle()
    }
    const pick = (xs: Startup[]) => xs.find((x) => x.ms === median(xs.map((y) => y.ms))) ?? xs[0]!
    await settle()

    // 3. Reads, then durable writes of new keys.
    const measured = await Effect.runPromise(Effect.scoped(Effect.provide(
      Effect.gen(function*() {
        const e = yield* Engine
        const log = e.log
        // The open starts making a preallocated spare segment (64 MiB of zeros, then
        // fdatasync) in the background; let it finish so it does not share the reads' time.
        yield* Effect.promise(() => log.settle())
        const keys = o.readKeys
        const mask = keys.length - 1
        let misses = 0
        let bytes = 0
        progress("tally: reads")
        const readOnce = (i: number) => {
          const en = log.read(keys[i & mask]!)
          if (en === undefined) misses++
          else bytes += en.value.length
        }
        syncRate(o.warmMs, readOnce)
        const reads = syncRate(o.readMs, readOnce)
        const readEffect = (i: number) => {
          const en = Effect.runSync(e.get(keys[i & mask]!))
          if (Option.isNone(en)) misses++
          else bytes += en.value.value.length
        }
        syncRate(o.warmMs, readEffect)
        const readsEffect = syncRate(o.readMs, readEffect)
        if (misses > 0 || bytes === 0) throw new Error(`tally reads: ${misses} misses`)

        let w = o.keys
        const nextKey = () => keyOf(w++)
        const perFsync = <A>(run: Effect.Effect<Throughput, A>) =>
          Effect.gen(function*() {
            const s0 = log.snapshotStats()
            const t = yield* run
            const s1 = log.snapshotStats()
            const fsyncs = Math.max(1, s1.fsyncs - s0.fsyncs)
            return { ...t, recordsPerFsync: (s1.records - s0.records) / fsyncs, fsyncMs: (s1.fsyncSeconds - s0.fsyncSeconds) * 1000 / fsyncs }
          })
        const putPool = (c: number, ms: number) =>
          Effect.gen(function*() {
            const meter = new Meter()
            const end = performance.now() + ms
            const worker = Effect.gen(function*() {
              while (performance.now() < end) {
                const k = w
                yield* e.put(nextKey(), 0, valueOf(k))
                meter.hit()
              }
            })
            yield* Effect.forEach(Array.from({ length: c }), () => worker, { concurrency: c, discard: true })
            return meter.result()
          })
        const appendPool = (c: number, ms: number) =>
          Effect.promise(() => poolRate(c, ms, () => {
            const k = w
            return appendOne(log, nextKey(), valueOf(k))
          }))
        const puts: Record<number, WriteCase> = {}
        const appends: Record<number, WriteCase> = {}
        for (const c of o.concurrency) {
          progress(`tally: durable puts (Engine.put) at concurrency ${c}`)
          yield* putPool(c, o.warmMs)
          puts[c] = yield* perFsync(putPool(c, o.writeMs))
          progress(`tally: durable appends (Log.append) at concurrency ${c}`)
          yield* appendPool(c, o.warmMs)
          appends[c] = yield* perFsync(appendPool(c, o.writeMs))
        }
        return { reads, readsEffect, puts, appends }
      }),
      Engine.layer(config(tmp.dir))
    )))
    return {
      loadPerSecond: loaded.loadPerSecond,
      segments: loaded.segments,
      heapBytesPerKey,
      arrayBufferBytesPerKey,
      keyStringBytes,
      indexBytesPerKey: heapBytesPerKey + arrayBufferBytesPerKey - keyStringBytes,
      rssBytesPerKey: (loaded.m1.rss - loaded.m0.rss) / n,
      startupHints: pick(hints),
      startupScan: pick(scans),
      ...measured
    }
  } finally {
    tmp.remove()
  }
}

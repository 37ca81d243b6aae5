/**
 * npm run bench:engine: Tally's storage engine against lmdb and classic-level (LevelDB) in
 * one process, on the same keys and values, one store at a time with a full GC between:
 * durable writes at concurrency 1, 64 and 256, uniform random reads, start-up time, memory
 * per key, the raw durable-append ceilings of the disk, and Tally's put latency at a fixed
 * offered load, idle and while segments rotate and a full compaction runs. Prints tables,
 * then as its last line one JSON object with every figure, the target ratios and whether
 * each is met.
 *
 * Options: --keys N (default 2000000, or $TALLY_BENCH_KEYS), --write-seconds S (5),
 * --read-seconds S (3), --latency-keys N (keys preloaded for the latency runs, default
 * min(keys, 300000)), --latency-rate R (puts/s offered, default 2000), --latency-clients C
 * (16), --quick (200,000 keys, 2 s writes, 1 s reads, 100,000 latency keys: for development).
 */
import { execFileSync } from "node:child_process"
import * as os from "node:os"
import { parseArgs } from "node:util"
import { bandwidthCeiling, groupCommitCeiling, type Ceiling } from "./lib/ceiling.ts"
import { KEY_BYTES, randomKeys, VALUE_BYTES } from "./lib/data.ts"
import { runLatency, type LatencyPhase } from "./lib/latency.ts"
import { fmt, progress, quiesce, table, tempDir, type RunOptions, type Throughput } from "./lib/measure.ts"
import { runClassicLevel, runLmdb } from "./lib/peers.ts"
import { runTally, type WriteCase } from "./lib/tally.ts"

const { values: args } = parseArgs({
  options: {
    keys: { type: "string" },
    "write-seconds": { type: "string" },
    "read-seconds": { type: "string" },
    "latency-keys": { type: "string" },
    "latency-rate": { type: "string", default: "2000" },
    "latency-clients": { type: "string", default: "16" },
    quick: { type: "boolean", default: false }
  }
})

const started = performance.now()
const quick = args.quick === true
const N = Number(args.keys ?? process.env["TALLY_BENCH_KEYS"] ?? (quick ? 200_000 : 2_000_000))
if (!Number.isInteger(N) || N < 1000) throw new Error("--keys must be an integer >= 1000")
const options: RunOptions = {
  keys: N,
  writeMs: Number(args["write-seconds"] ?? (quick ? 2 : 5)) * 1000,
  readMs: Number(args["read-seconds"] ?? (quick ? 1 : 3)) * 1000,
  warmMs: 500,
  readKeys: randomKeys(N, 1 << 20),
  concurrency: [1, 64, 256]
}
const latencyKeys = Number(args["latency-keys"] ?? Math.min(N, quick ? 100_000 : 300_000))
const latencyRate = Number(args["latency-rate"])
const latencyClients = Number(args["latency-clients"])
if (!Number.isInteger(latencyKeys) || latencyKeys < 1000) throw new Error("--latency-keys must be an integer >= 1000")
if (!(latencyRate > 0) || !Number.isInteger(latencyClients) || latencyClients < 1) throw new Error("--latency-rate and --latency-clients must be positive")

const cpus = os.cpus()
const machine = `${cpus.length} x ${cpus[0]?.model ?? "cpu"}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB RAM, Node ${process.version}, ${os.platform()} ${os.release()}, temp dir ${os.tmpdir()}`
/** The commit measured, and whether engine/ differed from it (others may be editing it). */
const revision = (() => {
  const git = (...a: string[]) => execFileSync("git", a, { cwd: import.meta.dirname, encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim()
  try {
    const dirty = git("status", "--porcelain", "--", "../engine").length > 0
    return `${git("rev-parse", "--short", "HEAD")}${dirty ? " with uncommitted changes in engine/" : ""}`
  } catch {
    return "unknown (no git)"
  }
})()
const loadBefore = os.loadavg()
progress(`engine at ${revision}; ${machine}; load average ${loadBefore.map((x) => x.toFixed(2)).join(" ")}`)

/** Runs `f` on a fresh temp directory, removed afterwards (then the disk is let go quiet). */
const inTemp = async <A>(prefix: string, f: (dir: string) => Promise<A>): Promise<A> => {
  const t = tempDir(prefix)
  try {
    return await f(t.dir)
  } finally {
    t.remove()
    await quiesce()
  }
}

/** The mean of two ceiling runs (the disk's speed drifts: one before Tally, one right after). */
const meanOf = (a: Ceiling, b: Ceiling): Ceiling => ({
  perSecond: (a.perSecond + b.perSecond) / 2,
  syncs: a.syncs + b.syncs,
  recordsPerSync: (a.recordsPerSync + b.recordsPerSync) / 2,
  meanCycleMs: (a.meanCycleMs + b.meanCycleMs) / 2,
  recordBytes: a.recordBytes
})

progress("raw disk ceiling: group commit every 1 ms")
const groupBefore = await inTemp("ceiling", (dir) => groupCommitCeiling(dir, options.writeMs))
progress("raw disk ceiling: durable bandwidth")
const bandwidth = await inTemp("ceiling", (dir) => bandwidthCeiling(dir, options.writeMs))
progress("raw disk: 64 records per fdatasync, appending")
const fixed64Before = await inTemp("ceiling", (dir) => groupCommitCeiling(dir, options.writeMs, { fixedRecords: 64 }))
progress("raw disk: 256 records per fdatasync, appending")
const fixed256 = await inTemp("ceiling", (dir) => groupCommitCeiling(dir, options.writeMs, { fixedRecords: 256 }))
progress("raw disk: 64 records per fdatasync, overwriting a pre-written file")
const fixed64Prewritten = await inTemp("ceiling", (dir) => groupCommitCeiling(dir, options.writeMs, { fixedRecords: 64, prewrittenBytes: 256 * 1024 * 1024 }))
await quiesce()

const tally = await runTally(options)
await quiesce()
progress("raw disk ceiling: group commit every 1 ms, again")
const groupAfter = await inTemp("ceiling", (dir) => groupCommitCeiling(dir, options.writeMs))
progress("raw disk: 64 records per fdatasync, appending, again")
const fixed64After = await inTemp("ceiling", (dir) => groupCommitCeiling(dir, options.writeMs, { fixedRecords: 64 }))
const group = meanOf(groupBefore, groupAfter)
const fixed64 = meanOf(fixed64Before, fixed64After)
await quiesce()
const latency = await runLatency({ keys: latencyKeys, clients: latencyClients, rate: latencyRate, ms: options.writeMs })
await quiesce()
const lmdb = await runLmdb(options)
await quiesce()
const level = await runClassicLevel(options)
await quiesce()
const loadAfter = os.loadavg()

const perMillion = (keysPerSecond: number) => 1e6 / keysPerSecond * 1000
const put = (t: Record<number, Throughput> | undefined, c: number) => t?.[c]?.perSecond ?? Number.NaN

const phaseFigures = (name: string, p: LatencyPhase) => ({
  [`latency_${name}_achieved_per_s`]: p.achieved,
  [`latency_${name}_puts`]: p.count,
  [`latency_${name}_seconds`]: p.seconds,
  [`latency_${name}_p50_ms`]: p.p50,
  [`latency_${name}_p90_ms`]: p.p90,
  [`latency_${name}_p99_ms`]: p.p99,
  [`latency_${name}_p999_ms`]: p.p999,
  [`latency_${name}_max_ms`]: p.max,
  [`latency_${name}_rotations`]: p.rotations,
  [`latency_${name}_compactions`]: p.compactions,
  [`latency_${name}_first_compaction_ms`]: p.firstCompactionMs,
  [`latency_${name}_compacting_share`]: p.compactingShare,
  [`latency_${name}_compacted_bytes`]: p.compactedBytes,
  [`latency_${name}_loop_delay_p99_ms`]: p.loopDelayP99,
  [`latency_${name}_loop_delay_max_ms`]: p.loopDelayMax
})

const figures = {
  keys: N,
  key_bytes: KEY_BYTES,
  value_bytes: VALUE_BYTES,
  record_bytes: group.recordBytes,
  machine,
  revision,
  node: process.version,
  cpus: cpus.length,
  load_average_1m_before: loadBefore[0]!,
  load_average_1m_after: loadAfter[0]!,
  write_seconds: options.writeMs / 1000,
  read_seconds: options.readMs / 1000,
  tally_c1: put(tally.puts, 1),
  tally_c64: put(tally.puts, 64),
  tally_c256: put(tally.puts, 256),
  tally_c1_records_per_fsync: tally.puts[1]!.recordsPerFsync,
  tally_c64_records_per_fsync: tally.puts[64]!.recordsPerFsync,
  tally_c256_records_per_fsync: tally.puts[256]!.recordsPerFsync,
  tally_c1_fsync_ms: tally.puts[1]!.fsyncMs,
  tally_c64_fsync_ms: tally.puts[64]!.fsyncMs,
  tally_c256_fsync_ms: tally.puts[256]!.fsyncMs,
  tally_append_c1: put(tally.appends, 1),
  tally_append_c64: put(tally.appends, 64),
  tally_append_c256: put(tally.appends, 256),
  tally_append_c64_records_per_fsync: tally.appends[64]!.recordsPerFsync,
  tally_append_c256_records_per_fsync: tally.appends[256]!.recordsPerFsync,
  lmdb_c1: put(lmdb.puts, 1),
  lmdb_c64: put(lmdb.puts, 64),
  lmdb_c256: put(lmdb.puts, 256),
  lmdb_flushed_c1: put(lmdb.altPuts, 1),
  lmdb_flushed_c64: put(lmdb.altPuts, 64),
  lmdb_flushed_c256: put(lmdb.altPuts, 256),
  classic_level_c1: put(level.puts, 1),
  classic_level_c64: put(level.puts, 64),
  classic_level_c256: put(level.puts, 256),
  raw_ceiling: group.perSecond,
  raw_ceiling_before_tally: groupBefore.perSecond,
  raw_ceiling_after_tally: groupAfter.perSecond,
  raw_ceiling_records_per_sync: group.recordsPerSync,
  raw_ceiling_mean_cycle_ms: group.meanCycleMs,
  raw_bandwidth: bandwidth.perSecond,
  raw_bandwidth_records_per_sync: bandwidth.recordsPerSync,
  raw_bandwidth_mean_sync_ms: bandwidth.meanCycleMs,
  raw_64_per_sync: fixed64.perSecond,
  raw_64_per_sync_before_tally: fixed64Before.perSecond,
  raw_64_per_sync_after_tally: fixed64After.perSecond,
  raw_64_per_sync_ms: fixed64.meanCycleMs,
  raw_256_per_sync: fixed256.perSecond,
  raw_256_per_sync_ms: fixed256.meanCycleMs,
  raw_64_per_sync_prewritten: fixed64Prewritten.perSecond,
  raw_64_per_sync_prewritten_ms: fixed64Prewritten.meanCycleMs,
  tally_reads: tally.reads,
  tally_reads_effect: tally.readsEffect,
  lmdb_reads: lmdb.reads["main"]!,
  classic_level_reads: level.reads["main"]!,
  classic_level_reads_get_sync: level.reads["getSync"]!,
  classic_level_reads_get_many_64: level.reads["getMany64"]!,
  startup_keys_per_s_from_hints: tally.startupHints.keysPerSecond,
  startup_ms_from_hints: tally.startupHints.ms,
  startup_ms_per_million_from_hints: perMillion(tally.startupHints.keysPerSecond),
  startup_keys_per_s_from_scan: tally.startupScan.keysPerSecond,
  startup_ms_from_scan: tally.startupScan.ms,
  startup_ms_per_million_from_scan: perMillion(tally.startupScan.keysPerSecond),
  lmdb_open_ms: lmdb.openMs,
  classic_level_open_ms: level.openMs,
  index_bytes_per_key: tally.indexBytesPerKey,
  index_heap_bytes_per_key: tally.heapBytesPerKey,
  index_array_buffer_bytes_per_key: tally.arrayBufferBytesPerKey,
  key_string_bytes: tally.keyStringBytes,
  tally_rss_bytes_per_key: tally.rssBytesPerKey,
  lmdb_rss_bytes_per_key: lmdb.rssBytesPerKey,
  classic_level_rss_bytes_per_key: level.rssBytesPerKey,
  tally_load_per_s: tally.loadPerSecond,
  lmdb_load_per_s: lmdb.loadPerSecond,
  classic_level_load_per_s: level.loadPerSecond,
  tally_segments: tally.segments,
  latency_keys: latency.keys,
  latency_clients: latency.clients,
  latency_offered_per_s: latency.rate,
  latency_segment_bytes: latency.segmentBytes,
  latency_sealed_segments: latency.sealedSegments,
  ...phaseFigures("idle", latency.idle),
  ...phaseFigures("rotating", latency.rotating),
  ...phaseFigures("compacting", latency.compacting)
}

const ratios = {
  tally_c64_over_classic_level_c64: figures.tally_c64 / figures.classic_level_c64,
  tally_c64_over_raw_64_per_sync: figures.tally_c64 / figures.raw_64_per_sync,
  tally_c256_over_raw_ceiling: figures.tally_c256 / figures.raw_ceiling,
  tally_reads_over_lmdb_reads: figures.tally_reads / figures.lmdb_reads,
  put_p99_compacting_over_idle: latency.compacting.p99 / latency.idle.p99,
  put_p99_rotating_over_idle: latency.rotating.p99 / latency.idle.p99
}
const targets_met = {
  tally_c64_over_classic_level_c64: ratios.tally_c64_over_classic_level_c64 >= 3,
  tally_c64_over_raw_64_per_sync: ratios.tally_c64_over_raw_64_per_sync >= 0.6,
  tally_c256_over_raw_ceiling: ratios.tally_c256_over_raw_ceiling >= 0.5,
  tally_reads_over_lmdb_reads: ratios.tally_reads_over_lmdb_reads >= 1,
  put_p99_compacting_over_idle: ratios.put_p99_compacting_over_idle <= 2,
  startup_keys_per_s_from_hints: figures.startup_keys_per_s_from_hints >= 1e6,
  index_bytes_per_key: figures.index_bytes_per_key <= 64
}

const r = (x: number) => fmt(x)
const ms3 = (x: number) => fmt(x, 3)
const rows: string[][] = [
  ["measure", "Tally", "lmdb", "classic-level", "how"],
  ["durable puts/s, concurrency 1", r(figures.tally_c1), r(figures.lmdb_c1), r(figures.classic_level_c1), "Tally Engine.put, fsync batch; lmdb put, overlappingSync off; level put { sync: true }"],
  ["durable puts/s, concurrency 64", r(figures.tally_c64), r(figures.lmdb_c64), r(figures.classic_level_c64), "64 async loops, each awaiting its put"],
  ["durable puts/s, concurrency 256", r(figures.tally_c256), r(figures.lmdb_c256), r(figures.classic_level_c256), "256 async loops, each awaiting its put"],
  ["random reads/s", r(figures.tally_reads), r(figures.lmdb_reads), r(figures.classic_level_reads), "Tally log.read, sync; lmdb get, binary, sync; level await get, one at a time"],
  ["  random reads/s, other API", r(figures.tally_reads_effect), "", r(figures.classic_level_reads_get_sync), "Tally Effect.runSync(e.get); level getSync"],
  ["  random reads/s, getMany of 64", "", "", r(figures.classic_level_reads_get_many_64), "keys per second"],
  ["open after clean close, ms", fmt(figures.startup_ms_from_hints, 1), fmt(figures.lmdb_open_ms, 1), fmt(figures.classic_level_open_ms, 1), `Tally from hint files, median of 3; ${fmt(N)} keys`],
  ["  Tally start-up keys/s, hints / full scan", `${r(figures.startup_keys_per_s_from_hints)} / ${r(figures.startup_keys_per_s_from_scan)}`, "", "", `full scan (*.hint deleted): ${fmt(figures.startup_ms_from_scan, 1)} ms, median of 2`],
  ["  Tally start-up ms per million keys, hints / scan", `${fmt(figures.startup_ms_per_million_from_hints, 1)} / ${fmt(figures.startup_ms_per_million_from_scan, 1)}`, "", "", "page cache warm"],
  ["index bytes/key beyond the key string", fmt(figures.index_bytes_per_key, 1), "", "", `Δ(heapUsed + arrayBuffers)/key ${fmt(figures.index_heap_bytes_per_key + figures.index_array_buffer_bytes_per_key, 1)} − key string ${figures.key_string_bytes}`],
  ["RSS delta bytes/key over the load", fmt(figures.tally_rss_bytes_per_key, 1), fmt(figures.lmdb_rss_bytes_per_key, 1), fmt(figures.classic_level_rss_bytes_per_key, 1), "lmdb's includes its memory-mapped file pages"],
  ["bulk load keys/s", r(figures.tally_load_per_s), r(figures.lmdb_load_per_s), r(figures.classic_level_load_per_s), "Tally 4096 appends outstanding; lmdb 10k putSync per txn; level batch of 10k"]
]

const writeRow = (store: string, how: string, c: number, t: Throughput | undefined, w?: WriteCase): string[] => [
  store, how, String(c), r(t?.perSecond ?? Number.NaN), r(t?.slowestSecond ?? Number.NaN), r(t?.fastestSecond ?? Number.NaN),
  w === undefined ? "" : fmt(w.recordsPerFsync, 1), w === undefined ? "" : fmt(w.fsyncMs, 3)
]
const writeRows: string[][] = [
  ["durable puts", "API", "c", "puts/s", "slowest 1 s", "fastest 1 s", "records/fdatasync", "ms/fdatasync"],
  ...options.concurrency.flatMap((c) => [
    writeRow("Tally", "Engine.put (Effect)", c, tally.puts[c], tally.puts[c]),
    writeRow("Tally", "Log.append (promisified)", c, tally.appends[c], tally.appends[c]),
    writeRow("lmdb", "put, overlappingSync: false", c, lmdb.puts[c]),
    writeRow("lmdb", "put(...).flushed, overlappingSync", c, lmdb.altPuts?.[c]),
    writeRow("classic-level", "put { sync: true }", c, level.puts[c])
  ])
]
const ceilingRows: string[][] = [
  ["raw disk, durable appends", "records/s", "how"],
  ["group commit every 1 ms (raw_ceiling)", r(group.perSecond), `mean of the two runs below`],
  ["  before Tally", r(groupBefore.perSecond), `write K ${group.recordBytes}-byte records + fdatasync, K adapted to a 1 ms cycle: mean ${fmt(groupBefore.recordsPerSync, 0)} records, ${ms3(groupBefore.meanCycleMs)} ms per cycle`],
  ["  right after Tally's writes", r(groupAfter.perSecond), `same: mean ${fmt(groupAfter.recordsPerSync, 0)} records, ${ms3(groupAfter.meanCycleMs)} ms per cycle`],
  ["durable bandwidth", r(bandwidth.perSecond), `free-running writer, fdatasync back to back: mean ${fmt(bandwidth.recordsPerSync, 0)} records, ${ms3(bandwidth.meanCycleMs)} ms per fdatasync`],
  ["64 records per fdatasync, appending (raw_64_per_sync)", r(fixed64.perSecond), `mean of the two runs below: the most 64 outstanding puts can get with no CPU cost`],
  ["  before Tally", r(fixed64Before.perSecond), `a fresh file: ${ms3(fixed64Before.meanCycleMs)} ms per write+fdatasync`],
  ["  right after Tally's writes", r(fixed64After.perSecond), `same: ${ms3(fixed64After.meanCycleMs)} ms per write+fdatasync`],
  ["256 records per fdatasync, appending", r(fixed256.perSecond), `the most 256 outstanding puts can get with no CPU cost (before Tally only): ${ms3(fixed256.meanCycleMs)} ms per write+fdatasync`],
  ["64 records per fdatasync, pre-written file", r(fixed64Prewritten.perSecond), `same, overwriting a 256 MiB file written and synced first: ${ms3(fixed64Prewritten.meanCycleMs)} ms per write+fdatasync`]
]
const phaseRow = (name: string, p: LatencyPhase): string[] => [
  name, r(p.achieved), r(p.count), ms3(p.p50), ms3(p.p90), ms3(p.p99), ms3(p.p999), fmt(p.max, 1), String(p.rotations),
  p.compactions === 0 ? "" : `${p.compactions} (first ${fmt(p.firstCompactionMs / 1000, 1)} s, ${fmt(p.compactingShare * 100, 0)}% of the run)`,
  `${fmt(p.loopDelayP99, 1)} / ${fmt(p.loopDelayMax, 1)}`
]
const latencyRows: string[][] = [
  ["put latency, ms", "puts/s", "puts", "p50", "p90", "p99", "p99.9", "max", "rotations", "full compactions", "loop delay p99 / max, ms"],
  phaseRow("idle (64 MiB segments)", latency.idle),
  phaseRow(`rotating (${latency.segmentBytes / 1024 / 1024} MiB segments)`, latency.rotating),
  phaseRow("rotating + full compaction", latency.compacting)
]
const targetRows: string[][] = [
  ["target", "measured", "goal", "met"],
  ["tally_c64 / classic_level_c64", fmt(ratios.tally_c64_over_classic_level_c64, 2), ">= 3", String(targets_met.tally_c64_over_classic_level_c64)],
  ["tally_c64 / raw_64_per_sync", fmt(ratios.tally_c64_over_raw_64_per_sync, 2), ">= 0.6", String(targets_met.tally_c64_over_raw_64_per_sync)],
  ["tally_c256 / raw_ceiling", fmt(ratios.tally_c256_over_raw_ceiling, 2), ">= 0.5", String(targets_met.tally_c256_over_raw_ceiling)],
  ["tally_reads / lmdb_reads", fmt(ratios.tally_reads_over_lmdb_reads, 2), ">= 1", String(targets_met.tally_reads_over_lmdb_reads)],
  ["put p99 compacting / idle", fmt(ratios.put_p99_compacting_over_idle, 2), "<= 2", String(targets_met.put_p99_compacting_over_idle)],
  ["start-up keys/s from hints", r(figures.startup_keys_per_s_from_hints), ">= 1,000,000", String(targets_met.startup_keys_per_s_from_hints)],
  ["index bytes/key", fmt(figures.index_bytes_per_key, 1), "<= 64", String(targets_met.index_bytes_per_key)]
]

const seconds = (performance.now() - started) / 1000
console.log(`Tally storage engine benchmark: ${fmt(N)} keys of ${KEY_BYTES} bytes, ${VALUE_BYTES}-byte values; writes ${options.writeMs / 1000} s per case after 0.5 s warm-up, reads ${options.readMs / 1000} s per case`)
console.log(`Engine at ${revision}. ${machine}; 1-min load average ${fmt(loadBefore[0], 2)} before, ${fmt(loadAfter[0], 2)} after; run took ${fmt(seconds, 0)} s`)
for (const t of [rows, writeRows, ceilingRows]) console.log(`\n${table(t)}`)
console.log(`\nPut latency: Engine.put overwriting random keys of ${fmt(latency.keys)} (loaded, then half of them again, in ${latency.sealedSegments} sealed ${latency.segmentBytes / 1024 / 1024} MiB segments), ${latency.clients} clients offering ${fmt(latency.rate)} puts/s in all, from each put's scheduled start; the compacting run lasts until its first full compaction ends.`)
console.log(`\n${table(latencyRows)}`)
console.log(`\n${table(targetRows)}`)
console.log(`\nlmdb: ${lmdb.durability}; second lmdb line: ${lmdb.altDurability}. classic-level: ${level.durability}.`)
console.log(JSON.stringify({ ...figures, ...ratios, targets_met, run_seconds: seconds }))

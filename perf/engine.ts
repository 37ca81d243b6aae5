/**
 * npm run bench:engine: Tally's storage engine against lmdb and classic-level (LevelDB) in
 * one process, on the same keys and values, one store at a time with a full GC between:
 * durable writes at concurrency 1 and 64, uniform random reads, start-up time, memory per
 * key, and the raw durable-append ceiling of the disk. Prints tables, then as its last line
 * one JSON object with every figure, the target ratios and whether each is met.
 *
 * Options: --keys N (default 2000000), --write-seconds S (5), --read-seconds S (3).
 */
import * as os from "node:os"
import { parseArgs } from "node:util"
import { bandwidthCeiling, groupCommitCeiling } from "./lib/ceiling.ts"
import { KEY_BYTES, randomKeys, VALUE_BYTES } from "./lib/data.ts"
import { fmt, progress, settle, table, tempDir, type RunOptions, type Throughput } from "./lib/measure.ts"
import { runClassicLevel, runLmdb } from "./lib/peers.ts"
import { runTally, type WriteCase } from "./lib/tally.ts"

const { values: args } = parseArgs({
  options: {
    keys: { type: "string", default: "2000000" },
    "write-seconds": { type: "string", default: "5" },
    "read-seconds": { type: "string", default: "3" }
  }
})

const started = performance.now()
const N = Number(args.keys)
if (!Number.isInteger(N) || N < 1000) throw new Error("--keys must be an integer >= 1000")
const options: RunOptions = {
  keys: N,
  writeMs: Number(args["write-seconds"]) * 1000,
  readMs: Number(args["read-seconds"]) * 1000,
  warmMs: 500,
  readKeys: randomKeys(N, 1 << 20),
  concurrency: [1, 64]
}

const cpus = os.cpus()
const machine = `${cpus.length} x ${cpus[0]?.model ?? "cpu"}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB RAM, Node ${process.version}, ${os.platform()} ${os.release()}, temp dir ${os.tmpdir()}`
const loadBefore = os.loadavg()
progress(`${machine}; load average ${loadBefore.map((x) => x.toFixed(2)).join(" ")}`)

/** Runs `f` on a fresh temp directory, removed afterwards. */
const inTemp = async <A>(prefix: string, f: (dir: string) => Promise<A>): Promise<A> => {
  const t = tempDir(prefix)
  try {
    return await f(t.dir)
  } finally {
    t.remove()
  }
}

progress("raw disk ceiling: group commit every 1 ms")
const groupBefore = await inTemp("ceiling", (dir) => groupCommitCeiling(dir, options.writeMs))
progress("raw disk ceiling: durable bandwidth")
const bandwidth = await inTemp("ceiling", (dir) => bandwidthCeiling(dir, options.writeMs))
progress("raw disk: 64 records per fdatasync, appending")
const fixed64 = await inTemp("ceiling", (dir) => groupCommitCeiling(dir, options.writeMs, { fixedRecords: 64 }))
progress("raw disk: 64 records per fdatasync, overwriting a pre-written file")
const fixed64Prewritten = await inTemp("ceiling", (dir) => groupCommitCeiling(dir, options.writeMs, { fixedRecords: 64, prewrittenBytes: 256 * 1024 * 1024 }))
await settle()

const tally = await runTally(options)
await settle()
// The disk's speed drifts; measure the ceiling again right after Tally's writes and use the mean.
progress("raw disk ceiling: group commit every 1 ms, again")
const groupAfter = await inTemp("ceiling", (dir) => groupCommitCeiling(dir, options.writeMs))
const group = {
  perSecond: (groupBefore.perSecond + groupAfter.perSecond) / 2,
  recordsPerSync: (groupBefore.recordsPerSync + groupAfter.recordsPerSync) / 2,
  meanCycleMs: (groupBefore.meanCycleMs + groupAfter.meanCycleMs) / 2,
  recordBytes: groupBefore.recordBytes
}
await settle()
const lmdb = await runLmdb(options)
await settle()
const level = await runClassicLevel(options)
await settle()
const loadAfter = os.loadavg()

const perMillion = (keysPerSecond: number) => 1e6 / keysPerSecond * 1000
const put = (t: Record<number, Throughput> | undefined, c: number) => t?.[c]?.perSecond ?? Number.NaN

const figures = {
  keys: N,
  key_bytes: KEY_BYTES,
  value_bytes: VALUE_BYTES,
  record_bytes: group.recordBytes,
  machine,
  node: process.version,
  cpus: cpus.length,
  load_average_1m_before: loadBefore[0]!,
  load_average_1m_after: loadAfter[0]!,
  write_seconds: options.writeMs / 1000,
  read_seconds: options.readMs / 1000,
  tally_c1: put(tally.puts, 1),
  tally_c64: put(tally.puts, 64),
  tally_c1_records_per_fsync: tally.puts[1]!.recordsPerFsync,
  tally_c64_records_per_fsync: tally.puts[64]!.recordsPerFsync,
  tally_c1_fsync_ms: tally.puts[1]!.fsyncMs,
  tally_c64_fsync_ms: tally.puts[64]!.fsyncMs,
  tally_append_c1: put(tally.appends, 1),
  tally_append_c64: put(tally.appends, 64),
  tally_append_c64_records_per_fsync: tally.appends[64]!.recordsPerFsync,
  lmdb_c1: put(lmdb.puts, 1),
  lmdb_c64: put(lmdb.puts, 64),
  lmdb_flushed_c1: put(lmdb.altPuts, 1),
  lmdb_flushed_c64: put(lmdb.altPuts, 64),
  classic_level_c1: put(level.puts, 1),
  classic_level_c64: put(level.puts, 64),
  raw_ceiling: group.perSecond,
  raw_ceiling_before_tally: groupBefore.perSecond,
  raw_ceiling_after_tally: groupAfter.perSecond,
  raw_ceiling_records_per_sync: group.recordsPerSync,
  raw_ceiling_mean_cycle_ms: group.meanCycleMs,
  raw_bandwidth: bandwidth.perSecond,
  raw_bandwidth_records_per_sync: bandwidth.recordsPerSync,
  raw_bandwidth_mean_sync_ms: bandwidth.meanCycleMs,
  raw_64_per_sync: fixed64.perSecond,
  raw_64_per_sync_ms: fixed64.meanCycleMs,
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
  tally_segments: tally.segments
}

const ratios = {
  tally_c64_over_classic_level_c64: figures.tally_c64 / figures.classic_level_c64,
  tally_c64_over_raw_ceiling: figures.tally_c64 / figures.raw_ceiling,
  tally_reads_over_lmdb_reads: figures.tally_reads / figures.lmdb_reads
}
const targets_met = {
  tally_c64_over_classic_level_c64: ratios.tally_c64_over_classic_level_c64 >= 3,
  tally_c64_over_raw_ceiling: ratios.tally_c64_over_raw_ceiling >= 0.5,
  tally_reads_over_lmdb_reads: ratios.tally_reads_over_lmdb_reads >= 1,
  startup_keys_per_s_from_hints: figures.startup_keys_per_s_from_hints >= 1e6,
  index_bytes_per_key: figures.index_bytes_per_key <= 100
}

const r = (x: number) => fmt(x)
const rows: string[][] = [
  ["measure", "Tally", "lmdb", "classic-level", "how"],
  ["durable puts/s, concurrency 1", r(figures.tally_c1), r(figures.lmdb_c1), r(figures.classic_level_c1), "Tally Engine.put, fsync batch; lmdb put, overlappingSync off; level put { sync: true }"],
  ["durable puts/s, concurrency 64", r(figures.tally_c64), r(figures.lmdb_c64), r(figures.classic_level_c64), "64 async loops, each awaiting its put"],
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
  ["  before Tally", r(groupBefore.perSecond), `write K ${group.recordBytes}-byte records + fdatasync, K adapted to a 1 ms cycle: mean ${fmt(groupBefore.recordsPerSync, 0)} records, ${fmt(groupBefore.meanCycleMs, 3)} ms per cycle`],
  ["  right after Tally's writes", r(groupAfter.perSecond), `same: mean ${fmt(groupAfter.recordsPerSync, 0)} records, ${fmt(groupAfter.meanCycleMs, 3)} ms per cycle`],
  ["durable bandwidth", r(bandwidth.perSecond), `free-running writer, fdatasync back to back: mean ${fmt(bandwidth.recordsPerSync, 0)} records, ${fmt(bandwidth.meanCycleMs, 3)} ms per fdatasync`],
  ["64 records per fdatasync, appending", r(fixed64.perSecond), `the most 64 outstanding puts can get with no CPU cost: ${fmt(fixed64.meanCycleMs, 3)} ms per write+fdatasync`],
  ["64 records per fdatasync, pre-written file", r(fixed64Prewritten.perSecond), `same, overwriting a 256 MiB file written and synced first: ${fmt(fixed64Prewritten.meanCycleMs, 3)} ms per write+fdatasync`]
]
const targetRows: string[][] = [
  ["target", "measured", "goal", "met"],
  ["tally_c64 / classic_level_c64", fmt(ratios.tally_c64_over_classic_level_c64, 2), ">= 3", String(targets_met.tally_c64_over_classic_level_c64)],
  ["tally_c64 / raw_ceiling", fmt(ratios.tally_c64_over_raw_ceiling, 2), ">= 0.5", String(targets_met.tally_c64_over_raw_ceiling)],
  ["tally_reads / lmdb_reads", fmt(ratios.tally_reads_over_lmdb_reads, 2), ">= 1", String(targets_met.tally_reads_over_lmdb_reads)],
  ["start-up keys/s from hints", r(figures.startup_keys_per_s_from_hints), ">= 1,000,000", String(targets_met.startup_keys_per_s_from_hints)],
  ["index bytes/key", fmt(figures.index_bytes_per_key, 1), "<= 100", String(targets_met.index_bytes_per_key)]
]

const seconds = (performance.now() - started) / 1000
console.log(`Tally storage engine benchmark: ${fmt(N)} keys of ${KEY_BYTES} bytes, ${VALUE_BYTES}-byte values; writes ${options.writeMs / 1000} s per case after 0.5 s warm-up, reads ${options.readMs / 1000} s per case`)
console.log(`${machine}; 1-min load average ${fmt(loadBefore[0], 2)} before, ${fmt(loadAfter[0], 2)} after; run took ${fmt(seconds, 0)} s`)
for (const t of [rows, writeRows, ceilingRows, targetRows]) console.log(`\n${table(t)}`)
console.log(`\nlmdb: ${lmdb.durability}; second lmdb line: ${lmdb.altDurability}. classic-level: ${level.durability}.`)
console.log(JSON.stringify({ ...figures, ...ratios, targets_met, run_seconds: seconds }))

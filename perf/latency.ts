/**
 * npm run bench:latency: the put-latency part of bench:engine alone (perf/lib/latency.ts),
 * for work on compaction and rotation without the 4-minute full run: a fixed offered load
 * of durable puts, idle, while segments rotate, and while a full compaction rewrites every
 * sealed segment. Prints one line per phase, then one JSON object with every figure and
 * the ratio bench:engine's target is set on (compacting p99 / idle p99 <= 2).
 *
 * Options: --keys N (preloaded, default 100000), --rate R (puts/s offered, 2000),
 * --clients C (16), --seconds S (each phase's least length, 3).
 */
import * as os from "node:os"
import { parseArgs } from "node:util"
import { runLatency } from "./lib/latency.ts"
import { fmt, progress } from "./lib/measure.ts"

const { values: args } = parseArgs({
  options: {
    keys: { type: "string", default: "100000" },
    rate: { type: "string", default: "2000" },
    clients: { type: "string", default: "16" },
    seconds: { type: "string", default: "3" }
  }
})
const keys = Number(args.keys)
const rate = Number(args.rate)
const clients = Number(args.clients)
const ms = Number(args.seconds) * 1000
if (!Number.isInteger(keys) || keys < 1000) throw new Error("--keys must be an integer >= 1000")
if (!(rate > 0) || !Number.isInteger(clients) || clients < 1 || !(ms > 0)) throw new Error("--rate, --clients and --seconds must be positive")

const loadBefore = os.loadavg()[0]!
progress(`load average ${loadBefore.toFixed(2)}`)
const r = await runLatency({ keys, clients, rate, ms })
const figures: Record<string, number> = { keys, rate, clients, sealed_segments: r.sealedSegments, load_before: loadBefore, load_after: os.loadavg()[0]! }
for (const name of ["idle", "rotating", "compacting"] as const) {
  const p = r[name]
  console.log(`${name.padEnd(10)} p50 ${fmt(p.p50, 2)} ms  p99 ${fmt(p.p99, 2)} ms  max ${fmt(p.max, 1)} ms  loop delay p99 ${fmt(p.loopDelayP99, 1)} / max ${fmt(p.loopDelayMax, 1)} ms  fdatasync ${fmt(p.fsyncMs, 2)} ms  records/fdatasync ${fmt(p.recordsPerFsync, 1)}  compactions ${p.compactions}`)
  figures[`${name}_p50_ms`] = p.p50
  figures[`${name}_p99_ms`] = p.p99
  figures[`${name}_max_ms`] = p.max
  figures[`${name}_loop_delay_max_ms`] = p.loopDelayMax
  figures[`${name}_fsync_ms`] = p.fsyncMs
}
figures["first_compaction_ms"] = r.compacting.firstCompactionMs
figures["compacting_over_idle_p99"] = r.compacting.p99 / r.idle.p99
figures["rotating_over_idle_p99"] = r.rotating.p99 / r.idle.p99
console.log(`compacting p99 / idle p99: ${fmt(figures["compacting_over_idle_p99"], 2)} (target <= 2); rotating / idle: ${fmt(figures["rotating_over_idle_p99"], 2)}`)
console.log(JSON.stringify({ bench: "latency", ...figures, target_met: figures["compacting_over_idle_p99"]! <= 2 }))

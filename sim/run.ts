/**
 * `npm run sim -- [--seed N | --seeds COUNT [--from N]] [--nodes 3..9] [--ops N] [--clients N]
 * [--keys N] [--faults kind,...] [--lww] [--kv679] [--log]`: runs seeds of the deterministic
 * simulator (Sim.ts) one after another in this process. Each seed prints one line with its
 * event log's hash; a failing seed prints what failed and the command that replays it. The
 * last line is a JSON summary. Exit code 1 if any seed failed, 2 for bad arguments.
 */
import { faultKinds, runSim, type FaultKind, type SimOptions, type SimResult } from "./Sim.ts"
import { wallNow } from "./VirtualTime.ts"

const usage = "usage: npm run sim -- [--seed N | --seeds COUNT [--from N]] [--nodes 3..9] [--ops N] [--clients N] [--keys N] [--faults kind,...] [--lww] [--kv679] [--log]"

const fail = (message: string): never => {
  process.stderr.write(`sim: ${message}\n${usage}\n`)
  process.exit(2)
}

const args = process.argv.slice(2)
const flags = new Map<string, string | true>()
for (let i = 0; i < args.length; i++) {
  const a = args[i]!
  if (!a.startsWith("--")) fail(`unexpected argument ${JSON.stringify(a)}`)
  const name = a.slice(2)
  if (["lww", "kv679", "log", "help"].includes(name)) flags.set(name, true)
  else {
    const v = args[++i]
    if (v === undefined) fail(`--${name} needs a value`)
    flags.set(name, v!)
  }
}
if (flags.has("help")) {
  process.stdout.write(`${usage}\nfault kinds: ${faultKinds.join(",")}\n`)
  process.exit(0)
}
const known = new Set(["seed", "seeds", "from", "nodes", "ops", "clients", "keys", "faults", "lww", "kv679", "log"])
for (const k of flags.keys()) if (!known.has(k)) fail(`unknown flag --${k}`)
const int = (name: string, min: number, max: number): number | undefined => {
  const v = flags.get(name)
  if (v === undefined) return undefined
  const n = Number(v)
  if (typeof v !== "string" || !Number.isSafeInteger(n) || n < min || n > max) fail(`--${name} must be an integer in ${min}..${max}, not ${JSON.stringify(v)}`)
  return n
}
if (flags.has("seed") && flags.has("seeds")) fail("give --seed or --seeds, not both")
const seed = int("seed", 0, 2 ** 32 - 1)
const count = int("seeds", 1, 100_000_000) ?? 1
const from = int("from", 0, 2 ** 32 - 1) ?? 1
const nodes = int("nodes", 3, 9)
const ops = int("ops", 1, 10_000_000)
const clients = int("clients", 1, 1000)
const keys = int("keys", 1, 100_000)
const faultsFlag = flags.get("faults")
let faults: FaultKind[] | undefined
if (typeof faultsFlag === "string") {
  faults = faultsFlag === "none" ? [] : (faultsFlag.split(",") as FaultKind[])
  for (const f of faults) if (!(faultKinds as ReadonlyArray<string>).includes(f)) fail(`unknown fault kind ${JSON.stringify(f)}; kinds: ${faultKinds.join(",")}`)
}

const base: Omit<SimOptions, "seed"> = {
  ...(nodes !== undefined ? { nodes } : {}),
  ...(ops !== undefined ? { ops } : {}),
  ...(clients !== undefined ? { clients } : {}),
  ...(keys !== undefined ? { keys } : {}),
  ...(faults !== undefined ? { faults } : {}),
  ...(flags.has("lww") ? { lww: true } : {}),
  ...(flags.has("kv679") ? { kv679: true } : {}),
  ...(flags.has("log") ? { keepLog: true } : {})
}

const seeds = seed !== undefined ? [seed] : Array.from({ length: count }, (_, i) => from + i)
const totals = { seeds: 0, failed: 0, attempted: 0, acked: 0, lost: 0, unexpected: 0, resurrected: 0, deletesAcked: 0, reapedTombstones: 0, virtualMs: 0, faults: {} as Record<string, number> }
const failedSeeds: number[] = []
const t0 = wallNow()
const cpu0 = process.cpuUsage()
let interrupted = false
process.on("SIGINT", () => (interrupted = true))
for (const s of seeds) {
  if (interrupted) break
  const r: SimResult = await runSim({ ...base, seed: s })
  totals.seeds++
  totals.attempted += r.attempted
  totals.acked += r.acked
  totals.lost += r.lost
  totals.unexpected += r.unexpected
  totals.resurrected += r.resurrected
  totals.deletesAcked += r.deletesAcked
  totals.reapedTombstones += r.reapedTombstones
  totals.virtualMs += r.virtualMs
  for (const [k, v] of Object.entries(r.faults)) totals.faults[k] = (totals.faults[k] ?? 0) + v
  if (flags.has("log")) for (const l of r.log) process.stdout.write(`${l}\n`)
  process.stdout.write(`seed ${s} ${r.ok ? "ok" : "FAILED"} hash ${r.hash} ops ${r.attempted} acked ${r.acked} lost ${r.lost} virtual ${(r.virtualMs / 1000).toFixed(1)} s wall ${(r.wallMs / 1000).toFixed(2)} s tasks ${r.tasks} events ${r.events}\n`)
  if (!r.ok) {
    totals.failed++
    failedSeeds.push(s)
    for (const p of r.problems) process.stdout.write(`  ${p}\n`)
    if (!flags.has("log")) for (const l of r.log.slice(-30)) process.stdout.write(`  | ${l}\n`)
    process.stdout.write(`  replay: ${r.replay}\n`)
  }
}
const wallMs = wallNow() - t0
// CPU time is what a seed costs one core, whatever else the machine runs.
const cpu = process.cpuUsage(cpu0)
const cpuMs = (cpu.user + cpu.system) / 1000
process.stdout.write(`${JSON.stringify({
  ...totals,
  virtualMs: Math.round(totals.virtualMs),
  failedSeeds: failedSeeds.slice(0, 100),
  wallMs: Math.round(wallMs),
  cpuMs: Math.round(cpuMs),
  seedsPerSecond: Number((totals.seeds / (wallMs / 1000)).toFixed(3)),
  seedsPerCpuSecond: Number((totals.seeds / (cpuMs / 1000)).toFixed(3)),
  virtualPerWall: Number((totals.virtualMs / wallMs).toFixed(1)),
  virtualPerCpu: Number((totals.virtualMs / cpuMs).toFixed(1)),
  rssMiB: Math.round(process.memoryUsage().rss / 2 ** 20)
})}\n`)
process.exit(totals.failed > 0 ? 1 : 0)

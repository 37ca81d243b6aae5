/**
 * npm run bench:aae-overhead: what anti-entropy costs the write path. A local 3-node cluster
 * (N=3, R=2, W=2, fsync batch) takes PUTs of 1 KiB values at full speed with anti-entropy on
 * (the default 1 s between exchanges: under load the roots always differ, so exchanges go
 * down to the children and walk the index) and off (`--aae-interval 0`), in alternating
 * rounds (on, off, on, off, ...) on fresh clusters, so the disk's drift and the machine's
 * other load fall on both. The trees themselves are kept by the index in both modes (their
 * upkeep per write is measured by bench:aae). Prints a table, then one JSON line.
 *
 * Options: --rounds R per mode (3), --seconds S per round (10), --connections C (96), --keys K (10000).
 */
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { header, load, loadOptions, log, preload, row, startServer, stopServers, type Case } from "./lib/httpLoad.ts"

const o = loadOptions(96, { rounds: { type: "string", default: "3" } })
const rounds = Number(o.extra.rounds)
if (!Number.isInteger(rounds) || rounds < 1) throw new Error("--rounds must be a positive integer")

const cluster = async (dir: string, aaeIntervalMs: number) => {
  const node = (i: number, extra: string[]) =>
    startServer(["bin/tally.js", "node", "--id", `a${i}`, "--port", String(9420 + i), "--cluster-port", String(9520 + i), "--data", path.join(dir, `a${i}`),
      "--fsync", "batch", "--n", "3", "--r", "2", "--w", "2", "--log-level", "warn", "--aae-interval", String(aaeIntervalMs), ...extra])
  const first = await node(1, [])
  const nodes = [first, ...(await Promise.all([2, 3].map((i) => node(i, ["--seeds", "127.0.0.1:9421"]))))]
  for (let tries = 0; tries < 150; tries++) {
    const views = await Promise.all(nodes.map(async (n) => (await fetch(`${n.url}/admin/cluster`)).json() as Promise<{ nodes: Array<{ status: string }> }>))
    if (views.every((v) => v.nodes.length === 3 && v.nodes.every((m) => m.status === "up"))) return nodes
    await new Promise((r) => setTimeout(r, 200))
  }
  await stopServers(nodes)
  throw new Error("the three nodes did not see each other up within 30 s")
}

const exchanges = async (urls: ReadonlyArray<string>) => {
  let n = 0
  for (const u of urls) {
    const body = await (await fetch(`${u}/admin/aae`)).json() as { partitions?: Array<{ exchanges?: number }> }
    for (const p of body.partitions ?? []) n += p.exchanges ?? 0
  }
  return n
}

const results: Record<"on" | "off", Array<Case & { exchanges: number }>> = { on: [], off: [] }
const cpus = os.cpus()
log(`${cpus.length} x ${cpus[0]?.model}, Node ${process.version}, load average ${os.loadavg()[0]!.toFixed(2)}`)
for (let r = 0; r < rounds; r++) {
  for (const mode of ["on", "off"] as const) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tally-bench-aae-overhead-"))
    const nodes = await cluster(dir, mode === "on" ? 1000 : 0)
    const urls = nodes.map((n) => n.url)
    log(`round ${r + 1}, anti-entropy ${mode}: preloading ${o.keys} keys`)
    await preload(urls[0]!, o.keys)
    await load(urls, "PUT", { ...o, seconds: 2 })
    log(`round ${r + 1}, anti-entropy ${mode}: PUT ${o.seconds} s`)
    const put = await load(urls, "PUT", o)
    const ex = await exchanges(urls).catch(() => -1)
    results[mode].push({ ...put, exchanges: ex })
    await stopServers(nodes)
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

console.log(header)
for (const mode of ["on", "off"] as const) results[mode].forEach((c, i) => console.log(row(`PUT, anti-entropy ${mode}, round ${i + 1}`, c)))
const sum = (cs: ReadonlyArray<Case>) => cs.reduce((n, c) => n + c.rps, 0)
const ratio = sum(results.on) / sum(results.off)
const perRound = results.on.map((c, i) => c.rps / results.off[i]!.rps)
console.log(`PUT with anti-entropy on / off: ${ratio.toFixed(3)} over ${rounds} rounds (per round: ${perRound.map((x) => x.toFixed(3)).join(", ")}); target >= 0.95`)
console.log(JSON.stringify({
  bench: "aae-overhead", n: 3, r: 2, w: 2, fsync: "batch", connections: o.connections, seconds: o.seconds, rounds,
  load_average_1m_after: os.loadavg()[0], on: results.on, off: results.off, ratio_put_on_over_off: ratio, ratio_per_round: perRound,
  targets_met: { put_on_over_off: ratio >= 0.95 }
}))

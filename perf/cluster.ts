/**
 * npm run bench:cluster: autocannon against a local 3-node cluster (N=3, R=2, W=2, fsync
 * batch), the load spread over the three nodes, and against a single node in the same run.
 * GET and PUT of 1 KiB values at full speed, then both again at half the cluster's peak rate
 * to read the latency a cluster gives when it is not saturated. Nodes are child processes;
 * the load comes from this process. Prints a table, then one JSON line.
 *
 * Per-node autocannon instances report their own percentiles; the cluster's figure is the
 * worst of the three (a conservative reading, as summaries cannot be merged exactly).
 *
 * Options: --seconds S per case (10), --connections C in all (96), --keys K preloaded (10000).
 */
import { spawn, type ChildProcess } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { parseArgs } from "node:util"
import autocannon from "autocannon"

const { values: args } = parseArgs({
  options: {
    seconds: { type: "string", default: "10" },
    connections: { type: "string", default: "96" },
    keys: { type: "string", default: "10000" }
  }
})
const SECONDS = Number(args.seconds)
const CONNECTIONS = Number(args.connections)
const KEYS = Number(args.keys)
const VALUE = Buffer.alloc(1024, 0x61)
const root = path.resolve(import.meta.dirname, "..")
const log = (s: string) => process.stderr.write(`# ${s}\n`)

const startNode = (argv: string[]): Promise<{ url: string; child: ChildProcess }> =>
  new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["bin/tally.js", "node", ...argv, "--log-level", "warn"], { cwd: root, stdio: ["ignore", "pipe", "inherit"] })
    let out = ""
    child.stdout!.on("data", (d: Buffer) => {
      out += d
      const m = /^ready \S+ (http:\/\/\S+)$/m.exec(out)
      if (m) resolve({ url: m[1]!, child })
    })
    child.on("exit", (code) => reject(new Error(`node exited with ${code}`)))
  })

const stopAll = (children: ChildProcess[]) =>
  Promise.all(children.map((c) => new Promise<void>((resolve) => {
    c.removeAllListeners("exit")
    c.on("exit", () => resolve())
    c.kill("SIGTERM")
  })))

interface Case { readonly rps: number; readonly p50: number; readonly p99: number; readonly p999: number; readonly errors: number }

let counter = 0
/** One autocannon instance per URL, concurrently; `rate` is the total requests/s (0: unlimited). */
const load = async (urls: string[], method: "GET" | "PUT", seconds: number, rate = 0): Promise<Case> => {
  const results = await Promise.all(urls.map((url) => autocannon({
    url,
    connections: Math.max(1, Math.floor(CONNECTIONS / urls.length)),
    duration: seconds,
    ...(rate > 0 ? { overallRate: Math.max(1, Math.floor(rate / urls.length)) } : {}),
    requests: [{
      method,
      setupRequest: (req) =>
        method === "GET"
          ? { ...req, path: `/kv/key-${Math.floor(Math.random() * KEYS)}` }
          : { ...req, path: `/kv/put-${counter++}`, body: VALUE, headers: { "content-type": "application/octet-stream" } }
    }]
  })))
  return {
    rps: results.reduce((n, r) => n + r.requests.average, 0),
    p50: Math.max(...results.map((r) => r.latency.p50)),
    p99: Math.max(...results.map((r) => r.latency.p99)),
    p999: Math.max(...results.map((r) => r.latency.p99_9)),
    errors: results.reduce((n, r) => n + r.errors + r.timeouts + r.non2xx, 0)
  }
}

const preload = async (url: string) => {
  let i = 0
  await autocannon({ url, connections: 20, amount: KEYS, requests: [{ method: "PUT", setupRequest: (req) => ({ ...req, path: `/kv/key-${i++}`, body: VALUE }) }] })
}

const measure = async (name: string, urls: string[]) => {
  log(`${name}: preloading ${KEYS} keys`)
  await preload(urls[0]!)
  await load(urls, "GET", 2)
  log(`${name}: GET ${SECONDS} s`)
  const get = await load(urls, "GET", SECONDS)
  log(`${name}: PUT ${SECONDS} s`)
  const put = await load(urls, "PUT", SECONDS)
  log(`${name}: GET and PUT at half the peak rate`)
  const getHalf = await load(urls, "GET", SECONDS, get.rps / 2)
  const putHalf = await load(urls, "PUT", SECONDS, put.rps / 2)
  return { get, put, getHalf, putHalf }
}

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "tally-bench-cluster-"))
const cpus = os.cpus()
log(`${cpus.length} x ${cpus[0]?.model}, Node ${process.version}`)

const single = await startNode(["--id", "solo", "--port", "9301", "--cluster-port", "9401", "--data", path.join(tmp, "solo"), "--fsync", "batch"])
const solo = await measure("single node", [single.url])
await stopAll([single.child])

const first = await startNode(["--id", "c1", "--port", "9311", "--cluster-port", "9411", "--data", path.join(tmp, "c1"), "--fsync", "batch", "--n", "3", "--r", "2", "--w", "2"])
const rest = await Promise.all([2, 3].map((i) => startNode(["--id", `c${i}`, "--port", String(9310 + i), "--cluster-port", String(9410 + i), "--data", path.join(tmp, `c${i}`), "--fsync", "batch", "--n", "3", "--r", "2", "--w", "2", "--seeds", "127.0.0.1:9311"])))
const nodes = [first, ...rest]
// Wait until every node sees three members up.
for (let tries = 0; tries < 100; tries++) {
  const views = await Promise.all(nodes.map(async (n) => (await fetch(`${n.url}/admin/cluster`)).json() as Promise<{ nodes: Array<{ status: string }> }>))
  if (views.every((v) => v.nodes.length === 3 && v.nodes.every((m) => m.status === "up"))) break
  await new Promise((r) => setTimeout(r, 200))
}
const cluster = await measure("3-node cluster", nodes.map((n) => n.url))
await stopAll(nodes.map((n) => n.child))
fs.rmSync(tmp, { recursive: true, force: true })

const row = (name: string, c: Case) =>
  `${name.padEnd(26)} ${c.rps.toFixed(0).padStart(8)} ${String(c.p50).padStart(7)} ${String(c.p99).padStart(7)} ${String(c.p999).padStart(8)} ${String(c.errors).padStart(7)}`
console.log(`${"case".padEnd(26)} ${"req/s".padStart(8)} ${"p50 ms".padStart(7)} ${"p99 ms".padStart(7)} ${"p99.9 ms".padStart(8)} ${"errors".padStart(7)}`)
console.log(row("single node GET", solo.get))
console.log(row("single node PUT", solo.put))
console.log(row("cluster GET (r=2)", cluster.get))
console.log(row("cluster PUT (w=2)", cluster.put))
console.log(row("cluster GET at half peak", cluster.getHalf))
console.log(row("cluster PUT at half peak", cluster.putHalf))
const ratioPut = cluster.put.rps / solo.put.rps
const ratioGet = cluster.get.rps / solo.get.rps
console.log(`cluster/single: PUT ${ratioPut.toFixed(2)} (target >= 0.35), GET ${ratioGet.toFixed(2)}; p99 at half peak: GET ${cluster.getHalf.p99} ms, PUT ${cluster.putHalf.p99} ms (target < 25)`)
console.log(JSON.stringify({
  bench: "cluster",
  n: 3, r: 2, w: 2, fsync: "batch", connections: CONNECTIONS, seconds: SECONDS,
  single: solo, cluster,
  ratio_put: ratioPut,
  ratio_get: ratioGet,
  targets_met: { put_ratio: ratioPut >= 0.35, p99_half_peak: cluster.getHalf.p99 < 25 && cluster.putHalf.p99 < 25 }
}))

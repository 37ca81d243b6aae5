/**
 * npm run bench:rebalance: a fourth node joins a 3-node cluster (N=3, R=2, W=2, Q=64,
 * `--fsync batch`, data under a temp dir) that holds K keys of 1 KiB, while a client offers
 * a fixed modest load (PUT/s of fresh keys + GET/s of loaded keys, round-robin over the
 * three original nodes, open loop). Measures:
 *
 * - load time (K PUTs through autocannon, spread over the three nodes);
 * - the transfer rate, two ways: (a) "polled": GET /admin/transfers every 500 ms, the keys
 *   each transfer reached (the last keysSent seen, or keysTotal for a transfer that vanished
 *   between polls because it finished) over the time from the first running transfer to the
 *   last one gone; (b) "end to end": the keys the new node holds once the ring has settled
 *   over the time from its join (its `ready` line) to the settled ring; also the new node's
 *   key count (GET /health, polled with the transfers) over the middle 80% of its growth.
 *   MB/s counts 1 KiB value + 16-byte key per key (the payload; the stored object has a few
 *   more bytes). With it, the new node's group commits (records per fdatasync, /metrics),
 *   each node's CPU share (/proc) and, per phase (before, during, after), each node's
 *   event-loop delay (prom-client's default metrics) and the client's own
 *   (perf_hooks.monitorEventLoopDelay: a late request start counts as latency);
 * - time from the join to the settled ring (all four nodes report `settled`, one ring
 *   version, four owners);
 * - partitions moved (owners before vs after) against the optimum Q/S, and replicas
 *   gained by the new node against N*Q/S;
 * - client latency (from each request's scheduled start, so a late start counts) before the
 *   join and during the move, p50/p99 (target: p99 during / p99 before <= 2), and errors
 *   (connection errors, timeouts, non-2xx; a GET of a loaded key that answers 404 counts);
 * - for comparison, the disk's durable append bandwidth (perf/lib/ceiling.ts, 2 s) on the
 *   same file system.
 *
 * Every node runs in its own process group; all are killed on exit, also on failure.
 * Prints figures, then one JSON line last.
 *
 * Options: --keys K (1000000), --rate R per operation (200: R PUT/s + R GET/s),
 * --before-seconds (20), --after-seconds (10), --base-port (32100: client ports 32101-32104,
 * internode ports 100 above; the tests' ranges, internode ports included, end at 31999 and
 * Linux's ephemeral ports start at 32768), --timeout seconds for the move to settle (3600),
 * --profile DIR (each node writes a CPU profile there on exit).
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process"
import * as fs from "node:fs"
import * as http from "node:http"
import * as os from "node:os"
import * as path from "node:path"
import { monitorEventLoopDelay, type ELDHistogram } from "node:perf_hooks"
import { parseArgs } from "node:util"
import autocannon from "autocannon"
import { preferenceList, type Ring } from "../src/ring/Ring.ts"
import { bandwidthCeiling } from "./lib/ceiling.ts"
import { keyOf, KEY_BYTES, VALUE_BYTES, valueOf } from "./lib/data.ts"
import { fmt, progress, quantile, table } from "./lib/measure.ts"

const { values: args } = parseArgs({
  options: {
    keys: { type: "string", default: "1000000" },
    rate: { type: "string", default: "200" },
    "before-seconds": { type: "string", default: "20" },
    "after-seconds": { type: "string", default: "10" },
    "base-port": { type: "string", default: "32100" },
    timeout: { type: "string", default: "3600" },
    profile: { type: "string" }
  }
})
const K = Number(args.keys)
const RATE = Number(args.rate)
const BEFORE_S = Number(args["before-seconds"])
const AFTER_S = Number(args["after-seconds"])
const BASE = Number(args["base-port"])
const TIMEOUT_S = Number(args.timeout)
/** With --profile DIR, every node writes a V8 CPU profile there when it exits. */
const PROFILE = args.profile === undefined ? [] : ["--cpu-prof", "--cpu-prof-dir", path.resolve(args.profile)]
const N = 3
const Q = 64
const root = path.resolve(import.meta.dirname, "..")
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

// ---- node processes, each its own process group ------------------------------------------

interface Node {
  readonly id: string
  readonly port: number
  readonly url: string
  readonly dir: string
  child: ChildProcess
  warnings: number
}

const nodes: Node[] = []
let cleaned = false
/** Kills every process group this script started (synchronous: safe in an exit handler). */
const killAll = (signal: NodeJS.Signals = "SIGKILL") => {
  for (const n of nodes) {
    if (n.child.exitCode !== null || n.child.signalCode !== null || n.child.pid === undefined) continue
    try {
      process.kill(-n.child.pid, signal)
    } catch {
      // already gone
    }
  }
}
/** The run's temp dir, removed on every way out. */
let tmpDir: string | undefined
const removeTmp = () => {
  // A node just killed may still be creating a file: retry a directory that is not yet empty.
  if (tmpDir !== undefined) fs.rmSync(tmpDir, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 })
  tmpDir = undefined
}
process.on("exit", () => {
  killAll()
  removeTmp()
})
for (const s of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
  process.on(s, () => {
    killAll()
    removeTmp()
    process.exit(128 + (s === "SIGINT" ? 2 : s === "SIGTERM" ? 15 : 1))
  })
}

const startNode = (tmp: string, i: number, seed?: Node): Promise<Node> =>
  new Promise((resolve, reject) => {
    const id = `n${i}`
    const port = BASE + i
    const dir = path.join(tmp, id)
    const argv = [
      ...PROFILE, "bin/tally.js", "node", "--id", id, "--port", String(port), "--cluster-port", String(port + 100),
      "--data", dir, "--fsync", "batch", "--n", String(N), "--r", "2", "--w", "2", "--partitions", String(Q),
      "--log-level", "warn", ...(seed === undefined ? [] : ["--seeds", `127.0.0.1:${seed.port}`])
    ]
    const child = spawn(process.execPath, argv, { cwd: root, stdio: ["ignore", "pipe", "pipe"], detached: true })
    const node: Node = { id, port, url: `http://127.0.0.1:${port}`, dir, child, warnings: 0 }
    nodes.push(node)
    let out = ""
    let ready = false
    child.stdout!.on("data", (d: Buffer) => {
      out += d
      if (!ready && /^ready /m.test(out)) {
        ready = true
        resolve(node)
      }
    })
    let err = ""
    child.stderr!.on("data", (d: Buffer) => {
      err += d
      let nl: number
      while ((nl = err.indexOf("\n")) >= 0) {
        const line = err.slice(0, nl)
        err = err.slice(nl + 1)
        node.warnings++
        if (node.warnings <= 50) process.stderr.write(`  [${id}] ${line.slice(0, 300)}\n`)
        else if (node.warnings === 51) process.stderr.write(`  [${id}] (further log lines not shown)\n`)
      }
    })
    child.on("exit", (code, sig) => {
      if (!ready) reject(new Error(`${id} exited (${code ?? sig}) before it was ready`))
      else if (!cleaned) process.stderr.write(`# ${id} exited (${code ?? sig}) during the run\n`)
    })
    setTimeout(() => {
      if (!ready) reject(new Error(`${id} not ready in 60 s`))
    }, 60_000).unref()
  })

/** SIGTERM every node, wait up to 20 s, then SIGKILL what is left. */
const stopAll = async () => {
  cleaned = true
  const alive = nodes.filter((n) => n.child.exitCode === null && n.child.signalCode === null)
  const exited = Promise.all(alive.map((n) => new Promise<void>((r) => n.child.once("exit", () => r()))))
  killAll("SIGTERM")
  await Promise.race([exited, sleep(20_000)])
  killAll("SIGKILL")
  await Promise.race([exited, sleep(5_000)])
}

// ---- admin views -------------------------------------------------------------------------

interface View {
  readonly nodes: ReadonlyArray<{ id: string; status: string; partitions: number }>
  readonly owners: ReadonlyArray<string>
  readonly settled: boolean
  readonly ringVersion: number
}
interface TransferView { partition: number; from: string; to: string; state: string; keysSent: number; keysTotal: number }

const getJson = async <A>(url: string, ms = 5_000): Promise<A> => {
  const res = await fetch(url, { signal: AbortSignal.timeout(ms) })
  if (!res.ok) throw new Error(`${url}: ${res.status}`)
  return res.json() as Promise<A>
}
const view = (n: Node) => getJson<View>(`${n.url}/admin/cluster`)
const health = (n: Node) => getJson<{ keys: number; status: string }>(`${n.url}/health`)

const metricsText = async (n: Node) => (await fetch(`${n.url}/metrics`, { signal: AbortSignal.timeout(5_000) })).text()
const metric = (text: string, name: string) => Number(new RegExp(`^${name} (\\S+)$`, "m").exec(text)?.[1] ?? Number.NaN)

/**
 * A node's event-loop delay since the previous scrape (prom-client's default metrics: a
 * 10 ms resolution histogram, reset by every scrape), ms.
 */
const loopLag = async (n: Node) => {
  const text = await metricsText(n).catch(() => "")
  const ms = (name: string) => Math.round(metric(text, name) * 1000 * 10) / 10
  return { p99: ms("nodejs_eventloop_lag_p99_seconds"), max: ms("nodejs_eventloop_lag_max_seconds") }
}

/** This process's (the client's) event-loop delay since `h` was last reset, ms. */
const ownLag = (h: ELDHistogram) => {
  const ms = (ns: number) => Math.round(ns / 1e5) / 10
  const out = { p99: ms(h.percentile(99)), max: ms(h.max) }
  h.reset()
  return out
}

/** The engine's write counters from a node's /metrics. */
const engineCounters = async (n: Node) => {
  const text = await metricsText(n)
  const read = (name: string) => metric(text, name)
  return {
    records: read("tally_engine_records_total"),
    batches: read("tally_engine_batches_total"),
    fsyncs: read("tally_engine_fsyncs_total"),
    fsyncSeconds: read("tally_engine_fsync_seconds_total")
  }
}

/** CPU seconds (user + system) a process has used, from /proc (NaN where there is none). */
const cpuSeconds = (pid: number | undefined): number => {
  try {
    const f = fs.readFileSync(`/proc/${pid}/stat`, "utf8")
    const fields = f.slice(f.lastIndexOf(")") + 2).split(" ")
    return (Number(fields[11]) + Number(fields[12])) / 100
  } catch {
    return Number.NaN
  }
}

/** Every listed node's view, or undefined where one does not answer. */
const views = (ns: ReadonlyArray<Node>) => Promise.all(ns.map((n) => view(n).catch(() => undefined)))

const settledOn = (vs: ReadonlyArray<View | undefined>, members: number) => {
  const v0 = vs[0]
  return v0 !== undefined && vs.every((v) => v !== undefined && v.settled && v.ringVersion === v0.ringVersion &&
    new Set(v.owners).size === members && JSON.stringify(v.owners) === JSON.stringify(v0.owners))
}

// ---- the client: open-loop fixed rate, latency from each request's scheduled start ------

interface Sample { readonly slot: number; readonly ms: number; readonly op: "GET" | "PUT"; readonly outcome: "ok" | "missing" | "status" | "error" | "timeout" }

const REQUEST_TIMEOUT_MS = 10_000

const client = (urls: ReadonlyArray<string>, rate: number, loadedKeys: number) => {
  const agents = urls.map(() => new http.Agent({ keepAlive: true, maxSockets: 128 }))
  const samples: Sample[] = []
  let stopped = false
  let inflight = 0
  let fresh = loadedKeys
  let rr = 0
  let getPick = 0x2545f491
  const nextGet = () => {
    getPick ^= getPick << 13
    getPick >>>= 0
    getPick ^= getPick >>> 17
    getPick ^= getPick << 5
    getPick >>>= 0
    return getPick % loadedKeys
  }
  const fire = (slot: number, op: "GET" | "PUT") => {
    const at = rr++ % urls.length
    const u = new URL(urls[at]!)
    const i = op === "PUT" ? fresh++ : nextGet()
    const body = op === "PUT" ? valueOf(i) : undefined
    inflight++
    let done = false
    const finish = (outcome: Sample["outcome"]) => {
      if (done) return
      done = true
      inflight--
      samples.push({ slot, ms: performance.now() - slot, op, outcome })
    }
    const req = http.request({
      agent: agents[at], host: u.hostname, port: u.port, method: op, path: `/kv/${keyOf(i)}`,
      headers: body === undefined ? {} : { "content-type": "application/octet-stream", "content-length": body.length }
    }, (res) => {
      const code = res.statusCode ?? 0
      res.resume()
      res.on("end", () => finish(code >= 200 && code < 300 ? "ok" : op === "GET" && code === 404 ? "missing" : "status"))
      res.on("error", () => finish("error"))
    })
    req.setTimeout(REQUEST_TIMEOUT_MS, () => {
      finish("timeout")
      req.destroy()
    })
    req.on("error", () => finish("error"))
    req.end(body)
  }
  // Alternating PUT and GET slots, 2*rate per second in all.
  const interval = 1000 / (2 * rate)
  const t0 = performance.now() + 5
  let k = 0
  const pump = () => {
    if (stopped) return
    const now = performance.now()
    for (let slot = t0 + k * interval; slot <= now; slot = t0 + ++k * interval) fire(slot, k % 2 === 0 ? "PUT" : "GET")
    setTimeout(pump, Math.max(0, t0 + k * interval - performance.now()))
  }
  setTimeout(pump, 5)
  return {
    samples,
    inflight: () => inflight,
    stop: async () => {
      stopped = true
      for (let i = 0; i < 200 && inflight > 0; i++) await sleep(50)
      for (const a of agents) a.destroy()
    }
  }
}

interface Window { readonly count: number; readonly perSecond: number; readonly p50: number; readonly p99: number; readonly p999: number; readonly max: number; readonly errors: number; readonly missing: number }

const windowOf = (samples: ReadonlyArray<Sample>, from: number, to: number, op?: "GET" | "PUT"): Window => {
  const xs = samples.filter((s) => s.slot >= from && s.slot < to && (op === undefined || s.op === op))
  const sorted = Float64Array.from(xs.map((s) => s.ms)).sort()
  const r = (x: number) => Math.round(x * 100) / 100
  return {
    count: xs.length,
    perSecond: xs.length / Math.max(0.001, (to - from) / 1000),
    p50: r(quantile(sorted, 0.5)),
    p99: r(quantile(sorted, 0.99)),
    p999: r(quantile(sorted, 0.999)),
    max: r(sorted[sorted.length - 1] ?? Number.NaN),
    errors: xs.filter((s) => s.outcome !== "ok").length,
    missing: xs.filter((s) => s.outcome === "missing").length
  }
}

// ---- the run -----------------------------------------------------------------------------

const commit = (() => {
  try {
    return execFileSync("git", ["rev-parse", "--short", "HEAD"], { cwd: root, encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim()
  } catch {
    return "unknown"
  }
})()
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "tally-bench-rebalance-"))
tmpDir = tmp
const cpus = os.cpus()
const load0 = os.loadavg()
progress(`commit ${commit}, ${cpus.length} x ${cpus[0]?.model}, Node ${process.version}, load average ${load0.map((x) => x.toFixed(2)).join(" ")}; K=${K}, ${RATE} PUT/s + ${RATE} GET/s; data in ${tmp}`)

const run = async () => {
  progress("disk: durable append bandwidth, 2 s")
  const disk = await bandwidthCeiling(tmp, 2000)
  fs.rmSync(path.join(tmp, "ceiling-bandwidth.seg"), { force: true })
  const diskMBps = (disk.perSecond * disk.recordBytes) / 1e6
  progress(`disk: ${fmt(disk.perSecond)} records/s of ${disk.recordBytes} B = ${fmt(diskMBps, 1)} MB/s durable`)

  progress("starting n1, n2, n3")
  const n1 = await startNode(tmp, 1)
  await Promise.all([startNode(tmp, 2, n1), startNode(tmp, 3, n1)])
  const three = nodes.slice(0, 3)
  for (let i = 0; ; i++) {
    if (settledOn(await views(three), 3)) break
    if (i > 300) throw new Error("3 nodes did not settle in 60 s")
    await sleep(200)
  }

  // Load K keys through autocannon, a third per node.
  progress(`loading ${fmt(K)} keys of 1 KiB`)
  let next = 0
  const tLoad0 = performance.now()
  const ticker = setInterval(() => progress(`  loaded ${fmt(Math.min(next, K))} / ${fmt(K)}`), 15_000)
  const results = await Promise.all(three.map((n, i) => autocannon({
    url: n.url,
    connections: 16,
    amount: Math.floor(K / 3) + (i < K % 3 ? 1 : 0),
    timeout: 30,
    requests: [{
      method: "PUT",
      setupRequest: (req) => {
        const k = next++
        return { ...req, path: `/kv/${keyOf(k)}`, body: valueOf(k), headers: { "content-type": "application/octet-stream" } }
      }
    }]
  })))
  clearInterval(ticker)
  const loadSeconds = (performance.now() - tLoad0) / 1000
  const loadErrors = results.reduce((n, r) => n + r.errors + r.timeouts + r.non2xx, 0)
  const loadRate = K / loadSeconds
  progress(`loaded in ${fmt(loadSeconds, 1)} s (${fmt(loadRate)} PUT/s), ${loadErrors} errors`)
  if (next < K) throw new Error(`the load issued only ${next} of ${K} keys`)
  // The third replica of each write lands after the W=2 acknowledgement: wait for it.
  for (let i = 0; ; i++) {
    const hs = await Promise.all(three.map(health))
    if (hs.every((h) => h.keys >= K)) break
    if (i > 600) throw new Error(`replicas do not hold all keys: ${hs.map((h) => h.keys).join(", ")}`)
    await sleep(100)
  }
  await sleep(2000)

  const before = (await view(n1))
  const ownersBefore = [...before.owners]

  progress(`client: ${RATE} PUT/s + ${RATE} GET/s over n1..n3, ${BEFORE_S} s before the join`)
  const load = client(three.map((n) => n.url), RATE, K)
  // The client's own event loop: a late request start counts as latency, so say if it was late.
  const clientLoop = monitorEventLoopDelay({ resolution: 1 })
  clientLoop.enable()
  await sleep(2000) // warm-up, not counted
  const tBefore0 = performance.now()
  await Promise.all(three.map(loopLag))
  ownLag(clientLoop)
  await sleep(BEFORE_S * 1000)
  const lagBefore = await Promise.all(three.map(loopLag))
  const clientLagBefore = ownLag(clientLoop)

  // The join: n4 starts with --seeds and asks n1 to join.
  progress("n4 joins")
  const tSpawn = performance.now()
  const n4 = await startNode(tmp, 4, n1)
  const tJoin = performance.now()
  const four = [...three, n4]
  const cpu0 = four.map((n) => cpuSeconds(n.child.pid))
  const m0 = await engineCounters(n4)

  // Poll the transfers and the ring every 500 ms until all four agree on a settled ring.
  const seen = new Map<string, { sent: number; total: number; first: number; last: number; running?: number; gone?: number }>()
  const n4Keys: Array<{ t: number; keys: number }> = []
  let tMoving: number | undefined
  let tFirstRunning: number | undefined
  let tSettled: number | undefined
  let settledView: View | undefined
  let maxConcurrent = 0
  let polls = 0
  let pollFailures = 0
  const series: Array<{ t: number; keys: number }> = []
  const deadline = tJoin + TIMEOUT_S * 1000
  let lastReport = tJoin
  while (tSettled === undefined) {
    const tPoll = performance.now()
    if (tPoll > deadline) throw new Error(`the ring did not settle within ${TIMEOUT_S} s of the join`)
    const [vs, list, h] = await Promise.all([
      views(four),
      getJson<{ transfers: TransferView[] }>(`${n1.url}/admin/transfers`, 5_000).catch(() => undefined),
      health(n4).catch(() => undefined)
    ])
    polls++
    const now = performance.now()
    if (h !== undefined) n4Keys.push({ t: now, keys: h.keys })
    if (list === undefined) pollFailures++
    else {
      const live = new Set<string>()
      let running = 0
      for (const t of list.transfers) {
        const id = `${t.partition}>${t.to}`
        live.add(id)
        const s = seen.get(id) ?? { sent: 0, total: 0, first: now, last: now }
        s.sent = Math.max(s.sent, t.keysSent)
        s.total = Math.max(s.total, t.keysTotal)
        s.last = now
        delete s.gone
        seen.set(id, s)
        if (t.state !== "pending") {
          s.running ??= now
          running++
          tFirstRunning ??= now
        }
      }
      maxConcurrent = Math.max(maxConcurrent, running)
      for (const [id, s] of seen) if (!live.has(id) && s.gone === undefined) s.gone = now
      series.push({ t: now - tJoin, keys: [...seen.values()].reduce((n, s) => n + (s.gone !== undefined ? Math.max(s.sent, s.total) : s.sent), 0) })
    }
    const v1 = vs[0]
    if (tMoving === undefined && v1 !== undefined && (v1.ringVersion > before.ringVersion || !v1.settled)) tMoving = now
    if (tMoving !== undefined && settledOn(vs, 4)) {
      tSettled = now
      settledView = vs[0]
      break
    }
    if (now - lastReport > 10_000) {
      lastReport = now
      const last = series.at(-1)
      progress(`  ${fmt((now - tJoin) / 1000)} s after the join: ~${fmt(last?.keys ?? 0)} keys transferred, ${[...seen.values()].filter((s) => s.gone === undefined).length} transfers listed`)
    }
    await sleep(Math.max(0, 500 - (performance.now() - tPoll)))
  }
  progress(`settled ${fmt((tSettled - tJoin) / 1000, 1)} s after the join`)
  const cpu1 = four.map((n) => cpuSeconds(n.child.pid))
  const lagDuring = await Promise.all(four.map(loopLag))
  const clientLagDuring = ownLag(clientLoop)
  const m1 = await engineCounters(n4)
  const tAfter0 = tSettled
  await sleep(AFTER_S * 1000)
  const tAfter1 = performance.now()
  const lagAfter = await Promise.all(four.map(loopLag))
  const clientLagAfter = ownLag(clientLoop)
  clientLoop.disable()
  await load.stop()

  // What the new node ends with, and whether every loaded key still reads.
  const h4 = await health(n4)
  const hs = await Promise.all(three.map(health))
  const probe = 2000
  let probeMissing = 0
  for (let i = 0; i < probe; i++) {
    const k = Math.floor((i * K) / probe)
    const res = await fetch(`${four[i % 4]!.url}/kv/${keyOf(k)}`)
    await res.arrayBuffer()
    if (res.status !== 200) probeMissing++
  }

  // Partitions moved: owners before vs after; replicas the new node gained: preference lists.
  const ownersAfter = [...settledView!.owners]
  const moved = ownersAfter.filter((o, p) => o !== ownersBefore[p]).length
  const ringOf = (owners: ReadonlyArray<string>): Ring => ({ partitions: Q, owners, version: 0, members: [...new Set(owners)].sort() })
  const rb = ringOf(ownersBefore)
  const ra = ringOf(ownersAfter)
  let replicasGained = 0
  for (let p = 0; p < Q; p++) {
    const b = preferenceList(rb, p, N)
    replicasGained += preferenceList(ra, p, N).filter((x) => !b.includes(x)).length
  }
  const S = 4
  const optimalMoved = Q / S
  const optimalReplicas = (N * Q) / S

  // Transfer rates.
  const polledKeys = series.at(-1)?.keys ?? 0
  const gones = [...seen.values()].map((s) => s.gone ?? s.last)
  const tLastGone = gones.length > 0 ? Math.max(...gones) : tSettled
  const activeSeconds = ((tLastGone - (tFirstRunning ?? tJoin)) / 1000)
  const perKeyBytes = VALUE_BYTES + KEY_BYTES
  const polled = { keys: polledKeys, seconds: activeSeconds, keysPerSecond: polledKeys / activeSeconds, MBps: (polledKeys * perKeyBytes) / 1e6 / activeSeconds }
  const joinToSettled = (tSettled - tJoin) / 1000
  // The new node's key count, polled: the rate over the middle 80% of its growth.
  const finalN4 = n4Keys.at(-1)?.keys ?? 0
  const at = (share: number) => n4Keys.find((x) => x.keys >= share * finalN4)
  const lo = at(0.1)
  const hi = at(0.9)
  const steady = lo !== undefined && hi !== undefined && hi.t > lo.t ? (hi.keys - lo.keys) / ((hi.t - lo.t) / 1000) : Number.NaN
  // Transfers seen both running and finished: keys and time of each, to a poll (500 ms).
  const timed = [...seen.values()].filter((s) => s.running !== undefined && s.gone !== undefined && s.total > 0)
  const perTransfer = timed.length === 0 ? Number.NaN : timed.reduce((n, s) => n + s.total, 0) / (timed.reduce((n, s) => n + (s.gone! - s.running!), 0) / 1000)
  const n4Writes = {
    records: m1.records - m0.records,
    batches: m1.batches - m0.batches,
    recordsPerBatch: (m1.records - m0.records) / Math.max(1, m1.batches - m0.batches),
    fsyncs: m1.fsyncs - m0.fsyncs,
    meanFsyncMs: ((m1.fsyncSeconds - m0.fsyncSeconds) * 1000) / Math.max(1, m1.fsyncs - m0.fsyncs),
    fsyncBusyShare: (m1.fsyncSeconds - m0.fsyncSeconds) / joinToSettled
  }
  const cpuShare = Object.fromEntries(four.map((n, i) => [n.id, (cpu1[i]! - cpu0[i]!) / joinToSettled]))
  const endToEnd = { keys: h4.keys, seconds: joinToSettled, keysPerSecond: h4.keys / joinToSettled, MBps: (h4.keys * perKeyBytes) / 1e6 / joinToSettled }

  const beforeAll = windowOf(load.samples, tBefore0, tSpawn)
  const duringAll = windowOf(load.samples, tJoin, tSettled)
  const afterAll = windowOf(load.samples, tAfter0, tAfter1)
  const phases = {
    before: { all: beforeAll, get: windowOf(load.samples, tBefore0, tSpawn, "GET"), put: windowOf(load.samples, tBefore0, tSpawn, "PUT") },
    during: { all: duringAll, get: windowOf(load.samples, tJoin, tSettled, "GET"), put: windowOf(load.samples, tJoin, tSettled, "PUT") },
    after: { all: afterAll, get: windowOf(load.samples, tAfter0, tAfter1, "GET"), put: windowOf(load.samples, tAfter0, tAfter1, "PUT") }
  }
  const ratio = duringAll.p99 / beforeAll.p99
  const ratioGet = phases.during.get.p99 / phases.before.get.p99
  const ratioPut = phases.during.put.p99 / phases.before.put.p99
  const load1 = os.loadavg()

  console.log(`commit ${commit}; K = ${fmt(K)} keys of 1 KiB, N=${N} R=2 W=2 Q=${Q}, fsync batch; client ${RATE} PUT/s + ${RATE} GET/s over n1..n3`)
  console.log(`load average at start ${load0.map((x) => x.toFixed(2)).join(" ")}, at end ${load1.map((x) => x.toFixed(2)).join(" ")}`)
  console.log(`disk durable append bandwidth: ${fmt(diskMBps, 1)} MB/s (${fmt(disk.perSecond)} records/s)`)
  console.log(`load: ${fmt(loadSeconds, 1)} s (${fmt(loadRate)} PUT/s), ${loadErrors} errors`)
  console.log(`join -> settled: ${fmt(joinToSettled, 1)} s (n4 start to ready ${fmt((tJoin - tSpawn) / 1000, 2)} s; ready to ring moving ${fmt(((tMoving ?? tJoin) - tJoin) / 1000, 2)} s; first transfer running at ${fmt(((tFirstRunning ?? tJoin) - tJoin) / 1000, 2)} s)`)
  console.log(`transfer, polled /admin/transfers: ${fmt(polled.keys)} keys in ${fmt(polled.seconds, 1)} s = ${fmt(polled.keysPerSecond)} keys/s, ${fmt(polled.MBps, 2)} MB/s (${seen.size} transfers, at most ${maxConcurrent} running at once)`)
  console.log(`transfer, end to end: n4 holds ${fmt(h4.keys)} keys, ${fmt(joinToSettled, 1)} s join -> settled = ${fmt(endToEnd.keysPerSecond)} keys/s, ${fmt(endToEnd.MBps, 2)} MB/s (expected keys ~ N/S*K + new writes = ${fmt((N / S) * K)})`)
  console.log(`transfer, n4 key count polled: ${fmt(steady)} keys/s over the middle 80% of its growth; per transfer (${timed.length} timed to a poll): ${fmt(perTransfer)} keys/s`)
  console.log(`n4 writes join -> settled: ${fmt(n4Writes.records)} records in ${fmt(n4Writes.batches)} group commits (${fmt(n4Writes.recordsPerBatch, 2)} records each), ${fmt(n4Writes.fsyncs)} fdatasyncs of ${fmt(n4Writes.meanFsyncMs, 2)} ms mean (fdatasync busy ${fmt(100 * n4Writes.fsyncBusyShare)}% of the time)`)
  console.log(`CPU share of one core join -> settled: ${Object.entries(cpuShare).map(([id, x]) => `${id} ${fmt(100 * x)}%`).join(", ")}`)
  const lags = (ls: ReadonlyArray<{ p99: number; max: number }>, c: { p99: number; max: number }) => `${ls.map((l, i) => `n${i + 1} ${l.p99}/${l.max}`).join(", ")}, client ${c.p99}/${c.max}`
  console.log(`event-loop delay p99/max ms (nodes: 10 ms resolution), before: ${lags(lagBefore, clientLagBefore)}; during: ${lags(lagDuring, clientLagDuring)}; after: ${lags(lagAfter, clientLagAfter)}`)
  console.log(`keys after: ${[...hs, h4].map((h, i) => `n${i + 1} ${fmt(h.keys)}`).join(", ")}; ${probeMissing} of ${probe} probed loaded keys missing`)
  console.log(`partitions moved: ${moved} / optimal ${optimalMoved} (owners); replicas gained by n4: ${replicasGained} / optimal ${optimalReplicas}`)
  const cell = (w: Window) => [fmt(w.count), fmt(w.perSecond), fmt(w.p50, 2), fmt(w.p99, 2), fmt(w.p999, 2), fmt(w.max, 1), fmt(w.errors)]
  console.log(table([
    ["phase", "requests", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "errors"],
    ["before, all", ...cell(phases.before.all)],
    ["before, GET", ...cell(phases.before.get)],
    ["before, PUT", ...cell(phases.before.put)],
    ["during, all", ...cell(phases.during.all)],
    ["during, GET", ...cell(phases.during.get)],
    ["during, PUT", ...cell(phases.during.put)],
    ["after, all", ...cell(phases.after.all)]
  ]))
  console.log(`p99 during / before: ${ratio.toFixed(2)} (GET ${ratioGet.toFixed(2)}, PUT ${ratioPut.toFixed(2)}; target <= 2: ${ratio <= 2 ? "met" : "NOT met"}); errors during the move: ${duringAll.errors} (${duringAll.missing} GETs answered 404)`)
  console.log(`node log lines (warn and above): ${nodes.map((n) => `${n.id} ${n.warnings}`).join(", ")}`)
  console.log(JSON.stringify({
    bench: "rebalance", commit,
    keys: K, n: N, r: 2, w: 2, partitions: Q, fsync: "batch", rate_put: RATE, rate_get: RATE,
    loadavg_start: load0, loadavg_end: load1,
    disk_MBps: diskMBps,
    load_seconds: loadSeconds, load_put_per_second: loadRate, load_errors: loadErrors,
    join_to_settled_seconds: joinToSettled,
    join_to_moving_seconds: ((tMoving ?? tJoin) - tJoin) / 1000,
    start_to_ready_seconds: (tJoin - tSpawn) / 1000,
    transfer_polled: { ...polled, transfers: seen.size, max_running: maxConcurrent, polls, poll_failures: pollFailures },
    transfer_end_to_end: endToEnd,
    transfer_n4_steady_keys_per_second: steady,
    transfer_per_transfer_keys_per_second: perTransfer, transfers_timed: timed.length,
    n4_writes: n4Writes,
    cpu_share: cpuShare,
    loop_lag_before: Object.fromEntries(lagBefore.map((l, i) => [`n${i + 1}`, l])),
    loop_lag_during: Object.fromEntries(lagDuring.map((l, i) => [`n${i + 1}`, l])),
    loop_lag_after: Object.fromEntries(lagAfter.map((l, i) => [`n${i + 1}`, l])),
    client_loop_lag: { before: clientLagBefore, during: clientLagDuring, after: clientLagAfter },
    keys_after: { n1: hs[0]!.keys, n2: hs[1]!.keys, n3: hs[2]!.keys, n4: h4.keys },
    probe_missing: probeMissing,
    partitions_moved: moved, partitions_moved_optimal: optimalMoved,
    replicas_gained: replicasGained, replicas_gained_optimal: optimalReplicas,
    latency: phases,
    p99_ratio: ratio, p99_ratio_get: ratioGet, p99_ratio_put: ratioPut,
    errors_during: duringAll.errors,
    node_log_lines: Object.fromEntries(nodes.map((n) => [n.id, n.warnings])),
    targets_met: { p99_ratio: ratio <= 2 }
  }))
}

let failed = false
try {
  await run()
} catch (e) {
  failed = true
  process.stderr.write(`# rebalance failed: ${(e as Error)?.stack ?? String(e)}\n`)
} finally {
  await stopAll()
  removeTmp()
}
process.exit(failed ? 1 : 0)

/**
 * Shared by the HTTP benchmarks (bench:http, bench:cluster): options, server child processes
 * that announce `ready <id> <url>`, and autocannon load (GET of preloaded keys, PUT of fresh
 * keys, 1 KiB values) from this process, one instance per target URL.
 */
import { spawn, type ChildProcess } from "node:child_process"
import * as fs from "node:fs"
import * as http from "node:http"
import * as path from "node:path"
import { monitorEventLoopDelay } from "node:perf_hooks"
import { parseArgs } from "node:util"
import autocannon from "autocannon"

/** --seconds per case, --connections in all, --keys preloaded. */
export const loadOptions = (defaultConnections: number, extra: Record<string, { type: "string"; default: string }> = {}) => {
  const { values } = parseArgs({
    options: {
      seconds: { type: "string", default: "10" },
      connections: { type: "string", default: String(defaultConnections) },
      keys: { type: "string", default: "10000" },
      ...extra
    }
  })
  const v = values as Record<string, string>
  return { seconds: Number(v.seconds), connections: Number(v.connections), keys: Number(v.keys), extra: Object.fromEntries(Object.keys(extra).map((k) => [k, v[k]!])) }
}

export const VALUE = Buffer.alloc(1024, 0x61)
export const root = path.resolve(import.meta.dirname, "../..")
export const log = (s: string) => process.stderr.write(`# ${s}\n`)

/** A server child process and the URL its ready line gave. */
export interface Server { readonly url: string; readonly child: ChildProcess }

/** Spawns `node <argv>` in the repo and resolves at its `ready <id> <url>` line. */
export const startServer = (argv: string[]): Promise<Server> =>
  new Promise((resolve, reject) => {
    const child = spawn(process.execPath, argv, { cwd: root, stdio: ["ignore", "pipe", "inherit"] })
    let out = ""
    child.stdout!.on("data", (d: Buffer) => {
      out += d
      const m = /^ready \S+ (http:\/\/\S+)$/m.exec(out)
      if (m) resolve({ url: m[1]!, child })
    })
    child.on("exit", (code) => reject(new Error(`${argv.join(" ")} exited with ${code} before it was ready`)))
  })

/** SIGTERMs the servers and waits for them to exit. */
export const stopServers = (servers: ReadonlyArray<Server>) =>
  Promise.all(servers.map((s) => new Promise<void>((resolve) => {
    s.child.removeAllListeners("exit")
    s.child.on("exit", () => resolve())
    s.child.kill("SIGTERM")
  })))

/** One case's figures (latencies in ms); a paced case also gives this process's own event-loop delay. */
export interface Case {
  readonly rps: number
  readonly p50: number
  readonly p99: number
  readonly p999: number
  readonly errors: number
  /** Requests answered in the case. */
  readonly count?: number
  readonly clientLoopP99?: number
  readonly clientLoopMax?: number
  /** CPU (user + system) per answered request, microseconds: of the server processes together, and of this process. */
  readonly serverCpuUs?: number
  readonly clientCpuUs?: number
}

/** CPU seconds (user + system) process `pid` has used, from /proc/<pid>/stat (clock ticks of 10 ms); undefined where there is no /proc. */
export const cpuSeconds = (pid: number): number | undefined => {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8")
    // Fields after the command name, which is in parentheses and may hold spaces: utime and stime are the 12th and 13th.
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
    return (Number(f[11]) + Number(f[12])) / 100
  } catch {
    return undefined
  }
}

/**
 * Runs a case and adds the CPU per answered request of `servers` (together) and of this
 * process: issue 12's "CPU per request", from /proc, so that a figure does not depend on how
 * busy the machine is the way req/s does.
 */
export const withCpu = async (servers: ReadonlyArray<Server>, run: () => Promise<Case>): Promise<Case> => {
  const sum = () => servers.reduce((n, s) => n + (cpuSeconds(s.child.pid!) ?? Number.NaN), 0)
  const before = sum()
  const mine = process.cpuUsage()
  const c = await run()
  const used = process.cpuUsage(mine)
  const n = Math.max(1, c.count ?? 0)
  return { ...c, serverCpuUs: Math.round(((sum() - before) * 1e6) / n * 10) / 10, clientCpuUs: Math.round(((used.user + used.system) / n) * 10) / 10 }
}

let counter = 0

/**
 * Load on `urls` at once, `connections` split between them; `rate` caps the total requests/s
 * (0: as fast as possible). Percentiles are the worst of the per-URL instances.
 */
export const load = async (urls: ReadonlyArray<string>, method: "GET" | "PUT", o: { seconds: number; connections: number; keys: number }, rate = 0): Promise<Case> => {
  const results = await Promise.all(urls.map((url) => autocannon({
    url,
    connections: Math.max(1, Math.floor(o.connections / urls.length)),
    duration: o.seconds,
    ...(rate > 0 ? { overallRate: Math.max(1, Math.floor(rate / urls.length)) } : {}),
    requests: [{
      method,
      setupRequest: (req) =>
        method === "GET"
          ? { ...req, path: `/kv/key-${Math.floor(Math.random() * o.keys)}` }
          : { ...req, path: `/kv/put-${process.pid}-${counter++}`, body: VALUE, headers: { "content-type": "application/octet-stream" } }
    }]
  })))
  return {
    rps: results.reduce((n, r) => n + r.requests.average, 0),
    p50: Math.max(...results.map((r) => r.latency.p50)),
    p99: Math.max(...results.map((r) => r.latency.p99)),
    p999: Math.max(...results.map((r) => r.latency.p99_9)),
    errors: results.reduce((n, r) => n + r.errors + r.timeouts + r.non2xx, 0),
    count: results.reduce((n, r) => n + r.requests.total, 0)
  }
}

/**
 * Load at a fixed offered rate, open loop: requests start evenly spaced (round-robin over
 * `urls`) whether or not earlier ones have answered, and latency counts from each request's
 * scheduled start, so a stall delays every request behind it and is counted (no coordinated
 * omission). What "p99 at half the peak rate" needs: autocannon's rate limit lets each
 * connection send its whole quota at the start of every second and then pause, so its "half
 * peak" was bursts at full speed, and its p99 at half load came out above the p99 at full
 * load. At most `connections` sockets per URL; this process's event-loop delay is reported
 * with the figures, since a late start here would count as the servers' latency. The first
 * second is a warm-up and not counted: the sockets are opened then, and a fresh burst of
 * connection setups held the first 400 ms of a run at 50-160 ms.
 */
export const paced = async (urls: ReadonlyArray<string>, method: "GET" | "PUT", o: { seconds: number; connections: number; keys: number }, rate: number): Promise<Case> => {
  const agents = urls.map(() => new http.Agent({ keepAlive: true, maxSockets: Math.max(1, Math.floor(o.connections / urls.length)) }))
  const latencies: number[] = []
  let errors = 0
  let inflight = 0
  const interval = 1000 / rate
  const loop = monitorEventLoopDelay({ resolution: 1 })
  loop.enable()
  const WARMUP_MS = 1000
  const t0 = performance.now() + 5
  const counted = t0 + WARMUP_MS
  const end = counted + o.seconds * 1000
  let k = 0
  const fire = (slot: number) => {
    const at = k % urls.length
    const u = new URL(urls[at]!)
    const body = method === "PUT" ? VALUE : undefined
    inflight++
    let done = false
    const finish = (ok: boolean) => {
      if (done) return
      done = true
      inflight--
      if (slot < counted) return
      latencies.push(performance.now() - slot)
      if (!ok) errors++
    }
    const req = http.request({
      agent: agents[at], host: u.hostname, port: u.port, method,
      path: method === "GET" ? `/kv/key-${Math.floor(Math.random() * o.keys)}` : `/kv/paced-${process.pid}-${counter++}`,
      headers: body === undefined ? {} : { "content-type": "application/octet-stream", "content-length": body.length }
    }, (res) => {
      const code = res.statusCode ?? 0
      res.resume()
      res.on("end", () => finish(code >= 200 && code < 300))
      res.on("error", () => finish(false))
    })
    req.setTimeout(10_000, () => {
      finish(false)
      req.destroy()
    })
    req.on("error", () => finish(false))
    req.end(body)
  }
  await new Promise<void>((resolve) => {
    const pump = () => {
      const now = performance.now()
      for (let slot = t0 + k * interval; slot <= now && slot < end; slot = t0 + ++k * interval) fire(slot)
      if (t0 + k * interval >= end) return resolve()
      setTimeout(pump, Math.max(0, t0 + k * interval - performance.now()))
    }
    setTimeout(pump, 5)
    setTimeout(() => loop.reset(), 5 + WARMUP_MS)
  })
  for (let i = 0; i < 400 && inflight > 0; i++) await new Promise((r) => setTimeout(r, 25))
  loop.disable()
  for (const a of agents) a.destroy()
  const sorted = Float64Array.from(latencies).sort()
  const q = (x: number) => Math.round((sorted[Math.min(sorted.length - 1, Math.floor(x * sorted.length))] ?? Number.NaN) * 10) / 10
  return {
    rps: latencies.length / o.seconds, p50: q(0.5), p99: q(0.99), p999: q(0.999), errors: errors + inflight, count: latencies.length,
    clientLoopP99: Math.round(loop.percentile(99) / 1e5) / 10, clientLoopMax: Math.round(loop.max / 1e5) / 10
  }
}

/** PUTs keys key-0 .. key-(keys-1) so GETs find them. */
export const preload = async (url: string, keys: number) => {
  let i = 0
  await autocannon({
    url,
    connections: 20,
    amount: keys,
    requests: [{ method: "PUT", setupRequest: (req) => ({ ...req, path: `/kv/key-${i++}`, body: VALUE, headers: { "content-type": "application/octet-stream" } }) }]
  })
}

/** A table row: name, req/s, p50, p99, p99.9, errors. */
export const row = (name: string, c: Case) =>
  `${name.padEnd(26)} ${c.rps.toFixed(0).padStart(8)} ${String(c.p50).padStart(7)} ${String(c.p99).padStart(7)} ${String(c.p999).padStart(8)} ${String(c.errors).padStart(7)}` +
  (c.serverCpuUs === undefined ? "" : ` ${String(c.serverCpuUs).padStart(10)} ${String(c.clientCpuUs).padStart(10)}`)

export const header = `${"case".padEnd(26)} ${"req/s".padStart(8)} ${"p50 ms".padStart(7)} ${"p99 ms".padStart(7)} ${"p99.9 ms".padStart(8)} ${"errors".padStart(7)} ${"server us".padStart(10)} ${"client us".padStart(10)}`

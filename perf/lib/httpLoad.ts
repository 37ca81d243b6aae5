/**
 * Shared by the HTTP benchmarks (bench:http, bench:cluster): options, server child processes
 * that announce `ready <id> <url>`, and autocannon load (GET of preloaded keys, PUT of fresh
 * keys, 1 KiB values) from this process, one instance per target URL.
 */
import { spawn, type ChildProcess } from "node:child_process"
import * as path from "node:path"
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

/** One case's figures (latencies in ms). */
export interface Case { readonly rps: number; readonly p50: number; readonly p99: number; readonly p999: number; readonly errors: number }

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
    errors: results.reduce((n, r) => n + r.errors + r.timeouts + r.non2xx, 0)
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
  `${name.padEnd(26)} ${c.rps.toFixed(0).padStart(8)} ${String(c.p50).padStart(7)} ${String(c.p99).padStart(7)} ${String(c.p999).padStart(8)} ${String(c.errors).padStart(7)}`

export const header = `${"case".padEnd(26)} ${"req/s".padStart(8)} ${"p50 ms".padStart(7)} ${"p99 ms".padStart(7)} ${"p99.9 ms".padStart(8)} ${"errors".padStart(7)}`

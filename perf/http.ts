/**
 * npm run bench:http: autocannon against one Tally node (fsync batch) and, in the same run,
 * a bare Fastify server serving the same two routes from a JS Map. GET and PUT of 1 KiB
 * values, 100 connections. Servers run as child processes, one at a time; the load comes
 * from this process. Prints a table, then one JSON line with the figures and ratios.
 *
 * Options: --seconds S per case (10), --connections C (100), --keys K preloaded (10000).
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
    connections: { type: "string", default: "100" },
    keys: { type: "string", default: "10000" }
  }
})
const SECONDS = Number(args.seconds)
const CONNECTIONS = Number(args.connections)
const KEYS = Number(args.keys)
const VALUE = Buffer.alloc(1024, 0x61)
const root = path.resolve(import.meta.dirname, "..")
const log = (s: string) => process.stderr.write(`# ${s}\n`)

interface Server { readonly url: string; readonly child: ChildProcess }

const start = (name: string, argv: string[]): Promise<Server> =>
  new Promise((resolve, reject) => {
    const child = spawn(process.execPath, argv, { cwd: root, stdio: ["ignore", "pipe", "inherit"] })
    let out = ""
    child.stdout!.on("data", (d: Buffer) => {
      out += d.toString()
      const m = /^ready \S+ (http:\/\/\S+)$/m.exec(out)
      if (m) resolve({ url: m[1]!, child })
    })
    child.on("exit", (code) => reject(new Error(`${name} exited with ${code} before it was ready`)))
  })

const stop = (s: Server) =>
  new Promise<void>((resolve) => {
    s.child.removeAllListeners("exit")
    s.child.on("exit", () => resolve())
    s.child.kill("SIGTERM")
  })

interface Case { readonly rps: number; readonly p50: number; readonly p99: number; readonly errors: number; readonly non2xx: number }

let putCounter = 0
const run = async (url: string, method: "GET" | "PUT", seconds: number): Promise<Case> => {
  const r = await autocannon({
    url,
    connections: CONNECTIONS,
    duration: seconds,
    requests: [{
      method,
      setupRequest: (req) =>
        method === "GET"
          ? { ...req, path: `/kv/key-${Math.floor(Math.random() * KEYS)}` }
          : { ...req, path: `/kv/put-${process.pid}-${putCounter++}`, body: VALUE, headers: { "content-type": "application/octet-stream" } }
    }]
  })
  return { rps: r.requests.average, p50: r.latency.p50, p99: r.latency.p99, errors: r.errors + r.timeouts, non2xx: r.non2xx }
}

const preload = async (url: string) => {
  let i = 0
  await autocannon({
    url,
    connections: 20,
    amount: KEYS,
    requests: [{ method: "PUT", setupRequest: (req) => ({ ...req, path: `/kv/key-${i++}`, body: VALUE, headers: { "content-type": "application/octet-stream" } }) }]
  })
}

const measure = async (name: string, server: Server) => {
  log(`${name}: preloading ${KEYS} keys`)
  await preload(server.url)
  log(`${name}: warming up`)
  await run(server.url, "GET", 2)
  log(`${name}: GET for ${SECONDS} s`)
  const get = await run(server.url, "GET", SECONDS)
  log(`${name}: PUT for ${SECONDS} s`)
  const put = await run(server.url, "PUT", SECONDS)
  await stop(server)
  return { get, put }
}

const cpus = os.cpus()
log(`${cpus.length} x ${cpus[0]?.model}, Node ${process.version}`)
const bare = await measure("bare fastify", await start("bare", ["perf/servers/bare.ts", "9190"]))
const data = fs.mkdtempSync(path.join(os.tmpdir(), "tally-bench-http-"))
const tally = await measure("tally node", await start("tally", ["bin/tally.js", "node", "--port", "9191", "--data", data, "--fsync", "batch", "--log-level", "warn"]))
fs.rmSync(data, { recursive: true, force: true })

const row = (name: string, c: Case) =>
  `${name.padEnd(18)} ${c.rps.toFixed(0).padStart(9)} ${String(c.p50).padStart(8)} ${String(c.p99).padStart(8)} ${String(c.errors + c.non2xx).padStart(8)}`
console.log(`${"case".padEnd(18)} ${"req/s".padStart(9)} ${"p50 ms".padStart(8)} ${"p99 ms".padStart(8)} ${"errors".padStart(8)}`)
console.log(row("bare GET", bare.get))
console.log(row("tally GET", tally.get))
console.log(row("bare PUT", bare.put))
console.log(row("tally PUT (batch)", tally.put))
const ratios = { get: tally.get.rps / bare.get.rps, put: tally.put.rps / bare.put.rps }
console.log(`ratios: GET ${ratios.get.toFixed(2)} (target >= 0.7), PUT ${ratios.put.toFixed(2)} (target >= 0.5)`)
console.log(JSON.stringify({
  bench: "http",
  connections: CONNECTIONS,
  seconds: SECONDS,
  value_bytes: VALUE.length,
  bare, tally,
  ratio_get: ratios.get,
  ratio_put: ratios.put,
  targets_met: { get: ratios.get >= 0.7, put: ratios.put >= 0.5 }
}))

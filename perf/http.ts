/**
 * npm run bench:http: autocannon against one Tally node (fsync batch) and, in the same run,
 * a bare Fastify server serving the same two routes from a JS Map. GET and PUT of 1 KiB
 * values, 100 connections. Servers run as child processes, one at a time; the load comes
 * from this process. Each case also gives the CPU per request of the server and of this
 * process (/proc). Prints a table, then one JSON line with the figures and ratios.
 *
 * Options: --seconds S per case (10), --connections C (100), --keys K preloaded (10000).
 */
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { header, load, loadOptions, log, preload, row, startServer, stopServers, VALUE, withCpu, type Server } from "./lib/httpLoad.ts"

const o = loadOptions(100)

const measure = async (name: string, server: Server) => {
  log(`${name}: preloading ${o.keys} keys`)
  await preload(server.url, o.keys)
  log(`${name}: warming up`)
  await load([server.url], "GET", { ...o, seconds: 2 })
  log(`${name}: GET for ${o.seconds} s`)
  const get = await withCpu([server], () => load([server.url], "GET", o))
  log(`${name}: PUT for ${o.seconds} s`)
  const put = await withCpu([server], () => load([server.url], "PUT", o))
  await stopServers([server])
  return { get, put }
}

const cpus = os.cpus()
log(`${cpus.length} x ${cpus[0]?.model}, Node ${process.version}`)
const bare = await measure("bare fastify", await startServer(["perf/servers/bare.ts", "9190"]))
const data = fs.mkdtempSync(path.join(os.tmpdir(), "tally-bench-http-"))
const tally = await measure("tally node", await startServer(["bin/tally.js", "node", "--port", "9191", "--data", data, "--fsync", "batch", "--log-level", "warn"]))
fs.rmSync(data, { recursive: true, force: true })

console.log(header)
console.log(row("bare GET", bare.get))
console.log(row("tally GET", tally.get))
console.log(row("bare PUT", bare.put))
console.log(row("tally PUT (batch)", tally.put))
const ratios = { get: tally.get.rps / bare.get.rps, put: tally.put.rps / bare.put.rps }
console.log(`ratios: GET ${ratios.get.toFixed(2)} (target >= 0.7), PUT ${ratios.put.toFixed(2)} (target >= 0.5); server CPU per request: GET ${tally.get.serverCpuUs} us (target <= 20; bare ${bare.get.serverCpuUs}), PUT ${tally.put.serverCpuUs} us (bare ${bare.put.serverCpuUs})`)
console.log(JSON.stringify({
  bench: "http",
  connections: o.connections,
  seconds: o.seconds,
  value_bytes: VALUE.length,
  bare,
  tally,
  ratio_get: ratios.get,
  ratio_put: ratios.put,
  targets_met: { get: ratios.get >= 0.7, put: ratios.put >= 0.5 }
}))

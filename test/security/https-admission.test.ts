/**
 * The client API's HTTPS (--tls-cert, --tls-key) with a certificate made here, and its bound
 * on requests in flight (--max-requests-in-flight): past it, 503 unavailable with Retry-After,
 * the probes still answered, and the slots given back when requests end or clients vanish.
 */
import { execFileSync } from "node:child_process"
import * as fs from "node:fs"
import * as https from "node:https"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import t from "tap"
import { readHttpsFiles } from "../../src/api/Https.ts"
import { assembleNode, type AssembledNode } from "../../src/node/Node.ts"
import { MemoryNetwork } from "../../src/transport/Transport.ts"
import { quiet, testNode, testSettings } from "../api/helpers.ts"
import { eventually } from "../cluster/harness.ts"

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tally-https-"))
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
const cert = path.join(dir, "cert.pem")
const key = path.join(dir, "key.pem")
execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"], { stdio: "ignore" })

const get = (port: number, p: string, ca?: Buffer) =>
  new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = https.request({ host: "127.0.0.1", port, path: p, method: "GET", ...(ca === undefined ? {} : { ca }) }, (res) => {
      let body = ""
      res.on("data", (c: Buffer) => (body += c.toString()))
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }))
    })
    req.on("error", reject)
    req.end()
  })

t.test("--tls-cert/--tls-key: the API answers HTTPS only, with that certificate", async (t) => {
  const node = await testNode({ tlsCert: cert, tlsKey: key })
  t.teardown(() => node.close())
  await node.app.listen({ host: "127.0.0.1", port: 0 })
  const port = (node.app.server.address() as net.AddressInfo).port
  const ping = await get(port, "/ping", fs.readFileSync(cert))
  t.equal(ping.status, 200)
  t.equal(ping.body, "OK")
  await t.rejects(get(port, "/ping"), /self[- ]signed|unable to verify/i, "a client that does not trust the certificate refuses it")
  const plain = await fetch(`http://127.0.0.1:${port}/ping`).then((r) => r.status, (e: Error) => e)
  t.ok(plain instanceof Error || plain === 400, `plain HTTP is not served (${String(plain)})`)
})

t.test("a certificate pair that cannot serve stops the node, saying why", async (t) => {
  await t.rejects(testNode({ tlsCert: path.join(dir, "absent.pem"), tlsKey: key }), /cannot read the certificate .*absent\.pem: no such file/)
  const other = path.join(dir, "other.pem")
  execFileSync("openssl", ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-out", other], { stdio: "ignore" })
  t.throws(() => readHttpsFiles(cert, other), /cannot serve HTTPS/, "a key that is not the certificate's")
  t.throws(() => readHttpsFiles(key, key), /cannot serve HTTPS/, "a key given as the certificate")
})

/** A PUT whose body never finishes: it holds its slot until the socket closes. */
const hang = (port: number) =>
  new Promise<net.Socket>((resolve) => {
    const s = net.connect(port, "127.0.0.1", () => {
      s.write("PUT /kv/slow HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\nabc")
      setTimeout(() => resolve(s), 100)
    })
  })

t.test("--max-requests-in-flight: past it, 503 with Retry-After; probes still answer; slots come back", async (t) => {
  const node = await testNode({ maxRequestsInFlight: 2 })
  t.teardown(() => node.close())
  await node.app.listen({ host: "127.0.0.1", port: 0 })
  const base = `http://127.0.0.1:${(node.app.server.address() as net.AddressInfo).port}`
  const port = Number(new URL(base).port)
  const held = [await hang(port), await hang(port)]
  const over = await fetch(`${base}/kv/a`)
  t.equal(over.status, 503, "a third request is refused")
  t.equal(over.headers.get("retry-after"), "1")
  const body = (await over.json()) as { error: string; message: string }
  t.equal(body.error, "unavailable")
  t.match(body.message, /max-requests-in-flight/)
  t.equal((await fetch(`${base}/health`)).status, 200, "/health is not counted")
  const metrics = await (await fetch(`${base}/metrics`)).text()
  t.match(metrics, /tally_limit_hits_total\{limit="http_in_flight"\} 1/, "the refusal is counted")
  for (const s of held) s.destroy()
  let after = 0
  for (let i = 0; i < 50 && after !== 404; i++) {
    await new Promise((r) => setTimeout(r, 50))
    after = (await fetch(`${base}/kv/a`)).status
  }
  t.equal(after, 404, "clients that went away gave their slots back")
  const many = await Promise.all(Array.from({ length: 20 }, (_, i) => fetch(`${base}/kv/k${i}`, { method: "PUT", body: "v" }).then((r) => r.status)))
  t.ok(many.every((s) => s === 204 || s === 503), `under load: only 204 or 503 (${[...new Set(many)].join(",")})`)
  t.equal((await fetch(`${base}/kv/k0`, { method: "PUT", body: "v" })).status, 204, "and the node serves once the burst is over")
})

t.test("--max-read-repairs: past it a GET skips its repair, counted; the read itself is served", async (t) => {
  // Two nodes, so a key has two replicas and a read has a repair to run (a cluster of one has
  // none: its reads take the fast lane).
  const pair = async (maxReadRepairs?: number) => {
    const network = new MemoryNetwork()
    const extra = maxReadRepairs === undefined ? {} : { maxReadRepairs }
    const nodes = [
      await assembleNode(testSettings({ id: "r1", data: "/data/r1", ...extra }), { memory: true, network, logStream: quiet() }),
      await assembleNode(testSettings({ id: "r2", data: "/data/r2", ...extra }), { memory: true, network, logStream: quiet(), seedIds: ["r1"] })
    ]
    t.teardown(() => Promise.all(nodes.map((n) => n.close())))
    await eventually("a ring of two, both up", async () => {
      const vs = await Promise.all(nodes.map(async (n) => (await n.app.inject({ method: "GET", url: "/admin/cluster" })).json() as { nodes: Array<{ status: string }>; settled: boolean }))
      return vs.every((v) => v.settled && v.nodes.length === 2 && v.nodes.every((m) => m.status === "up")) ? true : undefined
    })
    return nodes[0]!
  }
  const metric = async (app: AssembledNode["app"]) =>
    Number(/tally_limit_hits_total\{limit="read_repairs"\} (\d+)/.exec((await app.inject({ method: "GET", url: "/metrics" })).body)?.[1] ?? 0)
  const none = await pair(0)
  t.equal((await none.app.inject({ method: "PUT", url: "/kv/a?w=2", payload: "x" })).statusCode, 204)
  for (let i = 0; i < 3; i++) t.equal((await none.app.inject({ method: "GET", url: "/kv/a" })).statusCode, 200)
  t.equal(await metric(none.app), 3, "three repairs skipped and counted")
  const some = await pair()
  t.equal((await some.app.inject({ method: "PUT", url: "/kv/a?w=2", payload: "x" })).statusCode, 204)
  for (let i = 0; i < 3; i++) t.equal((await some.app.inject({ method: "GET", url: "/kv/a" })).statusCode, 200)
  t.equal(await metric(some.app), 0, "with the default bound none is skipped")
})

/**
 * --cluster-secret-file with real `tally node` processes: nodes with the secret form a cluster
 * and serve; a node with another secret, or a raw plaintext client, gets nothing in; a node
 * asked to listen beyond loopback without a secret refuses to start.
 */
import { spawn } from "node:child_process"
import * as fs from "node:fs"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import t from "tap"
import { isLoopbackHost, protectedModeProblem } from "../../src/cli/NodeCommand.ts"
import { encodeFrame, hello } from "../../src/transport/Frame.ts"
import { clusterView, get, put, startCluster } from "./harness.ts"

const root = path.resolve(import.meta.dirname, "../..")
const SECRET = "0f6c1d0e9a3b47f2b8e5c4d3a2f1e0d9\n"
const OTHER = "an entirely different cluster secret\n"

/** Runs `tally node` with `args` until it prints ready or exits, or `ms` pass. */
const runNode = (args: string[], ms = 20_000) =>
  new Promise<{ code: number | null; ready: boolean; stderr: string; stop: () => Promise<void> }>((resolve) => {
    const child = spawn(process.execPath, ["bin/tally.js", "node", ...args], { cwd: root, stdio: ["ignore", "pipe", "pipe"] })
    let stdout = ""
    let stderr = ""
    let exited = false
    const exit = new Promise<void>((r) => child.on("exit", () => ((exited = true), r())))
    const stop = async () => {
      if (!exited) child.kill("SIGKILL")
      await exit
    }
    const timer = setTimeout(() => resolve({ code: null, ready: false, stderr, stop }), ms)
    child.stdout!.on("data", (d: Buffer) => {
      stdout += d
      if (/^ready /m.test(stdout)) {
        clearTimeout(timer)
        resolve({ code: null, ready: true, stderr, stop })
      }
    })
    child.stderr!.on("data", (d: Buffer) => (stderr += d))
    child.on("exit", (code) => {
      clearTimeout(timer)
      resolve({ code, ready: false, stderr, stop })
    })
  })

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

t.test("nodes sharing a secret form a cluster; another secret or plaintext gets nothing in", async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tally-secret-"))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const secret = path.join(dir, "secret")
  const other = path.join(dir, "other")
  fs.writeFileSync(secret, SECRET)
  fs.writeFileSync(other, OTHER)
  const base = 10000 + Math.floor(Math.random() * 1000) * 4
  const cluster = await startCluster(dir, 2, { n: 2, basePort: base, extra: ["--cluster-secret-file", secret, "--w", "2", "--r", "2"] })
  t.teardown(() => cluster.stopAll())
  const [n1, n2] = cluster.nodes as [typeof cluster.nodes[0], typeof cluster.nodes[0]]

  t.equal((await put(n1, "a", "one")).status, 204, "a write through n1 reaches both replicas (w=2)")
  t.same((await get(n2, "a")).values, ["one"], "and reads back through n2 (r=2)")
  t.equal((await put(n2, "b", "two")).status, 204)
  t.same((await get(n1, "b")).values, ["two"])

  // A node with another secret, seeded at n1.
  const intruder = await runNode([
    "--id", "n3", "--port", String(base + 2), "--cluster-port", String(base + 1002),
    "--data", path.join(dir, "n3"), "--n", "2", "--w", "1", "--log-level", "warn",
    "--seeds", `127.0.0.1:${n1.port}`, "--cluster-secret-file", other
  ])
  t.teardown(intruder.stop)
  await sleep(3000)
  for (const node of [n1, n2]) {
    const v = await clusterView(node)
    t.same(v.nodes.map((m) => m.id).sort(), ["n1", "n2"], `${node.id} does not list the intruder`)
  }
  if (intruder.ready) {
    const res = await fetch(`http://127.0.0.1:${base + 2}/kv/c`, { method: "PUT", body: "forged", headers: { "content-type": "text/plain" } })
    t.not(res.status, 204, `a write through the intruder is not acknowledged (${res.status})`)
  } else {
    t.not(intruder.code, 0, "the intruder did not start")
  }
  t.equal((await get(n1, "c", "?r=2")).status, 404, "nothing it sent was stored")
  t.equal((await get(n2, "c", "?r=2")).status, 404)
  t.match(n1.log + n2.log, /TLS handshake failed/, "the members logged the failed handshake")

  // A plaintext client speaking well-formed frames to n1's cluster port.
  const answered: Buffer[] = []
  await new Promise<void>((resolve) => {
    const s = net.connect({ host: "127.0.0.1", port: n1.port + 1000 })
    s.on("connect", () => {
      s.write(encodeFrame(hello("mallory", { n: 2, partitions: 64 })))
      s.write(encodeFrame({ k: "req", id: 1, p: { t: "join", member: { id: "mallory", host: "127.0.0.1", port: 1, clusterPort: 2 }, request: "x" } }))
    })
    s.on("data", (d: Buffer) => answered.push(d))
    s.on("error", () => {})
    s.on("close", () => resolve())
  })
  t.notOk(Buffer.concat(answered).toString("latin1").includes("n1"), "no hello came back")
  await sleep(500)
  t.same((await clusterView(n1)).nodes.map((m) => m.id).sort(), ["n1", "n2"], "the plaintext join changed nothing")
  t.same((await get(n1, "a")).values, ["one"], "and the cluster still serves")
})

t.test("protected mode: beyond loopback needs a cluster secret; bad secret files are refused clearly", async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tally-protected-"))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const port = 10000 + Math.floor(Math.random() * 1000) * 4
  const common = ["--port", String(port), "--cluster-port", String(port + 1000), "--data", path.join(dir, "d"), "--n", "1"]

  const refused = await runNode(["--host", "0.0.0.0", ...common])
  t.equal(refused.code, 2, "exit 2, before listening")
  t.match(refused.stderr, /refusing to listen on 0\.0\.0\.0 without a cluster secret \(protected mode\)/)
  t.match(refused.stderr, /--cluster-secret-file/)

  const short = path.join(dir, "short")
  fs.writeFileSync(short, "tooshort\n")
  const bad = await runNode(["--host", "0.0.0.0", ...common, "--cluster-secret-file", short])
  t.not(bad.code, 0)
  t.notOk(bad.ready)
  t.match(bad.stderr, /has 8 bytes; it needs at least 16/)

  const empty = path.join(dir, "empty")
  fs.writeFileSync(empty, "\n")
  const none = await runNode([...common, "--cluster-secret-file", empty])
  t.notOk(none.ready)
  t.match(none.stderr, /is empty/)

  const loopback = await runNode(["--host", "127.0.0.1", ...common])
  t.ok(loopback.ready, `loopback without a secret starts: ${loopback.stderr}`)
  await loopback.stop()

  const secret = path.join(dir, "secret")
  fs.writeFileSync(secret, SECRET)
  const secured = await runNode(["--host", "0.0.0.0", ...common, "--cluster-secret-file", secret])
  t.ok(secured.ready, `beyond loopback with a secret starts: ${secured.stderr}`)
  await secured.stop()
})

t.test("protected mode: which hosts are loopback", async (t) => {
  for (const h of ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST", "::ffff:127.0.0.1"]) t.ok(isLoopbackHost(h), h)
  for (const h of ["0.0.0.0", "::", "10.0.0.1", "128.0.0.1", "example.com", "localhost.example.com", "127.0.0.1.nip.io"]) t.notOk(isLoopbackHost(h), h)
  t.equal(protectedModeProblem({ host: "127.0.0.1" }), undefined)
  t.equal(protectedModeProblem({ host: "10.0.0.1", clusterSecretFile: "/s" }), undefined)
  t.match(protectedModeProblem({ host: "10.0.0.1" }), /refusing to listen on 10\.0\.0\.1 without a cluster secret/)
})

/**
 * A real `tally node` process: acknowledged writes survive SIGKILL, SIGTERM finishes
 * in-flight requests and exits 0, and a second node on the same data directory is refused.
 */
import { spawn, type ChildProcess } from "node:child_process"
import * as path from "node:path"
import t from "tap"

const root = path.resolve(import.meta.dirname, "../..")
// Ports are split between test files so parallel files never collide (cluster ports are +1000).
const basePort = 15000 + Math.floor(Math.random() * 249) * 4

interface Proc { readonly child: ChildProcess; readonly url: string; readonly stderr: () => string }

const startNode = (args: string[]): Promise<Proc> =>
  new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["bin/tally.js", "node", ...args], { cwd: root, stdio: ["ignore", "pipe", "pipe"] })
    let out = ""
    let err = ""
    child.stdout!.on("data", (d: Buffer) => {
      out += d
      const m = /^ready (\S+) (http:\/\/\S+)$/m.exec(out)
      if (m) resolve({ child, url: m[2]!, stderr: () => err })
    })
    child.stderr!.on("data", (d: Buffer) => (err += d))
    child.on("exit", (code) => reject(new Error(`node exited with ${code}: ${err}`)))
    setTimeout(() => reject(new Error(`node not ready in 20 s: ${err}`)), 20_000).unref()
  })

const exited = (child: ChildProcess) =>
  new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve({ code: child.exitCode, signal: child.signalCode })
    child.removeAllListeners("exit")
    child.on("exit", (code, signal) => resolve({ code, signal }))
  })

t.test("1000 acknowledged writes survive SIGKILL", async (t) => {
  const data = t.testdir()
  const port = basePort
  const args = ["--port", String(port), "--data", data, "--fsync", "batch", "--id", "crashy"]
  let node = await startNode(args)
  const acked = new Map<string, string>()
  let next = 0
  const worker = async () => {
    while (next < 1000) {
      const i = next++
      const value = `value-${i}-${"v".repeat(i % 300)}`
      const res = await fetch(`${node.url}/kv/key-${i}`, { method: "PUT", body: value })
      if (res.status === 204) acked.set(`key-${i}`, value)
    }
  }
  await Promise.all(Array.from({ length: 16 }, worker))
  t.equal(acked.size, 1000, "all 1000 writes acknowledged")
  node.child.kill("SIGKILL")
  await exited(node.child)
  node = await startNode(args)
  let ok = 0
  for (const [key, value] of acked) {
    const res = await fetch(`${node.url}/kv/${key}`)
    if (res.status === 200 && (await res.text()) === value) ok++
    else t.fail(`${key}: ${res.status}`)
  }
  t.equal(ok, 1000, "every acknowledged write reads back after restart")
  node.child.kill("SIGTERM")
  t.same(await exited(node.child), { code: 0, signal: null })
})

t.test("SIGTERM finishes in-flight requests, flushes, and exits 0", async (t) => {
  const data = t.testdir()
  const args = ["--port", String(basePort + 1), "--data", data, "--fsync", "always"]
  let node = await startNode(args)
  // Start many writes, then SIGTERM while they are in flight: each either succeeds
  // (and must then be durable) or is refused; none is left hanging.
  let first: () => void = () => {}
  const firstAck = new Promise<void>((resolve) => (first = resolve))
  const writes = Array.from({ length: 200 }, (_, i) =>
    fetch(`${node.url}/kv/k${i}`, { method: "PUT", body: `v${i}` }).then((r) => {
      if (r.status === 204) first()
      return [i, r.status] as const
    }, () => [i, 0] as const)
  )
  // Stop once the first write is acknowledged, with the others still in flight.
  await firstAck
  const stoppedAt = Date.now()
  node.child.kill("SIGTERM")
  const results = await Promise.all(writes)
  t.same(await exited(node.child), { code: 0, signal: null }, "exit 0")
  // Keep-alive connections must not hold the stop for their 72 s timeout.
  t.ok(Date.now() - stoppedAt < 15_000, `stopped ${Date.now() - stoppedAt} ms after SIGTERM`)
  const acked = results.filter(([, s]) => s === 204).map(([i]) => i)
  t.ok(acked.length > 0, `${acked.length} writes acknowledged before the stop`)
  node = await startNode(args)
  for (const i of acked) {
    const res = await fetch(`${node.url}/kv/k${i}`)
    t.equal(await res.text(), `v${i}`, `k${i}`)
  }
  node.child.kill("SIGTERM")
  await exited(node.child)
})

t.test("a second node on the same data directory is refused with a clear message", async (t) => {
  const data = t.testdir()
  const node = await startNode(["--port", String(basePort + 2), "--data", data])
  const second = spawn(process.execPath, ["bin/tally.js", "node", "--port", String(basePort + 3), "--data", data], { cwd: root, stdio: ["ignore", "pipe", "pipe"] })
  let err = ""
  second.stderr!.on("data", (d: Buffer) => (err += d))
  const { code } = await exited(second)
  t.not(code, 0, "refused")
  t.match(err, /in use by process/, err.trim().split("\n").at(-1) ?? "")
  node.child.kill("SIGTERM")
  await exited(node.child)
})

t.test("a node whose seeds never answer acknowledges nothing and is not healthy", async (t) => {
  const data = t.testdir()
  // Port 9 (discard) has no listener here: every join attempt is refused at once.
  const node = await startNode(["--port", String(basePort + 1), "--data", data, "--id", "lonely", "--seeds", "127.0.0.1:9"])
  const put = await fetch(`${node.url}/kv/k?w=1`, { method: "PUT", body: "v" })
  t.equal(put.status, 503, "PUT is refused")
  t.equal(((await put.json()) as { error: string }).error, "not_joined")
  const del = await fetch(`${node.url}/kv/k?w=1`, { method: "DELETE" })
  t.equal(del.status, 503, "DELETE is refused")
  const get = await fetch(`${node.url}/kv/k?r=1`)
  t.equal(get.status, 503, "GET is refused: a node outside the ring knows no owners")
  const health = await fetch(`${node.url}/health`)
  t.equal(health.status, 503)
  t.equal(((await health.json()) as { status: string }).status, "joining")
  node.child.kill("SIGKILL")
  await exited(node.child)
})

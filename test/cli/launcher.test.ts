/**
 * bin/tally, the launcher: it execs the project's Node 24, so the pid a shell or supervisor
 * started is the node itself, and SIGTERM to it stops the node, frees its port and releases
 * its data directory. bin/tally.js on an older Node says which Node it needs. And the client
 * commands against that real node: TALLY_URL, --json, exit codes, delete reading the
 * context first, a URL with a path refused, and 405 for a known path with another method.
 */
import { execFileSync, spawn, spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as net from "node:net"
import * as path from "node:path"
import t from "tap"
import { nodePorts, startNode } from "./fixtures/nodes.ts"
import { root, run } from "./fixtures/tally.ts"

const launcher = path.join(root, "bin/tally")

/** Whether something accepts connections on `port`. */
const listening = (port: number) =>
  new Promise<boolean>((resolve) => {
    const socket = net.connect(port, "127.0.0.1")
    socket.once("connect", () => {
      socket.destroy()
      resolve(true)
    })
    socket.once("error", () => resolve(false))
  })

t.test("SIGTERM to the pid bin/tally started stops the node, frees its port and its data directory", async (t) => {
  const data = path.join(t.testdir(), "d")
  const ports = await nodePorts()
  const node = await startNode(t, { id: "solo", data, args: ["--n", "1", "--r", "1", "--w", "1"], command: [launcher], ports })
  const pid = node.child.pid!
  if (fs.existsSync(`/proc/${pid}/exe`)) {
    t.equal(fs.realpathSync(`/proc/${pid}/exe`), fs.realpathSync(path.join(root, "node_modules/.bin/node")), "the started pid is the project's Node itself: exec, no shell or npm left between")
  }
  t.equal((await fetch(`${node.url}/kv/k`, { method: "PUT", body: "kept" })).status, 204)

  process.kill(pid, "SIGTERM")
  t.same(await node.closed, { code: 0, signal: null }, "exit 0 after SIGTERM")
  t.equal(await listening(node.port), false, "the client port is free")
  t.equal(await listening(node.clusterPort), false, "the internode port is free")

  const again = await startNode(t, { id: "solo", data, args: ["--n", "1", "--r", "1", "--w", "1"], command: [launcher], ports })
  t.equal(await (await fetch(`${again.url}/kv/k`)).text(), "kept", "the data directory opens again, with the write")
  process.kill(again.child.pid!, "SIGTERM")
  t.same(await again.closed, { code: 0, signal: null })
})

/** Polls until nothing listens on `port`, for at most `ms`. */
const freed = async (port: number, ms = 15_000) => {
  const deadline = Date.now() + ms
  while (await listening(port)) {
    if (Date.now() > deadline) return false
    await new Promise((r) => setTimeout(r, 100))
  }
  return true
}

const onPath = (name: string) => (process.env.PATH ?? "").split(path.delimiter).some((d) => fs.existsSync(path.join(d, name)))

t.test("SIGTERM to npx tally node stops the node behind npm's shell, and frees its port and data directory", { skip: onPath("npx") ? false : "no npx on PATH" }, async (t) => {
  const data = path.join(t.testdir(), "d")
  const ports = await nodePorts()
  const env = { ...process.env }
  for (const k of Object.keys(env)) if (k.startsWith("TALLY_") || k.startsWith("npm_")) delete env[k]
  const args = ["tally", "node", "--id", "viaNpx", "--port", String(ports.port), "--cluster-port", String(ports.clusterPort), "--data", data, "--n", "1", "--r", "1", "--w", "1"]
  const npx = spawn("npx", args, { cwd: root, env, stdio: ["ignore", "pipe", "pipe"] })
  t.teardown(() => {
    if (npx.exitCode === null && npx.signalCode === null) npx.kill("SIGKILL")
  })
  let out = ""
  let err = ""
  npx.stdout!.on("data", (d: Buffer) => (out += d))
  npx.stderr!.on("data", (d: Buffer) => (err += d))
  const deadline = Date.now() + 90_000
  while (!out.includes("ready ")) {
    if (Date.now() > deadline || npx.exitCode !== null) throw new Error(`npx tally node not ready: ${out} ${err}`)
    await new Promise((r) => setTimeout(r, 100))
  }
  process.kill(npx.pid!, "SIGTERM")
  t.ok(await freed(ports.port), "the client port is free: the node did not outlive npm")
  t.ok(await freed(ports.clusterPort), "the internode port is free")
  await new Promise((r) => setTimeout(r, 500))
  t.match(err, "SIGTERM: stopping node viaNpx", "it stopped as on a SIGTERM, cleanly")
  const again = await startNode(t, { id: "viaNpx", data, args: ["--n", "1", "--r", "1", "--w", "1"], command: [launcher], ports })
  t.ok(again.stdout.startsWith("ready viaNpx"), "the data directory opens again")
  process.kill(again.child.pid!, "SIGTERM")
  await again.closed
})

t.test("outside npm, a node outlives the shell that started it, as a daemon does", async (t) => {
  const data = path.join(t.testdir(), "d")
  const ports = await nodePorts()
  const env = { ...process.env }
  for (const k of Object.keys(env)) if (k.startsWith("TALLY_") || k.startsWith("npm_")) delete env[k]
  const script = `"${launcher}" node --id daemon --port ${ports.port} --cluster-port ${ports.clusterPort} --data "${data}" --n 1 --r 1 --w 1 >/dev/null 2>&1 & echo $!; wait`
  const sh = spawn("sh", ["-c", script], { cwd: root, env, stdio: ["ignore", "pipe", "ignore"] })
  let out = ""
  sh.stdout!.on("data", (d: Buffer) => (out += d))
  while (!/\d+\n/.test(out)) await new Promise((r) => setTimeout(r, 50))
  const pid = Number(out.trim())
  t.teardown(() => {
    try {
      process.kill(pid, "SIGKILL")
    } catch {
      // gone
    }
  })
  const deadline = Date.now() + 90_000
  while (!(await listening(ports.port))) {
    if (Date.now() > deadline) throw new Error("the node did not start")
    await new Promise((r) => setTimeout(r, 100))
  }
  sh.kill("SIGKILL")
  await new Promise((r) => setTimeout(r, 2_000))
  t.ok(await listening(ports.port), "still serving after its shell died")
  process.kill(pid, "SIGTERM")
  t.ok(await freed(ports.port), "and SIGTERM to its pid stops it")
})

/** A Node older than 24 on PATH (the machine's own, outside node_modules), if there is one. */
const oldNode = (process.env.PATH ?? "").split(path.delimiter).map((d) => path.join(d, "node")).filter((p) => fs.existsSync(p) && !p.includes("node_modules")).find((p) => {
  const v = execFileSync(p, ["--version"], { encoding: "utf8" }).trim()
  return Number(v.replace(/^v/, "").split(".")[0]) < 24
})

t.test("bin/tally.js on an older Node says which Node it needs", { skip: oldNode === undefined ? "no Node older than 24 on PATH" : false }, async (t) => {
  const r = spawnSync(oldNode!, [path.join(root, "bin/tally.js"), "--help"], { encoding: "utf8" })
  t.not(r.status, 0, "exits non-zero")
  t.match(r.stderr, /tally needs Node 24 or later; this is Node 2\d\./)
  t.match(r.stderr, "bin/tally or npx tally")
  t.notMatch(r.stderr, "ERR_UNKNOWN_FILE_EXTENSION")
  t.equal(r.stdout, "")
})

t.test("bin/tally without node_modules/.bin/node says to run npm install", async (t) => {
  const fake = t.testdir({ bin: {} })
  fs.copyFileSync(launcher, path.join(fake, "bin/tally"))
  fs.chmodSync(path.join(fake, "bin/tally"), 0o755)
  const r = spawnSync(path.join(fake, "bin/tally"), ["--help"], { encoding: "utf8" })
  t.equal(r.status, 1)
  t.match(r.stderr, "run npm install")
})

t.test("the client commands against a real node", async (t) => {
  const node = await startNode(t, { id: "cli", data: path.join(t.testdir(), "d"), args: ["--n", "1", "--r", "1", "--w", "1"] })
  t.teardown(() => {
    node.child.kill("SIGTERM")
  })
  const env = { TALLY_URL: node.url }

  const put = await run(["put", "greeting", "hello", "--json"], { env })
  t.equal(put.code, 0, put.stderr)
  const written = JSON.parse(put.stdout.toString()) as { key: string; context: string }
  t.equal(written.key, "greeting")
  t.type(written.context, "string", "TALLY_URL is used; --json gives the new context")

  const got = await run(["get", "greeting", "--json"], { env })
  t.equal(got.code, 0)
  const doc = JSON.parse(got.stdout.toString()) as { found: boolean; value: string; contentType: string; context: string }
  t.match(doc, { found: true, contentType: "text/plain; charset=utf-8" })
  t.equal(Buffer.from(doc.value, "base64").toString(), "hello")

  // A second write without the context is a sibling: get exits 5 and shows both.
  t.equal((await run(["put", "greeting", "hi"], { env })).code, 0)
  const both = await run(["get", "greeting"], { env })
  t.equal(both.code, 5, "siblings exit 5")
  t.match(both.stdout.toString(), "2 concurrent versions")
  const bothJson = await run(["get", "greeting", "--json"], { env })
  t.equal(bothJson.code, 5)
  const siblings = JSON.parse(bothJson.stdout.toString()) as { context: string; siblings: Array<{ value: string }> }
  t.same(siblings.siblings.map((s) => Buffer.from(s.value, "base64").toString()).sort(), ["hello", "hi"])

  // Resolve with the context, then delete: the delete reads the context itself.
  t.equal((await run(["put", "greeting", "hey", "--context", siblings.context], { env })).code, 0)
  const resolved = await run(["get", "greeting"], { env })
  t.equal(resolved.code, 0)
  t.equal(resolved.stdout.toString(), "hey")
  const del = await run(["delete", "greeting"], { env })
  t.equal(del.code, 0, del.stderr)
  const gone = await run(["get", "greeting"], { env })
  t.equal(gone.code, 4, "deleted: not found exits 4")
  t.equal(gone.stderr, "not found\n")
  const goneJson = await run(["get", "greeting", "--json"], { env })
  t.equal(goneJson.code, 4)
  t.match(JSON.parse(goneJson.stdout.toString()), { key: "greeting", found: false }, "--json says not found on stdout too")
  t.equal((await run(["delete", "greeting"], { env })).code, 4, "deleting what is not there exits 4")

  // A blind delete is concurrent with the value and leaves it.
  t.equal((await run(["put", "other", "x"], { env })).code, 0)
  t.equal((await run(["delete", "other", "--blind"], { env })).code, 0)
  t.equal((await run(["get", "other"], { env })).stdout.toString(), "x", "--blind: the delete did not cover the value")
  t.equal((await run(["delete", "other", "--blind", "--context", "c"], { env })).code, 2)

  const withPath = await run(["get", "k", "--url", `${node.url}/kv`])
  t.equal(withPath.code, 2)
  t.match(withPath.stderr, `error: --url must be a node's address without a path, such as http://127.0.0.1:8081; got ${node.url}/kv`)
  const envPath = await run(["get", "k"], { env: { TALLY_URL: `${node.url}/x?y=1` } })
  t.equal(envPath.code, 2)
  t.match(envPath.stderr, "error: TALLY_URL must be a node's address without a path")

  const post = await fetch(`${node.url}/kv/x`, { method: "POST", body: "v" })
  t.equal(post.status, 405)
  t.match(post.headers.get("allow"), /GET/)
  t.match(post.headers.get("allow"), /PUT/)
  t.match(post.headers.get("allow"), /DELETE/)
  t.match(await post.json(), { error: "method_not_allowed" })
  const nothing = await fetch(`${node.url}/nope`, { method: "POST" })
  t.equal(nothing.status, 404, "an unknown path is still a 404")
  t.equal((await fetch(`${node.url}/ping`, { method: "DELETE" })).status, 405)
})

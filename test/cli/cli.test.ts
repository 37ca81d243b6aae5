/**
 * The `tally` command as users and scripts see it: help, exit codes, the client commands
 * against a small server that mimics the HTTP API, and the node and cluster life cycles
 * around a stand-in node (fixtures/stub-node.ts); admin.test.ts covers `tally admin`.
 */
import * as fs from "node:fs"
import * as http from "node:http"
import type { AddressInfo } from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import t, { type Test } from "tap"
import { NODE_FLAGS } from "../../src/config/Settings.ts"
import { noStack, run, start, stub } from "./fixtures/tally.ts"

const basePort = 21000 + Math.floor(Math.random() * 400) * 10

// ---- help and usage errors --------------------------------------------------------------

t.test("--help works on every command and lists every flag with its default", async (t) => {
  const top = await run(["--help"])
  t.equal(top.code, 0)
  for (const c of ["node", "cluster", "get", "put", "delete", "admin"]) t.match(top.stdout.toString(), c)
  t.match(top.stdout.toString(), /Exit codes: 0 done, 1 the node answered with an error, 2 usage error, 3 no node answered, 4 not found, 5 siblings/, "the exit codes are in --help")
  t.match(top.stdout.toString(), "$TALLY_URL, else http://127.0.0.1:8081", "and where commands go by default")

  const node = await run(["node", "--help"])
  t.equal(node.code, 0)
  const text = node.stdout.toString()
  for (const f of NODE_FLAGS) {
    const line = text.split("\n").find((l) => l.trimStart().startsWith(`--${f.flag} `) || l.trim() === `--${f.flag}` || l.trimStart().startsWith(`--${f.flag}  `))
    t.ok(line, `--${f.flag} is listed`)
    t.match(line ?? "", `(default ${f.default}; env ${f.env})`, `--${f.flag} shows its default and variable`)
  }

  const commands = [
    ["get", ["--url", "--r", "--verbose", "-v", "--json", "exits 4", "exit 5"]],
    ["put", ["--url", "--w", "--context", "--content-type", "--file", "--json"]],
    ["delete", ["--url", "--context", "--blind", "--json", "exits 4"]],
    ["cluster", ["--nodes", "--base-port", "--data", "--fsync", "--n"]]
  ] as const
  const helps = await Promise.all(commands.map(([cmd]) => run([cmd, "--help"])))
  for (const [i, [cmd, flags]] of commands.entries()) {
    const r = helps[i]!
    t.equal(r.code, 0, `${cmd} --help exits 0`)
    for (const f of flags) t.match(r.stdout.toString(), f, `${cmd} --help lists ${f}`)
    for (const line of r.stdout.toString().split("\n").filter((l) => /^\s+--(url|base-port|data|r|w|context)\b/.test(l))) {
      t.match(line, /default/, `default shown: ${line.trim()}`)
    }
  }
})

t.test("usage errors exit 2 with a clear message and no stack trace", async (t) => {
  const w = await run(["node", "--w", "5"])
  t.equal(w.code, 2)
  t.equal(w.stderr, "error: --w must be an integer from 1 to n (3); got 5\n")
  t.equal(w.stdout.length, 0)

  const many = await run(["node", "--port", "x", "--fsync", "sometimes"], { env: { TALLY_R: "0" } })
  t.equal(many.code, 2)
  t.match(many.stderr, "error: --port must be an integer from 1 to 65535; got x")
  t.match(many.stderr, "error: TALLY_R must be an integer from 1 to n (3); got 0")
  t.match(many.stderr, "error: --fsync must be one of always, batch, never; got sometimes")
  noStack(t, many.stderr)

  const unknown = await run(["node", "--prot", "1"])
  t.equal(unknown.code, 2)
  t.match(unknown.stderr, /error: Unrecognized flag: --prot/)

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tally-cli-"))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const config = path.join(dir, "tally.json")
  fs.writeFileSync(config, JSON.stringify({ maxValueBytes: "big", prot: 1 }))
  const bad = await run(["node", "--config", config])
  t.equal(bad.code, 2)
  t.match(bad.stderr, `error: "maxValueBytes" in ${config} must be an integer from 1 to 268435456; got "big" (a string)`)
  t.match(bad.stderr, `error: unknown setting "prot" in ${config}`)
  const missing = await run(["node", "--config", path.join(dir, "nope.json")])
  t.equal(missing.code, 2)
  t.match(missing.stderr, "no such file")

  const usages = [
    ["get"], ["bogus"], ["get", "k", "--r", "x"], ["get", "k", "--url", "ftp://x"], ["get", "k", "--url", "http://127.0.0.1:8081/kv"],
    ["delete", "k", "--url", "http://127.0.0.1:8081/#x"], ["admin", "status", "--url", "http://127.0.0.1:8081/admin"],
    ["put", "k", "v", "--file", "f"], ["cluster"], ["cluster", "--nodes", "0"]
  ]
  const ran = await Promise.all(usages.map((args) => run(args)))
  for (const [i, args] of usages.entries()) {
    const r = ran[i]!
    t.equal(r.code, 2, `${args.join(" ")} exits 2`)
    t.match(r.stderr, /^error: /, `${args.join(" ")}: ${r.stderr.split("\n")[0]}`)
    noStack(t, r.stderr)
  }
  const bare = await run([])
  t.equal(bare.code, 2, "bare tally is a usage error")
  t.match(bare.stderr, "SUBCOMMANDS", "and shows the help")
})

// ---- client commands --------------------------------------------------------------------

interface Seen {
  readonly method: string
  readonly url: string
  readonly headers: http.IncomingHttpHeaders
  readonly body: Buffer
}

const b64 = (b: Buffer | string) => Buffer.from(b).toString("base64")
const BINARY = Buffer.from([0, 1, 2, 255, 10])

const mockApi = async (t: Test) => {
  const seen: Array<Seen> = []
  const json = (res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) => {
    res.writeHead(status, { "content-type": "application/json", ...headers })
    res.end(JSON.stringify(body))
  }
  const server = http.createServer((req, res) => {
    const chunks: Array<Buffer> = []
    req.on("data", (c: Buffer) => chunks.push(c))
    req.on("end", () => {
      const body = Buffer.concat(chunks)
      seen.push({ method: req.method!, url: req.url!, headers: req.headers, body })
      const key = decodeURIComponent(new URL(req.url!, "http://x").pathname.replace(/^\/kv\//, ""))
      if (req.method === "GET") {
        if (key === "hello" || key === "a b/c") {
          res.writeHead(200, { "content-type": "text/plain", "x-context": "ctx-hello" })
          return res.end("hello")
        }
        if (key === "bin") {
          res.writeHead(200, { "content-type": "application/octet-stream", "x-context": "ctx-bin" })
          return res.end(BINARY)
        }
        if (key === "conflict") {
          return json(res, 300, {
            context: "ctx-both",
            siblings: [
              { value: b64("one"), contentType: "text/plain", lastModified: "2024-05-01T10:00:00.000Z" },
              { value: b64(BINARY), contentType: "application/octet-stream", lastModified: "2024-05-01T10:00:01.000Z" }
            ]
          })
        }
        if (key === "slow") return json(res, 503, { error: "quorum_not_met", message: "only 1 of 2 replicas answered", needed: 2, got: 1 })
        if (key === "broken") {
          res.writeHead(502)
          return res.end("bad gateway")
        }
        return json(res, 404, { error: "not_found", message: "no value" }, { "x-context": "ctx-tomb" })
      }
      if (req.method === "PUT" && key === "big") return json(res, 413, { error: "value_too_large", message: "the value is 2000000 bytes; the limit is 1048576" })
      if (req.method === "DELETE" && key === "missing") return json(res, 404, { error: "not_found", message: "no value" })
      res.writeHead(204, { "x-context": "ctx-new" })
      res.end()
    })
  })
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r))
  t.teardown(() => new Promise<void>((r) => server.close(() => r())))
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen }
}

t.test("get: raw value on stdout, context on stderr with -v, siblings exit 5, 404 exits 4, errors", async (t) => {
  const api = await mockApi(t)
  const hello = await run(["get", "hello", "--url", api.url])
  t.equal(hello.code, 0)
  t.equal(hello.stdout.toString(), "hello", "the value, byte for byte, no newline added")
  t.equal(hello.stderr, "")

  const bin = await run(["get", "bin", "--url", api.url, "--verbose"])
  t.equal(bin.code, 0)
  t.same(bin.stdout, BINARY, "binary values are untouched")
  t.equal(bin.stderr, "X-Context: ctx-bin\n")
  t.equal((await run(["get", "bin", "--url", api.url, "-v"])).stderr, "X-Context: ctx-bin\n", "-v is --verbose")
  const boolContext = await run(["get", "bin", "--url", api.url, "--context"])
  t.equal(boolContext.code, 2, "--context is not a switch on get: it takes a value everywhere, and get has none to take")

  const spaced = await run(["get", "a b/c", "--url", `${api.url}/`, "--r", "all", "--timeout", "500"])
  t.equal(spaced.code, 0)
  t.equal(api.seen.at(-1)!.url, "/kv/a%20b%2Fc?r=all&timeout=500", "key URL-encoded; r and timeout passed on")

  const conflict = await run(["get", "conflict", "--url", api.url])
  t.equal(conflict.code, 5, "siblings exit 5")
  t.equal(conflict.stderr, "")
  const text = conflict.stdout.toString()
  t.match(text, "2 concurrent versions")
  t.match(text, "sibling 1 of 2\ncontent-type: text/plain\nlast-modified: 2024-05-01T10:00:00.000Z\nvalue: one")
  t.match(text, `sibling 2 of 2\ncontent-type: application/octet-stream\nlast-modified: 2024-05-01T10:00:01.000Z\nvalue (base64, 5 bytes): ${b64(BINARY)}`)
  t.match(text, "context: ctx-both")
  t.match(text, "tally put conflict VALUE --context ctx-both")

  const conflictJson = await run(["get", "conflict", "--url", api.url, "--json"])
  t.equal(conflictJson.code, 5)
  t.same(JSON.parse(conflictJson.stdout.toString()), {
    key: "conflict",
    found: true,
    context: "ctx-both",
    siblings: [
      { value: b64("one"), contentType: "text/plain", lastModified: "2024-05-01T10:00:00.000Z" },
      { value: b64(BINARY), contentType: "application/octet-stream", lastModified: "2024-05-01T10:00:01.000Z" }
    ]
  })
  const binJson = await run(["get", "bin", "--url", api.url, "--json"])
  t.equal(binJson.code, 0)
  t.same(JSON.parse(binJson.stdout.toString()), { key: "bin", found: true, context: "ctx-bin", contentType: "application/octet-stream", value: b64(BINARY) })

  const missing = await run(["get", "missing", "--url", api.url])
  t.equal(missing.code, 4, "not found exits 4")
  t.equal(missing.stderr, "not found\n")
  t.equal(missing.stdout.length, 0)
  t.equal((await run(["get", "missing", "--url", api.url, "-v"])).stderr, "X-Context: ctx-tomb\nnot found\n", "a tombstone's context is shown")
  const missingJson = await run(["get", "missing", "--url", api.url, "--json"])
  t.equal(missingJson.code, 4)
  t.same(JSON.parse(missingJson.stdout.toString()), { key: "missing", found: false, context: "ctx-tomb" })

  const slow = await run(["get", "slow", "--url", api.url])
  t.equal(slow.code, 1)
  t.equal(slow.stderr, "error: quorum_not_met: only 1 of 2 replicas answered (needed 2, got 1)\n")
  const broken = await run(["get", "broken", "--url", api.url])
  t.equal(broken.code, 1)
  t.equal(broken.stderr, "error: http_502: bad gateway\n")
})

t.test("put: value from the argument, --file or stdin; context and content type sent; 413", async (t) => {
  const api = await mockApi(t)
  const fromArg = await run(["put", "k1", "hello", "--url", api.url, "--w", "quorum"])
  t.equal(fromArg.code, 0)
  t.equal(fromArg.stderr, "")
  let req = api.seen.at(-1)!
  t.equal(req.method, "PUT")
  t.equal(req.url, "/kv/k1?w=quorum")
  t.equal(req.body.toString(), "hello")
  t.equal(req.headers["content-type"], "text/plain; charset=utf-8")
  t.equal(req.headers["x-context"], undefined, "no context: a concurrent write")

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tally-cli-"))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  fs.writeFileSync(path.join(dir, "v.bin"), BINARY)
  const asJson = await run(["put", "k1", "hello", "--url", api.url, "--json"])
  t.same(JSON.parse(asJson.stdout.toString()), { key: "k1", context: "ctx-new" }, "--json: the new context on stdout")
  const fromFile = await run(["put", "k2", "--file", path.join(dir, "v.bin"), "--url", api.url, "--context", "ctx-read", "-v"])
  t.equal(fromFile.code, 0)
  t.equal(fromFile.stderr, "X-Context: ctx-new\n")
  req = api.seen.at(-1)!
  t.same(req.body, BINARY)
  t.equal(req.headers["content-type"], "application/octet-stream")
  t.equal(req.headers["x-context"], "ctx-read")

  const fromStdin = await run(["put", "k3", "--url", api.url, "--content-type", "application/json"], { input: '{"a":1}' })
  t.equal(fromStdin.code, 0)
  req = api.seen.at(-1)!
  t.equal(req.body.toString(), '{"a":1}')
  t.equal(req.headers["content-type"], "application/json")

  const big = await run(["put", "big", "x", "--url", api.url])
  t.equal(big.code, 1)
  t.equal(big.stderr, "error: value_too_large: the value is 2000000 bytes; the limit is 1048576\n")

  const noFile = await run(["put", "k4", "--file", path.join(dir, "nope"), "--url", api.url])
  t.equal(noFile.code, 2)
  t.equal(noFile.stderr, `error: cannot read --file ${path.join(dir, "nope")}: no such file\n`)
})

t.test("delete: reads the context first unless given one or --blind; not found exits 4", async (t) => {
  const api = await mockApi(t)
  const del = await run(["delete", "k1", "--url", api.url, "--context", "ctx-x"])
  t.equal(del.code, 0)
  t.same(api.seen.map((r) => [r.method, r.headers["x-context"]]), [["DELETE", "ctx-x"]], "a given context: no read")

  api.seen.length = 0
  const read = await run(["delete", "hello", "--url", api.url, "--json"])
  t.equal(read.code, 0)
  t.same(api.seen.map((r) => [r.method, r.url, r.headers["x-context"]]), [["GET", "/kv/hello", undefined], ["DELETE", "/kv/hello", "ctx-hello"]], "the value's context read, then sent")
  t.same(JSON.parse(read.stdout.toString()), { key: "hello", context: "ctx-new" })

  api.seen.length = 0
  t.equal((await run(["delete", "conflict", "--url", api.url])).code, 0)
  t.equal(api.seen.at(-1)!.headers["x-context"], "ctx-both", "siblings: the context that covers them all")

  api.seen.length = 0
  t.equal((await run(["delete", "k1", "--url", api.url, "--blind"])).code, 0)
  t.same(api.seen.map((r) => [r.method, r.headers["x-context"]]), [["DELETE", undefined]], "--blind: no read, no context")

  api.seen.length = 0
  const missing = await run(["delete", "missing", "--url", api.url])
  t.equal(missing.code, 4)
  t.equal(missing.stderr, "not found\n")
  t.same(api.seen.map((r) => r.method), ["GET"], "nothing to delete: nothing written")
  const both = await run(["delete", "k", "--url", api.url, "--blind", "--context", "c"])
  t.equal(both.code, 2)
  t.equal(both.stderr, "error: give either --context or --blind, not both\n")
})

t.test("TALLY_URL stands in for --url; --url wins", async (t) => {
  const api = await mockApi(t)
  const viaEnv = await run(["get", "hello"], { env: { TALLY_URL: api.url } })
  t.equal(viaEnv.code, 0)
  t.equal(viaEnv.stdout.toString(), "hello")
  const flagWins = await run(["get", "hello", "--url", api.url], { env: { TALLY_URL: "http://127.0.0.1:1" } })
  t.equal(flagWins.code, 0)
  const bad = await run(["get", "hello"], { env: { TALLY_URL: "nope" } })
  t.equal(bad.code, 2)
  t.equal(bad.stderr, "error: TALLY_URL must be an http:// or https:// address such as http://127.0.0.1:8081; got nope\n")
})

t.test("a node that cannot be reached exits 3", async (t) => {
  const server = http.createServer()
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r))
  const port = (server.address() as AddressInfo).port
  await new Promise<void>((r) => server.close(() => r()))
  const calls = [["get", "k"], ["put", "k", "v"], ["delete", "k"]]
  const ran = await Promise.all(calls.map((args) => run([...args, "--url", `http://127.0.0.1:${port}`])))
  for (const [i, args] of calls.entries()) {
    const r = ran[i]!
    t.equal(r.code, 3, `${args[0]} exits 3`)
    t.equal(r.stderr, `error: unreachable: cannot reach http://127.0.0.1:${port}: connection refused; is a node running there?\n`)
  }
})

// ---- node life cycle --------------------------------------------------------------------

t.test("tally node: ready line, config watching, clean stop on SIGTERM and SIGINT", async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tally-cli-"))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const config = path.join(dir, "tally.json")
  fs.writeFileSync(config, JSON.stringify({ w: 2, id: "alpha" }))
  const node = start(["node", "--port", String(basePort), "--config", config], { TALLY_TEST_NODE_MODULE: stub, TALLY_W: "1" })
  await node.waitFor("ready line", () => node.stdout().includes("\n"))
  t.equal(node.stdout(), `ready alpha http://127.0.0.1:${basePort}\n`, "exactly the ready line on stdout")
  await node.waitFor("start report", () => node.stderr().includes("stub: start"))
  t.match(node.stderr(), `"w":1`, "env beats the file")

  fs.writeFileSync(config, JSON.stringify({ id: "alpha", r: 1, logLevel: "debug" }))
  await node.waitFor("applyLive", () => node.stderr().includes("stub: applyLive"))
  t.match(node.stderr(), `stub: applyLive {"r":1,"logLevel":"debug"}`)
  fs.writeFileSync(config, JSON.stringify({ id: "beta", r: 1, logLevel: "debug" }))
  await node.waitFor("restart line", () => node.stderr().includes("restart the node"))
  t.match(node.stderr(), `setting id changed in ${config}; restart the node to apply it`)
  t.match(node.stderr(), `setting data changed in ${config}; restart the node to apply it`)
  fs.writeFileSync(config, "{ nope")
  await node.waitFor("invalid file message", () => node.stderr().includes("is invalid"))
  t.match(node.stderr(), `config file ${config} is invalid, keeping the current settings`)

  node.child.kill("SIGTERM")
  t.same(await node.exited, { code: 0, signal: null }, "exit 0 after SIGTERM")
  t.match(node.stderr(), "stub: close")

  const second = start(["node", "--port", String(basePort + 1)], { TALLY_TEST_NODE_MODULE: stub })
  await second.waitFor("ready line", () => second.stdout().includes("ready"))
  t.equal(second.stdout(), `ready node-${basePort + 1} http://127.0.0.1:${basePort + 1}\n`)
  second.child.kill("SIGINT")
  t.same(await second.exited, { code: 0, signal: null }, "exit 0 after SIGINT")
  t.match(second.stderr(), "stub: close")
})

t.test("tally node: a second signal exits at once; a failed start exits 1", async (t) => {
  const node = start(["node", "--port", String(basePort + 2)], { TALLY_TEST_NODE_MODULE: stub, STUB_HANG_CLOSE: "1" })
  await node.waitFor("ready line", () => node.stdout().includes("ready"))
  node.child.kill("SIGTERM")
  await node.waitFor("close", () => node.stderr().includes("stub: close"))
  node.child.kill("SIGTERM")
  const exit = await node.exited
  t.equal(exit.code, 143, "128 + SIGTERM")
  t.match(node.stderr(), "SIGTERM again: exiting now")

  const failed = await run(["node", "--port", String(basePort + 3), "--id", "doomed"], { env: { TALLY_TEST_NODE_MODULE: stub, STUB_FAIL_ID: "doomed" } })
  t.equal(failed.code, 1)
  t.equal(failed.stderr, `error: node doomed could not start: port ${basePort + 3} is already in use\n`)
  t.equal(failed.stdout.length, 0, "no ready line")
})

// ---- cluster ----------------------------------------------------------------------------

t.test("tally cluster: starts K nodes, prints addresses and curl, stops them all on SIGTERM", async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tally-cluster-"))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const base = basePort + 5
  const cluster = start(["cluster", "--nodes", "3", "--base-port", String(base), "--w", "3"], { TALLY_TEST_NODE_MODULE: stub }, dir)
  await cluster.waitFor("cluster ready", () => cluster.stdout().includes("Ctrl-C"))
  const out = cluster.stdout()
  for (let i = 0; i < 3; i++) t.match(out, `node-${base + i}  http://127.0.0.1:${base + i}  data ${path.join("data", `node-${base + i}`)}`)
  t.match(out, `curl -X PUT --data hello http://127.0.0.1:${base}/kv/greeting`)
  t.match(out, `curl http://127.0.0.1:${base + 1}/kv/greeting`)
  await cluster.waitFor("start reports", () => cluster.stderr().split("stub: start").length === 4)
  const err = cluster.stderr()
  t.match(err, `[node-${base}] stub: start {"id":"node-${base}","port":${base},"seeds":[],"w":3`, "stderr forwarded with the id; flags passed through")
  t.match(err, `[node-${base + 1}] stub: start {"id":"node-${base + 1}","port":${base + 1},"seeds":[{"host":"127.0.0.1","port":${base}}]`, "later nodes join through the first")
  t.match(err, `"data":"data/node-${base + 2}"`)

  cluster.child.kill("SIGTERM")
  t.same(await cluster.exited, { code: 0, signal: null }, "exit 0 once every node has stopped")
  const closes = cluster.stderr().split("\n").filter((l) => / stub: close$/.test(l))
  t.equal(closes.length, 3, "every node was closed")
  t.match(cluster.stderr(), "[cluster] all nodes stopped")
})

/** The pid of the stub node serving `port`. */
const stubPid = async (port: number) => ((await (await fetch(`http://127.0.0.1:${port}/stub`)).json()) as { pid: number }).pid

t.test("tally cluster: a node killed with SIGKILL is restarted on its port after 1 s", async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tally-cluster-"))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const base = basePort + 3
  const cluster = start(["cluster", "--nodes", "2", "--base-port", String(base)], { TALLY_TEST_NODE_MODULE: stub }, dir)
  await cluster.waitFor("cluster ready", () => cluster.stdout().includes("Ctrl-C"))
  const victim = `node-${base + 1}`
  const before = await stubPid(base + 1)
  process.kill(before, "SIGKILL")
  await cluster.waitFor("restart line", () => cluster.stderr().includes(`[cluster] node ${victim} was killed by SIGKILL; restarting in 1 s`))
  const killedAt = Date.now()
  await cluster.waitFor("ready again", () => cluster.stderr().includes(`[cluster] node ${victim} is ready again at http://127.0.0.1:${base + 1}`))
  t.ok(Date.now() - killedAt >= 800, "not restarted before the backoff")
  const after = await stubPid(base + 1)
  t.not(after, before, "a new process serves the port")
  t.equal(cluster.stderr().split(`[${victim}] stub: start`).length, 3, "started twice, with the same settings")

  // Ctrl-C while a restart is pending stops everything and starts nothing more.
  process.kill(after, "SIGKILL")
  await cluster.waitFor("second restart line", () => cluster.stderr().split(`node ${victim} was killed by SIGKILL; restarting in`).length === 3)
  t.match(cluster.stderr(), `[cluster] node ${victim} was killed by SIGKILL; restarting in 2 s`, "the delay doubles")
  cluster.child.kill("SIGINT")
  t.same(await cluster.exited, { code: 0, signal: null }, "exit 0")
  t.equal(cluster.stderr().split(`[${victim}] stub: start`).length, 3, "the pending restart was dropped")
  t.match(cluster.stderr(), "[cluster] all nodes stopped")
})

t.test("tally cluster: a node that exits 0 after leaving the ring is not restarted", async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tally-cluster-"))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const base = basePort + 3
  const cluster = start(["cluster", "--nodes", "2", "--base-port", String(base)], { TALLY_TEST_NODE_MODULE: stub, STUB_LEAVE_EXIT_AT: "0" }, dir)
  await cluster.waitFor("cluster ready", () => cluster.stdout().includes("Ctrl-C"))
  const leaver = `http://127.0.0.1:${base + 1}`
  t.equal((await fetch(`${leaver}/admin/leave`, { method: "POST" })).status, 202)
  await (await fetch(`${leaver}/admin/transfers`)).text()
  await cluster.waitFor("exit line", () => cluster.stderr().includes("not restarting it"))
  t.match(cluster.stderr(), `[cluster] node node-${base + 1} exited with code 0, as a node does once it has left the ring or been stopped; not restarting it; 1 of 2 nodes still running`)
  await new Promise((r) => setTimeout(r, 1_500))
  t.equal(cluster.stderr().split(`[node-${base + 1}] stub: start`).length, 2, "started once only")
  cluster.child.kill("SIGINT")
  t.same(await cluster.exited, { code: 0, signal: null })
})

t.test("tally cluster: a node that keeps dying is given up on; one that cannot start stops the cluster", async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tally-cluster-"))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const base = basePort + 8
  const dieFile = path.join(dir, "die")
  const victim = `node-${base + 1}`
  const cluster = start(
    ["cluster", "--nodes", "2", "--base-port", String(base)],
    { TALLY_TEST_NODE_MODULE: stub, STUB_DIE_ID: victim, STUB_DIE_FILE: dieFile, TALLY_TEST_RESTART_BASE_MS: "50" },
    dir
  )
  await cluster.waitFor("cluster ready", () => cluster.stdout().includes("Ctrl-C"))
  fs.writeFileSync(dieFile, "")
  await cluster.waitFor("give-up line", () => cluster.stderr().includes("not restarted again"), 25_000)
  const lines = cluster.stderr().split("\n").filter((l) => l.startsWith(`[cluster] node ${victim} exited with code 7`))
  t.same(lines, [
    `[cluster] node ${victim} exited with code 7; restarting in 0.05 s`,
    `[cluster] node ${victim} exited with code 7; restarting in 0.1 s`,
    `[cluster] node ${victim} exited with code 7; restarting in 0.2 s`,
    `[cluster] node ${victim} exited with code 7; restarting in 0.4 s`,
    `[cluster] node ${victim} exited with code 7; it died 5 times within 60 s, so it is not restarted again; 1 of 2 nodes still running`
  ], "one line per death, the delay doubling, then a clear give-up")
  cluster.child.kill("SIGINT")
  t.same(await cluster.exited, { code: 0, signal: null })

  const failing = await run(["cluster", "--nodes", "2", "--base-port", String(base)], { env: { TALLY_TEST_NODE_MODULE: stub, STUB_FAIL_ID: `node-${base + 1}` } })
  t.equal(failing.code, 1)
  t.match(failing.stderr, `[node-${base + 1}] error: node node-${base + 1} could not start`)
  t.match(failing.stderr, `[cluster] node-${base + 1} exited with code 1 before it was ready; stopping the cluster`)

  const invalid = await run(["cluster", "--nodes", "2", "--fsync", "sometimes"])
  t.equal(invalid.code, 2, "passed-through flags are checked before anything starts")
  t.equal(invalid.stderr, "error: --fsync must be one of always, batch, never; got sometimes\n")
})

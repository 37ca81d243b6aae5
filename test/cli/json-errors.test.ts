/**
 * `--json` error paths of every client and admin command, running the real `tally`
 * (bin/tally.js): each failure is exactly one line of JSON on stderr,
 * `{"error": {"code", "message", "exitCode", ...}}`, and the exit code is the one the same
 * command ends with without `--json` (Errors.ts). Against an address where nothing listens,
 * a small server that mimics the HTTP API (a missing key, a quorum not met, siblings), and
 * with bad flags.
 */
import * as http from "node:http"
import type { AddressInfo } from "node:net"
import t, { type Test } from "tap"
import { freePort, noStack, run, type Ran } from "./fixtures/tally.ts"

const mockApi = async (t: Test) => {
  const json = (res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) => {
    res.writeHead(status, { "content-type": "application/json", ...headers })
    res.end(JSON.stringify(body))
  }
  const server = http.createServer((req, res) => {
    req.resume()
    req.on("end", () => {
      const url = new URL(req.url!, "http://x")
      if (url.pathname.startsWith("/admin/")) return json(res, 503, { error: "not_joined", message: "this node is not a ring member yet" })
      if (url.pathname === "/kv") return json(res, 503, { error: "quorum_not_met", message: "only 1 of 2 replicas answered", needed: 2, got: 1 })
      const key = decodeURIComponent(url.pathname.replace(/^\/kv\//, ""))
      if (key === "slow") return json(res, 503, { error: "quorum_not_met", message: "only 1 of 2 replicas answered", needed: 2, got: 1 })
      if (key === "conflict" && req.method === "GET") {
        return json(res, 300, { context: "ctx-both", siblings: [{ value: "b25l", contentType: "text/plain", lastModified: "2024-05-01T10:00:00.000Z" }, { value: "dHdv", contentType: "text/plain", lastModified: "2024-05-01T10:00:01.000Z" }] })
      }
      if (req.method === "GET" || (req.method === "DELETE" && key === "missing")) return json(res, 404, { error: "not_found", message: "no value" }, { "x-context": "ctx-tomb" })
      res.writeHead(204, { "x-context": "ctx-new" })
      res.end()
    })
  })
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r))
  t.teardown(() => new Promise<void>((r) => {
    server.closeAllConnections()
    server.close(() => r())
  }))
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`
}

interface JsonError {
  readonly code: string
  readonly message: string
  readonly exitCode: number
  readonly [k: string]: unknown
}

/** stderr of a `--json` run as its one JSON error object; fails the test when it is anything else. */
const errorOf = (t: Test, r: Ran, what: string): JsonError | undefined => {
  noStack(t, r.stderr)
  t.match(r.stderr, /^[^\n]*\n$/, `${what}: stderr is one line`)
  let parsed: unknown
  try {
    parsed = JSON.parse(r.stderr)
  } catch {
    t.fail(`${what}: stderr is not JSON: ${r.stderr}`)
    return undefined
  }
  t.type(parsed, "object", `${what}: a JSON object`)
  const error = (parsed as { error?: JsonError }).error
  t.type(error?.code, "string", `${what}: error.code`)
  t.type(error?.message, "string", `${what}: error.message`)
  t.ok(error !== undefined && error.message.length > 0, `${what}: the message says something`)
  t.equal(error?.exitCode, r.code, `${what}: error.exitCode is the exit code`)
  return error
}

/** Runs `args` with and without `--json`; checks the exit codes are equal and returns both runs. */
const both = async (t: Test, args: ReadonlyArray<string>, expectedCode: number) => {
  const [plain, json] = await Promise.all([run(args), run([...args, "--json"])])
  const what = `tally ${args.join(" ")} --json`
  t.equal(plain.code, expectedCode, `tally ${args.join(" ")} exits ${expectedCode}`)
  t.equal(json.code, expectedCode, `${what} exits ${expectedCode} too`)
  t.notMatch(json.stderr, /^error:/m, `${what}: no plain-text error line`)
  return { plain, json, error: errorOf(t, json, what) }
}

t.test("--json against an unreachable URL: every command reports unreachable as JSON, exit 3", async (t) => {
  const url = `http://127.0.0.1:${await freePort()}`
  const commands = [
    ["get", "k"],
    ["put", "k", "v"],
    ["delete", "k"],
    ["delete", "k", "--blind"],
    ["keys"],
    ["admin", "status"],
    ["admin", "ring"],
    ["admin", "transfers"],
    ["admin", "aae"]
  ]
  await Promise.all(commands.map(async (c) => {
    const { json, error } = await both(t, [...c, "--url", url], 3)
    t.equal(error?.code, "unreachable", `${c.join(" ")}: code unreachable`)
    t.equal(error?.url, url, `${c.join(" ")}: the address it tried`)
    t.match(error?.message ?? "", "connection refused", `${c.join(" ")}: why`)
    t.equal(json.stdout.length, 0, `${c.join(" ")}: nothing on stdout`)
  }))
})

t.test("--json and a missing key: get prints found:false on stdout and not_found on stderr, exit 4; delete likewise", async (t) => {
  const url = await mockApi(t)
  const get = await both(t, ["get", "nope", "--url", url], 4)
  t.same(JSON.parse(get.json.stdout.toString()), { key: "nope", found: false, context: "ctx-tomb" }, "the document on stdout, as before")
  t.equal(get.error?.code, "not_found")
  t.equal(get.error?.key, "nope")
  t.equal(get.plain.stderr, "not found\n", "without --json: the plain line")

  const del = await both(t, ["delete", "missing", "--url", url], 4)
  t.equal(del.error?.code, "not_found")
  t.equal(del.json.stdout.length, 0)
  // delete reads the context first: a key with no value is not found on that read.
  const delRead = await both(t, ["delete", "nope", "--url", url], 4)
  t.equal(delRead.error?.code, "not_found")
})

t.test("--json and a node's error answer: its code and status, exit 1", async (t) => {
  const url = await mockApi(t)
  for (const args of [["get", "slow"], ["put", "slow", "v"], ["delete", "slow"], ["delete", "slow", "--context", "c"], ["keys"]]) {
    const { error, json } = await both(t, [...args, "--url", url], 1)
    t.equal(error?.code, "quorum_not_met", `${args.join(" ")}: the node's code`)
    t.equal(error?.status, 503)
    t.match(error?.message ?? "", "needed 2, got 1")
    t.equal(json.stdout.length, 0)
  }
  const admin = await both(t, ["admin", "status", "--url", url], 1)
  t.equal(admin.error?.code, "not_joined")
})

t.test("--json and siblings: the document on stdout, nothing on stderr, exit 5", async (t) => {
  const url = await mockApi(t)
  const r = await run(["get", "conflict", "--url", url, "--json"])
  t.equal(r.code, 5)
  t.equal(r.stderr, "")
  t.equal(JSON.parse(r.stdout.toString()).context, "ctx-both")
})

t.test("--json and usage errors, parse errors included: code usage, exit 2", async (t) => {
  const cases = [
    ["get"],
    ["get", "k", "--bogus"],
    ["get", "k", "--url", "foo"],
    ["get", "k", "--url", "http://127.0.0.1:8081/kv"],
    ["get", "k", "--r", "many"],
    ["put", "k", "v", "--file", "x"],
    ["delete", "k", "--blind", "--context", "c"],
    ["keys", "--limit", "0"],
    ["admin", "remove", "bad id!"]
  ]
  await Promise.all(cases.map(async (c) => {
    const { error, json } = await both(t, c, 2)
    t.equal(error?.code, "usage", `${c.join(" ")}: code usage`)
    t.equal(json.stdout.length, 0)
  }))
})

t.test("without --json nothing changes: errors stay plain lines", async (t) => {
  const url = `http://127.0.0.1:${await freePort()}`
  const r = await run(["get", "k", "--url", url])
  t.equal(r.code, 3)
  t.match(r.stderr, /^error: unreachable: cannot reach /)
  // A value "--json" after "--" is a value, not the flag.
  const after = await run(["put", "k", "--url", url, "--", "--json"])
  t.equal(after.code, 3)
  t.match(after.stderr, /^error: unreachable: /)
})

/**
 * TallyClient against a fake fetch: the shapes of get, put and delete, typed errors with the
 * registry's codes, retries across nodes on 503, 504 and connection errors with bounded,
 * jittered exponential backoff, and update's read-resolve-modify-write rounds. A real HTTP
 * server checks that connections are kept alive; a scan checks the core uses no Node API.
 */
import * as fs from "node:fs"
import * as http from "node:http"
import type { AddressInfo } from "node:net"
import * as path from "node:path"
import t from "tap"
import { backoffMs, DEFAULT_RETRY, retryAfterMs, decodeBase64, hasSiblings, TallyClient, TallyError, text, type TallySibling } from "tally/client"
import { errorCodes } from "../../src/Errors.ts"

interface Call {
  readonly url: string
  readonly method: string
  readonly headers: Record<string, string>
  readonly body: string | undefined
}

type Handler = (call: Call) => Response | Error

/** A fetch that records each call and answers with `handler`; an Error is thrown as fetch throws it. */
const fakeFetch = (handler: Handler) => {
  const calls: Array<Call> = []
  const fetch = (async (input: string | URL | Request, init?: RequestInit) => {
    const body = init?.body === undefined ? undefined : new TextDecoder().decode(init.body as Uint8Array)
    const call: Call = { url: String(input), method: init?.method ?? "GET", headers: { ...(init?.headers as Record<string, string>) }, body }
    calls.push(call)
    const answer = handler(call)
    if (answer instanceof Error) throw answer
    return answer
  }) as typeof globalThis.fetch
  return { fetch, calls }
}

const json = (status: number, body: unknown, headers: Record<string, string> = {}) =>
  new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json", ...headers } })
const noContent = (context: string) => new Response(null, { status: 204, headers: { "x-context": context } })
const refused = () => new TypeError("fetch failed", { cause: Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNREFUSED" }) })
const b64 = (s: string) => Buffer.from(s).toString("base64")

const NODES = ["http://n1:1", "http://n2:2", "http://n3:3"]
/** A client whose sleeps are recorded and advance a fake clock, not waited. */
const client = (handler: Handler, options: { random?: () => number; retry?: Partial<typeof DEFAULT_RETRY> } = {}) => {
  const fake = fakeFetch(handler)
  const sleeps: Array<number> = []
  let clock = 0
  const c = new TallyClient({
    nodes: NODES,
    fetch: fake.fetch,
    random: options.random ?? (() => 0.5),
    sleep: async (ms) => {
      sleeps.push(ms)
      clock += ms
    },
    now: () => clock,
    ...(options.retry === undefined ? {} : { retry: options.retry })
  })
  return { c, calls: fake.calls, sleeps }
}

t.test("get: a value with its context, siblings decoded, undefined when not found", async (t) => {
  const { c, calls } = client((call) => {
    if (call.url.endsWith("/kv/one?r=all")) return new Response("hello", { status: 200, headers: { "content-type": "text/plain", "x-context": "ctx1" } })
    if (call.url.includes("/kv/two")) {
      return json(300, { context: "ctx2", siblings: [{ value: b64("a"), contentType: "text/plain", lastModified: "2024-05-01T10:00:00.000Z" }, { value: b64("b\u0000"), contentType: "application/octet-stream", lastModified: "2024-05-01T10:00:01.000Z" }] })
    }
    return json(404, { error: "not_found", message: "no value" }, { "x-context": "tomb" })
  })
  const one = await c.get("one", { r: "all" })
  t.ok(one !== undefined && !hasSiblings(one))
  if (one !== undefined && !hasSiblings(one)) {
    t.equal(text(one.value), "hello")
    t.equal(one.contentType, "text/plain")
    t.equal(one.context, "ctx1")
  }
  const two = await c.get("two")
  t.ok(two !== undefined && hasSiblings(two))
  if (two !== undefined && hasSiblings(two)) {
    t.equal(two.context, "ctx2")
    t.same(two.siblings.map((s) => [text(s.value), s.contentType, s.lastModified.toISOString()]), [
      ["a", "text/plain", "2024-05-01T10:00:00.000Z"],
      ["b\u0000", "application/octet-stream", "2024-05-01T10:00:01.000Z"]
    ])
  }
  t.equal(await c.get("a b/c"), undefined)
  t.equal(calls.at(-1)!.url, "http://n3:3/kv/a%20b%2Fc", "key URL-encoded; calls spread over the nodes")
})

t.test("put sends the value, its type and the context; delete reads the context first", async (t) => {
  const { c, calls } = client((call) => {
    if (call.method === "GET" && call.url.includes("/kv/gone")) return json(404, { error: "not_found", message: "no value" })
    if (call.method === "GET") return new Response("v", { status: 200, headers: { "x-context": "read-ctx" } })
    return noContent("new-ctx")
  })
  t.same(await c.put("k", "text", { context: "c0", w: 3, sloppy: false }), { context: "new-ctx" })
  t.match(calls[0]!, { method: "PUT", url: "http://n1:1/kv/k?w=3&sloppy=false", body: "text", headers: { "content-type": "text/plain; charset=utf-8", "x-context": "c0" } })
  await c.put("k", new Uint8Array([1, 2]))
  t.equal(calls[1]!.headers["content-type"], "application/octet-stream")
  t.equal(calls[1]!.headers["x-context"], undefined, "no context: a concurrent write")
  await c.put("k", "{}", { contentType: "application/json" })
  t.equal(calls[2]!.headers["content-type"], "application/json")

  calls.length = 0
  await c.delete("k")
  t.same(calls.map((x) => [x.method, x.headers["x-context"]]), [["GET", undefined], ["DELETE", "read-ctx"]], "delete carries what the read saw")
  calls.length = 0
  await c.delete("gone")
  t.same(calls.map((x) => x.method), ["GET"], "nothing to delete: no write")
  calls.length = 0
  await c.delete("k", { context: "mine" })
  await c.delete("k", { blind: true })
  t.same(calls.map((x) => [x.method, x.headers["x-context"]]), [["DELETE", "mine"], ["DELETE", undefined]])
})

t.test("errors are TallyErrors with the registry's code; 4xx and 507 are not retried", async (t) => {
  for (const code of ["bad_request", "too_many_siblings", "value_too_large", "disk_full", "unauthorized", "internal_error"] as const) {
    const { c, calls } = client(() => json(errorCodes[code].status, { error: code, message: `m-${code}` }))
    const e = await c.put("k", "v").catch((e: unknown) => e)
    t.ok(TallyError.is(e, code), `${code} typed`)
    t.equal((e as TallyError).status, errorCodes[code].status)
    t.equal((e as TallyError).message, `m-${code}`)
    t.equal((e as TallyError).retryable, false)
    t.equal(calls.length, 1, `${code} is not retried`)
  }
  const { c } = client(() => new Response("<html>", { status: 502 }))
  const e = await c.get("k").catch((e: unknown) => e)
  t.ok(TallyError.is(e, "bad_answer"), "a non-API answer is bad_answer")
  t.throws(() => new TallyClient({ nodes: [] }), TypeError)
  t.throws(() => new TallyClient({ nodes: ["http://127.0.0.1:8081/kv"] }), /without a path/)
  t.throws(() => new TallyClient({ nodes: ["127.0.0.1:8081"] }), /not a node address/)
  const long = await new TallyClient({ nodes: NODES, fetch: fakeFetch(() => noContent("x")).fetch }).put("k".repeat(1025), "v").catch((e: unknown) => e)
  t.ok(TallyError.is(long, "bad_request"), "an oversized key fails before any request")
})

t.test("503, 504 and connection errors move to the next node after a backoff", async (t) => {
  let n = 0
  const answers = [
    () => json(503, { error: "quorum_not_met", message: "1 of 2", needed: 2, got: 1 }),
    () => refused(),
    () => json(504, { error: "timeout", message: "slow" }),
    () => json(503, { error: "unavailable", message: "closing" }),
    () => noContent("ok")
  ]
  const { c, calls, sleeps } = client(() => answers[n++]!(), { random: () => 0.999 })
  t.same(await c.put("k", "v"), { context: "ok" })
  t.same(calls.map((x) => new URL(x.url).host), ["n1:1", "n2:2", "n3:3", "n1:1", "n2:2"], "each retry on the next node")
  t.same(sleeps, [49, 99, 199, 399], "exponential: 50, 100, 200, 400 ms at most (random 0.999)")
})

t.test("backoff: full jitter under an exponential cap, bounded by maxDelayMs", async (t) => {
  const policy = { ...DEFAULT_RETRY, baseDelayMs: 100, maxDelayMs: 1_000 }
  t.same([1, 2, 3, 4, 5, 6].map((a) => backoffMs(policy, a, () => 0.999999)), [99, 199, 399, 799, 999, 999])
  t.same([1, 2, 3].map((a) => backoffMs(policy, a, () => 0)), [0, 0, 0])
  t.equal(backoffMs(policy, 3, () => 0.5), 200)
})

t.test("retries are bounded in attempts and in time; the last error says what each attempt met", async (t) => {
  const { c, calls, sleeps } = client(() => json(503, { error: "quorum_not_met", message: "1 of 2", needed: 2, got: 1 }), { retry: { attempts: 4 } })
  const e = await c.get("k").catch((e: unknown) => e)
  t.ok(TallyError.is(e, "quorum_not_met"))
  t.equal((e as TallyError).needed, 2)
  t.equal((e as TallyError).got, 1)
  t.equal((e as TallyError).attempts.length, 4)
  t.equal(calls.length, 4, "attempts: 4")
  t.equal(sleeps.length, 3)

  const down = client(() => refused(), { retry: { attempts: 3 } })
  const u = await down.c.get("k").catch((e: unknown) => e)
  t.ok(TallyError.is(u, "unreachable"), "no node answered: unreachable")
  t.match((u as TallyError).message, "no node answered GET /kv/k in 3 attempts: http://n1:1: ECONNREFUSED; http://n2:2: ECONNREFUSED; http://n3:3: ECONNREFUSED")
  t.equal((u as TallyError).retryable, true)

  // A deadline shorter than the next backoff stops at once.
  const quick = client(() => refused(), { retry: { attempts: 100, deadlineMs: 120, baseDelayMs: 50 }, random: () => 0.999 })
  const q = await quick.c.get("k").catch((e: unknown) => e)
  t.ok(TallyError.is(q, "unreachable"))
  t.same(quick.sleeps, [49], "the second backoff (99 ms) would pass the 120 ms deadline, counted from the call")
})

t.test("an attempt that gets no answer in attemptTimeoutMs counts as a connection error", async (t) => {
  let n = 0
  const fetch = ((_input: string, init?: RequestInit) => {
    if (n++ === 0) {
      return new Promise((_resolve, reject) => init?.signal?.addEventListener("abort", () => reject(init.signal?.reason)))
    }
    return Promise.resolve(noContent("ok"))
  }) as typeof globalThis.fetch
  const c = new TallyClient({ nodes: NODES, fetch, attemptTimeoutMs: 50, sleep: async () => {} })
  t.same(await c.put("k", "v"), { context: "ok" })
  t.equal(n, 2, "the silent node was given up on and the next one asked")

  const controller = new AbortController()
  const aborted = new TallyClient({ nodes: NODES, fetch: ((_i: string, init?: RequestInit) => new Promise((_r, reject) => init?.signal?.addEventListener("abort", () => reject(init.signal?.reason)))) as typeof globalThis.fetch })
  setTimeout(() => controller.abort(new Error("caller gave up")), 20)
  const e = await aborted.get("k", { signal: controller.signal }).catch((e: unknown) => e)
  t.match(e, { message: "caller gave up" }, "the caller's abort ends the call at once, not retried")
})

const cartResolver = (siblings: ReadonlyArray<TallySibling>) =>
  JSON.stringify([...new Set(siblings.flatMap((s) => JSON.parse(text(s.value)) as Array<string>))].sort())
const addItem = (item: string) => (current: Uint8Array | undefined) =>
  JSON.stringify([...new Set([...(current === undefined ? [] : (JSON.parse(text(current)) as Array<string>)), item])].sort())

t.test("update: resolves siblings, applies fn, writes with the context it read", async (t) => {
  const puts: Array<Call> = []
  const { c } = client((call) => {
    if (call.method === "GET") {
      return json(300, { context: "both", siblings: [{ value: b64('["a"]'), contentType: "application/json", lastModified: "2024-05-01T10:00:00.000Z" }, { value: b64('["b"]'), contentType: "application/json", lastModified: "2024-05-01T10:00:01.000Z" }] })
    }
    puts.push(call)
    return noContent("merged")
  })
  const done = await c.update("cart", addItem("c"), { resolve: cartResolver })
  t.equal(puts.length, 1)
  t.equal(puts[0]!.body, '["a","b","c"]', "the union of the siblings, plus the new item")
  t.equal(puts[0]!.headers["x-context"], "both", "written with the context that covers both siblings")
  t.equal(done?.context, "merged")

  const e = await c.update("cart", addItem("c")).catch((e: unknown) => e)
  t.ok(TallyError.is(e, "unresolved_siblings"), "siblings and no resolver: a clear error, nothing written")
  t.equal(puts.length, 1)

  const none = await c.update("cart", () => undefined, { resolve: cartResolver })
  t.equal(none, undefined, "fn returning undefined writes nothing")
  t.equal(puts.length, 1)
})

t.test("update: a missing key starts from undefined and carries the tombstone's context", async (t) => {
  const seen: Array<Uint8Array | undefined> = []
  const { c, calls } = client((call) => (call.method === "GET" ? json(404, { error: "not_found", message: "deleted" }, { "x-context": "tomb" }) : noContent("new")))
  await c.update("cart", (cur) => {
    seen.push(cur)
    return "[]"
  })
  t.same(seen, [undefined])
  t.equal(calls[1]!.headers["x-context"], "tomb", "the write replaces the delete instead of standing beside it")
})

t.test("update: a write that fails retryably, or meets too many siblings, starts the round again from the read", async (t) => {
  let reads = 0
  let writes = 0
  const { c } = client((call) => {
    if (call.method === "GET") {
      reads++
      return new Response(`["r${reads}"]`, { status: 200, headers: { "content-type": "application/json", "x-context": `c${reads}` } })
    }
    writes++
    if (writes <= 6) return json(503, { error: "quorum_not_met", message: "1 of 2", needed: 2, got: 1 })
    if (writes === 7) return json(409, { error: "too_many_siblings", message: "resolve" })
    return noContent("done")
  }, { retry: { attempts: 6 } })
  const done = await c.update("cart", addItem("x"), { resolve: cartResolver })
  t.equal(writes, 8, "6 attempts of the first round's write, one 409, then the write that succeeded")
  t.equal(reads, 3, "each round reads again")
  t.equal(text(done!.value), '["r3","x"]', "fn applied to what the last round read")
  t.equal(done!.contentType, "application/json", "bytes keep the content type they had")

  const { c: stuck } = client((call) => (call.method === "GET" ? json(404, { error: "not_found", message: "x" }) : json(503, { error: "unavailable", message: "closing" })), { retry: { attempts: 1 } })
  const e = await stuck.update("cart", addItem("x"), { maxRounds: 3 }).catch((e: unknown) => e)
  t.ok(TallyError.is(e, "unavailable"), "bounded: the last error once the rounds run out")
  t.match((e as Error).message, "did not succeed in 3 rounds")

  const { c: bad } = client((call) => (call.method === "GET" ? json(404, { error: "not_found", message: "x" }) : json(400, { error: "bad_request", message: "no" })))
  const b = await bad.update("cart", addItem("x")).catch((e: unknown) => e)
  t.ok(TallyError.is(b, "bad_request"), "a bad request is not retried")
})

t.test("the token goes as a bearer token", async (t) => {
  const fake = fakeFetch(() => noContent("x"))
  await new TallyClient({ nodes: NODES, fetch: fake.fetch, token: "s3cret" }).put("k", "v")
  t.equal(fake.calls[0]!.headers.authorization, "Bearer s3cret")
})

t.test("base64 decoding of sibling values", async (t) => {
  for (const bytes of [[], [0], [0, 1], [0, 1, 2], [255, 254, 253, 252], Array.from({ length: 300 }, (_, i) => (i * 7) % 256)]) {
    t.same([...decodeBase64(Buffer.from(bytes).toString("base64"))!], bytes)
  }
  t.equal(decodeBase64("a$=="), undefined)
  t.equal(decodeBase64("abcde"), undefined)
})

t.test("connections are kept alive: many calls, few connections", async (t) => {
  let connections = 0
  const server = http.createServer((req, res) => {
    req.resume()
    req.on("end", () => {
      res.writeHead(req.method === "GET" ? 200 : 204, { "x-context": "c", "content-type": "text/plain" })
      res.end(req.method === "GET" ? "v" : undefined)
    })
  })
  server.on("connection", () => connections++)
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r))
  t.teardown(() => new Promise<void>((r) => {
    server.closeAllConnections()
    server.close(() => r())
  }))
  const c = new TallyClient({ nodes: [`http://127.0.0.1:${(server.address() as AddressInfo).port}`] })
  for (let i = 0; i < 30; i++) {
    await c.put(`k${i}`, "v")
    await c.get(`k${i}`)
  }
  // A connection is handed back to the pool a moment after its answer ends, so a call may
  // find it still busy and open a second one; without keep-alive there would be 60.
  t.ok(connections <= 2, `60 sequential calls on ${connections} connection(s)`)
})

/** A real HTTP server answering with `answer(n)` for its n-th request (from 0), recording when each came. */
const fakeNode = async (t: { teardown: (f: () => Promise<void>) => void }, answer: (n: number) => { status: number; headers: Record<string, string>; body?: string }) => {
  const times: Array<number> = []
  const server = http.createServer((req, res) => {
    req.resume()
    req.on("end", () => {
      const a = answer(times.length)
      times.push(performance.now())
      res.writeHead(a.status, a.headers)
      res.end(a.body)
    })
  })
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r))
  t.teardown(() => new Promise<void>((r) => {
    server.closeAllConnections()
    server.close(() => r())
  }))
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, times }
}

const shed = (retryAfter: string) => ({ status: 503, headers: { "content-type": "application/json", "retry-after": retryAfter }, body: JSON.stringify({ error: "unavailable", message: "too many requests in flight" }) })
const ok = { status: 200, headers: { "content-type": "text/plain", "x-context": "c1" }, body: "v" }

t.test("Retry-After: 1 on a 503: the node is not tried again before a second has passed", async (t) => {
  const node = await fakeNode(t, (n) => (n === 0 ? shed("1") : ok))
  // No jitter at all: without the header the retry would come at once.
  const c = new TallyClient({ nodes: [node.url], random: () => 0 })
  const got = await c.get("k")
  t.same(got !== undefined && !hasSiblings(got) ? text(got.value) : undefined, "v")
  t.equal(node.times.length, 2)
  const gap = node.times[1]! - node.times[0]!
  t.ok(gap >= 950, `the retry came ${gap.toFixed(0)} ms after the 503`)
  t.ok(gap < 3_000, `and not much later: ${gap.toFixed(0)} ms`)
})

t.test("Retry-After as an HTTP date is waited for too", async (t) => {
  // HTTP dates have whole seconds: 3 s from now is at least 2 s away.
  const at = new Date(Math.ceil(Date.now() / 1000) * 1000 + 3_000).toUTCString()
  const node = await fakeNode(t, (n) => (n === 0 ? shed(at) : ok))
  const c = new TallyClient({ nodes: [node.url], random: () => 0 })
  await c.get("k")
  t.equal(node.times.length, 2)
  const gap = node.times[1]! - node.times[0]!
  t.ok(gap >= 1_900, `the retry came ${gap.toFixed(0)} ms after the 503`)
})

t.test("Retry-After holds back only the node that sent it; other nodes are tried after the backoff", async (t) => {
  const c = client((call) => (call.url.startsWith("http://n1:1") ? json(503, { error: "unavailable", message: "busy" }, { "retry-after": "5" }) : json(503, { error: "quorum_not_met", message: "q" })), { random: () => 0.5, retry: { attempts: 4 } })
  await t.rejects(c.c.get("k"), { code: "unavailable" })
  // n1 (Retry-After 5), n2, n3 after the usual backoff (25, 50), then n1 again after 5 s in all.
  t.same(c.calls.map((x) => new URL(x.url).host), ["n1:1", "n2:2", "n3:3", "n1:1"])
  t.same(c.sleeps.slice(0, 2), [25, 50])
  t.equal(c.sleeps.reduce((a, b) => a + b, 0), 5_000)
})

t.test("a Retry-After past the deadline is not waited for: the call fails at once", async (t) => {
  const sleeps: Array<number> = []
  const single = new TallyClient({
    nodes: ["http://n1:1"],
    retry: { deadlineMs: 10_000 },
    fetch: (async () => json(503, { error: "unavailable", message: "busy" }, { "retry-after": "60" })) as typeof globalThis.fetch,
    sleep: async (ms) => {
      sleeps.push(ms)
    }
  })
  await t.rejects(single.get("k"), { code: "unavailable" })
  t.same(sleeps, [], "no wait past the deadline")
})

t.test("retryAfterMs reads delay-seconds and HTTP dates", async (t) => {
  const now = Date.parse("Fri, 04 Dec 2026 08:00:00 GMT")
  t.equal(retryAfterMs("1", now), 1_000)
  t.equal(retryAfterMs(" 120 ", now), 120_000)
  t.equal(retryAfterMs("Fri, 04 Dec 2026 08:00:05 GMT", now), 5_000)
  t.equal(retryAfterMs("Fri, 04 Dec 2026 07:00:00 GMT", now), 0)
  t.equal(retryAfterMs(null, now), undefined)
  t.equal(retryAfterMs("-1", now), undefined)
  t.equal(retryAfterMs("1.5", now), undefined)
  t.equal(retryAfterMs("soon", now), undefined)
})

t.test("the client's core uses only web APIs, so it runs in browsers", async (t) => {
  const dir = path.resolve(import.meta.dirname, "../../src/client")
  const files = fs.readdirSync(dir).filter((f) => f.endsWith(".ts"))
  t.ok(files.length >= 2)
  for (const f of files) {
    const src = fs.readFileSync(path.join(dir, f), "utf8").replace(/\/\*[\s\S]*?\*\/|\/\/.*$/gm, "")
    t.notMatch(src, /from\s+["']node:|require\(|\bBuffer\b|\bprocess\.|import\s*\(\s*["']node:/, `${f}: no Node-only API`)
    for (const m of src.matchAll(/from\s+["']([^"']+)["']/g)) {
      t.ok(m[1]!.startsWith("./") || m[1] === "../ErrorCodes.ts", `${f} imports only the client's own modules and the error-code table: ${m[1]}`)
    }
  }
  const codes = fs.readFileSync(path.resolve(dir, "../ErrorCodes.ts"), "utf8")
  t.notMatch(codes, /^\s*(import|export\s[^;]*\sfrom)\s/m, "the error-code table imports nothing")
})

import t from "tap"
import { Clock, Effect, Exit } from "effect"
import { buildServer } from "../../src/api/Server.ts"
import { apiError, errorCodes } from "../../src/Errors.ts"
import { makeMetrics } from "../../src/metrics/Metrics.ts"
import pino from "pino"
import { assembleNode } from "../../src/node/Node.ts"
import { quiet, testNode, testSettings } from "./helpers.ts"

t.test("PUT then GET returns the value, its content type and a context", async (t) => {
  const node = await testNode()
  t.teardown(node.close)
  const put = await node.app.inject({ method: "PUT", url: "/kv/greeting", payload: "hello", headers: { "content-type": "text/plain" } })
  t.equal(put.statusCode, 204)
  t.match(put.headers["x-context"], /^[A-Za-z0-9_-]+$/)
  const get = await node.app.inject({ method: "GET", url: "/kv/greeting" })
  t.equal(get.statusCode, 200)
  t.equal(get.body, "hello")
  t.equal(get.headers["content-type"], "text/plain")
  t.match(get.headers["x-context"], /^[A-Za-z0-9_-]+$/)
  // Bytes of any type are stored raw, JSON included (it is not parsed).
  const json = '{"a": [1, 2'
  await node.app.inject({ method: "PUT", url: "/kv/j", payload: json, headers: { "content-type": "application/json" } })
  const j = await node.app.inject({ method: "GET", url: "/kv/j" })
  t.equal(j.body, json)
  t.equal(j.headers["content-type"], "application/json")
  const bin = Buffer.from([0, 255, 1, 254, 0])
  await node.app.inject({ method: "PUT", url: "/kv/bin", payload: bin })
  const b = await node.app.inject({ method: "GET", url: "/kv/bin" })
  t.same(b.rawPayload, bin)
  t.equal(b.headers["content-type"], "application/octet-stream")
})

t.test("keys are URL-decoded UTF-8 of 1 to 1024 bytes", async (t) => {
  const node = await testNode()
  t.teardown(node.close)
  const key = "päth/with spaces/日本"
  t.equal((await node.app.inject({ method: "PUT", url: `/kv/${encodeURIComponent(key)}`, payload: "x" })).statusCode, 204)
  t.equal((await node.app.inject({ method: "GET", url: `/kv/${encodeURIComponent(key)}` })).body, "x")
  t.equal((await node.app.inject({ method: "PUT", url: `/kv/${"k".repeat(1024)}`, payload: "x" })).statusCode, 204)
  const long = await node.app.inject({ method: "PUT", url: `/kv/${"k".repeat(1025)}`, payload: "x" })
  t.equal(long.statusCode, 400)
  t.equal(long.json().error, "bad_request")
  t.match(long.json().message, /1024/)
  const bad = await node.app.inject({ method: "GET", url: "/kv/%E0%A4%A" })
  t.equal(bad.statusCode, 400)
  t.equal(bad.json().error, "bad_request")
})

t.test("404 for a missing key; after a delete, 404 with the tombstone's context", async (t) => {
  const node = await testNode()
  t.teardown(node.close)
  const missing = await node.app.inject({ method: "GET", url: "/kv/nope" })
  t.equal(missing.statusCode, 404)
  t.equal(missing.json().error, "not_found")
  t.notOk(missing.headers["x-context"])
  const put = await node.app.inject({ method: "PUT", url: "/kv/k", payload: "v" })
  const del = await node.app.inject({ method: "DELETE", url: "/kv/k", headers: { "x-context": put.headers["x-context"] as string } })
  t.equal(del.statusCode, 204)
  const gone = await node.app.inject({ method: "GET", url: "/kv/k" })
  t.equal(gone.statusCode, 404)
  t.equal(gone.json().error, "not_found")
  t.ok(gone.headers["x-context"], "the tombstone's context is sent")
  // Writing with that context replaces the tombstone: one value, no sibling.
  await node.app.inject({ method: "PUT", url: "/kv/k", payload: "back", headers: { "x-context": gone.headers["x-context"] as string } })
  const back = await node.app.inject({ method: "GET", url: "/kv/k" })
  t.equal(back.statusCode, 200)
  t.equal(back.body, "back")
})

t.test("concurrent blind writes become siblings; a write with the read context resolves them", async (t) => {
  const node = await testNode()
  t.teardown(node.close)
  await Promise.all(["a", "b", "c"].map((v) => node.app.inject({ method: "PUT", url: "/kv/cart", payload: v, headers: { "content-type": "text/plain" } })))
  const get = await node.app.inject({ method: "GET", url: "/kv/cart" })
  t.equal(get.statusCode, 300)
  const body = get.json()
  t.equal(body.context, get.headers["x-context"])
  t.same(body.siblings.map((s: { value: string }) => Buffer.from(s.value, "base64").toString()).sort(), ["a", "b", "c"])
  for (const s of body.siblings) {
    t.equal(s.contentType, "text/plain")
    t.equal(new Date(s.lastModified).toISOString(), s.lastModified)
  }
  const resolve = await node.app.inject({ method: "PUT", url: "/kv/cart", payload: "abc", headers: { "x-context": body.context } })
  t.equal(resolve.statusCode, 204)
  const after = await node.app.inject({ method: "GET", url: "/kv/cart" })
  t.equal(after.statusCode, 200)
  t.equal(after.body, "abc")
})

t.test("a write's lastModified comes from the node's clock, not the process's (the simulator skews it per node)", async (t) => {
  const skewMs = 3 * 60 * 60 * 1000
  const wall = () => Date.now() + skewMs
  const base = Effect.runSync(Effect.clockWith((c) => Effect.succeed(c)))
  const clock: Clock.Clock = {
    ...base,
    currentTimeMillisUnsafe: wall,
    currentTimeMillis: Effect.sync(wall)
  }
  const node = await assembleNode(testSettings(), { memory: true, logStream: quiet(), clock })
  t.teardown(node.close)
  // Two blind writes: siblings, whose lastModified the answer shows.
  for (const v of ["a", "b"]) await node.app.inject({ method: "PUT", url: "/kv/skewed", payload: v, headers: { "content-type": "text/plain" } })
  const get = await node.app.inject({ method: "GET", url: "/kv/skewed" })
  t.equal(get.statusCode, 300)
  for (const s of get.json().siblings) {
    const off = Date.parse(s.lastModified) - Date.now()
    t.ok(Math.abs(off - skewMs) < 60_000, `lastModified is ${Math.round(off / 60_000)} min off the process clock, as the node's clock is`)
  }
})

t.test("a stale context makes a sibling instead of overwriting a newer write", async (t) => {
  const node = await testNode()
  t.teardown(node.close)
  await node.app.inject({ method: "PUT", url: "/kv/k", payload: "v1" })
  const ctx1 = (await node.app.inject({ method: "GET", url: "/kv/k" })).headers["x-context"] as string
  await node.app.inject({ method: "PUT", url: "/kv/k", payload: "v2", headers: { "x-context": ctx1 } })
  // Another client still holds ctx1 and writes: v2 was not in its context, so both stay.
  await node.app.inject({ method: "PUT", url: "/kv/k", payload: "v3", headers: { "x-context": ctx1 } })
  const get = await node.app.inject({ method: "GET", url: "/kv/k" })
  t.equal(get.statusCode, 300)
  t.same(get.json().siblings.map((s: { value: string }) => Buffer.from(s.value, "base64").toString()).sort(), ["v2", "v3"])
  // A writer chaining the context its own PUT returned stays at one value.
  let ctx = ""
  for (let i = 0; i < 5; i++) {
    const r = await node.app.inject({ method: "PUT", url: "/kv/solo", payload: `s${i}`, headers: ctx ? { "x-context": ctx } : {} })
    ctx = r.headers["x-context"] as string
  }
  t.equal((await node.app.inject({ method: "GET", url: "/kv/solo" })).body, "s4")
})

t.test("parameters are validated: r and w within N, quorum and all, sloppy, timeout", async (t) => {
  const node = await testNode()
  t.teardown(node.close)
  const ok = ["r=1", "r=3", "r=quorum", "r=all", "sloppy=false", "sloppy=true", "timeout=500"]
  for (const q of ok) t.equal((await node.app.inject({ method: "GET", url: `/kv/x?${q}` })).statusCode, 404, q)
  t.equal((await node.app.inject({ method: "PUT", url: "/kv/x?w=all&sloppy=false", payload: "v" })).statusCode, 204)
  const bad = ["r=0", "r=4", "w=-1", "r=two", "r=1.5", "sloppy=maybe", "timeout=0", "timeout=abc", "timeout=9999999", "x=1", "r=1&r=2"]
  for (const q of bad) {
    const res = await node.app.inject({ method: q.startsWith("w") ? "PUT" : "GET", url: `/kv/x?${q}`, payload: "v" })
    t.equal(res.statusCode, 400, q)
    t.equal(res.json().error, "bad_request", q)
    t.ok(res.json().message.length > 10, `${q}: ${res.json().message}`)
  }
  const ctx = await node.app.inject({ method: "PUT", url: "/kv/x", payload: "v", headers: { "x-context": "not a context!" } })
  t.equal(ctx.statusCode, 400)
  t.match(ctx.json().message, /X-Context/)
})

t.test("values over the limit get 413, and the limit is live", async (t) => {
  const node = await testNode({ maxValueBytes: 100 })
  t.teardown(node.close)
  const first = await node.app.inject({ method: "PUT", url: "/kv/k", payload: Buffer.alloc(100) })
  t.equal(first.statusCode, 204)
  const big = await node.app.inject({ method: "PUT", url: "/kv/k", payload: Buffer.alloc(101) })
  t.equal(big.statusCode, 413)
  t.equal(big.json().error, "value_too_large")
  node.applyLive({ maxValueBytes: 200 })
  const ctx = first.headers["x-context"] as string
  t.equal((await node.app.inject({ method: "PUT", url: "/kv/k", payload: Buffer.alloc(150), headers: { "x-context": ctx } })).statusCode, 204)
  t.equal((await node.app.inject({ method: "GET", url: "/kv/k" })).rawPayload.length, 150)
})

t.test("more than 100 siblings: client writes are refused with 409 until resolved", async (t) => {
  const node = await testNode()
  t.teardown(node.close)
  for (let i = 0; i < 100; i++) t.equal((await node.app.inject({ method: "PUT", url: "/kv/hot", payload: `v${i}` })).statusCode, 204)
  const refused = await node.app.inject({ method: "PUT", url: "/kv/hot", payload: "one too many" })
  t.equal(refused.statusCode, 409)
  t.equal(refused.json().error, "too_many_siblings")
  t.match(refused.json().message, /X-Context/)
  const get = await node.app.inject({ method: "GET", url: "/kv/hot" })
  t.equal(get.json().siblings.length, 100)
  const fix = await node.app.inject({ method: "PUT", url: "/kv/hot", payload: "merged", headers: { "x-context": get.headers["x-context"] as string } })
  t.equal(fix.statusCode, 204)
  t.equal((await node.app.inject({ method: "GET", url: "/kv/hot" })).body, "merged")
  const metrics = (await node.app.inject({ method: "GET", url: "/metrics" })).body
  t.match(metrics, /tally_sibling_warnings_total [1-9]/)
})

t.test("ping, health, metrics, admin/cluster, faults off by default", async (t) => {
  const node = await testNode()
  t.teardown(node.close)
  const ping = await node.app.inject({ method: "GET", url: "/ping" })
  t.equal(ping.statusCode, 200)
  t.equal(ping.body, "OK")
  const health = await node.app.inject({ method: "GET", url: "/health" })
  t.equal(health.json().status, "ok")
  t.equal(health.json().node, "test-node")
  await node.app.inject({ method: "PUT", url: "/kv/a", payload: "1" })
  await node.app.inject({ method: "GET", url: "/kv/a" })
  const m = await node.app.inject({ method: "GET", url: "/metrics" })
  t.equal(m.statusCode, 200)
  t.match(m.headers["content-type"], /text\/plain/)
  for (const name of ["tally_http_requests_total", "tally_http_request_duration_seconds_bucket", "tally_object_siblings", "tally_object_bytes", "tally_engine_keys", "tally_engine_segments", "tally_engine_dead_bytes", "tally_engine_compactions_total", "tally_engine_fsyncs_total", "tally_engine_fsync_seconds_total"]) {
    t.match(m.body, name, name)
  }
  t.match(m.body, /tally_http_requests_total\{op="put",status="204"\} 1/)
  for (const name of ["tally_ring_version 1", "tally_ring_settled 1", "tally_quorum_failures_total{op=\"put\"} 0", "tally_fallback_writes_total 0", "tally_read_repairs_total 0", "tally_forwarded_writes_total 0", "tally_transfers_running 0"]) {
    t.ok(m.body.includes(name), `/metrics has ${name}`)
  }
  t.match(m.body, /^tally_ring_hash \d+$/m)
  const c = await node.app.inject({ method: "GET", url: "/admin/cluster" })
  t.same(c.json(), { nodes: [{ id: "test-node", address: "127.0.0.1:0", status: "up", partitions: 64, parked: 0 }], n: 3, partitions: 64, owners: Array(64).fill("test-node"), settled: true, ringVersion: 1 })
  const f = await node.app.inject({ method: "POST", url: "/admin/faults", payload: { drop: [] } })
  t.equal(f.statusCode, 404)
  t.equal(f.json().error, "not_found")
  t.equal((await node.app.inject({ method: "GET", url: "/nowhere" })).json().error, "not_found")
})

t.test("POST /admin/faults with --enable-fault-injection", async (t) => {
  const node = await testNode({ enableFaultInjection: true })
  t.teardown(node.close)
  const ok = await node.app.inject({ method: "POST", url: "/admin/faults", payload: { drop: ["node-2"] } })
  t.equal(ok.statusCode, 200)
  t.same(ok.json(), { drop: ["node-2"] })
  for (const payload of ["{", '{"drop": "x"}', '{"drop": ["bad id!"]}', "null"]) {
    const bad = await node.app.inject({ method: "POST", url: "/admin/faults", payload, headers: { "content-type": "application/json" } })
    t.equal(bad.statusCode, 400, payload)
  }
  t.same((await node.app.inject({ method: "POST", url: "/admin/faults", payload: { drop: [] } })).json(), { drop: [] })
})

t.test("quorum_not_met and timeout reach the client with their status and details", async (t) => {
  const errors = {
    quorum: apiError("quorum_not_met", "2 replicas needed, 1 answered", { needed: 2, got: 1 }),
    timeout: apiError("timeout", "the replicas did not answer within 5 ms")
  }
  let next: keyof typeof errors = "quorum"
  const app = buildServer({
    nodeId: "n",
    logger: pino({ level: "silent" }, quiet()),
    metrics: makeMetrics(() => ({}) as never),
    run: async () => Exit.fail(errors[next]),
    settings: () => ({ n: 3, r: 2, w: 2, timeoutMs: 100, maxValueBytes: 1000 }),
    health: () => ({ status: "ok" }),
    admin: { leave: async () => undefined, remove: async () => undefined, transfers: async () => [], local: async () => ({}), aae: () => ({}), compact: () => {} }
  })
  t.teardown(() => app.close())
  const q = await app.inject({ method: "PUT", url: "/kv/k", payload: "v" })
  t.equal(q.statusCode, errorCodes.quorum_not_met.status)
  t.same(q.json(), { error: "quorum_not_met", message: "2 replicas needed, 1 answered", needed: 2, got: 1 })
  next = "timeout"
  const to = await app.inject({ method: "GET", url: "/kv/k?timeout=5" })
  t.equal(to.statusCode, 504)
  t.equal(to.json().error, "timeout")
  void Effect.void
})

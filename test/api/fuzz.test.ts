import * as net from "node:net"
import fc from "fast-check"
import t from "tap"
import { testNode, testSettings, quiet } from "./helpers.ts"
import { startNode } from "../../src/node/Node.ts"

const methods = fc.constantFrom("GET", "PUT", "DELETE", "POST", "HEAD", "OPTIONS", "PATCH")
const segment = fc.oneof(
  fc.string({ maxLength: 40 }).map(encodeURIComponent),
  fc.string({ unit: "binary", maxLength: 20 }),
  fc.constantFrom("%", "%E0%A4%A", "%00", "..", "%2F", "k".repeat(1100), "%C0%AF", "\u0000")
)
const path = fc.tuple(fc.constantFrom("/kv/", "/kv", "/admin/", "/admin/faults", "/ping", "/health", "/metrics", "/", "//kv/"), segment).map(([a, b]) => a + b)
const queryValue = fc.oneof(fc.constantFrom("1", "3", "4", "0", "quorum", "all", "true", "false", "-1", "", "1e3", "999999999999"), fc.string({ maxLength: 10 }))
const query = fc.array(fc.tuple(fc.constantFrom("r", "w", "sloppy", "timeout", "x", "R"), queryValue), { maxLength: 4 })
  .map((qs) => (qs.length === 0 ? "" : "?" + qs.map(([k, v]) => `${k}=${encodeURIComponent(v)}`).join("&")))
const header = fc.oneof(fc.string({ maxLength: 60 }), fc.base64String({ maxLength: 80 }), fc.constantFrom("AQA", "AQEBYQE", "____", "AQ", ""))
const body = fc.oneof(fc.uint8Array({ maxLength: 3000 }).map((b) => Buffer.from(b)), fc.json().map((j) => Buffer.from(j)))

t.test("no request, however malformed, gets a 500 or stops the node", async (t) => {
  const node = await testNode({ maxValueBytes: 2000, enableFaultInjection: true })
  t.teardown(node.close)
  const statuses = new Map<number, number>()
  await fc.assert(
    fc.asyncProperty(methods, path, query, fc.option(header), fc.option(fc.string({ maxLength: 40 })), body, async (method, p, q, ctx, ct, payload) => {
      const headers: Record<string, string> = {}
      if (ctx !== null) headers["x-context"] = ctx.replace(/[^\x20-\x7e]/g, "")
      if (ct !== null) headers["content-type"] = ct.replace(/[^\x20-\x7e]/g, "")
      const res = await node.app.inject({ method: method as "GET", url: p + q, headers, ...(method === "GET" || method === "HEAD" ? {} : { payload }) })
      statuses.set(res.statusCode, (statuses.get(res.statusCode) ?? 0) + 1)
      if (res.statusCode >= 500) return false
      if (res.statusCode >= 400 && method !== "HEAD") {
        const b = res.json()
        if (typeof b.error !== "string" || typeof b.message !== "string") return false
      }
      return true
    }),
    { numRuns: 1500 }
  )
  t.comment(`statuses seen: ${JSON.stringify(Object.fromEntries(statuses))}`)
  t.equal((await node.app.inject({ method: "GET", url: "/ping" })).body, "OK", "still serving")
})

t.test("garbage on the socket closes that connection only", async (t) => {
  const port = 17000 + Math.floor(Math.random() * 1000)
  const dir = t.testdir()
  const node = await startNode(testSettings({ port, data: dir }), { logStream: quiet() })
  t.teardown(node.close)
  const junk = [
    "GARBAGE\r\n\r\n",
    "GET /kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    "PUT /kv/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "GET /kv/" + "a".repeat(100_000) + " HTTP/1.1\r\nHost: x\r\n\r\n",
    "PUT /kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",
    "\x00\x01\x02\xff".repeat(1000)
  ]
  for (const j of junk) {
    await new Promise<void>((resolve) => {
      const s = net.connect(port, "127.0.0.1", () => {
        s.write(j)
        setTimeout(() => s.destroy(), 50)
      })
      s.on("error", () => resolve())
      s.on("close", () => resolve())
      s.resume()
    })
  }
  const res = await fetch(`http://127.0.0.1:${port}/ping`)
  t.equal(await res.text(), "OK", "the node still serves")
})

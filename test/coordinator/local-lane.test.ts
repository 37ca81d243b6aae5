/**
 * The plain lane (Coordinator.now) for a cluster of one: a node that is a key's only replica serves its GETs and
 * PUTs with plain functions, no fiber. What the Effect path did must still happen there: the
 * sibling warning is logged (as pino JSON), the sibling limit refuses with its code, contexts
 * replace what they cover, and a delete reads back as 404 with a context.
 */
import { Writable } from "node:stream"
import t from "tap"
import { assembleNode } from "../../src/node/Node.ts"
import { testSettings } from "../api/helpers.ts"

const capture = () => {
  const lines: string[] = []
  const stream = new Writable({ write: (c, _e, cb) => (lines.push(...String(c).split("\n").filter((l) => l !== "")), cb()) })
  return { lines, stream }
}

t.test("a cluster of one: versions, the sibling warning and the sibling limit through the fast lane", async (t) => {
  const log = capture()
  const node = await assembleNode(testSettings({ id: "solo", logLevel: "warn" }), { memory: true, logStream: log.stream })
  t.teardown(() => node.close())
  const put = (key: string, body: string, context?: string) =>
    node.app.inject({ method: "PUT", url: `/kv/${key}`, payload: body, headers: { "content-type": "text/plain", ...(context === undefined ? {} : { "x-context": context }) } })

  const first = await put("a", "v1")
  t.equal(first.statusCode, 204)
  const second = await put("a", "v2", first.headers["x-context"] as string)
  t.equal(second.statusCode, 204)
  const read = await node.app.inject({ method: "GET", url: "/kv/a" })
  t.equal(read.statusCode, 200)
  t.equal(read.body, "v2", "the context replaced what it covered")
  t.equal(read.headers["content-type"], "text/plain")

  const del = await node.app.inject({ method: "DELETE", url: "/kv/a", headers: { "x-context": read.headers["x-context"] as string } })
  t.equal(del.statusCode, 204)
  const gone = await node.app.inject({ method: "GET", url: "/kv/a" })
  t.equal(gone.statusCode, 404)
  t.ok(gone.headers["x-context"], "a deleted key answers with its context")

  // Blind writes make siblings: the 25th is warned about, the 101st refused.
  for (let i = 0; i < 25; i++) t.equal((await put("s", `x${i}`)).statusCode, 204)
  const warned = log.lines.map((l) => JSON.parse(l) as { level: number; msg: string }).filter((l) => /siblings; clients should resolve them/.test(l.msg))
  t.ok(warned.length >= 1, "the sibling warning is logged")
  t.ok(warned.every((l) => l.level === 40), "at warn, as JSON")
  for (let i = 25; i < 100; i++) await put("s", `x${i}`)
  const refused = await put("s", "one too many")
  t.equal(refused.statusCode, 409)
  t.equal(refused.json().error, "too_many_siblings")
  const many = await node.app.inject({ method: "GET", url: "/kv/s" })
  t.equal(many.statusCode, 300)
  t.equal(many.json().siblings.length, 100, "the refused write stored nothing")
})

t.test("bad quorum parameters are refused before the fast lane", async (t) => {
  const node = await assembleNode(testSettings({ id: "solo2" }), { memory: true, logStream: capture().stream })
  t.teardown(() => node.close())
  t.equal((await node.app.inject({ method: "GET", url: "/kv/a?r=9" })).statusCode, 400)
  t.equal((await node.app.inject({ method: "PUT", url: "/kv/a?w=0", payload: "v" })).statusCode, 400)
})

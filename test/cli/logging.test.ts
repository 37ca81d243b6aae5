/**
 * One logging path (src/node/Log.ts), seen from outside on real nodes: stdout holds only the
 * ready line, and every stderr line is one pino JSON document, through a sibling warning, a
 * config reload (logged once), request lines at debug, a burst of quorum failures and of
 * fallback writes (each a line a second at most, with a count), and a clean stop.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import t from "tap"
import { partitionOf, preferenceList, type Ring } from "../../src/ring/Ring.ts"
import { startNode, until, type RealNode } from "./fixtures/nodes.ts"

interface Line {
  readonly level: number
  readonly msg: string
  readonly node: string
  readonly [field: string]: unknown
}

/** Every stderr line parsed; a line that is not JSON fails the test with the line. */
const lines = (node: RealNode): Array<Line> =>
  node.stderr.split("\n").filter((l) => l !== "").map((l) => {
    try {
      return JSON.parse(l) as Line
    } catch {
      throw new Error(`not a JSON line on ${node.id}'s stderr: ${l}`)
    }
  })

const WARN = 40
const DEBUG = 20

/** A key whose two replicas (n = 2) are `a` and `b`, by the ring `node` serves. */
const keyOn = async (node: RealNode, ids: ReadonlyArray<string>, prefix: string) => {
  const view = (await (await fetch(`${node.url}/admin/cluster`)).json()) as { partitions: number; owners: Array<string> }
  const ring: Ring = { partitions: view.partitions, owners: view.owners, version: 0, members: [...new Set(view.owners)].sort() }
  for (let i = 0; ; i++) {
    const key = `${prefix}-${i}`
    const prefs = preferenceList(ring, partitionOf(key, view.partitions), 2)
    if (ids.every((id) => prefs.includes(id))) return key
  }
}

t.test("stdout: the ready line only; stderr: one JSON document per line, each event logged once", async (t) => {
  const dir = t.testdir()
  const config = path.join(dir, "n1.json")
  fs.writeFileSync(config, JSON.stringify({ r: 2 }))
  const n1 = await startNode(t, { id: "n1", data: path.join(dir, "n1"), args: ["--n", "2", "--config", config] })
  const seed = ["--seeds", `127.0.0.1:${n1.port}`, "--n", "2", "--log-level", "info"]
  const [n2, n3] = await Promise.all([
    startNode(t, { id: "n2", data: path.join(dir, "n2"), args: seed }),
    startNode(t, { id: "n3", data: path.join(dir, "n3"), args: seed })
  ])
  const nodes = [n1, n2, n3]
  await until("a ring of 3 members, all up", async () => {
    const views = await Promise.all(nodes.map(async (n) => (await (await fetch(`${n.url}/admin/cluster`)).json()) as { nodes: Array<{ status: string }> }))
    return views.every((v) => v.nodes.length === 3 && v.nodes.every((m) => m.status === "up"))
  }, 60_000)

  // Siblings: writes without a context pile up concurrent versions until the replica warns.
  const hot = await keyOn(n1, ["n1"], "hot")
  for (let i = 0; i < 27; i++) {
    const res = await fetch(`${n1.url}/kv/${hot}`, { method: "PUT", body: `v${i}` })
    t.equal(res.status, 204)
  }
  await until("a sibling warning", () => lines(n1).some((l) => l.level === WARN && /siblings; clients should resolve them/.test(l.msg)))

  // A config reload: one line, not one per layer.
  fs.writeFileSync(config, JSON.stringify({ r: 1, logLevel: "debug" }))
  await until("the reload line", () => lines(n1).some((l) => /applied/.test(l.msg)))
  await fetch(`${n1.url}/ping`)
  await until("a request line at debug", () => lines(n1).some((l) => l.msg === "request" && l.url === "/ping"))
  const request = lines(n1).find((l) => l.msg === "request" && l.url === "/ping")!
  t.match(request, { level: DEBUG, method: "GET", status: 200, node: "n1" }, "request lines are at debug, with method, path and status")
  const reloads = lines(n1).filter((l) => /config|live settings/.test(l.msg))
  t.equal(reloads.length, 1, `the reload is logged once: ${reloads.map((l) => l.msg).join(" | ")}`)
  t.match(reloads[0]!.msg, `config file ${config}: applied`)
  t.match(reloads[0]!.msg, "r=1")
  t.match(reloads[0]!.msg, "logLevel=debug")
  fs.writeFileSync(config, JSON.stringify({ r: 1, logLevel: "info" }))
  await until("the second reload line", () => lines(n1).filter((l) => /applied/.test(l.msg)).length === 2)

  // n3 dies: strict writes of its keys fail their quorum, sloppy ones go to a fallback.
  const strictKey = await keyOn(n1, ["n1", "n3"], "strict")
  const sloppyKey = await keyOn(n1, ["n1", "n3"], "sloppy")
  n3.child.kill("SIGKILL")
  await n3.closed
  const failures = 40
  const started = Date.now()
  for (let i = 0; i < failures; i++) {
    const res = await fetch(`${n1.url}/kv/${strictKey}?w=all&sloppy=false&timeout=500`, { method: "PUT", body: "x" })
    t.equal(res.status, 503, "quorum not met")
  }
  const elapsed = Date.now() - started
  for (let i = 0; i < 20; i++) {
    const res = await fetch(`${n1.url}/kv/${sloppyKey}-${i}`, { method: "PUT", body: "y" })
    t.equal(res.status, 204, "sloppy write acknowledged")
  }
  const quorum = () => lines(n1).filter((l) => l.kind === "quorum failures")
  // A line is one failure, or a summary of the `suppressed` ones of its window.
  const counted = () => quorum().reduce((n, l) => n + (l.suppressed === undefined ? 1 : Number(l.suppressed)), 0)
  await until("every quorum failure counted", () => counted() === failures, 10_000).catch((e: Error) => {
    throw new Error(`${e.message}: ${counted()} counted in ${JSON.stringify(quorum())}`)
  })
  t.ok(quorum().length <= Math.ceil(elapsed / 1000) + 1, `${failures} failures in ${elapsed} ms: ${quorum().length} lines, at most one a second`)
  t.match(quorum()[0]!, { level: WARN, needed: 2, got: 1 })
  t.match(quorum()[0]!.msg, "quorum not met")
  const fallback = () => lines(n1).filter((l) => l.kind === "fallback writes")
  await until("fallback writes counted", () => fallback().reduce((n, l) => n + Number(l.count), 0) >= 20, 10_000)
  t.ok(fallback().length <= 3, `fallback writes: ${fallback().length} lines for 20 writes`)
  t.match(fallback()[0]!, { level: WARN, msg: /fallback node \(sloppy quorum\)/ })

  for (const n of [n1, n2]) n.child.kill("SIGTERM")
  const exits = await Promise.all([n1.closed, n2.closed])
  t.same(exits, [{ code: 0, signal: null }, { code: 0, signal: null }])
  for (const n of nodes) {
    t.equal(n.stdout, `ready ${n.id} ${n.url}\n`, `${n.id}: stdout is the ready line and nothing else`)
    const all = lines(n)
    t.ok(all.length > 0, `${n.id}: ${all.length} JSON lines on stderr`)
    t.ok(all.every((l) => typeof l.level === "number" && typeof l.msg === "string" && l.node === n.id), `${n.id}: every line has level, msg and node`)
  }
  t.ok(lines(n1).some((l) => /SIGTERM: stopping node n1/.test(l.msg)), "the stop is a JSON line too")
})

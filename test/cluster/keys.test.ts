/**
 * Listing keys (GET /kv): the coverage query's core against scripted replicas, the page
 * message's checks, and a whole three-node cluster in one process over the simulated
 * network: paging returns every live key once, in order, tombstones left out, a prefix
 * filters, a partitioned node's partitions come from the other replicas, bad input is a 400.
 */
import { Context, Effect, Exit, Layer, Scope } from "effect"
import fc from "fast-check"
import t from "tap"
import { compareKeys, cover, type CoverageDeps, type ListQuery } from "../../src/keys/KeyListing.ts"
import { isKeyPageReply, isKeyPageRequest, type KeyPageRequest } from "../../src/keys/KeyPage.ts"
import { assembleNode, type AssembledNode } from "../../src/node/Node.ts"
import { MemoryNetwork, Transport } from "../../src/transport/Transport.ts"
import { preferenceList } from "../../src/ring/Ring.ts"
import { encodeCursor } from "../../src/api/Keys.ts"
import { keyLine } from "../../src/cli/KeysCommand.ts"
import { quiet, testSettings } from "../api/helpers.ts"
import { eventually } from "./harness.ts"

const q = (over: Partial<ListQuery> = {}): ListQuery => ({ prefix: "", after: undefined, limit: 10, timeoutMs: 1000, ...over })
const run = <A, E>(e: Effect.Effect<A, E>) => Effect.runPromiseExit(e)
const errorOf = (exit: Exit.Exit<unknown, { code: string; needed?: number }>) => (Exit.isFailure(exit) ? Exit.findErrorOption(exit) : undefined)

/** Replicas that each hold `data[node]` (all partitions' keys mixed) and answer as `behave` says. */
const scripted = (partitions: number, prefs: (p: number) => string[], data: Record<string, string[]>, behave: Record<string, "ok" | "fail" | "garbage" | "refuse" | "slow"> = {}) => {
  const asked: Array<{ node: string; partitions: ReadonlyArray<number> }> = []
  const deps: CoverageDeps = {
    partitions,
    candidates: prefs,
    ask: (node, req: KeyPageRequest) => {
      asked.push({ node, partitions: req.partitions })
      switch (behave[node] ?? "ok") {
        case "fail":
          return Effect.fail(new Error("unreachable"))
        case "garbage":
          return Effect.succeed({ t: "keys-page", keys: ["z", "a"], more: false })
        case "refuse":
          return Effect.succeed({ t: "keys-err", message: "not a replica" })
        case "slow":
          return Effect.never
      }
      // A node's keys of partition p: those whose first char code mod `partitions` is p.
      const keys = (data[node] ?? []).filter((k) => req.partitions.includes(k.charCodeAt(0) % partitions) && k.startsWith(req.prefix) && (req.after === null || compareKeys(k, req.after) > 0)).sort(compareKeys)
      return Effect.succeed({ t: "keys-page", keys: keys.slice(0, req.limit), more: keys.length > req.limit })
    }
  }
  return { deps, asked }
}

t.test("cover: one replica per partition, merged and cut at the limit", async (t) => {
  const all = ["a1", "b1", "c1", "d1", "a2", "b2"]
  const { deps, asked } = scripted(4, (p) => (p % 2 === 0 ? ["x", "y"] : ["y", "x"]), { x: all, y: all })
  const exit = await run(cover(deps, q({ limit: 4 })))
  t.same(Exit.isSuccess(exit) && exit.value, { keys: ["a1", "a2", "b1", "b2"], more: true })
  t.same(asked.map((a) => a.node).sort(), ["x", "y"], "one request per chosen node")
  t.same(asked.flatMap((a) => a.partitions).sort(), [0, 1, 2, 3], "every partition asked once")
  const rest = await run(cover(deps, q({ limit: 4, after: "b2" })))
  t.same(Exit.isSuccess(rest) && rest.value, { keys: ["c1", "d1"], more: false })
})

t.test("cover: a failed, refusing or malformed replica's partitions go to the next replica", async (t) => {
  for (const behave of ["fail", "refuse", "garbage"] as const) {
    // x holds nothing (as if wiped) but is first: its partitions must come from y.
    const { deps, asked } = scripted(2, () => ["x", "y"], { x: [], y: ["a", "b", "c"] }, { x: behave })
    const exit = await run(cover(deps, q()))
    t.same(Exit.isSuccess(exit) && exit.value.keys, ["a", "b", "c"], `x ${behave}: listed from y`)
    t.same(asked.map((a) => a.node), ["x", "y"])
  }
})

t.test("cover: no replica of a partition answers: 503 quorum_not_met, not a partial page", async (t) => {
  const { deps } = scripted(2, (p) => (p === 0 ? ["x"] : ["y"]), { x: ["b"], y: ["a"] }, { x: "fail" })
  const e = errorOf(await run(cover(deps, q())))
  t.equal(e?._tag === "Some" && e.value.code, "quorum_not_met")
  t.equal(e?._tag === "Some" && e.value.needed, 1)
  const none = scripted(1, () => [], {})
  const e2 = errorOf(await run(cover(none.deps, q())))
  t.match(e2?._tag === "Some" && e2.value, { code: "quorum_not_met", message: /all are down/ })
})

t.test("cover: a replica that does not answer in time: 504 timeout", async (t) => {
  const { deps } = scripted(1, () => ["x", "y"], { y: ["a"] }, { x: "slow" })
  const started = Date.now()
  const e = errorOf(await run(cover({ ...deps, ask: (n, r, ms) => deps.ask(n, r, ms).pipe(Effect.timeout(ms)) }, q({ timeoutMs: 200 }))))
  t.equal(e?._tag === "Some" && e.value.code, "timeout")
  t.ok(Date.now() - started < 2000)
})

t.test("page messages are checked both ways", async (t) => {
  const ok: KeyPageRequest = { t: "keys-page", partitions: [0, 3], prefix: "p", after: null, limit: 5 }
  t.ok(isKeyPageRequest(ok))
  for (const bad of [
    { ...ok, partitions: [] }, { ...ok, partitions: [1, 1] }, { ...ok, partitions: [-1] }, { ...ok, partitions: [0.5] }, { ...ok, partitions: "0" },
    { ...ok, limit: 0 }, { ...ok, limit: 10_001 }, { ...ok, prefix: 3 }, { ...ok, after: "x".repeat(2000) }, { ...ok, after: undefined }, null, "keys-page"
  ]) t.notOk(isKeyPageRequest(bad), `refused: ${JSON.stringify(bad)?.slice(0, 60)}`)
  const req: KeyPageRequest = { ...ok, after: "p1" }
  t.ok(isKeyPageReply({ t: "keys-page", keys: ["p2", "p3"], more: false }, req))
  for (const bad of [
    { t: "keys-page", keys: ["p3", "p2"], more: false }, // unsorted
    { t: "keys-page", keys: ["p2", "p2"], more: false }, // repeated
    { t: "keys-page", keys: ["p0"], more: false }, // not after the cursor
    { t: "keys-page", keys: ["q2"], more: false }, // another prefix
    { t: "keys-page", keys: ["p2", "p3", "p4", "p5", "p6", "p7"], more: true }, // over the limit
    { t: "keys-page", keys: [2], more: false }, { t: "keys-page", keys: [], more: "no" }, { t: "keys-err", message: "x" }
  ]) t.notOk(isKeyPageReply(bad, req), `not merged: ${JSON.stringify(bad)}`)
})

t.test("keys are ordered by UTF-8 bytes", async (t) => {
  fc.assert(fc.property(fc.string({ unit: "grapheme" }), fc.string({ unit: "grapheme" }), (a, b) => Math.sign(compareKeys(a, b)) === Math.sign(Buffer.compare(Buffer.from(a), Buffer.from(b)))), { numRuns: 2000 })
  t.ok(compareKeys("\u{1F600}", "\uFFFD") > 0, "an astral character sorts after U+FFFD, as in UTF-8")
})

t.test("tally keys prints one key a line; a key that could break the lines is JSON-quoted", async (t) => {
  t.equal(keyLine("user/42"), "user/42")
  t.equal(keyLine("é 😀 with spaces"), "é 😀 with spaces")
  t.equal(keyLine("two\nlines"), '"two\\nlines"')
  t.equal(keyLine("tab\there"), '"tab\\there"')
  t.equal(keyLine('"quoted"'), '"\\"quoted\\""', "a key that starts with a quote is quoted, so no line is ambiguous")
})

t.test("three nodes (N=2) in one process: paging, prefix, tombstones, a node cut off, bad input", async (t) => {
  const network = new MemoryNetwork()
  const nodes: AssembledNode[] = []
  t.teardown(() => Promise.all(nodes.map((n) => n.close())))
  for (const id of ["k1", "k2", "k3"]) {
    nodes.push(await assembleNode(testSettings({ id, data: `/data/${id}`, partitions: 16, n: 2, r: 2, w: 2, logLevel: "silent" }), { memory: true, network, logStream: quiet(), ...(id === "k1" ? {} : { seedIds: ["k1"] }) }))
  }
  const [a, b, c] = nodes as [AssembledNode, AssembledNode, AssembledNode]
  type View = { nodes: Array<{ id: string; status: string }>; owners: string[] }
  const view = async (n: AssembledNode) => (await n.app.inject({ method: "GET", url: "/admin/cluster" })).json() as View
  await eventually("a ring of three, all up, seen by all", async () => {
    const vs = await Promise.all(nodes.map(view))
    return vs.every((v) => v.nodes.length === 3 && v.nodes.every((m) => m.status === "up") && new Set(v.owners).size === 3 && v.owners.join() === vs[0]!.owners.join()) ? true : undefined
  })
  const keys = [...Array.from({ length: 150 }, (_, i) => `key/${String(i).padStart(3, "0")}`), ...Array.from({ length: 20 }, (_, i) => `user/${i}`), "é", "\u{1F600}", "a b"]
  for (const k of keys) t.equal((await a.app.inject({ method: "PUT", url: `/kv/${encodeURIComponent(k)}?w=2`, payload: "v" })).statusCode, 204)
  const deleted = ["key/007", "key/100", "user/3"]
  for (const k of deleted) {
    const context = (await b.app.inject({ method: "GET", url: `/kv/${encodeURIComponent(k)}?r=2` })).headers["x-context"] as string
    t.equal((await b.app.inject({ method: "DELETE", url: `/kv/${encodeURIComponent(k)}?w=2`, headers: { "x-context": context } })).statusCode, 204)
  }
  const live = keys.filter((k) => !deleted.includes(k)).sort(compareKeys)

  const listAll = async (n: AssembledNode, query: string, limit: number) => {
    const out: string[] = []
    let cursor: string | null = null
    let pages = 0
    do {
      const res = await n.app.inject({ method: "GET", url: `/kv?limit=${limit}${query}${cursor === null ? "" : `&cursor=${cursor}`}` })
      t.equal(res.statusCode, 200, res.body.slice(0, 200))
      const page = res.json() as { keys: string[]; cursor: string | null }
      t.ok(page.keys.length <= limit)
      out.push(...page.keys)
      cursor = page.cursor
      pages++
    } while (cursor !== null && pages < 100)
    return { out, pages }
  }
  const { out, pages } = await listAll(a, "", 17)
  t.same(out, live, "every live key exactly once, in UTF-8 byte order, tombstones left out")
  t.equal(pages, Math.ceil(live.length / 17))
  // Pages may be asked of any node: the cursor carries the position, not the node.
  const mixed: string[] = []
  let cursor: string | null = null
  for (let i = 0; i < 40; i++) {
    const res = await nodes[i % 3]!.app.inject({ method: "GET", url: `/kv?limit=25${cursor === null ? "" : `&cursor=${cursor}`}` })
    const page = res.json() as { keys: string[]; cursor: string | null }
    mixed.push(...page.keys)
    cursor = page.cursor
    if (cursor === null) break
  }
  t.same(mixed, live, "paging across nodes")
  t.same((await listAll(c, "&prefix=user%2F", 1000)).out, live.filter((k) => k.startsWith("user/")), "a prefix filters")
  t.same((await a.app.inject({ method: "GET", url: "/kv?prefix=nothing" })).json(), { keys: [], cursor: null })

  // Bad input: a 400 that says why.
  const bad = async (url: string, why: RegExp) => {
    const res = await a.app.inject({ method: "GET", url })
    t.equal(res.statusCode, 400, url.slice(0, 60))
    t.match(res.json(), { error: "bad_request", message: why }, url.slice(0, 60))
  }
  await bad("/kv?limit=0", /limit/)
  await bad("/kv?limit=10001", /over 10000/)
  await bad("/kv?cursor=!!", /cursor/)
  await bad("/kv?cursor=bm90IGEgY3Vyc29y", /cursor is malformed/)
  await bad(`/kv?prefix=user%2F&cursor=${encodeCursor({ prefix: "key/", after: "key/001" })}`, /prefix "key\/"/)
  await bad("/kv?r=2", /query parameters are prefix, limit/)
  await bad("/kv?prefix=a&prefix=b", /prefix/)
  await bad(`/kv?prefix=${"x".repeat(1025)}`, /prefix/)

  // A node that asks for partitions another node is not a replica of is refused, and a
  // malformed page request is not answered as one.
  const spy = await Effect.runPromise(Effect.gen(function*() {
    const scope = yield* Scope.make()
    const api = Context.get(yield* Layer.buildWithScope(Transport.layerMemory(network, { nodeId: "spy", cluster: { n: 2, partitions: 16 } }), scope), Transport)
    return { api, scope }
  }))
  t.teardown(() => Effect.runPromise(Scope.close(spy.scope, Exit.void)))
  const owners = (await view(a)).owners
  const ring = { partitions: 16, owners, version: 0, members: [...new Set(owners)].sort() }
  const foreign = owners.findIndex((_, p) => !preferenceList(ring, p, 2).includes("k1"))
  if (t.ok(foreign >= 0, "with N=2 of 3 nodes, k1 is not a replica of every partition")) {
    const r = await Effect.runPromise(spy.api.request({ id: "k1", host: "memory", port: 0 }, { t: "keys-page", partitions: [foreign], prefix: "", after: null, limit: 10 }, 2000))
    t.match(r, { t: "keys-err", message: /not a current replica/ }, "refuses a partition it is not a replica of")
  }
  const outOfRange = await Effect.runPromise(spy.api.request({ id: "k1", host: "memory", port: 0 }, { t: "keys-page", partitions: [100], prefix: "", after: null, limit: 10 }, 2000))
  t.match(outOfRange, { t: "keys-err" }, "refuses a partition the ring does not have")
  const malformed = await Effect.runPromiseExit(spy.api.request({ id: "k1", host: "memory", port: 0 }, { t: "keys-page", partitions: [0], prefix: "", limit: 1e9 }, 2000))
  t.ok(Exit.isFailure(malformed), "a malformed page request is an error, not a page")

  // k3 cut off: once it is seen down, its partitions come from their other replica.
  network.partition("k3", ["k1", "k2"])
  await eventually("k3 seen down by k1", async () => ((await view(a)).nodes.find((m) => m.id === "k3")?.status === "down" ? true : undefined), 30_000)
  t.same((await listAll(a, "", 50)).out, live, "all keys listed without k3")
})

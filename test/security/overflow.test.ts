/**
 * Counters and contexts cannot overflow (issue 11): a client context or a peer's object near
 * 2^53 never makes encoding throw (no 500), and a context counter of 2^48 (the old decoding
 * bound) no longer wedges a key. Bounds: Dvv.MAX_COUNTER for stored sets and contexts alike,
 * Dvv.MAX_CONTEXT_LEAD for how far one write's context may raise a counter.
 */
import { Effect, ManagedRuntime } from "effect"
import t, { type Test } from "tap"
import { assembleNode } from "../../src/node/Node.ts"
import { MemoryNetwork, Transport } from "../../src/transport/Transport.ts"
import * as Dvv from "../../src/versions/Dvv.ts"
import { encodeObject } from "../../src/versions/Sibling.ts"
import { quiet, testNode, testSettings } from "../api/helpers.ts"

type App = Awaited<ReturnType<typeof testNode>>["app"]
const put = (app: App, key: string, context?: string) =>
  app.inject({ method: "PUT", url: `/kv/${key}`, payload: "v", headers: { "content-type": "text/plain", ...(context === undefined ? {} : { "x-context": context }) } })
const contextOf = async (app: App, key: string) => {
  const c = (await app.inject({ method: "GET", url: `/kv/${key}` })).headers["x-context"]
  return c === undefined ? undefined : String(c)
}

/** Writes `rounds` times, each with the context the last answer gave: none may be refused. */
const keepsWriting = async (t: Test, app: App, key: string, rounds: number) => {
  for (let i = 0; i < rounds; i++) {
    const w = await put(app, key, await contextOf(app, key))
    t.equal(w.statusCode, 204, `write ${i + 1} with the context just read`)
    const back = Dvv.decodeContext(String(w.headers["x-context"]))
    t.ok(back !== undefined, "the context the node hands out decodes again")
  }
}

t.test("a client context counter of 2^48 for the node's own actor does not wedge the key", async (t) => {
  const node = await testNode()
  t.teardown(() => node.close())
  t.equal((await put(node.app, "k")).statusCode, 204)
  const ctx = Dvv.decodeContext((await contextOf(node.app, "k"))!)!
  const [actor, start] = [...ctx.vector][0]!
  const hostile = Dvv.encodeContext(new Map([[actor, 2 ** 48]]))
  t.equal((await put(node.app, "k", hostile)).statusCode, 204, "the hostile context is taken (it decodes)")
  await keepsWriting(t, node.app, "k", 3)
  const after = Dvv.decodeContext((await contextOf(node.app, "k"))!)!
  t.ok(after.vector.get(actor)! <= start + Dvv.MAX_CONTEXT_LEAD + 4, `the counter was raised by at most MAX_CONTEXT_LEAD (${after.vector.get(actor)})`)
})

t.test("a context at MAX_COUNTER for any id neither throws nor wedges; one past it is a 400", async (t) => {
  const node = await testNode()
  t.teardown(() => node.close())
  t.equal((await put(node.app, "k")).statusCode, 204)
  const own = [...Dvv.decodeContext((await contextOf(node.app, "k"))!)!.vector.keys()][0]!
  for (const id of [own, "other@x", "zz"]) {
    const w = await put(node.app, "k", Dvv.encodeContext(new Map([[id, Dvv.MAX_COUNTER]])))
    t.equal(w.statusCode, 204, `${id} at MAX_COUNTER: taken, not a 500`)
  }
  await keepsWriting(t, node.app, "k", 2)
  const past = await put(node.app, "k", Dvv.encodeContext(new Map([["zz", Dvv.MAX_COUNTER + 1]])))
  t.equal(past.statusCode, 400, "a context past MAX_COUNTER is refused")
  t.equal(past.json().error, "bad_request")
  const unsafe = await put(node.app, "k", Dvv.encodeContext(new Map([["zz", Number.MAX_SAFE_INTEGER]])))
  t.equal(unsafe.statusCode, 400, "so is 2^53 - 1")
})

t.test("a write that would take a counter past MAX_COUNTER is refused with 400, never a 500", async (t) => {
  // Only reachable by a set already at the bound: build one directly.
  const at = { entries: [{ id: "a", counter: Dvv.MAX_COUNTER, time: Dvv.MAX_COUNTER, versions: [] }], floor: 0 }
  const next = Dvv.update(at, new Map(), "a", "v")
  t.ok(Dvv.exhausted(next), "one past the bound is exhausted")
  t.notOk(Dvv.exhausted(at))
  t.equal(next.entries[0]!.time, Dvv.MAX_COUNTER, "logical time stops at the bound instead")
  t.notOk(Dvv.exhausted(Dvv.update({ entries: [], floor: Dvv.MAX_COUNTER - 1 }, new Map(), "a", "v")))
  t.ok(Dvv.exhausted(Dvv.update({ entries: [], floor: Dvv.MAX_COUNTER }, new Map(), "a", "v")))
})

t.test("a peer's object near 2^53 is refused, and the key stays writable", async (t) => {
  const network = new MemoryNetwork()
  const node = await assembleNode(testSettings({ id: "o1", data: "/data/o1" }), { memory: true, network, logStream: quiet() })
  t.teardown(() => node.close())
  const evil = ManagedRuntime.make(Transport.layerMemory(network, { nodeId: "evil", cluster: { n: 3, partitions: 64 } }))
  t.teardown(() => evil.dispose())
  const sibling = { value: Buffer.from("x"), contentType: "text/plain", lastModified: 1, deleted: false }
  const send = (key: string, o: Parameters<typeof encodeObject>[0]) =>
    evil.runPromise(Effect.gen(function*() {
      return yield* Effect.exit((yield* Transport).request({ id: "o1", host: "memory", port: 0 }, { t: "put", key, object: encodeObject(o) }, 1000))
    }))
  for (const [what, o] of [
    ["counter 2^53 - 1", { entries: [{ id: "evil", counter: Number.MAX_SAFE_INTEGER, time: 1, versions: [{ counter: Number.MAX_SAFE_INTEGER, value: sibling }] }], floor: 0 }],
    ["time 2^53 - 1", { entries: [{ id: "evil", counter: 1, time: Number.MAX_SAFE_INTEGER, versions: [{ counter: 1, value: sibling }] }], floor: 0 }],
    ["floor 2^53 - 1", { entries: [{ id: "evil", counter: 1, time: 1, versions: [{ counter: 1, value: sibling }] }], floor: Number.MAX_SAFE_INTEGER }]
  ] as const) {
    const key = `p-${what.replaceAll(" ", "")}`
    await send(key, o)
    t.equal((await node.app.inject({ method: "GET", url: `/kv/${key}` })).statusCode, 404, `${what}: not stored`)
    await keepsWriting(t, node.app, key, 2)
  }
  // At the bound exactly it is stored, and a local write still works: time stops, the node's own counter is its own.
  await send("at-bound", { entries: [{ id: "evil", counter: Dvv.MAX_COUNTER, time: Dvv.MAX_COUNTER, versions: [{ counter: Dvv.MAX_COUNTER, value: sibling }] }], floor: 0 })
  t.equal((await node.app.inject({ method: "GET", url: "/kv/at-bound" })).statusCode, 200, "an object at MAX_COUNTER is taken")
  await keepsWriting(t, node.app, "at-bound", 2)
})

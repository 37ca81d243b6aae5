import { Context, Effect, Exit, Fiber, Layer, Logger, Scope } from "effect"
import t from "tap"
import { VirtualLoop } from "../../sim/VirtualTime.ts"
import { MemoryNetwork, Transport, type MemoryTransportConfig, type TransportError } from "../../src/transport/Transport.ts"
import { CLUSTER, testHandler } from "./helpers.ts"

/**
 * Runs `body` on the simulator's virtual time (the transport's timers are plain timers, which
 * Effect's TestClock does not see): nothing timed happens until it waits with `adjust`.
 */
const simulated = <A>(body: Effect.Effect<A, unknown, Scope.Scope>): Promise<A> =>
  new VirtualLoop(1).run(() => Effect.runPromise(body.pipe(Effect.scoped, Effect.provide(Logger.layer([])))))
/** Lets `ms` of virtual time pass: every timer due by then runs first (it was set earlier). */
const adjust = (ms: number) => Effect.sleep(ms)

/** A node on `network` for the current scope, and a scope of its own to stop it early. */
const node = Effect.fnUntraced(function*(network: MemoryNetwork, nodeId: string, config: Partial<MemoryTransportConfig> = {}) {
  const outer = yield* Scope.Scope
  const scope = yield* Scope.fork(outer)
  const api = Context.get(yield* Layer.buildWithScope(Transport.layerMemory(network, { nodeId, cluster: CLUSTER, ...config }), scope), Transport)
  const seen: Array<{ from: string; payload: unknown }> = []
  yield* api.serve(testHandler(seen)).pipe(Scope.provide(scope))
  return { api, seen, stop: Scope.close(scope, Exit.void) }
})

/** Forks `effect` and reports whether it finished: undefined while running, else its exit. */
const start = <A>(effect: Effect.Effect<A, TransportError>) =>
  Effect.map(Effect.forkChild(effect), (fiber) => ({ fiber, poll: Effect.sync(() => fiber.pollUnsafe()) }))

const reasonOf = (exit: Exit.Exit<unknown, TransportError> | undefined): string => {
  if (exit === undefined) return "running"
  if (Exit.isSuccess(exit)) return "ok"
  const e = Exit.findErrorOption(exit)
  return e._tag === "Some" ? e.value.reason : "defect"
}

const settle = Effect.yieldNow.pipe(Effect.repeat({ times: 20 }))

t.test("request and response, errors as remote, one-way messages, payloads copied as on the wire", async (t) => {
  await simulated(Effect.gen(function*() {
    const net = new MemoryNetwork()
    const a = yield* node(net, "a")
    const b = yield* node(net, "b")
    t.same(net.members(), ["a", "b"])
    const bytes = new Uint8Array([1, 2, 3])
    const sent = { echo: { bytes, u: undefined } }
    const r = (yield* a.api.request(b.api.self, sent, 1000)) as { from: string; echo: { bytes: Uint8Array; u: unknown } }
    t.equal(r.from, "a")
    t.ok(r.echo.bytes instanceof Uint8Array && r.echo.bytes !== bytes, "a copy, not the sender's array")
    t.same([...r.echo.bytes], [1, 2, 3])
    t.equal(r.echo.u, null, "undefined travels as nil, as over TCP")
    t.equal(b.seen[0]!.from, "a")

    const e = yield* Effect.flip(a.api.request(b.api.self, { fail: "disk_full" }, 1000))
    t.match(e, { reason: "remote", remoteCode: "disk_full", peer: "b" })
    t.match(yield* Effect.flip(a.api.request(b.api.self, { die: true }, 1000)), { reason: "remote", remoteCode: "defect" })

    yield* a.api.send(b.api.self, { echo: "one-way" })
    yield* settle
    t.ok(b.seen.some((s) => (s.payload as { echo?: string }).echo === "one-way"))
  }))
})

t.test("latency delays each direction; a request times out after exactly its timeout", async (t) => {
  await simulated(Effect.gen(function*() {
    const net = new MemoryNetwork({ defaults: { latencyMs: 10 } })
    const a = yield* node(net, "a")
    const b = yield* node(net, "b")
    const r = yield* start(a.api.request(b.api.self, { echo: 1 }, 1000))
    yield* adjust(19)
    t.equal(reasonOf(yield* r.poll), "running", "not back before two latencies")
    yield* adjust(1)
    yield* settle
    t.match(yield* Fiber.join(r.fiber), { echo: 1 }, "back after 10 + 10 ms")

    const slow = yield* start(a.api.request(b.api.self, { sleep: 500 }, 150))
    yield* adjust(149)
    t.equal(reasonOf(yield* slow.poll), "running")
    yield* adjust(1)
    yield* settle
    const e = yield* Effect.flip(Fiber.join(slow.fiber))
    t.match(e, { reason: "timeout", peer: "b" })
    t.match(e.message, /did not answer within 150 ms/)
    yield* adjust(1000)
    t.equal(a.api.stats().pending, 0, "the late answer found nothing waiting")

    net.setLink("a", "b", { latencyMs: 100 })
    const far = yield* start(a.api.request(b.api.self, { echo: 2 }, 1000))
    yield* adjust(199)
    t.equal(reasonOf(yield* far.poll), "running", "per-link latency")
    yield* adjust(1)
    yield* settle
    t.equal(reasonOf(yield* far.poll), "ok")
  }))
})

t.test("partition and heal: silence and timeouts across the cut, other links unaffected", async (t) => {
  await simulated(Effect.gen(function*() {
    const net = new MemoryNetwork({ defaults: { latencyMs: 5 } })
    const a = yield* node(net, "a")
    const b = yield* node(net, "b")
    const c = yield* node(net, "c")
    net.partition("a", ["b"])
    t.ok(net.isPartitioned("a", "b") && net.isPartitioned("b", "a"))
    const ab = yield* start(a.api.request(b.api.self, { echo: 1 }, 100))
    const ba = yield* start(b.api.request(a.api.self, { echo: 2 }, 100))
    const ac = yield* start(a.api.request(c.api.self, { echo: 3 }, 100))
    yield* adjust(10)
    yield* settle
    t.equal(reasonOf(yield* ac.poll), "ok", "a↔c still talk")
    t.equal(reasonOf(yield* ab.poll), "running", "a→b is silent, not failed")
    yield* adjust(90)
    yield* settle
    t.equal(reasonOf(yield* ab.poll), "timeout")
    t.equal(reasonOf(yield* ba.poll), "timeout")
    t.equal(b.seen.length, 0, "nothing crossed the cut")

    net.heal()
    t.match(yield* start(a.api.request(b.api.self, { echo: 4 }, 100)).pipe(Effect.tap(() => adjust(10)), Effect.flatMap((r) => Fiber.join(r.fiber))), { echo: 4 })

    // A message already on the wire is lost when the link is cut before it arrives.
    const inFlight = yield* start(a.api.request(b.api.self, { echo: 5 }, 100))
    yield* adjust(2)
    net.partition("a", "b")
    yield* adjust(100)
    yield* settle
    t.equal(reasonOf(yield* inFlight.poll), "timeout")
    t.notOk(b.seen.some((s) => (s.payload as { echo?: number }).echo === 5))
  }))
})

t.test("loss is seeded: the same seed loses the same messages", async (t) => {
  const outcomes = (seed: number) =>
    simulated(Effect.gen(function*() {
      const net = new MemoryNetwork({ defaults: { latencyMs: 1, loss: 0.3 }, seed })
      const a = yield* node(net, "a")
      const b = yield* node(net, "b")
      const runs = yield* Effect.forEach(Array.from({ length: 40 }, (_, i) => i), (i) => start(a.api.request(b.api.self, { echo: i }, 50)))
      yield* adjust(50)
      yield* settle
      return yield* Effect.forEach(runs, (r) => Effect.map(r.poll, reasonOf))
    }))
  const first = await outcomes(7)
  t.same(await outcomes(7), first, "deterministic")
  const lost = first.filter((x) => x === "timeout").length
  t.ok(lost > 0 && lost < 40, `${lost} of 40 lost at 30% per message each way`)
  t.ok(first.every((x) => x === "ok" || x === "timeout"))
  t.notSame(await outcomes(8), first, "another seed, other losses")
})

t.test("setDropped: requests to a dropped node time out, traffic from it is ignored, un-dropping restores it", async (t) => {
  await simulated(Effect.gen(function*() {
    const net = new MemoryNetwork()
    const a = yield* node(net, "a")
    const b = yield* node(net, "b")
    a.api.setDropped(["b"])
    t.same(a.api.getDropped(), ["b"])
    const ab = yield* start(a.api.request(b.api.self, { echo: 1 }, 200))
    const ba = yield* start(b.api.request(a.api.self, { echo: 2 }, 200))
    yield* a.api.send(b.api.self, { echo: 3 })
    yield* adjust(199)
    yield* settle
    t.equal(reasonOf(yield* ab.poll), "running", "no earlier than the timeout")
    yield* adjust(1)
    yield* settle
    t.equal(reasonOf(yield* ab.poll), "timeout")
    t.equal(reasonOf(yield* ba.poll), "timeout")
    t.equal(b.seen.length, 0)
    t.equal(a.seen.length, 0)
    a.api.setDropped([])
    t.match(yield* b.api.request(a.api.self, { echo: 4 }, 200), { echo: 4 })
  }))
})

t.test("a node that leaves fails requests in flight at once; one not on the network is unreachable; a restart works", async (t) => {
  await simulated(Effect.gen(function*() {
    const net = new MemoryNetwork({ defaults: { latencyMs: 5 } })
    const a = yield* node(net, "a")
    const b = yield* node(net, "b")
    const r = yield* start(a.api.request(b.api.self, { sleep: 1000 }, 5000))
    yield* adjust(10)
    yield* b.stop
    yield* settle
    t.equal(reasonOf(yield* r.poll), "unreachable", "failed when b left, long before its timeout")
    t.same(net.members(), ["a"])
    const e = yield* Effect.flip(a.api.request(b.api.self, 1, 100))
    t.match(e, { reason: "unreachable" })
    t.match(e.message, /not on the network/)
    t.match(yield* Effect.flip(a.api.send({ id: "nobody", host: "", port: 0 }, 1)), { reason: "unreachable" })
    yield* node(net, "b")
    t.match(yield* start(a.api.request(b.api.self, { echo: "back" }, 100)).pipe(Effect.tap(() => adjust(10)), Effect.flatMap((x) => Fiber.join(x.fiber))), { echo: "back" })
    yield* a.stop
    t.match(yield* Effect.flip(a.api.request(b.api.self, 1, 100)), { reason: "closed" })
  }))
})

t.test("different cluster settings are refused, oversized messages are too_large", async (t) => {
  await simulated(Effect.gen(function*() {
    const net = new MemoryNetwork()
    const a = yield* node(net, "a", { maxFrameBytes: 1024 })
    const b = yield* node(net, "b")
    const c = yield* node(net, "c", { cluster: { n: 5, partitions: 64 } })
    const e = yield* Effect.flip(c.api.request(b.api.self, 1, 100))
    t.match(e, { reason: "refused", peer: "b" })
    t.match(e.message, /cluster setting n differs: node b has n=3, node c has n=5/)
    t.match(yield* Effect.flip(a.api.request(b.api.self, new Uint8Array(2000), 100)), { reason: "too_large" })
    t.match(yield* Effect.flip(b.api.request(a.api.self, { echo: new Uint8Array(2000) }, 100)), { reason: "remote", remoteCode: "too_large" }, "an answer over the receiver's limit")
  }))
})

t.test("1000 concurrent requests, and a bound on requests in flight per peer", async (t) => {
  await simulated(Effect.gen(function*() {
    const net = new MemoryNetwork({ defaults: { latencyMs: 1, jitterMs: 5 } })
    const a = yield* node(net, "a", { maxInFlight: 4 })
    const b = yield* node(net, "b")
    const c = yield* node(net, "c")
    const all = yield* start(Effect.forEach(Array.from({ length: 1000 }, (_, i) => i), (i) => b.api.request(c.api.self, { echo: i }, 1000), { concurrency: "unbounded" }))
    yield* adjust(20)
    yield* settle
    t.same(((yield* Fiber.join(all.fiber)) as Array<{ echo: number }>).map((x) => x.echo), Array.from({ length: 1000 }, (_, i) => i))

    const ten = yield* start(Effect.forEach(Array.from({ length: 10 }, (_, i) => i), (i) => a.api.request(b.api.self, { echo: i, sleep: 100 }, 1000), { concurrency: "unbounded" }))
    yield* adjust(50)
    yield* settle
    t.equal(b.seen.length, 4, "only maxInFlight requests reach b at once")
    yield* adjust(1000)
    yield* settle
    t.equal(((yield* Fiber.join(ten.fiber)) as unknown[]).length, 10)
  }))
})

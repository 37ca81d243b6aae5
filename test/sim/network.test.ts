/**
 * The simulated network's faults for the simulator: one-way cuts, duplicates, a paused node
 * (its traffic waits, in order, until it resumes), a node pulled off at once (a crash), and
 * the delivery hook; run on the virtual event loop like a simulation.
 */
import { Effect, Exit, ManagedRuntime } from "effect"
import t from "tap"
import { MemoryNetwork, Transport } from "../../src/transport/Transport.ts"
import { EPOCH_MS, VirtualLoop } from "../../sim/VirtualTime.ts"
import { CLUSTER, testHandler } from "../transport/helpers.ts"

type Node = { readonly rt: ManagedRuntime.ManagedRuntime<Transport, never>; readonly seen: Array<{ from: string; payload: unknown }> }

const node = async (network: MemoryNetwork, nodeId: string): Promise<Node> => {
  const rt = ManagedRuntime.make(Transport.layerMemory(network, { nodeId, cluster: CLUSTER }))
  const seen: Array<{ from: string; payload: unknown }> = []
  rt.runFork(Effect.scoped(Effect.gen(function*() {
    yield* (yield* Transport).serve(testHandler(seen))
    return yield* Effect.never
  })))
  await rt.runPromise(Effect.sleep(1))
  return { rt, seen }
}
const peer = (id: string) => ({ id, host: "memory", port: 0 })
const request = (from: Node, to: string, payload: unknown, ms: number) =>
  from.rt.runPromiseExit(Effect.gen(function*() {
    return yield* (yield* Transport).request(peer(to), payload, ms)
  }))
const send = (from: Node, to: string, payload: unknown) => from.rt.runPromise(Effect.gen(function*() {
  yield* (yield* Transport).send(peer(to), payload)
}))
const reason = (e: Exit.Exit<unknown, unknown>) => (Exit.isSuccess(e) ? "ok" : String((Exit.findErrorOption(e) as { value?: { reason?: string } }).value?.reason))
const wait = (ms: number) => new Promise((r) => setTimeout(r, ms))
const sim = <A>(f: () => Promise<A>) => new VirtualLoop(1).run(f)

t.test("a one-way cut silences one direction only", async (t) => {
  await sim(async () => {
    const net = new MemoryNetwork()
    const a = await node(net, "a")
    const b = await node(net, "b")
    net.cutOneWay("a", "b")
    t.equal(reason(await request(a, "b", { echo: 1 }, 500)), "timeout", "a's request never reaches b")
    await send(b, "a", { echo: "b to a" })
    await wait(5)
    t.ok(a.seen.some((s) => (s.payload as { echo?: string }).echo === "b to a"), "b's message reaches a")
    t.equal(reason(await request(b, "a", { echo: 2 }, 500)), "timeout", "a's reply to b is cut")
    net.heal()
    t.equal(reason(await request(a, "b", { echo: 3 }, 500)), "ok")
    await Promise.all([a.rt.dispose(), b.rt.dispose()])
  })
})

t.test("a duplicating link delivers a message twice; the hook sees every delivery", async (t) => {
  await sim(async () => {
    const net = new MemoryNetwork({ seed: 3 })
    const delivered: string[] = []
    net.onDeliver = (from, to, kind) => delivered.push(`${from}>${to}:${kind}`)
    const a = await node(net, "a")
    const b = await node(net, "b")
    net.setLink("a", "b", { duplicate: 1 })
    await send(a, "b", { t: "hello", echo: "x" })
    await wait(5)
    t.equal(b.seen.filter((s) => (s.payload as { echo?: string }).echo === "x").length, 2)
    t.same(delivered, ["a>b:hello", "a>b:hello"])
    net.setLink("a", "b", {})
    await send(a, "b", { t: "once", echo: "y" })
    await wait(5)
    t.equal(b.seen.filter((s) => (s.payload as { echo?: string }).echo === "y").length, 1)
    await Promise.all([a.rt.dispose(), b.rt.dispose()])
  })
})

t.test("a paused node's traffic waits until it resumes, in order", async (t) => {
  await sim(async () => {
    const net = new MemoryNetwork()
    const a = await node(net, "a")
    const b = await node(net, "b")
    net.pause("b")
    t.ok(net.isPaused("b"))
    const started = Date.now()
    const pending = request(a, "b", { echo: "late" }, 5000)
    await send(a, "b", { echo: 1 })
    await send(a, "b", { echo: 2 })
    await wait(1000)
    t.same(b.seen, [], "nothing reached b while paused")
    net.resume("b")
    const r = await pending
    t.equal(reason(r), "ok", "answered once resumed")
    t.equal(Date.now() - started, 1000)
    t.same(b.seen.map((s) => (s.payload as { echo: unknown }).echo), ["late", 1, 2], "in the order sent")
    t.equal(Date.now() - EPOCH_MS > 0, true)
    await Promise.all([a.rt.dispose(), b.rt.dispose()])
  })
})

t.test("a node pulled off the network fails requests to it at once and sends nothing more", async (t) => {
  await sim(async () => {
    const net = new MemoryNetwork()
    const a = await node(net, "a")
    const b = await node(net, "b")
    const inFlight = request(a, "b", { echo: "slow", sleep: 1000 }, 5000)
    await wait(10)
    net.disconnect("b")
    t.equal(reason(await inFlight), "unreachable")
    t.same(net.members(), ["a"])
    const before = a.seen.length
    await send(b, "a", { echo: "from the dead" }).catch(() => undefined)
    await wait(10)
    t.equal(a.seen.length, before, "b's transport, still open, sends nothing")
    await Promise.all([a.rt.dispose(), b.rt.dispose()])
  })
})

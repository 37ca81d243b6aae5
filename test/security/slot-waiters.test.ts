/**
 * Issue 11, bounds: messages waiting for one of a peer's in-flight slots are bounded
 * (`maxSlotWaiters`). Past it a request fails at once with `timeout` and is counted in
 * tally_limit_hits_total{limit="internode_slot_waiters"}; the waiters already queued still
 * get their turn, and once the queue drains requests are taken again.
 */
import { Effect } from "effect"
import t from "tap"
import { failure, run, sleep, startTcp, timed } from "../transport/helpers.ts"

t.test("requests waiting for a slot are bounded: past maxSlotWaiters one fails at once with timeout, counted", async (t) => {
  const a = await startTcp(t, { nodeId: "a", maxInFlight: 2, maxSlotWaiters: 3 })
  const b = await startTcp(t, { nodeId: "b" })
  let release!: () => void
  const gate = new Promise<void>((r) => (release = r))
  await b.serve((_from, p) => Effect.promise(() => gate).pipe(Effect.as(p)))
  // Two in flight (held by the gate), three waiting for a slot: all accepted.
  const held = Array.from({ length: 5 }, (_, i) => run(a.api.request(b.api.self, i, 10_000)))
  await sleep(100)
  t.equal(a.api.stats().limits?.internode_slot_waiters, 0, "nothing refused while the queue has room")
  const [e, ms] = await timed(() => failure(a.api.request(b.api.self, "one too many", 10_000)))
  t.match(e, { reason: "timeout", peer: "b" })
  t.match(e.message, /no slot for a message to node b: 2 in flight and 3 waiting/)
  t.ok(ms < 200, `failed at once (${ms.toFixed(0)} ms), not after its 10 s timeout`)
  const [e2] = await timed(() => failure(a.api.send(b.api.self, "one-way too")))
  t.match(e2, { reason: "timeout", peer: "b" }, "a one-way message too")
  t.equal(a.api.stats().limits?.internode_slot_waiters, 2, "each refusal counted")
  release()
  t.same(await Promise.all(held), [0, 1, 2, 3, 4], "the accepted ones all get their answer")
  t.same(await run(a.api.request(b.api.self, "again", 2000)), "again", "room again once the queue drained")
})

t.test("waiters that timed out free their place in the queue", async (t) => {
  const a = await startTcp(t, { nodeId: "a", maxInFlight: 1, maxSlotWaiters: 2 })
  const b = await startTcp(t, { nodeId: "b" })
  let release!: () => void
  const gate = new Promise<void>((r) => (release = r))
  await b.serve((_from, p) => Effect.promise(() => gate).pipe(Effect.as(p)))
  const holder = run(a.api.request(b.api.self, "holder", 10_000))
  await sleep(50)
  // Many rounds of two short-lived waiters: each round's time out before the next one comes.
  for (let round = 0; round < 20; round++) {
    const waiters = await Promise.all([failure(a.api.request(b.api.self, round, 20)), failure(a.api.request(b.api.self, round, 20))])
    t.same(waiters.map((w) => w.reason), ["timeout", "timeout"], `round ${round}: the waiters ran out their own time`)
  }
  t.equal(a.api.stats().limits?.internode_slot_waiters, 0, "none was refused by the bound: timed-out waiters left the count")
  release()
  t.equal(await holder, "holder")
})

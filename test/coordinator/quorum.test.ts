/**
 * Waiting for quorums: r or w in every replica set (the current and, while the ring moves,
 * the next one), and a failed quorum's count of the replicas that did acknowledge.
 */
import t from "tap"
import { awaitQuorum, groupsOf, hedged } from "../../src/coordinator/Quorum.ts"

const ok = (ms: number, v: string) => () => new Promise<string>((resolve) => setTimeout(() => resolve(v), ms))
const fail = (ms: number) => () => new Promise<string>((_, reject) => setTimeout(() => reject(new Error("down")), ms))
const now = (v: string) => () => Promise.resolve(v)
const never = () => new Promise<string>(() => {})
const run = <A>(p: Promise<A>) => p

t.test("a quorum in each set: the current one met is not enough while the next is not", async (t) => {
  // current [a, b, x], next [a, b, g]: a and x answer, b and g fail.
  const labels = ["a", "b", "x", "g"]
  const groups = groupsOf([["a", "b", "x"], ["a", "b", "g"]], labels, 2)
  t.same(groups, [{ tasks: [0, 1, 2], needed: 2 }, { tasks: [0, 1, 3], needed: 2 }])
  const r = await run(awaitQuorum([ok(1, "a"), fail(1), ok(5, "x"), fail(1)], groups, 1000))
  t.equal(r.ok, false)
  t.equal(r.timedOut, false, "decided, not timed out")
  t.same(r.counts, [2, 1], "two of the current set, one of the next")
  const both = await run(awaitQuorum([ok(1, "a"), ok(5, "b"), fail(1), fail(1)], groups, 1000))
  t.equal(both.ok, true, "a and b are in both sets")
  t.same(both.counts, [2, 2])
})

t.test("a met quorum answers at once; the rest go on in the background", async (t) => {
  const started = Date.now()
  const r = await run(awaitQuorum([ok(1, "a"), ok(1, "b"), ok(300, "c")], groupsOf([["a", "b", "c"]], ["a", "b", "c"], 2), 1000))
  t.ok(r.ok)
  t.ok(Date.now() - started < 250, `answered after ${Date.now() - started} ms`)
  t.same([...r.results].sort(), ["a", "b"])
  t.same([...(await run(r.all))].sort(), ["a", "b", "c"], "all: every success once settled")
})

t.test("a quorum that cannot be met counts the replicas still answering", async (t) => {
  // A replica known to be down fails at once; the healthy one answers a little later. The
  // failure must say that it did acknowledge (got 2 of 3 with the local copy, not 1).
  const labels = ["self", "down", "slow"]
  const r = await run(awaitQuorum([now("self"), fail(0), ok(50, "slow")], groupsOf([labels], labels, 3), 2000))
  t.equal(r.ok, false)
  t.equal(r.timedOut, false)
  t.same(r.counts, [2], "the healthy replica's late acknowledgement is counted")
  t.same([...r.results].sort(), ["self", "slow"])
})

t.test("that wait ends at the request's timeout", async (t) => {
  const labels = ["a", "b", "c"]
  const started = Date.now()
  const r = await run(awaitQuorum([ok(1, "a"), fail(0), never], groupsOf([labels], labels, 3), 150))
  const took = Date.now() - started
  t.equal(r.ok, false)
  t.same(r.counts, [1])
  t.ok(took >= 140 && took < 600, `gave up after ${took} ms`)
})

t.test("a quorum nobody answers in time times out", async (t) => {
  const r = await run(awaitQuorum([ok(1, "a"), never, never], groupsOf([["a", "b", "c"]], ["a", "b", "c"], 2), 100))
  t.equal(r.ok, false)
  t.equal(r.timedOut, true)
  t.same(r.counts, [1])
})

t.test("a hedge runs after a quarter of the timeout (250 ms at most); the first success counts", async (t) => {
  // The task answers after 400 ms, the hedge after 100 ms more: the hedge wins at ~350 ms.
  let started = Date.now()
  let hedgeAt = -1
  const backup = () => ((hedgeAt = Date.now() - started), ok(100, "hedge")())
  t.equal(await hedged(ok(400, "task"), backup, 2000)(), "hedge")
  t.ok(hedgeAt >= 240 && hedgeAt < 400, `the hedge started after ${hedgeAt} ms`)
  // A task that answers in time: no hedge at all.
  started = Date.now()
  hedgeAt = -1
  t.equal(await hedged(ok(5, "task"), backup, 2000)(), "task")
  await new Promise((r) => setTimeout(r, 300))
  t.equal(hedgeAt, -1, "no hedge for a task that answered in time")
  // A task that fails at once: the hedge still runs at its time, and its success counts.
  t.equal(await hedged(fail(0), ok(1, "hedge"), 40)(), "hedge")
  // Both fail: the hedge's failure is the answer.
  await t.rejects(hedged(fail(0), fail(1), 40)(), /down/)
})

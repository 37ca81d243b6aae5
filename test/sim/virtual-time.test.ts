/**
 * The simulator's virtual event loop: order of timers, clears, intervals, refresh, the clocks
 * and Math.random on virtual time for a run only, and a stalled run reported as such.
 */
import t from "tap"
import { prng } from "../../engine/Prng.ts"
import { EPOCH_MS, Stalled, VirtualLoop } from "../../sim/VirtualTime.ts"

t.test("timers run in time order, then in the order set; clears and intervals hold", async (t) => {
  const loop = new VirtualLoop(1)
  const seen: string[] = []
  const out = await loop.run(async () => {
    setTimeout(() => seen.push("b@20"), 20)
    setTimeout(() => seen.push("a@10"), 10)
    setTimeout(() => seen.push("a2@10"), 10)
    setImmediate(() => seen.push("immediate"))
    const dropped = setTimeout(() => seen.push("never"), 5)
    clearTimeout(dropped)
    let n = 0
    const every = setInterval(() => {
      seen.push(`tick${++n}@${Date.now() - EPOCH_MS}`)
      if (n === 3) clearInterval(every)
    }, 7)
    await new Promise((r) => setTimeout(r, 100))
    return Date.now() - EPOCH_MS
  })
  t.same(seen, ["immediate", "tick1@7", "a@10", "a2@10", "tick2@14", "b@20", "tick3@21"])
  t.equal(out, 100, "virtual time moved to the last timer")
  t.equal(loop.stats().virtualMs, 100)
})

t.test("a run takes no wall time for virtual waits, and the globals are real again after it", async (t) => {
  const realNow = Date.now
  const realRandom = Math.random
  const loop = new VirtualLoop(2)
  const started = realNow()
  const inside = await loop.run(async () => {
    await new Promise((r) => setTimeout(r, 3_600_000))
    return { now: Date.now(), date: new Date().getTime(), perf: performance.now(), hr: process.hrtime.bigint(), r: Math.random() }
  })
  t.ok(realNow() - started < 5_000, "an hour of virtual time in less than 5 s")
  t.equal(inside.now, EPOCH_MS + 3_600_000)
  t.equal(inside.date, inside.now)
  t.equal(inside.perf, 3_600_000)
  t.equal(inside.hr, 3_600_000n * 1_000_000n)
  t.equal(Date.now, realNow)
  t.equal(Math.random, realRandom)
  t.ok(Math.abs(Date.now() - realNow()) < 1000, "Date.now is the wall clock again")
})

t.test("the same seed draws the same randomness; a timer's refresh restarts its delay", async (t) => {
  const draw = (seed: number) => new VirtualLoop(seed).run(async () => [Math.random(), Math.random()])
  t.same(await draw(5), await draw(5))
  t.not((await draw(5))[0], (await draw(6))[0])
  const at = await new VirtualLoop(1).run(async () => {
    let fired = -1
    const h = setTimeout(() => (fired = Date.now() - EPOCH_MS), 10)
    await new Promise((r) => setTimeout(r, 6))
    h.refresh()
    await new Promise((r) => setTimeout(r, 50))
    return fired
  })
  t.equal(at, 16, "refreshed at 6, fired 10 later")
  const r = prng(3)
  t.ok(r() >= 0 && r() < 1)
})

t.test("a run that waits on nothing left to run stalls, and says so", async (t) => {
  const loop = new VirtualLoop(1)
  await t.rejects(loop.run(() => new Promise<void>(() => {})), Stalled)
  await t.rejects(new VirtualLoop(1).run(async () => {
    for (;;) await new Promise((r) => setTimeout(r, 1000))
  }, 10_000), /ran past 10000 virtual ms/)
  // A stalled run leaves the real globals in place and lets the next run start.
  t.equal(await new VirtualLoop(1).run(async () => 42), 42)
})

t.test("one run at a time", async (t) => {
  const a = new VirtualLoop(1).run(() => new Promise((r) => setTimeout(r, 10)))
  await t.rejects(new VirtualLoop(2).run(async () => 1), /already running/)
  await a
})

/**
 * The deterministic simulator in CI: a sweep of seeds with every fault kind, the same seed
 * twice giving the same event log, and the two switches that break Tally on purpose (a
 * last-write-wins merge; kv679's reused epoch) caught by the checker.
 */
import t from "tap"
import { runSim, type SimOptions, type SimResult } from "../../sim/Sim.ts"
import { wallNow } from "../../sim/VirtualTime.ts"

const explain = (r: SimResult) => `${r.problems.join("; ")}\nreplay: ${r.replay}`

t.test("the same seed twice gives the same event log, whatever ran before it in the process; another seed another", async (t) => {
  // Kills and wipes leave nodes to tear down: none of their fibers may run on into a later run.
  const o: SimOptions = { seed: 7, nodes: 4, ops: 200, faults: ["kill", "crash", "wipe", "partition", "pause"] }
  const a = await runSim(o)
  const c = await runSim({ ...o, seed: 8 })
  const b = await runSim(o)
  t.ok(a.ok, explain(a))
  t.ok(a.faults.kill + a.faults.crash + a.faults.wipe > 0, `node faults: ${JSON.stringify(a.faults)}`)
  t.ok(a.events > 1000, `${a.events} events logged`)
  t.equal(b.hash, a.hash, "identical hashes")
  t.same(b.faults, a.faults)
  t.equal(b.acked, a.acked)
  t.not(c.hash, a.hash)
})

t.test("a last-write-wins merge loses acknowledged writes, and the checker says so", async (t) => {
  const r = await runSim({ seed: 1, nodes: 3, ops: 200, faults: [], lww: true })
  t.notOk(r.ok)
  t.ok(r.lost > 0, `${r.lost} of ${r.acked} acknowledged writes lost`)
  t.match(r.problems.join(), /acknowledged writes lost/)
  t.match(r.replay, /--seed 1 .*--lww/)
  // The same run without the switch loses nothing.
  const fixed = await runSim({ seed: 1, nodes: 3, ops: 200, faults: [] })
  t.ok(fixed.ok, explain(fixed))
})

t.test("kv679 (a wiped node reusing its epoch) is caught within 100 seeds", async (t) => {
  let found: SimResult | undefined
  let seed = 1
  for (; seed <= 100 && found === undefined; seed++) {
    const r = await runSim({ seed, nodes: 3, ops: 300, faults: ["wipe"], kv679: true })
    if (!r.ok) found = r
  }
  t.ok(found !== undefined, "a seed failed")
  t.ok(found!.lost > 0, `seed ${found!.seed}: ${found!.problems.join("; ")}`)
  t.match(found!.replay, /--kv679/)
  // The seed that caught it passes with the fix (a fresh epoch per start).
  const fixed = await runSim({ seed: found!.seed, nodes: 3, ops: 300, faults: ["wipe"] })
  t.ok(fixed.ok, explain(fixed))
})

// Seeds that once found a bug in Tally: each must pass from now on.
const regressions: ReadonlyArray<SimOptions & { readonly why: string }> = [
  { seed: 5071, nodes: 5, ops: 1000, why: "a power cut dropped a data directory made by a plain mkdir, with the hints parked in it (test/node/powercut.test.ts)" }
]

for (const r of regressions) {
  t.test(`regression: ${r.why}`, async (t) => {
    const res = await runSim(r)
    t.ok(res.ok, explain(res))
  })
}

t.test("a sweep of seeds with every fault kind: no loss, no value never written, convergence", async (t) => {
  // As many seeds as fit in the budget, at least 20 (3 to 5 nodes, a short workload each);
  // CI gives it 30 s. Long sweeps: `npm run sim`, or TALLY_SIM_BUDGET_MS.
  const budgetMs = Number(process.env.TALLY_SIM_BUDGET_MS ?? 30_000)
  const started = wallNow()
  let seeds = 0
  const totals = { acked: 0, faults: 0 }
  for (let seed = 1000; seeds < 20 || wallNow() - started < budgetMs; seed++) {
    const r = await runSim({ seed, nodes: 3 + (seed % 3), ops: 150 })
    seeds++
    totals.acked += r.acked
    totals.faults += Object.values(r.faults).reduce((a, b) => a + b, 0)
    if (!r.ok) t.fail(`seed ${seed}: ${explain(r)}`)
  }
  t.pass(`${seeds} seeds, ${totals.acked} acknowledged writes, ${totals.faults} faults in ${((wallNow() - started) / 1000).toFixed(0)} s`)
})

/** When `tally cluster` restarts a dead node (RestartPolicy), on made-up clock readings. */
import t from "tap"
import * as RestartPolicy from "../../src/cli/RestartPolicy.ts"

/** Deaths after runs of `runMs` each, restarted after the delay decided; the decisions. */
const crashLoop = (runs: ReadonlyArray<number>) => {
  let state = RestartPolicy.initial
  let now = 0
  const decisions: Array<RestartPolicy.Decision> = []
  for (const runMs of runs) {
    const startedAt = now
    now += runMs
    const next = RestartPolicy.onDeath(state, { startedAt, diedAt: now })
    state = next.state
    decisions.push(next.decision)
    if (next.decision._tag === "Restart") now += next.decision.delayMs
  }
  return decisions
}

t.test("1 s, doubling; the fifth death within a minute gives up", async (t) => {
  t.same(crashLoop([100, 100, 100, 100, 100]), [
    { _tag: "Restart", delayMs: 1_000 },
    { _tag: "Restart", delayMs: 2_000 },
    { _tag: "Restart", delayMs: 4_000 },
    { _tag: "Restart", delayMs: 8_000 },
    { _tag: "GiveUp", deaths: 5, windowMs: 60_000 }
  ])
})

t.test("deaths spread out keep doubling up to 30 s and never give up", async (t) => {
  const decisions = crashLoop(Array.from({ length: 10 }, () => 20_000))
  t.same(decisions.map((d) => (d._tag === "Restart" ? d.delayMs : d._tag)), [1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000, 30_000, 30_000])
})

t.test("a minute of running starts the doubling again", async (t) => {
  const decisions = crashLoop([100, 100, 60_000, 100])
  t.same(decisions.map((d) => (d._tag === "Restart" ? d.delayMs : d._tag)), [1_000, 2_000, 1_000, 2_000])
})

t.test("delays as people say them", async (t) => {
  t.equal(RestartPolicy.formatDelay(1_000), "1 s")
  t.equal(RestartPolicy.formatDelay(50), "0.05 s")
  t.equal(RestartPolicy.formatDelay(30_000), "30 s")
})

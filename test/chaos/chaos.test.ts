import t from "tap"
import { faultKinds, runChaos } from "../../chaos/Chaos.ts"

t.test("a 20 s chaos run with 4 nodes loses no acknowledged element and invents none", { timeout: 150_000 }, async (t) => {
  const seed = Number(process.env.TALLY_CHAOS_SEED ?? 2)
  const lines: string[] = []
  const r = await runChaos({ seconds: 20, nodes: 4, seed, convergeSeconds: 30, log: (l) => lines.push(l) })
  t.comment(JSON.stringify({ ...r, nemesisLog: undefined }))
  const why = `seed ${seed} (npm run chaos -- --seconds 20 --nodes 4 --seed ${seed}):\n${lines.join("\n")}`
  t.ok(r.acked > 0, `some writes were acknowledged; ${why}`)
  t.equal(r.lost, 0, `no acknowledged element lost: ${JSON.stringify(r.lostElements)}; ${why}`)
  t.equal(r.unexpected, 0, `no element that was never written: ${JSON.stringify(r.unexpectedElements)}; ${why}`)
  t.ok(r.converged, `replicas converged; ${why}`)
  for (const kind of faultKinds) t.ok(r.faults[kind] >= 1, `${kind} injected at least once`)
})

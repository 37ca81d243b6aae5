import { runSim } from "./Sim.ts"
for (let s = 500; s < 503; s++) {
  const r = await runSim({ seed: s, nodes: 5, ops: 1000 })
  console.log(s, r.ok, r.wallMs, JSON.stringify(r.phasesMs), r.tasks)
}

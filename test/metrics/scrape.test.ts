import t from "tap"
import type { LogStats } from "../../engine/Log.ts"
import { type ClusterFigures, makeMetrics } from "../../src/metrics/Metrics.ts"

// The cluster's figures walk every partition's tree: a scrape must compute them once, not
// once per collector (a dozen of them), and the next scrape must see fresh ones.
t.test("one scrape reads the engine's and the cluster's figures once, and each scrape reads them anew", async (t) => {
  let engineReads = 0
  let clusterReads = 0
  let keys = 1
  const engine = () => {
    engineReads++
    return { keys, segments: 1, bytes: 0, deadBytes: 0, lastLsn: 0, startupMs: 0, compactions: 0, reclaimedBytes: 0, fsyncs: 0, fsyncSeconds: 0, batches: 0, records: 0, corruptions: 0, failed: 0, overloaded: 0, droppedTombstones: 0 } as unknown as LogStats
  }
  const cluster = (): ClusterFigures => {
    clusterReads++
    return {
      parked: new Map([["n2", keys]]),
      members: ["up", "up"],
      ring: { version: 1, hash: 7, settled: true },
      phi: new Map([["n2", 0.5]]),
      transfers: { running: 0, stalled: 0, keys: 0 },
      coordinator: { fallbackWrites: 0, readRepairs: 0, forwardedWrites: 0, quorumFailures: { get: 0, put: 0 } },
      aae: [{ partition: 0, lastExchange: 1, exchanges: 1, keysCompared: 1, keysRepaired: 0, bytes: 1 }],
      limits: { hints_unknown_owner: 0 }
    }
  }
  const m = makeMetrics(engine, cluster)
  const first = await m.scrape()
  t.equal(engineReads, 1, "engine figures read once per scrape")
  t.equal(clusterReads, 1, "cluster figures read once per scrape")
  t.match(first, /^tally_engine_keys 1$/m)
  t.match(first, /^tally_handoff_parked\{target="n2"\} 1$/m)
  keys = 5
  const second = await m.scrape()
  t.equal(engineReads, 2)
  t.equal(clusterReads, 2)
  t.match(second, /^tally_engine_keys 5$/m, "a later scrape is not served the earlier figures")
  t.match(second, /^tally_handoff_parked\{target="n2"\} 5$/m)
  // Two scrapes at once share one reading.
  await Promise.all([m.scrape(), m.scrape()])
  t.equal(clusterReads, 3)
})

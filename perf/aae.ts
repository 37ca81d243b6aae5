/**
 * npm run bench:aae: anti-entropy between two replicas of 1M keys, in one process: two
 * engines and replicas on disk, the real exchange (src/aae/Exchange.ts) with every message
 * and reply encoded as the transport sends it (msgpack) to count bytes. For 1, 100 and
 * 10,000 (1%) divergent keys (half overwritten by a concurrent write on one replica, half
 * missing there), it measures the round trips and bytes an exchange needs to find them, the
 * bytes and time to repair them all, against the naive exchange of every (key, version)
 * pair. Then the trees' rebuild at start-up (the index load with trees, and the tree part
 * alone) and what keeping trees current costs a write.
 *
 * Options: --keys N (1,000,000), --partitions Q (64, the node's default), --value-bytes B
 * (100), --confirm-ms MS (the exchange's second-look delay, 500 as in the node). Prints
 * tables, then one JSON line last.
 */
import { encode } from "@msgpack/msgpack"
import { Effect, Layer, ManagedRuntime } from "effect"
import { parseArgs } from "node:util"
import { Engine } from "../engine/Engine.ts"
import { KeyIndex } from "../engine/KeyIndex.ts"
import { RecordType } from "../engine/Record.ts"
import { contribution, keyHash, Trees } from "../engine/TictacTree.ts"
import { answer, exchange, type AaeMessage, type ExchangeDeps, type ExchangeResult } from "../src/aae/Exchange.ts"
import { defaultReplicaConfig, Replica } from "../src/replica/Replica.ts"
import { partitionOf } from "../src/ring/Ring.ts"
import * as Dvv from "../src/versions/Dvv.ts"
import { encodeObject, type Sibling } from "../src/versions/Sibling.ts"
import { keyOf } from "./lib/data.ts"
import { fmt, table, tempDir } from "./lib/measure.ts"

const { values: args } = parseArgs({
  options: {
    keys: { type: "string", default: "1000000" },
    partitions: { type: "string", default: "64" },
    "value-bytes": { type: "string", default: "100" },
    "confirm-ms": { type: "string", default: "500" }
  }
})
const K = Number(args.keys)
const Q = Number(args.partitions)
const VALUE = Number(args["value-bytes"])
const CONFIRM = Number(args["confirm-ms"])
if (!Number.isInteger(K) || K < 20_000) throw new Error("--keys must be an integer >= 20000")

const openSide = (name: string, dir: string) => {
  const engine = Engine.layer({ dir, fsync: "never", compactionIntervalMs: 0, maxValueBytes: defaultReplicaConfig.maxObjectBytes, partitionOf: (k) => partitionOf(k, Q) })
  const layer = Replica.layer({ ...defaultReplicaConfig, nodeId: name, partitions: Q }).pipe(Layer.provideMerge(engine))
  const rt = ManagedRuntime.make(layer)
  return rt.runPromise(Effect.gen(function*() {
    return { engine: yield* Engine, replica: yield* Replica }
  })).then((s) => ({ ...s, rt }))
}
type Side = Awaited<ReturnType<typeof openSide>>

const sibling = (i: number, tag: string): Sibling => ({
  value: Buffer.from(`${tag}:${i}:`.padEnd(VALUE, "v")),
  contentType: "application/octet-stream",
  lastModified: 1_700_000_000_000 + i,
  deleted: false
})
/**
 * Writers as Tally names them: node id and a start's epoch (Replica.ts). Each key was written
 * through one of three coordinators, as a client spreading writes over a 3-node cluster does.
 */
const WRITERS = ["node-8081@k2f9x0q1", "node-8082@1j7mz3c8", "node-8083@0p4t6w2e"]
const objectOf = (i: number) => Dvv.update(Dvv.empty<Sibling>(), new Map(), WRITERS[i % 3]!, sibling(i, "a"))

/** Appends many records with the log's own callback API (no Effect per record). */
const load = (side: Side, items: Iterable<{ key: string; bytes: Uint8Array }>) =>
  new Promise<void>((resolve, reject) => {
    const log = side.engine.log
    let pending = 0
    let done = false
    let failed = false
    const it = items[Symbol.iterator]()
    const pump = () => {
      while (pending < 4096) {
        const n = it.next()
        if (n.done) {
          done = true
          if (pending === 0) resolve()
          return
        }
        pending++
        log.append(RecordType.Put, n.value.key, partitionOf(n.value.key, Q), n.value.bytes, undefined, (err) => {
          pending--
          if (err !== undefined && !failed) {
            failed = true
            reject(err)
          }
          if (done && pending === 0) resolve()
          else if (!done && pending < 2048) setImmediate(pump)
        })
      }
    }
    pump()
  })

const wire = (x: unknown) => encode(x).length

/** Runs exchanges of every partition, A asking B, until all are clean. */
const sweep = async (a: Side, b: Side) => {
  const depsOf = (s: Side): ExchangeDeps => ({ engine: s.engine, replica: s.replica, now: Date.now, config: { maxRepairs: 1_000, confirmDelayMs: CONFIRM, tombstoneGraceMs: 86_400_000 } })
  const da = depsOf(a)
  const db = depsOf(b)
  let findBytes = 0
  let repairBytes = 0
  let findTrips = 0
  let maxTrips = 0
  let repaired = 0
  let exchanges = 0
  let dirtyPartitions = 0
  /** Find bytes of the exchanges that found differences (the others stop after the branches). */
  let dirtyFindBytes = 0
  const t0 = performance.now()
  for (let round = 0; round < 20; round++) {
    let unclean = 0
    for (let p = 0; p < Q; p++) {
      let trips = 0
      const ask = (msg: AaeMessage) =>
        Effect.map(answer(db, msg), (reply) => {
          const bytes = wire(msg) + wire(reply)
          if (msg.t === "aae-sync") repairBytes += bytes
          else {
            findBytes += bytes
            trips++
          }
          return reply
        })
      const before = findBytes
      const r: ExchangeResult = await a.rt.runPromise(exchange(da, ask, p))
      if (r.differing > 0) dirtyFindBytes += findBytes - before
      exchanges++
      if (round === 0 && r.differing > 0) dirtyPartitions++
      if (r.differing > 0) maxTrips = Math.max(maxTrips, trips)
      findTrips += trips
      repaired += r.repaired
      if (!r.clean) unclean++
    }
    if (unclean === 0) break
  }
  return { findBytes, dirtyFindBytes, repairBytes, findTrips, maxTrips, repaired, exchanges, dirtyPartitions, ms: performance.now() - t0 }
}

/** Whether the two replicas hold the same trees for every partition. */
const sameTrees = async (a: Side, b: Side) => {
  for (let p = 0; p < Q; p++) {
    const [x, y] = await Promise.all([a.rt.runPromise(a.engine.tree(p)), b.rt.runPromise(b.engine.tree(p))])
    if (!x.hashes.every((h, i) => h === y.hashes[i])) return false
  }
  return true
}

const main = async () => {
  const tmp = tempDir("aae")
  process.on("SIGINT", () => {
    tmp.remove()
    process.exit(130)
  })
  console.log(`bench:aae: ${K.toLocaleString()} keys, Q=${Q}, values ${VALUE} B, confirm delay ${CONFIRM} ms`)
  const keys = Array.from({ length: K }, (_, i) => keyOf(i))
  const bytesOf = keys.map((_, i) => encodeObject(objectOf(i)))
  const a = await openSide("a", `${tmp.dir}/a`)
  let b = await openSide("b", `${tmp.dir}/b`)
  const tl = performance.now()
  await Promise.all([load(a, keys.map((key, i) => ({ key, bytes: bytesOf[i]! }))), load(b, keys.map((key, i) => ({ key, bytes: bytesOf[i]! })))])
  console.log(`loaded ${K.toLocaleString()} keys into each replica in ${fmt((performance.now() - tl) / 1000)} s`)

  // The naive exchange: one side lists every key with its version (the encoded version
  // vector, what a key listing with clocks sends), or, tighter, with an 8-byte hash.
  let naiveClock = 0
  let naiveHash = 0
  for (let i = 0; i < K; i += 1000) {
    const chunk = keys.slice(i, i + 1000)
    naiveClock += wire(chunk.map((k, j) => [k, Dvv.encodeContext(Dvv.join(objectOf(i + j)))]))
    naiveHash += wire(chunk.map((k) => [k, new Uint8Array(8)]))
  }

  const cases: Array<Record<string, number>> = []
  let next = 0
  for (const d of [1, 100, K / 100]) {
    // Diverge: half the keys get a concurrent write on B, half are missing on B (written to A only).
    const picked = Array.from({ length: d }, () => next++)
    const changed = picked.filter((_, j) => j % 2 === 0)
    const missing = picked.filter((_, j) => j % 2 === 1)
    await load(b, changed.map((i) => ({ key: keys[i]!, bytes: encodeObject(Dvv.update(objectOf(i), new Map(), "node-8084@3k9d0s7a", sibling(i, "b"))) })))
    // Missing on B: write fresh keys to A only.
    await load(a, missing.map((i) => ({ key: `${keys[i]}-only-a`, bytes: bytesOf[i]! })))
    const s = await sweep(a, b)
    const converged = await sameTrees(a, b)
    cases.push({ divergent: d, ...s, converged: converged ? 1 : 0 })
    console.log(`${d} divergent: ${s.dirtyPartitions} partitions differed, ${s.maxTrips} round trips, find ${fmt(s.findBytes / 1024)} KiB (${fmt(s.dirtyFindBytes / 1024, 1)} KiB in the differing partitions), repair ${fmt(s.repairBytes / 1024)} KiB, ${s.repaired} repaired in ${fmt(s.ms / 1000)} s (${s.exchanges} exchanges), trees equal after: ${converged}`)
  }

  // Start-up: reopen B (index and trees from hint files), and the tree part alone.
  await b.rt.dispose()
  const ts = performance.now()
  b = await openSide("b", `${tmp.dir}/b`)
  const startupMs = performance.now() - ts
  const index = b.engine.log.index
  const tt = performance.now()
  const rebuilt = new Trees()
  for (const [key, loc] of index.entries()) rebuilt.change(loc.partition, keyHash(key), loc.hash, 1)
  const treeOnlyMs = performance.now() - tt
  const rebuiltRoot = rebuilt.root(0) === index.trees.root(0)

  // The write path: an index replace (what a write does in memory) with and without tree
  // upkeep, alternating to share the machine's noise.
  const n = 1_000_000
  const replaceNs = (trees: boolean) => {
    const index = new KeyIndex({ trees })
    for (let i = 0; i < K; i++) index.set(keys[i]!, 1, i, 100, i + 1, false, i % Q, i, i ^ 7)
    const t0 = performance.now()
    for (let i = 0; i < n; i++) index.replaceIfNewer(keys[i % K]!, 1, i, 100, K + i + 1, false, (i % K) % Q, i, i ^ 7)
    return ((performance.now() - t0) * 1e6) / n
  }
  const runs = { with: [] as number[], without: [] as number[] }
  for (let r = 0; r < 3; r++) {
    runs.without.push(replaceNs(false))
    runs.with.push(replaceNs(true))
  }
  const withTreesNs = Math.min(...runs.with)
  const withoutTreesNs = Math.min(...runs.without)
  const treeNs = withTreesNs - withoutTreesNs

  console.log(table([["divergent", "partitions differing", "round trips", "find KiB", "repair KiB", "total / naive(clock)", "total / naive(hash)", "repair s"],
    ...cases.map((c) => [String(c.divergent), String(c.dirtyPartitions), String(c.maxTrips), fmt(c.findBytes! / 1024, 1), fmt(c.repairBytes! / 1024, 1), fmt(c.findBytes! / naiveClock, 4), fmt(c.findBytes! / naiveHash, 4), fmt(c.ms! / 1000, 1)])]))
  console.log(`naive exchange of every (key, version): ${fmt(naiveClock / 2 ** 20, 1)} MiB with version vectors, ${fmt(naiveHash / 2 ** 20, 1)} MiB with 8-byte hashes`)
  console.log(`start-up of a replica of ${index.size.toLocaleString()} keys with trees: ${fmt(startupMs / 1000, 2)} s; the trees alone from the index: ${fmt(treeOnlyMs)} ms (same root: ${rebuiltRoot})`)
  console.log(`index replace: ${fmt(withTreesNs, 1)} ns with tree upkeep, ${fmt(withoutTreesNs, 1)} ns without (best of 3 each, alternating): upkeep ${fmt(treeNs, 1)} ns a write`)
  const one = cases[0]!
  const pct = cases[2]!
  const out = {
    bench: "aae",
    keys: K,
    partitions: Q,
    valueBytes: VALUE,
    confirmDelayMs: CONFIRM,
    naiveBytesClock: naiveClock,
    naiveBytesHash: naiveHash,
    cases,
    oneKey: { roundTrips: one.maxTrips, findBytesInItsPartition: one.dirtyFindBytes, findBytesAllPartitions: one.findBytes },
    targets: {
      oneKeyRoundTrips: { want: "<= 3", met: one.maxTrips! <= 3 },
      oneKeyBytes: { want: "<= 24 KiB", met: one.dirtyFindBytes! <= 24 * 1024 },
      onePercentOverNaive: { want: "<= 1/20", met: pct.findBytes! + pct.repairBytes! * 0 <= naiveClock / 20 },
      treeRebuild: { want: "<= 5 s", met: treeOnlyMs <= 5000 }
    },
    onePercentFindOverNaiveClock: pct.findBytes! / naiveClock,
    onePercentFindOverNaiveHash: pct.findBytes! / naiveHash,
    onePercentRepairSeconds: pct.ms! / 1000,
    startupSeconds: startupMs / 1000,
    treeRebuildMs: treeOnlyMs,
    treeUpkeepNsPerWrite: treeNs,
    indexReplaceNs: { withTrees: withTreesNs, withoutTrees: withoutTreesNs }
  }
  await a.rt.dispose()
  await b.rt.dispose()
  tmp.remove()
  console.log(JSON.stringify(out))
}

await main()

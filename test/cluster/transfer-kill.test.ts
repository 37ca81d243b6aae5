/**
 * A partition transfer interrupted by SIGKILL, on either side, black-box with real processes.
 *
 * A 3-node cluster (N=3, Q=8) holds 6,000 keys of 1 KiB, so each partition (about 750 keys)
 * is a snapshot of two pages of 500, and every node pulls at most 400 kB/s
 * (`--transfer-rate`), so n4's join takes several seconds and every page stays visible in
 * GET /admin/transfers for a while. Strict clients (w=2&sloppy=false, r=2&sloppy=false) run
 * throughout. As soon as /admin/transfers shows a transfer to n4 running in the middle of its
 * snapshot (0 < keysSent < keysTotal),
 *   (a) the receiver, n4, is SIGKILLed and restarted at once on the same data directory;
 *   (b) the transfer's source is SIGKILLed, and restarted as soon as n4 has logged that it
 *       paused the pull (else a source back within one page's pacing would go unnoticed).
 * Then the move must finish (one settled ring of 4 everywhere), no strict read may miss an
 * acknowledged write, and every acknowledged key must be readable strictly and stored on each
 * of its owners. And the pull must resume from its checkpoint (<data>/transfers/): after the
 * restart, the transfer of that partition brings fewer records than the partition's snapshot
 * holds (keysSent stays below the keysTotal seen before the kill). Pulling from scratch would
 * show keysSent reach keysTotal again.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import t, { type Test } from "tap"
import { checkAcked, clusterView, newHistory, preload, settledOn, startCluster, strictLoad, type Cluster, type ClusterNode } from "./harness.ts"

const Q = 8
const KEYS = 6000
const RATE = 400_000

interface Xfer { partition: number; from: string; to: string; state: string; keysSent: number; keysTotal: number }

const transfersOf = async (node: ClusterNode): Promise<Xfer[]> =>
  ((await (await fetch(`${node.url}/admin/transfers`, { signal: AbortSignal.timeout(3000) })).json()) as { transfers: Xfer[] }).transfers

const checkpoints = (dataRoot: string, id: string): Record<string, unknown> => {
  const dir = path.join(dataRoot, id, "transfers")
  const out: Record<string, unknown> = {}
  for (const f of fs.existsSync(dir) ? fs.readdirSync(dir) : []) {
    if (!f.endsWith(".json")) continue
    try {
      out[f] = JSON.parse(fs.readFileSync(path.join(dir, f), "utf8"))
    } catch {
      out[f] = "unreadable"
    }
  }
  return out
}

const dumpLogs = (t: { comment: (m: string) => unknown }, c: Cluster) => {
  for (const node of c.nodes) t.comment(`---- ${node.id} log (last 4000 chars) ----\n${node.log.slice(-4000)}`)
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

const interrupted = (side: "receiver" | "source", portBase: number) => async (t: Test) => {
  const root = t.testdir()
  const c = await startCluster(root, 3, { basePort: portBase + Math.floor(Math.random() * 31) * 8, extra: ["--partitions", String(Q), "--transfer-rate", String(RATE)] })
  t.teardown(() => c.stopAll())
  const timeline: string[] = []
  const t0 = Date.now()
  const note = (s: string) => timeline.push(`${Date.now() - t0} ms: ${s}`)
  try {
    const h = newHistory()
    t.same(await preload(h, c.nodes, KEYS, { bytes: 1024, w: 3, parallel: 48 }), [], `${KEYS} keys of 1 KiB written with w=3`)
    note("preloaded")

    const up = () => c.nodes.filter((x) => x.child !== undefined)
    const traffic = strictLoad(up, h, { writers: 1, readers: 2 })
    const adding = c.add(c.byId("n2"))
    const n4 = c.nodes[3]!
    let n4Ready = false
    void adding.then(() => {
      n4Ready = true
      note("n4 ready")
    }, () => {})

    // Every observation of a transfer to n4, from n1's cluster-wide list and n4's own.
    const seen: Array<Xfer & { at: number }> = []
    let watching = true
    const watcher = (async () => {
      while (watching) {
        await Promise.all([c.nodes[0]!, n4].map(async (node) => {
          const at = Date.now() - t0
          const xs = await transfersOf(node).catch(() => [])
          for (const x of xs) if (x.to === "n4" && x.state !== "pending") seen.push({ ...x, at })
        }))
        await sleep(20)
      }
    })()

    // The moment: a transfer to n4 running in the middle of its snapshot.
    let target: Xfer | undefined
    for (const deadline = Date.now() + 120_000; target === undefined && Date.now() < deadline;) {
      await sleep(10)
      if (!n4Ready) continue
      const x = seen.findLast((s) => s.state === "running" && s.keysSent > 0 && s.keysSent < s.keysTotal && Date.now() - t0 - s.at < 200)
      // For (a), also wait for the checkpoint of its first page on n4's disk.
      if (x !== undefined && (side === "source" || Object.keys(checkpoints(root, "n4")).some((f) => f.includes(`_${x.partition}_n4_`)))) target = { ...x }
    }
    if (target === undefined) throw new Error("no transfer to n4 was ever seen in the middle of its snapshot")
    const p = target.partition
    const victim = side === "receiver" ? n4 : c.byId(target.from)
    await c.kill(victim, "SIGKILL")
    note(`SIGKILLed ${victim.id} while partition ${p} ${target.from}->n4 was at ${target.keysSent}/${target.keysTotal}`)
    // From when the interrupted pull is over: (a) at once, the receiver is dead; (b) once
    // the receiver has noticed that its source died and paused the pull.
    let resumeFrom = Date.now() - t0
    if (side === "source") {
      const paused = new RegExp(`transfer \\d+:${p}:n4 paused`)
      for (const deadline = Date.now() + 40_000; !paused.test(n4.log) && Date.now() < deadline;) await sleep(20)
      t.match(n4.log, paused, "n4 paused the transfer whose source died")
      resumeFrom = Date.now() - t0
      note("n4 logged the pause")
    }
    note(`n4's checkpoints: ${JSON.stringify(checkpoints(root, "n4"))}`)
    await c.start(victim)
    note(`${victim.id} restarted`)

    const final = await settledOn(c.nodes, 4, 240_000)
    note(`settled on 4 at ring version ${final.ringVersion}`)
    watching = false
    await watcher
    await sleep(1000)
    const r = await traffic.stop()

    // The move finished.
    const views = await Promise.all(c.nodes.map((x) => clusterView(x)))
    t.ok(views.every((v) => v.settled && v.ringVersion === views[0]!.ringVersion && JSON.stringify(v.owners) === JSON.stringify(views[0]!.owners)), `one settled ring everywhere (version ${views.map((v) => v.ringVersion).join(",")})`)
    t.same([...new Set(views[0]!.owners)].sort(), ["n1", "n2", "n3", "n4"], "n4 owns partitions")
    t.same(await transfersOf(c.nodes[0]!), [], "no transfer left")

    // The pull resumed from its checkpoint.
    const after = seen.filter((s) => s.partition === p && s.at > resumeFrom)
    const maxAfter = Math.max(0, ...after.map((s) => s.keysSent))
    note(`partition ${p} after the restart: ${after.length} observations, keysSent up to ${maxAfter} (snapshot ${target.keysTotal} keys)`)
    t.ok(after.length > 0, `the transfer of partition ${p} was seen running again after the restart`)
    t.ok(maxAfter < target.keysTotal, `it resumed from its checkpoint: keysSent reached ${maxAfter} of a ${target.keysTotal}-key snapshot (from scratch it would reach ${target.keysTotal})`)

    // No lost or stale read, every acknowledged key where it belongs.
    t.same(r.anomalies.slice(0, 10), [], `${r.reads} strict reads, ${r.writes} strict writes (${r.failed} failed: ${r.reasons || "none"}), no stale or missing read (${r.anomalies.length} anomalies)`)
    const check = await checkAcked(c.nodes, h, c.n)
    t.same(check.unreadable.slice(0, 10), [], `every one of ${h.acked.size} acknowledged keys readable with r=2&sloppy=false (${check.unreadable.length} not)`)
    t.same(check.missing.slice(0, 10), [], `every acknowledged key on each of its ${c.n} owners (${check.missing.length} copies missing)`)
  } finally {
    for (const line of timeline) t.comment(line)
    if (!t.passing()) dumpLogs(t, c)
  }
}

// Client ports 18500-18995, cluster ports 19500-19995: no other test file uses them.
t.test("(a) SIGKILL the receiver in the middle of a transfer, restart it at once", interrupted("receiver", 18500))
t.test("(b) SIGKILL the source in the middle of a transfer, restart it at once", interrupted("source", 18752))

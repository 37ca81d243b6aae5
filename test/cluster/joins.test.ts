/**
 * Concurrent joins through different seeds, black-box with real processes: a 3-node cluster
 * holding keys; n4 (seeded with n2) and n5 (seeded with n3) start at the same moment while
 * clients write and read strictly (w=2&sloppy=false, r=2&sloppy=false).
 *
 * Every node's /admin/cluster is polled throughout, and each pair of successive owner lists
 * a node reports is compared: a partition may only change owner to a joiner (n4 or n5),
 * never from one old member (n1..n3) to another. No ring version may be reported with two
 * different owner lists. At the end all five nodes report one identical settled ring of 5,
 * every member owns floor(Q/S) or ceil(Q/S) partitions, no strict read missed an
 * acknowledged write, and every acknowledged key is readable strictly and stored on each of
 * its N owners.
 */
import t from "tap"
import { partitionOf, preferenceList } from "../../src/ring/Ring.ts"
import { checkAcked, clusterView, newHistory, preload, settledOn, startCluster, strictLoad, type Cluster, type ClusterNode } from "./harness.ts"

const OLD = new Set(["n1", "n2", "n3"])
const JOINERS = new Set(["n4", "n5"])

interface Seen { readonly at: number; readonly node: string; readonly version: number; readonly owners: string[]; readonly settled: boolean }

/** Polls every node's view every `ms`; keeps, per node, each owner list it reported, in order. */
const watchRings = (nodes: () => ReadonlyArray<ClusterNode>, t0: number, ms = 100) => {
  const perNode = new Map<string, Seen[]>()
  let stop = false
  let polls = 0
  const loop = (async () => {
    while (!stop) {
      polls++
      await Promise.all(nodes().map(async (node) => {
        const v = await clusterView(node).catch(() => undefined)
        if (v === undefined || !Array.isArray(v.owners) || v.owners.length === 0) return
        const seq = perNode.get(node.id) ?? []
        perNode.set(node.id, seq)
        const last = seq.at(-1)
        if (last === undefined || last.version !== v.ringVersion || JSON.stringify(last.owners) !== JSON.stringify(v.owners) || last.settled !== v.settled) {
          seq.push({ at: Date.now() - t0, node: node.id, version: v.ringVersion, owners: v.owners, settled: v.settled })
        }
      }))
      await new Promise((r) => setTimeout(r, ms))
    }
  })()
  return {
    stop: async () => {
      stop = true
      await loop
      return { perNode, polls }
    }
  }
}

/** The partitions whose owner changed from `a` to `b` to someone other than a joiner. */
const badMoves = (a: Seen, b: Seen) =>
  a.owners.flatMap((o, p) => (o !== b.owners[p] && !JOINERS.has(b.owners[p]!) ? [`partition ${p}: ${o} -> ${b.owners[p]} (${a.node}'s view, version ${a.version} at ${a.at} ms -> ${b.version} at ${b.at} ms)`] : []))

const dumpLogs = (t: { comment: (m: string) => unknown }, c: Cluster) => {
  for (const node of c.nodes) t.comment(`---- ${node.id} log (last 4000 chars) ----\n${node.log.slice(-4000)}`)
}

t.test("n4 and n5 join at the same moment through n2 and n3, under strict reads and writes", async (t) => {
  // Client ports 18000-18495, cluster ports 19000-19495: no other test file uses them.
  const c = await startCluster(t.testdir(), 3, { basePort: 18000 + Math.floor(Math.random() * 62) * 8 })
  t.teardown(() => c.stopAll())
  const h = newHistory()
  t.same(await preload(h, c.nodes, 300, { w: 3 }), [], "300 keys written with w=3")
  const before = await clusterView(c.nodes[0]!)
  t.comment(`before: ring version ${before.ringVersion}, ${before.partitions} partitions, counts ${before.nodes.map((x) => `${x.id}=${x.partitions}`).join(" ")}`)

  const t0 = Date.now()
  const up = () => c.nodes.filter((x) => x.child !== undefined)
  const rings = watchRings(() => c.nodes, t0)
  // On a missed read: every node's ring version and what each one stores for the key, at once.
  const diagnose = async (key: string) => {
    const parts = await Promise.all(c.nodes.map(async (node) => {
      const v = await clusterView(node).catch(() => undefined)
      const local = (await (await fetch(`${node.url}/admin/local/${encodeURIComponent(key)}`)).json().catch(() => ({}))) as { found?: boolean; versions?: Array<{ value: string }> }
      const values = (local.versions ?? []).map((x) => Buffer.from(x.value, "base64").toString().split("|")[0])
      return `${node.id} v${v?.ringVersion}${v?.settled ? "" : "*"} holds ${values.join(" | ") || "nothing"}`
    }))
    return `right after: ${parts.join("; ")}`
  }
  const traffic = strictLoad(up, h, { diagnose })
  // A failure before the end must not leave the clients and the watcher polling forever.
  t.teardown(async () => {
    await traffic.stop()
    await rings.stop()
  })
  // Both at once: add() pushes the node and spawns it before its first await.
  const [n4, n5] = await Promise.all([c.add(c.byId("n2")), c.add(c.byId("n3"))])
  t.same([n4.id, n5.id], ["n4", "n5"])
  t.comment(`n4 and n5 ready after ${Date.now() - t0} ms`)
  const final = await settledOn(c.nodes, 5, 180_000)
  t.comment(`settled on 5 members after ${Date.now() - t0} ms at ring version ${final.ringVersion}`)
  // A little more load on the settled ring, then stop.
  await new Promise((r) => setTimeout(r, 2000))
  const r = await traffic.stop()
  const { perNode, polls } = await rings.stop()

  // One identical settled ring of 5 everywhere.
  const views = await Promise.all(c.nodes.map((x) => clusterView(x)))
  t.ok(views.every((v) => v.settled), "every node reports a settled ring")
  t.same(new Set(views.map((v) => v.ringVersion)).size, 1, `one ring version everywhere: ${views.map((v) => v.ringVersion).join(",")}`)
  t.ok(views.every((v) => JSON.stringify(v.owners) === JSON.stringify(views[0]!.owners)), "identical owners everywhere")
  t.same([...new Set(views[0]!.owners)].sort(), ["n1", "n2", "n3", "n4", "n5"], "five members own partitions")
  t.ok(views.every((v) => v.nodes.map((x) => x.id).sort().join() === "n1,n2,n3,n4,n5" && v.nodes.every((x) => x.status === "up")), "every node lists n1..n5, all up")

  // Balance: every member within one partition of Q/S.
  const q = views[0]!.partitions
  const counts = new Map<string, number>()
  for (const o of views[0]!.owners) counts.set(o, (counts.get(o) ?? 0) + 1)
  const lo = Math.floor(q / 5)
  const hi = Math.ceil(q / 5)
  t.ok([...counts.values()].every((k) => k >= lo && k <= hi), `every member owns ${lo}..${hi} of ${q}: ${[...counts].map(([id, k]) => `${id}=${k}`).join(" ")}`)

  // No partition moved between two old members, in any node's sequence of owner lists, nor in
  // the sequence of ring versions that any node reported.
  const bad: string[] = []
  const byVersion = new Map<number, Seen>()
  const conflicts: string[] = []
  for (const [, seq] of perNode) {
    for (let i = 1; i < seq.length; i++) bad.push(...badMoves(seq[i - 1]!, seq[i]!))
    for (const s of seq) {
      const have = byVersion.get(s.version)
      if (have === undefined) byVersion.set(s.version, s)
      else if (JSON.stringify(have.owners) !== JSON.stringify(s.owners)) conflicts.push(`version ${s.version}: ${have.node} at ${have.at} ms has ${have.owners.join(",")}; ${s.node} at ${s.at} ms has ${s.owners.join(",")}`)
    }
  }
  const versions = [...byVersion.keys()].sort((a, b) => a - b)
  for (let i = 1; i < versions.length; i++) bad.push(...badMoves(byVersion.get(versions[i - 1]!)!, byVersion.get(versions[i]!)!))
  t.comment(`${polls} polls of all nodes; ring versions seen: ${versions.join(", ")}; owner changes per version: ${versions.slice(1).map((v, i) => {
    const a = byVersion.get(versions[i]!)!.owners
    const b = byVersion.get(v)!.owners
    const moved = a.flatMap((o, p) => (o !== b[p] ? [`${o}>${b[p]}`] : []))
    const tally = new Map<string, number>()
    for (const m of moved) tally.set(m, (tally.get(m) ?? 0) + 1)
    return `v${v}: ${moved.length === 0 ? "none" : [...tally].map(([m, k]) => `${m} x${k}`).join(" ")}`
  }).join("; ")}`)
  t.ok(versions.length >= 2, "the watcher saw the ring change")
  t.same(bad.slice(0, 20), [], `no partition moved to an old member (${bad.length} such moves)`)
  t.same(conflicts.slice(0, 5), [], "no ring version was seen with two different owner lists")
  t.ok([...byVersion.values()].every((s) => s.owners.every((o) => OLD.has(o) || JOINERS.has(o))), "only n1..n5 ever own partitions")

  // Strict reads and writes throughout, and every acknowledged key where it belongs.
  // A missing read (404) after a two-joiner move was a bug: old replicas dropped the
  // partition while a joiner still read from them (fixed: drops wait for every member).
  const missing = r.anomalies.filter((x) => / 404, /.test(x))
  const stale = r.anomalies.filter((x) => !/ 404, /.test(x))
  t.same(missing.slice(0, 10), [], `${r.reads} strict reads, ${r.writes} strict writes (${r.failed} failed: ${r.reasons || "none"}), no missing read (${missing.length})`)
  // No stale read either. A coordinator still on the moving version and one that has adopted
  // the switch used to count quorums in different replica sets (about one gossip round after
  // a switch, a strict read could return an older value); while a partition's replicas move,
  // quorums count in the current and the next set both (ClusterState.quorumSets).
  t.same(stale.slice(0, 10), [], `no stale read (${stale.length})`)
  const check = await checkAcked(c.nodes, h, c.n)
  t.same(check.unreadable.slice(0, 10), [], `every one of ${h.acked.size} acknowledged keys readable with r=2&sloppy=false (${check.unreadable.length} not)`)
  t.same(check.missing.slice(0, 10), [], `every acknowledged key on each of its ${c.n} owners (${check.missing.length} copies missing)`)

  // Each missed read against the ring versions the watcher saw: the reader's when it read, the
  // writer's when it acknowledged, and the key's preference list in each.
  const versionAt = (id: string, abs: number) => perNode.get(id)?.findLast((s) => s.at <= abs - t0)
  for (const a of r.details) {
    const rv = versionAt(a.via, a.sentAt)
    const wv = a.want.via === undefined ? undefined : versionAt(a.want.via, a.want.ackedAt!)
    const prefsIn = (s: Seen | undefined) => {
      if (s === undefined) return "?"
      const ring = { partitions: q, owners: s.owners, version: 0, members: [...new Set(s.owners)].sort() }
      return preferenceList(ring, partitionOf(a.key, q), c.n).join(",")
    }
    const others = c.nodes.map((x) => {
      const s = versionAt(x.id, a.sentAt)
      return `${x.id} v${s?.version ?? "?"}${s?.settled ? "" : "*"}`
    })
    t.comment(`missed read of ${a.key} (partition ${partitionOf(a.key, q)}): reader ${a.via} at ${a.sentAt - t0}..${a.answeredAt - t0} ms on v${rv?.version}${rv?.settled ? "" : "*"} (replicas ${prefsIn(rv)}); ` +
      `acknowledged by ${a.want.via ?? "?"} at ${(a.want.ackedAt ?? t0) - t0} ms on v${wv?.version ?? "?"} (replicas ${prefsIn(wv)}); ` +
      `replicas by version: ${versions.map((v) => `v${v} ${prefsIn(byVersion.get(v))}`).join(", ")}; ` +
      `versions when the read was sent (last poll before it; * = moving): ${others.join(", ")}; ${a.diagnosis ?? ""}`)
  }

  if (!t.passing()) {
    for (const [id, seq] of perNode) t.comment(`${id} saw: ${seq.map((s) => `v${s.version}${s.settled ? "" : "*"}@${s.at}`).join(" ")}`)
    dumpLogs(t, c)
  }
})

/**
 * Deletes that stay deleted, black-box with real processes (CONTRACT.md, "Anti-entropy and
 * deletes"): a tombstone is reaped only once every primary holds it, no parked write or
 * transfer of its partition is pending anywhere, a clean exchange has run since the delete,
 * and the grace (here 1 s) has passed. Each case deletes keys while one replica holds the old
 * values and cannot learn of the delete, tries to reap then (`POST /admin/compact`), heals,
 * and checks that no replica holds a live version of a deleted key; with grace-only reaping
 * the survivors would drop their tombstones and anti-entropy would copy the old values back.
 * Each case then checks that the tombstones do go once the conditions hold.
 *
 * Records in a node's active segment are not compacted (only sealed segments are), and the
 * newest record is never dropped: so before asking for a compaction, a node is restarted
 * (which seals its active segment) and given one newer write (`seal`).
 */
import * as fs from "node:fs"
import * as path from "node:path"
import t, { type Test } from "tap"
import { clusterView, eventually, faults, get, newHistory, preload, put, settledOn, startCluster, type Cluster, type ClusterNode } from "./harness.ts"

const KEYS = 200
const EXTRA = ["--partitions", "8", "--aae-interval", "50", "--tombstone-grace", "1"]
const HEAL_MS = 90_000

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** Runs `f` over `items`, `parallel` at a time. */
const pool = async <A>(items: ReadonlyArray<A>, parallel: number, f: (a: A) => Promise<void>) => {
  let next = 0
  await Promise.all(Array.from({ length: parallel }, async () => {
    for (let i = next++; i < items.length; i = next++) await f(items[i]!)
  }))
}

/** Deletes every key through `via`, with the context a read returned (so the tombstone covers the value). */
const deleteAll = async (via: ClusterNode, keys: ReadonlyArray<string>) => {
  const failures: string[] = []
  await pool(keys, 16, async (key) => {
    const r = await get(via, key, "?r=2")
    const res = await fetch(`${via.url}/kv/${encodeURIComponent(key)}?w=2`, { method: "DELETE", headers: r.context === undefined ? {} : { "x-context": r.context } })
    if (res.status !== 204) failures.push(`${key}: ${res.status} ${await res.text()}`)
  })
  return failures
}

interface Local { found: boolean; versions?: Array<{ deleted: boolean }> }
const local = async (node: ClusterNode, key: string): Promise<Local> => (await fetch(`${node.url}/admin/local/${encodeURIComponent(key)}`)).json() as Promise<Local>

/** How many of `keys` `node` holds at all, and how many with a live (not deleted) version. */
const held = async (node: ClusterNode, keys: ReadonlyArray<string>) => {
  let found = 0
  let live = 0
  await pool(keys, 16, async (key) => {
    const l = await local(node, key)
    if (l.found) found++
    if (l.found && (l.versions ?? []).some((v) => !v.deleted)) live++
  })
  return { found, live }
}

const metric = async (node: ClusterNode, name: string): Promise<number> => {
  const text = await (await fetch(`${node.url}/metrics`)).text()
  const m = new RegExp(`^${name} (\\S+)$`, "m").exec(text)
  return m === null ? NaN : Number(m[1])
}

const keysOf = async (node: ClusterNode): Promise<number> => ((await (await fetch(`${node.url}/health`)).json()) as { keys: number }).keys

/**
 * Asks `node` for a compaction and resolves to the tombstones it reaped. With `ran`, waits for
 * it to finish (it must have sealed segments to work on); otherwise gives it 5 s at most,
 * since a node with nothing sealed left to compact finishes without counting a compaction.
 */
const compact = async (node: ClusterNode, ran = true): Promise<number> => {
  const before = await metric(node, "tally_engine_compactions_total")
  const dropped = await metric(node, "tally_engine_dropped_tombstones_total")
  const res = await fetch(`${node.url}/admin/compact`, { method: "POST" })
  if (res.status !== 202) throw new Error(`POST /admin/compact on ${node.id}: ${res.status}`)
  const done = eventually(`a compaction on ${node.id}`, async () => ((await metric(node, "tally_engine_compactions_total")) > before ? true : undefined), ran ? 20_000 : 5_000)
  await (ran ? done : done.catch(() => undefined))
  return (await metric(node, "tally_engine_dropped_tombstones_total")) - dropped
}

interface AaeView {
  partitions: Array<{ partition: number; root: number; cleanSince: Record<string, string>; reapBlocked: string | null }>
}
const aae = async (node: ClusterNode): Promise<AaeView> => (await fetch(`${node.url}/admin/aae`)).json() as Promise<AaeView>
const roots = async (node: ClusterNode) => (await aae(node)).partitions.map((p) => `${p.partition}:${p.root}`).join(",")
const treesEqual = (nodes: ReadonlyArray<ClusterNode>, what: string) =>
  eventually(what, async () => {
    const rs = await Promise.all(nodes.map(roots))
    return rs.every((r) => r === rs[0]) ? true : undefined
  }, HEAL_MS)

/** Cuts `node` off from each of `from`, on both sides. */
const isolate = async (node: ClusterNode, from: ReadonlyArray<ClusterNode>) => {
  await faults(node, from.map((x) => x.id))
  for (const other of from) await faults(other, [node.id])
}

/** Waits until `viewer` has had a clean exchange with `peer`, begun after `since`, in every partition. */
const cleanWith = (viewer: ClusterNode, peer: ClusterNode, since: number) =>
  eventually(`${viewer.id} to exchange with ${peer.id}`, async () => {
    const ps = (await aae(viewer)).partitions
    return ps.length > 0 && ps.every((p) => p.cleanSince[peer.id] !== undefined && Date.parse(p.cleanSince[peer.id]!) >= since) ? true : undefined
  }, HEAL_MS)

const statusOf = async (viewer: ClusterNode, id: string) => (await clusterView(viewer)).nodes.find((m) => m.id === id)?.status

let sentinels = 0
/** Restarts `node` (sealing its active segment), reapplies its faults, and writes one record newer than every tombstone. */
const seal = async (c: Cluster, node: ClusterNode, drop: ReadonlyArray<ClusterNode> = []) => {
  await c.kill(node, "SIGTERM")
  await c.start(node)
  if (drop.length > 0) await faults(node, drop.map((x) => x.id))
  const key = `sentinel-${node.id}-${++sentinels}`
  const res = await put(node, key, "s", "?w=1")
  if (res.status !== 204) throw new Error(`sentinel on ${node.id}: ${res.status} ${await res.text()}`)
  await eventually(`${key} on ${node.id}`, async () => ((await local(node, key)).found ? true : undefined))
}

/** Compacts every node until none holds any of `keys`: the tombstones went once the conditions held. */
const reapedEverywhere = async (t: Test, nodes: ReadonlyArray<ClusterNode>, keys: ReadonlyArray<string>) => {
  const t0 = Date.now()
  await eventually("every tombstone reaped on every node", async () => {
    for (const node of nodes) await compact(node, false)
    const counts = await Promise.all(nodes.map((n) => held(n, keys)))
    return counts.every((x) => x.found === 0) ? true : undefined
  }, HEAL_MS)
  t.pass(`every node reaped all ${keys.length} tombstones, ${Date.now() - t0} ms after the conditions could hold`)
  // Nothing comes back: anti-entropy keeps running between replicas that all dropped the key.
  await sleep(3_000)
  for (const node of nodes) {
    t.same(await held(node, keys), { found: 0, live: 0 }, `${node.id} still holds none of the deleted keys after more exchanges`)
    let readable = 0
    for (const key of keys) if ((await get(node, key, "?r=2")).status !== 404) readable++
    t.equal(readable, 0, `every deleted key reads 404 through ${node.id}`)
  }
}

/** Writes KEYS keys with w=3 and returns them. */
const writeKeys = async (t: Test, c: Cluster, prefix: string) => {
  const h = newHistory()
  t.same(await preload(h, c.nodes, KEYS, { prefix, w: 3 }), [], `${KEYS} keys written with w=3`)
  return [...h.acked.keys()]
}

t.test("a replica cut off during the deletes, then healed: the deleted keys stay deleted", async (t) => {
  const root = t.testdir()
  const c = await startCluster(root, 3, { extra: EXTRA })
  t.teardown(() => c.stopAll())
  const [n1, n2, n3] = c.nodes as [ClusterNode, ClusterNode, ClusterNode]
  const keys = await writeKeys(t, c, "cut")
  await isolate(n3, [n1, n2])
  await eventually("n1 to see n3 down", async () => ((await statusOf(n1, "n3")) !== "up" ? true : undefined))
  t.same(await deleteAll(n1, keys), [], `${KEYS} keys deleted through n1 while n3 is cut off`)
  t.same(await held(n3, keys), { found: KEYS, live: KEYS }, "n3 still holds every old value")
  t.ok((await clusterView(n1)).nodes.find((m) => m.id === "n3")!.parked > 0, "n1 parked the deletes for n3")

  // Try to reap on the two replicas that hold the tombstones, while n3 cannot have them.
  await seal(c, n1, [n3])
  await seal(c, n2, [n3])
  await sleep(1_500)
  t.equal(await compact(n1), 0, "n1 reaps nothing: n3 lacks the tombstones and n1 parks writes for it")
  t.equal(await compact(n2), 0, "n2 reaps nothing either")
  const blocked = (await aae(n2)).partitions.filter((p) => p.reapBlocked !== null).length
  t.equal(blocked, 8, "/admin/aae on n2 says reaping is blocked in every partition")

  // Heal n3 with n2 only: n1, holding the parked deletes, stays cut off from it.
  await faults(n3, ["n1"])
  await faults(n2, [])
  await treesEqual([n2, n3], "n2 and n3 to converge")
  t.same(await held(n2, keys), { found: KEYS, live: 0 }, "n2 holds every tombstone, no old value came back")
  t.same(await held(n3, keys), { found: KEYS, live: 0 }, "n3 took the tombstones over its old values")
  t.equal(await compact(n2), 0, "n2 still reaps nothing while n1 parks writes of those partitions")

  await faults(n3, [])
  await faults(n1, [])
  await eventually("n1's parked writes delivered", async () => ((await clusterView(n1)).nodes.find((m) => m.id === "n3")!.parked === 0 ? true : undefined), HEAL_MS)
  await treesEqual([n1, n2, n3], "all three to converge")
  for (const node of [n1, n2, n3]) t.equal((await held(node, keys)).live, 0, `${node.id} holds no live version of a deleted key`)
  await seal(c, n3)
  await reapedEverywhere(t, [n1, n2, n3], keys)
})

t.test("the coordinator of the deletes and its parked writes lost, then heal: the deleted keys stay deleted", async (t) => {
  const root = t.testdir()
  const c = await startCluster(root, 3, { extra: EXTRA })
  t.teardown(() => c.stopAll())
  const [n1, n2, n3] = c.nodes as [ClusterNode, ClusterNode, ClusterNode]
  const keys = await writeKeys(t, c, "lost")
  await isolate(n3, [n1, n2])
  await eventually("n2 to see n3 down", async () => ((await statusOf(n2, "n3")) !== "up" ? true : undefined))
  t.same(await deleteAll(n2, keys), [], `${KEYS} keys deleted through n2 while n3 is cut off`)
  t.ok((await clusterView(n2)).nodes.find((m) => m.id === "n3")!.parked > 0, "n2 parked the deletes for n3")

  // The coordinator dies with its disk: its tombstones and the deletes it parked for n3 are gone.
  await c.kill(n2, "SIGKILL")
  fs.rmSync(path.join(root, n2.id), { recursive: true, force: true })
  await seal(c, n1, [n3])
  await sleep(1_500)
  t.equal(await compact(n1), 0, "n1, the only holder of the tombstones, reaps none of them")

  const restarted = Date.now()
  await c.start(n2)
  // Anti-entropy does not push a tombstone past its grace to a replica without the key, so the
  // wiped n2 may stay without them; what matters is that n1 keeps its own.
  await cleanWith(n1, n2, restarted)
  t.equal((await held(n2, keys)).live, 0, "the wiped n2 holds no old value")
  t.equal(await compact(n1), 0, "n1 still reaps nothing: n3 has not had the tombstones")

  await faults(n3, [])
  await faults(n1, [])
  await treesEqual([n1, n3], "n1 and n3 to converge once n3 is back")
  await eventually("no live version of a deleted key anywhere", async () => {
    const counts = await Promise.all([n1, n2, n3].map((n) => held(n, keys)))
    return counts.every((x) => x.live === 0) ? true : undefined
  }, HEAL_MS)
  t.same(await held(n3, keys), { found: KEYS, live: 0 }, "n3 took the tombstones over its old values")
  t.same(await held(n1, keys), { found: KEYS, live: 0 }, "n1 kept every tombstone")
  await seal(c, n2)
  await seal(c, n3)
  await reapedEverywhere(t, [n1, n2, n3], keys)
})

t.test("reaping on the replicas while another is down: after it returns the keys stay deleted", async (t) => {
  const root = t.testdir()
  const c = await startCluster(root, 3, { extra: EXTRA })
  t.teardown(() => c.stopAll())
  const [n1, n2, n3] = c.nodes as [ClusterNode, ClusterNode, ClusterNode]
  const keys = await writeKeys(t, c, "down")
  await c.kill(n3, "SIGTERM")
  await eventually("n2 to see n3 down", async () => ((await statusOf(n2, "n3")) !== "up" ? true : undefined))
  t.same(await deleteAll(n2, keys), [], `${KEYS} keys deleted through n2 while n3 is down`)

  await seal(c, n1)
  await seal(c, n2)
  await sleep(1_500)
  t.equal(await compact(n1), 0, "n1 reaps nothing while n3 is down")
  t.equal(await compact(n2), 0, "nor does n2")

  // n3 returns with its old values. n2's parked deletes are held back (n2 cannot reach it), so
  // only anti-entropy with n1 tells n3 of the deletes.
  await faults(n2, ["n3"])
  await c.start(n3)
  await faults(n3, ["n2"])
  await treesEqual([n1, n3], "n1 and n3 to converge")
  t.same(await held(n1, keys), { found: KEYS, live: 0 }, "n1 holds every tombstone, no old value came back")
  t.same(await held(n3, keys), { found: KEYS, live: 0 }, "n3 took the tombstones over its old values")

  await faults(n2, [])
  await faults(n3, [])
  await eventually("n2's parked writes delivered", async () => ((await clusterView(n2)).nodes.find((m) => m.id === "n3")!.parked === 0 ? true : undefined), HEAL_MS)
  await treesEqual([n1, n2, n3], "all three to converge")
  await seal(c, n3)
  await reapedEverywhere(t, [n1, n2, n3], keys)
})

t.test("tombstones a removed primary never got go once it is removed", async (t) => {
  const root = t.testdir()
  const c = await startCluster(root, 3, { extra: EXTRA })
  t.teardown(() => c.stopAll())
  const [n1, n2, n3] = c.nodes as [ClusterNode, ClusterNode, ClusterNode]
  const keys = await writeKeys(t, c, "gone")
  await c.kill(n3, "SIGKILL")
  await eventually("n1 to see n3 down", async () => ((await statusOf(n1, "n3")) === "down" ? true : undefined), 30_000)
  t.same(await deleteAll(n1, keys), [], `${KEYS} keys deleted through n1 while n3 is down`)
  await seal(c, n1)
  await seal(c, n2)
  await sleep(1_500)
  t.equal(await compact(n1), 0, "n1 keeps every tombstone while n3 is a primary")
  t.equal(await compact(n2), 0, "so does n2")
  t.ok((await keysOf(n1)) >= KEYS, "n1 still indexes every deleted key")

  const res = await fetch(`${n1.url}/admin/remove`, { method: "POST", body: JSON.stringify({ node: "n3" }), headers: { "content-type": "application/json" } })
  t.equal(res.status, 202, "n3 removed")
  await settledOn([n1, n2], 2)
  await reapedEverywhere(t, [n1, n2], keys)
})

/**
 * What the deletes tests share (deletes.test.ts, deletes-down.test.ts): deleting with
 * contexts, looking at what each replica holds (/admin/local), asking for compactions and
 * seeing what they reaped, waiting for anti-entropy to converge, and sealing a node's active
 * segment so its tombstones can be compacted at all.
 *
 * Records in a node's active segment are not compacted (only sealed segments are), and the
 * newest record is never dropped: so before asking for a compaction, a node is restarted
 * (which seals its active segment) and given one newer write (`seal`).
 */
import type { Test } from "tap"
import { clusterView, eventually, faults, get, newHistory, preload, put, type Cluster, type ClusterNode } from "./harness.ts"

export const KEYS = 200
export const EXTRA = ["--partitions", "8", "--aae-interval", "50", "--tombstone-grace", "1"]
export const HEAL_MS = 90_000

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** Runs `f` over `items`, `parallel` at a time. */
const pool = async <A>(items: ReadonlyArray<A>, parallel: number, f: (a: A) => Promise<void>) => {
  let next = 0
  await Promise.all(Array.from({ length: parallel }, async () => {
    for (let i = next++; i < items.length; i = next++) await f(items[i]!)
  }))
}

/** Deletes every key through `via`, with the context a read returned (so the tombstone covers the value). */
export const deleteAll = async (via: ClusterNode, keys: ReadonlyArray<string>) => {
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
export const held = async (node: ClusterNode, keys: ReadonlyArray<string>) => {
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

export const keysOf = async (node: ClusterNode): Promise<number> => ((await (await fetch(`${node.url}/health`)).json()) as { keys: number }).keys

/**
 * Asks `node` for a compaction and resolves to the tombstones it reaped. With `ran`, waits for
 * it to finish (it must have sealed segments to work on); otherwise gives it 5 s at most,
 * since a node with nothing sealed left to compact finishes without counting a compaction.
 */
export const compact = async (node: ClusterNode, ran = true): Promise<number> => {
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
export const aae = async (node: ClusterNode): Promise<AaeView> => (await fetch(`${node.url}/admin/aae`)).json() as Promise<AaeView>
const roots = async (node: ClusterNode) => (await aae(node)).partitions.map((p) => `${p.partition}:${p.root}`).join(",")
export const treesEqual = (nodes: ReadonlyArray<ClusterNode>, what: string) =>
  eventually(what, async () => {
    const rs = await Promise.all(nodes.map(roots))
    return rs.every((r) => r === rs[0]) ? true : undefined
  }, HEAL_MS)

/** Cuts `node` off from each of `from`, on both sides. */
export const isolate = async (node: ClusterNode, from: ReadonlyArray<ClusterNode>) => {
  await faults(node, from.map((x) => x.id))
  for (const other of from) await faults(other, [node.id])
}

/** Waits until `viewer` has had a clean exchange with `peer`, begun after `since`, in every partition. */
export const cleanWith = (viewer: ClusterNode, peer: ClusterNode, since: number) =>
  eventually(`${viewer.id} to exchange with ${peer.id}`, async () => {
    const ps = (await aae(viewer)).partitions
    return ps.length > 0 && ps.every((p) => p.cleanSince[peer.id] !== undefined && Date.parse(p.cleanSince[peer.id]!) >= since) ? true : undefined
  }, HEAL_MS)

export const statusOf = async (viewer: ClusterNode, id: string) => (await clusterView(viewer)).nodes.find((m) => m.id === id)?.status

let sentinels = 0
/** Restarts `node` (sealing its active segment), reapplies its faults, and writes one record newer than every tombstone. */
export const seal = async (c: Cluster, node: ClusterNode, drop: ReadonlyArray<ClusterNode> = []) => {
  await c.kill(node, "SIGTERM")
  await c.start(node)
  if (drop.length > 0) await faults(node, drop.map((x) => x.id))
  const key = `sentinel-${node.id}-${++sentinels}`
  const res = await put(node, key, "s", "?w=1")
  if (res.status !== 204) throw new Error(`sentinel on ${node.id}: ${res.status} ${await res.text()}`)
  await eventually(`${key} on ${node.id}`, async () => ((await local(node, key)).found ? true : undefined))
}

/** Compacts every node until none holds any of `keys`: the tombstones went once the conditions held. */
export const reapedEverywhere = async (t: Test, nodes: ReadonlyArray<ClusterNode>, keys: ReadonlyArray<string>) => {
  const t0 = Date.now()
  await eventually("every tombstone reaped on every node", async () => {
    const counts = await Promise.all(nodes.map((n) => held(n, keys)))
    if (counts.every((x) => x.found === 0)) return true
    for (const [i, node] of nodes.entries()) if (counts[i]!.found > 0) await compact(node, false)
    return undefined
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
export const writeKeys = async (t: Test, c: Cluster, prefix: string) => {
  const h = newHistory()
  t.same(await preload(h, c.nodes, KEYS, { prefix, w: 3 }), [], `${KEYS} keys written with w=3`)
  return [...h.acked.keys()]
}


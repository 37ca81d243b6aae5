/**
 * Anti-entropy, black-box with real processes: replicas converge with no client read. The
 * issue's case first: with N=3 on three nodes, wipe two replicas one after the other, then
 * stop the third; every acknowledged key must still be readable from the two survivors.
 * Then divergence made with /admin/faults heals into equal trees.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import t from "tap"
import { faults, get, newHistory, preload, startCluster, type ClusterNode, eventually } from "./harness.ts"

const KEYS = 2000
/** How long a wiped node may take to be refilled by anti-entropy alone (stated bound). */
const REFILL_MS = 90_000
const EXTRA = ["--partitions", "8", "--aae-interval", "50"]

interface AaeView {
  partitions: Array<{ partition: number; root: number; keys: number; keysRepaired: number; exchanges: number }>
}
const aae = async (node: ClusterNode): Promise<AaeView> => (await fetch(`${node.url}/admin/aae`)).json() as Promise<AaeView>
const keysOn = async (node: ClusterNode) => (await aae(node)).partitions.reduce((n, p) => n + p.keys, 0)
const roots = async (node: ClusterNode) => (await aae(node)).partitions.map((p) => `${p.partition}:${p.root}`).join(",")

t.test("a wiped replica is refilled by anti-entropy alone, twice, and the last survivor is not needed", async (t) => {
  const root = t.testdir()
  const c = await startCluster(root, 3, { extra: EXTRA })
  t.teardown(() => c.stopAll())
  const [n1, n2, n3] = c.nodes as [ClusterNode, ClusterNode, ClusterNode]
  const h = newHistory()
  t.same(await preload(h, c.nodes, KEYS, { prefix: "aae", w: 3 }), [], `${KEYS} keys written with w=3`)
  /** Keys repaired by every node's exchanges: counted by the node that started an exchange, whichever side it repaired. */
  const repairedInAll = async () => (await Promise.all(c.nodes.map(aae))).reduce((n, v) => n + v.partitions.reduce((m, p) => m + p.keysRepaired, 0), 0)
  for (const victim of [n1, n2]) {
    const others = c.nodes.filter((x) => x !== victim)
    const before = (await Promise.all(others.map(aae))).reduce((n, v) => n + v.partitions.reduce((m, p) => m + p.keysRepaired, 0), 0)
    await c.kill(victim)
    fs.rmSync(path.join(root, victim.id), { recursive: true, force: true })
    await c.start(victim)
    const t0 = Date.now()
    // No client read: only anti-entropy can bring the keys back.
    await eventually(`${victim.id} refilled`, async () => ((await keysOn(victim)) >= KEYS ? true : undefined), REFILL_MS)
    t.pass(`${victim.id} held all ${KEYS} keys again ${Date.now() - t0} ms after restarting empty (bound ${REFILL_MS} ms)`)
    // The victim's count alone can be 0: its peers may have started every exchange with it.
    const repaired = (await repairedInAll()) - before
    t.ok(repaired >= KEYS, `anti-entropy repaired ${repaired} keys since ${victim.id} was wiped, by its own exchanges or its peers'`)
  }
  await c.kill(n3)
  let unreadable = 0
  for (const [key, want] of h.acked) {
    const r = await get(key.length % 2 === 0 ? n1 : n2, key, "?r=2")
    if (!r.values.includes(want.value)) unreadable++
  }
  t.equal(unreadable, 0, `every one of ${h.acked.size} acknowledged keys readable from the two rebuilt nodes with r=2`)
})

t.test("replicas diverged by a partition converge to equal trees without reads", async (t) => {
  const root = t.testdir()
  const c = await startCluster(root, 3, { extra: EXTRA })
  t.teardown(() => c.stopAll())
  const [n1, n2, n3] = c.nodes as [ClusterNode, ClusterNode, ClusterNode]
  await eventually("trees equal at the start", async () => ((await roots(n1)) === (await roots(n3)) ? true : undefined))
  // n3 is cut off from both others; writes and overwrites land on n1 and n2 only.
  await faults(n3, ["n1", "n2"])
  await faults(n1, ["n3"])
  await faults(n2, ["n3"])
  const h = newHistory()
  t.same(await preload(h, [n1, n2], 300, { prefix: "split", w: 2 }), [], "300 keys written with w=2 while n3 is cut off")
  t.not(await roots(n1), await roots(n3), "n3's trees differ from n1's")
  await faults(n1, [])
  await faults(n2, [])
  await faults(n3, [])
  await eventually("every replica's trees equal", async () => {
    const [a, b, d] = await Promise.all([roots(n1), roots(n2), roots(n3)])
    return a === b && b === d ? true : undefined
  }, REFILL_MS)
  let missing = 0
  for (const key of h.acked.keys()) {
    const r = (await (await fetch(`${n3.url}/admin/local/${encodeURIComponent(key)}`)).json()) as { found: boolean }
    if (!r.found) missing++
  }
  t.equal(missing, 0, `n3 holds every one of ${h.acked.size} keys written while it was cut off, none read by a client`)
})

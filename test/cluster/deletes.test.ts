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
 * This file: a replica cut off during the deletes, and the coordinator of the deletes lost
 * with its disk. deletes-down.test.ts: replicas reaping while another is down, and a removed
 * primary.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import t from "tap"
import { clusterView, eventually, faults, startCluster, type ClusterNode } from "./harness.ts"
import { aae, cleanWith, compact, deleteAll, EXTRA, HEAL_MS, held, isolate, KEYS, reapedEverywhere, seal, sleep, statusOf, treesEqual, writeKeys } from "./tombstones.ts"

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
  // Parked by the hedge, up to 250 ms after a delete the other two may already have answered.
  t.ok(await eventually("n1 to park the deletes for n3", async () => ((await clusterView(n1)).nodes.find((m) => m.id === "n3")!.parked > 0 ? true : undefined), 10_000), "n1 parked the deletes for n3")

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
  // A silent replica's copy is parked by the hedge, a quarter of the timeout (250 ms at most)
  // after the delete, which may already have been answered by the other two.
  t.ok(await eventually("n2 to park the deletes for n3", async () => ((await clusterView(n2)).nodes.find((m) => m.id === "n3")!.parked > 0 ? true : undefined), 10_000), "n2 parked the deletes for n3")

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

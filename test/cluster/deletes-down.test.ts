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
 * This file: replicas reaping while another is down, and a primary that is removed.
 * deletes.test.ts: a replica cut off during the deletes, and the coordinator lost.
 */
import t from "tap"
import { clusterView, eventually, faults, settledOn, startCluster, type ClusterNode } from "./harness.ts"
import { compact, deleteAll, HEAL_MS, held, keysOf, KEYS, EXTRA, reapedEverywhere, seal, sleep, statusOf, treesEqual, writeKeys } from "./tombstones.ts"

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

  // n1 was restarted by its seal and starts optimistic (a known member counts as up until the
  // failure detector says otherwise, Membership.ts), and a remove of a node that is up is
  // refused: wait, as an operator would, until it sees n3 down again.
  await eventually("n1 to see n3 down after its restart", async () => ((await statusOf(n1, "n3")) === "down" ? true : undefined), 30_000)
  const res = await fetch(`${n1.url}/admin/remove`, { method: "POST", body: JSON.stringify({ node: "n3" }), headers: { "content-type": "application/json" } })
  t.equal(res.status, 202, `n3 removed: ${await res.clone().text()}`)
  await settledOn([n1, n2], 2)
  await reapedEverywhere(t, [n1, n2], keys)
})

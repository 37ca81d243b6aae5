/**
 * A fallback pushes what it parks to the primaries that are up (aae/HintExchange.ts), black
 * box with real processes: a lost hint is repaired from another fallback's copy before that
 * copy's own owner returns.
 *
 * Five nodes, N=3. All three primaries of a key are killed; a w=2 write parks copies on the two
 * other nodes (the coordinator parks for every owner, the other fallback for one or two). The
 * coordinator is then killed with its disk wiped (its hints are gone), and the primaries come
 * back except those the surviving fallback parks for. Handoff alone never brings the write to the returned
 * primaries (it ships only to the owner it parked for, who is still down); the fallback's
 * push must, within PUSH_MS, and the parked copy must still reach its owner afterwards.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import t from "tap"
import { clusterView, eventually, get, prefsOf, put, startCluster, type ClusterNode } from "./harness.ts"

/** How long the surviving fallback may take to push the write to the primaries that are back (stated bound). */
const PUSH_MS = 30_000

const local = async (node: ClusterNode, key: string) =>
  ((await (await fetch(`${node.url}/admin/local/${encodeURIComponent(key)}`)).json()) as { found: boolean }).found

/** Owner id -> writes `node` parks for it (GET /admin/cluster). */
const parkedOn = async (node: ClusterNode): Promise<Map<string, number>> =>
  new Map((await clusterView(node)).nodes.filter((m) => m.parked > 0).map((m) => [m.id, m.parked]))

t.test("a write held only by fallbacks reaches the returned primaries though the fallback parked for one of them is wiped", async (t) => {
  const root = t.testdir()
  const c = await startCluster(root, 5, { extra: ["--partitions", "8", "--aae-interval", "50"] })
  t.teardown(() => c.stopAll())
  const key = "cart-1"
  const primaries = (await prefsOf(c.nodes[0]!, key, 3)).map((id) => c.byId(id))
  const fallbacks = c.nodes.filter((x) => !primaries.includes(x))
  t.equal(fallbacks.length, 2, `primaries ${primaries.map((x) => x.id)}, fallbacks ${fallbacks.map((x) => x.id)}`)

  for (const p of primaries) await c.kill(p)
  await eventually("the fallbacks to see all three primaries down", async () => {
    const views = await Promise.all(fallbacks.map(clusterView))
    return views.every((v) => primaries.every((p) => v.nodes.find((m) => m.id === p.id)?.status === "down")) ? true : undefined
  }, 30_000)
  const res = await put(fallbacks[0]!, key, "milk", "?w=2")
  t.equal(res.status, 204, "the write is acknowledged by the two fallbacks (sloppy quorum)")

  // What each fallback parks, for which owners (the coordinator may park for all three).
  const [lost, kept] = fallbacks as [ClusterNode, ClusterNode]
  const parkedLost = await parkedOn(lost)
  const parkedKept = await parkedOn(kept)
  t.ok(parkedLost.size >= 1 && parkedKept.size >= 1, `both fallbacks park a copy: ${lost.id} for ${[...parkedLost.keys()]}, ${kept.id} for ${[...parkedKept.keys()]}`)
  // The primaries `kept` parks nothing for: their copies were parked on `lost` alone.
  const back = primaries.filter((p) => !parkedKept.has(p.id))
  const stillDown = primaries.filter((p) => parkedKept.has(p.id))
  t.ok(back.length >= 1, `${back.map((p) => p.id)} have no copy parked on ${kept.id}`)

  // The hints on `lost` are gone with its disk; `lost` stays down. The primaries `kept` parks
  // for stay down too, so handoff has nowhere to ship: only the push can reach `back`.
  await c.kill(lost)
  fs.rmSync(path.join(root, lost.id), { recursive: true, force: true })
  for (const p of back) await c.start(p)

  const t0 = Date.now()
  await eventually(`${back.map((p) => p.id)} to hold the write`, async () => ((await Promise.all(back.map((p) => local(p, key)))).every(Boolean) ? true : undefined), PUSH_MS)
  t.pass(`${kept.id} pushed its parked copy to ${back.map((p) => p.id)} in ${Date.now() - t0} ms (bound ${PUSH_MS} ms), with ${stillDown.map((p) => p.id)} still down`)
  const read = await get(back[0]!, key, `?r=${back.length}&sloppy=false`)
  t.same([read.status, read.values], [200, ["milk"]], `a strict read of the returned primaries (r=${back.length}) answers the write`)
  t.same(await parkedOn(kept), parkedKept, `${kept.id} still parks its copies: the push does not stand in for handoff`)

  const view = (await (await fetch(`${kept.url}/admin/aae`)).json()) as { fallbacks: Array<{ partition: number; parked: number; keysRepaired: number }> }
  const pushed = view.fallbacks.reduce((n, f) => n + f.keysRepaired, 0)
  t.ok(pushed >= 1, `GET /admin/aae on ${kept.id} lists its pushes: ${JSON.stringify(view.fallbacks)}`)
  const metrics = await (await fetch(`${kept.url}/metrics`)).text()
  t.match(metrics, /tally_aae_fallback_keys_pushed_total\{partition="\d+"\} [1-9]/, "and /metrics counts the pushed keys")

  // The owners return: handoff delivers the parked copies and the parked logs go.
  for (const p of stillDown) await c.start(p)
  await eventually(`${kept.id} to hand its copies to ${stillDown.map((p) => p.id)}`, async () => ((await parkedOn(kept)).size === 0 && (await Promise.all(stillDown.map((p) => local(p, key)))).every(Boolean) ? true : undefined), 60_000)
  t.pass(`${stillDown.map((p) => p.id)} hold the write and ${kept.id} parks nothing`)
})

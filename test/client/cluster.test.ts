/**
 * TallyClient against a real 3-node cluster: shopping carts grown by concurrent `update`
 * loops with a set-union resolver, while one node is killed with SIGKILL mid-run and later
 * restarted. Every add whose update resolved must be in the cart at the end: siblings made by
 * concurrent writers are merged, not lost, and the client moves past the dead node.
 */
import t from "tap"
import { hasSiblings, TallyClient, text, type TallySibling } from "tally/client"
import { startCluster } from "../cluster/harness.ts"

const union = (siblings: ReadonlyArray<TallySibling>) =>
  JSON.stringify([...new Set(siblings.flatMap((s) => JSON.parse(text(s.value)) as Array<string>))].sort())

const add = (item: string) => (current: Uint8Array | undefined) =>
  JSON.stringify([...new Set([...(current === undefined ? [] : (JSON.parse(text(current)) as Array<string>)), item])].sort())

t.test("update loops lose no acknowledged add while a node is killed and restarted", async (t) => {
  const cluster = await startCluster(t.testdir(), 3)
  t.teardown(() => cluster.stopAll())
  const client = new TallyClient({ nodes: cluster.nodes.map((n) => n.url), retry: { attempts: 8, deadlineMs: 60_000 } })

  const carts = ["cart-a", "cart-b"]
  const acked = new Map<string, Set<string>>(carts.map((c) => [c, new Set()]))
  const failed: Array<string> = []
  let stop = false
  let updates = 0
  // Four shoppers per cart, each adding its own items one update at a time.
  const shopper = async (cart: string, who: number) => {
    for (let i = 0; !stop; i++) {
      const item = `${who}-${i}`
      try {
        await client.update(cart, add(item), { resolve: union })
        acked.get(cart)!.add(item)
        updates++
      } catch (e) {
        failed.push(`${cart} ${item}: ${(e as Error).message}`)
      }
    }
  }
  const shoppers = carts.flatMap((cart) => [0, 1, 2, 3].map((who) => shopper(cart, who)))

  const victim = cluster.nodes[1]!
  await new Promise((r) => setTimeout(r, 3_000))
  const before = updates
  await cluster.kill(victim, "SIGKILL")
  await new Promise((r) => setTimeout(r, 6_000))
  const whileDown = updates
  await cluster.start(victim)
  await new Promise((r) => setTimeout(r, 3_000))
  stop = true
  await Promise.all(shoppers)

  t.ok(before > 0, `${before} updates before the kill`)
  t.ok(whileDown > before, `updates went on while ${victim.id} was down (${whileDown - before})`)
  t.same(failed, [], "no update failed: each moved past the dead node")
  for (const cart of carts) {
    const found = await client.get(cart, { r: "all" })
    t.ok(found !== undefined, `${cart} exists`)
    if (found === undefined) continue
    const items = new Set<string>(hasSiblings(found) ? (JSON.parse(union(found.siblings)) as Array<string>) : (JSON.parse(text(found.value)) as Array<string>))
    const lost = [...acked.get(cart)!].filter((x) => !items.has(x))
    t.same(lost, [], `${cart}: all ${acked.get(cart)!.size} acknowledged adds are there`)
  }
})

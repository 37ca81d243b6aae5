/**
 * A whole cluster in one process: three nodes on in-memory files over the simulated
 * network (MemoryNetwork), driven through their HTTP apps with inject. The same services as
 * a real node, only the Files and Transport layers swapped.
 */
import t from "tap"
import { MemoryNetwork } from "../../src/transport/Transport.ts"
import { assembleNode, type AssembledNode } from "../../src/node/Node.ts"
import { quiet, testSettings } from "../api/helpers.ts"
import { eventually } from "./harness.ts"

t.test("three nodes over a simulated network: join, replicate, partition, hand off, heal", async (t) => {
  const network = new MemoryNetwork()
  const nodes: AssembledNode[] = []
  t.teardown(() => Promise.all(nodes.map((n) => n.close())))
  for (const id of ["n1", "n2", "n3"]) {
    nodes.push(await assembleNode(testSettings({ id, data: `/data/${id}`, logLevel: "silent" }), { memory: true, network, logStream: quiet(), ...(id === "n1" ? {} : { seedIds: ["n1"] }) }))
  }
  const [a, b, c] = nodes as [AssembledNode, AssembledNode, AssembledNode]
  const view = async (n: AssembledNode) => (await n.app.inject({ method: "GET", url: "/admin/cluster" })).json() as { nodes: Array<{ id: string; status: string; parked: number }>; owners: string[] }
  await eventually("a ring of three, all up, seen by all", async () => {
    const vs = await Promise.all(nodes.map(view))
    return vs.every((v) => v.nodes.length === 3 && v.nodes.every((m) => m.status === "up") && v.owners.join() === vs[0]!.owners.join()) ? true : undefined
  })
  t.equal((await a.app.inject({ method: "PUT", url: "/kv/k", payload: "v1" })).statusCode, 204)
  t.equal((await c.app.inject({ method: "GET", url: "/kv/k?r=3" })).body, "v1", "replicated to all three")

  network.partition("n3", ["n1", "n2"])
  await eventually("n3 to be seen down", async () => ((await view(a)).nodes.find((m) => m.id === "n3")?.status === "down" ? true : undefined))
  for (let i = 0; i < 5; i++) t.equal((await a.app.inject({ method: "PUT", url: `/kv/p${i}`, payload: `v${i}` })).statusCode, 204, `p${i} written while n3 is cut off`)
  const parked = (await view(a)).nodes.find((m) => m.id === "n3")!.parked
  t.equal(parked, 5, "five writes parked for n3")

  network.heal()
  await eventually("the parked writes to reach n3", async () => ((await view(a)).nodes.find((m) => m.id === "n3")?.parked === 0 ? true : undefined))
  network.partition("n3", ["n1", "n2"])
  for (let i = 0; i < 5; i++) {
    const r = await c.app.inject({ method: "GET", url: `/kv/p${i}?r=1` })
    t.equal(r.body, `v${i}`, `n3 holds p${i} itself`)
  }
  void b
})

t.test("a forwarded write gives up within the request's timeout, however many primaries it tries", async (t) => {
  const network = new MemoryNetwork()
  const nodes: AssembledNode[] = []
  t.teardown(() => Promise.all(nodes.map((n) => n.close())))
  const ids = ["m1", "m2", "m3", "m4"]
  for (const id of ids) {
    nodes.push(await assembleNode(testSettings({ id, data: `/data/${id}`, logLevel: "silent" }), { memory: true, network, logStream: quiet(), ...(id === "m1" ? {} : { seedIds: ["m1"] }) }))
  }
  const view = async (n: AssembledNode) => (await n.app.inject({ method: "GET", url: "/admin/cluster" })).json() as { nodes: Array<{ status: string }>; owners: string[] }
  await eventually("a ring of four", async () => {
    const vs = await Promise.all(nodes.map(view))
    return vs.every((v) => v.nodes.length === 4 && v.nodes.every((m) => m.status === "up") && v.owners.join() === vs[0]!.owners.join()) ? true : undefined
  })
  // A key m4 does not replicate, so m4 must forward its write to a primary.
  const { partitionOf, preferenceList } = await import("../../src/ring/Ring.ts")
  const owners = (await view(nodes[3]!)).owners
  const ring = { partitions: owners.length, owners, version: 0, members: [...new Set(owners)].sort() }
  let key = ""
  for (let i = 0; key === ""; i++) if (!preferenceList(ring, partitionOf(`f${i}`, owners.length), 3).includes("m4")) key = `f${i}`
  // Cut m4 off before its failure detector notices: every primary still looks up to it.
  network.partition("m4", ["m1", "m2", "m3"])
  const started = Date.now()
  const res = await nodes[3]!.app.inject({ method: "PUT", url: `/kv/${key}?timeout=300`, payload: "v" })
  const took = Date.now() - started
  t.equal(res.statusCode, 504, "timeout")
  t.equal(res.json().error, "timeout")
  t.ok(took < 800, `answered after ${took} ms, not 3 x 300 ms`)
})

t.test("writes parked for a node that is then removed reach the keys' new replicas", async (t) => {
  const network = new MemoryNetwork()
  const nodes: AssembledNode[] = []
  t.teardown(() => Promise.all(nodes.map((n) => n.close())))
  const ids = ["r1", "r2", "r3", "r4"]
  for (const id of ids) {
    nodes.push(await assembleNode(testSettings({ id, data: `/data/${id}`, logLevel: "silent" }), { memory: true, network, logStream: quiet(), ...(id === "r1" ? {} : { seedIds: ["r1"] }) }))
  }
  type View = { nodes: Array<{ id: string; status: string; parked: number }>; owners: string[]; settled: boolean; ringVersion: number }
  const view = async (n: AssembledNode) => (await n.app.inject({ method: "GET", url: "/admin/cluster" })).json() as View
  const settled = (members: number, on: AssembledNode[]) => eventually(`a settled ring of ${members}`, async () => {
    const vs = await Promise.all(on.map(view))
    return vs.every((v) => v.settled && new Set(v.owners).size === members && v.owners.join() === vs[0]!.owners.join()) ? vs[0] : undefined
  }, 60_000)
  const v0 = await settled(4, nodes)
  const { partitionOf, preferenceList } = await import("../../src/ring/Ring.ts")
  const ring = (v: View) => ({ partitions: v.owners.length, owners: v.owners, version: 0, members: [...new Set(v.owners)].sort() })
  // Keys r4 replicates, written while r4 is cut off: a fallback parks each for it.
  const keys: string[] = []
  for (let i = 0; keys.length < 10; i++) if (preferenceList(ring(v0), partitionOf(`h${i}`, v0.owners.length), 3).includes("r4")) keys.push(`h${i}`)
  network.partition("r4", ["r1", "r2", "r3"])
  const [a] = nodes as [AssembledNode]
  await eventually("r4 to be seen down", async () => ((await view(a)).nodes.find((m) => m.id === "r4")?.status === "down" ? true : undefined))
  for (const k of keys) {
    const res = await a.app.inject({ method: "PUT", url: `/kv/${k}?w=2`, payload: `v-${k}` })
    t.equal(res.statusCode, 204, `${k} acknowledged (${res.body})`)
  }
  const survivors = nodes.slice(0, 3)
  // Every write's copy for r4 is parked somewhere (w=2 answers before the third copy lands).
  const parked = await eventually("the copies for r4 parked", async () => {
    const n = (await Promise.all(survivors.map(view))).reduce((n, v) => n + (v.nodes.find((m) => m.id === "r4")?.parked ?? 0), 0)
    return n >= keys.length ? n : undefined
  })
  t.ok(parked >= keys.length, `${parked} writes parked for r4`)
  t.equal((await a.app.inject({ method: "POST", url: "/admin/remove", payload: JSON.stringify({ node: "r4" }) })).statusCode, 202)
  const v1 = await settled(3, survivors)
  await eventually("nothing left parked for r4", async () => {
    const vs = await Promise.all(survivors.map(view))
    return vs.every((v) => (v.nodes.find((m) => m.id === "r4")?.parked ?? 0) === 0) ? true : undefined
  }, 30_000)
  for (const k of keys) {
    for (const id of preferenceList(ring(v1), partitionOf(k, v1.owners.length), 3)) {
      const node = nodes[ids.indexOf(id)]!
      const local = (await node.app.inject({ method: "GET", url: `/admin/local/${k}` })).json() as { found: boolean; versions?: Array<{ value: string }> }
      t.ok(local.found && local.versions!.some((x) => Buffer.from(x.value, "base64").toString() === `v-${k}`), `${k} on its new replica ${id}`)
    }
  }
})

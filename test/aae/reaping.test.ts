/**
 * Reaping's cutoffs in one process (three nodes on in-memory files over the simulated
 * network): every partition becomes reapable once the primaries have exchanged, a member that
 * stops answering blocks every partition, writes parked anywhere block their partition, and
 * healing lets reaping go on. Then the internode message and its answer are checked like any
 * untrusted input.
 */
import t from "tap"
import { isReapingAnswer, isReapingMessage } from "../../src/aae/Reaping.ts"
import { assembleNode, type AssembledNode } from "../../src/node/Node.ts"
import { partitionOf } from "../../src/ring/Ring.ts"
import { MemoryNetwork } from "../../src/transport/Transport.ts"
import { quiet, testSettings } from "../api/helpers.ts"
import { eventually } from "../cluster/harness.ts"

const Q = 8

interface Aae {
  partitions: Array<{ partition: number; reapBefore: string | null; reapBlocked: string | null }>
  reaping: { tombstoneGraceSeconds: number; members: Array<{ id: string; answeredAt: string | null; parked: number[] }> }
}

t.test("cutoffs follow the members' answers, parked writes and exchanges", async (t) => {
  const network = new MemoryNetwork()
  const nodes: AssembledNode[] = []
  t.teardown(() => Promise.all(nodes.map((n) => n.close())))
  for (const id of ["n1", "n2", "n3"]) {
    nodes.push(await assembleNode(testSettings({ id, data: `/data/${id}`, partitions: Q, compaction: { ...testSettings().compaction, tombstoneGraceMs: 0 } }), {
      memory: true,
      network,
      logStream: quiet(),
      aae: { intervalMs: 20, confirmDelayMs: 20 },
      reaping: { refreshMs: 100, staleMs: 1_000 },
      ...(id === "n1" ? {} : { seedIds: ["n1"] })
    }))
  }
  const [a, b] = nodes as [AssembledNode, AssembledNode, AssembledNode]
  const aae = async (n: AssembledNode) => (await n.app.inject({ method: "GET", url: "/admin/aae" })).json() as Aae
  const view = async (n: AssembledNode) => (await n.app.inject({ method: "GET", url: "/admin/cluster" })).json() as { nodes: Array<{ id: string; status: string; parked: number }>; owners: string[] }
  await eventually("a ring of three, all up", async () => {
    const vs = await Promise.all(nodes.map(view))
    return vs.every((v) => v.nodes.length === 3 && v.nodes.every((m) => m.status === "up") && v.owners.join() === vs[0]!.owners.join()) ? true : undefined
  })

  await eventually("every partition reapable on every node", async () => {
    const vs = await Promise.all(nodes.map(aae))
    return vs.every((v) => v.partitions.length === Q && v.partitions.every((p) => p.reapBlocked === null && p.reapBefore !== null)) ? true : undefined
  })
  const first = await aae(a)
  t.same(first.reaping.members.map((m) => m.id), ["n2", "n3"], "n1 asks the other two")
  t.ok(first.reaping.members.every((m) => m.answeredAt !== null && m.parked.length === 0), "both answered, parking nothing")
  t.equal(first.reaping.tombstoneGraceSeconds, 0)

  network.partition("n3", ["n1", "n2"])
  await eventually("n1 blocked everywhere by n3's silence", async () => {
    const v = await aae(a)
    return v.partitions.every((p) => p.reapBefore === null && /no recent answer from n3/.test(p.reapBlocked ?? "")) ? true : undefined
  })
  t.pass("a member that does not answer blocks reaping in every partition")

  // A write n1 parks for n3 blocks its partition on n1 itself and, through n1's answer, on n2.
  await eventually("n1 to see n3 down", async () => ((await view(a)).nodes.find((m) => m.id === "n3")?.status === "down" ? true : undefined))
  t.equal((await a.app.inject({ method: "PUT", url: "/kv/parked-key", payload: "v" })).statusCode, 204)
  const p = partitionOf("parked-key", Q)
  await eventually("n1 to park the write for n3", async () => ((await view(a)).nodes.find((m) => m.id === "n3")!.parked > 0 ? true : undefined))
  const onA = (await aae(a)).partitions.find((x) => x.partition === p)!
  t.equal(onA.reapBlocked, "writes for it are parked on this node")
  await eventually("n2 to hear of n1's parked write", async () => {
    const v = await aae(b)
    return v.reaping.members.find((m) => m.id === "n1")?.parked.includes(p) ? true : undefined
  })
  t.equal((await aae(b)).partitions.find((x) => x.partition === p)!.reapBlocked, "writes for it are parked on n1", "n2 names the member that parks it")

  network.heal()
  await eventually("the parked write delivered and every partition reapable again", async () => {
    const vs = await Promise.all(nodes.map(aae))
    return vs.every((v) => v.partitions.every((x) => x.reapBlocked === null)) ? true : undefined
  }, 30_000)
  t.pass("healed: every partition reapable on every node")

  // Grace changes live, on the reaping side too.
  a.applyLive({ compaction: { tombstoneGraceMs: 3_600_000 } })
  const later = await aae(a)
  t.equal(later.reaping.tombstoneGraceSeconds, 3600)
  t.ok(later.partitions.every((x) => x.reapBefore !== null && Date.parse(x.reapBefore) <= Date.now() - 3_600_000 + 1_000), "cutoffs are an hour back")
})

t.test("the reaping message and its answer are checked before use", async (t) => {
  t.ok(isReapingMessage({ t: "reap-parked" }))
  for (const m of [null, undefined, 5, "reap-parked", {}, { t: "reap" }, [{ t: "reap-parked" }]]) t.notOk(isReapingMessage(m), `not a message: ${JSON.stringify(m)}`)
  t.ok(isReapingAnswer({ t: "reap-parked", version: 3, partitions: [0, 7] }, 8))
  t.ok(isReapingAnswer({ t: "reap-parked", version: 3, partitions: [] }, 8))
  const bad = [
    null,
    { t: "reap-parked", version: 3 },
    { t: "reap-parked", version: "3", partitions: [] },
    { t: "reap-parked", version: 3, partitions: [8] },
    { t: "reap-parked", version: 3, partitions: [-1] },
    { t: "reap-parked", version: 3, partitions: [1.5] },
    { t: "reap-parked", version: 3, partitions: ["1"] },
    { t: "reap-parked", version: 3, partitions: Array.from({ length: 9 }, () => 0) },
    { t: "aae-branches", version: 3, partitions: [] }
  ]
  for (const a of bad) t.notOk(isReapingAnswer(a, 8), `not an answer: ${JSON.stringify(a)}`)
})

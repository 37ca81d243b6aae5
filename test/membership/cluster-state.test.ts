/**
 * The claimant's ring states, as pure functions: one move at a time, no partition moving
 * between old members because of a join, a leaver as the source of its own partitions, a
 * removed node replaced by its survivors, and a remove that re-plans a move stuck on it.
 */
import t from "tap"
import * as S from "../../src/membership/ClusterState.ts"

const member = (id: string): S.MemberInfo => ({ id, host: "h", port: 1, clusterPort: 2, incarnation: 1 })
const Q = 64

/** Runs the claimant until settled, marking every transfer done as soon as it is planned. */
const settle = (s: S.ClusterState, claimant = "a"): { state: S.ClusterState; versions: S.RingState[] } => {
  const versions: S.RingState[] = []
  for (let i = 0; i < 20; i++) {
    let step = S.claimantStep(s, claimant)
    if (step === undefined) {
      const tasks = S.transferTasks(s).filter((x) => !s.done.includes(x.id))
      if (tasks.length === 0) return { state: s, versions }
      for (const task of tasks) s = S.markDone(s, task.id)
      step = S.claimantStep(s, claimant)
      if (step === undefined) return { state: s, versions }
    }
    s = step
    versions.push(s.ring)
  }
  throw new Error("did not settle")
}

const join = (s: S.ClusterState, id: string) => S.request(S.withMember(s, member(id)), { id: `join:${id}`, kind: "join", node: id })

t.test("concurrent joins end in one ring; no partition moves between old members", async (t) => {
  let s = S.founding(member("a"), 3, Q)
  s = join(s, "b")
  s = join(s, "c")
  s = settle(s).state
  const before = [...s.ring.owners]
  // Two joins asked through different seeds, merged in either order.
  const viaB = join(s, "d")
  const viaC = join(s, "e")
  const one = settle(S.merge(viaB, viaC)).state
  const two = settle(S.merge(viaC, viaB)).state
  t.same(one.ring.owners, two.ring.owners, "the same ring whatever the gossip order")
  t.same([...one.ring.members], ["a", "b", "c", "d", "e"])
  for (let p = 0; p < Q; p++) {
    if (one.ring.owners[p] !== before[p]) t.ok(["d", "e"].includes(one.ring.owners[p]!), `partition ${p} moved to a joiner, not between old members`)
  }
  const counts = S.ownedCounts(one)
  for (const [, n] of counts) t.ok(n >= Math.floor(Q / 5) && n <= Math.ceil(Q / 5), `balanced: ${n}`)
})

t.test("a leaver is the source of its own partitions and gone only once the move is done", async (t) => {
  let s = S.founding(member("a"), 3, Q)
  for (const id of ["b", "c", "d"]) s = join(s, id)
  s = settle(s).state
  s = S.request(s, { id: "leave:d", kind: "leave", node: "d" })
  s = S.claimantStep(s, "a")!
  const tasks = S.transferTasks(s)
  t.ok(tasks.length > 0)
  t.ok(tasks.every((x) => x.from.length === 1 && x.from[0] === "d"), "every transfer pulls from the leaver")
  t.notOk(s.ring.gone.includes("d"), "not gone while it hands over")
  const done = settle(s).state
  t.ok(done.ring.gone.includes("d"), "gone after the switch")
  t.notOk(done.ring.members.includes("d"))
})

t.test("a removed node's partitions come from every survivor; a remove re-plans a move stuck on it", async (t) => {
  let s = S.founding(member("a"), 3, Q)
  for (const id of ["b", "c", "d"]) s = join(s, id)
  s = settle(s).state
  s = S.request(s, { id: "remove:d", kind: "remove", node: "d" })
  const removing = S.claimantStep(s, "a")!
  t.ok(S.transferTasks(removing).every((x) => !x.from.includes("d") && x.from.length >= 2), "sources are the surviving replicas")
  // A join whose transfers need d, then d dies: its remove must not wait for that move.
  s = join(settle(removing).state, "d2")
  s = S.claimantStep(s, "a")!
  const stuck = S.transferTasks(s)
  t.ok(stuck.length > 0, "a move in progress")
  const replanned = S.claimantStep(S.request(s, { id: "remove:c", kind: "remove", node: "c" }), "a")
  t.ok(replanned !== undefined, "the remove is taken during the move")
  t.notOk(replanned!.ring.nextMembers.includes("c"))
  t.ok(replanned!.ring.nextMembers.includes("d2"), "the join stays in the plan")
  t.ok(S.transferTasks(replanned!).every((x) => !x.from.includes("c")), "no transfer waits for the removed node")
})

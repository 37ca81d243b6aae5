/**
 * Quorums across a ring switch, as pure functions: for every partition of a move (joins, a
 * leave, a remove), a write acknowledged by a coordinator on one ring version and a strict read
 * coordinated on the version before or after it always share a replica, for every R + W > N.
 * Nodes adopt a version about one gossip round apart, so neighbouring versions coexist.
 */
import t from "tap"
import * as S from "../../src/membership/ClusterState.ts"

const member = (id: string): S.MemberInfo => ({ id, host: "h", port: 1, clusterPort: 2, incarnation: 1 })
const Q = 32
const N = 3

/** The claimant's steps until settled, every transfer marked done once planned; each state is kept. */
const settle = (s: S.ClusterState): S.ClusterState[] => {
  const states: S.ClusterState[] = []
  for (let i = 0; i < 20; i++) {
    let step = S.claimantStep(s, s.ring.members[0]!)
    if (step === undefined) {
      const tasks = S.transferTasks(s).filter((x) => !s.done.includes(x.id))
      if (tasks.length === 0) return states
      for (const task of tasks) s = S.markDone(s, task.id)
      step = S.claimantStep(s, s.ring.members[0]!)
      if (step === undefined) return states
    }
    s = step
    states.push(s)
  }
  throw new Error("did not settle")
}
const last = <A>(xs: ReadonlyArray<A>) => xs[xs.length - 1]!
const join = (s: S.ClusterState, id: string) => S.request(S.withMember(s, member(id)), { id: `join:${id}`, kind: "join", node: id })
const ask = (s: S.ClusterState, kind: "leave" | "remove", id: string) => S.request(s, { id: `${kind}:${id}`, kind, node: id })

/** A settled cluster of `ids`. */
const cluster = (ids: ReadonlyArray<string>) => {
  let s = S.founding(member(ids[0]!), N, Q)
  for (const id of ids.slice(1)) s = last(settle(join(s, id)))
  return s
}

type Sets = ReadonlyArray<ReadonlyArray<string>>
/** The sets a coordinator on `s` counts a quorum in, per partition. */
const setsOf = (s: S.ClusterState, q: number): Sets => S.quorumSets(S.currentRing(s), S.nextRing(s), q, N)
/** The rule before this one: the current preference list alone. */
const currentOnly = (s: S.ClusterState, q: number): Sets => [setsOf(s, q)[0]!]

/** Every subset of `nodes` holding at least min(k, |set|) of each set. */
const quorums = (sets: Sets, k: number): string[][] => {
  const nodes = [...new Set(sets.flat())]
  const out: string[][] = []
  for (let mask = 0; mask < 1 << nodes.length; mask++) {
    const pick = nodes.filter((_, i) => mask & (1 << i))
    if (sets.every((set) => set.filter((x) => pick.includes(x)).length >= Math.min(k, set.length))) out.push(pick)
  }
  return out
}

/** Writer/reader pairs on neighbouring versions of `states` whose quorums can miss each other. */
const misses = (states: ReadonlyArray<S.ClusterState>, rule: (s: S.ClusterState, q: number) => Sets) => {
  const found: string[] = []
  for (const [r, w] of [[2, 2], [1, 3], [3, 1]] as const) {
    for (let i = 0; i < states.length; i++) {
      for (const j of [i - 1, i, i + 1]) {
        if (j < 0 || j >= states.length) continue
        const writer = states[i]!
        const reader = states[j]!
        for (let q = 0; q < Q; q++) {
          const ws = quorums(rule(writer, q), w)
          const rs = quorums(rule(reader, q), r)
          const miss = ws.flatMap((a) => rs.filter((b) => !b.some((x) => a.includes(x))).map((b) => [a, b] as const))[0]
          if (miss !== undefined) {
            found.push(`r=${r} w=${w} partition ${q}: written on v${writer.ring.version} by ${miss[0].join(",")}, read on v${reader.ring.version} from ${miss[1].join(",")}`)
          }
        }
      }
    }
  }
  return found
}

const scenarios: ReadonlyArray<readonly [string, () => S.ClusterState[]]> = [
  ["a join to 3 nodes", () => {
    const s = cluster(["a", "b", "c"])
    return [s, ...settle(join(s, "d"))]
  }],
  ["two concurrent joins to 3 nodes", () => {
    const s = cluster(["a", "b", "c"])
    return [s, ...settle(join(join(s, "d"), "e"))]
  }],
  ["a third node joining two", () => {
    const s = cluster(["a", "b"])
    return [s, ...settle(join(s, "c"))]
  }],
  ["a leave from 4 nodes", () => {
    const s = cluster(["a", "b", "c", "d"])
    return [s, ...settle(ask(s, "leave", "c"))]
  }],
  ["a remove from 5 nodes", () => {
    const s = cluster(["a", "b", "c", "d", "e"])
    return [s, ...settle(ask(s, "remove", "b"))]
  }],
  ["a join, then another at once after the switch", () => {
    const s = cluster(["a", "b", "c"])
    const one = settle(join(s, "d"))
    return [s, ...one, ...settle(join(last(one), "e"))]
  }]
]

t.test("quorums of neighbouring ring versions always overlap", async (t) => {
  for (const [name, run] of scenarios) {
    const states = run()
    t.ok(states.some((s) => !S.sameRing(s.ring)), `${name}: the ring moved (versions ${states.map((s) => s.ring.version).join(", ")})`)
    const bad = misses(states, setsOf)
    t.same(bad.slice(0, 5), [], `${name}: no read misses a write (${bad.length} misses)`)
  }
})

t.test("the current preference list alone does not overlap across a switch", async (t) => {
  // What coordinators did before: a reader still on the moving version and a writer that had
  // adopted the switch (or the other way round) could each count replicas the other never asks.
  for (const [name, run] of scenarios.slice(0, 2)) {
    const bad = misses(run(), currentOnly)
    t.ok(bad.length > 0, `${name}: ${bad.length} misses with the current list alone, e.g. ${bad[0]}`)
  }
})

t.test("quorumSets: one set when settled or unchanged, two while a partition's list moves", async (t) => {
  const s = cluster(["a", "b", "c"])
  t.ok(Array.from({ length: Q }, (_, q) => setsOf(s, q)).every((sets) => sets.length === 1), "a settled ring: one set per partition")
  const moving = settle(join(s, "d"))[0]!
  t.notOk(S.sameRing(moving.ring), "the first step is a move")
  let two = 0
  const wrong: number[] = []
  for (let q = 0; q < Q; q++) {
    const sets = setsOf(moving, q)
    if (JSON.stringify(sets[0]) !== JSON.stringify(setsOf(s, q)[0])) wrong.push(q)
    if (sets.length === 2) {
      two++
      if (!sets[1]!.includes("d") || sets[0]!.includes("d")) wrong.push(q)
    }
  }
  t.same(wrong, [], "the current list first, the next one (with the joiner) second")
  t.ok(two > 0 && two <= Q, `${two} of ${Q} partitions count two sets while d joins`)
})

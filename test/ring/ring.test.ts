import assert from "node:assert/strict"
import { Buffer } from "node:buffer"
import { createHash } from "node:crypto"
import fc from "fast-check"
import t from "tap"
import * as Ring from "../../src/ring/Ring.ts"
import type { RingEvent } from "../../src/ring/Ring.ts"

const ev = (seq: number, node: string, kind: RingEvent["kind"] = "join"): RingEvent => ({ seq, node, kind })

const check = <Ts>(name: string, property: fc.IRawProperty<Ts>, numRuns = 200): void => {
  t.test(name, async (t) => {
    fc.assert(property, { numRuns })
    t.pass(`${numRuns} runs`)
  })
}

/** The partition by the book: md5 of the UTF-8 bytes, first 4 bytes big-endian, scaled. */
const reference = (key: string, q: number): number =>
  Math.floor((createHash("md5").update(Buffer.from(key, "utf8")).digest().readUInt32BE(0) * q) / 2 ** 32)

const counts = (ring: Ring.Ring): number[] => [...Ring.partitionCounts(ring).values()]

// ---- partitionOf --------------------------------------------------------------------------

t.test("partitionOf: known values", async (t) => {
  // md5("") = d41d8cd9...: 0xd41d8cd9 * 64 / 2^32 = 53.03
  t.equal(Ring.partitionOf("", 64), 53)
  t.equal(Ring.partitionOf("", 4096), 3393)
  t.equal(Ring.partitionOf("a", 64), 3)
  t.equal(Ring.partitionOf("tally", 64), 35)
  t.equal(Ring.partitionOf("é", 4096), 1645)
  t.equal(Ring.partitionOf("日本", 4096), 1243)
  t.equal(Ring.partitionOf("anything", 1), 0)
})

check(
  "partitionOf: stable, in range, equal to md5 of the UTF-8 bytes",
  fc.property(fc.string({ unit: "binary", maxLength: 300 }), fc.integer({ min: 1, max: 4096 }), (key, q) => {
    const p = Ring.partitionOf(key, q)
    assert.ok(Number.isInteger(p) && p >= 0 && p < q)
    assert.equal(Ring.partitionOf(key, q), p)
    assert.equal(p, reference(key, q))
  }),
  1000
)

t.test("partitionOf: keys spread uniformly (chi-square)", async (t) => {
  // Fixed keys, so the statistic is fixed too; the bounds are mean + 5 standard deviations of
  // chi-square with q - 1 degrees of freedom (sd = sqrt(2(q - 1))).
  for (const [q, keys] of [[64, 64_000], [4096, 409_600]] as const) {
    const hits = new Array<number>(q).fill(0)
    for (let i = 0; i < keys; i++) hits[Ring.partitionOf(`user:${i}`, q)]!++
    const expected = keys / q
    const chi2 = hits.reduce((sum, h) => sum + (h - expected) ** 2 / expected, 0)
    const bound = q - 1 + 5 * Math.sqrt(2 * (q - 1))
    t.ok(chi2 < bound, `q=${q}: chi2 ${chi2.toFixed(1)} < ${bound.toFixed(1)}`)
  }
})

// ---- examples -----------------------------------------------------------------------------

t.test("3- and 5-node examples, q = 16", async (t) => {
  // a, b, c join in that order:
  //   partition  0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15
  //   owner      c b a b c b a c a b c  b  a  c  a  b     a 5, b 6, c 5
  //   preferenceList(0, 3) = c,b,a   (5, 3) = b,a,c   (15, 3) = b,c,a (wraps to 0)
  const three = Ring.fromEvents(16, [ev(1, "a"), ev(2, "b"), ev(3, "c")])
  t.equal(three.owners.join(""), "cbabcbacabcbacab")
  t.same(Object.fromEntries(Ring.partitionCounts(three)), { a: 5, b: 6, c: 5 })
  t.same(Ring.preferenceList(three, 0, 3), ["c", "b", "a"])
  t.same(Ring.preferenceList(three, 5, 3), ["b", "a", "c"])
  t.same(Ring.preferenceList(three, 15, 3), ["b", "c", "a"])
  t.equal(three.version, 3)

  // then d joins, taking 0, 5, 9, 12 (from c, b, b, a: most loaded first), and e joins:
  //   partition  0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15
  //   owner      d b a e c d a c a e c  b  d  c  e  b     a 3, b 3, c 4, d 3, e 3
  //   preferenceList(0, 3) = d,b,a   (5, 3) = d,a,c   ringWalk(5) = d,a,c,e,b
  const four = Ring.applyEvent(three, ev(4, "d"))
  t.same(Ring.diff(three, four), [
    { partition: 0, from: "c", to: "d" },
    { partition: 5, from: "b", to: "d" },
    { partition: 9, from: "b", to: "d" },
    { partition: 12, from: "a", to: "d" }
  ])
  const five = Ring.applyEvent(four, ev(5, "e"))
  t.equal(five.owners.join(""), "dbaecdacaecbdceb")
  t.same(Object.fromEntries(Ring.partitionCounts(five)), { a: 3, b: 3, c: 4, d: 3, e: 3 })
  t.same(Ring.preferenceList(five, 0, 3), ["d", "b", "a"])
  t.same(Ring.preferenceList(five, 5, 3), ["d", "a", "c"])
  t.same(Ring.ringWalk(five, 5), ["d", "a", "c", "e", "b"])

  // b leaves: its partitions 1, 11, 15 go to the least loaded (a, d, e had 3 each)
  //   owner      d e a e c d a c a e c  a  d  c  e  d     a 4, c 4, d 4, e 4
  const left = Ring.applyEvent(five, ev(6, "b", "leave"))
  t.equal(left.owners.join(""), "deaecdacaecadced")
  t.same(
    Ring.diff(five, left).map((m) => m.partition),
    [1, 11, 15]
  )
  t.same(left.members, ["a", "c", "d", "e"])
})

// ---- events, balance, minimal movement ------------------------------------------------------

const POOL = Array.from({ length: 48 }, (_, i) => `node-${i}`)

/** A walk through membership: each op joins a pool node (maybe already a member) or makes a member leave. */
const opsArb = fc.array(fc.tuple(fc.integer({ min: 0, max: 2 }), fc.nat()), { maxLength: 140, size: "max" })

const checkBalance = (ring: Ring.Ring): void => {
  const s = ring.members.length
  assert.deepEqual([...ring.members], [...ring.members].sort())
  if (s === 0) return assert.equal(ring.owners.length, 0)
  assert.equal(ring.owners.length, ring.partitions)
  for (const o of ring.owners) assert.ok(ring.members.includes(o), `${o} owns a partition but is no member`)
  const c = counts(ring)
  const lo = Math.floor(ring.partitions / s)
  const hi = Math.ceil(ring.partitions / s)
  assert.ok(Math.max(...c) <= hi + 1, "the contract's bound: ceil(Q/S)+1")
  assert.ok(Math.min(...c) >= lo && Math.max(...c) <= hi, `every count in [${lo}, ${hi}]: ${c}`)
}

const checkStep = (before: Ring.Ring, event: RingEvent, after: Ring.Ring): void => {
  const wasMember = before.members.includes(event.node)
  if ((event.kind === "join") === wasMember) return assert.equal(after, before, "ignored events return the ring itself")
  assert.equal(after.version, before.version + 1)
  const moves = Ring.diff(before, after)
  const q = before.partitions
  if (event.kind === "join") {
    // Only partitions to the joiner, exactly its share; nobody else gains or loses but the donors.
    assert.ok(moves.every((m) => m.to === event.node))
    assert.equal(moves.length, before.members.length === 0 ? q : Math.floor(q / after.members.length))
  } else {
    // Exactly the leaver's partitions, to members that end no more loaded than ceil(Q/S).
    const owned = before.owners.flatMap((o, p) => (o === event.node ? [p] : []))
    assert.deepEqual(moves.map((m) => m.partition), owned)
    assert.ok(moves.every((m) => m.from === event.node))
    if (after.members.length > 0) {
      const hi = Math.ceil(q / after.members.length)
      const c = Ring.partitionCounts(after)
      assert.ok(moves.every((m) => c.get(m.to!)! <= hi))
    }
  }
}

for (const q of [8, 64, 256]) {
  check(
    `joins and leaves keep balance and move the minimum (q = ${q}, up to 40 members)`,
    fc.property(opsArb, (ops) => {
      let ring = Ring.emptyRing(q)
      let seq = 0
      for (const [kind, pick] of ops) {
        const s = ring.members.length
        const join = s === 0 || (kind < 2 && s < 40)
        const event = join ? ev(++seq, POOL[pick % POOL.length]!) : ev(++seq, ring.members[pick % s]!, "leave")
        const next = Ring.applyEvent(ring, event)
        checkStep(ring, event, next)
        checkBalance(next)
        ring = next
      }
    }),
    q === 256 ? 60 : 150
  )
}

t.test("grow to 40 members and shrink back to 0", async (t) => {
  for (const q of [8, 64, 256, 4096]) {
    let ring = Ring.emptyRing(q)
    for (let i = 0; i < 40; i++) {
      const e = ev(i, `n${i}`)
      const next = Ring.applyEvent(ring, e)
      checkStep(ring, e, next)
      checkBalance(next)
      ring = next
    }
    for (let i = 0; i < 40; i++) {
      const e = ev(100 + i, `n${(i * 7) % 40}`, "leave")
      const next = Ring.applyEvent(ring, e)
      checkStep(ring, e, next)
      checkBalance(next)
      ring = next
    }
    t.equal(ring.members.length, 0, `q=${q}`)
    t.equal(ring.version, 80)
  }
})

t.test("a joiner's partitions are spread around the ring", async (t) => {
  // With S members the joiner takes about Q/S partitions, aimed about S apart: no two adjacent,
  // and every arc of 2S partitions holds at least one of them.
  for (const q of [64, 256]) {
    for (const s of [2, 3, 5, 8]) {
      let ring = Ring.emptyRing(q)
      for (let i = 0; i < s; i++) ring = Ring.applyEvent(ring, ev(i, `n${i}`))
      const mine = ring.owners.flatMap((o, p) => (o === `n${s - 1}` ? [p] : []))
      const gaps = mine.map((p, i) => ((mine[(i + 1) % mine.length]! - p + q) % q) || q)
      t.ok(Math.min(...gaps) >= 2 && Math.max(...gaps) <= 2 * s, `q=${q} s=${s}: gaps ${Math.min(...gaps)}..${Math.max(...gaps)}`)
    }
  }
})

const eventArb = fc.record({
  seq: fc.integer({ min: 0, max: 25 }),
  node: fc.constantFrom(...POOL.slice(0, 10)),
  kind: fc.constantFrom<RingEvent["kind"]>("join", "join", "leave")
})

check(
  "fromEvents: any order and any duplication of the events give the same ring",
  fc.property(
    fc.constantFrom(8, 64, 256),
    fc.array(eventArb, { maxLength: 40, size: "max" }).chain((events) =>
      fc.tuple(
        fc.constant(events),
        fc
          .array(fc.nat({ max: Math.max(0, events.length - 1) }), { maxLength: events.length })
          .map((extra) => [...events, ...extra.flatMap((i) => (events[i] ? [events[i]] : []))])
          .chain((more) => fc.shuffledSubarray(more, { minLength: more.length, maxLength: more.length }))
      )
    ),
    (q, [events, shuffled]) => {
      const ring = Ring.fromEvents(q, events)
      assert.deepEqual(Ring.fromEvents(q, shuffled), ring)
      assert.deepEqual(Ring.fromEvents(q, [...events].reverse()), ring)
      checkBalance(ring)
    }
  ),
  300
)

t.test("fromEvents: ignores joins of members and leaves of non-members; a node may rejoin", async (t) => {
  const ring = Ring.fromEvents(64, [ev(1, "a"), ev(2, "a"), ev(3, "b", "leave"), ev(4, "b"), ev(5, "a", "leave"), ev(6, "a")])
  t.same(ring.members, ["a", "b"])
  t.equal(ring.version, 4)
  t.same(counts(ring), [32, 32])
  t.same(Ring.fromEvents(64, []), Ring.emptyRing(64))
  t.equal(Ring.fromEvents(64, [ev(1, "a"), ev(2, "a", "leave")]).owners.length, 0)
})

// ---- preference lists ---------------------------------------------------------------------

check(
  "preferenceList: min(n, S) distinct members, owner first, a prefix of ringWalk",
  fc.property(
    fc.constantFrom(8, 64, 256),
    fc.integer({ min: 1, max: 40 }),
    fc.nat(),
    fc.integer({ min: 1, max: 8 }),
    (q, s, pick, n) => {
      const ring = Ring.fromEvents(q, POOL.slice(0, s).map((node, i) => ev(i, node)))
      const p = pick % q
      const list = Ring.preferenceList(ring, p, n)
      const walk = Ring.ringWalk(ring, p)
      assert.equal(list.length, Math.min(n, s))
      assert.equal(new Set(list).size, list.length)
      assert.equal(list[0], ring.owners[p])
      assert.deepEqual(list, walk.slice(0, list.length))
      assert.deepEqual([...walk].sort(), [...ring.members])
      // Owners come in clockwise order of first appearance.
      const owners = walk.filter((m) => ring.owners.includes(m))
      const firstSeen = owners.map((m) => {
        for (let i = 0; i < q; i++) if (ring.owners[(p + i) % q] === m) return i
        return -1
      })
      assert.deepEqual(firstSeen, [...firstSeen].sort((a, b) => a - b))
    }
  )
)

t.test("bad arguments are defects", async (t) => {
  t.throws(() => Ring.emptyRing(0), RangeError)
  t.throws(() => Ring.emptyRing(4097), RangeError)
  t.throws(() => Ring.emptyRing(1.5), RangeError)
  const ring = Ring.fromEvents(8, [ev(1, "a")])
  t.throws(() => Ring.preferenceList(ring, 8, 3), RangeError)
  t.throws(() => Ring.diff(ring, Ring.emptyRing(16)), RangeError)
  t.same(Ring.preferenceList(Ring.emptyRing(8), 3, 3), [])
})

// ---- claim: balance and movement over a growing cluster ------------------------------------

/** Grows a ring from 0 to `upTo` members; per join, owners moved and replicas (of N) gained. */
const grow = (q: number, names: ReadonlyArray<string>, n = 3) => {
  let ring = Ring.emptyRing(q)
  let moved = 0
  let optimal = 0
  let gained = 0
  let gainedOptimal = 0
  for (let s = 1; s <= names.length; s++) {
    const next = Ring.applyEvent(ring, ev(s, names[s - 1]!))
    checkBalance(next)
    const moves = Ring.diff(ring, next)
    assert.ok(moves.every((m) => m.to === names[s - 1]), "a join moves partitions only to the joiner")
    moved += moves.length
    optimal += q / s
    if (s > 1) {
      for (let p = 0; p < q; p++) {
        const before = Ring.preferenceList(ring, p, n)
        gained += Ring.preferenceList(next, p, n).filter((x) => !before.includes(x)).length
      }
      gainedOptimal += (Math.min(n, s) * q) / s
    }
    ring = next
  }
  return { ratio: moved / optimal, replicaRatio: gained / gainedOptimal }
}

t.test("claim: joins from 1 to 12 members keep balance and move at most 1.1x the optimal Q/S per join", async (t) => {
  for (const q of [64, 256]) {
    const { ratio, replicaRatio } = grow(q, Array.from({ length: 12 }, (_, i) => `n${i + 1}`))
    t.comment(`q=${q}: partitions moved / sum of Q/S over 12 joins = ${ratio.toFixed(4)}; replicas gained (N=3) / sum of min(N,S)*Q/S = ${replicaRatio.toFixed(4)}`)
    t.ok(ratio <= 1.1, `q=${q}: ratio ${ratio.toFixed(4)} <= 1.1`)
  }
})

check(
  "claim: any 12 joiner names keep balance and move at most 1.1x the optimal (q = 64, 256)",
  fc.property(
    fc.constantFrom(64, 256),
    fc.uniqueArray(fc.string({ minLength: 1, maxLength: 12 }), { minLength: 12, maxLength: 12 }),
    (q, names) => {
      const { ratio } = grow(q, names)
      assert.ok(ratio <= 1.1, `ratio ${ratio}`)
    }
  ),
  100
)

import assert from "node:assert/strict"
import { Buffer } from "node:buffer"
import fc from "fast-check"
import t from "tap"
import * as Dvv from "../../src/versions/Dvv.ts"
import type { Context, Dot, DvvSet, VersionVector } from "../../src/versions/Dvv.ts"

// A small cluster in one process: replicas coordinate writes under their own id, clients keep
// the context of their last read (or of their last write when `chain` is on).

const REPLICAS = ["a", "b", "c", "node-4"]
const CLIENTS = 3

type Op =
  | { readonly kind: "put"; readonly client: number; readonly at: number; readonly blind: boolean }
  | { readonly kind: "read"; readonly client: number; readonly at: number; readonly also: number }
  | { readonly kind: "sync"; readonly from: number; readonly to: number }
  | { readonly kind: "prune"; readonly at: number; readonly max: number }

interface Write {
  readonly value: string
  readonly dot: Dot
  readonly context: Context | VersionVector
}

interface World {
  readonly sets: Array<DvvSet<string>>
  readonly contexts: Array<Context | VersionVector>
  readonly seen: Array<ReadonlySet<string>>
  readonly writes: Write[]
}

interface Options {
  readonly prune: boolean
  readonly chain: boolean
}

const replica = fc.nat(REPLICAS.length - 1)
const client = fc.nat(CLIENTS - 1)
const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ kind: fc.constant("put" as const), client, at: replica, blind: fc.boolean() }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant("read" as const), client, at: replica, also: replica }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant("sync" as const), from: replica, to: replica }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant("prune" as const), at: replica, max: fc.nat(3) }) }
)
const opsArb = fc.array(opArb, { maxLength: 60, size: "max" })
const optionsArb: fc.Arbitrary<Options> = fc.record({ prune: fc.boolean(), chain: fc.boolean() })

const at = <T>(xs: ReadonlyArray<T>, i: number): T => {
  const x = xs[i]
  if (x === undefined) throw new Error(`no element ${i}`)
  return x
}

const newWorld = (): World => ({
  sets: REPLICAS.map(() => Dvv.empty<string>()),
  contexts: Array.from({ length: CLIENTS }, () => new Map()),
  seen: Array.from({ length: CLIENTS }, () => new Set()),
  writes: []
})

const apply = (w: World, op: Op, options: Options): void => {
  switch (op.kind) {
    case "put": {
      const context = op.blind ? new Map<string, number>() : at(w.contexts, op.client)
      const id = at(REPLICAS, op.at)
      const value = `v${w.writes.length}`
      const set = Dvv.update(at(w.sets, op.at), context, id, value)
      const written = Dvv.siblings(set).find((s) => s.value === value)
      assert.ok(written !== undefined && written.dot.id === id)
      w.sets[op.at] = set
      w.writes.push({ value, dot: written.dot, context })
      if (options.chain) {
        w.contexts[op.client] = Dvv.writeContext(set, context, id)
        w.seen[op.client] = new Set([...(op.blind ? [] : at(w.seen, op.client)), value])
      }
      return
    }
    case "read": {
      const vector = Dvv.join(Dvv.sync(at(w.sets, op.at), at(w.sets, op.also)))
      w.contexts[op.client] = vector
      w.seen[op.client] = new Set(w.writes.filter((x) => Dvv.covers(vector, x.dot)).map((x) => x.value))
      return
    }
    case "sync":
      w.sets[op.to] = Dvv.sync(at(w.sets, op.to), at(w.sets, op.from))
      return
    case "prune":
      if (options.prune) w.sets[op.at] = Dvv.prune(at(w.sets, op.at), op.max)
  }
}

const run = (ops: ReadonlyArray<Op>, options: Options, world: World = newWorld()): World => {
  for (const op of ops) apply(world, op, options)
  return world
}

const merged = (w: World): DvvSet<string> => w.sets.reduce((x, y) => Dvv.sync(x, y))
const sorted = (xs: ReadonlyArray<string>): string[] => [...xs].sort()
const holds = (set: DvvSet<string>, dot: Dot): boolean => Dvv.siblings(set).some((s) => s.dot.id === dot.id && s.dot.counter === dot.counter)

const check = <Ts>(name: string, property: fc.IRawProperty<Ts>, numRuns = 300): void => {
  t.test(name, async (t) => {
    fc.assert(property, { numRuns })
    t.pass(`${numRuns} runs`)
  })
}

const anyWorld = fc.tuple(opsArb, optionsArb).map(([ops, options]) => run(ops, options))
const pairs = <T>(xs: ReadonlyArray<T>): Array<[T, T]> => xs.flatMap((x) => xs.map((y): [T, T] => [x, y]))

check(
  "sync is commutative",
  fc.property(anyWorld, (w) => {
    for (const [x, y] of pairs(w.sets)) assert.deepStrictEqual(Dvv.sync(x, y), Dvv.sync(y, x))
  })
)

check(
  "sync is associative",
  fc.property(anyWorld, fc.nat(3), fc.nat(3), fc.nat(3), (w, i, j, k) => {
    const [x, y, z] = [at(w.sets, i), at(w.sets, j), at(w.sets, k)]
    assert.deepStrictEqual(Dvv.sync(Dvv.sync(x, y), z), Dvv.sync(x, Dvv.sync(y, z)))
  })
)

check(
  "sync is idempotent",
  fc.property(anyWorld, (w) => {
    for (const [x, y] of pairs(w.sets)) {
      assert.deepStrictEqual(Dvv.sync(x, x), x)
      assert.deepStrictEqual(Dvv.sync(Dvv.sync(x, y), y), Dvv.sync(x, y))
    }
  })
)

check(
  "sync drops a value only when the other side has seen its dot and no longer holds it",
  fc.property(anyWorld, (w) => {
    for (const [x, y] of pairs(w.sets)) {
      const result = Dvv.sync(x, y)
      for (const s of Dvv.siblings(x)) {
        const kept = !Dvv.covers(Dvv.join(y), s.dot) || holds(y, s.dot)
        assert.equal(holds(result, s.dot), kept, `${s.value} at ${s.dot.id}:${s.dot.counter}`)
      }
      const before = new Set([...Dvv.values(x), ...Dvv.values(y)])
      for (const v of Dvv.values(result)) assert.ok(before.has(v), `${v} invented`)
      assert.ok(Dvv.descends(Dvv.join(result), Dvv.join(x)) && Dvv.descends(Dvv.join(result), Dvv.join(y)))
    }
  })
)

check(
  "update with a read's context replaces exactly what was read and keeps later writes as siblings",
  fc.property(opsArb, replica, opsArb, fc.boolean(), (before, r, after, chain) => {
    const options = { prune: false, chain }
    const w = run(before, options)
    const read = at(w.sets, r)
    run(after, options, w)
    const current = at(w.sets, r)
    const result = Dvv.update(current, Dvv.join(read), at(REPLICAS, r), "new")
    const wasRead = new Set(Dvv.values(read))
    const concurrent = Dvv.values(current).filter((v) => !wasRead.has(v))
    assert.deepStrictEqual(sorted(Dvv.values(result)), sorted(["new", ...concurrent]))
  })
)

check(
  "update removes what its context covers and keeps everything else",
  fc.property(anyWorld, replica, fc.nat(CLIENTS + REPLICAS.length - 1), (w, r, c) => {
    const set = at(w.sets, r)
    const context = c < CLIENTS ? at(w.contexts, c) : Dvv.join(at(w.sets, c - CLIENTS))
    const result = Dvv.update(set, context, at(REPLICAS, r), "new")
    const kept = Dvv.siblings(set).filter((s) => !Dvv.covers(context, s.dot)).map((s) => s.value)
    assert.deepStrictEqual(sorted(Dvv.values(result)), sorted(["new", ...kept]))
    const written = Dvv.siblings(result).find((s) => s.value === "new")
    assert.ok(written !== undefined && !Dvv.covers(context, written.dot) && !Dvv.covers(Dvv.join(set), written.dot))
    assert.ok(Dvv.descends(Dvv.join(result), "vector" in context ? context.vector : context))
  })
)

check(
  "blind writes from k clients through one coordinator make k siblings",
  fc.property(anyWorld, replica, fc.integer({ min: 1, max: 12 }), (w, r, k) => {
    let set = at(w.sets, r)
    let fresh = Dvv.empty<string>()
    for (let i = 0; i < k; i++) {
      set = Dvv.update(set, new Map(), at(REPLICAS, r), `blind${i}`)
      fresh = Dvv.update(fresh, new Map(), at(REPLICAS, r), `blind${i}`)
    }
    assert.equal(Dvv.size(set), Dvv.size(at(w.sets, r)) + k)
    assert.equal(Dvv.size(fresh), k)
  })
)

check(
  "one client writing with the context each write returns stays at one sibling",
  fc.property(anyWorld, replica, fc.integer({ min: 1, max: 12 }), (w, r, k) => {
    const id = at(REPLICAS, r)
    let set = at(w.sets, r)
    let context: Context | VersionVector = Dvv.join(set)
    let blind = Dvv.empty<string>()
    let blindContext: Context | VersionVector = new Map()
    for (let i = 0; i < k; i++) {
      set = Dvv.update(set, context, id, `w${i}`)
      context = Dvv.writeContext(set, context, id)
      blind = Dvv.update(blind, blindContext, id, `w${i}`)
      blindContext = Dvv.writeContext(blind, blindContext, id)
      assert.deepStrictEqual(Dvv.values(set), [`w${i}`])
      assert.deepStrictEqual(Dvv.values(blind), [`w${i}`])
    }
  })
)

// Riak's sibling explosion: clients interleave read-modify-write cycles through one coordinator.
// Every write covers its client's previous one, so at most one sibling per client stays live.
check(
  "two clients interleaving read-modify-write through one coordinator never exceed 2 siblings",
  fc.property(fc.array(fc.nat(1), { maxLength: 80, size: "max" }), (schedule) => {
    let set = Dvv.empty<string>()
    const contexts: Array<VersionVector | undefined> = [undefined, undefined]
    schedule.forEach((c, i) => {
      const context = contexts[c]
      if (context === undefined) contexts[c] = Dvv.join(set)
      else {
        set = Dvv.update(set, context, "a", `c${c}-${i}`)
        contexts[c] = undefined
      }
      assert.ok(Dvv.size(set) <= 2, `${Dvv.size(set)} siblings`)
    })
  })
)

check(
  "k clients mixing reads and writes with returned contexts never exceed k siblings",
  fc.property(
    fc.integer({ min: 1, max: 4 }).chain((k) =>
      fc.tuple(fc.constant(k), fc.array(fc.tuple(fc.nat(k - 1), fc.boolean()), { maxLength: 80, size: "max" }))
    ),
    ([k, schedule]) => {
      let set = Dvv.empty<string>()
      const contexts: Array<Context | VersionVector> = Array.from({ length: k }, () => new Map())
      schedule.forEach(([c, read], i) => {
        if (read) contexts[c] = Dvv.join(set)
        else {
          const context = at(contexts, c)
          set = Dvv.update(set, context, "a", `c${c}-${i}`)
          contexts[c] = Dvv.writeContext(set, context, "a")
        }
        assert.ok(Dvv.size(set) <= k, `${Dvv.size(set)} siblings for ${k} clients`)
      })
    }
  )
)

check(
  "no write is lost: every write no context covered survives the final merge",
  fc.property(opsArb, optionsArb, (ops, options) => {
    const w = run(ops, options)
    const final = new Set(Dvv.values(merged(w)))
    for (const write of w.writes) {
      const superseded = w.writes.some((x) => Dvv.covers(x.context, write.dot))
      if (!superseded) assert.ok(final.has(write.value), `${write.value} lost`)
    }
  }),
  500
)

check(
  "a client's context covers only writes it read or made: it never replaces an unseen sibling",
  fc.property(opsArb, optionsArb, (ops, options) => {
    const w = newWorld()
    for (const op of ops) {
      apply(w, op, options)
      w.contexts.forEach((context, c) => {
        for (const x of w.writes) if (Dvv.covers(context, x.dot)) assert.ok(at(w.seen, c).has(x.value), `${x.value} unseen`)
      })
    }
  }),
  500
)

check(
  "without pruning and with read contexts, exactly the writes no context covered survive",
  fc.property(opsArb, (ops) => {
    const w = run(ops, { prune: false, chain: false })
    const live = w.writes.filter((x) => !w.writes.some((y) => Dvv.covers(y.context, x.dot))).map((x) => x.value)
    assert.deepStrictEqual(sorted(Dvv.values(merged(w))), sorted(live))
  }),
  500
)

check(
  "pruning keeps every value and forgets only the least recently written idle ids",
  fc.property(anyWorld, replica, fc.nat(4), (w, r, max) => {
    const set = at(w.sets, r)
    const pruned = Dvv.prune(set, max)
    assert.deepStrictEqual(Dvv.siblings(pruned), Dvv.siblings(set))
    const live = set.entries.filter((e) => e.versions.length > 0).length
    assert.equal(pruned.entries.length, Math.min(set.entries.length, Math.max(max, live)))
    const kept = new Set(pruned.entries.map((e) => e.id))
    const forgotten = set.entries.filter((e) => !kept.has(e.id))
    for (const e of forgotten) {
      assert.equal(e.versions.length, 0)
      assert.ok(pruned.floor >= e.counter)
      for (const k of pruned.entries) if (k.versions.length === 0) assert.ok(k.time >= e.time)
    }
    assert.ok(Dvv.descends(Dvv.join(set), Dvv.join(pruned)))
  })
)

check(
  "pruning only adds siblings: a pruned cluster keeps every value the unpruned one keeps",
  fc.property(opsArb, fc.boolean(), (ops, chain) => {
    const pruned = new Set(Dvv.values(merged(run(ops, { prune: true, chain }))))
    for (const v of Dvv.values(merged(run(ops, { prune: false, chain })))) assert.ok(pruned.has(v), `${v} lost by pruning`)
  }),
  500
)

t.test("a writer whose own entry was pruned never reuses a dot", async (t) => {
  let a = Dvv.update(Dvv.empty<string>(), new Map(), "a", "a1")
  let b = Dvv.sync(Dvv.empty<string>(), a)
  a = Dvv.update(a, Dvv.join(a), "a", "a2")
  a = Dvv.update(a, new Map(), "b", "b1")
  a = Dvv.update(a, Dvv.join(a), "b", "b2")
  t.same(Dvv.values(a), ["b2"])
  a = Dvv.prune(a, 1)
  t.same(a.entries.map((e) => e.id), ["b"], "a's idle entry is forgotten")
  t.equal(a.floor, 2)
  a = Dvv.sync(a, b)
  t.same(sorted(Dvv.values(a)), ["a1", "b2"], "a1 comes back as a false sibling")
  a = Dvv.update(a, Dvv.join(a), "a", "a3")
  const dot = Dvv.siblings(a).find((s) => s.value === "a3")?.dot
  t.same(dot, { id: "a", counter: 3 }, "the new dot counts from above the floor")
  b = Dvv.sync(b, Dvv.update(Dvv.empty<string>(), new Map([["a", 2]]), "c", "c1"))
  t.same(sorted(Dvv.values(Dvv.sync(a, b))), ["a3", "c1"], "a3 survives a replica that saw a:2")
})

t.test("version vector comparisons", async (t) => {
  const v = (o: Record<string, number>): VersionVector => new Map(Object.entries(o))
  t.ok(Dvv.descends(v({ a: 2, b: 1 }), v({ a: 1 })))
  t.notOk(Dvv.descends(v({ a: 1 }), v({ a: 2 })))
  t.ok(Dvv.dominates(v({ a: 2 }), v({ a: 1 })))
  t.notOk(Dvv.dominates(v({ a: 1 }), v({ a: 1 })))
  t.notOk(Dvv.dominates(v({ a: 1 }), v({ b: 1 })) || Dvv.dominates(v({ b: 1 }), v({ a: 1 })), "concurrent")
  t.ok(Dvv.equal(v({ a: 1, b: 0 }), v({ a: 1 })), "an absent id counts as 0")
  t.ok(Dvv.covers({ vector: v({ a: 1 }), dots: [{ id: "a", counter: 3 }] }, { id: "a", counter: 3 }))
  t.notOk(Dvv.covers({ vector: v({ a: 1 }), dots: [{ id: "a", counter: 3 }] }, { id: "a", counter: 2 }))
})

const idArb = fc.oneof(fc.constantFrom(...REPLICAS), fc.stringMatching(/^[A-Za-z0-9_.-]{1,64}$/))
const counterArb = fc.oneof(fc.integer({ min: 1, max: 8 }), fc.integer({ min: 1, max: Dvv.MAX_CONTEXT_COUNTER }))
const vectorArb = fc
  .uniqueArray(fc.tuple(idArb, counterArb), { selector: ([id]) => id, maxLength: 20 })
  .map((entries): VersionVector => new Map(entries))
const contextArb: fc.Arbitrary<Context> = fc.record({
  vector: vectorArb,
  dots: fc.array(fc.record({ id: idArb, counter: counterArb }), { maxLength: 20 })
})

check(
  "a vector survives the context encoding exactly",
  fc.property(vectorArb, (vector) => {
    const decoded = Dvv.decodeContext(Dvv.encodeContext(vector))
    assert.ok(decoded !== undefined)
    assert.deepStrictEqual(decoded, { vector: new Map([...vector].sort(([x], [y]) => (x < y ? -1 : 1))), dots: [] })
  })
)

check(
  "a context survives the encoding with the same coverage, canonically",
  fc.property(contextArb, (context) => {
    const s = Dvv.encodeContext(context)
    const decoded = Dvv.decodeContext(s)
    assert.ok(decoded !== undefined)
    assert.equal(Dvv.encodeContext(decoded), s)
    const probes = [...context.vector, ...context.dots.map((d): [string, number] => [d.id, d.counter])].flatMap(
      ([id, n]) => [n - 1, n, n + 1].map((counter) => ({ id, counter }))
    )
    for (const dot of probes) assert.equal(Dvv.covers(decoded, dot), Dvv.covers(context, dot))
  })
)

const acceptsOnlyCanonical = (s: string): void => {
  const decoded = Dvv.decodeContext(s)
  if (decoded !== undefined) assert.equal(Dvv.encodeContext(decoded), s)
}
const b64 = (bytes: Uint8Array | number[]): string => Buffer.from(bytes).toString("base64url")

check(
  "decodeContext never throws and accepts only canonical encodings",
  fc.property(
    fc.oneof(
      fc.string(),
      fc.string({ unit: "binary" }),
      fc.stringMatching(/^[A-Za-z0-9_=-]{0,40}$/),
      fc.uint8Array({ maxLength: 80 }).map(b64),
      fc.uint8Array({ maxLength: 40 }).map((b) => b64([1, ...b])),
      fc.tuple(contextArb, fc.nat(), fc.nat(7)).map(([c, i, bit]) => {
        const bytes = Buffer.from(Dvv.encodeContext(c), "base64url")
        if (bytes.length > 0) bytes[i % bytes.length]! ^= 1 << bit
        return b64(bytes)
      }),
      fc.tuple(contextArb, fc.nat()).map(([c, i]) => {
        const s = Dvv.encodeContext(c)
        return s.slice(0, i % (s.length + 1))
      })
    ),
    acceptsOnlyCanonical
  ),
  2000
)

t.test("decodeContext rejects what breaks the bounds or the canonical form", async (t) => {
  const id = (s: string) => [s.length, ...Buffer.from(s)]
  const big = new Map(Array.from({ length: Dvv.MAX_CONTEXT_ENTRIES + 1 }, (_, i) => [`n${i}`, 1]))
  const cases: Array<[string, string]> = [
    ["empty string", ""],
    ["padding", `${Dvv.encodeContext(new Map([["a", 1]]))}=`],
    ["standard base64 alphabet", "+/+/"],
    ["unknown format", b64([2, 0, 0])],
    ["trailing bytes", b64([1, 0, 0, 0])],
    ["missing dot count", b64([1, 0])],
    ["id too long", b64([1, 1, ...id("x".repeat(65)), 1, 0])],
    ["empty id", b64([1, 1, 0, 1, 0])],
    ["id with a space", b64([1, 1, ...id("a b"), 1, 0])],
    ["zero counter", b64([1, 1, ...id("a"), 0, 0])],
    ["overlong varint", b64([1, 1, ...id("a"), 0x81, 0x00, 0])],
    ["unsorted ids", b64([1, 2, ...id("b"), 1, ...id("a"), 1, 0])],
    ["duplicate id", b64([1, 2, ...id("a"), 1, ...id("a"), 2, 0])],
    ["dot the vector already covers", b64([1, 1, ...id("a"), 3, 1, ...id("a"), 2])],
    ["dot next to the vector", b64([1, 1, ...id("a"), 3, 1, ...id("a"), 4])],
    ["counter above the bound", Dvv.encodeContext(new Map([["a", Dvv.MAX_CONTEXT_COUNTER + 1]]))],
    ["too many entries", Dvv.encodeContext(big)]
  ]
  for (const [name, s] of cases) t.equal(Dvv.decodeContext(s), undefined, name)
  t.same(Dvv.decodeContext(b64([1, 0, 0])), { vector: new Map(), dots: [] }, "the empty context")
  t.same(Dvv.decodeContext(b64([1, 1, ...id("a"), 3, 1, ...id("a"), 5])), {
    vector: new Map([["a", 3]]),
    dots: [{ id: "a", counter: 5 }]
  })
  t.throws(() => Dvv.encodeContext(new Map([["bad id", 1]])), "encoding a bad node id is a defect")
})

const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true })
const encodeValue = (v: string): Uint8Array => new TextEncoder().encode(v)
const decodeValue = (b: Uint8Array): string => utf8.decode(b)

check(
  "a set survives its encoding exactly",
  fc.property(anyWorld, (w) => {
    for (const set of w.sets) assert.deepStrictEqual(Dvv.decodeSet(Dvv.encodeSet(set, encodeValue), decodeValue), set)
  })
)

check(
  "decodeSet never throws: damaged bytes decode to undefined or to a set that encodes to them",
  fc.property(anyWorld, replica, fc.nat(), fc.nat(7), fc.uint8Array({ maxLength: 64 }), (w, r, i, bit, noise) => {
    const bytes = Dvv.encodeSet(at(w.sets, r), encodeValue)
    for (let end = 0; end < bytes.length; end++) assert.equal(Dvv.decodeSet(bytes.subarray(0, end), decodeValue), undefined)
    const flipped = bytes.slice()
    flipped[i % flipped.length]! ^= 1 << bit
    for (const damaged of [flipped, noise, Uint8Array.from([1, ...noise])]) {
      const decoded = Dvv.decodeSet(damaged, decodeValue)
      if (decoded !== undefined) assert.deepStrictEqual(Dvv.encodeSet(decoded, encodeValue), damaged)
    }
    if (Dvv.size(at(w.sets, r)) > 0)
      assert.equal(Dvv.decodeSet(bytes, () => { throw new Error("bad value") }), undefined)
  }),
  500
)

/**
 * One anti-entropy exchange between two in-memory replicas (src/aae/Exchange.ts): it finds
 * exactly the keys that differ, repairs both ways through the replica merge (siblings stay
 * siblings, a tombstone beats what it covers), leaves alone a difference gone by the second
 * look, keeps an old tombstone from a replica that lacks the key, and a peer that lies
 * changes nothing.
 */
import { Effect, Layer, ManagedRuntime, Option } from "effect"
import t from "tap"
import { Engine } from "../../engine/Engine.ts"
import { keyHash } from "../../engine/TictacTree.ts"
import { answer, exchange, isAaeMessage, type AaeMessage, type Ask, type ExchangeDeps } from "../../src/aae/Exchange.ts"
import { defaultReplicaConfig, Replica } from "../../src/replica/Replica.ts"
import { partitionOf } from "../../src/ring/Ring.ts"
import * as Dvv from "../../src/versions/Dvv.ts"
import { allDeleted, type Sibling } from "../../src/versions/Sibling.ts"

const Q = 4

const side = async (name: string, now: () => number = Date.now) => {
  const layer = Replica.layer({ ...defaultReplicaConfig, nodeId: name, partitions: Q }).pipe(
    Layer.provideMerge(Engine.layerMemory({ dir: `/${name}`, compactionIntervalMs: 0, partitionOf: (k) => partitionOf(k, Q) }))
  )
  const rt = ManagedRuntime.make(layer)
  const s = await rt.runPromise(Effect.gen(function*() {
    return { engine: yield* Engine, replica: yield* Replica }
  }))
  const deps: ExchangeDeps = { ...s, now, config: { maxRepairs: 1000, confirmDelayMs: 0, tombstoneGraceMs: 60_000 } }
  const run = <A, E>(e: Effect.Effect<A, E>) => rt.runPromise(e)
  const write = (key: string, value: string, deleted = false) =>
    run(Effect.gen(function*() {
      const found = yield* s.replica.read(key)
      const context: Dvv.Context = { vector: Option.isSome(found) ? Dvv.join(found.value) : new Map<string, number>(), dots: [] }
      const sib: Sibling = { value: Buffer.from(value), contentType: "text/plain", lastModified: 1, deleted }
      return yield* s.replica.coordinate(key, context, sib)
    }))
  /** A concurrent write: no context, so it becomes a sibling of what is there. */
  const blind = (key: string, value: string) =>
    run(s.replica.coordinate(key, { vector: new Map(), dots: [] }, { value: Buffer.from(value), contentType: "text/plain", lastModified: 2, deleted: false }))
  const values = async (key: string) => {
    const o = await run(s.replica.read(key))
    return Option.isNone(o) ? undefined : Dvv.values(o.value).map((v) => (v.deleted ? "<deleted>" : Buffer.from(v.value).toString())).sort()
  }
  const tree = (p: number) => run(s.engine.tree(p))
  return { ...s, deps, rt, run, write, blind, values, tree }
}
type Side = Awaited<ReturnType<typeof side>>

const askOf = (b: Side, log?: AaeMessage[]): Ask => (msg) => {
  log?.push(msg)
  return Effect.flatMap(answer(b.deps, msg), (r) =>
    (r as { t: string }).t === "aae-err" ? Effect.fail(new Error((r as { message: string }).message)) : Effect.succeed(r))
}

const syncAll = async (a: Side, b: Side) => {
  let repaired = 0
  for (let p = 0; p < Q; p++) repaired += (await a.run(exchange(a.deps, askOf(b), p))).repaired
  return repaired
}
const sameTrees = async (a: Side, b: Side) => {
  for (let p = 0; p < Q; p++) {
    const [x, y] = [await a.tree(p), await b.tree(p)]
    if (!x.hashes.every((h, i) => h === y.hashes[i])) return false
  }
  return true
}

t.test("an exchange finds exactly the differing keys and repairs both ways", async (t) => {
  const a = await side("a")
  const b = await side("b")
  t.teardown(() => Promise.all([a.rt.dispose(), b.rt.dispose()]))
  for (let i = 0; i < 300; i++) {
    await a.write(`k${i}`, `v${i}`)
  }
  // B learns the first 250 through the merge, as replication would deliver them.
  for (let i = 0; i < 250; i++) {
    const o = await a.run(a.replica.read(`k${i}`))
    await b.run(b.replica.merge(`k${i}`, Option.getOrThrow(o)))
  }
  await b.write("only-b", "b!")
  await b.blind("k7", "concurrent") // k7: a sibling on B only
  await b.write("k9", "gone", true) // k9: deleted on B (the tombstone covers v9)
  t.notOk(await sameTrees(a, b), "trees differ")
  const repaired = await syncAll(a, b)
  t.equal(repaired, 50 + 1 + 2, "the 50 keys B lacked, the key A lacked, the sibling and the delete")
  t.ok(await sameTrees(a, b), "trees equal after one round")
  t.same(await a.values("only-b"), ["b!"], "A got B's key")
  t.same(await b.values("k299"), ["v299"], "B got A's key")
  t.same(await a.values("k7"), ["concurrent", "v7"].sort(), "siblings stay siblings")
  t.same(await b.values("k7"), ["concurrent", "v7"].sort())
  const k9 = Option.getOrThrow(await a.run(a.replica.read("k9")))
  t.ok(allDeleted(k9), "the tombstone won over the value it covers")
  t.equal(await syncAll(a, b), 0, "a second round repairs nothing")
})

t.test("the exchange takes 3 round trips to find one key and skips equal partitions after one", async (t) => {
  const a = await side("a")
  const b = await side("b")
  t.teardown(() => Promise.all([a.rt.dispose(), b.rt.dispose()]))
  for (let i = 0; i < 2000; i++) {
    const w = await a.write(`x${i}`, "same")
    void w
    const o = await a.run(a.replica.read(`x${i}`))
    await b.run(b.replica.merge(`x${i}`, Option.getOrThrow(o)))
  }
  await a.write("x5", "newer")
  const p = partitionOf("x5", Q)
  const msgs: AaeMessage[] = []
  const r = await a.run(exchange(a.deps, askOf(b, msgs), p))
  t.equal(r.roundTrips, 3, "branches, children, keys")
  t.equal(r.differing, 1)
  t.same(msgs.map((m) => m.t), ["aae-branches", "aae-children", "aae-keys", "aae-sync"])
  const other = (p + 1) % Q
  const clean = await a.run(exchange(a.deps, askOf(b), other))
  t.equal(clean.roundTrips, 1, "equal roots: one round trip")
  t.ok(clean.bytes < 64, `and a few bytes (${clean.bytes})`)
})

t.test("a difference gone by the second look is not repaired (compare twice)", async (t) => {
  const a = await side("a")
  const b = await side("b")
  t.teardown(() => Promise.all([a.rt.dispose(), b.rt.dispose()]))
  await a.write("k", "v")
  const p = partitionOf("k", Q)
  // The write reaches B between the first and second look.
  const ask: Ask = (msg) => {
    const go = msg.t === "aae-children"
      ? Effect.flatMap(Effect.promise(async () => {
        const o = await a.run(a.replica.read("k"))
        await b.run(b.replica.merge("k", Option.getOrThrow(o)))
      }), () => answer(b.deps, msg))
      : answer(b.deps, msg)
    return go as Effect.Effect<unknown, Error>
  }
  const r = await a.run(exchange(a.deps, ask, p))
  t.equal(r.roundTrips, 2, "stopped after the second look")
  t.equal(r.repaired, 0, "nothing repaired")
  t.ok(r.clean)
})

t.test("a tombstone past its grace is not pushed to a replica that has no record of the key", async (t) => {
  const a = await side("a")
  const b = await side("b")
  t.teardown(() => Promise.all([a.rt.dispose(), b.rt.dispose()]))
  await a.write("d", "v")
  await a.write("d", "", true)
  await syncAll(a, b)
  t.same(await b.values("d"), ["<deleted>"], "a young tombstone is pushed")
  await a.write("e", "v")
  await a.write("e", "", true)
  // Past the 60 s grace: the engine stamps records with its own clock, so move the exchange's.
  const deps: ExchangeDeps = { ...a.deps, now: () => Date.now() + 120_000 }
  const bdeps: ExchangeDeps = { ...b.deps, now: () => Date.now() + 120_000 }
  const ask: Ask = (msg) => answer(bdeps, msg) as Effect.Effect<unknown, Error>
  for (let p = 0; p < Q; p++) await a.run(exchange(deps, ask, p))
  t.equal(await b.values("e"), undefined, "an old tombstone stays where it is: the peer that lacks the key is not sent it")
})

t.test("a peer that lies fails the exchange and changes nothing", async (t) => {
  const a = await side("a")
  const b = await side("b")
  t.teardown(() => Promise.all([a.rt.dispose(), b.rt.dispose()]))
  for (let i = 0; i < 50; i++) await a.write(`k${i}`, `v${i}`)
  const p = partitionOf("k1", Q)
  const before = await a.tree(p)
  const lies: Array<(msg: AaeMessage) => unknown> = [
    () => ({ t: "aae-branches", hashes: new Uint8Array(10) }),
    (m) => (m.t === "aae-branches" ? { t: "aae-branches", hashes: new Uint8Array(4096) } : { t: "aae-children", hashes: new Uint8Array(4), bits: new Uint8Array([11]), children: new Uint8Array(4) }),
    (m) => (m.t === "aae-branches" ? { t: "aae-branches", hashes: new Uint8Array(4096) } : m.t === "aae-children" ? Effect.runSync(answer(b.deps, m)) : { t: "aae-keys", pairs: new Uint8Array(12) }),
    (m) => (m.t === "aae-branches" ? { t: "aae-branches", hashes: new Uint8Array(4096) } : m.t === "aae-children" ? Effect.runSync(answer(b.deps, m)) : { t: "aae-keys", keys: ["k1"], hashes: new Uint8Array(4) }),
    (m) => (m.t === "aae-sync" ? { t: "aae-sync", records: [{ key: "not-asked", object: new Uint8Array([1, 2, 3]) }] } : Effect.runSync(answer(b.deps, m)))
  ]
  for (const [i, lie] of lies.entries()) {
    const exit = await a.rt.runPromiseExit(exchange(a.deps, (m) => Effect.succeed(lie(m)), p))
    t.equal(exit._tag, "Failure", `lie ${i + 1} fails the exchange`)
  }
  const after = await a.tree(p)
  t.same([...after.hashes], [...before.hashes], "the local tree is untouched")
  t.equal(await a.values("not-asked"), undefined, "nothing the peer was not asked for is stored")
})

t.test("isAaeMessage refuses what does not fit", async (t) => {
  t.ok(isAaeMessage({ t: "aae-branches", partition: 1, root: 5 }))
  t.notOk(isAaeMessage({ t: "aae-branches", partition: -1, root: 5 }), "negative partition")
  t.notOk(isAaeMessage({ t: "aae-branches", partition: 1, root: 2 ** 32 }), "root beyond 32 bits")
  t.notOk(isAaeMessage({ t: "aae-children", partition: 1, nodes: new Uint8Array(3) }), "not whole u32s")
  t.notOk(isAaeMessage({ t: "aae-children", partition: 1, nodes: new Uint8Array(4 * 1025) }), "more nodes than branches")
  t.notOk(isAaeMessage({ t: "aae-keys", partition: 1, leaves: Uint8Array.from([0xff, 0xff, 0xff, 0xff]) }), "child beyond its width")
  t.ok(isAaeMessage({ t: "aae-keys", partition: 1, leaves: new Uint8Array(4) }))
  t.notOk(isAaeMessage({ t: "aae-sync", partition: 1, records: [{ key: 1, object: null }], want: new Uint8Array(0) }), "key not a string")
  t.notOk(isAaeMessage({ t: "aae-sync", partition: 1, records: Array.from({ length: 10_001 }, () => ({ key: "k", object: null })), want: new Uint8Array(0) }), "too many records")
  t.ok(isAaeMessage({ t: "aae-sync", partition: 1, records: [{ key: "k", object: null }], want: new Uint8Array(8) }))
  t.notOk(isAaeMessage({ t: "aae-sync", partition: 1, records: [] }), "no wanted hashes")
  t.notOk(isAaeMessage({ t: "aae-sync", partition: 1, records: [], want: new Uint8Array(3) }), "wanted hashes not whole u32s")
  t.notOk(isAaeMessage({ t: "aae-nope", partition: 1 }))
  t.notOk(isAaeMessage(null))
})

t.test("two keys sharing a 32-bit key hash, one on each side, both end up on both sides", async (t) => {
  // Found by search: the same key hash (997477220) and the same partition (3) at Q = 4.
  const [x, y] = ["c693595", "c1170853"]
  t.equal(keyHash(x), keyHash(y))
  t.equal(partitionOf(x, Q), partitionOf(y, Q))
  const a = await side("a")
  const b = await side("b")
  t.teardown(() => Promise.all([a.rt.dispose(), b.rt.dispose()]))
  await a.write(x, "on a")
  await b.write(y, "on b")
  await syncAll(a, b)
  t.same([await a.values(x), await a.values(y)], [["on a"], ["on b"]], "a holds both")
  t.same([await b.values(x), await b.values(y)], [["on a"], ["on b"]], "b holds both")
  t.ok(await sameTrees(a, b), "and the trees agree")
})

t.test("the key list travels as 8-byte (key hash, contribution) pairs: no key names before the repair", async (t) => {
  const a = await side("a")
  const b = await side("b")
  t.teardown(() => Promise.all([a.rt.dispose(), b.rt.dispose()]))
  const key = "a-key-with-a-rather-long-name-that-would-show-in-the-bytes"
  await b.write(key, "v")
  const log: AaeMessage[] = []
  const replies: unknown[] = []
  const ask: Ask = (m) => Effect.tap(askOf(b, log)(m), (r) => Effect.sync(() => replies.push(r)))
  await a.run(exchange(a.deps, ask, partitionOf(key, Q)))
  const keys = replies[log.findIndex((m) => m.t === "aae-keys")] as { pairs: Uint8Array }
  t.equal(keys.pairs.length, 8, "one key: one pair")
  t.notOk(Buffer.from(keys.pairs).includes(Buffer.from("a-key")), "no key name in it")
  t.same(await a.values(key), ["v"], "and the key was repaired by its hash")
})

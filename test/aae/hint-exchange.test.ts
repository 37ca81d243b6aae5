/**
 * A fallback's push of parked writes to a primary (src/aae/HintExchange.ts), between
 * in-memory replicas: it pushes exactly the keys the primary lacks or holds otherwise, takes
 * nothing back, keeps siblings siblings, goes round the parked keys when they are more than
 * one push takes, and a lying primary or a hostile fallback changes nothing.
 */
import { Effect, Layer, ManagedRuntime, Option } from "effect"
import t from "tap"
import { Engine } from "../../engine/Engine.ts"
import { answerHints, type HintAsk, type HintMessage, isHintMessage, type ParkedView, pushHints } from "../../src/aae/HintExchange.ts"
import { defaultReplicaConfig, Replica } from "../../src/replica/Replica.ts"
import { partitionOf } from "../../src/ring/Ring.ts"
import * as Dvv from "../../src/versions/Dvv.ts"
import { encodeObject } from "../../src/versions/Sibling.ts"

const Q = 4

const side = async (name: string) => {
  const layer = Replica.layer({ ...defaultReplicaConfig, nodeId: name, partitions: Q }).pipe(
    Layer.provideMerge(Engine.layerMemory({ dir: `/${name}`, compactionIntervalMs: 0, partitionOf: (k) => partitionOf(k, Q) }))
  )
  const rt = ManagedRuntime.make(layer)
  const s = await rt.runPromise(Effect.gen(function*() {
    return { engine: yield* Engine, replica: yield* Replica }
  }))
  const run = <A, E>(e: Effect.Effect<A, E>) => rt.runPromise(e)
  const write = (key: string, value: string, withContext = true) =>
    run(Effect.gen(function*() {
      const found = yield* s.replica.read(key)
      const context: Dvv.Context = { vector: withContext && Option.isSome(found) ? Dvv.join(found.value) : new Map<string, number>(), dots: [] }
      return yield* s.replica.coordinate(key, context, { value: Buffer.from(value), contentType: "text/plain", lastModified: 1, deleted: false })
    }))
  const values = async (key: string) => {
    const o = await run(s.replica.read(key))
    return Option.isNone(o) ? undefined : Dvv.values(o.value).map((v) => Buffer.from(v.value).toString()).sort()
  }
  const deps = { ...s, partitionOf: (k: string) => partitionOf(k, Q) }
  /** This side as a fallback: what it holds stands for its parked writes. */
  const parked = async (p: number): Promise<ParkedView> => {
    const entries = await run(s.engine.partitionHashes(p))
    return { entries: () => entries, read: (key) => Effect.map(s.replica.read(key), Option.getOrUndefined) }
  }
  return { ...s, run, write, values, deps, parked }
}
type Side = Awaited<ReturnType<typeof side>>

const askOf = (primary: Side, log?: HintMessage[]): HintAsk => (msg) => {
  log?.push(msg)
  return Effect.flatMap(answerHints(primary.deps, msg), (r) =>
    (r as { t: string }).t === "aae-err" ? Effect.fail(new Error((r as { message: string }).message)) : Effect.succeed(r))
}
const keysIn = (p: number, n: number, prefix = "k") => {
  const out: string[] = []
  for (let i = 0; out.length < n; i++) if (partitionOf(`${prefix}${i}`, Q) === p) out.push(`${prefix}${i}`)
  return out
}
const pushedKeys = (log: HintMessage[]) => log.flatMap((m) => (m.t === "aae-hint-push" ? m.records.map((r) => r.key) : []))
const opts = { from: 0, maxRepairs: 1000, now: Date.now }

t.test("a fallback pushes what the primary lacks or holds otherwise, and takes nothing back", async (t) => {
  const f = await side("f")
  const p = await side("p")
  const [same, lacking, concurrent, onlyPrimary] = keysIn(1, 4)
  await f.write(same!, "s")
  // The same object on both: copy f's record to p.
  const o = await f.run(f.replica.read(same!))
  await p.run(p.replica.merge(same!, Option.getOrThrow(o)))
  await f.write(lacking!, "l")
  await f.write(concurrent!, "from-f")
  await p.write(concurrent!, "from-p")
  await p.write(onlyPrimary!, "p-only")

  const log: HintMessage[] = []
  const r = await f.run(pushHints(await f.parked(1), askOf(p, log), 1, opts))
  t.same(pushedKeys(log).sort(), [concurrent, lacking].sort(), "pushed: the key the primary lacks and the one it holds in another version, not the equal one")
  t.match(r, { keysCompared: 3, differing: 2, repaired: 2, clean: true, roundTrips: 2, next: 0 })
  t.same(await p.values(lacking!), ["l"], "the primary holds the pushed write")
  t.same(await p.values(concurrent!), ["from-f", "from-p"], "a concurrent version stays a sibling on the primary")
  t.equal(await f.values(onlyPrimary!), undefined, "the fallback took nothing back")
  t.same(await f.values(concurrent!), ["from-f"], "nor merged the primary's version")

  const again: HintMessage[] = []
  const r2 = await f.run(pushHints(await f.parked(1), askOf(p, again), 1, opts))
  t.same(pushedKeys(again), [concurrent], "next time only the key the primary holds differently (merged) is pushed again, a no-op merge")
  t.same(await p.values(concurrent!), ["from-f", "from-p"], "and changes nothing there")
  t.equal(r2.repaired, 1)
})

t.test("parked keys beyond one push go round over successive exchanges", async (t) => {
  const f = await side("f")
  const p = await side("p")
  const keys = keysIn(2, 7)
  for (const k of keys) await f.write(k, `v-${k}`)
  // The primary holds newer versions of all of them: they differ for good.
  for (const k of keys) {
    await p.run(p.replica.merge(k, Option.getOrThrow(await f.run(f.replica.read(k)))))
    await p.write(k, `newer-${k}`)
  }
  const seen = new Set<string>()
  let from = 0
  for (let i = 0; i < 4; i++) {
    const log: HintMessage[] = []
    const r = await f.run(pushHints(await f.parked(2), askOf(p, log), 2, { ...opts, from, maxRepairs: 2 }))
    t.ok(pushedKeys(log).length <= 2, `push ${i + 1} pushes at most maxRepairs keys`)
    t.equal(r.clean, false, "not clean while differences are left over")
    for (const k of pushedKeys(log)) seen.add(k)
    from = r.next
  }
  t.same([...seen].sort(), [...keys].sort(), "every parked key was pushed within four pushes of two")
  for (const k of keys) t.same(await p.values(k), [`newer-${k}`], `${k}: the primary's newer version stands`)
})

t.test("a lying primary or a hostile fallback changes nothing", async (t) => {
  const f = await side("f")
  const p = await side("p")
  const [k] = keysIn(3, 1)
  await f.write(k!, "x")
  // The primary names a hash nobody asked for.
  const liar: HintAsk = (msg) => Effect.succeed(msg.t === "aae-hint-keys" ? { t: msg.t, differ: new Uint8Array(new Uint32Array([12345]).buffer), lack: new Uint8Array(0) } : { t: msg.t, merged: 0 })
  const lied = await f.run(Effect.result(pushHints(await f.parked(3), liar, 3, opts)))
  t.equal(lied._tag, "Failure", "an answer naming a hash that was not asked fails the exchange")
  const malformed: HintAsk = (msg) => Effect.succeed({ t: msg.t, differ: "nope" })
  t.equal((await f.run(Effect.result(pushHints(await f.parked(3), malformed, 3, opts))))._tag, "Failure", "a malformed answer fails it too")

  // A push naming a key of another partition is refused whole.
  const [other] = keysIn(0, 1)
  const o = encodeObject(Option.getOrThrow(await f.run(f.replica.read(k!))))
  const r = (await p.run(answerHints(p.deps, { t: "aae-hint-push", partition: 3, records: [{ key: k!, object: o }, { key: other!, object: o }] }))) as { t: string; message?: string }
  t.equal(r.t, "aae-err", `refused: ${r.message}`)
  t.equal(await p.values(k!), undefined, "nothing of the push was merged")

  for (const bad of [
    { t: "aae-hint-keys", partition: 3, pairs: new Uint8Array(7) },
    { t: "aae-hint-keys", partition: -1, pairs: new Uint8Array(8) },
    { t: "aae-hint-keys", partition: 3, pairs: new Uint8Array(8 * 10_001) },
    { t: "aae-hint-push", partition: 3, records: [{ key: "a", object: null }] },
    { t: "aae-hint-push", partition: 3, records: [{ key: 1, object: new Uint8Array(1) }] },
    { t: "aae-hint-push", partition: 3, records: "x" }
  ]) t.notOk(isHintMessage(bad), `rejected: ${JSON.stringify(bad).slice(0, 80)}`)
  t.ok(isHintMessage({ t: "aae-hint-keys", partition: 3, pairs: new Uint8Array(16) }), "a well-formed one passes")
})

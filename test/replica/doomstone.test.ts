/**
 * Doomstones and reaped history in one replica: once a key's tombstone is reaped, a new
 * write through the same node must get a dot no peer has seen, so an old tombstone handed
 * off later (or any old copy) cannot cover it. And two starts of one node never share an
 * actor, so counters cannot repeat across a lost or restored disk.
 */
import { Effect, Layer } from "effect"
import t from "tap"
import { Engine } from "../../engine/Engine.ts"
import { Replica, defaultReplicaConfig } from "../../src/replica/Replica.ts"
import * as Dvv from "../../src/versions/Dvv.ts"
import { liveSiblings, type Sibling } from "../../src/versions/Sibling.ts"

const sib = (value: string, deleted = false): Sibling => ({ value: Buffer.from(value), contentType: "text/plain", lastModified: 1, deleted })
const layer = Replica.layer({ ...defaultReplicaConfig, nodeId: "n1", partitions: 8 }).pipe(
  Layer.provideMerge(Engine.layerMemory({ dir: "/d", compactionIntervalMs: 0, tombstoneGraceMs: 0, maxSegmentBytes: 512, preallocate: false }))
)

t.test("an old tombstone arriving after the key was reaped and rewritten does not beat the new write", async (t) => {
  const out = await Effect.runPromise(Effect.scoped(Effect.gen(function*() {
    const r = yield* Replica
    const e = yield* Engine
    const w1 = yield* r.coordinate("k", { vector: new Map(), dots: [] }, sib("v1"))
    const del = yield* r.coordinate("k", w1.context, sib("", true))
    const tombstone = del.object
    // Enough later writes that compaction may drop the tombstone (a newer record survives).
    for (let i = 0; i < 40; i++) yield* r.coordinate(`other-${i}`, { vector: new Map(), dots: [] }, sib("x".repeat(40)))
    yield* e.compact({ full: true })
    const reaped = (yield* e.get("k"))._tag === "None"
    const w2 = yield* r.coordinate("k", { vector: new Map(), dots: [] }, sib("v2"))
    const merged = yield* r.merge("k", tombstone)
    return { reaped, w2, merged, actor: r.actor }
  }).pipe(Effect.provide(layer))))
  t.ok(out.reaped, "the tombstone was reaped")
  t.same(liveSiblings(out.merged.object).map((s) => Buffer.from(s.value).toString()), ["v2"], "the new write survives the doomstone")
  t.match(out.actor, /^n1@[0-9a-z]+$/, "dots carry the node id and this start's epoch")
})

t.test("each start of a node writes under a new actor", async (t) => {
  const actorOnce = () => Effect.runPromise(Effect.scoped(Effect.gen(function*() {
    return (yield* Replica).actor
  }).pipe(Effect.provide(layer))))
  const actors = new Set(await Promise.all(Array.from({ length: 20 }, actorOnce)))
  t.equal(actors.size, 20, "20 starts, 20 actors")
  for (const a of actors) t.equal(Dvv.nodeOfActor(a), "n1")
})

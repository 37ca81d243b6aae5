/**
 * The Transfer service alone, with a membership fixed in the middle of a move. The receiving
 * side over a stub source (the Transport) and a stub replica whose merges resolve when the
 * test says their group commit is durable: a page's records are merged at once (so they
 * share group commits), and the pull's checkpoint moves past a page only once every record
 * of it is durable. The source side over a real engine and replica: a snapshot answered
 * from a cached key list names the LSN of that list, so the changes after it bring what
 * the list lacks.
 */
import { Context, Deferred, Effect, Layer } from "effect"
import t from "tap"
import { Engine } from "../../engine/Engine.ts"
import { makeMemoryFiles, type FilesApi } from "../../engine/Files.ts"
import { Membership } from "../../src/membership/Membership.ts"
import * as State from "../../src/membership/ClusterState.ts"
import { Replica } from "../../src/replica/Replica.ts"
import { applyEvent, partitionOf } from "../../src/ring/Ring.ts"
import { groups, Transfer, type TransferMessage, type TransferPage } from "../../src/transfer/Transfer.ts"
import { Transport } from "../../src/transport/Transport.ts"
import { encodeObject } from "../../src/versions/Sibling.ts"
import { eventually } from "./harness.ts"

const member = (id: string): State.MemberInfo => ({ id, host: "127.0.0.1", port: 1, clusterPort: 2, incarnation: 1 })

/** n = 1, 8 partitions, all on `a`; `d` joins, so `d` pulls the partitions it gains from `a`. */
const moving = (): State.ClusterState => {
  const s = State.founding(member("a"), 1, 8)
  const next = applyEvent(State.currentRing(s), { seq: 2, node: "d", kind: "join" })
  return {
    ...s,
    members: [member("a"), member("d")],
    ring: { ...s.ring, version: 2, nextMembers: next.members, next: next.owners },
    seen: { a: 2, d: 2 }
  }
}

const PAGE = 300
const object = encodeObject({ entries: [], floor: 0 })

/** Event-loop turns so far (a setImmediate chain, while `turning`). */
let turn = 0
let turning = false
const turnOn = () => {
  turning = true
  const tick = () => {
    turn++
    if (turning) setImmediate(tick)
  }
  setImmediate(tick)
}

interface Stub {
  /** Keys whose merge has started / has finished. */
  readonly started: string[]
  /** The event-loop turn of each start. */
  readonly turns: number[]
  readonly finished: string[]
  /** Pages the stub source has answered. */
  pages: number
  /** Resolves the merges waiting for their group commit. */
  readonly durable: Deferred.Deferred<void>
  /** A key whose merge fails instead. */
  failKey?: string
}

const fixedMembership = (self: string) => {
  const state = moving()
  return Layer.succeed(Membership, {
    self: member(self),
    state: () => state,
    peer: (id: string) => ({ id, host: "127.0.0.1", port: 2 }),
    status: () => "up",
    markDone: () => undefined
  } as unknown as Membership["Service"])
}

const layers = (files: FilesApi, stub: Stub) => {
  const membership = fixedMembership("d")
  const replica = Layer.succeed(Replica, {
    merge: (key: string) =>
      Effect.gen(function*() {
        stub.started.push(key)
        stub.turns.push(turn)
        yield* Deferred.await(stub.durable)
        if (key === stub.failKey) return yield* Effect.fail(new Error(`storage failed for ${key}`))
        stub.finished.push(key)
        return { object: { entries: [], floor: 0 }, bytes: 0 }
      })
  } as unknown as Replica["Service"])
  const transport = Layer.succeed(Transport, {
    request: (_to: unknown, msg: TransferMessage) => {
      if (msg.t !== "xfer-keys") return Effect.never
      // Page 1 of the snapshot; the next page never comes, so the pull stays at page 2.
      if (msg.after !== null) return Effect.never
      stub.pages++
      const records = Array.from({ length: PAGE }, (_, i) => ({ key: `p${msg.partition}-k${String(i).padStart(3, "0")}`, object }))
      return Effect.succeed({ t: "xfer-page", records, lsn: 7, more: true, total: PAGE * 2 } satisfies TransferPage & { total: number })
    }
  } as unknown as Transport["Service"])
  const engine = Engine.layerFiles({ dir: "/engine", compactionIntervalMs: 0 }, files)
  return Transfer.layer({ dataDir: "/node", files, concurrency: 1, bytesPerSecond: 0, intervalMs: 20 }).pipe(
    Layer.provide(Layer.mergeAll(membership, replica, transport, engine))
  )
}

const checkpoints = (files: FilesApi) =>
  files.exists("/node/transfers") ? files.list("/node/transfers").filter((f) => f.endsWith(".json")) : []

t.test("a page's records are merged at once, and the checkpoint passes the page only once all are durable", async (t) => {
  const files = makeMemoryFiles()
  const stub: Stub = { started: [], turns: [], finished: [], pages: 0, durable: Deferred.makeUnsafe<void>() }
  turnOn()
  t.teardown(() => {
    turning = false
  })
  await Effect.runPromise(Effect.scoped(Effect.gen(function*() {
    yield* Layer.build(layers(files, stub))
    // Sequential merges would start one record and wait for its commit before the next.
    yield* Effect.promise(() => eventually("every record of the page merging at once", async () => (stub.started.length === PAGE ? true : undefined), 15_000))
    yield* Effect.sleep("100 millis")
    t.equal(stub.started.length, PAGE, "no record of a second page started")
    const spread = new Set(stub.turns).size
    t.ok(spread >= PAGE / 64, `started over ${spread} event-loop turns, 64 a turn at most`)
    t.same(checkpoints(files), [], "no checkpoint while the page's records are not durable")
    yield* Deferred.succeed(stub.durable, undefined)
    const [file] = yield* Effect.promise(() => eventually("the checkpoint", async () => (checkpoints(files).length > 0 ? checkpoints(files) : undefined), 15_000))
    const cp = JSON.parse(files.readFile(`/node/transfers/${file}`).toString("utf8")) as { phase: string; after: string; lsn: number }
    t.equal(stub.finished.length, PAGE, "every merge finished before the checkpoint was readable")
    t.same(cp, { phase: "keys", after: stub.started.at(-1), lsn: 7 }, "the checkpoint is past the whole page")
  })))
})

t.test("a page with a failed merge leaves the checkpoint where it was", async (t) => {
  const files = makeMemoryFiles()
  const stub: Stub = { started: [], turns: [], finished: [], pages: 0, durable: Deferred.makeUnsafe<void>() }
  await Effect.runPromise(Effect.scoped(Effect.gen(function*() {
    yield* Layer.build(layers(files, stub))
    yield* Effect.promise(() => eventually("the page merging", async () => (stub.started.length === PAGE ? true : undefined), 15_000))
    stub.failKey = stub.started[PAGE - 1]
    yield* Deferred.succeed(stub.durable, undefined)
    // The pull pauses (retried in 2 s, failing again); the next transfer (another partition)
    // takes its place and saves its page.
    const saved = yield* Effect.promise(() => eventually("another transfer's checkpoint", async () => (checkpoints(files).length > 0 ? checkpoints(files) : undefined), 10_000))
    t.ok(saved.length > 0, `other transfers' checkpoints: ${saved.join(", ")}`)
    t.notOk(stub.finished.includes(stub.failKey!), "the failed record never counted as merged")
    t.notOk(checkpoints(files).includes("2_0_d_a.json"), "no checkpoint for the transfer whose page had a failed record")
  })))
})

t.test("apply's groups: at most 512 records or about 4 MiB each, every record once, in order", async (t) => {
  const small = Array.from({ length: 1200 }, (_, i) => ({ key: `k${i}`, object: new Uint8Array(100) }))
  t.same(groups(small).map((g) => g.length), [512, 512, 176])
  const big = Array.from({ length: 10 }, (_, i) => ({ key: `b${i}`, object: new Uint8Array(1024 * 1024) }))
  const gs = groups(big)
  t.same(gs.map((g) => g.length), [3, 3, 3, 1], "4 MiB of 1 MiB records")
  t.same(gs.flat(), big.map((_, i) => i))
  t.same(groups([{ key: "huge", object: new Uint8Array(5 * 1024 * 1024) }]), [[0]], "a record larger than a group is a group")
  t.same(groups([]), [])
})

t.test("a snapshot from a cached key list answers the list's LSN, so its changes bring later keys", async (t) => {
  const files = makeMemoryFiles()
  const engine = Engine.layerFiles({ dir: "/engine", compactionIntervalMs: 0 }, files)
  const replica = Replica.layer({ nodeId: "a", partitions: 8, siblingWarn: 25, siblingMax: 100, maxObjectBytes: 1 << 20, maxVectorEntries: 32 })
  const transfer = Transfer.layer({ dataDir: "/node", files, concurrency: 1, bytesPerSecond: 0, intervalMs: 1_000 }).pipe(
    Layer.provide(Layer.mergeAll(fixedMembership("a"), Layer.succeed(Transport, { request: () => Effect.never } as unknown as Transport["Service"])))
  )
  const all = Layer.provideMerge(transfer, Layer.provideMerge(replica, engine))
  await Effect.runPromise(Effect.scoped(Effect.gen(function*() {
    const ctx = yield* Layer.build(all)
    const e = Context.get(ctx, Engine)
    const x = Context.get(ctx, Transfer)
    const keysIn = (p: number, n: number) => {
      const out: string[] = []
      for (let i = 0; out.length < n; i++) if (partitionOf(`key${i}`, 8) === p) out.push(`key${i}`)
      return out
    }
    const [a, b, c] = keysIn(5, 3) as [string, string, string]
    for (const k of [a, b]) yield* e.put(k, 5, object)
    type Page = TransferPage & { total: number }
    const first = (yield* x.handle("d", { t: "xfer-keys", partition: 5, after: null, limit: 1 })) as Page
    t.same(first.records.map((r) => r.key), [[a, b].sort()[0]], "a page of one key")
    // Written after the listing: the next snapshot, served from the cached list, lacks it.
    yield* e.put(c, 5, object)
    const again = (yield* x.handle("d", { t: "xfer-keys", partition: 5, after: null, limit: 10 })) as Page
    t.same(again.records.map((r) => r.key).sort(), [a, b].sort(), "the cached list, without the key written since")
    t.equal(again.lsn, first.lsn, "the LSN of the list, not the LSN now")
    const changes = (yield* x.handle("d", { t: "xfer-changes", partition: 5, from: again.lsn + 1, limit: 10 })) as Page
    const pulled = new Set([...again.records, ...changes.records].map((r) => r.key))
    t.ok(pulled.has(c), "the snapshot and the changes after its LSN together bring every key")

    // A page of a snapshot is a pread per key: the event loop gets turns while it is gathered.
    const many = keysIn(6, 320)
    yield* Effect.forEach(many, (k) => e.put(k, 6, object), { concurrency: 64, discard: true })
    let turns = 0
    let on = true
    const tick = () => {
      turns++
      if (on) setImmediate(tick)
    }
    setImmediate(tick)
    const big = (yield* Effect.promise(() => Effect.runPromise(x.handle("d", { t: "xfer-keys", partition: 6, after: null, limit: 320 })))) as Page
    on = false
    t.equal(big.records.length, 320)
    t.ok(turns >= 3, `${turns} event-loop turns while 320 keys were read (a turn each 64)`)
  })))
})

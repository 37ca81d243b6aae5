/**
 * What the cluster needs from the engine: partitions named at write time (scan, count, drop),
 * content hashes kept in the index and hint files, a directory identity, and `changes`
 * refusing once compaction may have removed the history it asks for.
 */
import { Effect, Exit, Stream } from "effect"
import t from "tap"
import { compact, selectInputs } from "../../engine/Compaction.ts"
import { hashRecord } from "../../engine/ContentHash.ts"
import { contribution } from "../../engine/TictacTree.ts"
import { Engine } from "../../engine/Engine.ts"
import { SnapshotRequired } from "../../engine/Errors.ts"
import { makeMemoryFiles } from "../../engine/Files.ts"
import { LogCursor } from "../../engine/LogCursor.ts"
import { del, openLog, put, valueOf } from "./helpers.ts"

const DIR = "/data"

t.test("each record keeps the partition it was written under, across hints and scans", async (t) => {
  const files = makeMemoryFiles()
  let log = openLog(files, DIR, { maxSegmentBytes: 2048, preallocate: false })
  for (let i = 0; i < 100; i++) await put(log, `k${i}`, `v${i}`, undefined, i % 7)
  for (let p = 0; p < 7; p++) t.equal(log.countPartition(p), [...Array(100).keys()].filter((i) => i % 7 === p).length, `partition ${p} count`)
  await log.close()
  log = openLog(files, DIR)
  t.ok(log.stats.startupKeysFromHints > 0, "from hints")
  for (let i = 0; i < 100; i++) t.equal(log.index.get(`k${i}`)!.partition, i % 7)
  t.same(log.index.keysOf(3).sort(), [...Array(100).keys()].filter((i) => i % 7 === 3).map((i) => `k${i}`).sort())
  await log.close()
  for (const f of files.list(DIR)) if (f.endsWith(".hint")) files.unlink(`${DIR}/${f}`)
  log = openLog(files, DIR)
  t.equal(log.stats.startupKeysFromHints, 0, "from scans")
  for (let i = 0; i < 100; i++) t.equal(log.index.get(`k${i}`)!.partition, i % 7)
  await log.close()
})

t.test("content hashes depend on the stored content only, and survive restarts and compaction", async (t) => {
  const files = makeMemoryFiles()
  const a = openLog(files, "/a", { maxSegmentBytes: 1024, preallocate: false })
  const b = openLog(files, "/b", { maxSegmentBytes: 1024, preallocate: false })
  // The same content at different LSNs, times and partitions hashes the same.
  await put(b, "filler", "x")
  await put(a, "k", "same", Buffer.from("meta"), 1)
  await put(b, "k", "same", Buffer.from("meta"), 2)
  t.same(a.contentHash("k"), b.contentHash("k"), "same content, same hash")
  await put(b, "k2", "samemeta")
  await put(a, "k2", "same", Buffer.from("meta"))
  t.not(JSON.stringify(a.contentHash("k2")), JSON.stringify(b.contentHash("k2")), "the split between meta and value counts")
  await del(a, "k3")
  await put(b, "k3", "")
  t.not(JSON.stringify(a.contentHash("k3")), JSON.stringify(b.contentHash("k3")), "a tombstone is not an empty put")
  // The hash in the index is the hash of the record on disk.
  const raw = a.readRaw(a.segments.get(a.index.get("k")!.segment)!, a.index.get("k")!.offset, a.index.get("k")!.size)!
  const full = hashRecord(raw)
  t.equal(a.contentHash("k"), contribution(full.hi, full.lo), "index hash = 32 bits of the hash of the record")
  for (let i = 0; i < 60; i++) await put(a, `f${i}`, `v${i}`)
  // k3 is a tombstone that compaction may reap: only the keys that stay are compared.
  const before = new Map([...a.index.keys()].filter((k) => k !== "k3").map((k) => [k, JSON.stringify(a.contentHash(k))]))
  await compact(a, selectInputs(a, true))
  for (const [k, h] of before) if (JSON.stringify(a.contentHash(k)) !== h) t.fail(`${k}: hash changed by compaction`)
  await a.close()
  const again = openLog(files, "/a")
  for (const [k, h] of before) if (JSON.stringify(again.contentHash(k)) !== h) t.fail(`${k}: hash changed by restart`)
  t.pass("hashes stable")
  await again.close()
  await b.close()
})

t.test("dropping a partition is durable, cheap, and spares later writes and other partitions", async (t) => {
  const files = makeMemoryFiles()
  let log = openLog(files, DIR, { maxSegmentBytes: 2048, preallocate: false })
  for (let i = 0; i < 60; i++) await put(log, `k${i}`, `v${i}`, undefined, i % 3)
  const gone = await log.dropPartition(1)
  t.equal(gone, 20)
  t.equal(log.countPartition(1), 0)
  await put(log, "k1", "back", undefined, 1)
  for (let i = 0; i < 60; i++) {
    const want = i === 1 ? "back" : i % 3 === 1 ? undefined : `v${i}`
    if (valueOf(log, `k${i}`) !== want) t.fail(`k${i}: ${valueOf(log, `k${i}`)}, want ${want}`)
  }
  // Not streamed either.
  const streamed = new LogCursor(log, 1).readPage(1000).filter((e) => e.partition === 1).map((e) => e.key)
  t.same(streamed, ["k1"], "only the later write of the dropped partition is streamed")
  log.abandonForTest()
  files.crash()
  log = openLog(files, DIR)
  t.equal(valueOf(log, "k4"), undefined, "still dropped after a crash")
  t.equal(valueOf(log, "k1"), "back", "the later write survives")
  t.equal(valueOf(log, "k3"), "v3", "other partitions intact")
  await compact(log, selectInputs(log, true))
  t.equal(valueOf(log, "k4"), undefined, "and after compaction")
  await log.close()
})

t.test("a directory has an identity made with it and kept", async (t) => {
  const files = makeMemoryFiles()
  const a = openLog(files, DIR)
  const id = a.identity.id
  t.match(id, /^[0-9a-f]{32}$/)
  await a.close()
  const b = openLog(files, DIR)
  t.equal(b.identity.id, id, "same directory, same identity")
  await b.close()
  const other = openLog(files, "/other")
  t.not(other.identity.id, id, "a fresh directory has another identity")
  await other.close()
})

t.test("changes refuses with snapshot_required once compaction may have removed its history", async (t) => {
  const files = makeMemoryFiles()
  const log = openLog(files, DIR, { maxSegmentBytes: 1024, preallocate: false })
  for (let r = 0; r < 3; r++) for (let i = 0; i < 30; i++) await put(log, `k${i}`, `r${r}`)
  t.doesNotThrow(() => new LogCursor(log, 1, { strict: true }), "complete history before compaction")
  await compact(log, selectInputs(log, true))
  t.ok(log.compactedThrough > 0)
  t.throws(() => new LogCursor(log, 1, { strict: true }), SnapshotRequired)
  t.doesNotThrow(() => new LogCursor(log, log.compactedThrough + 1, { strict: true }), "from the low watermark on")
  await log.close()
  const reopened = openLog(files, DIR)
  t.throws(() => new LogCursor(reopened, 1, { strict: true }), SnapshotRequired, "the low watermark is durable")
  await reopened.close()
})

t.test("Engine: scanPartition lists a partition consistently while writes go on", async (t) => {
  const out = await Effect.runPromise(Effect.scoped(Effect.gen(function*() {
    const e = yield* Engine
    for (let i = 0; i < 500; i++) yield* e.put(`k${i}`, i % 4, Buffer.from(`v${i}`))
    const snap = yield* e.scanPartition(2)
    // A write after the snapshot: covered by changes(snap.lsn + 1).
    yield* e.put("late", 2, Buffer.from("x"))
    const listed = [...(yield* Stream.runCollect(snap.entries))].map((x) => x.key)
    const after = [...(yield* Stream.runCollect(e.changes(snap.lsn + 1, { follow: false })))].map((x) => x.key)
    const stale = yield* Effect.exit(Stream.runCollect(e.changes(0, { follow: false })))
    yield* e.compact({ full: true })
    const refused = yield* Effect.exit(Stream.runCollect(e.changes(1, { follow: false })))
    return { snap, listed, after, stale, refused, health: yield* e.health, count: yield* e.countPartition(2), dropped: yield* e.dropPartition(3), count3: yield* e.countPartition(3) }
  }).pipe(Effect.provide(Engine.layerMemory({ dir: DIR, compactionIntervalMs: 0, maxSegmentBytes: 4096, tombstoneGraceMs: 0 })))))
  t.equal(out.snap.keys, 125)
  t.same([...out.listed].sort(), [...Array(500).keys()].filter((i) => i % 4 === 2).map((i) => `k${i}`).sort(), "every key of the partition, once")
  t.same(out.after, ["late"])
  t.ok(Exit.isSuccess(out.stale), "changes from the start before any compaction")
  t.ok(Exit.isFailure(out.refused), "changes from before the watermark after compaction: refused")
  t.same(out.health, { writable: true })
  t.equal(out.count, 126)
  t.equal(out.dropped, 125)
  t.equal(out.count3, 0)
})

t.test("dropPartitions drops several partitions in one walk that yields, keeps later writes, and survives a crash mid-way", async (t) => {
  const files = makeMemoryFiles()
  let log = openLog(files, DIR, { preallocate: false, fsync: "never" })
  const K = 100_000
  const writes: Array<Promise<unknown>> = []
  for (let i = 0; i < K; i++) writes.push(put(log, `k${i}`, "v", undefined, i % 8))
  await Promise.all(writes)
  let turns = 0
  let ticking = true
  const tick = () => {
    turns++
    if (ticking) setImmediate(tick)
  }
  setImmediate(tick)
  const dropping = log.dropPartitions([1, 3, 5])
  // A write to a dropped partition accepted after the call is kept.
  const later = put(log, "after-drop", "kept", undefined, 3)
  const gone = await dropping
  ticking = false
  await later
  t.equal(gone, (3 * K) / 8, "every key of partitions 1, 3 and 5 went")
  t.ok(turns >= 2, `the event loop ran ${turns} turns during the drop: it walked in steps`)
  t.same([1, 3, 5].map((p) => log.countPartition(p)), [0, 1, 0], "only the later write is left in them")
  t.same([0, 2, 4, 6, 7].map((p) => log.countPartition(p)), [K / 8, K / 8, K / 8, K / 8, K / 8], "the others are untouched")
  t.equal(valueOf(log, "after-drop"), "kept")

  // A crash after the marks were written and the first step forgotten: the walk never resumes.
  await log.close()
  log = openLog(files, DIR, { preallocate: false, sleep: () => new Promise<void>(() => undefined) })
  void log.dropPartitions([0])
  while (log.countPartition(0) === K / 8) await new Promise((r) => setImmediate(r))
  t.ok(log.countPartition(0) > 0, `cut short: ${log.countPartition(0)} keys of partition 0 still indexed`)
  log.abandonForTest()
  files.crash()
  log = openLog(files, DIR)
  t.equal(log.countPartition(0), 0, "a drop cut short is finished at start-up")
  t.equal(log.countPartition(2), K / 8)
  await log.close()
})

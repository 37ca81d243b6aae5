/**
 * The per-partition tombstone cutoff (`reapBefore`): compaction drops a tombstone only if its
 * record is no newer than its partition's cutoff, asks once per partition, keeps everything
 * when the cutoff is unusable, and takes a new cutoff live through the engine's reconfigure.
 */
import { Effect } from "effect"
import t from "tap"
import { compact, selectInputs } from "../../engine/Compaction.ts"
import { Engine } from "../../engine/Engine.ts"
import { makeMemoryFiles } from "../../engine/Files.ts"
import { del, openLog, put, valueOf } from "./helpers.ts"

const DIR = "/data"

/** A log of small segments on a clock the test moves, tombstones in partitions 0..2 at times 1000, 2000, 3000. */
const setup = async (config: Parameters<typeof openLog>[2] = {}) => {
  let now = 1000
  const files = makeMemoryFiles()
  const log = openLog(files, DIR, { maxSegmentBytes: 256, preallocate: false, tombstoneGraceMs: 0, now: () => now, ...config })
  for (let p = 0; p < 3; p++) {
    for (let i = 0; i < 3; i++) await put(log, `p${p}-k${i}`, "old-value-".repeat(4), undefined, p)
  }
  for (const at of [1000, 2000, 3000]) {
    now = at
    for (let p = 0; p < 3; p++) await del(log, `p${p}-k${at / 1000 - 1}`, p)
  }
  now = 10_000
  // A newer record outside the compaction, so the highest LSN survives whatever is dropped.
  for (let i = 0; i < 4; i++) await put(log, `filler-${i}`, "f".repeat(100), undefined, 9)
  return { files, log, setNow: (ms: number) => (now = ms) }
}

const deleted = (log: ReturnType<typeof openLog>, keys: ReadonlyArray<string>) => keys.map((k) => valueOf(log, k))

t.test("without reapBefore, the grace period decides for every partition", async (t) => {
  const { log } = await setup({ tombstoneGraceMs: 8_500 })
  // now 10,000 - grace 8,500 = 1,500: only the tombstones written at 1000 go.
  const r = await compact(log, selectInputs(log, true))
  t.equal(r?.droppedTombstones, 3)
  t.same(deleted(log, ["p0-k0", "p1-k0", "p2-k0"]), [undefined, undefined, undefined], "the oldest tombstone of each partition went")
  t.same(deleted(log, ["p0-k1", "p1-k2", "p2-k1"]), ["<deleted>", "<deleted>", "<deleted>"], "younger ones stay")
  await log.close()
})

t.test("each partition's cutoff applies to its own tombstones, inclusive, and overrides the grace", async (t) => {
  const asked: number[] = []
  const cutoffs: Record<number, number> = { 0: Infinity, 1: -Infinity, 2: 2000 }
  const { log } = await setup({ tombstoneGraceMs: 1_000_000, reapBefore: (p) => (asked.push(p), cutoffs[p] ?? -Infinity) })
  const r = await compact(log, selectInputs(log, true))
  t.same([...asked].sort(), [0, 1, 2], "asked once per partition with tombstones, not per record, not for partition 9")
  t.equal(r?.droppedTombstones, 5)
  t.same(deleted(log, ["p0-k0", "p0-k1", "p0-k2"]), [undefined, undefined, undefined], "partition 0: cutoff +Infinity, every tombstone went")
  t.same(deleted(log, ["p1-k0", "p1-k1", "p1-k2"]), ["<deleted>", "<deleted>", "<deleted>"], "partition 1: -Infinity keeps them all")
  t.same(deleted(log, ["p2-k0", "p2-k1", "p2-k2"]), [undefined, undefined, "<deleted>"], "partition 2: timestamps 1000 and 2000 are <= 2000, 3000 is not")
  t.equal(valueOf(log, "filler-3"), "f".repeat(100), "live records are kept")
  await log.close()
})

t.test("an unusable cutoff keeps the partition's tombstones", async (t) => {
  const { log } = await setup({
    reapBefore: (p) => {
      if (p === 0) throw new Error("no answer")
      return p === 1 ? Number.NaN : ("soon" as unknown as number)
    }
  })
  t.equal((await compact(log, selectInputs(log, true)))?.droppedTombstones, 0, "a throw, NaN and a non-number keep everything")
  await log.close()
})

t.test("dropped tombstones stay dropped across a restart, and the old values never return", async (t) => {
  const { files, log } = await setup({ reapBefore: (p) => (p === 1 ? -Infinity : Infinity) })
  await compact(log, selectInputs(log, true))
  await log.close()
  const reopened = openLog(files, DIR)
  for (let i = 0; i < 3; i++) {
    t.equal(valueOf(reopened, `p0-k${i}`), undefined, `p0-k${i} reaped`)
    t.equal(valueOf(reopened, `p1-k${i}`), "<deleted>", `p1-k${i} still a tombstone`)
  }
  await reopened.close()
})

t.test("the engine takes reapBefore in its config and changes it live", async (t) => {
  const dropped = await Effect.runPromise(Effect.scoped(Effect.gen(function*() {
    const e = yield* Engine
    for (let i = 0; i < 20; i++) yield* e.put(`k${i}`, i % 2, Buffer.from("v".repeat(60)))
    for (let i = 0; i < 20; i++) yield* e.remove(`k${i}`, i % 2)
    for (let i = 0; i < 10; i++) yield* e.put(`later${i}`, 5, Buffer.from("w".repeat(60)))
    const first = yield* e.compact({ full: true })
    const kept = (yield* e.countPartition(0)) + (yield* e.countPartition(1))
    // Live: partition 0 may go now, partition 1 not.
    yield* e.reconfigure({ reapBefore: (p) => (p === 0 ? Infinity : -Infinity) })
    for (let i = 0; i < 10; i++) yield* e.put(`later${i}`, 5, Buffer.from("x".repeat(60)))
    const second = yield* e.compact({ full: true })
    return { first: first?.droppedTombstones, kept, second: second?.droppedTombstones, p0: yield* e.countPartition(0), p1: yield* e.countPartition(1), stats: (yield* e.stats).droppedTombstones }
  }).pipe(Effect.provide(Engine.layerMemory({ dir: DIR, compactionIntervalMs: 0, maxSegmentBytes: 512, preallocate: false, tombstoneGraceMs: 0, reapBefore: () => -Infinity })))))
  t.equal(dropped.first, 0, "the configured cutoff (-Infinity) kept every tombstone although the grace is 0")
  t.equal(dropped.kept, 20)
  t.ok((dropped.second ?? 0) > 0, `after reconfigure, ${dropped.second} tombstones of partition 0 went`)
  t.ok(dropped.p0 < 10, `partition 0 holds ${dropped.p0} of its 10 tombstones`)
  t.equal(dropped.p1, 10, "partition 1 keeps all of its tombstones")
  t.equal(dropped.stats, dropped.second, "droppedTombstones in the engine's stats")
})

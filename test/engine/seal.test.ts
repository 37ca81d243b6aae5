/**
 * A requested full compaction reaches the newest writes: the active segment is sealed first,
 * so tombstones just written can be reaped (POST /admin/compact), and dropping the records
 * with the highest LSNs never lets a restart hand those LSNs out again.
 */
import { Effect } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import t from "tap"
import { compact, selectInputs } from "../../engine/Compaction.ts"
import { Engine } from "../../engine/Engine.ts"
import { makeMemoryFiles } from "../../engine/Files.ts"
import { del, openLog, put, valueOf } from "./helpers.ts"

const DIR = "/data"

t.test("Engine.compact({ full: true }) reaps a tombstone still in the active segment", async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tally-seal-"))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const layer = Engine.layer({ dir, fsync: "batch", compactionIntervalMs: 0, tombstoneGraceMs: 0 })
  const program = Effect.gen(function*() {
    const e = yield* Engine
    const before = yield* e.stats
    yield* e.put("gone", 0, new Uint8Array([1, 2, 3]))
    yield* e.remove("gone", 0)
    const r = yield* e.compact({ full: true })
    const after = yield* e.stats
    return { r, before, after, left: yield* e.get("gone") }
  })
  const result = await Effect.runPromise(Effect.scoped(Effect.provide(program, layer)) as Effect.Effect<Effect.Success<typeof program>>)
  t.equal(result.r?.droppedTombstones, 1, "the tombstone written a moment ago was reaped")
  t.equal(result.after.keys, 0, "no key is left in the index")
  t.ok(result.left._tag === "None", "and the key reads as absent")
})

t.test("sealing waits for the batch in flight and leaves nothing to seal twice", async (t) => {
  const files = makeMemoryFiles()
  const log = openLog(files, DIR, { preallocate: false })
  const writes = [put(log, "a", "1"), put(log, "b", "2")]
  t.equal(await log.sealActive(), true, "sealed with writes queued")
  await Promise.all(writes)
  t.equal(valueOf(log, "a"), "1")
  t.equal(valueOf(log, "b"), "2")
  t.equal(await log.sealActive(), false, "an empty active segment is not sealed")
  await log.close()
  const reopened = openLog(files, DIR)
  t.same([valueOf(reopened, "a"), valueOf(reopened, "b")], ["1", "2"], "both writes survive a restart")
  await reopened.close()
})

t.test("reaping the records with the highest LSNs does not let a restart reuse them", async (t) => {
  const files = makeMemoryFiles()
  let log = openLog(files, DIR, { preallocate: false })
  await put(log, "k", "v")
  const deleted = await del(log, "k")
  t.equal(await log.sealActive(), true)
  const r = await compact(log, selectInputs(log, true))
  t.equal(r?.droppedTombstones, 1, "the highest-LSN record, a tombstone, was reaped")
  t.equal(valueOf(log, "k"), undefined)
  log.abandonForTest()
  files.crash()
  log = openLog(files, DIR, { preallocate: false })
  const next = await put(log, "k2", "v2")
  t.ok(next.lsn > deleted.lsn, `the next write takes LSN ${next.lsn}, above the reaped ${deleted.lsn}`)
  await log.close()
})

t.test("sealing under steady writes happens between two batches, not after the writers stop", async (t) => {
  const files = makeMemoryFiles()
  const log = openLog(files, DIR, { preallocate: false })
  let stop = false
  let written = 0
  const writer = async (w: number) => {
    for (let i = 0; !stop; i++) {
      await put(log, `w${w}-${i}`, "x".repeat(50))
      written++
    }
  }
  const writers = [0, 1, 2, 3].map(writer)
  while (written < 20) await new Promise((r) => setImmediate(r))
  const segmentsBefore = log.snapshotStats().segments
  const sealed = await Promise.race([log.sealActive(), new Promise<string>((r) => setTimeout(() => r("timed out"), 5000))])
  t.equal(sealed, true, "sealed while four writers kept writing")
  t.ok(log.snapshotStats().segments > segmentsBefore, "a new active segment took over")
  stop = true
  await Promise.all(writers)
  const total = written
  await log.close()
  const reopened = openLog(files, DIR)
  t.equal(reopened.snapshotStats().keys, total, `all ${total} acknowledged writes are there after a restart`)
  await reopened.close()
})

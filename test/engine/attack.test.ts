/**
 * Adversarial tests of the day's engine changes: races between a compaction's STATE write
 * and a partition drop, which both persist the drop marks.
 */
import t from "tap"
import { compact, selectInputs } from "../../engine/Compaction.ts"
import { makeMemoryFiles } from "../../engine/Files.ts"
import { openLog, put, valueOf } from "./helpers.ts"

const DIR = "/data"

t.test("a partition dropped while a compaction writes STATE stays dropped after a crash", async (t) => {
  const files = makeMemoryFiles()
  const log = openLog(files, DIR, { preallocate: false })
  for (let i = 0; i < 5; i++) await put(log, `moved${i}`, "old", undefined, 1)
  await put(log, "stay", "v", undefined, 0)
  await log.sealActive()
  await put(log, "stay", "v2", undefined, 0)
  // The drop arrives while the compaction writes STATE (its hook runs just before).
  let dropped: Promise<number> | undefined
  const running = compact(log, selectInputs(log, true), () => false, { beforeManifest: () => { dropped = log.dropPartitions([1]) } })
    .then((r) => r, (e: unknown) => e)
  await running
  t.equal(await dropped, 5, "the moved partition's keys were dropped")
  await log.drain()
  files.crash()
  const again = openLog(files, DIR, { preallocate: false })
  t.teardown(() => again.close())
  t.equal(again.countPartition(1), 0, "no dropped key came back")
  t.equal(valueOf(again, "moved0"), undefined, "moved0 stays dropped")
  t.equal(valueOf(again, "stay"), "v2", "the partition kept is intact")
})

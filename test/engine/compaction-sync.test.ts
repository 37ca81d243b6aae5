/**
 * Compaction syncs its outputs as it writes them (compactSyncBytes, RocksDB's
 * bytes_per_sync), so dirty pages never pile up behind the puts' fdatasyncs: measured on
 * ext4, a full compaction without it held puts for ~1 s (bench:engine, put latency).
 */
import t from "tap"
import { compact, selectInputs } from "../../engine/Compaction.ts"
import { makeMemoryFiles, type FilesApi } from "../../engine/Files.ts"
import { openLog, put, valueOf } from "./helpers.ts"

const DIR = "/data"

const run = async (compactSyncBytes: number) => {
  const inner = makeMemoryFiles()
  let syncs = 0
  const files: FilesApi = { ...inner, datasync: (fd) => (syncs++, inner.datasync(fd)) }
  const log = openLog(files, DIR, { preallocate: false, maxSegmentBytes: 8 * 1024 * 1024, compactSyncBytes })
  const value = "v".repeat(4000)
  for (let i = 0; i < 1000; i++) void put(log, `k${i}`, value)
  await put(log, "newest", "x")
  await log.sealActive()
  await log.settle()
  const before = syncs
  const r = await compact(log, selectInputs(log, true))
  const during = syncs - before
  const intact = valueOf(log, "k999") === value && valueOf(log, "k0") === value
  await log.close()
  return { during, outputs: r?.outputs.length ?? 0, bytes: r?.bytesAfter ?? 0, intact }
}

t.test("outputs are synced every compactSyncBytes as they are written, not only at the end", async (t) => {
  // Compaction writes in 1 MiB slices, so that is the finest pacing there is.
  const every = 1024 * 1024
  const paced = await run(every)
  const atEnd = await run(0)
  t.ok(paced.intact && atEnd.intact, "the data survives either way")
  const extra = paced.during - atEnd.during
  t.ok(extra >= Math.floor(paced.bytes / every) - 1, `${extra} more fdatasyncs while writing ${paced.bytes} bytes at one per ${every} (${paced.during} against ${atEnd.during} with syncs only at the end)`)
})

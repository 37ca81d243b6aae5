/**
 * The read cache (engine/RecordCache.ts): a record read twice is read again from memory, but
 * only while the index still names the same LSN, so a write, a delete, a dropped partition or
 * a reaping compaction is seen at once; a compaction that only moves records changes nothing
 * read; the bytes stay within the bound.
 */
import t from "tap"
import { compact, selectInputs } from "../../engine/Compaction.ts"
import { makeMemoryFiles } from "../../engine/Files.ts"
import { RecordCache } from "../../engine/RecordCache.ts"
import { RecordType } from "../../engine/Record.ts"
import { del, openLog, put, valueOf } from "./helpers.ts"

t.test("a cached record is used only while the index names its LSN", async (t) => {
  const files = makeMemoryFiles()
  const log = openLog(files, "/c", { readCacheBytes: 1024 * 1024, maxSegmentBytes: 1024, preallocate: false })
  t.teardown(() => log.close())
  await put(log, "k", "v1", undefined, 3)
  t.equal(valueOf(log, "k"), "v1")
  t.equal(valueOf(log, "k"), "v1")
  t.equal(log.cache.hits, 0, "the first two reads came from the disk")
  t.equal(valueOf(log, "k"), "v1")
  t.equal(log.cache.hits, 1, "the third read came from memory")
  await put(log, "k", "v2", undefined, 3)
  t.equal(valueOf(log, "k"), "v2", "a write is seen at once")
  await del(log, "k", 3)
  t.equal(valueOf(log, "k"), "<deleted>", "so is a delete")
  await put(log, "other", "o", undefined, 4)
  t.equal(valueOf(log, "other"), "o")
  await log.dropPartition(4)
  t.equal(valueOf(log, "other"), undefined, "a dropped partition's key is gone though it was cached")
  // Compaction moves records (same LSN, same bytes) and reaps the tombstone (grace 0).
  for (let i = 0; i < 40; i++) await put(log, `f${i}`, `value ${i}`)
  for (let r = 0; r < 2; r++) for (let i = 0; i < 40; i++) valueOf(log, `f${i}`)
  await compact(log, selectInputs(log, true))
  for (let i = 0; i < 40; i++) if (valueOf(log, `f${i}`) !== `value ${i}`) t.fail(`f${i} after compaction`)
  t.equal(valueOf(log, "k"), undefined, "a reaped tombstone is gone though it was cached")
})

t.test("the cache keeps within its bound, least recently used out first; 0 keeps nothing", async (t) => {
  const c = new RecordCache(10_000)
  const entry = (key: string) => ({ key, type: RecordType.Put, lsn: 1, timestamp: 0, partition: 0, meta: new Uint8Array(0), value: new Uint8Array(1000) })
  for (let i = 0; i < 50; i++) {
    c.put(`k${i}`, i, entry(`k${i}`), 1000)
    if (i >= 1) c.get("k0", 0)
  }
  t.ok(c.size().bytes <= 10_000, `${c.size().bytes} bytes kept`)
  t.ok(c.get("k0", 0) !== undefined, "the key read all along stayed")
  t.equal(c.get("k1", 1), undefined, "an old one went")
  t.equal(c.get("k49", 48), undefined, "a stale LSN misses")
  t.equal(c.get("k49", 49), undefined, "and drops the entry")
  t.notOk(c.admits("big", 7, 5000) || c.admits("big", 7, 5000), "a record over an eighth of the bound is not admitted")
  c.put("big", 1, entry("big"), 5000)
  t.equal(c.get("big", 1), undefined, "a record over an eighth of the bound is not kept")
  const none = new RecordCache(0)
  none.put("k", 1, entry("k"), 10)
  t.equal(none.get("k", 1), undefined)
})

t.test("a record is kept the second time it is read: reads spread over many keys keep nothing", async (t) => {
  const files = makeMemoryFiles()
  const log = openLog(files, "/d", { readCacheBytes: 64 * 1024, preallocate: false })
  t.teardown(() => log.close())
  for (let i = 0; i < 200; i++) await put(log, `s${i}`, `value ${i}`)
  for (let i = 0; i < 200; i++) valueOf(log, `s${i}`)
  t.equal(log.cache.size().entries, 0, "200 keys read once each: none kept")
  valueOf(log, "s7")
  t.equal(log.cache.size().entries, 1, "a key read twice is kept")
  valueOf(log, "s7")
  t.equal(log.cache.hits, 1, "and served from memory the third time")
  const kept = log.read("s7")!
  t.ok(kept.value.buffer.byteLength < 1024, `a kept record has bytes of its own, not a slab of the pool (${kept.value.buffer.byteLength} bytes)`)
})

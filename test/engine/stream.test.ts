import { Chunk, Effect, Fiber, Stream } from "effect"
import t from "tap"
import { compact, selectInputs } from "../../engine/Compaction.ts"
import { Engine } from "../../engine/Engine.ts"
import { makeMemoryFiles } from "../../engine/Files.ts"
import { LogCursor } from "../../engine/LogCursor.ts"
import { RecordType } from "../../engine/Record.ts"
import { del, openLog, put } from "./helpers.ts"

const DIR = "/data"

t.test("the stream delivers every record from an LSN, across segments, in order", async (t) => {
  const log = openLog(makeMemoryFiles(), DIR, { maxSegmentBytes: 300 })
  for (let i = 0; i < 60; i++) {
    if (i % 9 === 8) await del(log, `k${i % 10}`)
    else await put(log, `k${i % 10}`, `v${i}`)
  }
  t.ok(log.segments.size > 5, `${log.segments.size} segments`)
  const all = new LogCursor(log, 1).readPage(1000)
  t.same(all.map((e) => e.lsn), Array.from({ length: 60 }, (_, i) => i + 1), "every LSN once, in order")
  t.same(all.filter((e) => e.type === RecordType.Tombstone).map((e) => e.lsn), [9, 18, 27, 36, 45, 54])
  t.equal(Buffer.from(all[0]!.value).toString(), "v0")
  const tail = new LogCursor(log, 41)
  const pages: number[][] = []
  for (let p = tail.readPage(7); p.length > 0; p = tail.readPage(7)) pages.push(p.map((e) => e.lsn))
  t.same(pages.flat(), Array.from({ length: 20 }, (_, i) => i + 41), "from the middle, in pages")
  t.notOk(tail.hasMore)
  await put(log, "new", "x")
  t.ok(tail.hasMore)
  t.same(tail.readPage().map((e) => e.key), ["new"], "continues with new records")
  await log.close()
})

t.test("a stream survives compaction: no LSN twice, the newest of every key delivered", async (t) => {
  const log = openLog(makeMemoryFiles(), DIR, { maxSegmentBytes: 400 })
  for (let i = 0; i < 200; i++) await put(log, `k${i % 15}`, `v${i}`)
  const cursor = new LogCursor(log, 1)
  const seen = cursor.readPage(50)
  const r = await compact(log, selectInputs(log, true))
  t.ok(r && r.bytesAfter < r.bytesBefore, "compaction ran and shrank the log")
  for (let p = cursor.readPage(13); p.length > 0; p = cursor.readPage(13)) seen.push(...p)
  const lsns = seen.map((e) => e.lsn)
  t.same(lsns, [...lsns].sort((a, b) => a - b), "increasing")
  t.equal(new Set(lsns).size, lsns.length, "no duplicates")
  const newest = new Map<string, number>()
  for (const [k, loc] of log.index.entries()) newest.set(k, loc.lsn)
  for (const [k, lsn] of newest) t.ok(lsns.includes(lsn), `newest record of ${k} delivered`)
  await log.close()
})

t.test("Engine.changes follows live commits", async (t) => {
  const got = await Effect.runPromise(
    Effect.scoped(Effect.gen(function*() {
      const e = yield* Engine
      yield* e.put("a", 0, Buffer.from("1"))
      const fiber = yield* e.changes(1).pipe(Stream.take(4), Stream.runCollect, Effect.forkChild)
      yield* Effect.sleep("10 millis")
      yield* e.put("b", 0, Buffer.from("2"))
      yield* e.remove("a", 0)
      yield* e.put("c", 0, Buffer.from("3"))
      return yield* Fiber.join(fiber)
    }).pipe(Effect.provide(Engine.layerMemory({ dir: DIR, compactionIntervalMs: 0 }))))
  )
  const rows = Chunk.toReadonlyArray(Chunk.fromIterable(got)).map((e) => `${e.lsn}:${e.key}:${e.type}`)
  t.same(rows, ["1:a:1", "2:b:1", "3:a:2", "4:c:1"])
})

t.test("a finite stream ends at the newest committed record", async (t) => {
  const got = await Effect.runPromise(
    Effect.scoped(Effect.gen(function*() {
      const e = yield* Engine
      for (let i = 0; i < 1500; i++) yield* e.put(`k${i}`, 0, Buffer.from(String(i)))
      return yield* Stream.runCollect(e.changes(1001, { follow: false, pageSize: 64 }))
    }).pipe(Effect.provide(Engine.layerMemory({ dir: DIR, compactionIntervalMs: 0, maxSegmentBytes: 8192 }))))
  )
  const lsns = [...got].map((e) => e.lsn)
  t.equal(lsns.length, 500)
  t.equal(lsns[0], 1001)
  t.equal(lsns.at(-1), 1500)
})

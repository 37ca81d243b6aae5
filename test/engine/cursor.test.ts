/**
 * LogCursor's seeking and its scan budget, and the engine's `changes` and `scanPartition`
 * giving the event loop a turn between pages: a cursor that starts late in a large segment
 * seeks to within a stride of its LSN once any cursor has passed there, a page passes over
 * at most its budget, and whatever the budgets, seeks, rotations and compactions, a cursor
 * delivers every record from its LSN once, in LSN order.
 */
import { Effect, Stream } from "effect"
import fc from "fast-check"
import t from "tap"
import { compact, selectInputs } from "../../engine/Compaction.ts"
import { Engine } from "../../engine/Engine.ts"
import { makeMemoryFiles } from "../../engine/Files.ts"
import type { Entry, Log } from "../../engine/Log.ts"
import { LogCursor } from "../../engine/LogCursor.ts"
import { RecordType } from "../../engine/Record.ts"
import { del, openLog, put } from "./helpers.ts"

const DIR = "/data"
const KIB = 1024

/** Reads a cursor to its end, `paused` pages included; the LSNs, and how many calls it took. */
const drain = (c: LogCursor, maxRecords = 512, maxScanBytes = Infinity) => {
  const got: Entry[] = []
  let calls = 0
  for (;;) {
    const page = c.readPage(maxRecords, undefined, maxScanBytes)
    calls++
    got.push(...page)
    if (page.length === 0 && !c.paused) return { got, calls }
    if (calls > 1_000_000) throw new Error("cursor does not end")
  }
}

const fill = async (log: Log, n: number, valueBytes: number) => {
  const writes: Array<Promise<unknown>> = []
  for (let i = 0; i < n; i++) writes.push(put(log, `k${i}`, Buffer.alloc(valueBytes, i % 251)))
  await Promise.all(writes)
}

t.test("a page passes over at most its budget; a later cursor seeks near its LSN", async (t) => {
  const log = openLog(makeMemoryFiles(), DIR, { maxSegmentBytes: 16 * 1024 * KIB })
  await fill(log, 4000, KIB)
  t.equal(log.segments.size, 1, "one segment of about 4 MiB")
  t.equal(log.lastLsn, 4000)

  const first = new LogCursor(log, 3900)
  t.same(first.readPage(512, undefined, 64 * KIB), [], "nothing delivered: the budget went on records below the LSN")
  t.ok(first.paused, "paused, not ended")
  t.ok(first.hasMore)
  const rest = drain(first, 512, 64 * KIB)
  t.same(rest.got.map((e) => e.lsn), Array.from({ length: 101 }, (_, i) => 3900 + i), "then every record from 3900, in order")
  t.ok(rest.calls > 40, `${rest.calls} calls of at most 64 KiB each for about 4 MiB`)

  // The first cursor passed over the segment: the next one starts within a stride of its LSN.
  const second = new LogCursor(log, 3950)
  const page = second.readPage(512, undefined, 128 * KIB)
  t.ok(page.length > 0, `${page.length} records delivered by the first call`)
  t.equal(page[0]?.lsn, 3950)
  t.same([...page, ...drain(second).got].map((e) => e.lsn), Array.from({ length: 51 }, (_, i) => 3950 + i))

  // Without a budget a page still goes to its end, as before.
  t.same(new LogCursor(log, 3990).readPage().map((e) => e.lsn), Array.from({ length: 11 }, (_, i) => 3990 + i))
  await log.close()
})

t.test("a budget smaller than one record still moves on", async (t) => {
  const log = openLog(makeMemoryFiles(), DIR)
  await fill(log, 50, 4 * KIB)
  const { got, calls } = drain(new LogCursor(log, 20), 512, 1)
  t.same(got.map((e) => e.lsn), Array.from({ length: 31 }, (_, i) => 20 + i))
  t.ok(calls >= 31, `one record a call (${calls} calls)`)
  await log.close()
})

t.test("a reader that runs out of budget holds back the other segments' records", async (t) => {
  // A compaction of two segments that are not neighbours makes an output whose LSNs span the
  // segment between them: a cursor starting inside the output's first run must not deliver
  // the middle segment's records while the output still has earlier ones to pass over.
  const log = openLog(makeMemoryFiles(), DIR, { maxSegmentBytes: 16 * KIB, tombstoneGraceMs: 1e12 })
  const written: number[] = []
  const newest = new Map<string, number>()
  const write = async (key: string) => {
    const w = await put(log, key, Buffer.alloc(KIB, 1))
    written.push(w.lsn)
    newest.set(key, w.lsn)
  }
  for (let i = 0; i < 15; i++) await write(`a${i}`)
  for (let i = 0; i < 15; i++) await write(`b${i}`)
  for (let i = 0; i < 15; i++) await write(`c${i}`)
  for (let i = 0; i < 10; i++) await write(`a${i}`)
  for (let i = 0; i < 10; i++) await write(`c${i}`)
  const sealed = [...log.segments.values()].filter((s) => s.sealed).sort((x, y) => x.minLsn - y.minLsn)
  t.ok(sealed.length >= 3, `${sealed.length} sealed segments`)
  const [s1, s2, s3] = sealed as [typeof sealed[0], typeof sealed[0], typeof sealed[0]]
  const r = await compact(log, [s1, s3])
  t.ok(r !== undefined && r.outputs.length === 1, "one output")
  const out = log.segments.get(r!.outputs[0]!)!
  t.ok(out.minLsn < s2.minLsn && out.maxLsn > s2.maxLsn, `the output spans ${out.minLsn}..${out.maxLsn}, around ${s2.minLsn}..${s2.maxLsn}`)
  const live = new Set(newest.values())
  const inputs = (lsn: number) => (lsn >= s1.minLsn && lsn <= s1.maxLsn) || (lsn >= s3.minLsn && lsn <= s3.maxLsn)
  const outLive = [...live].filter(inputs).sort((x, y) => x - y)
  // Start past the output's first live record, so that it has one to pass over.
  const from = outLive[1]!
  t.ok(from < s2.minLsn)
  const want = written.filter((l) => l >= from && (!inputs(l) || live.has(l)))
  for (const budget of [1, 2 * KIB, 5 * KIB, Infinity]) {
    const { got } = drain(new LogCursor(log, from), 7, budget)
    t.same(got.map((e) => e.lsn), want, `budget ${budget}: every record from ${from}, in LSN order`)
  }
  await log.close()
})

interface Op {
  readonly kind: "put" | "del" | "cursor" | "compact"
  readonly key: number
  readonly bytes: number
  /** For "cursor": where a warming cursor starts (a share of the LSNs so far) and how far it reads. */
  readonly at: number
  readonly pages: number
}

const opArb: fc.Arbitrary<Op> = fc.record({
  kind: fc.constantFrom<Op["kind"]>("put", "put", "put", "put", "put", "put", "del", "cursor", "compact"),
  key: fc.integer({ min: 0, max: 40 }),
  // Up to 20 KB: segments and runs of a few hundred KiB, so that seeks land inside segments.
  bytes: fc.integer({ min: 0, max: 20_000 }),
  at: fc.double({ min: 0, max: 1, noNaN: true }),
  pages: fc.integer({ min: 1, max: 5 })
})

t.test("whatever the seeks, budgets, rotations and compactions: every record from the LSN, once, in order", async (t) => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(opArb, { minLength: 20, maxLength: 160 }),
      fc.double({ min: 0, max: 1, noNaN: true }),
      fc.integer({ min: 1, max: 64 }),
      fc.constantFrom(1, 500, 4 * KIB, 70 * KIB, Infinity),
      fc.constantFrom(4, 16, 200, 1024),
      async (ops, fromShare, pageSize, budget, segmentKib) => {
        const log = openLog(makeMemoryFiles(), DIR, { maxSegmentBytes: segmentKib * KIB, tombstoneGraceMs: 1e12 })
        /** What each LSN holds, as written. */
        const written = new Map<number, { key: string; value: string | undefined }>()
        const newest = new Map<string, number>()
        let compactedBelow = 0
        const warm: LogCursor[] = []
        try {
          for (const op of ops) {
            const key = `key-${op.key}`
            if (op.kind === "put") {
              const value = `${key}:${"x".repeat(op.bytes)}`
              const w = await put(log, key, value)
              written.set(w.lsn, { key, value })
              newest.set(key, w.lsn)
            } else if (op.kind === "del") {
              const w = await del(log, key)
              written.set(w.lsn, { key, value: undefined })
              newest.set(key, w.lsn)
            } else if (op.kind === "cursor") {
              // Cursors that read a little here and there, leaving positions behind.
              const c = new LogCursor(log, Math.max(1, Math.floor(op.at * log.lastLsn)))
              for (let p = 0; p < op.pages; p++) c.readPage(3, undefined, budget)
              warm.push(c)
            } else {
              const before = log.active.minLsn
              const r = await compact(log, selectInputs(log, true))
              if (r !== undefined) compactedBelow = Math.max(compactedBelow, Number.isFinite(before) ? before : log.nextLsn)
            }
          }
          const last = log.lastLsn
          const from = Math.max(1, Math.floor(fromShare * (last + 1)))
          const { got } = drain(new LogCursor(log, from), pageSize, budget)
          const lsns = got.map((e) => e.lsn)
          for (let i = 1; i < lsns.length; i++) if (lsns[i]! <= lsns[i - 1]!) throw new Error(`not increasing at ${i}: ${lsns.slice(i - 1, i + 1)}`)
          for (const e of got) {
            const w = written.get(e.lsn)
            if (e.lsn < from || w === undefined) throw new Error(`delivered LSN ${e.lsn} (from ${from})`)
            const value = e.type === RecordType.Tombstone ? undefined : Buffer.from(e.value).toString()
            if (w.key !== e.key || w.value !== value) throw new Error(`LSN ${e.lsn} is ${e.key}=${value}, written ${w.key}=${w.value}`)
          }
          const delivered = new Set(lsns)
          // Compaction keeps each key's newest record; past what it compacted, every record.
          for (const lsn of newest.values()) if (lsn >= from && !delivered.has(lsn)) throw new Error(`newest record ${lsn} missing (from ${from})`)
          for (const lsn of written.keys()) {
            if (lsn >= from && lsn >= compactedBelow && !delivered.has(lsn)) throw new Error(`record ${lsn} missing (from ${from}, compacted below ${compactedBelow})`)
          }
          // And the warm cursors, read on to the end, deliver the same from where they are.
          for (const c of warm) {
            const at = c.next
            const rest = drain(c, pageSize, budget).got.map((e) => e.lsn)
            const want = lsns.filter((l) => l >= at)
            if (at >= from && JSON.stringify(rest.filter((l) => l >= from)) !== JSON.stringify(want)) {
              throw new Error(`a warm cursor at ${at} read ${rest.length} records, the fresh one ${want.length}`)
            }
          }
        } finally {
          await log.close()
        }
      }
    ),
    { numRuns: 150 }
  )
  t.pass("property held")
})

/** Event-loop turns taken while `f` runs (a setImmediate chain counts them). */
const countTurns = async <A>(f: () => Promise<A>): Promise<{ value: A; turns: number }> => {
  let turns = 0
  let on = true
  const tick = () => {
    turns++
    if (on) setImmediate(tick)
  }
  setImmediate(tick)
  try {
    return { value: await f(), turns }
  } finally {
    on = false
  }
}

const withEngine = <A>(f: (e: Engine["Service"]) => Effect.Effect<A, unknown>, maxSegmentBytes = 64 * 1024 * KIB) =>
  Effect.runPromise(Effect.scoped(Effect.gen(function*() {
    const e = yield* Engine
    return yield* f(e)
  }).pipe(Effect.provide(Engine.layerMemory({ dir: DIR, compactionIntervalMs: 0, maxSegmentBytes })))))

const load = (e: Engine["Service"], n: number, partitionOf: (i: number) => number = () => 0, bytes = KIB, prefix = "k") =>
  Effect.forEach(Array.from({ length: n }, (_, i) => i), (i) => e.put(`${prefix}${i}`, partitionOf(i), Buffer.alloc(bytes, i % 251)), { concurrency: 256, discard: true })

t.test("Engine.changes: a late start in a large segment delivers every record, a budget a turn", async (t) => {
  const r = await withEngine((e) =>
    Effect.gen(function*() {
      yield* load(e, 6000)
      return yield* Effect.promise(() => countTurns(() => Effect.runPromise(Stream.runCollect(e.changes(5901, { follow: false })))))
    })
  )
  const lsns = [...r.value].map((x) => x.lsn)
  t.same(lsns, Array.from({ length: 100 }, (_, i) => 5901 + i), "pages that passed over records only do not end the stream")
  t.ok(r.turns >= 5, `${r.turns} event-loop turns while about 6 MiB were passed over at 1 MiB a page`)
})

t.test("Engine.changes gives the event loop a turn between pages", async (t) => {
  const r = await withEngine((e) =>
    Effect.gen(function*() {
      yield* load(e, 3000, () => 0, 16)
      return yield* Effect.promise(() => countTurns(() => Effect.runPromise(Stream.runCollect(e.changes(1, { follow: false, pageSize: 30 })))))
    })
  )
  t.equal([...r.value].length, 3000)
  t.ok(r.turns >= 90, `${r.turns} turns for 100 pages`)
})

t.test("Engine.scanPartition: pages of at most 256 records or 1 MiB, a turn between them", async (t) => {
  const r = await withEngine((e) =>
    Effect.gen(function*() {
      yield* load(e, 2000, (i) => i % 2, 16)
      yield* load(e, 5, () => 3, 600 * KIB, "big")
      const small = yield* e.scanPartition(1)
      const big = yield* e.scanPartition(3)
      const bigPages = [...yield* Stream.runCollect(Stream.chunks(big.entries))].map((c) => c.length)
      const counted = yield* Effect.promise(() => countTurns(() => Effect.runPromise(Stream.runCollect(small.entries))))
      return { bigPages, keys: [...counted.value].map((x) => x.key), turns: counted.turns }
    })
  )
  t.equal(r.keys.length, 1000)
  t.same(r.bigPages, [2, 2, 1], "600 KiB records: two a page")
  t.ok(r.turns >= 3, `${r.turns} turns for 4 pages`)
})

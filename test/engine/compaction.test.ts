import * as path from "node:path"
import t from "tap"
import { compact, selectInputs } from "../../engine/Compaction.ts"
import { makeMemoryFiles } from "../../engine/Files.ts"
import { del, indexRows, openLog, put, valueOf } from "./helpers.ts"

const DIR = "/data"
const segFiles = (files: ReturnType<typeof makeMemoryFiles>) => files.list(DIR).filter((f) => f.endsWith(".seg")).sort()

t.test("compaction reclaims dead bytes and keeps every live value", async (t) => {
  const files = makeMemoryFiles()
  const log = openLog(files, DIR, { maxSegmentBytes: 2048 })
  for (let round = 0; round < 10; round++) for (let i = 0; i < 30; i++) await put(log, `k${i}`, `round-${round}-${"z".repeat(40)}`)
  const before = files.usedBytes()
  const want = [...log.index.keys()].map((k) => [k, valueOf(log, k)])
  const r = await compact(log, selectInputs(log))
  t.ok(r, "the thresholds selected segments")
  const after = files.usedBytes()
  t.comment(`disk bytes before ${before}, after ${after}`)
  t.ok(after < before / 3, `space reclaimed: ${before} -> ${after}`)
  t.same([...log.index.keys()].map((k) => [k, valueOf(log, k)]), want, "same values")
  const rows = indexRows(log)
  await log.close()
  const reopened = openLog(files, DIR)
  t.same(indexRows(reopened).map((r) => [r[0], r[4]]), rows.map((r) => [r[0], r[4]]), "same index after reopen")
  t.equal(reopened.damage.length, 0)
  await reopened.close()
})

t.test("a partial merge keeps a tombstone while an older segment may hold its key (Bitcask #82)", async (t) => {
  const files = makeMemoryFiles()
  const log = openLog(files, DIR, { maxSegmentBytes: 200 })
  await put(log, "victim", "old-value-".repeat(5))
  for (let i = 0; i < 6; i++) await put(log, `filler${i}`, "f".repeat(60))
  await del(log, "victim")
  for (let i = 0; i < 6; i++) await put(log, `filler${i}`, "g".repeat(60))
  const victimSeg = [...log.segments.values()].find((s) => s.minLsn <= 1 && s.maxLsn >= 1)!
  // Compact every sealed segment except the one holding the old value.
  const partial = selectInputs(log, true).filter((s) => s !== victimSeg)
  const r = await compact(log, partial)
  t.equal(r?.droppedTombstones, 0, "the tombstone was kept")
  t.equal(valueOf(log, "victim"), "<deleted>")
  log.abandonForTest()
  files.crash()
  let reopened = openLog(files, DIR)
  t.equal(valueOf(reopened, "victim"), "<deleted>", "still deleted after a restart")
  // A full merge may drop it: nothing older remains outside, and newer records survive.
  await put(reopened, "later", "x")
  const full = await compact(reopened, selectInputs(reopened, true))
  t.equal(full?.droppedTombstones, 1, "dropped by the full merge")
  t.equal(valueOf(reopened, "victim"), undefined)
  await reopened.close()
  reopened = openLog(files, DIR)
  t.equal(valueOf(reopened, "victim"), undefined, "and the old value never comes back")
  await reopened.close()
})

t.test("tombstones younger than the grace period survive compaction", async (t) => {
  let now = 1_000_000
  const files = makeMemoryFiles()
  const log = openLog(files, DIR, { maxSegmentBytes: 200, tombstoneGraceMs: 60_000, now: () => now })
  await put(log, "k", "v")
  await del(log, "k")
  for (let i = 0; i < 5; i++) await put(log, `f${i}`, "x".repeat(80))
  t.equal((await compact(log, selectInputs(log, true)))?.droppedTombstones, 0, "too young")
  t.equal(valueOf(log, "k"), "<deleted>")
  now += 60_001
  await put(log, "f9", "y".repeat(200))
  t.equal((await compact(log, selectInputs(log, true)))?.droppedTombstones, 1, "old enough")
  t.equal(valueOf(log, "k"), undefined)
  await log.close()
})

t.test("the newest record is never dropped, so LSNs never go back after a restart", async (t) => {
  const files = makeMemoryFiles()
  let log = openLog(files, DIR, { maxSegmentBytes: 100 })
  for (let i = 0; i < 5; i++) await put(log, `k${i}`, "v".repeat(50))
  for (let i = 0; i < 5; i++) await del(log, `k${i}`)
  const last = log.committedLsn
  await log.close()
  log = openLog(files, DIR, { maxSegmentBytes: 100 })
  await compact(log, selectInputs(log, true))
  await log.close()
  log = openLog(files, DIR)
  t.equal(log.nextLsn, last + 1, "the next LSN continues")
  await log.close()
})

t.test("an interrupted compaction before its manifest is rolled back; after it, forward", async (t) => {
  for (const step of ["beforeManifest", "afterManifest", "beforeUnlink"] as const) {
    const files = makeMemoryFiles()
    const log = openLog(files, DIR, { maxSegmentBytes: 300 })
    for (let round = 0; round < 6; round++) for (let i = 0; i < 8; i++) await put(log, `k${i}`, `r${round}`)
    await del(log, "k0")
    await put(log, "tail", "t")
    // A dropped tombstone and a kept one both read as deleted; what must never happen is r0..r5 again.
    const visible = (l: typeof log) => [...l.index.keys()].map((k) => [k, valueOf(l, k)]).filter(([, v]) => v !== "<deleted>").sort()
    const want = visible(log)
    const crash = new Error("crash")
    await t.rejects(compact(log, selectInputs(log, true), () => false, { [step]: () => { throw crash } }), crash)
    log.abandonForTest()
    files.crash()
    const reopened = openLog(files, DIR)
    t.same(visible(reopened), want, `${step}: every value as before, k0 still deleted`)
    t.notOk(files.list(DIR).some((f) => f.endsWith(".tmp") || f === "MERGE"), `${step}: no leftovers`)
    t.equal(reopened.damage.length, 0, `${step}: no damage`)
    await reopened.close()
  }
})

t.test("segments stay in LSN order after compaction", async (t) => {
  const files = makeMemoryFiles()
  const log = openLog(files, DIR, { maxSegmentBytes: 500 })
  for (let i = 0; i < 100; i++) await put(log, `k${(i * 7) % 23}`, `v${i}`)
  await compact(log, selectInputs(log, true))
  for (const name of segFiles(files)) {
    const lsns: number[] = []
    const buf = files.readFile(path.join(DIR, name))
    for (let at = 0; at < buf.length;) {
      lsns.push(buf.readUInt32LE(at + 8))
      at += 36 + buf.readUInt16LE(at + 24) + buf.readUInt32LE(at + 28) + buf.readUInt32LE(at + 32)
    }
    t.same(lsns, [...lsns].sort((a, b) => a - b), `${name} in LSN order`)
  }
  await log.close()
})

t.test("compaction's passes over the index take many turns; writes and reads between them stay right", async (t) => {
  // More keys than several turns' worth (4,096 records a turn), written out of key order
  // and overwritten in another order, so the index's order is not the LSN order.
  const N = 12_000
  const memory = makeMemoryFiles()
  let phase: "before" | "copying" | "swapping" | "after" = "before"
  // The copy starts when the first output (<id>.seg.tmp) is made.
  const files = { ...memory, open: (file: string, create: boolean) => {
    if (file.endsWith(".seg.tmp") && phase === "before") phase = "copying"
    return memory.open(file, create)
  } }
  const turns = { before: 0, copying: 0, swapping: 0, after: 0 }
  let hook: () => Promise<void> = async () => {}
  const log = openLog(files, DIR, {
    maxSegmentBytes: 64 * 1024,
    compactBytesPerSecond: 0,
    sleep: async () => {
      turns[phase]++
      await hook()
    }
  })
  const want = new Map<string, string>()
  const order = Array.from({ length: N }, (_, i) => (i * 7919) % N)
  for (const i of order) {
    want.set(`k${i}`, `first-${i}`)
    await put(log, `k${i}`, `first-${i}`)
  }
  for (const i of order.slice(0, N / 2).reverse()) {
    want.set(`k${i}`, `second-${i}`)
    await put(log, `k${i}`, `second-${i}`)
  }
  let n = 0
  let checked = 0
  hook = async () => {
    // A read of a sample of keys, then an overwrite, between two turns of the compaction.
    for (let j = 0; j < 50; j++) {
      const k = `k${(n * 131 + j * 977) % N}`
      if (valueOf(log, k) === want.get(k)) checked++
      else t.fail(`${k} read ${valueOf(log, k)} in phase ${phase}, want ${want.get(k)}`)
    }
    const k = `k${(n++ * 4099) % N}`
    want.set(k, `during-${phase}-${n}`)
    await put(log, k, `during-${phase}-${n}`)
  }
  const inputs = selectInputs(log, true)
  t.ok(inputs.length > 5, `${inputs.length} sealed inputs`)
  const r = await compact(log, inputs, () => false, {
    afterRename: () => void (phase = "swapping"),
    beforeUnlink: () => void (phase = "after")
  })
  hook = async () => {}
  t.ok(r, "compacted")
  // Finding the live records and sorting them: at least one turn per 4,096 keys walked.
  t.ok(turns.before >= 3, `${turns.before} turns before the copy made its first output`)
  // The index swap, after the commit point: a turn per 4,096 records moved.
  t.ok(turns.swapping >= 2, `${turns.swapping} turns while the index was swapped`)
  t.ok(checked > 500, `${checked} reads between turns, every one right`)
  for (const [k, v] of want) if (valueOf(log, k) !== v) t.fail(`${k}: ${valueOf(log, k)}, want ${v}`)
  // Each output is in LSN order (the cursor's k-way merge relies on it).
  const bySeg = new Map<number, Array<[number, number]>>()
  for (const [, l] of log.index.entries()) {
    if (!r!.outputs.includes(l.segment)) continue
    if (!bySeg.has(l.segment)) bySeg.set(l.segment, [])
    bySeg.get(l.segment)!.push([l.offset, l.lsn])
  }
  let ordered = true
  for (const rows of bySeg.values()) {
    rows.sort((a, b) => a[0] - b[0])
    for (let i = 1; i < rows.length; i++) if (rows[i]![1] <= rows[i - 1]![1]) ordered = false
  }
  t.ok(bySeg.size > 1 && ordered, `${bySeg.size} outputs, each in LSN order`)
  // And after a crash, the same values.
  log.abandonForTest()
  memory.crash()
  const reopened = openLog(memory, DIR)
  let same = 0
  for (const [k, v] of want) if (valueOf(reopened, k) === v) same++
  t.equal(same, want.size, "every value after a crash and restart")
  await reopened.close()
})

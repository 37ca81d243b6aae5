import * as path from "node:path"
import fc from "fast-check"
import t from "tap"
import { CorruptFile, CorruptRecord } from "../../engine/Errors.ts"
import { makeMemoryFiles, type MemoryFiles } from "../../engine/Files.ts"
import type { LogConfig } from "../../engine/Log.ts"
import { encode, probe, RecordType } from "../../engine/Record.ts"
import { classify, encodeSegmentHeader, SEGMENT_HEADER_BYTES } from "../../engine/SegmentHeader.ts"
import { openLog, put, valueOf } from "./helpers.ts"

const DIR = "/data"
/** Every fixture fits in one segment; no spare is made ahead, so that hundreds of opens stay fast. */
const SMALL: Partial<LogConfig> = { maxSegmentBytes: 256 * 1024, preallocate: false }
const open = (files: MemoryFiles) => openLog(files, DIR, SMALL)
const valueFor = (i: number) => `value-${i}-${"x".repeat(i * 7 % 50)}`

/** The salt of a current-format segment, read from its header. */
const saltOf = (bytes: Buffer): number => {
  const c = classify(bytes.subarray(0, SEGMENT_HEADER_BYTES))
  if (c._tag !== "header") throw new Error(`fixture has no valid header (${c._tag})`)
  return c.header.salt
}

/** Writes `n` distinct keys into one segment and "crashes": no hint, no clean close. */
const buildCrashed = async (n: number) => {
  const files = makeMemoryFiles()
  const log = open(files)
  for (let i = 0; i < n; i++) await put(log, `key-${i}`, valueFor(i))
  const seg = log.active.file
  log.abandonForTest()
  files.crash()
  const bytes = files.readFile(seg)
  const salt = saltOf(bytes)
  // Record boundaries, found by walking the valid file from the end of its header under its salt.
  const starts: number[] = []
  for (let at = SEGMENT_HEADER_BYTES; at < bytes.length;) {
    starts.push(at)
    const p = probe(bytes, at, bytes.length, salt)
    if (p._tag !== "ok") throw new Error(`fixture is not valid at ${at}: ${p._tag}`)
    at += p.size
  }
  if (starts.length !== n) throw new Error(`fixture holds ${starts.length} records, expected ${n}`)
  return { bytes, starts, salt, seg: path.basename(seg) }
}

/** A fresh file system holding only `bytes` as segment `name`. */
const withSegment = (name: string, bytes: Buffer): MemoryFiles => {
  const files = makeMemoryFiles()
  files.mkdirp(DIR)
  const fd = files.open(path.join(DIR, name), true)
  files.writeAll(fd, bytes, 0, bytes.length, 0)
  files.datasyncSync(fd)
  files.close(fd)
  files.syncDir(DIR)
  return files
}

t.test("the fixture: a 64-byte header, then records checked under its salt", async (t) => {
  const { bytes, starts, salt } = await buildCrashed(3)
  t.equal(starts[0], 64, "the first record starts after the header")
  t.not(salt, 0)
  t.equal(probe(bytes, 64, bytes.length, 0)._tag, "bad", "not valid unsalted")
  t.equal(probe(bytes, 64, bytes.length, (salt ^ 1) >>> 0)._tag, "bad", "not valid under another salt")
})

t.test("a torn tail is truncated to the last complete record, at every byte offset", async (t) => {
  const N = 12
  const { bytes, starts, seg } = await buildCrashed(N)
  const from = starts[N - 3]!
  let opened = 0
  for (let cut = from; cut <= bytes.length; cut++) {
    const files = withSegment(seg, bytes.subarray(0, cut))
    const log = open(files)
    const complete = starts.filter((s, i) => (starts[i + 1] ?? bytes.length) <= cut).length
    for (let i = 0; i < N; i++) {
      const want = i < complete ? valueFor(i) : undefined
      if (valueOf(log, `key-${i}`) !== want) t.fail(`cut ${cut}: key-${i} is ${valueOf(log, `key-${i}`)}, expected ${want}`)
    }
    const end = complete === N ? bytes.length : starts[complete]!
    const torn = cut > end
    const now = files.readFile(path.join(DIR, seg))
    if (now.length !== end) t.fail(`cut ${cut}: segment not truncated to ${end}`)
    if (Buffer.compare(now, bytes.subarray(0, end)) !== 0) t.fail(`cut ${cut}: the kept bytes changed`)
    if (torn !== log.damage.some((d) => d.action === "truncated")) t.fail(`cut ${cut}: torn tail not reported`)
    if (log.damage.some((d) => d.action !== "truncated" || d.offset !== end)) t.fail(`cut ${cut}: unexpected damage ${JSON.stringify(log.damage)}`)
    if (log.nextLsn !== complete + 1) t.fail(`cut ${cut}: nextLsn ${log.nextLsn}, expected ${complete + 1}`)
    // The engine keeps working after recovery.
    await put(log, "after", "ok")
    if (valueOf(log, "after") !== "ok") t.fail(`cut ${cut}: write after recovery failed`)
    await log.close()
    opened++
  }
  t.equal(opened, bytes.length - from + 1, `opened ${opened} truncated copies`)
})

t.test("a flipped bit loses only the record it hits, at every bit of the last records", async (t) => {
  const N = 10
  const { bytes, starts, seg } = await buildCrashed(N)
  const from = starts[N - 3]!
  let flips = 0
  for (let byte = from; byte < bytes.length; byte++) {
    for (let bit = 0; bit < 8; bit++) {
      const copy = Buffer.from(bytes)
      copy[byte]! ^= 1 << bit
      const hit = starts.findLastIndex((s) => s <= byte)
      const files = withSegment(seg, copy)
      const log = open(files)
      for (let i = 0; i < N; i++) {
        const got = valueOf(log, `key-${i}`)
        const want = i === hit ? undefined : valueFor(i)
        if (got !== want) t.fail(`flip ${byte}.${bit}: key-${i} is ${got}, expected ${want}`)
      }
      const hitEnd = starts[hit + 1] ?? bytes.length
      const d = log.damage
      if (d.length !== 1 || d[0]!.offset !== starts[hit] || d[0]!.length !== hitEnd - starts[hit]!) {
        t.fail(`flip ${byte}.${bit}: expected one damage report of record ${hit}, got ${JSON.stringify(d)}`)
      }
      await log.close()
      flips++
    }
  }
  t.equal(flips, (bytes.length - from) * 8, `checked ${flips} single-bit flips`)
})

t.test("a flipped bit in the segment header hits one copy: every record still reads", async (t) => {
  const N = 6
  const { bytes, seg } = await buildCrashed(N)
  let flips = 0
  for (let bit = 0; bit < SEGMENT_HEADER_BYTES * 8; bit++) {
    const copy = Buffer.from(bytes)
    copy[bit >> 3]! ^= 1 << (bit & 7)
    const files = withSegment(seg, copy)
    let log
    try {
      log = open(files)
    } catch (e) {
      t.fail(`header bit ${bit}: open failed: ${(e as Error).message}`)
      continue
    }
    for (let i = 0; i < N; i++) if (valueOf(log, `key-${i}`) !== valueFor(i)) t.fail(`header bit ${bit}: key-${i} is ${valueOf(log, `key-${i}`)}`)
    if (log.damage.length !== 0) t.fail(`header bit ${bit}: damage reported ${JSON.stringify(log.damage)}`)
    if (files.readFile(path.join(DIR, seg)).length !== bytes.length) t.fail(`header bit ${bit}: segment length changed`)
    await log.close()
    // And again, now from the hint written at start-up.
    const again = open(files)
    for (let i = 0; i < N; i++) if (valueOf(again, `key-${i}`) !== valueFor(i)) t.fail(`header bit ${bit}, reopened: key-${i} is ${valueOf(again, `key-${i}`)}`)
    await again.close()
    flips++
  }
  t.equal(flips, 512, "every bit of both copies")
})

/**
 * Opens a copy of the fixture with bit `bitA` of header copy 1 and bit `bitB` of copy 2
 * flipped; returns what went wrong (undefined: CorruptFile naming the file, which is untouched).
 */
const bothCopies = async (fixture: Awaited<ReturnType<typeof buildCrashed>>, bitA: number, bitB: number): Promise<string | undefined> => {
  const { bytes, seg } = fixture
  const file = path.join(DIR, seg)
  const copy = Buffer.from(bytes)
  copy[bitA >> 3]! ^= 1 << (bitA & 7)
  copy[32 + (bitB >> 3)]! ^= 1 << (bitB & 7)
  const files = withSegment(seg, copy)
  let outcome: string
  try {
    const log = open(files)
    outcome = `opened with ${log.index.size} keys, damage ${JSON.stringify(log.damage.map((d) => [d.offset, d.length, d.action]))}`
    await log.close()
  } catch (e) {
    outcome = e instanceof CorruptFile && e.code === "corrupt_file" && e.file === file ? "CorruptFile" : `threw ${String(e)}`
  }
  const after = files.exists(file) ? files.readFile(file) : undefined
  const untouched = after !== undefined && Buffer.compare(after, copy) === 0
  if (outcome === "CorruptFile" && untouched) return undefined
  return `bits ${bitA} (copy 1) and ${bitB} (copy 2): ${outcome}; file ${after === undefined ? "removed" : untouched ? "untouched" : `changed to ${after.length} bytes`}`
}

/** Bits 0..31 of a copy are its magic ("TSEG"). */
const inMagic = (bit: number) => bit < 32

t.test("damage to both header copies: open fails with CorruptFile and the file is left untouched", async (t) => {
  const fixture = await buildCrashed(4)
  const failures: string[] = []
  // The same bit in both copies (the same field damaged twice), then random pairs; at least
  // one copy keeps its magic (both magics damaged: the next test).
  for (let bit = 32; bit < 256; bit++) failures.push(...[await bothCopies(fixture, bit, bit)].filter((f) => f !== undefined))
  const pairs = fc.sample(fc.tuple(fc.nat({ max: 255 }), fc.nat({ max: 255 })).filter(([a, b]) => !(inMagic(a) && inMagic(b))), { numRuns: 300, seed: 42 })
  for (const [a, b] of pairs) failures.push(...[await bothCopies(fixture, a, b)].filter((f) => f !== undefined))
  t.same(failures, [], `${224 + pairs.length} combinations, ${failures.length} failing`)
})

// With the magic damaged in both copies there is no header to find at all; such a file must
// not be taken for format 1, whose torn-tail rule would cut the whole file away as the tail.
t.test("damage to the magic of both header copies: CorruptFile, file untouched", async (t) => {
  const fixture = await buildCrashed(4)
  const failures: string[] = []
  for (let bit = 0; bit < 32; bit++) failures.push(...[await bothCopies(fixture, bit, bit)].filter((f) => f !== undefined))
  for (const [a, b] of [[0, 31], [5, 17], [24, 3], [7, 8]] as const) failures.push(...[await bothCopies(fixture, a, b)].filter((f) => f !== undefined))
  t.same(failures, [], `36 combinations, ${failures.length} failing`)
})

t.test("damage in the middle of a sealed segment is skipped by searching, never by its length field", async (t) => {
  const N = 20
  const { bytes, starts, seg } = await buildCrashed(N)
  // Make record 5's value length claim far more than the file: a reader that trusted it
  // would lose records 6.. (or read past them as one record).
  const copy = Buffer.from(bytes)
  copy.writeUInt32LE(1 << 20, starts[5]! + 32)
  const files = withSegment(seg, copy)
  const log = open(files)
  for (let i = 0; i < N; i++) t.equal(valueOf(log, `key-${i}`), i === 5 ? undefined : valueFor(i), `key-${i}`)
  t.same(log.damage.map((d) => [d.offset, d.length, d.action]), [[starts[5], starts[6]! - starts[5]!, "skipped"]])
  t.equal(files.readFile(path.join(DIR, seg)).length, bytes.length, "nothing cut")
  await log.close()
})

t.test("a valid record whose LSN does not follow the previous one is damage", async (t) => {
  // A hand-made segment: every record valid under the salt, some out of LSN order.
  const salt = 0x0bad_5eed
  const lsns: Array<[string, number]> = [["a", 1], ["b", 2], ["c", 5], ["d", 3], ["e", 5], ["f", 6], ["g", 4]]
  const recs = lsns.map(([k, lsn]) => encode({ type: RecordType.Put, lsn, timestamp: 1, key: Buffer.from(k), value: Buffer.from(`v-${k}`) }, salt))
  const header = encodeSegmentHeader({ id: 1, kind: "log", salt, created: 1 })
  const bytes = Buffer.concat([header, ...recs])
  const at = (i: number) => SEGMENT_HEADER_BYTES + recs.slice(0, i).reduce((n, r) => n + r.length, 0)
  const files = withSegment("00000001.seg", bytes)
  const log = open(files)
  t.same(["a", "b", "c", "d", "e", "f", "g"].map((k) => valueOf(log, k)), ["v-a", "v-b", "v-c", undefined, undefined, "v-f", undefined])
  t.same(log.damage.map((d) => [d.offset, d.length, d.action]), [[at(3), at(5) - at(3), "skipped"], [at(6), bytes.length - at(6), "truncated"]])
  t.match(log.damage[0]!.reason, /LSN 3 does not follow 5/)
  t.equal(log.nextLsn, 7)
  t.equal(files.readFile(path.join(DIR, "00000001.seg")).length, at(6), "the out-of-order tail is cut")
  await log.close()
})

t.test("a record damaged after start-up is reported on read, never returned", async (t) => {
  const files = makeMemoryFiles()
  let log = open(files)
  for (let i = 0; i < 5; i++) await put(log, `k${i}`, `v${i}`)
  await log.close()
  // The hint file matches the segment's size, so start-up trusts it; the read must still check.
  const name = files.list(DIR).find((f) => f.endsWith(".seg"))!
  const buf = files.readFile(path.join(DIR, name))
  const salt = saltOf(buf)
  const first = probe(buf, SEGMENT_HEADER_BYTES, buf.length, salt)
  if (first._tag !== "ok") throw new Error("fixture is not valid")
  const at = SEGMENT_HEADER_BYTES + first.size + 10
  const fd = files.open(path.join(DIR, name), false)
  files.writeAll(fd, Buffer.from([buf[at]! ^ 0xff]), 0, 1, at)
  files.datasyncSync(fd)
  files.close(fd)
  log = open(files)
  t.equal(log.stats.startupKeysFromHints, 5, "loaded from the hint")
  t.throws(() => log.read("k1"), CorruptRecord)
  t.equal(valueOf(log, "k0"), "v0")
  t.equal(valueOf(log, "k2"), "v2")
  await log.close()
})

t.test("zeros after the data (extended but unwritten file) are not damage, and are cut", async (t) => {
  const { bytes, seg } = await buildCrashed(4)
  for (const zeros of [1, 35, 36, 4096]) {
    const files = withSegment(seg, Buffer.concat([bytes, Buffer.alloc(zeros)]))
    const log = open(files)
    for (let i = 0; i < 4; i++) t.equal(valueOf(log, `key-${i}`), valueFor(i))
    t.equal(files.readFile(path.join(DIR, seg)).length, bytes.length, `${zeros} zero bytes cut`)
    t.same(log.damage, [], "not reported as damage")
    await log.close()
  }
})

t.test("a power cut keeps every acknowledged write and nothing half-written", async (t) => {
  const files = makeMemoryFiles()
  const log = openLog(files, DIR, { maxSegmentBytes: 2000 })
  const acked: string[] = []
  let enough!: () => void
  const cutPoint = new Promise<void>((resolve) => (enough = resolve))
  const writes = Array.from({ length: 200 }, (_, i) =>
    put(log, `p${i}`, `v${i}`).then(() => {
      acked.push(`p${i}`)
      if (acked.length === 60) enough()
    })
  )
  // Cut power while later batches are still in flight.
  await Promise.race([Promise.all(writes), cutPoint])
  log.abandonForTest()
  files.crash((_, unsynced) => Math.floor(unsynced / 2))
  const reopened = openLog(files, DIR)
  for (const k of acked) t.equal(valueOf(reopened, k), `v${k.slice(1)}`)
  // Whatever else survived the cut is whole: every indexed record passes its checksum.
  for (const key of [...reopened.index.keys()]) t.doesNotThrow(() => reopened.read(key), key)
  t.ok(acked.length >= 60 && acked.length < 200, `${acked.length} of 200 acknowledged before the cut`)
  t.ok(reopened.nextLsn <= 201, "no LSN beyond those written")
  await reopened.close()
})

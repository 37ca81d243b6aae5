import * as path from "node:path"
import t from "tap"
import { makeMemoryFiles, type MemoryFiles } from "../../engine/Files.ts"
import { CorruptRecord } from "../../engine/Errors.ts"
import { probe } from "../../engine/Record.ts"
import { openLog, put, valueOf } from "./helpers.ts"

const DIR = "/data"

/** Writes `n` distinct keys into one segment and "crashes": no hint, no clean close. */
const buildCrashed = async (n: number) => {
  const files = makeMemoryFiles()
  const log = openLog(files, DIR)
  for (let i = 0; i < n; i++) await put(log, `key-${i}`, `value-${i}-${"x".repeat(i * 7 % 50)}`)
  const seg = log.active.file
  log.abandonForTest()
  files.crash()
  const bytes = files.readFile(seg)
  // Record boundaries, found by walking the valid file.
  const starts: number[] = []
  for (let at = 0; at < bytes.length;) {
    starts.push(at)
    const p = probe(bytes, at, bytes.length)
    if (p._tag !== "ok") throw new Error("fixture is not valid")
    at += p.size
  }
  return { bytes, starts, seg: path.basename(seg) }
}

/** A fresh file system holding only `bytes` as segment `name`. */
const withSegment = (name: string, bytes: Buffer): MemoryFiles => {
  const files = makeMemoryFiles()
  files.mkdirp(DIR)
  const fd = files.open(path.join(DIR, name), true)
  files.writeAll(fd, bytes, 0, bytes.length, 0)
  files.datasyncSync(fd)
  files.close(fd)
  return files
}

t.test("a torn tail is truncated to the last complete record, at every byte offset", async (t) => {
  const N = 12
  const { bytes, starts, seg } = await buildCrashed(N)
  const from = starts[N - 3]!
  let opened = 0
  for (let cut = from; cut <= bytes.length; cut++) {
    const files = withSegment(seg, bytes.subarray(0, cut))
    const log = openLog(files, DIR)
    const complete = starts.filter((s, i) => (starts[i + 1] ?? bytes.length) <= cut).length
    for (let i = 0; i < N; i++) {
      const want = i < complete ? `value-${i}-${"x".repeat(i * 7 % 50)}` : undefined
      if (valueOf(log, `key-${i}`) !== want) t.fail(`cut ${cut}: key-${i} is ${valueOf(log, `key-${i}`)}, expected ${want}`)
    }
    const end = complete === N ? bytes.length : starts[complete]!
    const torn = cut > end
    if (files.readFile(path.join(DIR, seg)).length !== end) t.fail(`cut ${cut}: segment not truncated to ${end}`)
    if (torn !== log.damage.some((d) => d.action === "truncated")) t.fail(`cut ${cut}: torn tail not reported`)
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
      const log = openLog(files, DIR)
      for (let i = 0; i < N; i++) {
        const got = valueOf(log, `key-${i}`)
        const want = i === hit ? undefined : `value-${i}-${"x".repeat(i * 7 % 50)}`
        if (got !== want) t.fail(`flip ${byte}.${bit}: key-${i} is ${got}, expected ${want}`)
      }
      if (log.damage.length !== 1) t.fail(`flip ${byte}.${bit}: expected one damage report, got ${log.damage.length}`)
      await log.close()
      flips++
    }
  }
  t.equal(flips, (bytes.length - from) * 8, `checked ${flips} single-bit flips`)
})

t.test("damage in the middle of a sealed segment is skipped by searching, never by its length field", async (t) => {
  const N = 20
  const { bytes, starts, seg } = await buildCrashed(N)
  // Make record 5's value length claim far more than the file: a reader that trusted it
  // would lose records 6.. (or read past them as one record).
  const copy = Buffer.from(bytes)
  copy.writeUInt32LE(1 << 20, starts[5]! + 32)
  const files = withSegment(seg, copy)
  const log = openLog(files, DIR)
  for (let i = 0; i < N; i++) t.equal(valueOf(log, `key-${i}`), i === 5 ? undefined : `value-${i}-${"x".repeat(i * 7 % 50)}`, `key-${i}`)
  t.same(log.damage.map((d) => [d.offset, d.length, d.action]), [[starts[5], starts[6]! - starts[5]!, "skipped"]])
  await log.close()
})

t.test("a record damaged after start-up is reported on read, never returned", async (t) => {
  const files = makeMemoryFiles()
  let log = openLog(files, DIR)
  for (let i = 0; i < 5; i++) await put(log, `k${i}`, `v${i}`)
  await log.close()
  // The hint file matches the segment's size, so start-up trusts it; the read must still check.
  const name = files.list(DIR).find((f) => f.endsWith(".seg"))!
  const fd = files.open(path.join(DIR, name), false)
  const buf = files.readFile(path.join(DIR, name))
  const second = probe(buf, 0, buf.length)
  const at = second._tag === "ok" ? second.size + 10 : 0
  files.writeAll(fd, Buffer.from([buf[at]! ^ 0xff]), 0, 1, at)
  files.close(fd)
  log = openLog(files, DIR)
  t.equal(log.stats.startupKeysFromHints, 5, "loaded from the hint")
  t.throws(() => log.read("k1"), CorruptRecord)
  t.equal(valueOf(log, "k0"), "v0")
  t.equal(valueOf(log, "k2"), "v2")
  await log.close()
})

t.test("zeros after a crash (extended but unwritten file) are a torn tail", async (t) => {
  const { bytes, seg } = await buildCrashed(4)
  const files = withSegment(seg, Buffer.concat([bytes, Buffer.alloc(4096)]))
  const log = openLog(files, DIR)
  for (let i = 0; i < 4; i++) t.ok(valueOf(log, `key-${i}`))
  t.equal(files.readFile(path.join(DIR, seg)).length, bytes.length)
  await log.close()
})

t.test("a power cut keeps every acknowledged write and nothing half-written", async (t) => {
  const files = makeMemoryFiles()
  const log = openLog(files, DIR, { maxSegmentBytes: 2000 })
  const acked: string[] = []
  const writes = Array.from({ length: 200 }, (_, i) => put(log, `p${i}`, `v${i}`).then(() => acked.push(`p${i}`)))
  // Cut power while some batches are still in flight.
  await Promise.race([Promise.all(writes), new Promise((r) => setTimeout(r, 0))])
  log.abandonForTest()
  files.crash((_, unsynced) => Math.floor(unsynced / 2))
  const reopened = openLog(files, DIR)
  for (const k of acked) t.equal(valueOf(reopened, k), `v${k.slice(1)}`)
  // Whatever else survived the cut is whole: every indexed record passes its checksum.
  for (const key of [...reopened.index.keys()]) t.doesNotThrow(() => reopened.read(key), key)
  t.ok(acked.length > 0, `${acked.length} acknowledged before the cut`)
  await reopened.close()
})

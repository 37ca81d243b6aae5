import * as path from "node:path"
import t from "tap"
import { makeMemoryFiles } from "../../engine/Files.ts"
import { encodeHint, forEachHint, readHintHeader } from "../../engine/HintFile.ts"
import { del, indexRows, openLog, put, valueOf } from "./helpers.ts"

const DIR = "/data"

const populate = async () => {
  const files = makeMemoryFiles()
  const log = openLog(files, DIR, { maxSegmentBytes: 4096 })
  for (let round = 0; round < 5; round++) {
    for (let i = 0; i < 150; i++) {
      if ((i + round) % 7 === 0) await del(log, `key-${i}`)
      else await put(log, `key-${i}`, `r${round}-${"y".repeat((i * 13) % 90)}`)
    }
  }
  await log.close()
  return files
}

t.test("start-up from hint files and from a full scan build the same index", async (t) => {
  const files = await populate()
  const fromHints = openLog(files, DIR)
  t.ok(fromHints.stats.startupKeysFromHints > 0, "hints were used")
  t.equal(fromHints.stats.startupKeysFromScans, 0, "nothing was scanned")
  const a = indexRows(fromHints)
  const segs = [...fromHints.segments.values()].map((s) => [s.id, s.size, s.live, s.minLsn, s.maxLsn])
  await fromHints.close()
  for (const f of files.list(DIR)) if (f.endsWith(".hint")) files.unlink(path.join(DIR, f))
  const fromScan = openLog(files, DIR)
  t.equal(fromScan.stats.startupKeysFromHints, 0, "no hints left")
  t.ok(fromScan.stats.startupKeysFromScans > 0, "segments were scanned")
  t.same(indexRows(fromScan), a, "same index")
  t.same([...fromScan.segments.values()].filter((s) => s.size > 0).map((s) => [s.id, s.size, s.live, s.minLsn, s.maxLsn]), segs.filter((s) => s[1]! > 0), "same segment figures")
  t.equal(a.length, 150)
  await fromScan.close()
})

t.test("a damaged, stale or foreign hint file is ignored and its segment scanned", async (t) => {
  const files = await populate()
  const ref = openLog(files, DIR)
  const want = indexRows(ref)
  await ref.close()
  const hints = files.list(DIR).filter((f) => f.endsWith(".hint")).sort()
  const [h1, h2, h3] = hints.map((f) => path.join(DIR, f))
  // Flip a byte in the first, truncate the second, give the third another segment's size.
  const flip = files.readFile(h1!)
  flip[flip.length >> 1]! ^= 1
  const write = (file: string, data: Buffer) => {
    const fd = files.open(file, false)
    files.truncate(fd, 0)
    files.writeAll(fd, data, 0, data.length, 0)
    files.close(fd)
  }
  write(h1!, flip)
  write(h2!, files.readFile(h2!).subarray(0, 30))
  const h3buf = files.readFile(h3!)
  const header = readHintHeader(h3buf)!
  const entries: Parameters<typeof encodeHint>[1][number][] = []
  forEachHint(h3buf, (key, lsn, offset, size, tombstone, partition, hashHi, hashLo) => entries.push({ key, lsn, offset, size, tombstone, partition, hashHi, hashLo }))
  write(h3!, encodeHint({ ...header, segmentSize: header.segmentSize + 1 }, entries))
  const log = openLog(files, DIR)
  t.ok(log.stats.startupKeysFromScans > 0, "three segments scanned")
  t.same(indexRows(log), want, "same index as with good hints")
  await log.close()
})

t.test("values survive close and reopen, tombstones included", async (t) => {
  const files = await populate()
  const log = openLog(files, DIR)
  t.equal(valueOf(log, "key-3"), "<deleted>")
  t.equal(valueOf(log, "key-1"), `r4-${"y".repeat(13)}`)
  t.equal(valueOf(log, "nope"), undefined)
  await log.close()
})

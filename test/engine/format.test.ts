/**
 * The on-disk format's defences, each tested so that removing it fails a case: the salt and
 * the LSN order against records forged by values, format 1 segments still read (and
 * rewritten as format 2 by compaction), unknown formats refused with nothing changed,
 * preallocated spares removed and a torn first record cut back to the header.
 */
import * as path from "node:path"
import { crc32 } from "node:zlib"
import t, { type Test } from "tap"
import { compact, selectInputs } from "../../engine/Compaction.ts"
import { CorruptFile, UnknownFormat } from "../../engine/Errors.ts"
import { makeMemoryFiles, type MemoryFiles } from "../../engine/Files.ts"
import type { Log, LogConfig } from "../../engine/Log.ts"
import { encode, LEGACY_VERSION, probe, RecordType, type RecordInput } from "../../engine/Record.ts"
import { scan } from "../../engine/Recovery.ts"
import { classify, encodeSegmentHeader, SEGMENT_HEADER_BYTES } from "../../engine/SegmentHeader.ts"
import { openLog, put, valueOf } from "./helpers.ts"

const DIR = "/data"
const SMALL: Partial<LogConfig> = { maxSegmentBytes: 256 * 1024 }
const open = (files: MemoryFiles, config: Partial<LogConfig> = {}) => openLog(files, DIR, { ...SMALL, ...config })
const segPath = (name: string) => path.join(DIR, name)
const segFiles = (files: MemoryFiles) => files.list(DIR).filter((f) => f.endsWith(".seg")).sort()

/** Writes `bytes` as `file`, durably (file and directory synced). */
const plant = (files: MemoryFiles, file: string, bytes: Buffer): void => {
  files.mkdirp(path.dirname(file))
  const fd = files.open(file, true)
  files.truncate(fd, 0)
  files.writeAll(fd, bytes, 0, bytes.length, 0)
  files.datasyncSync(fd)
  files.close(fd)
  files.syncDir(path.dirname(file))
}

/** Every file of `dir` with its bytes. */
const snapshot = (files: MemoryFiles, dir = DIR): Map<string, Buffer> =>
  new Map(files.list(dir).sort().map((n) => [n, Buffer.from(files.readFile(path.join(dir, n)))]))

/** A fresh file system holding `dir` as `snap` has it. */
const restore = (snap: Map<string, Buffer>, dir = DIR): MemoryFiles => {
  const files = makeMemoryFiles()
  files.mkdirp(dir)
  for (const [n, b] of snap) plant(files, path.join(dir, n), b)
  return files
}

/** Differences between two snapshots, as readable lines (empty: byte-identical). */
const diffDirs = (before: Map<string, Buffer>, after: Map<string, Buffer>): string[] => {
  const out: string[] = []
  for (const [n, b] of before) {
    const a = after.get(n)
    if (a === undefined) out.push(`${n} removed`)
    else if (Buffer.compare(a, b) !== 0) out.push(`${n} changed (${b.length} -> ${a.length} bytes)`)
  }
  for (const n of after.keys()) if (!before.has(n)) out.push(`${n} created`)
  return out
}

const saltOf = (bytes: Buffer): number => {
  const c = classify(bytes.subarray(0, SEGMENT_HEADER_BYTES))
  if (c._tag !== "header") throw new Error(`no valid segment header (${c._tag})`)
  return c.header.salt
}

interface Rec {
  readonly key: string
  readonly lsn: number
  readonly start: number
  readonly end: number
}

/** The records of a current-format segment, walked under its salt (throws on anything invalid). */
const recordsOf = (bytes: Buffer): Rec[] => {
  const salt = saltOf(bytes)
  const out: Rec[] = []
  const r = scan(bytes, SEGMENT_HEADER_BYTES, bytes.length, salt, (rec, offset, size) => {
    out.push({ key: Buffer.from(rec.key).toString(), lsn: rec.lsn, start: offset, end: offset + size })
  })
  if (r.damaged.length > 0 || r.tornTail !== undefined || r.future !== undefined) throw new Error("fixture segment is not clean")
  return out
}

/** Recomputes a record's CRC under `seed` after its bytes were changed. */
const recrc = (buf: Buffer, at: number, end: number, seed: number): void => {
  buf.writeUInt32LE(crc32(buf.subarray(at + 4, end), seed), at)
}

/** A format-1 record: version 1, no partition, CRC with seed 0. */
const encodeV1 = (r: RecordInput): Buffer => {
  const buf = encode({ ...r, partition: 0 }, 0)
  buf[5] = LEGACY_VERSION
  buf.writeUInt16LE(0, 26)
  recrc(buf, 0, buf.length, 0)
  return buf
}

/** Opens, expecting failure; returns the error. */
const openFails = (files: MemoryFiles, config: Partial<LogConfig> = {}): unknown => {
  try {
    const log = open(files, config)
    log.abandonForTest()
  } catch (e) {
    return e
  }
  return undefined
}

// ---- forged records ------------------------------------------------------------------------

t.test("records forged by a value never come back after the enclosing record is damaged", async (t) => {
  const files = makeMemoryFiles()
  // Another node's segment: more records than the target holds when it is stored, so their
  // LSNs would pass the order check; only the salt rejects them.
  const other = openLog(files, "/other", SMALL)
  for (let i = 0; i < 16; i++) await put(other, `foreign-${i}`, `f${i}`)
  const otherSeg = files.readFile(other.active.file)
  await other.close()
  // A segment with LSNs near 2^52: accepted, they would make nextLsn jump.
  const huge = openLog(files, "/huge", SMALL)
  huge.nextLsn = 2 ** 52 - 10
  for (let i = 0; i < 4; i++) await put(huge, `huge-${i}`, `h${i}`)
  const hugeSeg = files.readFile(huge.active.file)
  await huge.close()
  t.ok(recordsOf(hugeSeg).every((r) => r.lsn > 2 ** 52 - 11), "the huge segment holds LSNs near 2^52")

  const log = open(files)
  const written = new Map<string, Buffer>()
  const write = async (key: string, value: Buffer) => {
    await put(log, key, value)
    written.set(key, value)
  }
  for (let i = 0; i < 3; i++) await write(`own-${i}`, Buffer.from(`o${i}`))
  await write("carrier-other", otherSeg)
  await write("mid-1", Buffer.from("m1"))
  await write("carrier-huge", hugeSeg)
  await write("mid-2", Buffer.from("m2"))
  // This very log's own segment, as it is now: its records carry this segment's salt, and
  // only the LSN order rejects them.
  const ownSeg = Buffer.from(files.readFile(log.active.file))
  t.ok(recordsOf(ownSeg).length === 7, "the copy of the own segment holds 7 valid records under the same salt")
  await write("carrier-own", ownSeg)
  for (let i = 0; i < 3; i++) await write(`tail-${i}`, Buffer.from(`t${i}`))
  const segName = path.basename(log.active.file)
  log.abandonForTest()
  files.crash()
  const bytes = files.readFile(segPath(segName))
  const recs = recordsOf(bytes)
  t.same(recs.map((r) => r.key), [...written.keys()], "the fixture holds every record in order")
  const maxLsn = Math.max(...recs.map((r) => r.lsn))
  t.equal(maxLsn, recs.length)

  const check = async (what: string, copy: Buffer, expectPresent: (k: string) => boolean, expectDamage: Array<[number, number]>, expectSize: number): Promise<string[]> => {
    const fs2 = makeMemoryFiles()
    plant(fs2, segPath(segName), copy)
    const l = open(fs2, { preallocate: false })
    const problems: string[] = []
    for (const k of l.index.keys()) if (!written.has(k)) problems.push(`key nobody wrote: ${k}`)
    for (const [k, v] of written) {
      const e = l.index.get(k) === undefined ? undefined : l.read(k)
      if (expectPresent(k)) {
        if (e === undefined || Buffer.compare(Buffer.from(e.value), v) !== 0) problems.push(`${k} lost or changed`)
      } else if (e !== undefined) problems.push(`${k} should be gone`)
    }
    if (l.nextLsn >= maxLsn + 2) problems.push(`nextLsn ${l.nextLsn} (largest real LSN ${maxLsn})`)
    const got = l.damage.map((d) => [d.offset, d.length] as [number, number])
    if (JSON.stringify(got) !== JSON.stringify(expectDamage)) problems.push(`damage ${JSON.stringify(got)}, expected ${JSON.stringify(expectDamage)}`)
    const size = fs2.readFile(segPath(segName)).length
    if (size !== expectSize) problems.push(`segment is ${size} bytes, expected ${expectSize}`)
    await l.close()
    return problems.map((p) => `${what}: ${p}`)
  }

  for (const carrier of ["carrier-other", "carrier-huge", "carrier-own"]) {
    const r = recs.find((x) => x.key === carrier)!
    const problems: string[] = []
    // Bit flips: every bit of the enclosing record's header, and a bit in every 11th byte of its body.
    const bits: number[] = []
    for (let b = 0; b < 36 * 8; b++) bits.push(b)
    for (let byte = 36; byte < r.end - r.start; byte += 11) bits.push(byte * 8 + (byte % 8))
    for (const b of bits) {
      const copy = Buffer.from(bytes)
      copy[r.start + (b >> 3)]! ^= 1 << (b & 7)
      const isLast = r.end === bytes.length
      problems.push(...await check(`${carrier} bit ${b}`, copy, (k) => k !== carrier, [[r.start, r.end - r.start]], isLast ? r.start : bytes.length))
    }
    // Torn: the file ends at every offset inside the enclosing record (everything after it lost).
    for (let cut = r.start; cut < r.end; cut++) {
      const before = new Set(recs.filter((x) => x.end <= r.start).map((x) => x.key))
      problems.push(...await check(`${carrier} cut ${cut}`, bytes.subarray(0, cut), (k) => before.has(k), cut > r.start ? [[r.start, cut - r.start]] : [], r.start))
    }
    t.same(problems.slice(0, 20), [], `${carrier}: ${bits.length} bit flips, ${r.end - r.start} cuts, ${problems.length} problems`)
  }
})

// ---- format 1 ------------------------------------------------------------------------------

t.test("a format-1 segment (no header, seed 0) opens and reads; new writes and compaction produce format 2", async (t) => {
  const partitionOf = (k: string) => (k.charCodeAt(k.length - 1) * 7) % 64
  const config: Partial<LogConfig> = { partitionOf }
  const recs: Buffer[] = []
  let lsn = 0
  for (let i = 0; i < 10; i++) recs.push(encodeV1({ type: RecordType.Put, lsn: ++lsn, timestamp: 1000 + lsn, key: Buffer.from(`legacy-${i}`), meta: Buffer.from(`m${i}`), value: Buffer.from(`old-${i}`) }))
  recs.push(encodeV1({ type: RecordType.Put, lsn: ++lsn, timestamp: 1000 + lsn, key: Buffer.from("legacy-2"), value: Buffer.from("old-2-again") }))
  recs.push(encodeV1({ type: RecordType.Tombstone, lsn: ++lsn, timestamp: 1000 + lsn, key: Buffer.from("legacy-3") }))
  const legacy = Buffer.concat(recs)
  t.equal(classify(legacy.subarray(0, SEGMENT_HEADER_BYTES))._tag, "legacy")
  const want = (i: number) => (i === 2 ? "old-2-again" : i === 3 ? "<deleted>" : `old-${i}`)
  const files = makeMemoryFiles()
  plant(files, segPath("00000001.seg"), legacy)

  let log: Log = open(files, config)
  t.same(log.damage, [], "no damage")
  t.equal(log.segments.get(1)?.kind, "legacy")
  for (let i = 0; i < 10; i++) {
    t.equal(valueOf(log, `legacy-${i}`), want(i), `legacy-${i}`)
    if (i !== 3) t.equal(log.read(`legacy-${i}`)!.partition, partitionOf(`legacy-${i}`), `legacy-${i}: partition from the configuration`)
  }
  t.equal(Buffer.from(log.read("legacy-1")!.meta).toString(), "m1", "metadata")
  t.equal(log.nextLsn, lsn + 1, "LSNs continue after the legacy ones")
  const w = await put(log, "new-0", "n0", undefined, 9)
  t.equal(w.lsn, lsn + 1)
  await put(log, "new-1", "n1", undefined, 10)
  t.not(log.index.get("new-0")!.segment, 1, "new records go to a new segment")
  t.same(files.readFile(segPath("00000001.seg")), legacy, "the legacy segment is not written to")
  const newName = path.basename(log.active.file)
  const fresh = files.readFile(log.active.file).subarray(0, log.active.size)
  t.equal(classify(fresh.subarray(0, SEGMENT_HEADER_BYTES))._tag, "header", "the new segment has a header")
  t.same(recordsOf(fresh).map((r) => r.key), ["new-0", "new-1"], "its records are valid under its salt")
  t.equal(fresh[SEGMENT_HEADER_BYTES + 5], 2, "version 2 records")
  t.equal(fresh.readUInt16LE(SEGMENT_HEADER_BYTES + 26), 9, "with their partition")
  await log.close()

  log = open(files, config)
  for (let i = 0; i < 10; i++) t.equal(valueOf(log, `legacy-${i}`), want(i), `reopened: legacy-${i}`)
  t.equal(valueOf(log, "new-0"), "n0")
  t.equal(log.read("new-1")!.partition, 10)
  const result = await compact(log, selectInputs(log, true))
  t.ok(result?.inputs.includes(1), "the legacy segment was compacted")
  t.notOk(files.exists(segPath("00000001.seg")), "the legacy segment is gone")
  t.notOk([...log.segments.values()].some((s) => s.kind === "legacy"))
  const check = (l: Log, label: string) => {
    for (let i = 0; i < 10; i++) {
      if (i === 3) continue // the tombstone may be dropped by a full compaction
      t.equal(valueOf(l, `legacy-${i}`), want(i), `${label}: legacy-${i}`)
      t.equal(l.read(`legacy-${i}`)!.partition, partitionOf(`legacy-${i}`), `${label}: legacy-${i} partition`)
    }
    t.not(valueOf(l, "legacy-3"), "old-3", `${label}: the delete holds`)
    t.equal(valueOf(l, "new-0"), "n0")
  }
  check(log, "compacted")
  // Every segment is format 2 now, and every legacy key's record is version 2 with its partition.
  const seen = new Set<string>()
  for (const name of segFiles(files)) {
    const b = files.readFile(segPath(name))
    if (b.length === 0) continue
    for (const r of recordsOf(b)) {
      if (!r.key.startsWith("legacy-")) continue
      seen.add(r.key)
      t.equal(b[r.start + 5], 2, `${r.key} is version 2 in ${name}`)
      t.equal(b.readUInt16LE(r.start + 26), partitionOf(r.key), `${r.key} carries its partition in ${name}`)
    }
  }
  t.ok(["legacy-0", "legacy-1", "legacy-2", "legacy-9"].every((k) => seen.has(k)), "the legacy records were rewritten")
  t.not(newName, "00000001.seg")
  await log.close()
  log = open(files, config)
  check(log, "reopened after compaction")
  t.same(log.damage, [])
  await log.close()
})

// ---- unknown formats -----------------------------------------------------------------------

/** A directory written by a real log: IDENTITY, LOCK, several segments with hints. */
const buildDir = async () => {
  const files = makeMemoryFiles()
  const log = open(files, { maxSegmentBytes: 600 })
  let n = 0
  // At least three segments, the last (the tail) holding at least three records.
  while (n < 24 || [...log.index.entries()].filter(([, l]) => l.segment === log.active.id).length < 3) {
    await put(log, `key-${n}`, `value-${n}-${"v".repeat(n % 5 * 9)}`)
    n++
  }
  await log.close()
  const snap = snapshot(files)
  const segs = [...snap.keys()].filter((n) => n.endsWith(".seg"))
  if (segs.length < 3) throw new Error("fixture needs three segments")
  return { snap, segs, n }
}

/** A header like `encodeSegmentHeader`'s, with `version` in both copies and valid CRCs. */
const headerOfVersion = (id: number, salt: number, version: number): Buffer => {
  const h = encodeSegmentHeader({ id, kind: "log", salt, created: 1 })
  for (const at of [0, 32]) {
    h[at + 4] = version
    h.writeUInt32LE(crc32(h.subarray(at, at + 28)), at + 28)
  }
  return h
}

const expectUnknownFormat = (t: Test, snap: Map<string, Buffer>, file: string, version: number, label: string) => {
  const files = restore(snap)
  const before = snapshot(files)
  const e = openFails(files)
  t.ok(e instanceof UnknownFormat, `${label}: UnknownFormat (got ${String(e)})`)
  if (e instanceof UnknownFormat) {
    t.equal(e.code, "unknown_format", `${label}: code`)
    t.equal(e.file, segPath(file), `${label}: names the file`)
    t.equal(e.version, version, `${label}: names the version`)
    t.match(e.message, file, `${label}: the message names the file`)
    t.match(e.message, String(version), `${label}: the message names the version`)
  }
  t.same(diffDirs(before, snapshot(files)), [], `${label}: the directory is byte-identical`)
  // And refusing is stable: a second attempt refuses the same way.
  t.ok(openFails(files) instanceof UnknownFormat, `${label}: refused again`)
  t.same(diffDirs(before, snapshot(files)), [], `${label}: still byte-identical`)
}

t.test("a segment header of version 3 is refused, nothing changed", async (t) => {
  const { snap, segs } = await buildDir()
  for (const [label, name] of [["the first segment", segs[0]!], ["a middle segment", segs[1]!], ["the tail segment", segs.at(-1)!]] as const) {
    const s = new Map(snap)
    const old = s.get(name)!
    const id = Number(name.slice(0, 8))
    s.set(name, Buffer.concat([headerOfVersion(id, saltOf(old), 3), old.subarray(SEGMENT_HEADER_BYTES)]))
    expectUnknownFormat(t, s, name, 3, `${label}, whole file`)
    // Without its hint, too (the hint is not what refuses it).
    s.delete(name.replace(".seg", ".hint"))
    expectUnknownFormat(t, s, name, 3, `${label}, no hint`)
  }
  // A newer Tally's spare: a version 3 header and nothing else.
  const s = new Map(snap)
  const spare = `${String(Number(segs.at(-1)!.slice(0, 8)) + 1).padStart(8, "0")}.seg`
  s.set(spare, Buffer.concat([headerOfVersion(99, 12345, 3), Buffer.alloc(4096)]))
  expectUnknownFormat(t, s, spare, 3, "a header-only newer segment")
  // Only one copy says version 3 (the other is damaged): still a newer format.
  const one = new Map(snap)
  const old = one.get(segs[0]!)!
  const h = headerOfVersion(1, saltOf(old), 3)
  h[40]! ^= 0xff
  one.set(segs[0]!, Buffer.concat([h, old.subarray(SEGMENT_HEADER_BYTES)]))
  expectUnknownFormat(t, one, segs[0]!, 3, "one intact version-3 copy")
})

t.test("a record of a newer version or unknown type (valid CRC under the segment's salt) is refused, nothing changed", async (t) => {
  const { snap, segs } = await buildDir()
  const cases: Array<[string, string, "first" | "middle" | "last", "version" | "type"]> = []
  for (const [where, name] of [["sealed", segs[0]!], ["tail", segs.at(-1)!]] as const) {
    for (const which of ["first", "middle", "last"] as const) for (const field of ["version", "type"] as const) cases.push([where, name, which, field])
  }
  for (const [where, name, which, field] of cases) {
    const s = new Map(snap)
    const bytes = Buffer.from(s.get(name)!)
    const recs = recordsOf(bytes)
    const r = which === "first" ? recs[0]! : which === "last" ? recs.at(-1)! : recs[Math.floor(recs.length / 2)]!
    if (field === "version") bytes[r.start + 5] = 3
    else bytes[r.start + 6] = 9
    recrc(bytes, r.start, r.end, saltOf(bytes))
    t.equal(probe(bytes, r.start, bytes.length, saltOf(bytes))._tag, "future", "the fixture record is of a newer format")
    s.set(name, bytes)
    // After a crash there is no hint for the tail, and a sealed segment's hint may be missing: the scan must refuse.
    s.delete(name.replace(".seg", ".hint"))
    expectUnknownFormat(t, s, name, field === "version" ? 3 : 2, `${where} segment, ${which} record, unknown ${field}`)
  }
  // With the sealed segment's hint still present, start-up does not scan (a newer Tally that
  // writes newer records writes a newer hint, which this build would not read). The record
  // is then met by a read (CorruptRecord, never its value) or by compaction, which must stop
  // with UnknownFormat and change nothing, not drop it as damage.
  {
    const s = new Map(snap)
    const name = segs[0]!
    const bytes = Buffer.from(s.get(name)!)
    const r = recordsOf(bytes)[0]!
    bytes[r.start + 5] = 3
    recrc(bytes, r.start, r.end, saltOf(bytes))
    s.set(name, bytes)
    const files = restore(s)
    const log = open(files, { preallocate: false })
    // The inputs' bytes (the active segment is the log's own: its header may land meanwhile).
    const inputs = selectInputs(log, true)
    const before = inputs.map((seg) => [seg.file.slice(DIR.length + 1), files.readFile(seg.file)] as const)
    const err = await compact(log, inputs).then(() => undefined, (e: unknown) => e)
    t.ok(err instanceof UnknownFormat, `compaction meeting a newer record stops with UnknownFormat (got ${String(err)})`)
    t.equal(log.failed, undefined, "before its commit point: the log still takes writes")
    for (const [f, b] of before) t.same(files.readFile(`${DIR}/${f}`), b, `${f} unchanged`)
    t.same(files.list(DIR).filter((f) => f.endsWith(".tmp")), [], "no output left behind")
    await log.close()
  }
  // A newer record right after a damaged one: the search that skips damage stops at it too.
  const s = new Map(snap)
  const name = segs.at(-1)!
  const bytes = Buffer.from(s.get(name)!)
  const recs = recordsOf(bytes)
  bytes[recs[0]!.start + 30]! ^= 0x10
  bytes[recs[1]!.start + 5] = 3
  recrc(bytes, recs[1]!.start, recs[1]!.end, saltOf(bytes))
  s.set(name, bytes)
  s.delete(name.replace(".seg", ".hint"))
  expectUnknownFormat(t, s, name, 3, "newer record after a damaged one")
})

/** 700 non-zero bytes holding no record magic (0x54) at all. */
const garbage = (): Buffer => {
  const g = Buffer.alloc(700)
  for (let i = 0; i < g.length; i++) g[i] = 0x80 + ((i * 37) % 97)
  return g
}

/** Garbage that starts like a format-1 record (magic and version 1 at bytes 4 and 5) but holds none. */
const legacyLookingGarbage = (): Buffer => {
  const g = garbage()
  g[4] = 0x54
  g[5] = LEGACY_VERSION
  return g
}

const segId = (id: number) => `${String(id).padStart(8, "0")}.seg`

t.test("a non-zero segment with no header and no format-1 record start is refused, nothing changed", async (t) => {
  const { snap, segs } = await buildDir()
  const g = garbage()
  t.equal(g.indexOf(0x54), -1)
  t.equal(classify(g.subarray(0, SEGMENT_HEADER_BYTES))._tag, "damaged")
  const first = Number(segs[0]!.slice(0, 8))
  const last = Number(segs.at(-1)!.slice(0, 8))
  for (const [label, name] of [["older than every segment", segId(first - 1)], ["in the tail position", segId(last + 1)]] as const) {
    const s = new Map(snap)
    s.set(name, g)
    const files = restore(s)
    const before = snapshot(files)
    for (const attempt of [1, 2]) {
      const e = openFails(files, { preallocate: false })
      t.ok(e instanceof CorruptFile && e.code === "corrupt_file" && e.file === segPath(name), `${label}, attempt ${attempt}: CorruptFile naming ${name} (got ${String(e)})`)
      t.same(diffDirs(before, snapshot(files)), [], `${label}, attempt ${attempt}: the directory is byte-identical`)
    }
  }
})

t.test("a format-1 segment with no valid record is kept and reported as damage, sealed or tail", async (t) => {
  const { snap, segs, n } = await buildDir()
  const g = legacyLookingGarbage()
  t.equal(classify(g.subarray(0, SEGMENT_HEADER_BYTES))._tag, "legacy")
  const first = Number(segs[0]!.slice(0, 8))
  const last = Number(segs.at(-1)!.slice(0, 8))
  // Older than the current-format segments (a sealed one), and the only segment (the tail).
  const cases: Array<[string, number, Map<string, Buffer>]> = [
    ["sealed", first - 1, new Map([...snap, [segId(first - 1), g]])],
    ["tail", 1, new Map([...[...snap].filter(([k]) => !k.endsWith(".seg") && !k.endsWith(".hint")), [segId(1), g]])]
  ]
  t.ok(last > 1)
  for (const [label, id, s] of cases) {
    const name = segId(id)
    const files = restore(s)
    for (const attempt of [1, 2]) {
      const log = open(files, { preallocate: false })
      t.same(files.exists(segPath(name)) ? files.readFile(segPath(name)) : undefined, g, `${label}, start ${attempt}: kept byte for byte`)
      t.ok(log.damage.some((d) => d.segment === id && d.offset === 0), `${label}, start ${attempt}: reported as damage (${JSON.stringify(log.damage)})`)
      t.notOk([...log.index.keys()].some((k) => !/^key-\d+$/.test(k)), `${label}: no key from the damage`)
      if (label === "sealed") for (let i = 0; i < n; i++) if (valueOf(log, `key-${i}`) === undefined) t.fail(`${label}: key-${i} lost`)
      await log.close()
    }
  }
})

// Compaction takes damaged segments out of the log (their live records copied), but keeps
// their files aside as <id>.seg.damaged: never deleted, whatever they hold.
t.test("a sealed segment of damage alone is kept aside by compaction, not unlinked", async (t) => {
  const { snap, segs } = await buildDir()
  const g = legacyLookingGarbage()
  const older = segId(Number(segs[0]!.slice(0, 8)) - 1)
  const s = new Map(snap)
  s.set(older, g)
  const files = restore(s)
  const log = open(files, { preallocate: false })
  t.ok(log.damage.some((d) => d.segment === Number(older.slice(0, 8))), "reported at start-up")
  await compact(log, selectInputs(log))
  t.notOk(files.exists(segPath(older)), "out of the log")
  t.same(files.exists(`${segPath(older)}.damaged`) ? files.readFile(`${segPath(older)}.damaged`) : undefined, g, "kept aside byte for byte as .damaged")
  await log.close()
})

t.test("a sealed current-format segment whose header magic is damaged in both copies is refused, nothing changed", async (t) => {
  const { snap, segs } = await buildDir()
  for (const [label, name] of [["sealed", segs[0]!], ["tail", segs.at(-1)!]] as const) {
    for (const hint of [true, false]) {
      const s = new Map(snap)
      const b = Buffer.from(s.get(name)!)
      b[0]! ^= 1
      b[32]! ^= 1
      s.set(name, b)
      if (!hint) s.delete(name.replace(".seg", ".hint"))
      const files = restore(s)
      const before = snapshot(files)
      const e = openFails(files, { preallocate: false })
      t.ok(e instanceof CorruptFile && e.file === segPath(name), `${label}, hint ${hint}: CorruptFile naming ${name} (got ${String(e)})`)
      t.same(diffDirs(before, snapshot(files)), [], `${label}, hint ${hint}: the directory is byte-identical`)
    }
  }
})

t.test("preallocated spares (header and zeros) are removed at start-up", async (t) => {
  const files = makeMemoryFiles()
  const log = open(files, { preallocate: true, maxSegmentBytes: 64 * 1024 })
  for (let i = 0; i < 5; i++) await put(log, `k${i}`, `v${i}`)
  await log.settle()
  const active = path.basename(log.active.file)
  const spares = segFiles(files).filter((n) => n > active)
  t.equal(spares.length, 1, "a spare was made ahead")
  log.abandonForTest()
  files.crash()
  const spare = spares[0]!
  const b = files.readFile(segPath(spare))
  t.equal(b.length, 64 * 1024, "the spare survived the crash at its preallocated size")
  t.equal(classify(b.subarray(0, SEGMENT_HEADER_BYTES))._tag, "header")
  t.ok(b.subarray(SEGMENT_HEADER_BYTES).every((x) => x === 0), "zeros after its header")
  const reopened = open(files, { preallocate: false })
  t.notOk(files.exists(segPath(spare)), "the spare is removed")
  t.same(reopened.damage, [], "not damage")
  for (let i = 0; i < 5; i++) t.equal(valueOf(reopened, `k${i}`), `v${i}`)
  t.ok(files.exists(segPath(active)), "the segment with data is kept")
  await reopened.close()
})

t.test("a torn first record in the tail segment is cut back to the header", async (t) => {
  const files = makeMemoryFiles()
  let log = open(files)
  for (let i = 0; i < 5; i++) await put(log, `k${i}`, `v${i}`)
  await log.close()
  log = open(files, { preallocate: false })
  await put(log, "torn", "t".repeat(40))
  const tail = path.basename(log.active.file)
  log.abandonForTest()
  files.crash()
  const snap = snapshot(files)
  const full = snap.get(tail)!
  const rec = recordsOf(full)
  t.equal(rec.length, 1)
  const failures: string[] = []
  for (let cut = SEGMENT_HEADER_BYTES + 1; cut < rec[0]!.end; cut++) {
    const s = new Map(snap)
    s.set(tail, full.subarray(0, cut))
    const fs2 = restore(s)
    const l = open(fs2, { preallocate: false })
    const now = fs2.readFile(segPath(tail))
    if (now.length !== SEGMENT_HEADER_BYTES || Buffer.compare(now, full.subarray(0, SEGMENT_HEADER_BYTES)) !== 0) failures.push(`cut ${cut}: tail is ${now.length} bytes, not its header`)
    if (JSON.stringify(l.damage.map((d) => [d.offset, d.action])) !== JSON.stringify([[SEGMENT_HEADER_BYTES, "truncated"]])) failures.push(`cut ${cut}: damage ${JSON.stringify(l.damage)}`)
    if (l.index.get("torn") !== undefined) failures.push(`cut ${cut}: the torn record was indexed`)
    for (let i = 0; i < 5; i++) if (valueOf(l, `k${i}`) !== `v${i}`) failures.push(`cut ${cut}: k${i} lost`)
    if (l.nextLsn !== 6) failures.push(`cut ${cut}: nextLsn ${l.nextLsn}`)
    await l.close()
    // Now it holds only its header: the next start removes it.
    const l2 = open(fs2, { preallocate: false })
    if (fs2.exists(segPath(tail))) failures.push(`cut ${cut}: the header-only segment was not removed at the next start`)
    for (let i = 0; i < 5; i++) if (valueOf(l2, `k${i}`) !== `v${i}`) failures.push(`cut ${cut}: k${i} lost after the second start`)
    await l2.close()
  }
  t.same(failures, [], `${rec[0]!.end - SEGMENT_HEADER_BYTES - 1} cuts`)
})

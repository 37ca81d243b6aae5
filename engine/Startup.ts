/**
 * Opening a data directory: identity and state files read (or made), an interrupted
 * compaction finished, every segment classified by its header, its keys loaded from its
 * hint or from a scan under the policy of Recovery.ts, torn tails cut, and dropped
 * partitions forgotten. Nothing here ever unlinks a segment that holds a non-zero byte
 * after its header, nor one of a format this code does not know: those make the open fail,
 * naming the file, and leave the directory as it was.
 */
import * as path from "node:path"
import { hashRecordInto, scratch } from "./ContentHash.ts"
import { finishCompaction } from "./Compaction.ts"
import { CorruptFile, UnknownFormat } from "./Errors.ts"
import { writeFileDurable } from "./Files.ts"
import { forEachHint, hintFits, readHintHeader, type HintEntry } from "./HintFile.ts"
import { decodeIdentity, decodeState, encodeIdentity, IDENTITY_FILE, STATE_FILE } from "./Manifest.ts"
import type { Log } from "./Log.ts"
import { RecordType } from "./Record.ts"
import { scan, type Damage } from "./Recovery.ts"
import { classify, SEGMENT_HEADER_BYTES } from "./SegmentHeader.ts"
import { hintName, segmentIdOf, type Segment } from "./SegmentFile.ts"

interface Scanned {
  readonly seg: Segment
  readonly torn: Damage | undefined
  readonly zeroTail: boolean
  readonly validEnd: number
  readonly hints: Map<string, HintEntry>
}

const hex = (random: () => number) => {
  const b = Buffer.alloc(16)
  for (let i = 0; i < 16; i++) b[i] = Math.floor(random() * 256)
  return b.toString("hex")
}

/** Recovers `log` from its directory (see the module comment). The caller opens the active segment. */
export const recover = (log: Log): void => {
  const { files } = log
  const { dir } = log.config
  loadIdentity(log)
  loadState(log)
  finishCompaction(log.files, dir)
  const names = files.list(dir)
  for (const n of names) if (n.endsWith(".tmp")) files.unlink(path.join(dir, n))
  const ids = names.flatMap((n) => {
    const id = segmentIdOf(n)
    return id === undefined ? [] : [id]
  }).sort((a, b) => a - b)
  for (const n of names) {
    if (n.endsWith(".hint") && !ids.includes(Number(n.slice(0, 8)))) files.unlink(path.join(dir, n))
  }
  const scanned: Scanned[] = []
  const empty: Segment[] = []
  for (const id of ids) {
    const seg = openSegment(log, id)
    if (seg === undefined) continue
    log.addSegment(seg)
    if (seg.size <= seg.dataStart) {
      empty.push(seg)
      continue
    }
    if (!loadHint(log, seg)) {
      const s = scanSegment(log, seg)
      if (s.validEnd <= seg.dataStart && s.torn === undefined) empty.push(seg)
      else scanned.push(s)
    }
  }
  // The segment being appended to at the crash is the newest log segment holding anything;
  // segments after it were made ahead (spares) and hold only their header and zeros.
  const logSegs = [...log.segments.values()].filter((s) => s.kind !== "compacted" && !empty.includes(s))
  const tail = logSegs.at(-1)
  for (const s of scanned) {
    // A format-1 tail with no valid record at all is not known to be ours: kept, reported.
    if (s.torn !== undefined && s.seg === tail && !(s.seg.kind === "legacy" && s.validEnd === 0)) {
      truncateAt(log, s.seg, s.torn.offset)
      log.report(s.seg.id, s.torn, "truncated")
    } else if (s.torn !== undefined) {
      s.seg.damaged += s.torn.length
      log.report(s.seg.id, s.torn, "skipped")
    } else if (s.zeroTail) {
      truncateAt(log, s.seg, s.validEnd)
    }
  }
  for (const seg of empty) log.dropSegment(seg)
  // A scanned segment may hold records that reached only the page cache (the process died
  // before their fsync): they are served from now on, so they are made durable first, and
  // before a durable hint describes them.
  for (const s of scanned) log.files.datasyncSync(s.seg.fd)
  for (const s of scanned) log.writeHintNow(s.seg, [...s.hints.values()])
  for (const [p, through] of log.drops) log.forgetDropped(p, through)
  for (const [, loc] of log.index.entries()) log.segments.get(loc.segment)!.live += loc.size
  for (const s of log.segments.values()) log.nextLsn = Math.max(log.nextLsn, s.maxLsn + 1)
  // A compaction may have removed the records with the highest LSNs (reaped tombstones, a
  // dropped partition's last writes); STATE remembers how far it had read, so LSNs never repeat.
  log.nextLsn = Math.max(log.nextLsn, log.compactedThrough + 1)
  for (const [, through] of log.drops) log.nextLsn = Math.max(log.nextLsn, through + 1)
  log.committedLsn = log.nextLsn - 1
}

const loadIdentity = (log: Log): void => {
  const file = path.join(log.config.dir, IDENTITY_FILE)
  if (log.files.exists(file)) {
    const id = decodeIdentity(log.files.readFile(file))
    if (id === undefined) throw new CorruptFile({ file, message: `${file} is damaged; the directory's identity is unknown. Restore it, or move the directory aside and let the node rebuild from its replicas` })
    log.identity = id
    return
  }
  // A new directory, or one made before directories had identities: a new id either way.
  log.identity = { id: hex(log.config.random), created: log.config.now() }
  writeFileDurable(log.files, file, encodeIdentity(log.identity))
}

const loadState = (log: Log): void => {
  const file = path.join(log.config.dir, STATE_FILE)
  if (!log.files.exists(file)) return
  const s = decodeState(log.files.readFile(file))
  if (s === undefined) throw new CorruptFile({ file, message: `${file} is damaged: it records which partitions were dropped; restore it or move the directory aside` })
  log.compactedThrough = s.compactedThrough
  for (const [p, l] of s.drops) log.drops.set(p, l)
}

/** Opens segment `id` and reads its header; undefined when the file was removed as never used. */
const openSegment = (log: Log, id: number): Segment | undefined => {
  const file = log.pathOf(id, "seg")
  const fd = log.files.open(file, false)
  const size = log.files.size(fd)
  const head = Buffer.alloc(Math.min(size, SEGMENT_HEADER_BYTES))
  log.files.read(fd, head, 0, head.length, 0)
  const c = classify(head)
  const base = { id, file, fd, allocated: size, live: 0, minLsn: Infinity, maxLsn: -1, sealed: true, removed: false, damaged: 0 }
  switch (c._tag) {
    case "future":
      log.files.close(fd)
      throw new UnknownFormat({ file, version: c.version, message: `segment ${file} has format version ${c.version}; this build reads versions 1 and 2. It was written by a newer Tally: run that version, nothing was changed` })
    case "damaged":
      log.files.close(fd)
      throw new CorruptFile({ file, message: `segment ${file} has no readable header (both copies damaged, or not a Tally segment): its records cannot be verified. Nothing was changed; move the file aside to start without it` })
    case "empty": {
      if (!zeroFile(log, fd, size)) {
        log.files.close(fd)
        throw new CorruptFile({ file, message: `segment ${file} has no header but holds data: nothing was changed; move the file aside to start without it` })
      }
      // Its creation never completed: nothing was ever written to it.
      return { ...base, kind: "log", salt: 0, dataStart: size, size }
    }
    case "legacy":
      return { ...base, kind: "legacy", salt: 0, dataStart: 0, size }
    case "header":
      return { ...base, kind: c.header.kind, salt: c.header.salt, dataStart: SEGMENT_HEADER_BYTES, size }
  }
}

const zeroFile = (log: Log, fd: number, size: number): boolean => {
  const buf = Buffer.alloc(1024 * 1024)
  for (let at = 0; at < size; at += buf.length) {
    const n = log.files.read(fd, buf, 0, Math.min(buf.length, size - at), at)
    for (let i = 0; i < n; i++) if (buf[i] !== 0) return false
  }
  return true
}

const truncateAt = (log: Log, seg: Segment, at: number): void => {
  log.files.truncate(seg.fd, at)
  log.files.datasyncSync(seg.fd)
  seg.size = at
  seg.allocated = at
}

/** Loads a segment's keys from its hint; false when there is no usable hint. */
const loadHint = (log: Log, seg: Segment): boolean => {
  const hintFile = path.join(log.config.dir, hintName(seg.id))
  if (!log.files.exists(hintFile)) return false
  let buf: Buffer
  try {
    buf = log.files.readFile(hintFile)
  } catch {
    return false
  }
  const h = readHintHeader(buf)
  if (h === undefined || h.segment !== seg.id || h.segmentSize !== seg.size || !hintFits(buf)) return false
  const legacy: HintEntry[] = []
  forEachHint(buf, (key, lsn, offset, size, tomb, partition, hashHi, hashLo) => {
    if (partition < 0) legacy.push({ key, lsn, offset, size, tombstone: tomb, partition, hashHi, hashLo })
    else log.index.replaceIfNewer(key, seg.id, offset, size, lsn, tomb, partition, hashHi, hashLo)
  })
  if (legacy.length > 0) {
    // A version 1 hint: the partition comes from the key, the hash from the record itself.
    const upgraded: HintEntry[] = []
    for (const e of legacy) {
      const raw = log.readRaw(seg, e.offset, e.size)
      if (raw === undefined) return false
      hashRecordInto(raw, 0, e.size)
      const full = { ...e, partition: log.config.partitionOf(e.key), hashHi: scratch.hi, hashLo: scratch.lo }
      upgraded.push(full)
      log.index.replaceIfNewer(e.key, seg.id, e.offset, e.size, e.lsn, e.tombstone, full.partition, full.hashHi, full.hashLo)
    }
    seg.minLsn = h.minLsn
    seg.maxLsn = h.maxLsn
    log.writeHintNow(seg, upgraded)
  }
  seg.minLsn = h.minLsn
  seg.maxLsn = h.maxLsn
  log.stats.startupKeysFromHints += h.count
  return true
}

const scanSegment = (log: Log, seg: Segment): Scanned => {
  const buf = Buffer.allocUnsafe(seg.size)
  let got = 0
  while (got < seg.size) {
    const n = log.files.read(seg.fd, buf, got, seg.size - got, got)
    if (n === 0) break
    got += n
  }
  const hints = new Map<string, HintEntry>()
  const legacy = seg.kind === "legacy"
  const result = scan(buf, seg.dataStart, got, seg.salt, (r, offset, size) => {
    const key = Buffer.from(r.key.buffer, r.key.byteOffset, r.key.length).toString("utf8")
    const tombstone = r.type === RecordType.Tombstone
    const partition = legacy ? log.config.partitionOf(key) : r.partition
    hashRecordInto(buf, offset, size)
    log.index.replaceIfNewer(key, seg.id, offset, size, r.lsn, tombstone, partition, scratch.hi, scratch.lo)
    const prev = hints.get(key)
    if (prev === undefined || prev.lsn < r.lsn) hints.set(key, { key, lsn: r.lsn, offset, size, tombstone, partition, hashHi: scratch.hi, hashLo: scratch.lo })
    if (r.lsn < seg.minLsn) seg.minLsn = r.lsn
    if (r.lsn > seg.maxLsn) seg.maxLsn = r.lsn
  })
  if (result.future !== undefined) {
    throw new UnknownFormat({ file: seg.file, version: result.future.version, message: `segment ${seg.file} holds a record of version ${result.future.version}, type ${result.future.type} at byte ${result.future.offset}, which this build does not know. It was written by a newer Tally: run that version; nothing was changed` })
  }
  log.stats.startupKeysFromScans += hints.size
  for (const d of result.damaged) {
    seg.damaged += d.length
    log.report(seg.id, d, "skipped")
  }
  return { seg, torn: result.tornTail, zeroTail: result.zeroTail, validEnd: result.validEnd, hints }
}


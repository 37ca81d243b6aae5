import { crc32 } from "node:zlib"
import fc from "fast-check"
import t from "tap"
import {
  decode, encode, encodedSize, HEADER_SIZE, LEGACY_VERSION, MAX_KEY_BYTES, MAX_LSN, MAX_PARTITION, probe, RecordType, reseal, VERSION,
  type Probe
} from "../../engine/Record.ts"

/** A segment salt: any non-zero u32 (0 means "format 1, no salt"). */
const salt = fc.integer({ min: 1, max: 0xffff_ffff })

const record = fc.record({
  type: fc.constantFrom(RecordType.Put, RecordType.Tombstone),
  lsn: fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }),
  timestamp: fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }),
  partition: fc.integer({ min: 0, max: MAX_PARTITION }),
  key: fc.uint8Array({ minLength: 1, maxLength: MAX_KEY_BYTES }),
  meta: fc.uint8Array({ maxLength: 300 }),
  value: fc.uint8Array({ maxLength: 3000 })
}).map((r) => (r.type === RecordType.Tombstone ? { ...r, value: new Uint8Array(0) } : r))

/** Recomputes the CRC of the record at 0 under `seed`, after a test changed its bytes. */
const recrc = (buf: Buffer, seed: number): Buffer => {
  buf.writeUInt32LE(crc32(buf.subarray(4), seed), 0)
  return buf
}

/** A record of format 1: version 1, partition 0, CRC with seed 0 (how the first format wrote it). */
const encodeV1 = (r: Parameters<typeof encode>[0]): Buffer => {
  const buf = encode({ ...r, partition: 0 }, 0)
  buf[5] = LEGACY_VERSION
  buf.writeUInt16LE(0, 26)
  return recrc(buf, 0)
}

const tagOf = (p: Probe) => (p._tag === "bad" ? p.reason : p._tag)

t.test("encode then decode gives the record back (non-zero seed)", async (t) => {
  fc.assert(
    fc.property(record, salt, (r, seed) => {
      const buf = encode(r, seed)
      if (buf.length !== encodedSize(r.key.length, r.meta.length, r.value.length)) return false
      const p = probe(buf, 0, buf.length, seed)
      const d = decode(buf, 0, buf.length, seed)
      return p._tag === "ok" && p.size === buf.length && d !== undefined && d.type === r.type && d.lsn === r.lsn && d.timestamp === r.timestamp &&
        d.partition === r.partition && Buffer.compare(d.key, r.key) === 0 && Buffer.compare(d.meta, r.meta) === 0 && Buffer.compare(d.value, r.value) === 0
    }),
    { numRuns: 500 }
  )
  t.pass()
})

t.test("records decode back to back at their offsets", async (t) => {
  fc.assert(
    fc.property(fc.array(record, { minLength: 1, maxLength: 20 }), salt, (rs, seed) => {
      const buf = Buffer.concat(rs.map((r) => encode(r, seed)))
      let at = 0
      for (const r of rs) {
        const p = probe(buf, at, buf.length, seed)
        if (p._tag !== "ok") return false
        const d = decode(buf, at, buf.length, seed)
        if (d?.lsn !== r.lsn || d.partition !== r.partition) return false
        at += p.size
      }
      return at === buf.length
    }),
    { numRuns: 200 }
  )
  t.pass()
})

t.test("every single-bit flip is detected", async (t) => {
  fc.assert(
    fc.property(record, salt, fc.nat(), (r, seed, n) => {
      const buf = encode(r, seed)
      const bit = n % (buf.length * 8)
      buf[bit >> 3]! ^= 1 << (bit & 7)
      return probe(buf, 0, buf.length, seed)._tag !== "ok"
    }),
    { numRuns: 2000 }
  )
  t.pass()
})

t.test("a truncated record is short, never ok", async (t) => {
  fc.assert(
    fc.property(record, salt, fc.nat(), (r, seed, n) => {
      const buf = encode(r, seed)
      const cut = n % buf.length
      return probe(buf, 0, cut, seed)._tag !== "ok"
    }),
    { numRuns: 1000 }
  )
  t.pass()
})

t.test("a record encoded under one seed never probes ok under another", async (t) => {
  // Seed B ranges over every u32, 0 (format 1) included; a different seed is always a CRC mismatch.
  fc.assert(
    fc.property(record, salt, fc.integer({ min: 0, max: 0xffff_ffff }), (r, a, b) => {
      fc.pre(a !== b)
      const buf = encode(r, a)
      const p = probe(buf, 0, buf.length, b)
      return p._tag === "bad" && p.reason === "checksum mismatch" && decode(buf, 0, buf.length, b) === undefined
    }),
    { numRuns: 5000 }
  )
  // Seeds one bit apart, and neighbours, for one fixed record.
  const buf = encode({ type: RecordType.Put, lsn: 5, timestamp: 6, partition: 7, key: Buffer.from("k"), value: Buffer.from("v") }, 0x8000_0001)
  for (let bit = 0; bit < 32; bit++) {
    const other = (0x8000_0001 ^ (1 << bit)) >>> 0
    if (probe(buf, 0, buf.length, other)._tag === "ok") t.fail(`probes ok under seed ${other}`)
  }
  for (const other of [0x8000_0000, 0x8000_0002, 1, 0xffff_ffff, 0]) t.equal(tagOf(probe(buf, 0, buf.length, other)), "checksum mismatch", `seed ${other}`)
})

t.test("a version 1 record probes ok under seed 0 only", async (t) => {
  fc.assert(
    fc.property(record, salt, (r, seed) => {
      const v1 = encodeV1(r)
      const p0 = probe(v1, 0, v1.length, 0)
      const d = decode(v1, 0, v1.length, 0)
      return p0._tag === "ok" && d?.lsn === r.lsn && d.partition === 0 && Buffer.compare(d.key, r.key) === 0 &&
        tagOf(probe(v1, 0, v1.length, seed)) === "checksum mismatch"
    }),
    { numRuns: 500 }
  )
  const r = { type: RecordType.Put, lsn: 9, timestamp: 1, key: Buffer.from("old"), value: Buffer.from("v") } as const
  // A version 1 record re-checksummed under a salt is still version 1: not valid in a salted segment.
  const v1 = recrc(encodeV1(r), 1234)
  t.match(tagOf(probe(v1, 0, v1.length, 1234)), /version 1 record in a segment of another version/)
  // A version 2 record with a seed-0 CRC is not valid in a format-1 segment either.
  const v2 = encode(r, 0)
  t.match(tagOf(probe(v2, 0, v2.length, 0)), /version 2 record in a segment of another version/)
  // Format 1 had no partition: those bytes were reserved and must be zero.
  const withPartition = encodeV1(r)
  withPartition.writeUInt16LE(3, 26)
  t.equal(tagOf(probe(recrc(withPartition, 0), 0, withPartition.length, 0)), "reserved bits set")
})

t.test("reseal re-frames a version 1 record as version 2 under a new seed", async (t) => {
  fc.assert(
    fc.property(record, salt, (r, seed) => {
      const v1 = encodeV1(r)
      reseal(v1, 0, v1.length, r.partition, seed)
      const d = decode(v1, 0, v1.length, seed)
      return v1[5] === VERSION && d !== undefined && d.partition === r.partition && d.lsn === r.lsn &&
        probe(v1, 0, v1.length, 0)._tag !== "ok"
    }),
    { numRuns: 300 }
  )
  t.pass()
})

t.test("LSNs and timestamps at or above 2^53 are rejected even with a valid CRC", async (t) => {
  const base = { type: RecordType.Put, key: Buffer.from("k"), value: Buffer.from("v") } as const
  const seed = 77
  t.equal(tagOf(probe(encode({ ...base, lsn: MAX_LSN, timestamp: MAX_LSN }, seed), 0, 100, seed)), "ok", "2^53 - 1 is fine")
  t.equal(tagOf(probe(encode({ ...base, lsn: 2 ** 53, timestamp: 1 }, seed), 0, 100, seed)), "LSN or timestamp at or above 2^53")
  t.equal(tagOf(probe(encode({ ...base, lsn: 1, timestamp: 2 ** 53 }, seed), 0, 100, seed)), "LSN or timestamp at or above 2^53")
  // Any high word from 2^21 up (as raw u64 bytes: values a number cannot hold exactly).
  fc.assert(
    fc.property(fc.integer({ min: 0x20_0000, max: 0xffff_ffff }), fc.nat({ max: 0xffff_ffff }), fc.boolean(), salt, (hi, lo, inLsn, s) => {
      const buf = encode({ ...base, lsn: 1, timestamp: 1 }, s)
      const at = inLsn ? 8 : 16
      buf.writeUInt32LE(lo, at)
      buf.writeUInt32LE(hi, at + 4)
      recrc(buf, s)
      return tagOf(probe(buf, 0, buf.length, s)) === "LSN or timestamp at or above 2^53"
    }),
    { numRuns: 1000 }
  )
  // The same in a format-1 record.
  const v1 = encodeV1({ ...base, lsn: 1, timestamp: 1 })
  v1.writeUInt32LE(0x20_0000, 12)
  t.equal(tagOf(probe(recrc(v1, 0), 0, v1.length, 0)), "LSN or timestamp at or above 2^53")
})

t.test("the header layout is as documented", async (t) => {
  const seed = 0xdead_beef
  const buf = encode({ type: RecordType.Put, lsn: 0x1_0000_0002, timestamp: 7, partition: 0x1234, key: Buffer.from("k"), meta: Buffer.from("mm"), value: Buffer.from("vvv") }, seed)
  t.equal(HEADER_SIZE, 36)
  t.equal(buf.length, 36 + 6)
  t.equal(buf.readUInt32LE(0), crc32(buf.subarray(4), seed), "crc of [4, end) seeded with the salt")
  t.not(buf.readUInt32LE(0), crc32(buf.subarray(4)), "not the unseeded crc")
  t.equal(buf[4], 0x54, "magic")
  t.equal(buf[5], 2, "version")
  t.equal(VERSION, 2)
  t.equal(buf[6], RecordType.Put, "type")
  t.equal(buf[7], 0, "flags")
  t.equal(buf.readUInt32LE(8), 2, "lsn low word")
  t.equal(buf.readUInt32LE(12), 1, "lsn high word")
  t.equal(buf.readUInt32LE(16), 7, "timestamp")
  t.equal(buf.readUInt32LE(20), 0, "timestamp high word")
  t.equal(buf.readUInt16LE(24), 1, "key length")
  t.equal(buf.readUInt16LE(26), 0x1234, "partition")
  t.equal(buf.readUInt32LE(28), 2, "meta length")
  t.equal(buf.readUInt32LE(32), 3, "value length")
  t.equal(buf.subarray(36).toString(), "kmmvvv", "key, meta, value")
  t.equal(decode(buf, 0, buf.length, seed)?.partition, 0x1234)
  t.equal(encode({ type: RecordType.Put, lsn: 1, timestamp: 1, key: Buffer.from("k") }, seed).readUInt16LE(26), 0, "partition defaults to 0")
})

t.test("probe order: plausibility, then CRC, then version and type", async (t) => {
  const seed = 0x5eed
  const ok = encode({ type: RecordType.Put, lsn: 1, timestamp: 1, partition: 3, key: Buffer.from("k"), value: Buffer.from("v") }, seed)
  /** Changes a field; with `fix`, recomputes the CRC under the segment's seed so that only the field is wrong. */
  const tamper = (at: number, v: number, width: 1 | 2 | 4, fix: boolean) => {
    const b = Buffer.from(ok)
    if (width === 1) b[at] = v
    else if (width === 2) b.writeUInt16LE(v, at)
    else b.writeUInt32LE(v, at)
    if (fix) recrc(b, seed)
    return probe(b, 0, b.length, seed)
  }
  const reason = (at: number, v: number, width: 1 | 2 | 4 = 1, fix = false) => tagOf(tamper(at, v, width, fix))
  t.equal(reason(0, 0, 1), "checksum mismatch", "sanity: the fixture is ok until changed")
  t.equal(tagOf(probe(ok, 0, ok.length, seed)), "ok")
  // Plausibility first: rejected without a CRC, whether or not the CRC would match.
  for (const fix of [false, true]) {
    t.equal(reason(4, 0, 1, fix), "bad magic", `magic (crc fixed: ${fix})`)
    t.equal(reason(24, 0, 2, fix), "impossible key length")
    t.equal(reason(24, 2000, 2, fix), "impossible key length")
    t.equal(reason(28, 0xffffffff, 4, fix), "impossible metadata length")
    t.equal(reason(32, 0xffffffff, 4, fix), "impossible value length")
  }
  // A plausible length larger than the bytes held is short, before the CRC.
  t.same(tamper(32, 1000, 4, false), { _tag: "short", need: HEADER_SIZE + 1 + 1000 })
  // Then the CRC: an unknown version or type with a bad CRC is plain damage, never "future".
  t.equal(reason(5, 9, 1), "checksum mismatch", "unknown version, bad crc")
  t.equal(reason(5, 3, 1), "checksum mismatch")
  t.equal(reason(6, 7, 1), "checksum mismatch", "unknown type, bad crc")
  t.equal(reason(7, 1, 1), "checksum mismatch")
  t.equal(reason(6, RecordType.Tombstone, 1), "checksum mismatch")
  t.equal(reason(0, 0, 4), "checksum mismatch")
  // Then version and type: with a valid CRC, a newer version or an unknown type is a record of a newer format.
  t.same(tamper(5, 3, 1, true), { _tag: "future", size: ok.length, version: 3, type: RecordType.Put })
  t.same(tamper(5, 9, 1, true), { _tag: "future", size: ok.length, version: 9, type: RecordType.Put })
  t.same(tamper(5, 255, 1, true), { _tag: "future", size: ok.length, version: 255, type: RecordType.Put })
  t.same(tamper(6, 7, 1, true), { _tag: "future", size: ok.length, version: 2, type: 7 })
  t.same(tamper(6, 0, 1, true), { _tag: "future", size: ok.length, version: 2, type: 0 })
  t.same(tamper(6, 3, 1, true), { _tag: "future", size: ok.length, version: 2, type: 3 })
  // An older version than the segment's is not a newer format: it does not belong here.
  t.match(reason(5, 1, 1, true), /another version/)
  t.match(reason(5, 0, 1, true), /another version/)
  // The remaining checks, each with a valid CRC.
  t.equal(reason(7, 1, 1, true), "reserved bits set")
  t.equal(reason(6, RecordType.Tombstone, 1, true), "tombstone with a value")
  t.equal(reason(12, 0x20_0000, 4, true), "LSN or timestamp at or above 2^53")
  t.equal(reason(20, 0x20_0000, 4, true), "LSN or timestamp at or above 2^53")
  // A partition is any u16 in version 2.
  t.equal(reason(26, 0xffff, 2, true), "ok")
  // Too few bytes for a header.
  t.same(probe(ok, 0, HEADER_SIZE - 1, seed), { _tag: "short", need: HEADER_SIZE })
  // In a format-1 segment (seed 0) a newer version with a valid CRC is also "future".
  const v1 = encodeV1({ type: RecordType.Put, lsn: 1, timestamp: 1, key: Buffer.from("k"), value: Buffer.from("v") })
  v1[5] = 3
  t.equal(tagOf(probe(recrc(v1, 0), 0, v1.length, 0)), "future")
})

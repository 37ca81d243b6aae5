import fc from "fast-check"
import t from "tap"
import { decode, encode, encodedSize, HEADER_SIZE, MAX_KEY_BYTES, probe, RecordType } from "../../engine/Record.ts"

const record = fc.record({
  type: fc.constantFrom(RecordType.Put, RecordType.Tombstone),
  lsn: fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }),
  timestamp: fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }),
  key: fc.uint8Array({ minLength: 1, maxLength: MAX_KEY_BYTES }),
  meta: fc.uint8Array({ maxLength: 300 }),
  value: fc.uint8Array({ maxLength: 3000 })
}).map((r) => (r.type === RecordType.Tombstone ? { ...r, value: new Uint8Array(0) } : r))

t.test("encode then decode gives the record back", async (t) => {
  fc.assert(
    fc.property(record, (r) => {
      const buf = encode(r)
      t.equal(buf.length, encodedSize(r.key.length, r.meta.length, r.value.length))
      const d = decode(buf)
      return d !== undefined && d.type === r.type && d.lsn === r.lsn && d.timestamp === r.timestamp &&
        Buffer.compare(d.key, r.key) === 0 && Buffer.compare(d.meta, r.meta) === 0 && Buffer.compare(d.value, r.value) === 0
    }),
    { numRuns: 500 }
  )
})

t.test("records decode back to back at their offsets", async (t) => {
  fc.assert(
    fc.property(fc.array(record, { minLength: 1, maxLength: 20 }), (rs) => {
      const buf = Buffer.concat(rs.map((r) => encode(r)))
      let at = 0
      for (const r of rs) {
        const p = probe(buf, at, buf.length)
        if (p._tag !== "ok") return false
        if (decode(buf, at)!.lsn !== r.lsn) return false
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
    fc.property(record, fc.nat(), (r, n) => {
      const buf = encode(r)
      const bit = n % (buf.length * 8)
      buf[bit >> 3]! ^= 1 << (bit & 7)
      return probe(buf, 0, buf.length)._tag !== "ok"
    }),
    { numRuns: 2000 }
  )
  t.pass()
})

t.test("a truncated record is short, never ok", async (t) => {
  fc.assert(
    fc.property(record, fc.nat(), (r, n) => {
      const buf = encode(r)
      const cut = n % buf.length
      return probe(buf, 0, cut)._tag !== "ok"
    }),
    { numRuns: 1000 }
  )
  t.pass()
})

t.test("the header layout is as documented", async (t) => {
  const buf = encode({ type: RecordType.Put, lsn: 0x1_0000_0002, timestamp: 7, key: Buffer.from("k"), meta: Buffer.from("mm"), value: Buffer.from("vvv") })
  t.equal(HEADER_SIZE, 36)
  t.equal(buf[4], 0x54, "magic")
  t.equal(buf[5], 1, "version")
  t.equal(buf[6], RecordType.Put, "type")
  t.equal(buf.readUInt32LE(8), 2, "lsn low word")
  t.equal(buf.readUInt32LE(12), 1, "lsn high word")
  t.equal(buf.readUInt32LE(16), 7, "timestamp")
  t.equal(buf.readUInt16LE(24), 1, "key length")
  t.equal(buf.readUInt32LE(28), 2, "meta length")
  t.equal(buf.readUInt32LE(32), 3, "value length")
  t.equal(buf.subarray(36).toString(), "kmmvvv", "key, meta, value")
})

t.test("impossible headers are rejected before the checksum", async (t) => {
  const ok = encode({ type: RecordType.Put, lsn: 1, timestamp: 1, key: Buffer.from("k"), value: Buffer.from("v") })
  const tamper = (at: number, v: number, width: 1 | 2 | 4 = 1) => {
    const b = Buffer.from(ok)
    if (width === 1) b[at] = v
    else if (width === 2) b.writeUInt16LE(v, at)
    else b.writeUInt32LE(v, at)
    const p = probe(b, 0, b.length)
    return p._tag === "bad" ? p.reason : p._tag
  }
  t.equal(tamper(4, 0), "bad magic")
  t.equal(tamper(5, 9), "unknown version")
  t.equal(tamper(6, 7), "unknown type")
  t.equal(tamper(7, 1), "reserved bits set")
  t.equal(tamper(24, 0, 2), "impossible key length")
  t.equal(tamper(24, 2000, 2), "impossible key length")
  t.equal(tamper(28, 0xffffffff, 4), "impossible metadata length")
  t.equal(tamper(32, 0xffffffff, 4), "impossible value length")
  t.equal(tamper(6, RecordType.Tombstone), "tombstone with a value")
  t.equal(tamper(0, 0, 4), "checksum mismatch")
})

/**
 * The index packs a slot's tombstone flag into the top bit of its size and its partition
 * into 16 bits (26 bytes a slot): every field must read back as written, at the limits.
 */
import t from "tap"
import { KeyIndex } from "../../engine/KeyIndex.ts"

t.test("fields read back as written, at their limits", async (t) => {
  const ix = new KeyIndex()
  const big = 2 ** 31 - 1
  ix.set("live", 4_000_000_000, 2 ** 31 - 64, big, 2 ** 53 - 1, false, 65_535, 1, 2)
  ix.set("dead", 7, 64, big, 12, true, 0, 3, 4)
  t.match(ix.get("live"), { segment: 4_000_000_000, offset: 2 ** 31 - 64, size: big, lsn: 2 ** 53 - 1, tombstone: false, partition: 65_535 })
  t.match(ix.get("dead"), { segment: 7, offset: 64, size: big, lsn: 12, tombstone: true, partition: 0 })
  t.ok(ix.replaceIfNewer("dead", 8, 128, 100, 13, false, 0, 5, 6), "a newer record replaces the tombstone")
  t.equal(ix.replacedSize, big, "the displaced size has no tombstone bit in it")
  t.match(ix.get("dead"), { size: 100, tombstone: false })
  t.same(ix.hashesOf(65_535).map((e) => [e.key, e.tombstone]), [["live", false]])
  t.same(ix.keysOf(0), ["dead"])
  t.equal(ix.countOf(65_535), 1)
})

t.test("a size of 2 GiB or more is refused, not folded into the tombstone bit", async (t) => {
  const ix = new KeyIndex()
  t.throws(() => ix.set("k", 1, 64, 2 ** 31, 1, false, 0, 0, 0), RangeError)
})

t.test("each partition's key list follows sets, replaces, moves between partitions, deletes and slot reuse (property)", async (t) => {
  const fc = await import("fast-check")
  const op = fc.oneof(
    fc.record({ k: fc.constant("set" as const), key: fc.integer({ min: 0, max: 40 }), p: fc.integer({ min: 0, max: 5 }) }),
    fc.record({ k: fc.constant("replace" as const), key: fc.integer({ min: 0, max: 40 }), p: fc.integer({ min: 0, max: 5 }) }),
    fc.record({ k: fc.constant("delete" as const), key: fc.integer({ min: 0, max: 40 }), p: fc.constant(0) })
  )
  fc.assert(fc.property(fc.array(op, { maxLength: 400 }), (ops) => {
    const ix = new KeyIndex()
    const model = new Map<string, number>()
    let lsn = 1
    for (const o of ops) {
      const key = `k${o.key}`
      if (o.k === "set") {
        ix.set(key, 1, 0, 10, lsn++, false, o.p, 0, o.key)
        model.set(key, o.p)
      } else if (o.k === "replace") {
        if (ix.replaceIfNewer(key, 1, 0, 10, lsn++, false, o.p, 0, o.key)) model.set(key, o.p)
      } else {
        t.equal(ix.delete(key), model.delete(key))
      }
    }
    for (let p = 0; p <= 5; p++) {
      const want = [...model].filter(([, q]) => q === p).map(([k]) => k).sort()
      if (JSON.stringify([...ix.keysOf(p)].sort()) !== JSON.stringify(want)) return false
      if (JSON.stringify(ix.hashesOf(p).map((e) => e.key).sort()) !== JSON.stringify(want)) return false
      if (ix.countOf(p) !== want.length) return false
      const batches = [...ix.keysIn(new Set([p]), 3)]
      if (batches.some((b) => b.length > 3) || JSON.stringify(batches.flat().sort()) !== JSON.stringify(want)) return false
    }
    return ix.size === model.size
  }), { numRuns: 300 })
  t.pass("300 runs")
})

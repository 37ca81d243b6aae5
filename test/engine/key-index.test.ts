/**
 * The index packs a slot's tombstone flag into the top bit of its size and its partition
 * into 16 bits (26 bytes a slot): every field must read back as written, at the limits.
 */
import t from "tap"
import { KeyIndex } from "../../engine/KeyIndex.ts"
import { keyHash } from "../../engine/TictacTree.ts"
import { probeHash } from "../../engine/KeyIndex.ts"

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

t.test("the hash table finds every key and no other through growth, deletes and slot reuse (property)", async (t) => {
  // Thousands of keys: the table grows several times and runs at up to three quarters full,
  // so probe runs are long and a delete's backward shift moves entries across them. A shift
  // that left a hole in a run would make a later key unreachable; one that moved an entry
  // before its home would too.
  const fc = await import("fast-check")
  const op = fc.record({ del: fc.boolean(), key: fc.integer({ min: 0, max: 3000 }) })
  fc.assert(fc.property(fc.array(op, { minLength: 1000, maxLength: 6000 }), (ops) => {
    const ix = new KeyIndex({ trees: false })
    const model = new Map<string, number>()
    let lsn = 1
    for (const o of ops) {
      const key = `key-${o.key}`
      if (o.del) {
        if (ix.delete(key) !== model.delete(key)) return false
      } else {
        ix.set(key, 1, o.key, 10, lsn, false, 0, 0, 0)
        model.set(key, lsn++)
      }
    }
    for (let k = 0; k <= 3000; k++) {
      const key = `key-${k}`
      if (ix.lsnOf(key) !== (model.get(key) ?? -1)) return false
      const loc = ix.get(key)
      if ((loc === undefined) !== !model.has(key) || (loc !== undefined && loc.offset !== k)) return false
    }
    if (ix.size !== model.size) return false
    const listed = [...ix.entries()].map(([k, l]) => `${k}:${l.lsn}`).sort()
    return JSON.stringify(listed) === JSON.stringify([...model].map(([k, l]) => `${k}:${l}`).sort())
      && JSON.stringify([...ix.keys()].sort()) === JSON.stringify([...model.keys()].sort())
  }), { numRuns: 60 })
  t.pass("60 runs")
})

t.test("a probe run that wraps past the table's end survives deletes on either side of the wrap", async (t) => {
  // The table starts at 2048 entries. Keys whose home is one of the last four entries fill
  // them and spill over to the front; keys homed at the front then queue behind those.
  const SEED = 12345
  const end: string[] = []
  const front: string[] = []
  for (let i = 0; end.length < 8 || front.length < 4; i++) {
    const key = `w${i}`
    const home = probeHash(key, SEED) & 2047
    if (home >= 2044 && end.length < 8) end.push(key)
    else if (home <= 1 && front.length < 4) front.push(key)
  }
  for (const order of [[...end, ...front], [...front, ...end]]) {
    for (const victims of [end.slice(0, 3), end.slice(5), front.slice(0, 2), [end[0]!, front[0]!]]) {
      const ix = new KeyIndex({ trees: false, seed: SEED })
      order.forEach((k, i) => ix.set(k, 1, i, 10, i + 1, false, 0, 0, 0))
      for (const v of victims) ix.delete(v)
      const lost = order.filter((k) => !victims.includes(k) && ix.get(k) === undefined)
      const kept = victims.filter((k) => ix.get(k) !== undefined)
      if (lost.length + kept.length > 0) t.fail(`lost ${lost.join(",")}, kept ${kept.join(",")} after deleting ${victims.join(",")}`)
    }
  }
  t.pass("every surviving key found, every deleted one gone")
})

t.test("keys that all share one key hash do not share a place in the index's table (hash flooding)", async (t) => {
  // Joux's multicollision: find two 3-character blocks that take FNV's state to the same
  // value (a birthday search, some 10^5 tries), then two more from that state, ten times
  // over; any choice of one block from each pair gives a key of the same 32-bit key hash,
  // 1024 keys in all. A table probed by that hash would walk all of them on every lookup.
  const step = (h: number, cs: number[]) => {
    for (const c of cs) h = Math.imul(h ^ c, 0x01000193)
    return h >>> 0
  }
  let state = 0x811c9dc5
  const pairs: Array<[string, string]> = []
  let rnd = 1
  const next = () => (rnd = (Math.imul(rnd, 1103515245) + 12345) >>> 0) >>> 16
  while (pairs.length < 10) {
    const seen = new Map<number, string>()
    for (;;) {
      const cs = [0, 1, 2].map(() => 0x4e00 + (next() & 0x3fff))
      const block = String.fromCharCode(...cs)
      const h = step(state, cs)
      const other = seen.get(h)
      if (other !== undefined && other !== block) {
        pairs.push([other, block])
        state = h
        break
      }
      seen.set(h, block)
    }
  }
  const keys: string[] = []
  for (let m = 0; m < 1024; m++) keys.push(pairs.map((p, i) => p[(m >> i) & 1]).join(""))
  t.equal(new Set(keys.map(keyHash)).size, 1, "every key has the same key hash")
  const places = new Set(keys.map((k) => probeHash(k, 0x9e3779b9)))
  t.ok(places.size > 1000, `under a seed they spread: ${places.size} distinct probe hashes of 1024`)
  const ix = new KeyIndex({ seed: 0x9e3779b9 })
  keys.forEach((k, i) => ix.set(k, 1, i, 10, i + 1, false, 3, i, 0))
  t.ok(keys.every((k, i) => ix.get(k)?.offset === i), "and each is found")
  t.equal(ix.hashesOf(3).filter((e) => e.h === keyHash(keys[0]!)).length, 1024, "the trees still see the key hash")
})

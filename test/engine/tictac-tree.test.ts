/**
 * The anti-entropy trees the index keeps: equal for equal contents whatever the order of
 * writes, current after every insert, replace, delete, partition drop, compaction and
 * restart (from hints or from scans), and equal to a tree computed from scratch.
 */
import fc from "fast-check"
import t from "tap"
import { compact, selectInputs } from "../../engine/Compaction.ts"
import { makeMemoryFiles } from "../../engine/Files.ts"
import { KeyIndex } from "../../engine/KeyIndex.ts"
import type { Log } from "../../engine/Log.ts"
import { BRANCHES, branchOf, childOf, children, childWidthBits, contribution, keyHash, Trees } from "../../engine/TictacTree.ts"
import type { Test } from "tap"
import { del, openLog, put } from "./helpers.ts"

/** The branches of `partition` computed from scratch from the index's entries. */
const fromScratch = (index: KeyIndex, partition: number) => {
  const hashes = new Uint32Array(BRANCHES)
  const counts = new Uint32Array(BRANCHES)
  for (const [key, loc] of index.entries()) {
    if (loc.partition !== partition) continue
    const b = branchOf(keyHash(key))
    hashes[b] = (hashes[b]! ^ loc.hash) >>> 0
    counts[b]!++
  }
  return { hashes, counts }
}

const same = (t: Test, log: Log, partitions: ReadonlyArray<number>, what: string) => {
  for (const p of partitions) {
    const live = log.index.trees.branches(p)
    const want = fromScratch(log.index, p)
    t.same([...live.hashes], [...want.hashes], `${what}: partition ${p} hashes`)
    t.same([...live.counts], [...want.counts], `${what}: partition ${p} counts`)
  }
}

t.test("the key hash spreads keys over every branch and is stable", async (t) => {
  const seen = new Set<number>()
  for (let i = 0; i < 20_000; i++) seen.add(branchOf(keyHash(`key-${i}`)))
  t.equal(seen.size, BRANCHES, "20,000 keys reach all 1024 branches")
  // A format of the exchange: every node must compute the same position.
  t.equal(keyHash("tally"), 897994092, "pinned value")
  t.equal(keyHash(""), 2872998923, "empty key")
  t.equal(keyHash("a"), keyHash("a"))
  t.not(keyHash("ab"), keyHash("ba"))
  t.equal(childWidthBits(0), 0)
  t.equal(childWidthBits(1), 0)
  t.equal(childWidthBits(3), 2)
  t.equal(childWidthBits(1_000_000), 10)
})

t.test("index changes keep the tree equal to one computed from scratch, in any order", async (t) => {
  const op = fc.oneof(
    fc.record({ k: fc.integer({ min: 0, max: 30 }), p: fc.integer({ min: 0, max: 2 }), h: fc.integer({ min: 0, max: 0xffff_ffff }), del: fc.constant(false) }),
    fc.record({ k: fc.integer({ min: 0, max: 30 }), p: fc.constant(0), h: fc.constant(0), del: fc.constant(true) })
  )
  fc.assert(fc.property(fc.array(op, { maxLength: 200 }), (ops) => {
    const a = new KeyIndex()
    let lsn = 1
    for (const o of ops) {
      if (o.del) a.delete(`k${o.k}`)
      else if (o.h % 2 === 0) a.set(`k${o.k}`, 1, 0, 10, lsn++, false, o.p, o.h, o.h >>> 3)
      else a.replaceIfNewer(`k${o.k}`, 1, 0, 10, lsn++, o.h % 3 === 0, o.p, o.h, o.h >>> 3)
    }
    // The same final contents inserted in another order give the same trees.
    const b = new KeyIndex()
    const final = [...a.entries()].reverse()
    for (const [key, l] of final) b.set(key, 2, 5, 10, l.lsn, l.tombstone, l.partition, l.hash, 0)
    for (const p of [0, 1, 2]) {
      const want = fromScratch(a, p)
      const got = a.trees.branches(p)
      if (!want.hashes.every((x, i) => x === got.hashes[i]) || !want.counts.every((x, i) => x === got.counts[i])) return false
      const other = b.trees.branches(p)
      if (!other.hashes.every((x, i) => x === got.hashes[i])) return false
      if (a.trees.root(p) !== b.trees.root(p)) return false
    }
    return true
  }), { numRuns: 300 })
  t.pass("300 runs")
})

t.test("a key moving partition leaves the old tree and enters the new", async (t) => {
  const index = new KeyIndex()
  index.set("x", 1, 0, 10, 1, false, 4, 7, 9)
  t.not(index.trees.root(4), 0)
  index.set("x", 1, 0, 10, 2, false, 5, 7, 9)
  t.equal(index.trees.root(4), 0, "old partition's tree no longer holds it")
  t.equal(index.trees.root(5), contribution(7, 9))
  index.delete("x")
  t.equal(index.trees.root(5), 0, "deleted")
  t.same([...index.trees.branches(5).counts].reduce((a, b) => a + b, 0), 0)
})

t.test("trees stay current through drops, compaction and restarts from hints and from scans", async (t) => {
  const files = makeMemoryFiles()
  const dir = "/d"
  // Tombstones kept (a long grace), so compaction only moves records.
  let log = openLog(files, dir, { maxSegmentBytes: 2048, preallocate: false, tombstoneGraceMs: 1e12 })
  for (let i = 0; i < 200; i++) await put(log, `k${i}`, `v${i}`, undefined, i % 3)
  for (let i = 0; i < 200; i += 3) await put(log, `k${i}`, `w${i}`, undefined, i % 3)
  for (let i = 1; i < 200; i += 5) await del(log, `k${i}`, i % 3)
  same(t, log, [0, 1, 2], "after writes")
  const before = [0, 1, 2].map((p) => log.index.trees.root(p))
  await compact(log, selectInputs(log, true), () => false)
  same(t, log, [0, 1, 2], "after compaction")
  t.same([0, 1, 2].map((p) => log.index.trees.root(p)), before, "compaction moves records without changing contents")
  // A reaped tombstone leaves its tree.
  log.reconfigure({ tombstoneGraceMs: 0 })
  await compact(log, selectInputs(log, true), () => false)
  same(t, log, [0, 1, 2], "after reaping tombstones")
  await log.dropPartition(2)
  t.equal(log.index.trees.root(2), 0, "a dropped partition's tree is empty")
  same(t, log, [0, 1, 2], "after drop")
  const roots = [0, 1].map((p) => log.index.trees.root(p))
  await log.close()
  log = openLog(files, dir)
  t.ok(log.stats.startupKeysFromHints > 0, "restart from hints")
  t.same([0, 1, 2].map((p) => log.index.trees.root(p)), [...roots, 0], "rebuilt from hints at start-up")
  same(t, log, [0, 1, 2], "after restart from hints")
  await log.close()
  for (const f of files.list(dir)) if (f.endsWith(".hint")) files.unlink(`${dir}/${f}`)
  log = openLog(files, dir)
  t.equal(log.stats.startupKeysFromHints, 0, "restart from scans")
  t.same([0, 1, 2].map((p) => log.index.trees.root(p)), [...roots, 0], "rebuilt from scans at start-up")
  await log.close()
})

t.test("children of a branch partition its keys by the next bits of their hash", async (t) => {
  const trees = new Trees()
  const entries = Array.from({ length: 5000 }, (_, i) => ({ key: `k${i}`, h: keyHash(`k${i}`), hash: (i * 2654435761) >>> 0, tombstone: false }))
  for (const e of entries) trees.change(0, e.h, e.hash, 1)
  const b = branchOf(entries[0]!.h)
  const kids = children(entries, [{ branch: b, bits: 3 }]).get(b)!
  t.equal(kids.length, 8)
  t.equal(kids.reduce((a, x) => (a ^ x) >>> 0, 0), trees.branches(0).hashes[b], "children XOR to their branch")
  const under = entries.filter((e) => branchOf(e.h) === b)
  for (let c = 0; c < 8; c++) {
    t.equal(kids[c], under.filter((e) => childOf(e.h, 3) === c).reduce((a, e) => (a ^ e.hash) >>> 0, 0), `child ${c}`)
  }
  t.same([...children(entries, [{ branch: b, bits: 0 }]).get(b)!], [trees.branches(0).hashes[b]], "0 bits: the branch itself")
})

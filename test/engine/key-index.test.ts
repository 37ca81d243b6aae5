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

/**
 * The in-memory hash index (Bitcask's keydir): key -> where its newest record lives, with
 * the record's partition and content hash. An open-addressing table from the key's hash to a
 * slot number, and the slots' fields in parallel typed arrays, so an entry costs a reference
 * to its key, about 8 bytes of table and 34 of fields instead of a JS object per key
 * (docs/storage.md has the measured figure). The table replaced a `Map<string, number>`,
 * whose entries cost about 33 bytes a key at 2M keys (bench:engine: 80.9 index bytes a key
 * against the target of 64). The table probes with a hash seeded at random per index, not
 * with the anti-entropy trees' fixed key hash: keys are chosen by clients, and with a hash
 * anyone can compute, a client could write thousands of keys of one hash and make every
 * probe walk all of them (hash flooding). Tombstones stay indexed: the
 * node needs their metadata. Each partition keeps the list of its keys, so listing a
 * partition's keys (a transfer's snapshot, an exchange's pass over hashes, a drop) visits that
 * partition only, for about 17 bytes a key (a slot -> key reference, the slot's entry in its
 * partition's list and its place there, so a delete is O(1)). Walking the whole index for every such pass cost
 * 16-22 ms at 1M keys, on the event loop, on both sides of every exchange step and for every
 * snapshot (docs/perf.md, the rebalance benchmark). Every change also updates the partition's
 * anti-entropy tree (TictacTree.ts), so the trees are current whenever the index is, at
 * start-up included.
 */
import { contribution, keyHash, seededKeyHash, Trees } from "./TictacTree.ts"

/** Where a key's newest record is, and what it holds. */
export interface Location {
  readonly segment: number
  readonly offset: number
  readonly size: number
  readonly lsn: number
  readonly tombstone: boolean
  readonly partition: number
  /**
   * 32 bits of the record's 64-bit content hash (TictacTree.contribution): what anti-entropy
   * compares. The full hash is in the hint files; the index keeps only what it uses, 4 bytes
   * a key less.
   */
  readonly hash: number
}

/**
 * A key's position in the table: the trees' key hash from a secret basis. A full 32-bit
 * collision of FNV's state under one basis is not one under another, and the finaliser is a
 * bijection, so keys that collide in the table cannot be found without the seed.
 */
export const probeHash = (key: string, seed: number): number => seededKeyHash(key, seed)

const INITIAL = 1024
/** The table's load factor bound: linear probing stays short below it. */
const MAX_LOAD = 0.75
/** The tombstone flag, in the top bit of a slot's size: records are under 2 GiB (a segment's limit). */
const TOMB = 0x8000_0000
const SIZE = 0x7fff_ffff

/** Key -> location, with slot reuse; per-segment live-byte accounting is left to the caller. */
export class KeyIndex {
  /** Open addressing, linear probing: slot + 1, or 0 for empty. Its length is a power of two. */
  private table = new Uint32Array(INITIAL * 2)
  private mask = INITIAL * 2 - 1
  private count = 0
  private seg = new Uint32Array(INITIAL)
  private off = new Uint32Array(INITIAL)
  /** Record size | TOMB. */
  private len = new Uint32Array(INITIAL)
  private lsns = new Float64Array(INITIAL)
  /** Partition (at most 2^16 of them). */
  private part = new Uint16Array(INITIAL)
  private hash = new Uint32Array(INITIAL)
  /** The key's probe hash (`probeHash`), kept so that growing and deleting need not rehash keys. */
  private khash = new Uint32Array(INITIAL)
  /** The probe hash's seed: random, so that which keys collide cannot be known outside. */
  private readonly seed: number
  /** Slot -> its key (undefined while the slot is free). */
  private readonly slotKey: Array<string | undefined> = []
  /** Slot -> its place in its partition's list. */
  private place = new Uint32Array(INITIAL)
  /** Partition -> its slots, the first `perPartition[p]` entries. */
  private readonly lists: Array<Uint32Array | undefined> = []
  private readonly perPartition = new Uint32Array(0x1_0000)
  private free: number[] = []
  private used = 0
  /** The anti-entropy trees of the keys indexed here. */
  readonly trees = new Trees()
  /** Whether the trees are kept (off only to measure what keeping them costs). */
  private readonly track: boolean

  /** `seed` fixes the probe hash (tests, the simulator); by default it is random. */
  constructor(options: { readonly trees?: boolean; readonly seed?: number } = {}) {
    this.track = options.trees ?? true
    this.seed = options.seed ?? crypto.getRandomValues(new Uint32Array(1))[0]!
  }

  get size(): number {
    return this.count
  }

  /** The slot of `key` (whose probe hash is `h`), or -1. */
  private find(key: string, h: number): number {
    const table = this.table
    const mask = this.mask
    for (let i = h & mask; ; i = (i + 1) & mask) {
      const e = table[i]!
      if (e === 0) return -1
      const s = e - 1
      if (this.khash[s] === h && this.slotKey[s] === key) return s
    }
  }

  /** Puts slot `s` (key hash `h`, not in the table) into the table. */
  private insert(s: number, h: number): void {
    if (this.count + 1 > this.table.length * MAX_LOAD) this.rehash(this.table.length * 2)
    const table = this.table
    const mask = this.mask
    let i = h & mask
    while (table[i] !== 0) i = (i + 1) & mask
    table[i] = s + 1
    this.count++
  }

  /** Takes slot `s` (key hash `h`) out of the table, shifting back what probed past it (no tombstones). */
  private remove(s: number, h: number): void {
    const table = this.table
    const mask = this.mask
    let i = h & mask
    while (table[i] !== s + 1) i = (i + 1) & mask
    for (let j = (i + 1) & mask; ; j = (j + 1) & mask) {
      const e = table[j]!
      if (e === 0) break
      // The entry at j may fill the hole at i unless its home lies cyclically in (i, j].
      const home = this.khash[e - 1]! & mask
      if (i <= j ? home > i && home <= j : home > i || home <= j) continue
      table[i] = e
      i = j
    }
    table[i] = 0
    this.count--
  }

  private rehash(size: number): void {
    const table = new Uint32Array(size)
    const mask = size - 1
    for (let s = 0; s < this.used; s++) {
      if (this.slotKey[s] === undefined) continue
      let i = this.khash[s]! & mask
      while (table[i] !== 0) i = (i + 1) & mask
      table[i] = s + 1
    }
    this.table = table
    this.mask = mask
  }

  /** Keys (tombstones included) indexed in `partition`. */
  countOf(partition: number): number {
    return this.perPartition[partition] ?? 0
  }

  private grow(): void {
    // 1.5x, not 2x: the fields are most of an entry, and doubling leaves up to half unused.
    const n = Math.ceil(this.seg.length * 1.5)
    const widen = <T extends Uint16Array | Uint32Array | Float64Array>(a: T, make: (n: number) => T): T => {
      const b = make(n)
      b.set(a)
      return b
    }
    this.seg = widen(this.seg, (n) => new Uint32Array(n))
    this.off = widen(this.off, (n) => new Uint32Array(n))
    this.len = widen(this.len, (n) => new Uint32Array(n))
    this.lsns = widen(this.lsns, (n) => new Float64Array(n))
    this.part = widen(this.part, (n) => new Uint16Array(n))
    this.hash = widen(this.hash, (n) => new Uint32Array(n))
    this.khash = widen(this.khash, (n) => new Uint32Array(n))
    this.place = widen(this.place, (n) => new Uint32Array(n))
  }

  /** Adds slot `s` to partition `p`'s list, and counts it. */
  private enlist(s: number, p: number): void {
    const n = this.perPartition[p]!
    let list = this.lists[p]
    if (list === undefined || list.length === n) {
      // 1.5x: the slack is a quarter of a list on average, a byte a key.
      const wider = new Uint32Array(Math.max(64, Math.ceil(n * 1.5)))
      if (list !== undefined) wider.set(list)
      this.lists[p] = list = wider
    }
    list[n] = s
    this.place[s] = n
    this.perPartition[p] = n + 1
  }

  /** Removes slot `s` from partition `p`'s list: the last slot takes its place. */
  private delist(s: number, p: number): void {
    const list = this.lists[p]!
    const last = this.perPartition[p]! - 1
    const i = this.place[s]!
    const moved = list[last]!
    list[i] = moved
    this.place[moved] = i
    this.perPartition[p] = last
  }

  private newSlot(key: string, h: number, partition: number): number {
    let s = this.free.pop()
    if (s === undefined) {
      if (this.used === this.seg.length) this.grow()
      s = this.used++
    }
    this.slotKey[s] = key
    this.khash[s] = h
    this.insert(s, h)
    this.part[s] = partition
    this.enlist(s, partition)
    return s
  }

  private at(s: number): Location {
    const len = this.len[s]!
    return {
      segment: this.seg[s]!, offset: this.off[s]!, size: len & SIZE, lsn: this.lsns[s]!,
      tombstone: len >= TOMB, partition: this.part[s]!, hash: this.hash[s]!
    }
  }

  private write(s: number, segment: number, offset: number, size: number, lsn: number, tombstone: boolean, partition: number, hashHi: number, hashLo: number): void {
    const was = this.part[s]!
    if (was !== partition) {
      this.delist(s, was)
      this.enlist(s, partition)
    }
    this.seg[s] = segment
    this.off[s] = offset
    if (size > SIZE) throw new RangeError(`record of ${size} bytes: the index holds sizes below 2 GiB`)
    this.len[s] = tombstone ? size + TOMB : size
    this.lsns[s] = lsn
    this.part[s] = partition
    this.hash[s] = contribution(hashHi, hashLo)
  }

  /** The location of `key`, or undefined. */
  get(key: string): Location | undefined {
    const s = this.find(key, probeHash(key, this.seed))
    return s < 0 ? undefined : this.at(s)
  }

  /** LSN of the indexed record for `key`, or -1. */
  lsnOf(key: string): number {
    const s = this.find(key, probeHash(key, this.seed))
    return s < 0 ? -1 : this.lsns[s]!
  }

  /** Sets the location of `key` unconditionally. */
  set(key: string, segment: number, offset: number, size: number, lsn: number, tombstone: boolean, partition: number, hashHi: number, hashLo: number): void {
    const p = probeHash(key, this.seed)
    let s = this.find(key, p)
    const h = this.track ? keyHash(key) : 0
    if (s < 0) {
      s = this.newSlot(key, p, partition)
    } else if (this.track) {
      this.trees.change(this.part[s]!, h, this.hash[s]!, -1)
    }
    if (this.track) this.trees.change(partition, h, contribution(hashHi, hashLo), 1)
    this.write(s, segment, offset, size, lsn, tombstone, partition, hashHi, hashLo)
  }

  /**
   * Moves `key` to a copy of its record elsewhere (compaction), keeping everything else, if
   * the index still holds the record of LSN `lsn` for it (a newer write wins over the copy);
   * one lookup. Returns whether it moved.
   */
  moveIfAt(key: string, lsn: number, segment: number, offset: number): boolean {
    const s = this.find(key, probeHash(key, this.seed))
    if (s < 0 || this.lsns[s] !== lsn) return false
    this.seg[s] = segment
    this.off[s] = offset
    return true
  }

  /** Segment of the record the last successful `replaceIfNewer` displaced, or -1 if none. */
  replacedSegment = -1
  /** Size of that record. */
  replacedSize = 0
  /** Content hash (contribution) of that record (0 if none). */
  replacedHash = 0

  /**
   * Points `key` at a record unless the index holds one with an equal or higher LSN; one
   * lookup and no allocation (the write path's hot loop). On success, `replaced*` describe
   * the record displaced.
   */
  replaceIfNewer(key: string, segment: number, offset: number, size: number, lsn: number, tombstone: boolean, partition: number, hashHi: number, hashLo: number): boolean {
    const p = probeHash(key, this.seed)
    let s = this.find(key, p)
    if (s < 0) {
      this.replacedSegment = -1
      this.replacedSize = 0
      this.replacedHash = 0
      s = this.newSlot(key, p, partition)
    } else {
      if (this.lsns[s]! >= lsn) return false
      this.replacedSegment = this.seg[s]!
      this.replacedSize = this.len[s]! & SIZE
      this.replacedHash = this.hash[s]!
    }
    if (this.track) {
      const h = keyHash(key)
      if (this.replacedSegment >= 0) this.trees.change(this.part[s]!, h, this.replacedHash, -1)
      this.trees.change(partition, h, contribution(hashHi, hashLo), 1)
    }
    this.write(s, segment, offset, size, lsn, tombstone, partition, hashHi, hashLo)
    return true
  }

  /** Removes `key`. */
  delete(key: string): boolean {
    const p = probeHash(key, this.seed)
    const s = this.find(key, p)
    if (s < 0) return false
    if (this.track) this.trees.change(this.part[s]!, keyHash(key), this.hash[s]!, -1)
    this.delist(s, this.part[s]!)
    this.remove(s, p)
    this.slotKey[s] = undefined
    this.free.push(s)
    return true
  }

  /** Every (key, location), in no particular order. */
  *entries(): IterableIterator<[string, Location]> {
    for (let s = 0; s < this.used; s++) {
      const key = this.slotKey[s]
      if (key !== undefined) yield [key, this.at(s)]
    }
  }

  /**
   * The entries whose record is in one of `segments` (what a compaction copies), walking the
   * index once and handing them out in batches, one per `step` entries walked, so the caller
   * can yield between batches (a million keys take a few hundred milliseconds to walk).
   * Changes between batches are safe: the walk goes by slot, skips a slot freed since and
   * may or may not visit a key added since (which compaction does not need: its record is in
   * no input); an entry is a snapshot of its location.
   */
  *locationsIn(segments: ReadonlySet<number>, step: number): Generator<Array<{ key: string } & Omit<Location, "hash">>> {
    let batch: Array<{ key: string } & Omit<Location, "hash">> = []
    let walked = 0
    for (let s = 0; s < this.used; s++) {
      const key = this.slotKey[s]
      if (key !== undefined && segments.has(this.seg[s]!)) {
        const len = this.len[s]!
        batch.push({ key, segment: this.seg[s]!, offset: this.off[s]!, size: len & SIZE, lsn: this.lsns[s]!, tombstone: len >= TOMB, partition: this.part[s]! })
      }
      if (++walked % step === 0) {
        yield batch
        batch = []
      }
    }
    if (batch.length > 0) yield batch
  }

  /** The keys of one partition, in no particular order (a snapshot: an array). */
  keysOf(partition: number): string[] {
    const n = this.perPartition[partition]!
    const list = this.lists[partition]
    const out = new Array<string>(n)
    for (let i = 0; i < n; i++) out[i] = this.slotKey[list![i]!]!
    return out
  }

  /**
   * The keys of the given partitions, handed out in batches of at most `step`, so a caller can
   * yield between batches (dropping the partitions that moved away). Each partition's keys
   * are listed when its turn comes (a snapshot): keys added to it later are not handed out,
   * keys deleted since are (the caller looks each one up anyway).
   */
  *keysIn(partitions: ReadonlySet<number>, step: number): Generator<string[]> {
    for (const p of partitions) {
      const keys = this.keysOf(p)
      for (let i = 0; i < keys.length; i += step) yield keys.slice(i, i + step)
    }
  }

  /**
   * The keys of one partition with their key hash, tree contribution and tombstone flag, in
   * no particular order (a snapshot array; hashes only, no disk read).
   */
  hashesOf(partition: number): Array<{ key: string; h: number; hash: number; tombstone: boolean }> {
    const n = this.perPartition[partition]!
    const list = this.lists[partition]
    const out = new Array<{ key: string; h: number; hash: number; tombstone: boolean }>(n)
    for (let i = 0; i < n; i++) {
      const s = list![i]!
      const key = this.slotKey[s]!
      out[i] = { key, h: keyHash(key), hash: this.hash[s]!, tombstone: this.len[s]! >= TOMB }
    }
    return out
  }

  /** Keys in no particular order. */
  *keys(): IterableIterator<string> {
    for (let s = 0; s < this.used; s++) {
      const key = this.slotKey[s]
      if (key !== undefined) yield key
    }
  }
}

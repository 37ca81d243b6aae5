/**
 * The in-memory hash index (Bitcask's keydir): key -> where its newest record lives, with
 * the record's partition and content hash. A Map from key to a slot number, and the slots'
 * fields in parallel typed arrays, so an entry costs a Map entry plus 26 bytes instead of a
 * JS object per key (docs/storage.md has the measured figure). Tombstones stay indexed: the
 * node needs their metadata. Each partition keeps the list of its keys, so listing a
 * partition's keys (a transfer's snapshot, an exchange's pass over hashes, a drop) visits that
 * partition only, for about 17 bytes a key (a slot -> key reference, the slot's entry in its
 * partition's list and its place there, so a delete is O(1)). Walking the whole index for every such pass cost
 * 16-22 ms at 1M keys, on the event loop, on both sides of every exchange step and for every
 * snapshot (docs/perf.md, the rebalance benchmark). Every change also updates the partition's
 * anti-entropy tree (TictacTree.ts), so the trees are current whenever the index is, at
 * start-up included.
 */
import { contribution, keyHash, Trees } from "./TictacTree.ts"

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

const INITIAL = 1024
/** The tombstone flag, in the top bit of a slot's size: records are under 2 GiB (a segment's limit). */
const TOMB = 0x8000_0000
const SIZE = 0x7fff_ffff

/** Key -> location, with slot reuse; per-segment live-byte accounting is left to the caller. */
export class KeyIndex {
  private readonly map = new Map<string, number>()
  private seg = new Uint32Array(INITIAL)
  private off = new Uint32Array(INITIAL)
  /** Record size | TOMB. */
  private len = new Uint32Array(INITIAL)
  private lsns = new Float64Array(INITIAL)
  /** Partition (at most 2^16 of them). */
  private part = new Uint16Array(INITIAL)
  private hash = new Uint32Array(INITIAL)
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

  constructor(options: { readonly trees?: boolean } = {}) {
    this.track = options.trees ?? true
  }

  get size(): number {
    return this.map.size
  }

  /** Keys (tombstones included) indexed in `partition`. */
  countOf(partition: number): number {
    return this.perPartition[partition] ?? 0
  }

  private grow(): void {
    const n = this.seg.length * 2
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

  private newSlot(key: string, partition: number): number {
    let s = this.free.pop()
    if (s === undefined) {
      if (this.used === this.seg.length) this.grow()
      s = this.used++
    }
    this.map.set(key, s)
    this.slotKey[s] = key
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
    const s = this.map.get(key)
    return s === undefined ? undefined : this.at(s)
  }

  /** LSN of the indexed record for `key`, or -1. */
  lsnOf(key: string): number {
    const s = this.map.get(key)
    return s === undefined ? -1 : this.lsns[s]!
  }

  /** Sets the location of `key` unconditionally. */
  set(key: string, segment: number, offset: number, size: number, lsn: number, tombstone: boolean, partition: number, hashHi: number, hashLo: number): void {
    let s = this.map.get(key)
    const h = this.track ? keyHash(key) : 0
    if (s === undefined) {
      s = this.newSlot(key, partition)
    } else if (this.track) {
      this.trees.change(this.part[s]!, h, this.hash[s]!, -1)
    }
    if (this.track) this.trees.change(partition, h, contribution(hashHi, hashLo), 1)
    this.write(s, segment, offset, size, lsn, tombstone, partition, hashHi, hashLo)
  }

  /**
   * Moves `key` to a copy of its record elsewhere (compaction), keeping everything else, if
   * the index still holds the record of LSN `lsn` for it (a newer write wins over the copy);
   * one Map lookup. Returns whether it moved.
   */
  moveIfAt(key: string, lsn: number, segment: number, offset: number): boolean {
    const s = this.map.get(key)
    if (s === undefined || this.lsns[s] !== lsn) return false
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
   * Points `key` at a record unless the index holds one with an equal or higher LSN; one Map
   * lookup and no allocation (the write path's hot loop). On success, `replaced*` describe
   * the record displaced.
   */
  replaceIfNewer(key: string, segment: number, offset: number, size: number, lsn: number, tombstone: boolean, partition: number, hashHi: number, hashLo: number): boolean {
    let s = this.map.get(key)
    if (s === undefined) {
      this.replacedSegment = -1
      this.replacedSize = 0
      this.replacedHash = 0
      s = this.newSlot(key, partition)
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
    const s = this.map.get(key)
    if (s === undefined) return false
    if (this.track) this.trees.change(this.part[s]!, keyHash(key), this.hash[s]!, -1)
    this.delist(s, this.part[s]!)
    this.map.delete(key)
    this.slotKey[s] = undefined
    this.free.push(s)
    return true
  }

  /** Every (key, location), in no particular order. */
  *entries(): IterableIterator<[string, Location]> {
    for (const [key, s] of this.map) yield [key, this.at(s)]
  }

  /**
   * The entries whose record is in one of `segments` (what a compaction copies), walking the
   * index once and handing them out in batches, one per `step` entries walked, so the caller
   * can yield between batches (a million keys take a few hundred milliseconds to walk).
   * Changes between batches are safe: a Map iterator visits what is added and skips what is
   * deleted; an entry is a snapshot of its location.
   */
  *locationsIn(segments: ReadonlySet<number>, step: number): Generator<Array<{ key: string } & Omit<Location, "hash">>> {
    let batch: Array<{ key: string } & Omit<Location, "hash">> = []
    let walked = 0
    for (const [key, s] of this.map) {
      if (segments.has(this.seg[s]!)) {
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
  keys(): IterableIterator<string> {
    return this.map.keys()
  }
}

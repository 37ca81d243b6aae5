/**
 * The in-memory hash index (Bitcask's keydir): key -> where its newest record lives.
 * A Map from key to a slot number, and the slots' fields in parallel typed arrays, so an
 * entry costs a Map entry plus 21 bytes instead of a JS object per key (docs/storage.md
 * has the measured figure). Tombstones stay indexed: the node needs their metadata.
 */

/** Where a key's newest record is. */
export interface Location {
  readonly segment: number
  readonly offset: number
  readonly size: number
  readonly lsn: number
  readonly tombstone: boolean
}

const INITIAL = 1024

/** Key -> location, with slot reuse and per-segment live-byte accounting left to the caller. */
export class KeyIndex {
  private readonly map = new Map<string, number>()
  private seg = new Uint32Array(INITIAL)
  private off = new Uint32Array(INITIAL)
  private len = new Uint32Array(INITIAL)
  private lsns = new Float64Array(INITIAL)
  private tomb = new Uint8Array(INITIAL)
  private free: number[] = []
  private used = 0

  get size(): number {
    return this.map.size
  }

  private grow(): void {
    const n = this.seg.length * 2
    const widen = <T extends Uint32Array | Float64Array | Uint8Array>(a: T, make: (n: number) => T): T => {
      const b = make(n)
      b.set(a)
      return b
    }
    this.seg = widen(this.seg, (n) => new Uint32Array(n))
    this.off = widen(this.off, (n) => new Uint32Array(n))
    this.len = widen(this.len, (n) => new Uint32Array(n))
    this.lsns = widen(this.lsns, (n) => new Float64Array(n))
    this.tomb = widen(this.tomb, (n) => new Uint8Array(n))
  }

  private slotOf(key: string): number {
    let s = this.map.get(key)
    if (s === undefined) {
      s = this.free.pop()
      if (s === undefined) {
        if (this.used === this.seg.length) this.grow()
        s = this.used++
      }
      this.map.set(key, s)
    }
    return s
  }

  /** The location of `key`, or undefined. */
  get(key: string): Location | undefined {
    const s = this.map.get(key)
    if (s === undefined) return undefined
    return { segment: this.seg[s]!, offset: this.off[s]!, size: this.len[s]!, lsn: this.lsns[s]!, tombstone: this.tomb[s] === 1 }
  }

  /** LSN of the indexed record for `key`, or -1. */
  lsnOf(key: string): number {
    const s = this.map.get(key)
    return s === undefined ? -1 : this.lsns[s]!
  }

  /** Sets the location of `key` unconditionally. */
  set(key: string, segment: number, offset: number, size: number, lsn: number, tombstone: boolean): void {
    const s = this.slotOf(key)
    this.seg[s] = segment
    this.off[s] = offset
    this.len[s] = size
    this.lsns[s] = lsn
    this.tomb[s] = tombstone ? 1 : 0
  }

  /** Segment of the record the last successful `replaceIfNewer` displaced, or -1 if none. */
  replacedSegment = -1
  /** Size of that record. */
  replacedSize = 0

  /**
   * Points `key` at a record unless the index holds one with an equal or higher LSN; one Map
   * lookup and no allocation (the write path's hot loop). On success, `replacedSegment` and
   * `replacedSize` describe the record displaced.
   */
  replaceIfNewer(key: string, segment: number, offset: number, size: number, lsn: number, tombstone: boolean): boolean {
    let s = this.map.get(key)
    if (s === undefined) {
      this.replacedSegment = -1
      this.replacedSize = 0
      s = this.free.pop()
      if (s === undefined) {
        if (this.used === this.seg.length) this.grow()
        s = this.used++
      }
      this.map.set(key, s)
    } else {
      if (this.lsns[s]! >= lsn) return false
      this.replacedSegment = this.seg[s]!
      this.replacedSize = this.len[s]!
    }
    this.seg[s] = segment
    this.off[s] = offset
    this.len[s] = size
    this.lsns[s] = lsn
    this.tomb[s] = tombstone ? 1 : 0
    return true
  }

  /** Removes `key`. */
  delete(key: string): boolean {
    const s = this.map.get(key)
    if (s === undefined) return false
    this.map.delete(key)
    this.free.push(s)
    return true
  }

  /** Every (key, location), in no particular order. */
  *entries(): IterableIterator<[string, Location]> {
    for (const [key, s] of this.map) {
      yield [key, { segment: this.seg[s]!, offset: this.off[s]!, size: this.len[s]!, lsn: this.lsns[s]!, tombstone: this.tomb[s] === 1 }]
    }
  }

  /** Keys in no particular order. */
  keys(): IterableIterator<string> {
    return this.map.keys()
  }
}

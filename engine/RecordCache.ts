/**
 * Recently read records, kept in memory so that a hot key's GET skips its positional read
 * (a syscall: ~8 us inside this VM, about a tenth of a single node's CPU per GET).
 *
 * It needs no invalidation: an entry is keyed by the key and stamped with its record's LSN,
 * and a read uses it only when the index still names that LSN. A write, a delete, a reap, a
 * dropped partition or a compaction that changes what the index names makes the entry stale
 * by construction; a compaction that only moves the record keeps its LSN, and the bytes are
 * the same. Bounded by bytes (least recently used first out); records bigger than an eighth
 * of the bound are not kept. A record is kept the second time it is read, not the first
 * (`admits`: a doorkeeper, as TinyLFU has): under reads spread over more keys than fit,
 * nearly every read would otherwise insert and evict, and a cache that churns costs more
 * than none (every kept record survives a scavenge and is promoted, then dies in the old
 * generation). Entries hold the bytes a read already checked; a bit flip on disk after that
 * is found by the next read that misses, by compaction and by scrubbing.
 */
import type { Entry } from "./Log.ts"

/** Bytes kept per entry beyond the record itself: the Map slot, the key, the node. */
const OVERHEAD_BYTES = 96

/** Slots of the doorkeeper: the LSNs offered once, by LSN modulo this (a collision forgets one). */
const DOOR_SLOTS = 1 << 16

/** One cached record, linked into the recency list (most recent at `head`). */
interface Node {
  readonly key: string
  readonly lsn: number
  readonly entry: Entry
  readonly bytes: number
  prev: Node | undefined
  next: Node | undefined
}

/*
 * Recency is an intrusive doubly-linked list, not the Map's insertion order: evicting the
 * oldest of a Map by `entries().next()` walks past every slot deleted since the table was
 * last rebuilt, and under uniformly random reads (every read a miss that evicts) that made a
 * read three times slower than no cache at all (bench:engine, 2M keys: 56k against 220k
 * reads/s). With the list, a hit is one Map lookup and two relinks, a miss that evicts one
 * set and one delete.
 */
export class RecordCache {
  private readonly entries = new Map<string, Node>()
  private head: Node | undefined
  private tail: Node | undefined
  private used = 0
  private door: Float64Array | undefined
  hits = 0
  misses = 0

  private readonly maxBytes: number

  constructor(maxBytes: number) {
    this.maxBytes = maxBytes
  }

  /** The cached record of `key` if it is the one with `lsn`, else undefined (a stale one is dropped). */
  get(key: string, lsn: number): Entry | undefined {
    if (this.maxBytes <= 0) return undefined
    const n = this.entries.get(key)
    if (n === undefined || n.lsn !== lsn) {
      if (n !== undefined) this.remove(n)
      this.misses++
      return undefined
    }
    if (n !== this.head) {
      this.unlink(n)
      this.pushFront(n)
    }
    this.hits++
    return n.entry
  }

  /**
   * Whether a record of `key` with `lsn` and `size` bytes, just read from disk, should be
   * kept: the second time the same record is offered (and not yet forgotten by the
   * doorkeeper), if it is within an eighth of the bound. The caller then `put`s it.
   */
  admits(key: string, lsn: number, size: number): boolean {
    if (this.maxBytes <= 0 || size + key.length * 2 + OVERHEAD_BYTES > this.maxBytes / 8) return false
    const door = (this.door ??= new Float64Array(DOOR_SLOTS).fill(-1))
    const slot = lsn % DOOR_SLOTS
    if (door[slot] === lsn) return true
    door[slot] = lsn
    return false
  }

  /** Keeps `entry` (record size `size` bytes) as the record of `key` with `lsn`. */
  put(key: string, lsn: number, entry: Entry, size: number): void {
    const bytes = size + key.length * 2 + OVERHEAD_BYTES
    if (this.maxBytes <= 0 || bytes > this.maxBytes / 8) return
    const old = this.entries.get(key)
    if (old !== undefined) this.remove(old)
    const n: Node = { key, lsn, entry, bytes, prev: undefined, next: undefined }
    this.entries.set(key, n)
    this.pushFront(n)
    this.used += bytes
    while (this.used > this.maxBytes && this.tail !== undefined) this.remove(this.tail)
  }

  /** Entries kept, and their bytes (for stats). */
  size(): { readonly entries: number; readonly bytes: number } {
    return { entries: this.entries.size, bytes: this.used }
  }

  /** Forgets everything (the log closed). */
  clear(): void {
    this.entries.clear()
    this.door = undefined
    this.head = undefined
    this.tail = undefined
    this.used = 0
  }

  private pushFront(n: Node): void {
    n.prev = undefined
    n.next = this.head
    if (this.head !== undefined) this.head.prev = n
    this.head = n
    if (this.tail === undefined) this.tail = n
  }

  private unlink(n: Node): void {
    if (n.prev !== undefined) n.prev.next = n.next
    else this.head = n.next
    if (n.next !== undefined) n.next.prev = n.prev
    else this.tail = n.prev
    n.prev = undefined
    n.next = undefined
  }

  private remove(n: Node): void {
    this.unlink(n)
    this.entries.delete(n.key)
    this.used -= n.bytes
  }
}

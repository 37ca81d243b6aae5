/**
 * Recently read records, kept in memory so that a hot key's GET skips its positional read
 * (a syscall: ~8 us inside this VM, about a tenth of a single node's CPU per GET).
 *
 * It needs no invalidation: an entry is keyed by the key and stamped with its record's LSN,
 * and a read uses it only when the index still names that LSN. A write, a delete, a reap, a
 * dropped partition or a compaction that changes what the index names makes the entry stale
 * by construction; a compaction that only moves the record keeps its LSN, and the bytes are
 * the same. Bounded by bytes (least recently used first out); records bigger than an eighth
 * of the bound are not kept. Entries hold the bytes a read already checked; a bit flip on
 * disk after that is found by the next read that misses, by compaction and by scrubbing.
 */
import type { Entry } from "./Log.ts"

/** Bytes kept per entry beyond the record itself: the Map slot, the key, the object. */
const OVERHEAD_BYTES = 96

export class RecordCache {
  private readonly entries = new Map<string, { readonly lsn: number; readonly entry: Entry; readonly bytes: number }>()
  private used = 0
  hits = 0
  misses = 0

  private readonly maxBytes: number

  constructor(maxBytes: number) {
    this.maxBytes = maxBytes
  }

  /** The cached record of `key` if it is the one with `lsn`, else undefined (a stale one is dropped). */
  get(key: string, lsn: number): Entry | undefined {
    if (this.maxBytes <= 0) return undefined
    const e = this.entries.get(key)
    if (e === undefined || e.lsn !== lsn) {
      if (e !== undefined) this.remove(key, e.bytes)
      this.misses++
      return undefined
    }
    // Most recently used goes to the back of the Map's order.
    this.entries.delete(key)
    this.entries.set(key, e)
    this.hits++
    return e.entry
  }

  /** Keeps `entry` (record size `size` bytes) as the record of `key` with `lsn`. */
  put(key: string, lsn: number, entry: Entry, size: number): void {
    const bytes = size + key.length * 2 + OVERHEAD_BYTES
    if (this.maxBytes <= 0 || bytes > this.maxBytes / 8) return
    const old = this.entries.get(key)
    if (old !== undefined) this.remove(key, old.bytes)
    this.entries.set(key, { lsn, entry, bytes })
    this.used += bytes
    while (this.used > this.maxBytes) {
      const [k, oldest] = this.entries.entries().next().value!
      this.remove(k, oldest.bytes)
    }
  }

  /** Entries kept, and their bytes (for stats). */
  size(): { readonly entries: number; readonly bytes: number } {
    return { entries: this.entries.size, bytes: this.used }
  }

  /** Forgets everything (the log closed). */
  clear(): void {
    this.entries.clear()
    this.used = 0
  }

  private remove(key: string, bytes: number): void {
    this.entries.delete(key)
    this.used -= bytes
  }
}

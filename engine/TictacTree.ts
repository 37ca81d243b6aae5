/**
 * Anti-entropy hash trees in the manner of Riak 3's Tictac AAE, one per partition, kept
 * current by the index as records land (KeyIndex calls `change` on every insert, replace
 * and delete). A key contributes its content hash (ContentHash.ts, which covers the key,
 * the stored object and whether it is a tombstone) to the tree position its key hash names;
 * a position's hash is the XOR of its keys' contributions, so a write XORs out the key's old
 * contribution and XORs in the new one: O(1), independent of order, with no dirty segments
 * and no periodic rebuild. Two replicas holding the same objects for a partition have equal
 * trees whatever order the writes came in.
 *
 * Shape. Positions are the top bits of a 32-bit key hash: the tree is 2^32 positions wide,
 * read at any depth. Riak sizes its trees 1024 x 1024 so that a partition of a million keys
 * has about one key per leaf and the key lists of differing leaves stay short. We keep the
 * same logical shape but store only its top level, 1024 branches of 4 bytes plus a key count
 * each (8 KiB per partition, against Riak's 4 MiB), because a node holds every partition of
 * a small ring (64 by default): a dense million-leaf tree each would cost 256 MiB where the
 * whole index of a million keys costs ~60 MiB. Below a branch, an exchange asks for
 * children at a width fitted to the branch's key count (about one key per child, up to 1024,
 * `childWidthBits`), and `children`/`keysUnder` compute them in one pass over the
 * partition's index entries: hashes only, never a value read. Nothing below the branches is
 * ever stale, because nothing below them is kept.
 */

/** Branches per tree (the stored level): the top 10 bits of the key hash. */
export const BRANCH_BITS = 10
export const BRANCHES = 1 << BRANCH_BITS

/**
 * The key's position: a 32-bit hash of its UTF-16 code units (FNV-1a, then murmur3's
 * finaliser so that the top bits, which pick the branch, mix every input bit). It must be
 * the same function on every node: changing it is a format change of the exchange.
 * Independent of the ring's partition hash (MD5), so a partition's keys spread over all
 * branches.
 */
export const keyHash = (key: string): number => seededKeyHash(key, 0)

/**
 * `keyHash` from FNV's basis xor `seed`: the index's table probes with it under a secret seed
 * (KeyIndex.ts), so that clients cannot choose keys that collide there.
 */
export const seededKeyHash = (key: string, seed: number): number => {
  let h = (0x811c9dc5 ^ seed) >>> 0
  for (let i = 0; i < key.length; i++) {
    h ^= key.charCodeAt(i)
    h = Math.imul(h, 0x01000193)
  }
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b)
  h ^= h >>> 13
  h = Math.imul(h, 0xc2b2ae35)
  h ^= h >>> 16
  return h >>> 0
}

/** What a record contributes to its position: 32 bits of its 64-bit content hash. */
export const contribution = (hashHi: number, hashLo: number): number => (hashHi ^ hashLo) >>> 0

/** The branch of a key hash. */
export const branchOf = (h: number): number => h >>> (32 - BRANCH_BITS)

/**
 * How many bits of children to ask for under a branch holding `keys` keys: about one key per
 * child, at least 1 child, at most 1024 (Riak's leaf width).
 */
export const childWidthBits = (keys: number): number => {
  let bits = 0
  while (bits < 10 && 1 << bits < keys) bits++
  return bits
}

/** One partition's tree: branch hashes and key counts. */
export interface PartitionTree {
  readonly hashes: Uint32Array
  readonly counts: Uint32Array
}

/** The trees of every partition an index holds (created on first key, kept when emptied). */
export class Trees {
  private readonly byPartition: Array<PartitionTree | undefined> = []

  private tree(partition: number): PartitionTree {
    let t = this.byPartition[partition]
    if (t === undefined) {
      t = { hashes: new Uint32Array(BRANCHES), counts: new Uint32Array(BRANCHES) }
      this.byPartition[partition] = t
    }
    return t
  }

  /** Adds (`delta` 1) or removes (`delta` -1) a key's contribution. */
  change(partition: number, h: number, contrib: number, delta: 1 | -1): void {
    const t = this.tree(partition)
    const b = h >>> (32 - BRANCH_BITS)
    t.hashes[b] = (t.hashes[b]! ^ contrib) >>> 0
    t.counts[b] = t.counts[b]! + delta
  }

  /** A copy of one partition's branches (all zero for a partition never held). */
  branches(partition: number): PartitionTree {
    const t = this.byPartition[partition]
    return t === undefined
      ? { hashes: new Uint32Array(BRANCHES), counts: new Uint32Array(BRANCHES) }
      : { hashes: t.hashes.slice(), counts: t.counts.slice() }
  }

  /** The root: the XOR of all branches (0 for an empty partition). */
  root(partition: number): number {
    const t = this.byPartition[partition]
    if (t === undefined) return 0
    let r = 0
    for (let i = 0; i < BRANCHES; i++) r ^= t.hashes[i]!
    return r >>> 0
  }
}

/** One key's entry as an exchange lists it. */
export interface KeyHash {
  readonly key: string
  readonly hash: number
  readonly tombstone: boolean
}

/** A node below a branch: `bits` extra bits of the key hash under `branch`. */
export interface Subtree {
  readonly branch: number
  readonly bits: number
}

/** The child index of key hash `h` under its branch at `bits` extra bits. */
export const childOf = (h: number, bits: number): number =>
  bits === 0 ? 0 : (h << BRANCH_BITS) >>> (32 - bits)

/**
 * Children hashes of some branches, from a pass over the partition's entries: for each
 * requested branch, 2^bits hashes (the XOR of its keys' contributions by child).
 */
export const children = (
  entries: Iterable<KeyHash & { readonly h: number }>,
  wanted: ReadonlyArray<Subtree>
): Map<number, Uint32Array> => {
  const out = new Map<number, Uint32Array>()
  const bitsOf = new Map<number, number>()
  for (const w of wanted) {
    out.set(w.branch, new Uint32Array(1 << w.bits))
    bitsOf.set(w.branch, w.bits)
  }
  for (const e of entries) {
    const b = branchOf(e.h)
    const arr = out.get(b)
    if (arr === undefined) continue
    const c = childOf(e.h, bitsOf.get(b)!)
    arr[c] = (arr[c]! ^ e.hash) >>> 0
  }
  return out
}

/**
 * Causal versions of one key: a dotted version vector set (Preguiça, Almeida et al.; Riak's dvvset).
 * Per node id the set keeps the highest counter it has seen and the live values that id wrote, each
 * tagged with its dot (id, counter). Invariants: entries sorted by id, versions newest first, every
 * dot at most its entry's counter, so equal sets are deeply equal. A dot is never reused: a writer
 * updates its own replica's set and counts from above `floor`, the highest counter pruning forgot.
 * Pruning forgets only ids with no live value: a later write may look concurrent, none is lost.
 */
import { Buffer } from "node:buffer"

/** What a replica or a client has seen: node id -> highest counter (an absent id counts as 0). */
export type VersionVector = ReadonlyMap<string, number>

/** The identity of one write: the node that coordinated it and that node's counter for the key. */
export interface Dot {
  readonly id: string
  readonly counter: number
}

/**
 * A client's causal context: a vector plus single dots beyond it. A read yields a bare vector;
 * a write yields its writer's context plus the new dot, which a vector alone cannot express
 * when other writes through the same node came in between.
 */
export interface Context {
  readonly vector: VersionVector
  readonly dots: ReadonlyArray<Dot>
}

/** A live value and the counter of its dot; the dot's id is that of its entry. */
export interface Version<V> {
  readonly counter: number
  readonly value: V
}

/** One node id in a set: highest counter seen, logical time of its last write here, live values newest first. */
export interface Entry<V> {
  readonly id: string
  readonly counter: number
  readonly time: number
  readonly versions: ReadonlyArray<Version<V>>
}

/** The versions of one key. `floor` is the highest counter of any entry pruning removed. */
export interface DvvSet<V> {
  readonly entries: ReadonlyArray<Entry<V>>
  readonly floor: number
}

/** Node ids, as the command line accepts them; never "." or "..", since ids name directories. */
export const NODE_ID = /^(?!\.\.?$)[A-Za-z0-9_.-]{1,64}$/
/**
 * Dot ids (actors): a node id and, after `@`, the epoch of the process that wrote (Riak's
 * kv679 lesson). A node draws a new epoch each time it starts, so a node that lost its disk,
 * was given an old copy of it, or reaped a key's history never mints a dot its peers have
 * already seen. Plain node ids (data written before epochs) still decode.
 */
export const ACTOR_ID = /^[A-Za-z0-9_.-]{1,64}(@[0-9a-z]{1,12})?$/
/** Longest actor id in bytes. */
export const MAX_ID_BYTES = 77

/** The actor id of `nodeId` in `epoch`. */
export const actorOf = (nodeId: string, epoch: string): string => `${nodeId}@${epoch}`

/** The node of an actor id. */
export const nodeOfActor = (actor: string): string => {
  const at = actor.indexOf("@")
  return at < 0 ? actor : actor.slice(0, at)
}
/** Most vector entries plus dots a decoded context may carry. */
export const MAX_CONTEXT_ENTRIES = 1024
/**
 * Highest counter, time or floor a stored set may hold and a write may produce: far enough
 * below 2^53 that the arithmetic on it stays exact and encoding never meets an unsafe integer.
 * A peer's object beyond it does not decode (the message is refused); a write that would go
 * beyond it is refused with 400 (Replica.coordinate), so nothing a client or peer sends
 * makes encoding throw.
 */
export const MAX_COUNTER = 2 ** 52
/**
 * Highest counter a decoded context may carry: the same bound as a stored set's, so every
 * context a node hands out (a set's counters, or one past them, never past MAX_COUNTER)
 * decodes again. A lower bound here would wedge a key whose counters passed it.
 */
export const MAX_CONTEXT_COUNTER = MAX_COUNTER
/**
 * How far past a set's own counter for an id a write's context may raise it (`discard`). A
 * context may honestly be ahead of the coordinator's replica (it read others that saw more
 * writes), never by 2^32 writes of one key: a hostile context claiming more is clamped, so
 * reaching MAX_COUNTER would take a million deliberate writes to one key, not one.
 */
export const MAX_CONTEXT_LEAD = 2 ** 32
/** Default bound of `prune`. */
export const DEFAULT_MAX_ENTRIES = 32

const CONTEXT_FORMAT = 1
const SET_FORMAT = 1
const MAX_CONTEXT_CHARS = Math.ceil(((5 + MAX_CONTEXT_ENTRIES * (1 + MAX_ID_BYTES + 8)) * 4) / 3)
const BASE64URL = /^[A-Za-z0-9_-]+$/

const byId = (x: { readonly id: string }, y: { readonly id: string }): number =>
  x.id < y.id ? -1 : x.id > y.id ? 1 : 0
const byDot = (x: Dot, y: Dot): number => byId(x, y) || x.counter - y.counter
const asContext = (c: Context | VersionVector): Context => ("vector" in c ? c : { vector: c, dots: [] })

/**
 * Test-only switches that break the versions on purpose, so the simulator can show its checker
 * catches the breakage (sim/, test/sim). Never set outside tests.
 * `lastWriteWins`: a write replaces every sibling, seen or not, and a merge keeps only the
 * newest value (by logical time, then id): Riak's LWW, which loses concurrent writes.
 */
export const unsafeTesting = { lastWriteWins: false }

/** The set with no version. */
export const empty = <V>(): DvvSet<V> => ({ entries: [], floor: 0 })

/** The siblings: every live value, by node id then newest first. */
export const values = <V>(set: DvvSet<V>): V[] => set.entries.flatMap((e) => e.versions.map((v) => v.value))

/** The siblings with their dots. */
export const siblings = <V>(set: DvvSet<V>): Array<{ readonly dot: Dot; readonly value: V }> =>
  set.entries.flatMap((e) => e.versions.map((v) => ({ dot: { id: e.id, counter: v.counter }, value: v.value })))

/** The number of siblings. */
export const size = <V>(set: DvvSet<V>): number => set.entries.reduce((n, e) => n + e.versions.length, 0)

/** The set's causal history, the context a reader gets. */
export const join = <V>(set: DvvSet<V>): VersionVector => new Map(set.entries.map((e) => [e.id, e.counter]))

/** Whether `a` has seen everything `b` has. */
export const descends = (a: VersionVector, b: VersionVector): boolean => {
  for (const [id, n] of b) if ((a.get(id) ?? 0) < n) return false
  return true
}

/** Whether `a` has seen everything `b` has, and more. */
export const dominates = (a: VersionVector, b: VersionVector): boolean => descends(a, b) && !descends(b, a)

/** Whether two vectors have seen the same writes. */
export const equal = (a: VersionVector, b: VersionVector): boolean => descends(a, b) && descends(b, a)

/** Whether a context has seen a write. */
export const covers = (context: Context | VersionVector, dot: Dot): boolean => {
  const c = asContext(context)
  return dot.counter <= (c.vector.get(dot.id) ?? 0) || c.dots.some((d) => d.id === dot.id && d.counter === dot.counter)
}

const normalize = (vector: VersionVector, dots: ReadonlyArray<Dot>): Context => {
  const v = new Map([...vector].filter(([, n]) => n > 0))
  const rest: Dot[] = []
  for (const d of [...dots].sort(byDot)) {
    const n = v.get(d.id) ?? 0
    const last = rest.at(-1)
    if (d.counter === n + 1) v.set(d.id, d.counter)
    else if (d.counter > n && (last === undefined || byDot(last, d) !== 0)) rest.push(d)
  }
  return { vector: new Map([...v].sort(([x], [y]) => (x < y ? -1 : 1))), dots: rest }
}

const mergeEntry = <V>(x: Entry<V>, y: Entry<V>): Entry<V> => {
  const has = (e: Entry<V>, counter: number) => e.versions.some((v) => v.counter === counter)
  const versions = [
    ...x.versions.filter((v) => v.counter > y.counter || has(y, v.counter)),
    ...y.versions.filter((v) => v.counter > x.counter)
  ].sort((p, q) => q.counter - p.counter)
  return { id: x.id, counter: Math.max(x.counter, y.counter), time: Math.max(x.time, y.time), versions }
}

/**
 * Merges two replicas' sets (read repair, handoff, anti-entropy). A value survives unless the
 * other side has seen its dot and no longer holds it. Commutative, associative, idempotent.
 */
export const sync = <V>(a: DvvSet<V>, b: DvvSet<V>): DvvSet<V> => {
  const theirs = new Map(b.entries.map((e) => [e.id, e]))
  const entries = a.entries.map((x) => {
    const y = theirs.get(x.id)
    return y === undefined ? x : mergeEntry(x, y)
  })
  const ours = new Set(a.entries.map((e) => e.id))
  for (const y of b.entries) if (!ours.has(y.id)) entries.push(y)
  const merged = { entries: entries.sort(byId), floor: Math.max(a.floor, b.floor) }
  return unsafeTesting.lastWriteWins ? newestOnly(merged) : merged
}

/** The set with only its newest value (the broken last-write-wins merge of `unsafeTesting`). */
const newestOnly = <V>(set: DvvSet<V>): DvvSet<V> => {
  const live = set.entries.filter((e) => e.versions.length > 0)
  const winner = live.reduce<Entry<V> | undefined>((w, e) => (w === undefined || e.time > w.time || (e.time === w.time && e.id > w.id) ? e : w), undefined)
  return { ...set, entries: set.entries.map((e) => ({ ...e, versions: e === winner ? e.versions.slice(0, 1) : [] })) }
}

/**
 * Drops the values a context covers and adds the context to the set's history. A context dot
 * more than one past the set's counter for its id is not recorded (that would claim the writes
 * in between): a copy of its value held elsewhere may come back as a sibling, never the reverse.
 */
export const discard = <V>(set: DvvSet<V>, context: Context | VersionVector): DvvSet<V> => {
  const c = asContext(context)
  const counters = new Map(set.entries.map((e) => [e.id, e.counter]))
  for (const [id, n] of c.vector) {
    const own = counters.get(id) ?? 0
    if (n > 0) counters.set(id, Math.max(own, Math.min(n, own + MAX_CONTEXT_LEAD)))
  }
  for (const d of [...c.dots].sort(byDot)) if (d.counter === (counters.get(d.id) ?? 0) + 1) counters.set(d.id, d.counter)
  const old = new Map(set.entries.map((e) => [e.id, e]))
  const entries = [...counters].map(([id, counter]): Entry<V> => {
    const e = old.get(id)
    const versions = (e?.versions ?? []).filter((v) => !covers(c, { id, counter: v.counter }))
    return { id, counter, time: e?.time ?? 0, versions }
  })
  return { entries: entries.sort(byId), floor: set.floor }
}

/**
 * The coordinator's write: `value` replaces every value `context` covers and is a sibling of the
 * rest (an empty context is concurrent with everything). Its dot is (writerId, max(counter of
 * writerId here, floor) + 1), unique only if `set` is writerId's own durable replica of the key,
 * which holds every earlier write writerId coordinated.
 */
export const update = <V>(set: DvvSet<V>, context: Context | VersionVector, writerId: string, value: V): DvvSet<V> => {
  const base = discard(set, unsafeTesting.lastWriteWins ? join(set) : context)
  const own = base.entries.find((e) => e.id === writerId)
  const counter = Math.max(own?.counter ?? 0, base.floor) + 1
  // Logical time only orders writes (prune's victims); it stops at MAX_COUNTER rather than fail.
  const time = Math.min(base.entries.reduce((t, e) => Math.max(t, e.time), 0) + 1, MAX_COUNTER)
  const entry: Entry<V> = { id: writerId, counter, time, versions: [{ counter, value }, ...(own?.versions ?? [])] }
  return { entries: [...base.entries.filter((e) => e.id !== writerId), entry].sort(byId), floor: base.floor }
}

/** Whether a counter or the floor of `set` is past MAX_COUNTER (a write that made it is refused). */
export const exhausted = <V>(set: DvvSet<V>): boolean =>
  set.floor > MAX_COUNTER || set.entries.some((e) => e.counter > MAX_COUNTER)

/**
 * The context of the value `update` just wrote, for its writer (a PUT's X-Context): the writer's
 * context plus the new dot. Unlike `join(updated)`, it covers no sibling the writer never saw.
 * Context dots the updated set has recorded are dropped, which keeps the context small.
 */
export const writeContext = <V>(updated: DvvSet<V>, context: Context | VersionVector, writerId: string): Context => {
  const c = asContext(context)
  const history = join(updated)
  const dots = c.dots.filter((d) => d.counter > (history.get(d.id) ?? 0))
  const own = updated.entries.find((e) => e.id === writerId)?.versions[0]
  return normalize(c.vector, own === undefined ? dots : [...dots, { id: writerId, counter: own.counter }])
}

/**
 * Bounds the history to `maxEntries` node ids by removing ids with no live value, least recently
 * written first (`time`: a logical clock, one past the set's highest at each update, max on sync).
 * Values are never removed, so ids with live values all stay and the bound is soft. Forgetting an
 * id forgets which of its writes this set has replaced: a replica still holding one brings it back
 * as a sibling on sync, and a context read here no longer replaces it. That false concurrency is
 * the whole cost; the forgotten counter raises `floor`, so the id's next write still gets a fresh
 * dot that no replica has already seen (otherwise that write would silently vanish on sync).
 */
export const prune = <V>(set: DvvSet<V>, maxEntries: number = DEFAULT_MAX_ENTRIES): DvvSet<V> => {
  const excess = set.entries.length - maxEntries
  if (excess <= 0) return set
  const victims = set.entries
    .filter((e) => e.versions.length === 0)
    .sort((x, y) => x.time - y.time || byId(x, y))
    .slice(0, excess)
  if (victims.length === 0) return set
  return {
    entries: set.entries.filter((e) => !victims.includes(e)),
    floor: victims.reduce((f, e) => Math.max(f, e.counter), set.floor)
  }
}

const MALFORMED = new Error("malformed")

class Writer {
  buf = new Uint8Array(256)
  pos = 0
  room(n: number): void {
    if (this.pos + n <= this.buf.length) return
    const next = new Uint8Array(Math.max(this.buf.length * 2, this.pos + n))
    next.set(this.buf.subarray(0, this.pos))
    this.buf = next
  }
  byte(b: number): void {
    this.room(1)
    this.buf[this.pos++] = b
  }
  varint(n: number): void {
    if (!Number.isSafeInteger(n) || n < 0) throw new Error(`Dvv: bad counter ${n}`)
    for (; n >= 0x80; n = Math.floor(n / 0x80)) this.byte((n % 0x80) | 0x80)
    this.byte(n)
  }
  bytes(b: Uint8Array): void {
    this.room(b.length)
    this.buf.set(b, this.pos)
    this.pos += b.length
  }
  id(id: string): void {
    if (!ACTOR_ID.test(id)) throw new Error(`Dvv: bad actor id ${JSON.stringify(id)}`)
    this.byte(id.length)
    for (let i = 0; i < id.length; i++) this.byte(id.charCodeAt(i))
  }
  done(): Uint8Array {
    return this.buf.slice(0, this.pos)
  }
}

class Reader {
  readonly buf: Uint8Array
  pos = 0
  constructor(buf: Uint8Array) {
    this.buf = buf
  }
  byte(): number {
    const b = this.buf[this.pos++]
    if (b === undefined) throw MALFORMED
    return b
  }
  /** Minimal LEB128 of a safe integer, at most 8 bytes. */
  varint(): number {
    let n = 0
    for (let scale = 1; ; scale *= 0x80) {
      const b = this.byte()
      n += (b & 0x7f) * scale
      if (b < 0x80) {
        if ((b === 0 && scale > 1) || n > Number.MAX_SAFE_INTEGER) throw MALFORMED
        return n
      }
      if (scale === 0x80 ** 7) throw MALFORMED
    }
  }
  take(n: number): Uint8Array {
    if (n > this.buf.length - this.pos) throw MALFORMED
    const out = this.buf.slice(this.pos, this.pos + n)
    this.pos += n
    return out
  }
  id(): string {
    const id = String.fromCharCode(...this.take(this.byte()))
    if (!ACTOR_ID.test(id)) throw MALFORMED
    return id
  }
  done(): boolean {
    return this.pos === this.buf.length
  }
}

/**
 * X-Context, base64url (no padding) of: format byte 1; varint n, then n vector entries (id,
 * varint counter) by id; varint m, then m dots (id, varint counter) by id and counter. An id is
 * a length byte and ASCII. Varints are minimal unsigned LEB128. A context is normalized first;
 * one beyond the decoding bounds (MAX_CONTEXT_ENTRIES, MAX_CONTEXT_COUNTER) encodes but won't decode.
 */
export const encodeContext = (context: Context | VersionVector): string => {
  const c = asContext(context)
  const { vector, dots } = normalize(c.vector, c.dots)
  const w = new Writer()
  w.byte(CONTEXT_FORMAT)
  w.varint(vector.size)
  for (const [id, counter] of vector) {
    w.id(id)
    w.varint(counter)
  }
  w.varint(dots.length)
  for (const d of dots) {
    w.id(d.id)
    w.varint(d.counter)
  }
  return Buffer.from(w.done()).toString("base64url")
}

/**
 * Parses a client's X-Context; undefined unless `s` is exactly what `encodeContext` writes, with
 * at most MAX_CONTEXT_ENTRIES entries and dots and counters up to MAX_CONTEXT_COUNTER. Never throws.
 */
export const decodeContext = (s: string): Context | undefined => {
  if (typeof s !== "string" || s.length > MAX_CONTEXT_CHARS || !BASE64URL.test(s)) return undefined
  const bytes = Buffer.from(s, "base64url")
  if (bytes.toString("base64url") !== s) return undefined
  try {
    const r = new Reader(bytes)
    if (r.byte() !== CONTEXT_FORMAT) return undefined
    const n = r.varint()
    if (n > MAX_CONTEXT_ENTRIES) return undefined
    const vector = new Map<string, number>()
    let last = ""
    for (let i = 0; i < n; i++) {
      const id = r.id()
      const counter = r.varint()
      if (id <= last || counter < 1 || counter > MAX_CONTEXT_COUNTER) return undefined
      vector.set(id, counter)
      last = id
    }
    const m = r.varint()
    if (n + m > MAX_CONTEXT_ENTRIES) return undefined
    const dots: Dot[] = []
    for (let i = 0; i < m; i++) {
      const d = { id: r.id(), counter: r.varint() }
      const prev = dots.at(-1)
      if (d.counter > MAX_CONTEXT_COUNTER || d.counter <= (vector.get(d.id) ?? 0) + 1) return undefined
      if (prev !== undefined && byDot(prev, d) >= 0) return undefined
      dots.push(d)
    }
    return r.done() ? { vector, dots } : undefined
  } catch {
    return undefined
  }
}

/**
 * A set as one stored record: format byte 1; varint floor; varint n, then n entries by id, each
 * id (length byte, ASCII), varint counter, varint time, varint k and k versions newest first,
 * each varint counter, varint length, value bytes. Varints are minimal unsigned LEB128.
 */
export const encodeSet = <V>(set: DvvSet<V>, encodeValue: (value: V) => Uint8Array): Uint8Array => {
  const w = new Writer()
  w.byte(SET_FORMAT)
  w.varint(set.floor)
  w.varint(set.entries.length)
  for (const e of set.entries) {
    w.id(e.id)
    w.varint(e.counter)
    w.varint(e.time)
    w.varint(e.versions.length)
    for (const v of e.versions) {
      const bytes = encodeValue(v.value)
      w.varint(v.counter)
      w.varint(bytes.length)
      w.bytes(bytes)
    }
  }
  return w.done()
}

/**
 * Reads a stored set; undefined if the bytes are not exactly what `encodeSet` writes for a set
 * that keeps the invariants, with no counter, time or floor past MAX_COUNTER, or if `decodeValue` throws. `decodeValue` gets a copy. Never throws.
 */
export const decodeSet = <V>(bytes: Uint8Array, decodeValue: (bytes: Uint8Array) => V): DvvSet<V> | undefined => {
  try {
    const r = new Reader(bytes)
    if (r.byte() !== SET_FORMAT) return undefined
    const floor = r.varint()
    if (floor > MAX_COUNTER) return undefined
    const entries: Entry<V>[] = []
    for (let i = 0, n = r.varint(); i < n; i++) {
      const id = r.id()
      const counter = r.varint()
      const time = r.varint()
      const prev = entries.at(-1)
      if (counter < 1 || counter > MAX_COUNTER || time > MAX_COUNTER || (prev !== undefined && prev.id >= id)) return undefined
      const versions: Version<V>[] = []
      for (let j = 0, k = r.varint(); j < k; j++) {
        const c = r.varint()
        if (c < 1 || c >= (versions.at(-1)?.counter ?? counter + 1)) return undefined
        versions.push({ counter: c, value: decodeValue(r.take(r.varint())) })
      }
      entries.push({ id, counter, time, versions })
    }
    return r.done() ? { entries, floor } : undefined
  } catch {
    return undefined
  }
}

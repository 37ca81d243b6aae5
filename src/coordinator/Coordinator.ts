/**
 * The request coordinator: any node turns a client's GET, PUT or DELETE into replica
 * operations on the key's preference list (Ring.ts) and answers once r or w replicas have.
 *
 * Writes are coordinated by a primary replica of the key (a node outside the list forwards
 * to one, with a request id so that a retry is not coordinated twice), which makes the new
 * version against its own copy, so its dot is unique. The encoded object then goes to the
 * other primaries; with sloppy quorum an unreachable primary's copy goes to the next healthy
 * node on the ring walk, parked for it (Handoff.ts). Reads ask every primary (or its
 * fallback), merge the first r answers, and repair stale replicas in the background once all
 * have answered. Strict mode (sloppy=false) counts only primaries. While the ring moves, the
 * primaries are those of the current and of the next ring, and r or w must be met in each
 * (ClusterState.quorumSets). A write that misses its quorum is not undone (as in Dynamo): it
 * may surface later.
 */
import { Context, Effect, Layer, Random } from "effect"
import { apiError, ApiError } from "../Errors.ts"
import { Handoff } from "../handoff/Handoff.ts"
import { Membership } from "../membership/Membership.ts"
import { Replica, siblingWarning, type Coordinated, type Encoded } from "../replica/Replica.ts"
import { quorumSets } from "../membership/ClusterState.ts"
import { partitionOf, ringWalk } from "../ring/Ring.ts"
import { Transport, TransportError } from "../transport/Transport.ts"
import * as Dvv from "../versions/Dvv.ts"
import { decodeObject, decodeSibling, encodeObject, encodeSibling, type Sibling, type StoredObject } from "../versions/Sibling.ts"
import type { DataMessage, DataReply } from "./Messages.ts"
import { awaitQuorum, groupsOf, hedged, type Quorate, type QuorumGroup, type Task } from "./Quorum.ts"

/** Per-request quorum settings, already validated against N. */
export interface Quorum {
  /** Replies required. */
  readonly count: number
  /** false: only the N primary replicas count (strict W+R>N mode). */
  readonly sloppy: boolean
  readonly timeoutMs: number
}

/** What a read found. */
export interface ReadResult {
  readonly object: StoredObject | undefined
  /** Replicas that answered before the read returned. */
  readonly replies: number
}

/** A member as /admin/cluster shows it. */
export interface MemberView {
  readonly id: string
  readonly address: string
  readonly status: "up" | "suspect" | "down" | "joining" | "leaving"
  readonly partitions: number
  /** Writes this node holds parked for that member. */
  readonly parked?: number
}

/** The cluster as this node sees it. */
export interface ClusterView {
  readonly nodes: ReadonlyArray<MemberView>
  readonly n: number
  readonly partitions: number
  /** Owner of each partition, by partition number. */
  readonly owners?: ReadonlyArray<string>
  /** Whether nothing is moving and no membership request is pending. */
  readonly settled: boolean
  /** The ring version this node has adopted (an addition to the contract's fields). */
  readonly ringVersion: number
}

/** What the coordinator counts (plain numbers: read at scrape time). */
export interface CoordinatorStats {
  /** Replica copies that went to a fallback (sloppy quorum) or were parked here. */
  fallbackWrites: number
  /** Replicas a read repaired. */
  readRepairs: number
  /** Read repairs not started because `maxReadRepairs` were running (anti-entropy repairs those keys later). */
  readRepairsDropped: number
  /** Client writes this node forwarded to a primary. */
  forwardedWrites: number
  /** Requests that missed their quorum (503 or 504), by operation. */
  quorumFailures: { get: number; put: number }
  /** Hinted copies refused because their owner is not a member of this node's ring (issue 11). */
  hintsRefused: number
}

/** Coordinates client requests and serves other coordinators' replica operations. */
export class Coordinator extends Context.Service<Coordinator, {
  readonly get: (key: string, q: Quorum) => Effect.Effect<ReadResult, ApiError>
  readonly put: (key: string, context: Dvv.Context, sibling: Sibling, q: Quorum) => Effect.Effect<Coordinated, ApiError>
  readonly cluster: Effect.Effect<ClusterView>
  /** Counters since start, for /metrics. */
  readonly stats: () => CoordinatorStats
  /**
   * Delivers parked writes meant for `owner`: to it while it still replicates the key, else
   * (it left, was removed, or the partition moved) to the key's current replicas.
   * Succeeds only once every record is where it belongs.
   */
  readonly deliver: (owner: string, records: ReadonlyArray<{ readonly key: string; readonly object: Uint8Array }>) => Effect.Effect<void, unknown>
  /** Answers a data message from another node. */
  readonly handle: (from: string, msg: DataMessage) => Effect.Effect<DataReply>
  /** `handle` as a plain Promise for a replica's read or copy of a write; undefined for other messages. */
  readonly handleNow: (from: string, msg: DataMessage) => Promise<DataReply> | undefined
  /**
   * The request path's plain lane: `get` and `put` with no fiber and no Effect runtime (the
   * Effect `get` and `put` above are built on them, so there is one implementation). `get`
   * answers at once (or throws an ApiError) for a key whose only replica is this node, else
   * resolves or rejects with one; `put` rejects with one. `warn` says the key has reached the
   * sibling warning, where this node made the version (a forwarded write's coordinator logs it).
   */
  readonly now: {
    readonly get: (key: string, q: Quorum) => ReadResult | Promise<ReadResult>
    readonly put: (key: string, context: Dvv.Context, sibling: Sibling, q: Quorum) => Promise<Coordinated & { readonly warn: boolean }>
  }
}>()("tally/coordinator/Coordinator") {
  static readonly layer = (config: CoordinatorConfig) => Layer.effect(Coordinator, make(config))
}

const mergeAll = (found: ReadonlyArray<Encoded | undefined>): StoredObject | undefined =>
  found.reduce<StoredObject | undefined>((acc, x) => (x === undefined ? acc : acc === undefined ? x.object : Dvv.sync(acc, x.object)), undefined)

/** Where a key lives: its replica sets (ClusterState.quorumSets) and where to fall back. */
interface Placement {
  /** The current preference list: who coordinates writes, and who holds the key once settled. */
  readonly prefs: ReadonlyArray<string>
  /** The sets a quorum must be met in: `prefs`, and while the key's list moves, the next one. */
  readonly sets: ReadonlyArray<ReadonlyArray<string>>
  /** Every node of `sets` once, `prefs` first: asked on every read, sent every write. */
  readonly replicas: ReadonlyArray<string>
  readonly walk: ReadonlyArray<string>
}

/** Recent forwarded writes by request id: the write context, once the write is durable here. */
interface RecentWrite {
  readonly key: string
  /** Resolves with the write's context once it is durable here, undefined if it failed. */
  readonly context: Promise<string | undefined>
  readonly settle: (context: string | undefined) => void
}

/** An ApiError as a data reply. */
const apiErrorReply = (e: ApiError): DataReply => ({ t: "apierr", code: e.code, message: e.message, ...(e.needed === undefined ? {} : { needed: e.needed, got: e.got }) }) as DataReply
/** What a plain call rejected with, as an ApiError (the replica's calls reject with one; anything else is the disk's). */
const asApiError = (e: unknown): ApiError => (e instanceof ApiError ? e : apiError("storage_error", `the local replica failed: ${String(e)}`))

/** A peer's transport answered that it serves no requests yet (Reply.ts): it is starting. */
const starting = (e: unknown) => e instanceof TransportError && e.reason === "remote" && e.remoteCode === "unavailable"
const STARTING_RETRY_MS = 50

/** How many forwarded writes' ids a node remembers (a retry follows within one request's timeout). */
const RECENT_WRITES = 4096

/** The coordinator's settings. */
export interface CoordinatorConfig {
  readonly n: number
  /**
   * Read repairs running at once, at most (default 256). Each waits for every replica of one
   * GET; past the bound a GET skips its repair (counted) rather than leave one more detached
   * fiber per request under a flood of reads of stale keys.
   */
  readonly maxReadRepairs?: number | undefined
}

/** Default of CoordinatorConfig.maxReadRepairs. */
export const DEFAULT_MAX_READ_REPAIRS = 256

/** Builds the coordinator over the local replica, the membership, the transport and handoff. */
export const make = Effect.fnUntraced(function*(config: CoordinatorConfig) {
  const replica = yield* Replica
  const membership = yield* Membership
  const transport = yield* Transport
  const handoff = yield* Handoff
  const self = membership.self.id
  const stats: CoordinatorStats = { fallbackWrites: 0, readRepairs: 0, readRepairsDropped: 0, forwardedWrites: 0, quorumFailures: { get: 0, put: 0 }, hintsRefused: 0 }
  const maxRepairs = config.maxReadRepairs ?? DEFAULT_MAX_READ_REPAIRS
  let repairing = 0
  const ridPrefix = `${self}:${(yield* Random.nextInt).toString(36)}`
  let ridCounter = 0
  const recent = new Map<string, RecentWrite>()

  // Effects the plain lane needs now and then (parking a hint, reading parked ones) run with
  // this node's services, its logger included; the request path itself runs none.
  const runEffect = Effect.runPromiseWith(yield* Effect.context<never>())

  const placement = (key: string): Placement => {
    const ring = membership.ring()
    const p = partitionOf(key, ring.partitions)
    const sets = quorumSets(ring, membership.nextRing(), p, config.n)
    const prefs = sets[0]!
    const replicas = sets.length === 1 ? prefs : [...prefs, ...sets[1]!.filter((x) => !prefs.includes(x))]
    return { prefs, sets, replicas, walk: ringWalk(ring, p) }
  }
  const usable = (id: string) => id === self || membership.status(id) !== "down"

  /**
   * Whether this node is the key's one replica, now and in the next ring: then a read or a
   * write needs no other node, whatever r or w (each set's quorum is min(count, 1)), no
   * fallback, hedge, timer or repair.
   */
  const alone = (place: Placement): boolean => place.sets.every((s) => s.length === 1 && s[0] === self)

  const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

  /**
   * One data message to `id`, answered within `timeoutMs`. A node that is a ring member but
   * still starting (it joined, and has not begun to serve) is asked again every 50 ms unless
   * `once`: during a move it may be a replica that a quorum of the next set needs. An `apierr`
   * answer rejects with that ApiError.
   */
  const call = async (id: string, msg: DataMessage, timeoutMs: number, once = false): Promise<DataReply> => {
    const peer = membership.peer(id)
    if (peer === undefined) throw new Error(`unknown node ${id}`)
    // Deadlines on the monotonic clock: a wall clock stepped back (NTP, the simulator's skew)
    // must not stretch a request's timeout, nor a step forward cut it.
    const deadline = performance.now() + timeoutMs
    for (;;) {
      let r: unknown
      try {
        r = await transport.requestNow(peer, msg, Math.max(1, deadline - performance.now()))
      } catch (e) {
        if (!once && starting(e) && deadline - performance.now() > STARTING_RETRY_MS) {
          await sleep(STARTING_RETRY_MS)
          continue
        }
        throw e
      }
      const reply = r as DataReply
      if (reply?.t === "apierr") throw apiError(reply.code, reply.message, { needed: reply.needed, got: reply.got })
      return reply
    }
  }

  /** Parks `object` here for `owner` (Handoff.park, an Effect with its own locks and files). */
  const parkNow = (owner: string, key: string, object: StoredObject) => runEffect(handoff.park(owner, key, object))

  /** Stores `object` on `id`; `forwarded` (a forwarded write's id and context) lets `id` recognise a retry of it. */
  const putTo = async (id: string, key: string, object: StoredObject, bytes: Uint8Array, timeoutMs: number, hint?: string, forwarded?: { readonly rid: string; readonly ctx: string }): Promise<void> => {
    if (id === self) {
      if (hint === undefined) await replica.now.merge(key, object)
      else await parkNow(hint, key, object)
      return
    }
    await call(id, { t: "put", key, object: bytes, ...(hint === undefined ? {} : { hint }), ...(hint === undefined && forwarded !== undefined ? forwarded : {}) }, timeoutMs)
  }

  const getFrom = async (id: string, key: string, timeoutMs: number, hint?: string): Promise<Encoded | undefined> => {
    if (id === self) {
      if (hint === undefined) return replica.now.readEncoded(key)
      const object = await runEffect(hint === "*" ? handoff.readAll(key) : handoff.read(hint, key))
      return object === undefined ? undefined : { object, bytes: encodeObject(object) }
    }
    const r = await call(id, { t: "get", key, ...(hint === undefined ? {} : { hint }) }, timeoutMs)
    if (r.t !== "obj") throw new Error(`unexpected reply ${r.t}`)
    if (r.object === null) return undefined
    const object = decodeObject(r.object)
    if (object === undefined) throw new Error(`${id} sent an unreadable object`)
    return { object, bytes: r.object }
  }

  /** The fallbacks of a key, in ring-walk order: healthy nodes outside its replica sets. */
  const fallbacksOf = (replicas: ReadonlyArray<string>, walk: ReadonlyArray<string>) => walk.filter((id) => !replicas.includes(id) && usable(id))

  const notMet = (needed: number, got: number, timedOut: boolean, timeoutMs: number, set?: "current" | "next") => {
    // While the ring moves, each replica set must have r or w of its own: say which one fell short.
    const of = set === undefined ? "" : ` in each of the current and the next replica sets (the ring is moving)`
    const had = set === undefined ? "" : ` of the ${set} set`
    return timedOut
      ? apiError("timeout", `${got} of ${needed} replicas${had} answered within ${timeoutMs} ms${of === "" ? "" : `; ${needed} are needed${of}`}`)
      : apiError("quorum_not_met", `${needed} replicas needed${of}, ${got}${had} answered; retry later, or lower r/w`, { needed, got })
  }

  /** The error for a quorum missed in some replica set: that set's count, and which set it was. */
  const missed = <A>(r: Quorate<A>, groups: ReadonlyArray<QuorumGroup>, timeoutMs: number) => {
    const i = Math.max(0, groups.findIndex((g, k) => r.counts[k]! < g.needed))
    return notMet(groups[i]!.needed, r.counts[i]!, r.timedOut, timeoutMs, groups.length === 1 ? undefined : i === 0 ? "current" : "next")
  }

  /**
   * Sends a version this node holds durably (`res`, just coordinated or already here) to the
   * key's other replicas and waits for w of each replica set. A replica being gained during a
   * move gets it like any other and counts toward the next set.
   */
  const replicate = async <R extends Coordinated>(key: string, res: R, q: Quorum, place: Placement, rid?: string): Promise<R> => {
    const { prefs, sets, replicas, walk } = place
    const bytes = encodeObject(res.object)
    const forwarded = rid === undefined ? undefined : { rid, ctx: Dvv.encodeContext(res.context) }
    const fallbacks = fallbacksOf(replicas, walk).filter((id) => id !== self)
    // A replica that cannot take its copy gets it later through handoff. A distinct healthy
    // fallback parks it and counts toward w (sloppy quorum); when there is none (a cluster of
    // N nodes or fewer), or in strict mode, this node parks it and it does not count: one
    // node holding two copies is one replica.
    const parkHere = async (owner: string): Promise<void> => {
      stats.fallbackWrites++
      await parkNow(owner, key, res.object).catch(() => {})
      throw new Error(`${owner} unreachable; parked here`)
    }
    const hinted = (owner: string): Promise<void> => {
      const f = q.sloppy ? fallbacks.shift() : undefined
      if (f === undefined) return parkHere(owner)
      stats.fallbackWrites++
      return putTo(f, key, res.object, bytes, q.timeoutMs, owner).catch(() => parkHere(owner))
    }
    // Each task is labelled with the replica it stands for; this node's own copy is durable.
    const labels: string[] = []
    const tasks: Array<Task<void>> = []
    if (replicas.includes(self)) {
      labels.push(self)
      tasks.push(() => Promise.resolve())
    }
    if (!prefs.includes(self)) {
      // Coordinating outside the list (every primary unreachable): park our copy for the first.
      labels.push(prefs[0]!)
      tasks.push(() => parkNow(prefs[0]!, key, res.object))
    }
    for (const p of replicas) {
      if (p === self) continue
      const direct: Task<void> = usable(p) ? () => putTo(p, key, res.object, bytes, q.timeoutMs, undefined, forwarded) : () => Promise.reject(new Error(`${p} is down`))
      labels.push(p)
      tasks.push(hedged(() => direct().catch(() => hinted(p)), q.sloppy && usable(p) ? () => hinted(p) : undefined, q.timeoutMs))
    }
    const groups = groupsOf(sets, labels, q.count)
    const r = await awaitQuorum(tasks, groups, q.timeoutMs)
    if (!r.ok) {
      stats.quorumFailures.put++
      throw missed(r, groups, q.timeoutMs)
    }
    return res
  }

  const coordinate = async (key: string, context: Dvv.Context, sibling: Sibling, q: Quorum, place: Placement) =>
    replicate(key, await replica.now.coordinate(key, context, sibling), q, place)

  /** Remembers a forwarded write's id, dropping the oldest beyond the bound. */
  const remember = (rid: string, key: string): RecentWrite => {
    let settle: (ctx: string | undefined) => void = () => {}
    const context = new Promise<string | undefined>((resolve) => (settle = resolve))
    const entry: RecentWrite = { key, context, settle }
    recent.delete(rid)
    recent.set(rid, entry)
    if (recent.size > RECENT_WRITES) recent.delete(recent.keys().next().value!)
    return entry
  }

  /** Waits for `p` at most `ms`: undefined when the time ran out first. */
  const within = <A>(p: Promise<A>, ms: number): Promise<{ readonly value: A } | undefined> =>
    new Promise((resolve) => {
      const timer = setTimeout(() => resolve(undefined), ms)
      p.then((value) => {
        clearTimeout(timer)
        resolve({ value })
      })
    })

  /**
   * A forwarded write, coordinated once per request id. A retry (the forwarder's first
   * coordinator failed or went silent after its write may have landed) finds the id here if
   * this node coordinated the write, or stored it as a replica of the first coordinator: it
   * then replicates the copy it holds again, under the retry's quorum, instead of making a
   * second version of the same write (a spurious sibling).
   */
  const coordinateOnce = async (key: string, context: Dvv.Context, sibling: Sibling, q: Quorum, place: Placement, rid: string | undefined): Promise<Coordinated & { readonly warn: boolean }> => {
    if (rid === undefined) return coordinate(key, context, sibling, q, place)
    const seen = recent.get(rid)
    if (seen !== undefined && seen.key === key) {
      const done = await within(seen.context, q.timeoutMs)
      if (done === undefined) throw notMet(Math.min(q.count, place.prefs.length), 0, true, q.timeoutMs)
      const ctx = done.value === undefined ? undefined : Dvv.decodeContext(done.value)
      const local = ctx === undefined ? undefined : replica.now.readEncoded(key)
      if (ctx !== undefined && local !== undefined) return replicate(key, { object: local.object, bytes: local.bytes.length, context: ctx, warn: false }, q, place, rid)
    }
    const entry = remember(rid, key)
    // Settled however it ends, so that a retry never waits in vain.
    let res: Coordinated & { readonly warn: boolean }
    try {
      res = await replica.now.coordinate(key, context, sibling)
    } catch (e) {
      entry.settle(undefined)
      throw e
    }
    entry.settle(Dvv.encodeContext(res.context))
    return replicate(key, res, q, place, rid)
  }

  /** A node outside the ring knows no owners: it must not answer for them, least of all acknowledge a write. */
  const notJoined = () => apiError("not_joined", `node ${self} is not yet a ring member: no seed has accepted it. Nothing was written; use another node, or wait until /health answers 200`)

  /** A coordinated write; rejects with an ApiError. `warn`: the key has reached the sibling warning (known where this node made the version). */
  const put = async (key: string, context: Dvv.Context, sibling: Sibling, q: Quorum): Promise<Coordinated & { readonly warn: boolean }> => {
    if (!membership.joined()) throw notJoined()
    const place = placement(key)
    // A cluster of one: the local write is the whole request.
    if (alone(place)) return replica.now.coordinate(key, context, sibling)
    const { prefs } = place
    if (prefs.includes(self)) return coordinate(key, context, sibling, q, place)
    // The request's timeout bounds all forwarding attempts together, not each one. Every
    // attempt carries the same request id, so a primary that has the write already does
    // not coordinate it again.
    const deadline = performance.now() + q.timeoutMs
    const rid = `${ridPrefix}:${(ridCounter++).toString(36)}`
    for (const p of prefs.filter(usable)) {
      const left = deadline - performance.now()
      if (left <= 0) throw notMet(Math.min(q.count, prefs.length), 0, true, q.timeoutMs)
      stats.forwardedWrites++
      // Whole milliseconds: the receiver's check (Messages.ts) takes an integer timeout, and the
      // monotonic clock's remainder is fractional; a fractional one was refused as hostile.
      const msg: DataMessage = { t: "coord", key, context: Dvv.encodeContext(context), sibling: encodeSibling(sibling), w: q.count, sloppy: q.sloppy, timeoutMs: Math.max(1, Math.floor(left)), rid }
      let r: DataReply
      try {
        // A primary still starting has not seen the message: the next one is tried at once.
        r = await call(p, msg, left, true)
      } catch (e) {
        if (e instanceof ApiError) throw e
        continue
      }
      const object = r.t === "coorded" ? decodeObject(r.object) : undefined
      const ctx = r.t === "coorded" ? Dvv.decodeContext(r.context) : undefined
      if (object === undefined || ctx === undefined) throw apiError("storage_error", `${p} answered a forwarded write with ${r.t}`)
      return { object, context: ctx, bytes: r.t === "coorded" ? r.object.length : 0, warn: false }
    }
    if (!q.sloppy) throw notMet(Math.min(q.count, prefs.length), 0, false, q.timeoutMs)
    const left = deadline - performance.now()
    if (left <= 0) throw notMet(Math.min(q.count, prefs.length), 0, true, q.timeoutMs)
    return coordinate(key, context, sibling, { ...q, timeoutMs: left }, place)
  }

  type Reply = { readonly from: string; readonly primary: boolean; readonly found: Encoded | undefined }

  /** A read; rejects with an ApiError. A cluster of one answers synchronously (or throws). */
  const get = (key: string, q: Quorum): ReadResult | Promise<ReadResult> => {
    if (!membership.joined()) return Promise.reject(notJoined())
    const place = placement(key)
    if (alone(place)) return { object: replica.now.readEncoded(key)?.object, replies: 1 }
    return getReplicated(key, q, place)
  }

  const getReplicated = async (key: string, q: Quorum, place: Placement): Promise<ReadResult> => {
    const { sets, replicas } = place
    const fallbacks = fallbacksOf(replicas, place.walk)
    const tasks = replicas.map((p): Task<Reply> => {
      const direct: Task<Reply> = usable(p) ? () => getFrom(p, key, q.timeoutMs).then((found) => ({ from: p, primary: true, found })) : () => Promise.reject(new Error(`${p} is down`))
      if (!q.sloppy) return direct
      // A fallback answers with everything it holds parked under the key, for any owner:
      // the write it is asked to stand in for may have been parked for another primary.
      const viaFallback = (): Promise<Reply> => {
        const f = fallbacks.shift()
        return f === undefined ? Promise.reject(new Error(`no fallback for ${p}`)) : getFrom(f, key, q.timeoutMs, "*").then((found): Reply => ({ from: f, primary: false, found }))
      }
      return hedged(() => direct().catch(viaFallback), usable(p) ? viaFallback : undefined, q.timeoutMs)
    })
    const groups = groupsOf(sets, replicas, q.count)
    const r = await awaitQuorum(tasks, groups, q.timeoutMs)
    if (!r.ok) {
      stats.quorumFailures.get++
      throw missed(r, groups, q.timeoutMs)
    }
    // Read repair, once every replica has answered: replicas holding less get the merge.
    if (repairing >= maxRepairs) stats.readRepairsDropped++
    else {
      repairing++
      void r.all.then((all) => repair(key, replicas, all, q.timeoutMs)).catch(() => {}).finally(() => void repairing--)
    }
    return { object: mergeAll(r.results.map((x) => x.found)), replies: r.results.length }
  }

  /** Sends the merge of `all` to the replicas whose copy differs from it (or who had none). */
  const repair = async (key: string, replicas: ReadonlyArray<string>, all: ReadonlyArray<Reply>, timeoutMs: number): Promise<void> => {
    const primaries = all.filter((x) => x.primary)
    const first = primaries[0]?.found
    // The common case: every replica answered with the same bytes. Nothing to merge or encode.
    if (primaries.length === replicas.length && first !== undefined && all.every((x) => x.found !== undefined && Buffer.compare(x.found.bytes, first.bytes) === 0)) return
    const full = mergeAll(all.map((x) => x.found))
    if (full === undefined) return
    const bytes = encodeObject(full)
    const stale = replicas.filter((p) => {
      const reply = primaries.find((x) => x.from === p)
      return reply === undefined || reply.found === undefined || Buffer.compare(reply.found.bytes, bytes) !== 0
    })
    stats.readRepairs += stale.filter(usable).length
    await Promise.all(stale.map((p) => (usable(p) ? putTo(p, key, full, bytes, timeoutMs).catch(() => {}) : undefined)))
  }

  /**
   * Whether this node parks a hinted copy for `owner` (issue 11): only for a member of its
   * current or next ring. Anything else (an invented id, a node that left or was removed)
   * would open a parked log under <data>/handoff/ that grows without bound and that no one
   * ever receives, so it is refused before Handoff.park creates a directory.
   *
   * A legitimate sender names an owner from its own placement (current and next ring), and
   * the rings it knows travel by gossip, so it can be ahead of this node: during a join the
   * claimant puts the new node in the next ring, the sender adopts that version, the new
   * node misses a write, and its hinted copy reaches this node before the version does. The
   * check still uses this node's own view, on purpose: accepting "newly known" ids would
   * need trusting the sender's word on membership, which is what a hostile peer abuses.
   * The race costs no write: the refusal is a plain `apierr` reply (not `hostile`, so the
   * connection and its other requests are untouched), the sender's putTo fails, and the
   * coordinator parks the copy itself (Coordinator.replicate, `hinted` → `parkHere`), where
   * it is delivered as any parked write is. Only that one copy does not count towards W, as
   * when the fallback is unreachable. A leaving node stays in the current ring until its
   * move is done, so its hints are accepted until then; once gone, Coordinator.deliver sends
   * what was parked for it to the keys' current replicas.
   */
  const hintOwner = (owner: string) => {
    const r = membership.state().ring
    return r.members.includes(owner) || r.nextMembers.includes(owner)
  }

  /** A plain call as an Effect failing with its ApiError (anything else it rejects with is the disk's). */
  const effect = <A>(f: () => A | Promise<A>): Effect.Effect<A, ApiError> => Effect.tryPromise({ try: async () => f(), catch: asApiError })

  const handle = (from: string, msg: DataMessage): Effect.Effect<DataReply> => {
    const reply: Effect.Effect<DataReply, ApiError> = Effect.gen(function*() {
      switch (msg.t) {
        case "put": {
          const o = decodeObject(msg.object)
          if (o === undefined) return yield* apiError("bad_request", `unreadable object for ${JSON.stringify(msg.key)} from ${from}`)
          if (msg.hint) {
            if (!hintOwner(msg.hint)) {
              stats.hintsRefused++
              // One line for the first and then per 1,000: a peer sending these must not flood the log.
              if (stats.hintsRefused === 1 || stats.hintsRefused % 1000 === 0) yield* Effect.logWarning(`refused ${stats.hintsRefused} hinted copies so far; this one, of ${JSON.stringify(msg.key.slice(0, 80))} from ${from} for ${msg.hint}: not a member of this node's ring (version ${membership.ring().version})`)
              return yield* apiError("bad_request", `cannot park a write for ${msg.hint}: it is not a member of ${self}'s ring (version ${membership.ring().version}); park it on the coordinator instead`)
            }
            yield* handoff.park(msg.hint, msg.key, o)
            return { t: "ok" } as const
          }
          return yield* effect(() => handleNow(from, msg)!)
        }
        case "get": {
          if (!msg.hint) return yield* effect(() => handleNow(from, msg)!)
          const o = msg.hint === "*" ? yield* handoff.readAll(msg.key) : yield* handoff.read(msg.hint, msg.key)
          return { t: "obj", object: o === undefined ? null : encodeObject(o) } as const
        }
        case "coord": {
          const context = Dvv.decodeContext(msg.context)
          let sibling: Sibling
          try {
            sibling = decodeSibling(msg.sibling)
          } catch {
            return yield* apiError("bad_request", "unreadable forwarded write")
          }
          if (context === undefined) return yield* apiError("bad_request", "unreadable forwarded context")
          const q = { count: msg.w, sloppy: msg.sloppy, timeoutMs: msg.timeoutMs }
          const res = yield* effect(() => coordinateOnce(msg.key, context, sibling, q, placement(msg.key), msg.rid ?? undefined))
          // The forwarder cannot tell: the coordinator, which made the version, logs the warning.
          if (res.warn) yield* Effect.logWarning(siblingWarning(msg.key, res.object))
          return { t: "coorded", context: Dvv.encodeContext(res.context), object: encodeObject(res.object) } as const
        }
        case "handoff": {
          for (const r of msg.records) {
            const o = decodeObject(r.object)
            if (o !== undefined) yield* replica.merge(r.key, o)
          }
          return { t: "ok" } as const
        }
      }
    })
    return reply.pipe(Effect.catch((e) => Effect.succeed(apiErrorReply(e))))
  }

  /**
   * The plain lane of `handle` (no fiber): a replica's read or its copy of a write, the two
   * messages every client request sends. Undefined for the others (hinted copies, forwarded
   * writes, handoff), which `handle` answers.
   */
  const handleNow = (_from: string, msg: DataMessage): Promise<DataReply> | undefined => {
    if (msg.t === "get" && !msg.hint) {
      try {
        const found = replica.now.readEncoded(msg.key)
        // The stored bytes as they are: the object is not decoded only to be encoded again.
        return Promise.resolve({ t: "obj", object: found === undefined ? null : found.bytes })
      } catch (e) {
        return Promise.resolve(apiErrorReply(asApiError(e)))
      }
    }
    if (msg.t === "put" && !msg.hint) {
      const o = decodeObject(msg.object)
      if (o === undefined) return undefined
      return replica.now.merge(msg.key, o).then(
        (): DataReply => {
          // A forwarded write's copy: a retry of that write sent here is not coordinated again.
          if (msg.rid && msg.ctx && !recent.has(msg.rid)) remember(msg.rid, msg.key).settle(msg.ctx)
          return { t: "ok" }
        },
        (e: unknown) => apiErrorReply(asApiError(e))
      )
    }
    return undefined
  }

  // Its failure is passed on as it is (a peer's TransportError, say), for the ship loop's log line.
  const deliver = (owner: string, records: ReadonlyArray<{ readonly key: string; readonly object: Uint8Array }>) =>
    Effect.tryPromise({ catch: (e) => e, try: async () => {
      const direct: Array<{ key: string; object: Uint8Array }> = []
      for (const r of records) {
        // An owner replicates the key while it is in one of its replica sets (a replica being
        // gained during a move included).
        const { replicas } = placement(r.key)
        if (replicas.includes(owner)) {
          direct.push(r)
          continue
        }
        const o = decodeObject(r.object)
        if (o === undefined) continue
        // The owner no longer replicates this key: its replicas get it instead.
        await Promise.all(replicas.map((p) => putTo(p, r.key, o, r.object, 10_000)))
      }
      if (direct.length === 0) return
      const reply = await call(owner, { t: "handoff", records: direct }, 30_000)
      if (reply.t !== "ok") throw new Error(`${owner} refused handoff: ${reply.t}`)
    } })

  return Coordinator.of({
    get: (key, q) => effect(() => get(key, q)),
    put: (key, context, sibling, q) => effect(() => put(key, context, sibling, q)).pipe(Effect.map(({ warn: _, ...res }) => res)),
    now: { get, put },
    handle,
    handleNow,
    deliver,
    stats: () => stats,
    cluster: Effect.sync(() => {
      const view = membership.view()
      const parked = handoff.pending()
      return { ...view, nodes: view.nodes.map((m) => ({ ...m, parked: parked.get(m.id) ?? 0 })), owners: [...membership.ring().owners] }
    })
  })
})

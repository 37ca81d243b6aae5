/**
 * The request coordinator: any node turns a client's GET, PUT or DELETE into replica
 * operations on the key's preference list (Ring.ts) and answers once r or w replicas have.
 *
 * Writes are coordinated by a primary replica of the key (a node outside the list forwards
 * to one), which makes the new version against its own copy, so its dot is unique. The
 * encoded object then goes to the other primaries; with sloppy quorum an unreachable
 * primary's copy goes to the next healthy node on the ring walk, parked for it (Handoff.ts).
 * Reads ask every primary (or its fallback), merge the first r answers, and repair stale
 * replicas in the background once all have answered. Strict mode (sloppy=false) counts only
 * primaries. A write that misses its quorum is not undone (as in Dynamo): it may surface later.
 */
import { Context, Deferred, Effect, Exit, Layer, Option } from "effect"
import { apiError, ApiError } from "../Errors.ts"
import { Handoff } from "../handoff/Handoff.ts"
import { Membership } from "../membership/Membership.ts"
import { Replica, type Coordinated, type Encoded } from "../replica/Replica.ts"
import { partitionOf, preferenceList, ringWalk } from "../ring/Ring.ts"
import { Transport } from "../transport/Transport.ts"
import * as Dvv from "../versions/Dvv.ts"
import { decodeObject, decodeSibling, encodeObject, encodeSibling, type Sibling, type StoredObject } from "../versions/Sibling.ts"
import type { DataMessage, DataReply } from "./Messages.ts"

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
  /** Client writes this node forwarded to a primary. */
  forwardedWrites: number
  /** Requests that missed their quorum (503 or 504), by operation. */
  quorumFailures: { get: number; put: number }
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
}>()("tally/coordinator/Coordinator") {
  static readonly layer = (config: { readonly n: number }) => Layer.effect(Coordinator, make(config))
}

interface Quorate<A> {
  /** Successes when the wait ended (at least `needed` if `ok`). */
  readonly results: ReadonlyArray<A>
  readonly ok: boolean
  readonly timedOut: boolean
  /** Every outcome, once every task has settled. */
  readonly all: Effect.Effect<ReadonlyArray<A>>
}

/**
 * Runs `tasks` concurrently and returns once `needed` succeeded, once that became impossible,
 * or after `timeoutMs`. The tasks left running go on in the background.
 */
const awaitQuorum = <A>(tasks: ReadonlyArray<Effect.Effect<A, unknown>>, needed: number, timeoutMs: number) =>
  Effect.gen(function*() {
    const results: A[] = []
    let failures = 0
    const decided = yield* Deferred.make<void>()
    const settled = yield* Deferred.make<ReadonlyArray<A>>()
    const check = () => {
      if (results.length >= needed || results.length + (tasks.length - results.length - failures) < needed) Deferred.doneUnsafe(decided, Exit.void)
      if (results.length + failures === tasks.length) Deferred.doneUnsafe(settled, Exit.succeed(results))
    }
    check()
    for (const task of tasks) {
      yield* task.pipe(
        Effect.exit,
        Effect.map((exit) => {
          if (Exit.isSuccess(exit)) results.push(exit.value)
          else failures++
          check()
        }),
        Effect.forkDetach
      )
    }
    const timedOut = Option.isNone(yield* Deferred.await(decided).pipe(Effect.timeoutOption(timeoutMs)))
    return { results: [...results], ok: results.length >= needed, timedOut, all: Deferred.await(settled) } satisfies Quorate<A>
  })

/**
 * A replica operation with a hedge: if it has not succeeded within a quarter of the timeout
 * (250 ms at most), `backup` (the fallback) runs too and the first success counts. A silent
 * primary, partitioned away before the failure detector says so, then costs a fraction of
 * the request's timeout instead of all of it.
 */
const hedged = <A>(task: Effect.Effect<A, unknown>, backup: (() => Effect.Effect<A, unknown>) | undefined, timeoutMs: number): Effect.Effect<A, unknown> =>
  backup === undefined ? task : Effect.race(task, Effect.sleep(Math.min(250, Math.floor(timeoutMs / 4))).pipe(Effect.andThen(Effect.suspend(backup))))

const mergeAll = (found: ReadonlyArray<Encoded | undefined>): StoredObject | undefined =>
  found.reduce<StoredObject | undefined>((acc, x) => (x === undefined ? acc : acc === undefined ? x.object : Dvv.sync(acc, x.object)), undefined)

/** Builds the coordinator over the local replica, the membership, the transport and handoff. */
export const make = Effect.fnUntraced(function*(config: { readonly n: number }) {
  const replica = yield* Replica
  const membership = yield* Membership
  const transport = yield* Transport
  const handoff = yield* Handoff
  const self = membership.self.id
  const stats: CoordinatorStats = { fallbackWrites: 0, readRepairs: 0, forwardedWrites: 0, quorumFailures: { get: 0, put: 0 } }

  /**
   * Where a key lives: the current preference list (reads and acknowledgements) and, while
   * the ring moves, the replicas it is gaining (`incoming`), which get every write too so that
   * they need not wait for their transfer to see it.
   */
  const placement = (key: string) => {
    const ring = membership.ring()
    const next = membership.nextRing()
    const p = partitionOf(key, ring.partitions)
    const prefs = preferenceList(ring, p, config.n)
    const incoming = membership.moving() ? preferenceList(next, p, config.n).filter((x) => !prefs.includes(x)) : []
    return { prefs, walk: ringWalk(ring, p), incoming }
  }
  const usable = (id: string) => id === self || membership.status(id) !== "down"

  const call = (id: string, msg: DataMessage, timeoutMs: number): Effect.Effect<DataReply, unknown> => {
    const peer = membership.peer(id)
    if (peer === undefined) return Effect.fail(new Error(`unknown node ${id}`))
    return transport.request(peer, msg, timeoutMs).pipe(
      Effect.flatMap((r) => {
        const reply = r as DataReply
        return reply?.t === "apierr" ? Effect.fail(apiError(reply.code, reply.message, { needed: reply.needed, got: reply.got })) : Effect.succeed(reply)
      })
    )
  }

  const putTo = (id: string, key: string, object: StoredObject, bytes: Uint8Array, timeoutMs: number, hint?: string): Effect.Effect<void, unknown> => {
    if (id === self) return hint === undefined ? Effect.asVoid(replica.merge(key, object)) : handoff.park(hint, key, object)
    return Effect.asVoid(call(id, { t: "put", key, object: bytes, ...(hint === undefined ? {} : { hint }) }, timeoutMs))
  }

  const getFrom = (id: string, key: string, timeoutMs: number, hint?: string): Effect.Effect<Encoded | undefined, unknown> => {
    if (id === self) {
      return hint === undefined
        ? replica.readEncoded(key)
        : (hint === "*" ? handoff.readAll(key) : handoff.read(hint, key)).pipe(Effect.map((object) => (object === undefined ? undefined : { object, bytes: encodeObject(object) })))
    }
    return call(id, { t: "get", key, ...(hint === undefined ? {} : { hint }) }, timeoutMs).pipe(
      Effect.flatMap((r) => {
        if (r.t !== "obj") return Effect.fail(new Error(`unexpected reply ${r.t}`))
        if (r.object === null) return Effect.succeed(undefined)
        const object = decodeObject(r.object)
        return object === undefined ? Effect.fail(new Error(`${id} sent an unreadable object`)) : Effect.succeed({ object, bytes: r.object })
      })
    )
  }

  /** The fallbacks of a key, in ring-walk order: healthy nodes outside the preference list. */
  const fallbacksOf = (prefs: ReadonlyArray<string>, walk: ReadonlyArray<string>) => walk.filter((id) => !prefs.includes(id) && usable(id))

  const notMet = (needed: number, got: number, timedOut: boolean, timeoutMs: number) =>
    timedOut
      ? apiError("timeout", `${got} of ${needed} replicas answered within ${timeoutMs} ms`)
      : apiError("quorum_not_met", `${needed} replicas needed, ${got} answered; retry later, or lower r/w`, { needed, got })

  const coordinate = (key: string, context: Dvv.Context, sibling: Sibling, q: Quorum, prefs: ReadonlyArray<string>, walk: ReadonlyArray<string>, incoming: ReadonlyArray<string> = []) =>
    Effect.gen(function*() {
      const res = yield* replica.coordinate(key, context, sibling)
      const bytes = encodeObject(res.object)
      // A replica being gained gets the write as well; it does not count toward w (its
      // transfer brings it whatever this misses).
      for (const id of incoming) if (id !== self && usable(id)) yield* Effect.forkDetach(Effect.ignore(putTo(id, key, res.object, bytes, q.timeoutMs)))
      const needed = Math.min(q.count, prefs.length)
      const fallbacks = fallbacksOf(prefs, walk).filter((id) => id !== self)
      const takeFallback = () => fallbacks.shift()
      // A primary that cannot take its copy gets it later through handoff. A distinct healthy
      // fallback parks it and counts toward w (sloppy quorum); when there is none (a cluster of
      // N nodes or fewer), or in strict mode, this node parks it and it does not count: one
      // node holding two copies is one replica.
      const parkHere = (owner: string) =>
        Effect.sync(() => stats.fallbackWrites++).pipe(Effect.andThen(handoff.park(owner, key, res.object))).pipe(Effect.ignore, Effect.andThen(Effect.fail(new Error(`${owner} unreachable; parked here`))))
      const hinted = (owner: string): Effect.Effect<void, unknown> => {
        const f = q.sloppy ? takeFallback() : undefined
        if (f === undefined) return parkHere(owner)
        stats.fallbackWrites++
        return putTo(f, key, res.object, bytes, q.timeoutMs, owner).pipe(Effect.catch(() => parkHere(owner)))
      }
      const tasks: Array<Effect.Effect<void, unknown>> = []
      let local = 1
      if (!prefs.includes(self)) {
        // Coordinating outside the list (every primary unreachable): park our copy for the first.
        local = 0
        tasks.push(handoff.park(prefs[0]!, key, res.object))
      }
      for (const p of prefs) {
        if (p === self) continue
        const direct = usable(p) ? putTo(p, key, res.object, bytes, q.timeoutMs) : Effect.fail(new Error(`${p} is down`))
        tasks.push(hedged(direct.pipe(Effect.catch(() => hinted(p))), q.sloppy && usable(p) ? () => hinted(p) : undefined, q.timeoutMs))
      }
      const r = yield* awaitQuorum(tasks, Math.max(0, needed - local), q.timeoutMs)
      if (!r.ok) {
        stats.quorumFailures.put++
        return yield* notMet(needed, local + r.results.length, r.timedOut, q.timeoutMs)
      }
      return res
    })

  /** A node outside the ring knows no owners: it must not answer for them, least of all acknowledge a write. */
  const notJoined = () => apiError("not_joined", `node ${self} is not yet a ring member: no seed has accepted it. Nothing was written; use another node, or wait until /health answers 200`)

  const put = (key: string, context: Dvv.Context, sibling: Sibling, q: Quorum): Effect.Effect<Coordinated, ApiError> =>
    Effect.gen(function*() {
      if (!membership.joined()) return yield* notJoined()
      const { prefs, walk, incoming } = placement(key)
      if (prefs.includes(self)) return yield* coordinate(key, context, sibling, q, prefs, walk, incoming)
      // The request's timeout bounds all forwarding attempts together, not each one.
      const deadline = Date.now() + q.timeoutMs
      for (const p of prefs.filter(usable)) {
        const left = deadline - Date.now()
        if (left <= 0) return yield* notMet(Math.min(q.count, prefs.length), 0, true, q.timeoutMs)
        stats.forwardedWrites++
        const msg: DataMessage = { t: "coord", key, context: Dvv.encodeContext(context), sibling: encodeSibling(sibling), w: q.count, sloppy: q.sloppy, timeoutMs: left }
        const reply = yield* call(p, msg, left).pipe(Effect.exit)
        if (Exit.isSuccess(reply)) {
          const r = reply.value
          const object = r.t === "coorded" ? decodeObject(r.object) : undefined
          const ctx = r.t === "coorded" ? Dvv.decodeContext(r.context) : undefined
          if (object === undefined || ctx === undefined) return yield* apiError("storage_error", `${p} answered a forwarded write with ${r.t}`)
          return { object, context: ctx, bytes: r.t === "coorded" ? r.object.length : 0 }
        }
        const err = reply.cause.reasons.find((x) => x._tag === "Fail")
        if (err !== undefined && err._tag === "Fail" && err.error instanceof ApiError) return yield* err.error
      }
      if (!q.sloppy) return yield* notMet(Math.min(q.count, prefs.length), 0, false, q.timeoutMs)
      const left = deadline - Date.now()
      if (left <= 0) return yield* notMet(Math.min(q.count, prefs.length), 0, true, q.timeoutMs)
      return yield* coordinate(key, context, sibling, { ...q, timeoutMs: left }, prefs, walk, incoming)
    })

  const get = (key: string, q: Quorum): Effect.Effect<ReadResult, ApiError> =>
    Effect.gen(function*() {
      if (!membership.joined()) return yield* notJoined()
      const { prefs, walk } = placement(key)
      const needed = Math.min(q.count, prefs.length)
      const fallbacks = fallbacksOf(prefs, walk)
      type Reply = { readonly from: string; readonly primary: boolean; readonly found: Encoded | undefined }
      const tasks = prefs.map((p): Effect.Effect<Reply, unknown> => {
        const direct = usable(p) ? getFrom(p, key, q.timeoutMs).pipe(Effect.map((found) => ({ from: p, primary: true, found }))) : Effect.fail(new Error(`${p} is down`))
        if (!q.sloppy) return direct
        // A fallback answers with everything it holds parked under the key, for any owner:
        // the write it is asked to stand in for may have been parked for another primary.
        const viaFallback = () => {
          const f = fallbacks.shift()
          return f === undefined ? Effect.fail(new Error(`no fallback for ${p}`)) : getFrom(f, key, q.timeoutMs, "*").pipe(Effect.map((found): Reply => ({ from: f, primary: false, found })))
        }
        return hedged(direct.pipe(Effect.catch(viaFallback)), usable(p) ? viaFallback : undefined, q.timeoutMs)
      })
      const r = yield* awaitQuorum(tasks, needed, q.timeoutMs)
      if (!r.ok) {
        stats.quorumFailures.get++
        return yield* notMet(needed, r.results.length, r.timedOut, q.timeoutMs)
      }
      // Read repair, once every replica has answered: primaries holding less get the merge.
      yield* r.all.pipe(Effect.flatMap((all) => repair(key, prefs, all, q.timeoutMs)), Effect.forkDetach)
      return { object: mergeAll(r.results.map((x) => x.found)), replies: r.results.length }
    })

  /** Sends the merge of `all` to the primaries whose copy differs from it (or who had none). */
  const repair = (key: string, prefs: ReadonlyArray<string>, all: ReadonlyArray<{ readonly from: string; readonly primary: boolean; readonly found: Encoded | undefined }>, timeoutMs: number) => {
    const primaries = all.filter((x) => x.primary)
    const first = primaries[0]?.found
    // The common case: every primary answered with the same bytes. Nothing to merge or encode.
    if (primaries.length === prefs.length && first !== undefined && all.every((x) => x.found !== undefined && Buffer.compare(x.found.bytes, first.bytes) === 0)) return Effect.void
    const full = mergeAll(all.map((x) => x.found))
    if (full === undefined) return Effect.void
    const bytes = encodeObject(full)
    const stale = prefs.filter((p) => {
      const reply = primaries.find((x) => x.from === p)
      return reply === undefined || reply.found === undefined || Buffer.compare(reply.found.bytes, bytes) !== 0
    })
    stats.readRepairs += stale.filter(usable).length
    return Effect.forEach(stale, (p) => (usable(p) ? putTo(p, key, full, bytes, timeoutMs).pipe(Effect.ignore) : Effect.void), { concurrency: "unbounded", discard: true })
  }

  const handle = (from: string, msg: DataMessage): Effect.Effect<DataReply> => {
    const reply: Effect.Effect<DataReply, ApiError> = Effect.gen(function*() {
      switch (msg.t) {
        case "put": {
          const o = decodeObject(msg.object)
          if (o === undefined) return yield* apiError("bad_request", `unreadable object for ${JSON.stringify(msg.key)} from ${from}`)
          if (msg.hint) yield* handoff.park(msg.hint, msg.key, o)
          else yield* replica.merge(msg.key, o)
          return { t: "ok" } as const
        }
        case "get": {
          const o = msg.hint === "*" ? yield* handoff.readAll(msg.key) : msg.hint ? yield* handoff.read(msg.hint, msg.key) : Option.getOrUndefined(yield* replica.read(msg.key))
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
          const { prefs, walk, incoming } = placement(msg.key)
          const res = yield* coordinate(msg.key, context, sibling, { count: msg.w, sloppy: msg.sloppy, timeoutMs: msg.timeoutMs }, prefs, walk, incoming)
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
    return reply.pipe(Effect.catch((e) => Effect.succeed({ t: "apierr", code: e.code, message: e.message, ...(e.needed === undefined ? {} : { needed: e.needed, got: e.got }) } as DataReply)))
  }

  const deliver = (owner: string, records: ReadonlyArray<{ readonly key: string; readonly object: Uint8Array }>) =>
    Effect.gen(function*() {
      const direct: Array<{ key: string; object: Uint8Array }> = []
      for (const r of records) {
        const { prefs } = placement(r.key)
        if (prefs.includes(owner)) {
          direct.push(r)
          continue
        }
        const o = decodeObject(r.object)
        if (o === undefined) continue
        // The owner no longer replicates this key: its current replicas get it instead.
        yield* Effect.forEach(prefs, (p) => putTo(p, r.key, o, r.object, 10_000), { concurrency: "unbounded", discard: true })
      }
      if (direct.length === 0) return
      const reply = yield* call(owner, { t: "handoff", records: direct }, 30_000)
      if (reply.t !== "ok") return yield* Effect.fail(new Error(`${owner} refused handoff: ${reply.t}`))
    })

  return Coordinator.of({
    get,
    put,
    handle,
    deliver,
    stats: () => stats,
    cluster: Effect.sync(() => {
      const view = membership.view()
      const parked = handoff.pending()
      return { ...view, nodes: view.nodes.map((m) => ({ ...m, parked: parked.get(m.id) ?? 0 })), owners: [...membership.ring().owners] }
    })
  })
})

/**
 * Partition transfer: while the ring moves (ClusterState.ts), every node that gains a
 * replica of a partition pulls that partition's records from the node it replaces (or, when
 * that node is gone, from every surviving replica) and merges them through the ordinary
 * replica merge, so what arrives is the same record, and siblings stay siblings.
 *
 * A pull is a snapshot, then the log: pages of the source's keys in key order (a key cursor,
 * so either side may crash and the pull resumes where its checkpoint says), then the source's
 * changes for the partition from the LSN the snapshot started at, until a page comes back
 * short. The last pass waits until every member has adopted this ring version, so writes
 * from coordinators that had not yet heard of the move reached the source before it; writes
 * coordinated later go to the new replica directly. Only then is the transfer marked done,
 * and only when every transfer of the move is done does the claimant switch ownership.
 * After a switch a node drops the partitions it no longer replicates.
 */
import * as path from "node:path"
import { Clock, Context, Effect, Fiber, Layer, Schedule, Stream } from "effect"
import { Engine } from "../../engine/Engine.ts"
import { makeDirDurable } from "../../engine/Log.ts"
import { writeFileDurableAsync, type FilesApi } from "../../engine/Files.ts"
import { Membership } from "../membership/Membership.ts"
import * as State from "../membership/ClusterState.ts"
import { Replica } from "../replica/Replica.ts"
import { preferenceList } from "../ring/Ring.ts"
import { Transport } from "../transport/Transport.ts"
import { decodeObject, objectBytes, type StoredObject } from "../versions/Sibling.ts"

/** Transfer settings (concurrency and rate are live). */
export interface TransferConfig {
  readonly dataDir: string
  readonly files: FilesApi
  /** Transfers this node receives at once. */
  concurrency: number
  /** Most bytes per second this node pulls, over all its transfers (0: no limit). */
  bytesPerSecond: number
  /** Records per page. */
  readonly pageSize?: number
  /** How often to look for work, ms. */
  readonly intervalMs?: number
  /** No progress for this long: reported as stalled, ms. */
  readonly stallMs?: number
}

/** Internode messages served by the source of a transfer. */
export type TransferMessage =
  | { readonly t: "xfer-keys"; readonly partition: number; readonly after: string | null; readonly limit: number }
  | { readonly t: "xfer-changes"; readonly partition: number; readonly from: number; readonly limit: number }
  | { readonly t: "xfer-status" }

/** A page of records. `lsn`: the snapshot's start (keys) or the next LSN to ask for (changes). */
export interface TransferPage {
  readonly t: "xfer-page"
  readonly records: ReadonlyArray<{ readonly key: string; readonly object: Uint8Array }>
  readonly lsn: number
  readonly more: boolean
}

/** One transfer as /admin/transfers shows it. */
export interface TransferView {
  readonly partition: number
  readonly from: string
  readonly to: string
  readonly state: "pending" | "running" | "stalled"
  readonly keysSent: number
  readonly keysTotal: number
}

/** Whether a message is for the transfer service. */
export const isTransferMessage = (m: unknown): m is TransferMessage => {
  const x = m as Record<string, unknown> | null
  if (typeof x !== "object" || x === null) return false
  switch (x.t) {
    case "xfer-keys":
      return Number.isInteger(x.partition) && (x.after === null || (typeof x.after === "string" && x.after.length <= 1024)) && Number.isInteger(x.limit) && (x.limit as number) > 0 && (x.limit as number) <= 10_000
    case "xfer-changes":
      return Number.isInteger(x.partition) && Number.isSafeInteger(x.from) && (x.from as number) >= 0 && Number.isInteger(x.limit) && (x.limit as number) > 0 && (x.limit as number) <= 10_000
    case "xfer-status":
      return true
    default:
      return false
  }
}

/** Records merged at once by `apply`: about one group commit's worth (the engine's maxBatchBytes is 4 MiB). */
const APPLY_GROUP = 512
const APPLY_GROUP_BYTES = 4 * 1024 * 1024
/** Merges `apply` starts per event-loop turn. */
const MERGES_PER_TURN = 64

/** Splits a page's records (as indices) into groups of at most APPLY_GROUP records or about APPLY_GROUP_BYTES. */
export const groups = (records: ReadonlyArray<{ readonly key: string; readonly object: Uint8Array }>): number[][] => {
  const out: number[][] = []
  let cur: number[] = []
  let bytes = 0
  records.forEach((r, i) => {
    const size = r.key.length + r.object.length
    if (cur.length > 0 && (cur.length >= APPLY_GROUP || bytes + size > APPLY_GROUP_BYTES)) {
      out.push(cur)
      cur = []
      bytes = 0
    }
    cur.push(i)
    bytes += size
  })
  if (cur.length > 0) out.push(cur)
  return out
}

interface Running {
  readonly task: State.TransferTask
  source: string
  keysSent: number
  keysTotal: number
  lastProgress: number
}

interface Checkpoint {
  readonly phase: "keys" | "changes"
  readonly after: string | null
  /** LSN the snapshot started at (keys), or the next LSN to ask for (changes). */
  readonly lsn: number
}

/** The transfer service: serves pulls, runs this node's pulls, drops what moved away. */
export class Transfer extends Context.Service<Transfer, {
  readonly handle: (from: string, msg: TransferMessage) => Effect.Effect<unknown>
  /** The whole cluster's pending and running transfers (asks the receivers). */
  readonly list: Effect.Effect<ReadonlyArray<TransferView>>
  /** Transfers running here. */
  readonly local: () => ReadonlyArray<TransferView>
  /** Live settings. */
  readonly reconfigure: (patch: { readonly concurrency?: number; readonly bytesPerSecond?: number }) => void
}>()("tally/transfer/Transfer") {
  static readonly layer = (config: TransferConfig) => Layer.effect(Transfer, make(config))
}

/** Builds the service and starts its loop in the layer's scope. */
export const make = Effect.fnUntraced(function*(config: TransferConfig) {
  const engine = yield* Engine
  const replica = yield* Replica
  const membership = yield* Membership
  const transport = yield* Transport
  const pageSize = config.pageSize ?? 500
  const dir = path.join(config.dataDir, "transfers")
  makeDirDurable(config.files, dir)
  const running = new Map<string, Running>()
  /** When a transfer that failed may be tried again. */
  const retryAt = new Map<string, number>()
  const stallMs = config.stallMs ?? 60_000
  const clock = yield* Clock.Clock
  const now = () => clock.currentTimeMillisUnsafe()
  let pulledBytes = 0
  let windowStart = now()

  // ---- the source side -----------------------------------------------------------------

  /**
   * Sorted key lists per partition, reused across the pages of a snapshot and by the next
   * snapshots for KEY_LIST_MS (listing walks the whole index in one go: 20-45 ms at 1M keys),
   * each with the highest LSN committed before it was made: a snapshot served from a list
   * answers that LSN, so the changes after it cover every key the list may miss.
   */
  const KEY_LIST_MS = 60_000
  const sortedKeys = new Map<number, { readonly at: number; readonly lsn: number; readonly keys: ReadonlyArray<string> }>()
  const keysOf = (partition: number) =>
    Effect.gen(function*() {
      const have = sortedKeys.get(partition)
      // Also listed anew once compaction passed its LSN: a snapshot from it could not be followed.
      if (have !== undefined && now() - have.at < KEY_LIST_MS && have.lsn + 1 >= (yield* engine.lowWatermark)) return have
      for (const [p, l] of sortedKeys) if (now() - l.at >= KEY_LIST_MS) sortedKeys.delete(p)
      const lsn = yield* committed
      const keys = [...(yield* engine.partitionKeys(partition))].sort()
      const listed = { at: now(), lsn, keys }
      sortedKeys.set(partition, listed)
      return listed
    })

  /**
   * The highest committed LSN. Not `nextLsn - 1`: LSNs are assigned before their batch
   * commits, so below nextLsn there may be records that are neither in the index (the
   * snapshot) nor yet readable as changes; a pull starting after them would skip them.
   */
  const committed = Effect.map(engine.stats, (s) => s.lastLsn)

  /** Keys read per event-loop turn while a page of a snapshot is gathered (a pread each). */
  const READS_PER_TURN = 64

  const keysPage = (partition: number, after: string | null, limit: number) =>
    Effect.gen(function*() {
      const { lsn, keys } = yield* keysOf(partition)
      // Binary search for the first key after the cursor.
      let lo = 0
      let hi = keys.length
      if (after !== null) {
        while (lo < hi) {
          const mid = (lo + hi) >> 1
          if (keys[mid]! <= after) lo = mid + 1
          else hi = mid
        }
      }
      const records: Array<{ key: string; object: Uint8Array }> = []
      let i = lo
      for (; i < keys.length && records.length < limit; i++) {
        if (i > lo && (i - lo) % READS_PER_TURN === 0) yield* Effect.yieldNow
        const found = yield* replica.readEncoded(keys[i]!)
        if (found !== undefined) records.push({ key: keys[i]!, object: found.bytes })
      }
      return { t: "xfer-page", records, lsn, more: i < keys.length, total: keys.length } as TransferPage & { total: number }
    })

  const changesPage = (partition: number, from: number, limit: number) =>
    Effect.gen(function*() {
      const end = yield* committed
      const got = yield* engine.changes(from, { follow: false }).pipe(
        Stream.filter((e) => e.partition === partition && e.lsn <= end),
        Stream.take(limit),
        Stream.runCollect
      )
      const entries = [...got]
      const full = entries.length >= limit
      const next = full ? entries[entries.length - 1]!.lsn + 1 : Math.max(from, end + 1)
      return { t: "xfer-page", records: entries.map((e) => ({ key: e.key, object: objectBytes(e) })), lsn: next, more: full } satisfies TransferPage
    })

  const handle = (from: string, msg: TransferMessage): Effect.Effect<unknown> => {
    void from
    const reply: Effect.Effect<unknown, unknown> = msg.t === "xfer-keys"
      ? keysPage(msg.partition, msg.after, msg.limit)
      : msg.t === "xfer-changes"
      ? changesPage(msg.partition, msg.from, msg.limit)
      : Effect.succeed({ t: "xfer-status", transfers: local() })
    return reply.pipe(Effect.catch((e: unknown) => {
      const tag = (e as { _tag?: string })?._tag
      const code = tag === "SnapshotRequired" ? "snapshot_required" : "storage_error"
      return Effect.succeed({ t: "xfer-err", code, message: String((e as Error)?.message ?? e) })
    }))
  }

  // ---- the receiving side --------------------------------------------------------------

  const checkpointFile = (taskId: string, source: string) => path.join(dir, `${taskId.replaceAll(":", "_")}_${source}.json`)
  const loadCheckpoint = (taskId: string, source: string): Checkpoint | undefined => {
    const f = checkpointFile(taskId, source)
    if (!config.files.exists(f)) return undefined
    try {
      const c = JSON.parse(config.files.readFile(f).toString("utf8")) as Checkpoint
      return (c.phase === "keys" || c.phase === "changes") && Number.isSafeInteger(c.lsn) ? c : undefined
    } catch {
      return undefined
    }
  }
  /** Off the event loop: a checkpoint per page would otherwise be a synchronous fsync each. */
  const saveCheckpoint = (taskId: string, source: string, c: Checkpoint) =>
    Effect.tryPromise({
      try: () => writeFileDurableAsync(config.files, checkpointFile(taskId, source), Buffer.from(JSON.stringify(c))),
      catch: (e) => new Error(`saving the checkpoint of transfer ${taskId}: ${(e as Error)?.message ?? String(e)}`)
    })
  const clearCheckpoints = (taskId: string) => {
    const prefix = `${taskId.replaceAll(":", "_")}_`
    for (const f of config.files.list(dir)) if (f.startsWith(prefix)) config.files.unlink(path.join(dir, f))
  }

  const ask = (source: string, msg: TransferMessage) =>
    Effect.gen(function*() {
      const peer = membership.peer(source)
      if (peer === undefined) return yield* Effect.fail(new Error(`unknown node ${source}`))
      const r = (yield* transport.request(peer, msg, 30_000)) as (TransferPage & { total?: number }) | { t: "xfer-err"; code: string; message: string }
      if (r?.t === "xfer-err") return yield* Effect.fail(r.code === "snapshot_required" ? ("snapshot_required" as const) : new Error(`${source}: ${r.message}`))
      if (r?.t !== "xfer-page" || !Array.isArray(r.records)) return yield* Effect.fail(new Error(`${source} answered a transfer with ${JSON.stringify(r)?.slice(0, 80)}`))
      return r
    })

  /**
   * Merges a page into the local replica, paced by the node's byte rate; succeeds once every
   * record of it is durable. The records are merged concurrently, in groups of at most
   * APPLY_GROUP records or APPLY_GROUP_BYTES, so that a group shares a group commit or two
   * (one after the other, a page of 500 cost 500 fdatasyncs). A key that occurs twice in a page
   * (a changes page) is safe: merge takes the key's lock, and merging is commutative.
   */
  const apply = (run: Running, page: TransferPage) =>
    Effect.gen(function*() {
      let bytes = 0
      const decoded: Array<{ readonly key: string; readonly object: StoredObject }> = []
      for (const r of page.records) {
        const o = decodeObject(r.object)
        if (o === undefined) return yield* Effect.fail(new Error(`unreadable object for ${JSON.stringify(r.key)}`))
        decoded.push({ key: r.key, object: o })
        bytes += r.object.length + r.key.length
      }
      for (const group of groups(page.records)) {
        // All of a group in flight at once, but started MERGES_PER_TURN an event-loop turn:
        // 512 merges in one go held this node's loop for 20-45 ms.
        const merging: Array<Fiber.Fiber<unknown, unknown>> = []
        for (let j = 0; j < group.length; j++) {
          if (j > 0 && j % MERGES_PER_TURN === 0) yield* Effect.yieldNow
          const r = decoded[group[j]!]!
          merging.push(yield* Effect.forkChild(replica.merge(r.key, r.object)))
        }
        yield* Fiber.joinAll(merging).pipe(Effect.onError(() => Fiber.interruptAll(merging)))
      }
      run.keysSent += page.records.length
      run.lastProgress = now()
      pulledBytes += bytes
      const rate = config.bytesPerSecond
      if (rate > 0) {
        const ahead = (pulledBytes / rate) * 1000 - (now() - windowStart)
        if (ahead > 1) yield* Effect.sleep(ahead)
        if (now() - windowStart > 10_000) {
          windowStart = now()
          pulledBytes = 0
        }
      }
    })

  /** Whether every member in the move has adopted its ring version. */
  const allSeen = (version: number) => {
    const s = membership.state()
    const ids = new Set([...s.ring.members, ...s.ring.nextMembers])
    return [...ids].every((id) => (s.seen[id] ?? 0) >= version || membership.status(id) === "down")
  }

  const pullFrom = (run: Running, source: string, version: number) =>
    Effect.gen(function*() {
      run.source = source
      const taskId = run.task.id
      let cp = loadCheckpoint(taskId, source) ?? { phase: "keys", after: null, lsn: -1 }
      for (;;) {
        if (cp.phase === "keys") {
          const page = yield* ask(source, { t: "xfer-keys", partition: run.task.partition, after: cp.after, limit: pageSize })
          yield* apply(run, page)
          run.keysTotal = Math.max(run.keysTotal, (page as { total?: number }).total ?? 0)
          const lsn = cp.lsn < 0 ? page.lsn : cp.lsn
          const last = page.records.at(-1)?.key ?? cp.after
          cp = page.more ? { phase: "keys", after: last, lsn } : { phase: "changes", after: null, lsn: lsn + 1 }
          yield* saveCheckpoint(taskId, source, cp)
          continue
        }
        const seenBefore = allSeen(version)
        const page = yield* ask(source, { t: "xfer-changes", partition: run.task.partition, from: cp.lsn, limit: pageSize }).pipe(
          Effect.catch((e) => (e === "snapshot_required" ? Effect.succeed(undefined) : Effect.fail(e)))
        )
        if (page === undefined) {
          // Compaction removed history the pull had not read: take the snapshot again.
          cp = { phase: "keys", after: null, lsn: -1 }
          yield* saveCheckpoint(taskId, source, cp)
          continue
        }
        yield* apply(run, page)
        cp = { phase: "changes", after: null, lsn: page.lsn }
        yield* saveCheckpoint(taskId, source, cp)
        if (page.more) continue
        // Caught up. Done only if every member had adopted the move before this pass began.
        if (seenBefore) return
        yield* Effect.sleep(500)
      }
    })

  const runTask = (task: State.TransferTask) =>
    Effect.gen(function*() {
      const version = membership.state().ring.version
      const run = running.get(task.id)!
      for (const source of task.from) {
        if (source === membership.self.id) continue
        if (membership.status(source) === "down") return yield* Effect.fail(new Error(`source ${source} is down`))
        yield* pullFrom(run, source, version)
      }
      if (membership.state().ring.version !== version) return
      membership.markDone(task.id)
      clearCheckpoints(task.id)
      // One line per transfer that moved something; empty partitions (a new cluster) are quiet.
      if (run.keysSent > 0) yield* Effect.logInfo(`transfer of partition ${task.partition} to this node done (${run.keysSent} records from ${task.from.join(",")})`)
    }).pipe(
      Effect.catch((e: unknown) => {
        // Not retried at once: a source that is down would make this a busy loop.
        retryAt.set(task.id, now() + 2_000)
        return Effect.logWarning(`transfer ${task.id} paused, retrying in 2 s: ${(e as Error)?.message ?? String(e)}`)
      }),
      Effect.ensuring(Effect.sync(() => running.delete(task.id))),
      // A finished transfer makes room: start the next one now, not at the next tick.
      Effect.andThen(Effect.suspend(() => startMore))
    )

  /** Starts this node's pending transfers, up to the concurrency limit. */
  const startMore: Effect.Effect<void> = Effect.suspend(() => {
    const s = membership.state()
    const self = membership.self.id
    const done = new Set(s.done)
    const mine = State.transferTasks(s).filter((t) => t.to === self && !done.has(t.id) && !running.has(t.id) && (retryAt.get(t.id) ?? 0) <= now())
    return Effect.forEach(mine.slice(0, Math.max(0, config.concurrency - running.size)), (task) => {
      running.set(task.id, { task, source: task.from[0] ?? "", keysSent: 0, keysTotal: 0, lastProgress: now() })
      return Effect.forkDetach(runTask(task))
    }, { discard: true })
  })

  /** Drops the partitions this node replicates in neither the current nor the next ring. */
  /**
   * Drops the partitions this node no longer replicates. Only in a settled ring with no
   * transfer running here, and the state is checked again right before each drop (the drop
   * takes what was written up to that moment): a move that starts meanwhile may be giving
   * the partition back to this node, and what its transfer or its writes bring must stay.
   * And only once every member has adopted the settled version, for 2 s: a node still on
   * the older one reads from the old replicas, which must still hold the data (found by the
   * concurrent-joins test: a joiner's strict read answered 404 after two old replicas dropped).
   */
  let adoptedSince: { version: number; at: number } | undefined
  const dropMoved = Effect.gen(function*() {
    const start = membership.state()
    const self = membership.self.id
    if (!State.settled(start) || running.size > 0) return
    if (!allSeen(start.ring.version)) {
      adoptedSince = undefined
      return
    }
    if (adoptedSince?.version !== start.ring.version) adoptedSince = { version: start.ring.version, at: now() }
    if (now() - adoptedSince.at < 2_000) return
    const cur = State.currentRing(start)
    if (!cur.members.includes(self)) return
    const gone: number[] = []
    for (let q = 0; q < start.partitions; q++) {
      if (preferenceList(cur, q, start.n).includes(self)) continue
      if ((yield* engine.countPartition(q)) > 0) gone.push(q)
    }
    if (gone.length === 0) return
    // All at once: one durable mark and one walk of the index, which yields as it goes.
    const n = yield* Effect.suspend(() => {
      const s = membership.state()
      if (s.ring.version !== start.ring.version || !State.settled(s) || running.size > 0 || !allSeen(s.ring.version)) return Effect.succeed(-1)
      return engine.dropPartitions(gone)
    })
    if (n >= 0) yield* Effect.logInfo(`partitions ${gone.join(", ")} moved away: ${n} keys dropped here`)
  }).pipe(Effect.catch((e: unknown) => Effect.logWarning(`dropping moved partitions: ${(e as Error)?.message ?? String(e)}`)))

  const tick = Effect.gen(function*() {
    yield* startMore
    for (const r of running.values()) {
      if (now() - r.lastProgress > stallMs) {
        yield* Effect.logWarning(`transfer of partition ${r.task.partition} from ${r.source} has made no progress for ${Math.round((now() - r.lastProgress) / 1000)} s`)
        r.lastProgress = now()
      }
    }
    yield* dropMoved
  })
  yield* tick.pipe(
    Effect.catchCause((cause) => Effect.logError(`transfer loop step failed: ${String(cause)}`)),
    Effect.repeat(Schedule.spaced(config.intervalMs ?? 500)),
    Effect.forkScoped
  )

  const local = (): TransferView[] =>
    [...running.values()].map((r) => ({
      partition: r.task.partition,
      from: r.source,
      to: r.task.to,
      state: now() - r.lastProgress > stallMs ? ("stalled" as const) : ("running" as const),
      keysSent: r.keysSent,
      keysTotal: Math.max(r.keysTotal, r.keysSent)
    }))

  const list = Effect.gen(function*() {
    const s = membership.state()
    const done = new Set(s.done)
    const tasks = State.transferTasks(s).filter((t) => !done.has(t.id))
    const receivers = [...new Set(tasks.map((t) => t.to))]
    const reports = new Map<string, ReadonlyArray<TransferView>>()
    yield* Effect.forEach(receivers, (id) => {
      if (id === membership.self.id) return Effect.sync(() => reports.set(id, local()))
      const peer = membership.peer(id)
      if (peer === undefined) return Effect.void
      return transport.request(peer, { t: "xfer-status" }, 2000).pipe(
        Effect.map((r) => {
          const t = (r as { transfers?: unknown })?.transfers
          if (Array.isArray(t)) reports.set(id, t as TransferView[])
        }),
        Effect.ignore
      )
    }, { concurrency: "unbounded", discard: true })
    const pendingView = (t: State.TransferTask): TransferView => {
      const r = reports.get(t.to)?.find((x) => x.partition === t.partition && x.to === t.to)
      return r ?? { partition: t.partition, from: t.from.join(","), to: t.to, state: "pending", keysSent: 0, keysTotal: 0 }
    }
    const views = tasks.map(pendingView)
    // A move with every transfer done but the switch not yet made still shows as one entry.
    if (views.length === 0 && !State.settled(s)) {
      const r = s.ring
      const p = r.owners.findIndex((o, i) => o !== r.next[i])
      if (p >= 0) views.push({ partition: p, from: r.owners[p]!, to: r.next[p]!, state: "pending", keysSent: 0, keysTotal: 0 })
    }
    return views
  })

  return Transfer.of({
    handle,
    list,
    local,
    reconfigure: (patch) => {
      if (patch.concurrency !== undefined) config.concurrency = patch.concurrency
      if (patch.bytesPerSecond !== undefined) config.bytesPerSecond = patch.bytesPerSecond
    }
  })
})

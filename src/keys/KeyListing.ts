/**
 * Listing keys by a coverage query, as Riak's coverage plans do: every partition is read from
 * one of its current primaries (this node when it is one, else the first up one of the
 * preference list), the nodes' pages are merged, and the first `limit` keys after the cursor
 * are the answer. A node that fails or answers something malformed has its partitions asked
 * of their next replica; a partition none of whose replicas answers fails the listing (no
 * silently partial answer). Tombstoned keys are left out.
 *
 * It is expensive: every page reads every partition's keys from the index of one replica of
 * each (no disk read, but one pass over the index per partition), so it is for operators and
 * batch jobs, not for a request path. Like any r=1 read, a replica that has not yet received a
 * write, or its delete, answers for its partition as it is.
 */
import { Clock, Context, Effect, Layer, Result } from "effect"
import { Engine } from "../../engine/Engine.ts"
import { apiError, type ApiError } from "../Errors.ts"
import { Membership } from "../membership/Membership.ts"
import { preferenceList } from "../ring/Ring.ts"
import { Transport } from "../transport/Transport.ts"
import { compareKeys, isKeyPageReply, type KeyPageError, type KeyPageReply, type KeyPageRequest } from "./KeyPage.ts"

export { compareKeys, isKeyPageRequest, MAX_PAGE_KEYS, type KeyPageRequest } from "./KeyPage.ts"

/** One page asked for by a client. */
export interface ListQuery {
  readonly prefix: string
  /** Exclusive: the last key of the previous page; undefined from the start. */
  readonly after: string | undefined
  readonly limit: number
  readonly timeoutMs: number
}

/** A page of keys, sorted; `more` when keys after the last one remain. */
export interface KeyPage {
  readonly keys: ReadonlyArray<string>
  readonly more: boolean
}

/** What a coverage query needs: the partitions, who may answer for each, and how to ask. */
export interface CoverageDeps {
  readonly partitions: number
  /** The replicas to ask for `partition`, in the order to try them (down ones left out). */
  readonly candidates: (partition: number) => ReadonlyArray<string>
  /** One page of `partitions` from `node`: its answer, unchecked, or a failure. */
  readonly ask: (node: string, request: KeyPageRequest, timeoutMs: number) => Effect.Effect<unknown, unknown>
}

const describe = (e: unknown): string => (e instanceof Error ? e.message : typeof e === "object" && e !== null && "message" in e ? String(e.message) : String(e))

/**
 * Runs one page of a coverage query: asks each chosen node for its partitions at once, and
 * asks again, of the next replica, for the partitions of every node that failed, until each
 * partition has one answer, a partition has no replica left (503 quorum_not_met), or the
 * time is up (504 timeout).
 */
export const cover = (deps: CoverageDeps, q: ListQuery): Effect.Effect<KeyPage, ApiError> =>
  Effect.gen(function*() {
    const clock = yield* Clock.Clock
    const deadline = clock.currentTimeMillisUnsafe() + q.timeoutMs
    const failed = new Map<string, string>()
    const pages: KeyPageReply[] = []
    let pending = Array.from({ length: deps.partitions }, (_, p) => p)
    while (pending.length > 0) {
      const plan = new Map<string, number[]>()
      for (const p of pending) {
        const node = deps.candidates(p).find((id) => !failed.has(id))
        if (node === undefined) {
          const why = [...failed].map(([id, e]) => `${id}: ${e}`).join("; ")
          return yield* apiError("quorum_not_met", `no replica of partition ${p} answered${why === "" ? " (all are down)" : ` (${why})`}; a listing needs one replica of every partition: retry later`, { needed: 1, got: 0 })
        }
        const ps = plan.get(node)
        if (ps === undefined) plan.set(node, [p])
        else ps.push(p)
      }
      const left = deadline - clock.currentTimeMillisUnsafe()
      if (left <= 0) return yield* apiError("timeout", `the replicas did not all answer within ${q.timeoutMs} ms (${[...failed.keys()].join(", ") || "none"} failed)`)
      const answers = yield* Effect.forEach([...plan], ([node, partitions]) => {
        const request: KeyPageRequest = { t: "keys-page", partitions, prefix: q.prefix, after: q.after ?? null, limit: q.limit }
        return deps.ask(node, request, left).pipe(
          Effect.flatMap((r): Effect.Effect<KeyPageReply, string> => {
            if (isKeyPageReply(r, request)) return Effect.succeed(r)
            const err = r as Partial<KeyPageError> | null
            return Effect.fail(err?.t === "keys-err" && typeof err.message === "string" ? err.message.slice(0, 500) : "answered with a malformed page")
          }),
          Effect.mapError(describe),
          Effect.result,
          Effect.map((result) => ({ node, partitions, result }))
        )
      }, { concurrency: "unbounded" })
      pending = []
      for (const a of answers) {
        if (Result.isSuccess(a.result)) pages.push(a.result.success)
        else {
          failed.set(a.node, a.result.failure)
          pending.push(...a.partitions)
        }
      }
    }
    const all = pages.flatMap((p) => p.keys).sort(compareKeys)
    return { keys: all.slice(0, q.limit), more: all.length > q.limit || pages.some((p) => p.more) }
  })

/** Key listing: answers other nodes' page requests and runs this node's coverage queries. */
export class KeyListing extends Context.Service<KeyListing, {
  /** One page of the cluster's live keys (ApiError: not_joined, quorum_not_met, timeout). */
  readonly list: (q: ListQuery) => Effect.Effect<KeyPage, ApiError>
  /** Answers a page request from another node. */
  readonly handle: (from: string, msg: KeyPageRequest) => Effect.Effect<KeyPageReply | KeyPageError>
}>()("tally/keys/KeyListing") {
  static readonly layer = (config: { readonly n: number }) => Layer.effect(KeyListing, make(config))
}

/** Builds the service over the engine, the membership and the transport. */
export const make = Effect.fnUntraced(function*(config: { readonly n: number }) {
  const engine = yield* Engine
  const membership = yield* Membership
  const transport = yield* Transport
  const self = membership.self.id

  /** This node's page of `partitions`, from the engine's index. */
  const localPage = (req: KeyPageRequest): Effect.Effect<KeyPageReply> =>
    Effect.gen(function*() {
      const found: string[] = []
      for (const p of req.partitions) {
        for (const e of yield* engine.partitionHashes(p)) {
          if (e.tombstone || !e.key.startsWith(req.prefix)) continue
          if (req.after !== null && compareKeys(e.key, req.after) <= 0) continue
          found.push(e.key)
        }
      }
      found.sort(compareKeys)
      return { t: "keys-page", keys: found.slice(0, req.limit), more: found.length > req.limit }
    })

  const handle = (_from: string, msg: KeyPageRequest): Effect.Effect<KeyPageReply | KeyPageError> => {
    // A node answers only for partitions it is a current primary of: one that is gaining a
    // partition, or whose view is stale, could otherwise answer for keys it does not hold.
    const ring = membership.ring()
    const foreign = msg.partitions.find((p) => p >= ring.partitions || !preferenceList(ring, p, config.n).includes(self))
    if (foreign !== undefined) return Effect.succeed({ t: "keys-err", message: `${self} is not a current replica of partition ${foreign} (ring version ${ring.version})` })
    return localPage(msg)
  }

  const usable = (id: string) => id === self || membership.status(id) !== "down"

  const list = (q: ListQuery): Effect.Effect<KeyPage, ApiError> =>
    Effect.suspend(() => {
      if (!membership.joined()) return Effect.fail(apiError("not_joined", `node ${self} is not yet a ring member: it cannot plan a listing; use another node, or wait until /health answers 200`))
      const ring = membership.ring()
      return cover({
        partitions: ring.partitions,
        candidates: (p) => {
          const prefs = preferenceList(ring, p, config.n).filter(usable)
          return prefs.includes(self) ? [self, ...prefs.filter((id) => id !== self)] : prefs
        },
        ask: (node, request, timeoutMs) => {
          if (node === self) return handle(self, request)
          const peer = membership.peer(node)
          return peer === undefined ? Effect.fail(new Error("unknown node")) : transport.request(peer, request, timeoutMs)
        }
      }, q)
    })

  return KeyListing.of({ list, handle })
})

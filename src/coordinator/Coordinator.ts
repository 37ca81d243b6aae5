/**
 * The request coordinator: turns a client's GET, PUT or DELETE into replica operations and
 * decides when enough replicas have answered (r, w), within the request's timeout. Any node
 * coordinates. This layer serves a cluster of one node: the preference list is this node,
 * so a quorum asks for min(r or w, 1) answers; the cluster layer replaces it with the ring.
 */
import { Context, Effect, Layer, Option } from "effect"
import { apiError, type ApiError } from "../Errors.ts"
import { Replica, type Coordinated } from "../replica/Replica.ts"
import type * as Dvv from "../versions/Dvv.ts"
import type { Sibling, StoredObject } from "../versions/Sibling.ts"

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
  /** Replicas that answered. */
  readonly replies: number
}

/** A member as /admin/cluster shows it. */
export interface MemberView {
  readonly id: string
  readonly address: string
  readonly status: "up" | "suspect" | "down" | "leaving"
  readonly partitions: number
}

/** The cluster as this node sees it. */
export interface ClusterView {
  readonly nodes: ReadonlyArray<MemberView>
  readonly n: number
  readonly partitions: number
}

/** Coordinates client requests. */
export class Coordinator extends Context.Service<Coordinator, {
  readonly get: (key: string, q: Quorum) => Effect.Effect<ReadResult, ApiError>
  readonly put: (key: string, context: Dvv.Context, sibling: Sibling, q: Quorum) => Effect.Effect<Coordinated, ApiError>
  readonly cluster: Effect.Effect<ClusterView>
}>()("tally/coordinator/Coordinator") {
  /** A one-node cluster over the local Replica. */
  static readonly layerSingle = (info: { readonly address: string; readonly n: number; readonly partitions: number }) =>
    Layer.effect(Coordinator, Effect.gen(function*() {
      const replica = yield* Replica
      const within = <A>(q: Quorum, effect: Effect.Effect<A, ApiError>) =>
        effect.pipe(
          Effect.timeoutOrElse({
            duration: q.timeoutMs,
            orElse: () => Effect.fail(apiError("timeout", `the replicas did not answer within ${q.timeoutMs} ms`))
          })
        )
      return Coordinator.of({
        get: (key, q) =>
          within(q, replica.read(key).pipe(Effect.map((o) => ({ object: Option.getOrUndefined(o), replies: 1 })))),
        put: (key, context, sibling, q) => within(q, replica.coordinate(key, context, sibling)),
        cluster: Effect.succeed({
          nodes: [{ id: replica.nodeId, address: info.address, status: "up", partitions: info.partitions }],
          n: info.n,
          partitions: info.partitions
        })
      })
    }))
}

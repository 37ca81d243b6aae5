/**
 * The operations routes that `tally admin` drives (CONTRACT.md, "Operations endpoints" and
 * "Changing membership"): the shapes of their answers as schemas, one effect per route. Each
 * answer keeps its raw text too, so `--json` prints what the node sent, fields added later
 * included.
 */
import * as Effect from "effect/Effect"
import * as Result from "effect/Result"
import * as Schema from "effect/Schema"
import { BadAnswer, type RequestFailed, type Unreachable } from "./Errors.ts"
import * as Http from "./Http.ts"

/** How long one admin request may take. */
const ADMIN_TIMEOUT_MS = 30_000

/** One member as `GET /admin/cluster` shows it; `status` is "up", "suspect", "down", "joining" or "leaving". */
export const Member = Schema.Struct({
  id: Schema.String,
  address: Schema.String,
  status: Schema.String,
  partitions: Schema.Number,
  parked: Schema.optionalKey(Schema.Number)
})
/** One member as `GET /admin/cluster` shows it. */
export type Member = typeof Member.Type

/** `GET /admin/cluster`: the members, N, the ring size, each partition's owner, and whether the ring is settled. */
export const ClusterView = Schema.Struct({
  nodes: Schema.Array(Member),
  n: Schema.Number,
  partitions: Schema.Number,
  owners: Schema.optionalKey(Schema.Array(Schema.String)),
  settled: Schema.optionalKey(Schema.Boolean)
})
/** `GET /admin/cluster`. */
export type ClusterView = typeof ClusterView.Type

/** One pending or running partition transfer. */
export const Transfer = Schema.Struct({
  partition: Schema.Number,
  from: Schema.String,
  to: Schema.String,
  state: Schema.String,
  keysSent: Schema.Number,
  keysTotal: Schema.Number
})
/** One pending or running partition transfer. */
export type Transfer = typeof Transfer.Type

/** `GET /admin/transfers`: every pending and running transfer in the cluster; empty once the ring is settled. */
export const Transfers = Schema.Struct({ transfers: Schema.Array(Transfer) })
/** `GET /admin/transfers`. */
export type Transfers = typeof Transfers.Type

/** The totals of a partition's exchanges, as `GET /admin/aae` shows them. */
const exchangeTotals = {
  /** ISO 8601, or null: no exchange yet. */
  lastExchange: Schema.NullOr(Schema.String),
  lastPeer: Schema.optionalKey(Schema.String),
  exchanges: Schema.Number,
  keysCompared: Schema.Number,
  keysRepaired: Schema.Number,
  bytes: Schema.Number
}

/** One partition as `GET /admin/aae` shows it: anti-entropy with its other primaries, and whether its tombstones may go. */
export const PartitionAae = Schema.Struct({
  partition: Schema.Number,
  root: Schema.optionalKey(Schema.Number),
  keys: Schema.Number,
  peers: Schema.Array(Schema.String),
  ...exchangeTotals,
  cleanSince: Schema.optionalKey(Schema.Record(Schema.String, Schema.String)),
  /** Tombstones written here at or before this time (ISO 8601) may be reaped; null: none may. */
  reapBefore: Schema.optionalKey(Schema.NullOr(Schema.String)),
  /** Why none may, or null. */
  reapBlocked: Schema.optionalKey(Schema.NullOr(Schema.String))
})
/** One partition as `GET /admin/aae` shows it. */
export type PartitionAae = typeof PartitionAae.Type

/** A partition whose writes a node parks for an absent owner, and its pushes to the primaries. */
export const FallbackAae = Schema.Struct({
  partition: Schema.Number,
  parked: Schema.Number,
  peers: Schema.Array(Schema.String),
  ...exchangeTotals
})
/** One fallback partition as `GET /admin/aae` shows it. */
export type FallbackAae = typeof FallbackAae.Type

/** `GET /admin/aae`: this node's partitions, and the tombstone grace. */
export const Aae = Schema.Struct({
  node: Schema.String,
  partitions: Schema.Array(PartitionAae),
  fallbacks: Schema.optionalKey(Schema.Array(FallbackAae)),
  reaping: Schema.optionalKey(Schema.Struct({ tombstoneGraceSeconds: Schema.Number }))
})
/** `GET /admin/aae`. */
export type Aae = typeof Aae.Type

/** The node a command talks to. */
export interface AdminNode {
  readonly url: string
  /** Sent as `Authorization: Bearer <token>` when the node wants one. */
  readonly token: string | undefined
}

/** A decoded answer with the text it came from. */
export interface Fetched<A> {
  readonly value: A
  readonly raw: string
}

/** One request; a non-2xx answer fails with the node's error. */
const call = (node: AdminNode, method: "GET" | "POST", path: string, body?: unknown): Effect.Effect<string, RequestFailed | Unreachable> =>
  Effect.gen(function*() {
    const headers: Record<string, string> = {}
    if (node.token !== undefined) headers.authorization = `Bearer ${node.token}`
    if (body !== undefined) headers["content-type"] = "application/json"
    const answer = yield* Http.send(method, node.url, Http.joinUrl(node.url, path), {
      headers,
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
      timeoutMs: ADMIN_TIMEOUT_MS
    })
    if (answer.response.status < 200 || answer.response.status > 299) return yield* Http.failure(answer.response, answer.body)
    return Buffer.from(answer.body).toString("utf8")
  })

const parseJson = (node: AdminNode, path: string, raw: string): Effect.Effect<unknown, BadAnswer> =>
  Effect.try({
    try: () => JSON.parse(raw) as unknown,
    catch: () => new BadAnswer({ url: node.url, message: `${path} did not answer with JSON: ${raw.trim().slice(0, 200) || "(empty body)"}` })
  })

const decoded = <S extends Schema.Decoder<unknown>>(schema: S, node: AdminNode, path: string) => (raw: string) =>
  Effect.flatMap(parseJson(node, path, raw), (json) => {
    const result = Schema.decodeUnknownResult(schema)(json)
    return Result.isSuccess(result)
      ? Effect.succeed<Fetched<S["Type"]>>({ value: result.success, raw })
      : Effect.fail(new BadAnswer({ url: node.url, message: `${path} answered with an unexpected shape: ${result.failure.message}` }))
  })

/** `GET /admin/cluster`. */
export const cluster = (node: AdminNode) => Effect.flatMap(call(node, "GET", "/admin/cluster"), decoded(ClusterView, node, "/admin/cluster"))

/** `GET /admin/transfers`. */
export const transfers = (node: AdminNode) => Effect.flatMap(call(node, "GET", "/admin/transfers"), decoded(Transfers, node, "/admin/transfers"))

/** `GET /admin/aae`. */
export const aae = (node: AdminNode) => Effect.flatMap(call(node, "GET", "/admin/aae"), decoded(Aae, node, "/admin/aae"))

/** Any JSON answer; an empty body counts as `{}`. */
const anyJson = (node: AdminNode, path: string) => (raw: string): Effect.Effect<Fetched<unknown>, BadAnswer> =>
  raw.trim() === "" ? Effect.succeed({ value: {}, raw: "{}" }) : Effect.map(parseJson(node, path, raw), (value) => ({ value, raw }))

/** `POST /admin/leave`: the node hands off what it holds, leaves the ring and exits; answers 202 at once. */
export const leave = (node: AdminNode) => Effect.flatMap(call(node, "POST", "/admin/leave", {}), anyJson(node, "/admin/leave"))

/** `POST /admin/remove` with `{"node": id}`: forgets a member that is gone for good. */
export const remove = (node: AdminNode, id: string) => Effect.flatMap(call(node, "POST", "/admin/remove", { node: id }), anyJson(node, "/admin/remove"))

/** `POST /admin/compact`: the node starts a full compaction, reaping the tombstones that may go; answers 202 at once. */
export const compact = (node: AdminNode) => Effect.flatMap(call(node, "POST", "/admin/compact", {}), anyJson(node, "/admin/compact"))

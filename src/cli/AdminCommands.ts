/**
 * `tally admin status|ring|transfers|leave|remove|aae|compact`: the operator's view of the ring,
 * the membership changes (CONTRACT.md, "Changing membership"), anti-entropy and compaction
 * ("Anti-entropy and deletes"), through one node's /admin routes.
 * Tables and lines go to stdout; `--json` prints what the node answered instead, one JSON
 * document per line while `--watch` or `--wait` polls.
 */
import * as fs from "node:fs"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Predicate from "effect/Predicate"
import * as Dvv from "../versions/Dvv.ts"
import { Argument, Command, Flag } from "effect/cli"
import * as AdminApi from "./AdminApi.ts"
import { formatAae, formatRing, formatStatus, formatTransfers, NO_TRANSFERS } from "./AdminFormat.ts"
import { writeOut } from "./ClientCommands.ts"
import { BadAnswer, messageOf, UsageError } from "./Errors.ts"
import * as Http from "./Http.ts"
import * as TransferProgress from "./TransferProgress.ts"

/** Where `tally admin` sends its requests unless --url or TALLY_URL say otherwise: the first node of `tally cluster`. */
export const DEFAULT_ADMIN_URL = Http.DEFAULT_URL

/** How often `--watch` and `--wait` poll unless `--interval` says otherwise. */
const DEFAULT_INTERVAL_MS = 1_000

const NODE_ID = Dvv.NODE_ID

// ---- flags ------------------------------------------------------------------------------

const common = {
  url: Flag.String("url").pipe(
    Flag.withMetavar("URL"),
    Flag.withDescription(`address of a member, without a path (default $TALLY_URL, else ${DEFAULT_ADMIN_URL})`),
    Flag.optional
  ),
  json: Flag.Boolean("json").pipe(Flag.withDescription("print the node's JSON answer as is, for scripts (default off)"), Flag.withDefault(false)),
  tokenFile: Flag.String("admin-token-file").pipe(
    Flag.withMetavar("FILE"),
    Flag.withDescription("send the token in FILE as Authorization: Bearer (default none)"),
    Flag.optional
  )
}

const intervalFlag = Flag.Int("interval").pipe(
  Flag.withMetavar("MS"),
  Flag.withDescription(`how often to poll the transfers (default ${DEFAULT_INTERVAL_MS})`),
  Flag.withDefault(DEFAULT_INTERVAL_MS)
)

const waitFlag = (name: string, description: string) => Flag.Boolean(name).pipe(Flag.withDescription(`${description} (default off)`), Flag.withDefault(false))

const readToken = (file: string) =>
  Effect.try({
    try: () => fs.readFileSync(file, "utf8").trim(),
    catch: (e) => new UsageError({ message: `cannot read --admin-token-file ${file}: ${Predicate.hasProperty(e, "code") && e.code === "ENOENT" ? "no such file" : messageOf(e)}` })
  })

const adminNode = Effect.fnUntraced(function*(flag: Option.Option<string>, tokenFile: Option.Option<string>) {
  const { url, source } = Http.resolveUrl(flag)
  yield* Http.checkUrl(url, DEFAULT_ADMIN_URL, source)
  const token = Option.isSome(tokenFile) ? yield* readToken(tokenFile.value) : undefined
  return { url, token } satisfies AdminApi.AdminNode
})

const checkInterval = (ms: number) =>
  Number.isInteger(ms) && ms >= 1
    ? Effect.succeed(ms)
    : Effect.fail(new UsageError({ message: `--interval must be a positive number of milliseconds; got ${ms}` }))

/** The node's answer as one line of JSON. */
const jsonLine = (raw: string): string => {
  try {
    return `${JSON.stringify(JSON.parse(raw))}\n`
  } catch {
    return `${raw.trim()}\n`
  }
}

// ---- watching transfers -----------------------------------------------------------------

/**
 * Polls `GET /admin/transfers` every `intervalMs` until the list is empty. With `goneIsDone`
 * (the node is leaving) a node that stops answering, or answers 503 unavailable as it shuts
 * down, has finished too: it exits once it has handed everything off.
 */
const watchTransfers = (node: AdminApi.AdminNode, options: { readonly json: boolean; readonly intervalMs: number; readonly goneIsDone: boolean }) =>
  Effect.acquireUseRelease(
    Effect.sync(() => (options.json ? undefined : TransferProgress.forStream(process.stdout))),
    (progress) =>
      Effect.gen(function*() {
        while (true) {
          const polled = yield* AdminApi.transfers(node).pipe(
            Effect.catchIf((e) => options.goneIsDone && (e._tag === "Unreachable" || (e._tag === "RequestFailed" && e.code === "unavailable")), () => Effect.succeed(undefined))
          )
          if (polled === undefined) {
            progress?.update([])
            return "gone" as const
          }
          if (progress === undefined) yield* writeOut(jsonLine(polled.raw))
          else progress.update(polled.value.transfers)
          if (polled.value.transfers.length === 0) return "settled" as const
          yield* Effect.sleep(options.intervalMs)
        }
      }),
    (progress) => Effect.sync(() => progress?.end())
  ).pipe(
    // "gone": a leaving node stopped answering.
    Effect.flatMap((end) =>
      options.json
        ? Effect.void
        : writeOut(end === "settled" ? `${NO_TRANSFERS}\n` : `${node.url} stopped answering, as a leaving node does once it has handed off its partitions and exited\n`)
    )
  )

// ---- commands ---------------------------------------------------------------------------

/** `tally admin status`. */
export const statusCommand = Command.make(
  "status",
  { ...common },
  Effect.fnUntraced(function*({ url, json, tokenFile }) {
    const node = yield* adminNode(url, tokenFile)
    const { value, raw } = yield* AdminApi.cluster(node)
    yield* writeOut(json ? jsonLine(raw) : formatStatus(value))
  })
).pipe(Command.withDescription("Print the members (id, address, status, partitions, parked writes) and whether the ring is settled"))

/** `tally admin ring`. */
export const ringCommand = Command.make(
  "ring",
  { ...common },
  Effect.fnUntraced(function*({ url, json, tokenFile }) {
    const node = yield* adminNode(url, tokenFile)
    const { value, raw } = yield* AdminApi.cluster(node)
    if (json) return yield* writeOut(jsonLine(raw))
    if (value.owners === undefined) return yield* new BadAnswer({ url: node.url, message: "/admin/cluster does not list the partitions' owners" })
    yield* writeOut(formatRing(value, value.owners))
  })
).pipe(Command.withDescription("Print which member owns each partition, as ranges per owner, with each member's count"))

/** `tally admin transfers`. */
export const transfersCommand = Command.make(
  "transfers",
  { ...common, watch: waitFlag("watch", "poll until no transfer is left, with a progress bar per transfer"), interval: intervalFlag },
  Effect.fnUntraced(function*({ url, json, tokenFile, watch, interval }) {
    const node = yield* adminNode(url, tokenFile)
    const intervalMs = yield* checkInterval(interval)
    if (watch) return yield* watchTransfers(node, { json, intervalMs, goneIsDone: false })
    const { value, raw } = yield* AdminApi.transfers(node)
    yield* writeOut(json ? jsonLine(raw) : formatTransfers(value.transfers))
  })
).pipe(
  Command.withDescription("Print the cluster's pending and running partition transfers: partition P from->to state keysSent/keysTotal"),
  Command.withExamples([{ command: "tally admin transfers --watch", description: "follow them until the ring is settled" }])
)

const nodeOf = (answer: unknown): string | undefined => (Predicate.isObject(answer) && Predicate.isString(answer.node) ? answer.node : undefined)

/** `tally admin leave`. */
export const leaveCommand = Command.make(
  "leave",
  { ...common, wait: waitFlag("wait", "follow the handoff until no transfer is left or the node has exited"), interval: intervalFlag },
  Effect.fnUntraced(function*({ url, json, tokenFile, wait, interval }) {
    const node = yield* adminNode(url, tokenFile)
    const intervalMs = yield* checkInterval(interval)
    const { value, raw } = yield* AdminApi.leave(node)
    const who = nodeOf(value)
    yield* writeOut(json ? jsonLine(raw) : `${who === undefined ? node.url : `node ${who}`} is leaving: it hands its partitions to their new owners, then exits\n`)
    if (wait) yield* watchTransfers(node, { json, intervalMs, goneIsDone: true })
  })
).pipe(
  Command.withDescription("Make the node at --url leave the ring: it hands off every partition it holds, then exits"),
  Command.withExamples([{ command: "tally admin leave --url http://127.0.0.1:8083 --wait", description: "retire a node and follow its handoff" }])
)

/** `tally admin remove <node>`. */
export const removeCommand = Command.make(
  "remove",
  {
    node: Argument.String("node").pipe(Argument.withDescription("id of the member to remove, gone for good")),
    ...common,
    wait: waitFlag("wait", "follow the re-replication until no transfer is left"),
    interval: intervalFlag
  },
  Effect.fnUntraced(function*({ node: id, url, json, tokenFile, wait, interval }) {
    if (!NODE_ID.test(id)) return yield* new UsageError({ message: `a node id is 1 to 64 of A-Z a-z 0-9 _ . -; got ${JSON.stringify(id)}` })
    const node = yield* adminNode(url, tokenFile)
    const intervalMs = yield* checkInterval(interval)
    const { raw } = yield* AdminApi.remove(node, id)
    yield* writeOut(json ? jsonLine(raw) : `removed ${id}; its partitions are re-replicated from the surviving replicas${wait ? "" : " (tally admin transfers --watch follows it)"}\n`)
    if (wait) yield* watchTransfers(node, { json, intervalMs, goneIsDone: false })
  })
).pipe(Command.withDescription("Remove a member that is gone for good; its partitions are re-replicated from the surviving replicas"))

/** `tally admin aae`. */
export const aaeCommand = Command.make(
  "aae",
  { ...common },
  Effect.fnUntraced(function*({ url, json, tokenFile }) {
    const node = yield* adminNode(url, tokenFile)
    const { value, raw } = yield* AdminApi.aae(node)
    yield* writeOut(json ? jsonLine(raw) : formatAae(value, Date.now()))
  })
).pipe(
  Command.withDescription(
    "Print anti-entropy per partition of the node at --url: keys, peers, last exchange, exchanges, keys compared and repaired, bytes, and whether its tombstones may be reaped (and if not, why)"
  )
)

/** `tally admin compact`. */
export const compactCommand = Command.make(
  "compact",
  { ...common },
  Effect.fnUntraced(function*({ url, json, tokenFile }) {
    const node = yield* adminNode(url, tokenFile)
    const { value, raw } = yield* AdminApi.compact(node)
    const who = nodeOf(value)
    yield* writeOut(json ? jsonLine(raw) : `${who === undefined ? node.url : `node ${who}`} is compacting: it reaps the tombstones that may be reaped (tally admin aae says which may)\n`)
  })
).pipe(Command.withDescription("Start a full compaction on the node at --url now; it reaps the tombstones every replica holds"))

/** `tally admin`. */
export const adminCommand = Command.make("admin").pipe(
  Command.withShortDescription("Inspect the ring, anti-entropy and compaction; change membership"),
  Command.withDescription("Inspect the ring and anti-entropy, change membership and start compactions through a member's /admin routes"),
  Command.withSubcommands([statusCommand, ringCommand, transfersCommand, leaveCommand, removeCommand, aaeCommand, compactCommand])
)

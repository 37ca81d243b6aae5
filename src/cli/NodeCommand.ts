/**
 * `tally node`: resolves the settings, starts one storage node, prints the `ready` line
 * scripts wait for, follows the `--config` file, and on SIGTERM or SIGINT closes the node
 * (stop accepting, finish in-flight requests, flush) before exiting 0. A second signal exits
 * at once. Everything it says while it runs is a JSON line of the node's logger on stderr
 * (src/node/Log.ts), so stdout holds only the ready line.
 */
import * as net from "node:net"
import { pathToFileURL } from "node:url"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Result from "effect/Result"
import { Command, Flag } from "effect/cli"
import { watchConfig, type WatchLogLevel } from "../config/ConfigWatcher.ts"
import { loadSettings, NODE_FLAGS, type EnvValues, type FlagKey, type FlagValues, type NodeSettings } from "../config/Settings.ts"
import type { NodeLogger } from "../node/Log.ts"
import type { RunningNode } from "../node/Node.ts"
import { InvalidSettings, messageOf, NodeFailed } from "./Errors.ts"

/** The node's entry point, `startNode` of src/node/Node.ts, as this command calls it: with the command's logger. */
export type StartNode = (settings: NodeSettings, options?: { readonly logger?: NodeLogger }) => Promise<RunningNode>

/**
 * Loads `startNode`. `TALLY_TEST_NODE_MODULE` names another module exporting it, so tests
 * can run this command's life cycle around a stand-in node.
 */
export const loadStartNode: Effect.Effect<StartNode, NodeFailed> = Effect.tryPromise({
  try: async () => {
    const override = process.env.TALLY_TEST_NODE_MODULE
    if (override === undefined || override === "") {
      const { startNode } = await import("../node/Node.ts")
      return (settings: NodeSettings, options?: { readonly logger?: NodeLogger }) => startNode(settings, options)
    }
    const mod = (await import(/^[a-z]+:/.test(override) ? override : pathToFileURL(override).href)) as { readonly startNode?: unknown }
    if (typeof mod.startNode !== "function") throw new Error(`${override} does not export startNode`)
    return mod.startNode as StartNode
  },
  catch: (e) => new NodeFailed({ message: `cannot load the node: ${messageOf(e)}` })
})

const SIGNAL_NUMBERS: Readonly<Record<string, number>> = { SIGINT: 2, SIGTERM: 15 }

/**
 * Until the scope closes, the first SIGINT or SIGTERM resolves the returned promise and a
 * second one calls `onSecond`, says so with `report`, then exits the process at once with
 * 128 + its number.
 */
export const stopSignal = (
  onSecond: (signal: NodeJS.Signals) => void = () => {},
  report: (message: string) => void = (message) => process.stderr.write(`${message}\n`)
) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      let received: NodeJS.Signals | undefined
      let resolve: (s: NodeJS.Signals) => void = () => {}
      const first = new Promise<NodeJS.Signals>((r) => (resolve = r))
      const handler = (signal: NodeJS.Signals) => {
        if (received === undefined) {
          received = signal
          resolve(signal)
          return
        }
        onSecond(signal)
        report(`${signal} again: exiting now`)
        process.exit(128 + (SIGNAL_NUMBERS[signal] ?? 1))
      }
      process.on("SIGINT", handler)
      process.on("SIGTERM", handler)
      // Signal listeners alone do not keep Node running; waiting for one must.
      const keepAlive = setInterval(() => {}, 2 ** 31 - 1)
      return { first, handler, keepAlive }
    }),
    ({ handler, keepAlive }) =>
      Effect.sync(() => {
        clearInterval(keepAlive)
        process.off("SIGINT", handler)
        process.off("SIGTERM", handler)
      })
  ).pipe(Effect.map(({ first }) => first))

/** The node's own messages (config reloads, stopping) as lines of its logger. */
const logLine = (logger: NodeLogger) => (severity: WatchLogLevel, message: string) => {
  logger[severity](message)
}

/**
 * Runs a node with resolved settings until SIGINT or SIGTERM, then closes it. Prints
 * `ready <id> <url>` on stdout once `startNode` resolves. `sources` are the flags and
 * environment the settings came from, which a changed config file is resolved with again.
 */
export const runNode = (
  settings: NodeSettings,
  startNode: StartNode,
  sources: { readonly flags: FlagValues; readonly env: EnvValues }
): Effect.Effect<void, NodeFailed> =>
  Effect.scoped(Effect.gen(function*() {
    // One logger for the command and the node: one stream of JSON lines, one level. Loaded
    // here, not at the top: get, put and the other commands start faster without pino.
    const { makeLogger } = yield* Effect.promise(() => import("../node/Log.ts"))
    const logger = makeLogger(settings.id, settings.logLevel)
    const log = logLine(logger)
    const signalled = yield* stopSignal(() => {}, (message) => logger.warn(message))

    let closed = false
    const node = yield* Effect.acquireRelease(
      Effect.tryPromise({
        try: () => startNode(settings, { logger }),
        catch: (e) => new NodeFailed({ message: `node ${settings.id} could not start: ${messageOf(e)}` })
      }),
      (node) => (closed ? Effect.void : Effect.promise(() => node.close().catch(() => {})))
    )

    if (settings.config !== undefined) {
      yield* watchConfig({
        path: settings.config,
        flags: sources.flags,
        env: sources.env,
        initial: settings,
        applyLive: (patch) => {
          if (closed) return
          node.applyLive(patch)
          if (patch.logLevel !== undefined) logger.level = patch.logLevel
        },
        log
      })
    }

    const url = node.url.replace(/\/+$/, "")
    yield* Effect.callback<void>((resume) => {
      process.stdout.write(`ready ${node.id} ${url}\n`, () => resume(Effect.void))
    })

    // A node stops on a signal, or once it has left the ring (POST /admin/leave).
    const signal = yield* Effect.promise(() => Promise.race([signalled, (node.left ?? new Promise<never>(() => {})).then(() => "left the ring" as const)]))
    log("info", `${signal}: stopping node ${node.id}`)
    closed = true
    yield* Effect.tryPromise({
      try: () => node.close(),
      catch: (e) => new NodeFailed({ message: `node ${node.id} did not close cleanly: ${messageOf(e)}` })
    })
    log("info", `node ${node.id} stopped`)
  }))

/** Whether `host` is a loopback address: 127.0.0.0/8, ::1, or "localhost". */
export const isLoopbackHost = (host: string): boolean => {
  const h = host.toLowerCase().replace(/^\[(.*)\]$/, "$1")
  if (h === "localhost" || h === "::1") return true
  const v4 = h.startsWith("::ffff:") ? h.slice(7) : h
  return net.isIPv4(v4) && v4.startsWith("127.")
}

/**
 * Protected mode (as Redis has it): a node reachable beyond loopback must authenticate its
 * peers, so without a cluster secret it does not start. The reason, or undefined to go on.
 */
export const protectedModeProblem = (settings: Pick<NodeSettings, "host" | "clusterSecretFile">): string | undefined =>
  settings.clusterSecretFile !== undefined || isLoopbackHost(settings.host)
    ? undefined
    : `refusing to listen on ${settings.host} without a cluster secret (protected mode): anyone who can reach the internode port could read and change every key. ` +
      "Set --cluster-secret-file FILE (the same secret on every node; TALLY_CLUSTER_SECRET_FILE), or listen on loopback only (--host 127.0.0.1)"

type NodeFlagInput = { readonly [K in FlagKey]: Option.Option<string | boolean> }

const nodeFlags = Object.fromEntries(
  NODE_FLAGS.map((f) => {
    const description = `${f.description} (default ${f.default}; env ${f.env})`
    const flag = f.metavar === undefined
      ? Flag.Boolean(f.flag).pipe(Flag.withDescription(description), Flag.optional)
      : Flag.String(f.flag).pipe(Flag.withMetavar(f.metavar), Flag.withDescription(description), Flag.optional)
    return [f.key, flag as Flag.Flag<Option.Option<string | boolean>>]
  })
) as { readonly [K in FlagKey]: Flag.Flag<Option.Option<string | boolean>> }

/** The parsed command-line flags as resolveSettings takes them. */
export const toFlagValues = (input: NodeFlagInput): FlagValues => {
  const out: { [K in FlagKey]?: string | boolean } = {}
  for (const key of Object.keys(input) as ReadonlyArray<FlagKey>) {
    const v = input[key]
    if (Option.isSome(v)) out[key] = v.value
  }
  return out
}

/** `tally node`. */
export const nodeCommand = Command.make(
  "node",
  nodeFlags,
  Effect.fnUntraced(function*(input: NodeFlagInput) {
    const flags = toFlagValues(input)
    const resolved = loadSettings({ flags, env: process.env })
    if (Result.isFailure(resolved)) return yield* new InvalidSettings({ errors: resolved.failure })
    const refused = protectedModeProblem(resolved.success)
    if (refused !== undefined) return yield* new InvalidSettings({ errors: [refused] })
    const startNode = yield* loadStartNode
    yield* runNode(resolved.success, startNode, { flags, env: process.env })
  })
).pipe(
  Command.withShortDescription("Run one storage node"),
  Command.withDescription(
    "Run one storage node. Every flag may also come from TALLY_<FLAG> in the environment or from the --config file; " +
      'prints "ready <id> <url>" once it serves requests; SIGTERM or SIGINT stops it cleanly.'
  ),
  Command.withExamples([
    { command: "tally node --port 8081", description: "a new single-node cluster" },
    { command: "tally node --port 8082 --seeds 127.0.0.1:8081", description: "join it" }
  ])
)

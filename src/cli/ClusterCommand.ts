/**
 * `tally cluster --nodes K`: K `tally node` child processes on consecutive ports, for
 * development. Children run in their own process group, so a Ctrl-C reaches them once, as
 * the SIGTERM this command sends, and each node stops cleanly; a second Ctrl-C kills them.
 * A node that dies while the cluster runs is restarted on its port and data, with backoff;
 * one that exits 0 (it left the ring, or someone stopped it) is not.
 */
import { spawn, type ChildProcess } from "node:child_process"
import * as path from "node:path"
import * as readline from "node:readline"
import { fileURLToPath } from "node:url"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Result from "effect/Result"
import { Command, Flag } from "effect/cli"
import { resolveSettings, NODE_FLAGS, type FlagKey, type FlagValues } from "../config/Settings.ts"
import { InvalidSettings, NodeFailed, UsageError } from "./Errors.ts"
import { stopSignal } from "./NodeCommand.ts"
import * as RestartPolicy from "./RestartPolicy.ts"

const BIN = fileURLToPath(new URL("../../bin/tally.js", import.meta.url))

/** How long a node may take to print its ready line. */
const READY_TIMEOUT_MS = 60_000

/** The node flags the cluster sets itself; every other one is passed to each node. */
const OWN_FLAGS: ReadonlyArray<FlagKey> = ["id", "port", "clusterPort", "data", "seeds"]
const PASSED = NODE_FLAGS.filter((f) => !OWN_FLAGS.includes(f.key))

/** What it takes to start one child node, again after a death. */
interface Spec {
  readonly id: string
  readonly port: number
  readonly data: string
  readonly args: ReadonlyArray<string>
}

/** One run of a child node. */
interface Member {
  readonly id: string
  readonly port: number
  readonly data: string
  readonly child: ChildProcess
  readonly startedAt: number
  url: string | undefined
  exit: { readonly code: number | null; readonly signal: NodeJS.Signals | null } | undefined
  readonly exited: Promise<void>
}

const say = (line: string) => process.stdout.write(`${line}\n`)
const warn = (line: string) => process.stderr.write(`${line}\n`)

const describeExit = (m: Member) =>
  m.exit?.signal != null ? `was killed by ${m.exit.signal}` : `exited with code ${m.exit?.code ?? "?"}`

/** Forwards each line of `stream` to `write`, prefixed by the node id; calls `onReady` for the ready line. */
const forward = (id: string, stream: NodeJS.ReadableStream, write: (line: string) => void, onReady?: (url: string) => void) => {
  const lines = readline.createInterface({ input: stream, crlfDelay: Infinity })
  lines.on("line", (line) => {
    const ready = /^ready (\S+) (\S+)$/.exec(line)
    if (ready !== null && onReady !== undefined) onReady(ready[2]!)
    else write(`[${id}] ${line}`)
  })
}

/** The environment of the nodes: this one without the variables of the flags the cluster sets. */
const childEnv = (): NodeJS.ProcessEnv => {
  const env = { ...process.env }
  for (const f of NODE_FLAGS) if (OWN_FLAGS.includes(f.key)) delete env[f.env]
  return env
}

/** The restart policy; TALLY_TEST_RESTART_BASE_MS shortens its delays so tests can reach "give up" quickly. */
const restartLimits = (): RestartPolicy.RestartLimits => {
  const base = Number(process.env.TALLY_TEST_RESTART_BASE_MS)
  return Number.isInteger(base) && base > 0 ? { ...RestartPolicy.DEFAULT_LIMITS, baseDelayMs: base, maxDelayMs: base * 30 } : RestartPolicy.DEFAULT_LIMITS
}

const spawnMember = (spec: Spec, onReady: (m: Member) => void): Member => {
  const child = spawn(process.execPath, [BIN, "node", ...spec.args], {
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
    env: childEnv()
  })
  let resolveExited: () => void = () => {}
  const member: Member = {
    id: spec.id,
    port: spec.port,
    data: spec.data,
    child,
    startedAt: Date.now(),
    url: undefined,
    exit: undefined,
    exited: new Promise((r) => (resolveExited = r))
  }
  forward(spec.id, child.stdout!, say, (url) => {
    member.url = url
    onReady(member)
  })
  forward(spec.id, child.stderr!, warn)
  child.on("error", (e) => {
    warn(`[cluster] ${spec.id}: ${e.message}`)
    if (child.pid === undefined && member.exit === undefined) {
      member.exit = { code: null, signal: null }
      resolveExited()
    }
  })
  // "close", not "exit": the last lines it wrote are forwarded by then.
  child.on("close", (code, signal) => {
    member.exit = { code, signal }
    resolveExited()
  })
  return member
}

const alive = (m: Member) => m.exit === undefined

const signalAll = (members: ReadonlyArray<Member>, signal: NodeJS.Signals) => {
  for (const m of members) {
    if (alive(m)) {
      try {
        m.child.kill(signal)
      } catch {
        // already gone
      }
    }
  }
}

/**
 * Starts the members (into `members`), waits for every ready line, then for a signal; stops
 * them all. A node that dies before the cluster is ready stops it; one that dies later is
 * restarted as RestartPolicy says, replacing its entry in `members`.
 */
const runCluster = (specs: ReadonlyArray<Spec>, members: Array<Member>, signalled: Promise<NodeJS.Signals>): Promise<"stopped" | "failed"> =>
  new Promise((resolve) => {
    let phase: "starting" | "running" | "stopping" = "starting"
    const limits = restartLimits()
    const restarts = specs.map(() => RestartPolicy.initial)
    const pending = new Map<number, NodeJS.Timeout>()
    const onExit = () => signalAll(members, "SIGTERM")
    process.on("exit", onExit)

    const stop = (outcome: "stopped" | "failed") => {
      if (phase === "stopping") return
      phase = "stopping"
      clearTimeout(readyTimer)
      for (const timer of pending.values()) clearTimeout(timer)
      pending.clear()
      signalAll(members, "SIGTERM")
      void Promise.all(members.map((m) => m.exited)).then(() => {
        process.off("exit", onExit)
        resolve(outcome)
      })
    }

    const onReady = (m: Member) => {
      if (phase === "running") return warn(`[cluster] node ${m.id} is ready again at ${m.url}`)
      if (phase !== "starting" || !members.every((m) => m.url !== undefined)) return
      phase = "running"
      clearTimeout(readyTimer)
      const first = members[0]!
      const second = members[1] ?? first
      say(`tally cluster: ${members.length} node${members.length === 1 ? "" : "s"} ready`)
      for (const m of members) say(`  ${m.id}  ${m.url}  data ${m.data}`)
      say("Try:")
      say(`  curl -X PUT --data hello ${first.url}/kv/greeting`)
      say(`  curl ${second.url}/kv/greeting`)
      say("Ctrl-C stops the cluster.")
    }

    const readyTimer = setTimeout(() => {
      const late = members.filter((m) => m.url === undefined).map((m) => m.id)
      warn(`[cluster] ${late.join(", ")} not ready after ${READY_TIMEOUT_MS / 1000} s; stopping the cluster`)
      stop("failed")
    }, READY_TIMEOUT_MS)

    const onDeath = (i: number, m: Member) => {
      if (phase === "stopping") return
      if (phase === "starting") {
        warn(`[cluster] ${m.id} ${describeExit(m)} before it was ready; stopping the cluster`)
        return stop("failed")
      }
      if (m.exit?.code === 0) {
        warn(`[cluster] node ${m.id} exited with code 0, as a node does once it has left the ring or been stopped; not restarting it; ${stillRunning()}`)
        return stopIfAllGone()
      }
      const { state, decision } = RestartPolicy.onDeath(restarts[i]!, { startedAt: m.startedAt, diedAt: Date.now() }, limits)
      restarts[i] = state
      if (decision._tag === "Restart") {
        warn(`[cluster] node ${m.id} ${describeExit(m)}; restarting in ${RestartPolicy.formatDelay(decision.delayMs)}`)
        pending.set(i, setTimeout(() => {
          pending.delete(i)
          if (phase === "stopping") return
          launch(i)
        }, decision.delayMs))
        return
      }
      warn(
        `[cluster] node ${m.id} ${describeExit(m)}; it died ${decision.deaths} times within ${RestartPolicy.formatDelay(decision.windowMs)}, ` +
          `so it is not restarted again; ${stillRunning()}`
      )
      stopIfAllGone()
    }

    const stillRunning = () => `${members.filter(alive).length} of ${members.length} nodes still running`

    const stopIfAllGone = () => {
      if (members.some(alive) || pending.size > 0) return
      warn("[cluster] every node has stopped")
      stop("failed")
    }

    const launch = (i: number) => {
      const m = spawnMember(specs[i]!, onReady)
      members[i] = m
      void m.exited.then(() => onDeath(i, m))
    }

    for (let i = 0; i < specs.length; i++) launch(i)

    void signalled.then((signal) => {
      if (phase === "stopping") return
      warn(`[cluster] ${signal}: stopping ${members.filter(alive).length} nodes (again to kill them)`)
      stop("stopped")
    })
  })

const passedFlags = Object.fromEntries(
  PASSED.map((f) => {
    const description = `passed to every node: ${f.description} (default ${f.default})`
    const flag = f.metavar === undefined
      ? Flag.Boolean(f.flag).pipe(Flag.withDescription(description), Flag.optional)
      : Flag.String(f.flag).pipe(Flag.withMetavar(f.metavar), Flag.withDescription(description), Flag.optional)
    return [f.key, flag as Flag.Flag<Option.Option<string | boolean>>]
  })
) as Readonly<Record<string, Flag.Flag<Option.Option<string | boolean>>>>

/** `tally cluster`. */
export const clusterCommand = Command.make(
  "cluster",
  {
    nodes: Flag.Int("nodes").pipe(Flag.withMetavar("K"), Flag.withDescription("how many nodes to start (required)")),
    basePort: Flag.Int("base-port").pipe(Flag.withMetavar("P"), Flag.withDescription("client port of the first node; the others follow (default 8081)"), Flag.withDefault(8081)),
    data: Flag.String("data").pipe(Flag.withMetavar("DIR"), Flag.withDescription("each node keeps its data in DIR/<id> (default ./data)"), Flag.withDefault("./data")),
    ...passedFlags
  },
  Effect.fnUntraced(function*(input) {
    const { nodes, basePort, data } = input
    if (!Number.isInteger(nodes) || nodes < 1 || nodes > 64) {
      return yield* new UsageError({ message: `--nodes must be an integer from 1 to 64; got ${nodes}` })
    }
    if (!Number.isInteger(basePort) || basePort < 1 || basePort + nodes - 1 + 1000 > 65535) {
      return yield* new UsageError({ message: `--base-port must leave room for ${nodes} client ports and their cluster ports (+1000) up to 65535; got ${basePort}` })
    }
    const passed: { [K in FlagKey]?: string | boolean } = {}
    const args: Array<string> = []
    for (const f of PASSED) {
      const v = (input as Readonly<Record<string, unknown>>)[f.key] as Option.Option<string | boolean> | undefined
      if (v === undefined || Option.isNone(v)) continue
      passed[f.key] = v.value
      args.push(v.value === true ? `--${f.flag}` : v.value === false ? `--no-${f.flag}` : `--${f.flag}=${v.value}`)
    }
    const check = resolveSettings({ flags: { ...passed, port: String(basePort) } as FlagValues, env: childEnv() })
    if (Result.isFailure(check)) return yield* new InvalidSettings({ errors: check.failure })
    const host = check.success.host === "0.0.0.0" || check.success.host === "::" ? "127.0.0.1" : check.success.host

    const specs = Array.from({ length: nodes }, (_, i) => {
      const port = basePort + i
      const id = `node-${port}`
      const dir = path.join(data, id)
      const seeds = i === 0 ? [] : ["--seeds", `${host}:${basePort}`]
      return { id, port, data: dir, args: ["--id", id, "--port", String(port), "--data", dir, ...seeds, ...args] }
    })
    const members: Array<Member> = []
    const outcome = yield* Effect.scoped(Effect.gen(function*() {
      const signalled = yield* stopSignal(() => signalAll(members, "SIGKILL"))
      return yield* Effect.promise(() => runCluster(specs, members, signalled))
    }))
    if (outcome === "failed") return yield* new NodeFailed({ message: "the cluster stopped because a node failed" })
    warn("[cluster] all nodes stopped")
  })
).pipe(
  Command.withShortDescription("Run K local nodes for development"),
  Command.withDescription("Start K local nodes as child processes on consecutive ports, for development; a node that dies is restarted; Ctrl-C stops them"),
  Command.withExamples([{ command: "tally cluster --nodes 3", description: "nodes on 8081, 8082, 8083 with data under ./data" }])
)

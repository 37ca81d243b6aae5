/** Shared by the transport tests: start transports in their own scopes, collect their logs, run effects. */
import { spawn, type ChildProcess } from "node:child_process"
import * as path from "node:path"
import { Context, Effect, Exit, Layer, Logger, Scope } from "effect"
import type { Test } from "tap"
import { MemoryNetwork, Transport, type Handler, type MemoryTransportConfig, type TcpTransportConfig, type TransportApi, type TransportError } from "../../src/transport/Transport.ts"

export interface Running {
  readonly api: TransportApi
  readonly logs: string[]
  /** Registers a handler until the transport closes. */
  serve(handler: Handler): Promise<void>
  close(): Promise<void>
}

export const CLUSTER = { n: 3, partitions: 64 } as const

const start = async (t: Test, layer: Layer.Layer<Transport, TransportError>): Promise<Running> => {
  const logs: string[] = []
  const capture = Logger.make((o) => {
    logs.push(Array.isArray(o.message) ? o.message.map(String).join(" ") : String(o.message))
  })
  const scope = Effect.runSync(Scope.make())
  let closed = false
  const close = async () => {
    if (closed) return
    closed = true
    await Effect.runPromise(Scope.close(scope, Exit.void))
  }
  t.teardown(close)
  const context = await Effect.runPromise(Layer.buildWithScope(layer.pipe(Layer.provide(Logger.layer([capture]))), scope))
  const api = Context.get(context, Transport)
  return { api, logs, close, serve: (handler) => Effect.runPromise(api.serve(handler).pipe(Scope.provide(scope))) }
}

/** A TCP transport on a free port of 127.0.0.1, closed when the test ends. */
export const startTcp = (t: Test, config: Partial<TcpTransportConfig> & { readonly nodeId: string }): Promise<Running> =>
  start(t, Transport.layer({ host: "127.0.0.1", port: 0, cluster: CLUSTER, reconnectMinMs: 20, reconnectMaxMs: 200, ...config }))

/** A transport on `network`, closed when the test ends. */
export const startMemory = (t: Test, network: MemoryNetwork, config: Partial<MemoryTransportConfig> & { readonly nodeId: string }): Promise<Running> =>
  start(t, Transport.layerMemory(network, { cluster: CLUSTER, ...config }))

export const run = <A, E>(effect: Effect.Effect<A, E>): Promise<A> => Effect.runPromise(effect)

/** The error `effect` fails with; throws if it succeeds. */
export const failure = async <A>(effect: Effect.Effect<A, TransportError>): Promise<TransportError> => {
  const exit = await Effect.runPromise(Effect.exit(effect))
  if (Exit.isSuccess(exit)) throw new Error(`expected a failure, got ${JSON.stringify(exit.value)}`)
  return Effect.runPromise(Effect.flip(Effect.failCause(exit.cause)))
}

/** Milliseconds `f` takes, with its result. */
export const timed = async <A>(f: () => Promise<A>): Promise<[A, number]> => {
  const t0 = performance.now()
  const a = await f()
  return [a, performance.now() - t0]
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))

export const waitFor = async (what: string, check: () => boolean, timeoutMs = 5000): Promise<void> => {
  const until = Date.now() + timeoutMs
  while (!check()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`)
    await sleep(10)
  }
}

/** A handler for tests: {echo: x} answers x, {sleep: ms, echo?} answers after ms, {fail: code} fails, {die: true} dies. */
export const testHandler = (seen?: Array<{ from: string; payload: unknown }>): Handler => (from, payload) =>
  Effect.suspend(() => {
    seen?.push({ from, payload })
    const p = payload as { echo?: unknown; sleep?: number; fail?: string; die?: boolean }
    if (p?.fail !== undefined) return Effect.fail({ code: p.fail, message: `failed with ${p.fail}` })
    if (p?.die === true) return Effect.die(new Error("boom"))
    const answer = Effect.succeed({ from, echo: p?.echo ?? null })
    return p?.sleep !== undefined ? Effect.delay(answer, p.sleep) : answer
  })

/** A peer in a child process (fixtures/peer.ts), so it can be killed for real. */
export interface ChildPeer {
  readonly port: number
  readonly child: ChildProcess
  kill(): Promise<void>
}

export const spawnPeer = (t: Test, nodeId: string, port = 0): Promise<ChildPeer> =>
  new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(import.meta.dirname, "fixtures", "peer.ts"), nodeId, String(port)], { stdio: ["ignore", "pipe", "inherit"] })
    const kill = () =>
      new Promise<void>((done) => {
        if (child.exitCode !== null || child.signalCode !== null) return done()
        child.once("exit", () => done())
        child.kill("SIGKILL")
      })
    t.teardown(kill)
    let out = ""
    child.stdout!.on("data", (d: Buffer) => {
      out += d.toString()
      const m = /^ready (\d+)$/m.exec(out)
      if (m) resolve({ port: Number(m[1]), child, kill })
    })
    child.once("exit", (code, signal) => reject(new Error(`peer ${nodeId} exited (${code ?? signal}) before it was ready`)))
  })

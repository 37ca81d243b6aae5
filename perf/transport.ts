/**
 * node perf/transport.ts: request/response rate and latency of the internode transport over
 * TCP on 127.0.0.1, client in this process, server in a child process (spawned from this file
 * with --serve). The peer in the same run is a bare node:net client and server speaking the
 * same frames (Frame.ts), batching writes per event-loop turn as the transport does, with no
 * Effect, no hello, no timeouts, no backpressure: the floor. A third case runs the same
 * transport with --cluster-secret-file's TLS (Tls.ts, TLS 1.3 PSK, AES-128-GCM), to give
 * TLS / plain in the same run.
 * Payload: 1 KiB of bytes, echoed back. Concurrency 1 and 64 (requests outstanding at once).
 * Prints a table, then one JSON line with the figures.
 *
 * Options: --seconds S per case (5), --warmup S (1), --payload BYTES (1024), --concurrency 1,64.
 */
import { spawn } from "node:child_process"
import * as net from "node:net"
import * as os from "node:os"
import { parseArgs } from "node:util"
import { Context, Effect, Exit, Layer, Logger, Scope } from "effect"
import { encodeFrame, FrameDecoder } from "../src/transport/Frame.ts"
import * as Tls from "../src/transport/Tls.ts"
import { Transport, type Peer, type TransportApi } from "../src/transport/Transport.ts"
import { fmt, progress, table } from "./lib/measure.ts"

const { values: args } = parseArgs({
  options: {
    serve: { type: "boolean", default: false },
    seconds: { type: "string", default: "5" },
    warmup: { type: "string", default: "1" },
    payload: { type: "string", default: "1024" },
    concurrency: { type: "string", default: "1,64" }
  }
})
const CLUSTER = { n: 3, partitions: 64 }
const HOST = "127.0.0.1"
const TLS = Tls.fromSecrets(["perf/transport.ts cluster secret"])

/** socket.write, with the frames of one event-loop turn sent in one writev, as the transport does. */
const batched = (socket: net.Socket) => {
  let corked = false
  const uncork = () => {
    corked = false
    socket.uncork()
  }
  return (bytes: Uint8Array) => {
    if (!corked) {
      corked = true
      socket.cork()
      process.nextTick(uncork)
    }
    socket.write(bytes)
  }
}

/** The child: a Tally transport echoing payloads, and a bare framed echo server. */
const serve = () => {
  const bare = net.createServer((socket) => {
    socket.setNoDelay(true)
    const decoder = new FrameDecoder()
    const write = batched(socket)
    socket.on("data", (chunk: Buffer) => {
      const { frames, error } = decoder.push(chunk)
      if (error !== undefined) return void socket.destroy()
      for (const f of frames) if (f.k === "req") write(encodeFrame({ k: "res", id: f.id, p: f.p }))
    })
    socket.on("error", () => {})
  })
  bare.listen(0, HOST, () => {
    Effect.runFork(
      Effect.gen(function*() {
        const t = yield* Transport
        yield* t.serve((_from, p) => Effect.succeed(p))
        const s = Context.get(yield* Layer.build(Transport.layer({ nodeId: "server-tls", host: HOST, port: 0, cluster: CLUSTER, tls: TLS })), Transport)
        yield* s.serve((_from, p) => Effect.succeed(p))
        const secured = s.self.port
        process.stdout.write(`ready ${t.self.port} ${(bare.address() as net.AddressInfo).port} ${secured}\n`)
        return yield* Effect.never
      }).pipe(Effect.scoped, Effect.provide(Transport.layer({ nodeId: "server", host: HOST, port: 0, cluster: CLUSTER })))
    )
  })
}

interface Case {
  readonly impl: "tally" | "tls" | "bare"
  readonly concurrency: number
  readonly rps: number
  readonly p50: number
  readonly p99: number
  readonly requests: number
}

const percentile = (sorted: Float64Array, p: number) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!

/** The figures of one case from its latencies. */
const summarise = (impl: Case["impl"], c: number, latencies: number[], elapsed: number): Case => {
  const sorted = Float64Array.from(latencies).sort()
  return { impl, concurrency: c, rps: latencies.length / (elapsed / 1000), p50: percentile(sorted, 0.5), p99: percentile(sorted, 0.99), requests: latencies.length }
}

/** Runs `c` promise loops of `op` for `ms`, recording every latency. */
const measureBare = async (c: number, ms: number, op: () => Promise<unknown>): Promise<Case> => {
  const latencies: number[] = []
  const t0 = performance.now()
  const end = t0 + ms
  const loop = async () => {
    while (performance.now() < end) {
      const s = performance.now()
      await op()
      latencies.push(performance.now() - s)
    }
  }
  await Promise.all(Array.from({ length: c }, loop))
  return summarise("bare", c, latencies, performance.now() - t0)
}

/** Runs `c` fibers, each requesting in a loop for `ms`, as a caller inside Effect (the coordinator) does. */
const measureTally = (c: number, ms: number, op: Effect.Effect<unknown, unknown>, impl: "tally" | "tls" = "tally"): Promise<Case> =>
  Effect.runPromise(Effect.suspend(() => {
    const latencies: number[] = []
    const t0 = performance.now()
    const end = t0 + ms
    const loop = Effect.gen(function*() {
      while (performance.now() < end) {
        const s = performance.now()
        yield* op
        latencies.push(performance.now() - s)
      }
    })
    return Effect.forEach(Array.from({ length: c }), () => loop, { concurrency: "unbounded", discard: true }).pipe(
      Effect.map(() => summarise(impl, c, latencies, performance.now() - t0))
    )
  }))

/** A bare client: one socket, a map of pending ids, no timeouts. */
const bareClient = (port: number) =>
  new Promise<{ request: (p: unknown) => Promise<unknown>; close: () => void }>((resolve, reject) => {
    const socket = net.connect({ host: HOST, port })
    socket.setNoDelay(true)
    const pending = new Map<number, (v: unknown) => void>()
    const decoder = new FrameDecoder()
    const write = batched(socket)
    let nextId = 1
    socket.on("data", (chunk: Buffer) => {
      for (const f of decoder.push(chunk).frames) {
        if (f.k !== "res") continue
        pending.get(f.id)?.(f.p)
        pending.delete(f.id)
      }
    })
    socket.once("error", reject)
    socket.once("connect", () =>
      resolve({
        request: (p) =>
          new Promise((done) => {
            const id = nextId++
            pending.set(id, done)
            write(encodeFrame({ k: "req", id, p }))
          }),
        close: () => socket.destroy()
      })
    )
  })

const main = async () => {
  const seconds = Number(args.seconds)
  const warmup = Number(args.warmup)
  const payload = new Uint8Array(Number(args.payload)).map((_, i) => i & 0xff)
  const levels = args.concurrency.split(",").map(Number)
  const cpus = os.cpus()
  progress(`${cpus.length} x ${cpus[0]?.model}, Node ${process.version}, payload ${payload.length} bytes, ${seconds} s per case`)

  const child = spawn(process.execPath, [import.meta.filename, "--serve"], { stdio: ["ignore", "pipe", "inherit"] })
  const [tallyPort, barePort, tlsPort] = await new Promise<[number, number, number]>((resolve, reject) => {
    let out = ""
    child.stdout!.on("data", (d: Buffer) => {
      out += d.toString()
      const m = /^ready (\d+) (\d+) (\d+)$/m.exec(out)
      if (m) resolve([Number(m[1]), Number(m[2]), Number(m[3])])
    })
    child.once("exit", (code) => reject(new Error(`server exited with ${code} before it was ready`)))
  })

  const scope = Effect.runSync(Scope.make())
  const context = await Effect.runPromise(
    Layer.buildWithScope(Transport.layer({ nodeId: "client", host: HOST, port: 0, cluster: CLUSTER }).pipe(Layer.provide(Logger.layer([]))), scope)
  )
  const transport: TransportApi = Context.get(context, Transport)
  const server: Peer = { id: "server", host: HOST, port: tallyPort }
  const tallyOp = transport.request(server, payload, 10_000)
  const tlsContext = await Effect.runPromise(
    Layer.buildWithScope(Transport.layer({ nodeId: "client-tls", host: HOST, port: 0, cluster: CLUSTER, tls: TLS }).pipe(Layer.provide(Logger.layer([]))), scope)
  )
  const tlsOp = Context.get(tlsContext, Transport).request({ id: "server-tls", host: HOST, port: tlsPort }, payload, 10_000)
  const bare = await bareClient(barePort)
  const bareOp = () => bare.request(payload)

  const check = (await Effect.runPromise(tallyOp)) as Uint8Array
  if (check.length !== payload.length) throw new Error("the echo came back wrong")
  if (((await Effect.runPromise(tlsOp)) as Uint8Array).length !== payload.length) throw new Error("the TLS echo came back wrong")

  const cases: Case[] = []
  for (const c of levels) {
    progress(`bare, concurrency ${c}: warm-up ${warmup} s, then ${seconds} s`)
    await measureBare(c, warmup * 1000, bareOp)
    cases.push(await measureBare(c, seconds * 1000, bareOp))
    progress(`tally, concurrency ${c}: warm-up ${warmup} s, then ${seconds} s`)
    await measureTally(c, warmup * 1000, tallyOp)
    cases.push(await measureTally(c, seconds * 1000, tallyOp))
    progress(`tally over TLS, concurrency ${c}: warm-up ${warmup} s, then ${seconds} s`)
    await measureTally(c, warmup * 1000, tlsOp, "tls")
    cases.push(await measureTally(c, seconds * 1000, tlsOp, "tls"))
  }
  bare.close()
  await Effect.runPromise(Scope.close(scope, Exit.void))
  child.kill("SIGTERM")

  console.log(table([
    ["transport", "concurrency", "req/s", "p50 ms", "p99 ms", "requests"],
    ...cases.map((x) => [x.impl === "tally" ? "tally Transport" : x.impl === "tls" ? "tally Transport, TLS" : "bare net+frames", String(x.concurrency), fmt(x.rps), fmt(x.p50, 3), fmt(x.p99, 3), fmt(x.requests)])
  ]))
  const ratio = Object.fromEntries(levels.map((c) => {
    const t = cases.find((x) => x.impl === "tally" && x.concurrency === c)!
    const b = cases.find((x) => x.impl === "bare" && x.concurrency === c)!
    return [`c${c}`, t.rps / b.rps]
  }))
  const tlsRatio = Object.fromEntries(levels.map((c) => {
    const t = cases.find((x) => x.impl === "tally" && x.concurrency === c)!
    const s = cases.find((x) => x.impl === "tls" && x.concurrency === c)!
    return [`c${c}`, s.rps / t.rps]
  }))
  console.log(JSON.stringify({ bench: "transport", payload_bytes: payload.length, seconds, cpus: cpus.length, node: process.version, cases, ratio_tally_to_bare: ratio, ratio_tls_to_plain: tlsRatio }))
}

if (args.serve) serve()
else await main()

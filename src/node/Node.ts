/**
 * One Tally node: the storage engine, the local replica, the coordinator and the HTTP API,
 * assembled from their layers and started. `close` is the graceful stop the CLI runs on
 * SIGTERM/SIGINT: stop accepting, finish in-flight requests, flush and fsync, release the
 * data directory.
 */
import { partitionOf } from "../ring/Ring.ts"
import { Clock, Effect, type Exit, Layer, Logger, ManagedRuntime } from "effect"
import type { FastifyInstance } from "fastify"
import { Engine, type EngineConfig } from "../../engine/Engine.ts"
import { buildServer } from "../api/Server.ts"
import { apiError, ApiError } from "../Errors.ts"
import type { LiveSettingsShape, NodeSettings } from "../config/Settings.ts"
import { makeMemoryFiles, nodeFilesApi, type FilesApi } from "../../engine/Files.ts"
import { Coordinator } from "../coordinator/Coordinator.ts"
import { isDataMessage } from "../coordinator/Messages.ts"
import { Handoff, shipLoop } from "../handoff/Handoff.ts"
import { parseCorsOrigins } from "../api/Cors.ts"
import { isTransferMessage, Transfer } from "../transfer/Transfer.ts"
import { type AaeConfig, AntiEntropy, isAaeMessage } from "../aae/AntiEntropy.ts"
import { isReapingMessage, Reaping, type ReapingConfig } from "../aae/Reaping.ts"
import { isMembershipMessage, Membership } from "../membership/Membership.ts"
import { isKeyPageRequest, type KeyPage, KeyListing } from "../keys/KeyListing.ts"
import { HostileMessage, MemoryNetwork, Transport } from "../transport/Transport.ts"
import { readSecretFile } from "../transport/Tls.ts"
import { readTokenFile } from "../api/Auth.ts"
import { readHttpsFiles } from "../api/Https.ts"
import { makeMetrics } from "../metrics/Metrics.ts"
import { defaultReplicaConfig, Replica } from "../replica/Replica.ts"
import * as Dvv from "../versions/Dvv.ts"
import * as State from "../membership/ClusterState.ts"
import { crc32 } from "node:zlib"
import { BURST_WINDOW_MS, burstLog, effectLogger, makeLogger, type NodeLogger } from "./Log.ts"

/** A started node. */
export interface RunningNode {
  readonly id: string
  readonly url: string
  /** Resolves once this node, having asked to leave, is out of the ring: then it stops. */
  readonly left: Promise<void>
  /** Applies settings that can change live. */
  applyLive(patch: Partial<LiveSettingsShape>): void
  /** Stops gracefully; resolves when the data is flushed and the directory released. */
  close(): Promise<void>
}

/** Options for embedding a node (tests): where logs go, in-memory files, a simulated network. */
export interface StartOptions {
  readonly logStream?: NodeJS.WritableStream
  /** The logger to use (`tally node` shares its own), instead of one on `logStream`. */
  readonly logger?: NodeLogger
  readonly memory?: boolean
  readonly network?: MemoryNetwork
  /** Seeds by node id on the simulated network (with `network`). */
  readonly seedIds?: ReadonlyArray<string>
  /** The engine's files (with `memory`): a test keeps them to inject faults. */
  readonly engineFiles?: FilesApi
  /** Every service's files, the engine's included (the simulator keeps a node's disk across restarts). */
  readonly files?: FilesApi
  /** Engine settings beyond the node settings (the simulator: small segments, a skewed clock). */
  readonly engine?: Partial<EngineConfig>
  /** The Effect Clock of this node's services (the simulator: a clock skewed per node). */
  readonly clock?: Clock.Clock
  /** Anti-entropy settings beyond the node settings (tests). */
  readonly aae?: Partial<AaeConfig>
  /** Reaping settings beyond the node settings (tests). */
  readonly reaping?: Partial<ReapingConfig>
}

/** A node assembled but not listening: its Fastify app and how to stop it. */
export interface AssembledNode {
  readonly app: FastifyInstance
  /** Resolves once this node, having asked to leave, is out of the ring. */
  readonly left: Promise<void>
  applyLive(patch: Partial<LiveSettingsShape>): void
  /** Closes the app, then the runtime (engine flush and release). */
  close(): Promise<void>
}

/** Default request timeout, in ms, when a request does not give one. */
export const DEFAULT_TIMEOUT_MS = 10_000

/** Builds a node's runtime and HTTP app without listening (tests use `app.inject`). */
export const assembleNode = async (settings: NodeSettings, options: StartOptions = {}): Promise<AssembledNode> => {
  const logger = options.logger ?? makeLogger(settings.id, settings.logLevel, options.logStream)
  const live = { r: settings.r, w: settings.w, maxValueBytes: settings.maxValueBytes, tombstoneGraceMs: settings.compaction.tombstoneGraceMs }
  const cluster = { n: settings.n, partitions: settings.partitions }
  const files = options.files ?? (options.memory ? makeMemoryFiles() : nodeFilesApi)
  // Tombstones go only when every replica holds them (Reaping.ts); until the service is up, none do.
  let reaper: Reaping["Service"] | undefined
  const engineFiles = options.files ?? options.engineFiles
  const engineLayer = engineFiles !== undefined
    ? (c: EngineConfig) => Engine.layerFiles(c, engineFiles)
    : options.memory ? Engine.layerMemory : Engine.layer
  const engine = engineLayer({
    dir: settings.data,
    fsync: settings.fsync,
    maxValueBytes: defaultReplicaConfig.maxObjectBytes,
    compactDeadRatio: settings.compaction.deadRatio,
    compactDeadBytes: settings.compaction.deadBytes,
    compactSmallBytes: settings.compaction.smallBytes,
    tombstoneGraceMs: settings.compaction.tombstoneGraceMs,
    reapBefore: (partition) => (reaper === undefined ? -Infinity : reaper.reapBefore(partition)),
    compactionIntervalMs: settings.compaction.intervalMs,
    // Records of the first format carry no partition: the ring's function names it.
    partitionOf: (key) => partitionOf(key, settings.partitions),
    ...(options.engine ?? {})
  })
  // The secret is read once, at start: a bad file stops the node before it listens.
  const tls = settings.clusterSecretFile === undefined ? undefined : readSecretFile(settings.clusterSecretFile)
  // So are the client API's token files and certificate (src/api/Auth.ts re-reads tokens later).
  for (const f of [settings.adminTokenFile, settings.clientTokenFile]) if (f !== undefined) readTokenFile(f)
  const https = settings.tlsCert !== undefined && settings.tlsKey !== undefined ? readHttpsFiles(settings.tlsCert, settings.tlsKey) : undefined
  const transport = options.network !== undefined
    ? Transport.layerMemory(options.network, { nodeId: settings.id, cluster })
    : Transport.layer({
      nodeId: settings.id, host: settings.host, port: settings.clusterPort, cluster, tls,
      ...(settings.maxFrameBytes === undefined ? {} : { maxFrameBytes: settings.maxFrameBytes }),
      ...(settings.maxHelloFrameBytes === undefined ? {} : { maxHelloFrameBytes: settings.maxHelloFrameBytes }),
      ...(settings.maxInboundConnections === undefined ? {} : { maxInboundConnections: settings.maxInboundConnections })
    })
  const membership = Membership.layer({
    self: { id: settings.id, host: settings.host, port: settings.port, clusterPort: settings.clusterPort },
    n: settings.n,
    partitions: settings.partitions,
    dataDir: settings.data,
    seeds: settings.seeds,
    seedScheme: settings.tlsCert === undefined ? "http" : "https",
    ...(options.seedIds === undefined ? {} : { seedPeers: options.seedIds.map((id) => ({ id, host: "memory", port: 0 })) }),
    files
  })
  const handoff = Handoff.layer({ dataDir: settings.data, files, fsync: settings.fsync, partitions: settings.partitions })
  const transfer = Transfer.layer({ dataDir: settings.data, files, concurrency: settings.transferConcurrency, bytesPerSecond: settings.transferBytesPerSecond })
  const aae = AntiEntropy.layer({ intervalMs: settings.aaeIntervalMs, window: settings.aaeWindow ?? undefined, tombstoneGraceMs: settings.compaction.tombstoneGraceMs, ...(options.aae ?? {}) })
  const reaping = Reaping.layer({ tombstoneGraceMs: settings.compaction.tombstoneGraceMs, ...(options.reaping ?? {}) }).pipe(Layer.provideMerge(aae))
  const services = Layer.mergeAll(Coordinator.layer({ n: settings.n, maxReadRepairs: settings.maxReadRepairs }), KeyListing.layer({ n: settings.n }), transfer, reaping).pipe(
    Layer.provideMerge(Replica.layer({ ...defaultReplicaConfig, nodeId: settings.id, partitions: settings.partitions })),
    Layer.provideMerge(Layer.mergeAll(engine, handoff)),
    Layer.provideMerge(membership),
    Layer.provideMerge(transport)
  )
  // Internode traffic: membership messages, the data path, and handoff shipping.
  const internode = Layer.effectDiscard(Effect.gen(function*() {
    const t = yield* Transport
    const m = yield* Membership
    const c = yield* Coordinator
    const x = yield* Transfer
    const a = yield* AntiEntropy
    const reap = yield* Reaping
    const keys = yield* KeyListing
    yield* t.serve((from, payload) => {
      if (isMembershipMessage(payload)) return m.handle(from, payload)
      if (isDataMessage(payload)) return c.handleNow(from, payload) ?? c.handle(from, payload)
      if (isTransferMessage(payload)) return x.handle(from, payload)
      if (isAaeMessage(payload)) return a.handle(from, payload)
      if (isReapingMessage(payload)) return reap.handle(from, payload)
      if (isKeyPageRequest(payload)) return keys.handle(from, payload)
      // No service takes it: malformed for every one (each is* above is that service's validator).
      return Effect.fail(new HostileMessage({ message: `a message no service takes (kind ${JSON.stringify((payload as { t?: unknown } | null)?.t)?.slice(0, 40)}), or one that fails its checks` }))
    })
    // Parked writes go to their owner when it is up, or, for an owner gone for good (left or
    // removed), to the keys' current replicas; Coordinator.deliver also redirects the keys an
    // owner no longer replicates.
    const gone = (owner: string) => {
      const r = m.state().ring
      return r.gone.includes(owner) && !r.members.includes(owner) && !r.nextMembers.includes(owner)
    }
    yield* shipLoop(
      (owner) => m.status(owner) === "up" || gone(owner),
      (owner, batch) => c.deliver(owner, batch.records)
    )
  }))
  // provideMerge, not provide: request fibers run on the runtime's context and must log as JSON too.
  const base = internode.pipe(Layer.provideMerge(services), Layer.provideMerge(Logger.layer([effectLogger(logger)])))
  const layer = options.clock === undefined ? base : base.pipe(Layer.provideMerge(Layer.succeed(Clock.Clock, options.clock)))
  const runtime = ManagedRuntime.make(layer)
  const { engineService, membershipService, transportService, handoffService, transferService, aaeService, reapingService } = await runtime.runPromise(Effect.gen(function*() {
    return { engineService: yield* Engine, membershipService: yield* Membership, transportService: yield* Transport, handoffService: yield* Handoff, transferService: yield* Transfer, aaeService: yield* AntiEntropy, reapingService: yield* Reaping }
  })).catch(async (e) => {
    await runtime.dispose()
    throw e
  })
  reaper = reapingService
  // A failing replica set fails every request on it: one warning a second says so, with a count.
  const quorumFailures = burstLog(logger, "quorum failures")
  const noteQuorumNow = (e: ApiError) => {
    if (e.code === "quorum_not_met") quorumFailures.note({ needed: e.needed, got: e.got }, `quorum not met: ${e.message}`)
  }
  const noteQuorum = (e: ApiError) => Effect.sync(() => noteQuorumNow(e))
  /** A plain-lane rejection, noted as `run` notes an Effect failure, then passed on. */
  const noted = (e: unknown): never => {
    if (e instanceof ApiError) noteQuorumNow(e)
    throw e
  }
  // Layer failures surfaced above, when the services started: only request errors remain.
  const run = <A>(f: (c: Coordinator["Service"]) => Effect.Effect<A, ApiError>) =>
    runtime.runPromiseExit(Effect.gen(function*() {
      return yield* f(yield* Coordinator)
    }).pipe(Effect.tapError(noteQuorum))) as Promise<Exit.Exit<A, ApiError>>
  const started = Date.now()
  const coordinatorService = await runtime.runPromise(Effect.gen(function*() {
    return yield* Coordinator
  }))
  // The request path's plain lane (Coordinator.now), with quorum failures logged as on `run`'s.
  const plain: Coordinator["Service"]["now"] = {
    get: (key, q) => {
      const r = coordinatorService.now.get(key, q)
      return r instanceof Promise ? r.catch(noted) : r
    },
    put: (key, context, sibling, q) => coordinatorService.now.put(key, context, sibling, q).catch(noted)
  }
  // Fallback (sloppy) writes are counted by the coordinator; a line a second tells how many.
  let fallbacksLogged = coordinatorService.stats().fallbackWrites
  const fallbackTicker = setInterval(() => {
    const now = coordinatorService.stats().fallbackWrites
    const count = now - fallbacksLogged
    fallbacksLogged = now
    if (count > 0) {
      logger.warn(
        { kind: "fallback writes", count, windowMs: BURST_WINDOW_MS },
        `${count} replica ${count === 1 ? "copy" : "copies"} written to a fallback node (sloppy quorum) in the last ${BURST_WINDOW_MS} ms: a primary replica was unreachable; the copies are handed to it when it is back`
      )
    }
  }, BURST_WINDOW_MS)
  fallbackTicker.unref()
  const metrics = makeMetrics(() => Effect.runSync(engineService.stats), () => {
    const s = membershipService.state()
    const local = transferService.local()
    return {
      parked: handoffService.pending(),
      members: membershipService.view().nodes.map((n) => n.status),
      ring: { version: s.ring.version, hash: ringHash(s), settled: State.settled(s) },
      phi: membershipService.phis(),
      transfers: { running: local.length, stalled: local.filter((x) => x.state === "stalled").length, keys: local.reduce((n, x) => n + x.keysSent, 0) },
      coordinator: coordinatorService.stats(),
      aae: aaeService.status().map((p) => ({ ...p, reapBlocked: reapingService.cutoff(p.partition).blocked !== undefined })),
      aaeFallbacks: aaeService.fallbacks(),
      limits: { ...(transportService.stats().limits ?? {}), read_repairs: coordinatorService.stats().readRepairsDropped, hints_unknown_owner: coordinatorService.stats().hintsRefused }
    }
  })
  const app = buildServer({
    nodeId: settings.id,
    logger,
    keys: { list: (q) => runtime.runPromiseExit(Effect.gen(function*() {
      return yield* (yield* KeyListing).list(q)
    })) as Promise<Exit.Exit<KeyPage, ApiError>>, defaultTimeoutMs: () => DEFAULT_TIMEOUT_MS },
    auth: { adminTokenFile: settings.adminTokenFile, clientTokenFile: settings.clientTokenFile },
    ...(settings.corsOrigin === undefined ? {} : { cors: parseCorsOrigins(settings.corsOrigin) }),
    https,
    maxRequestsInFlight: settings.maxRequestsInFlight,
    now: options.clock === undefined ? undefined : () => options.clock!.currentTimeMillisUnsafe(),
    metrics,
    run,
    plain,
    settings: () => ({ n: settings.n, r: live.r, w: live.w, timeoutMs: DEFAULT_TIMEOUT_MS, maxValueBytes: live.maxValueBytes }),
    health: () => {
      const s = Effect.runSync(engineService.stats)
      const storage = Effect.runSync(engineService.health)
      const member = membershipService.joined()
      return {
        status: !member ? "joining" : storage.writable ? "ok" : "degraded",
        ...(!member ? { reason: "not yet a ring member: no seed has accepted this node" } : storage.writable ? {} : { reason: storage.reason }),
        uptimeSeconds: Math.round((Date.now() - started) / 1000),
        keys: s.keys,
        lastLsn: s.lastLsn,
        segments: s.segments,
        cluster: { host: settings.host, port: transportService.self.port }
      }
    },
    admin: {
      leave: async () => {
        const s = membershipService.state()
        if (!s.ring.members.includes(settings.id)) return apiError("not_joined", `node ${settings.id} is not a ring member`)
        if (s.ring.members.length <= 1) return apiError("bad_request", `node ${settings.id} is the only member: there is no one to hand its data to`)
        await runtime.runPromise(membershipService.requestChange("leave", settings.id))
        leaving = true
        return undefined
      },
      remove: async (node) => {
        const s = membershipService.state()
        if (node === settings.id) return apiError("bad_request", "a node cannot remove itself: POST /admin/leave on it instead")
        if (!s.ring.members.includes(node) && !s.ring.nextMembers.includes(node)) return apiError("bad_request", `${node} is not a ring member`)
        if (membershipService.status(node) === "up") return apiError("bad_request", `${node} is up: remove is for a node gone for good; POST /admin/leave on it to hand its data over`)
        await runtime.runPromise(membershipService.requestChange("remove", node))
        return undefined
      },
      transfers: () => runtime.runPromise(transferService.list),
      aae: () => ({
        node: settings.id,
        partitions: aaeService.status().map((p) => {
          const c = reapingService.cutoff(p.partition)
          return {
            ...p,
            lastExchange: p.lastExchange === undefined ? null : new Date(p.lastExchange).toISOString(),
            cleanSince: Object.fromEntries(Object.entries(p.cleanSince).map(([k, v]) => [k, new Date(v).toISOString()])),
            reapBefore: Number.isFinite(c.reapBefore) ? new Date(c.reapBefore).toISOString() : null,
            reapBlocked: c.blocked ?? null
          }
        }),
        fallbacks: aaeService.fallbacks().map((f) => ({ ...f, lastExchange: f.lastExchange === undefined ? null : new Date(f.lastExchange).toISOString() })),
        reaping: {
          tombstoneGraceSeconds: live.tombstoneGraceMs / 1000,
          members: reapingService.members().map((m) => ({ id: m.id, answeredAt: m.at === undefined ? null : new Date(m.at).toISOString(), ringVersion: m.version ?? null, parked: m.parked }))
        }
      }),
      compact: () => {
        void runtime.runPromise(engineService.compact({ full: true }).pipe(
          Effect.tap((r) => Effect.logInfo(`compaction (requested): ${r === undefined ? "nothing to do" : `${r.bytesBefore} -> ${r.bytesAfter} bytes, ${r.droppedTombstones} tombstones reaped`}`)),
          Effect.catch((e) => Effect.logWarning(`requested compaction failed: ${e.message}`))
        ))
      },
      local: (key) => runtime.runPromise(Effect.gen(function*() {
        const replica = yield* Replica
        const found = yield* replica.readEncoded(key).pipe(Effect.orElseSucceed(() => undefined))
        const partition = partitionOf(key, settings.partitions)
        if (found === undefined) return { key, partition, found: false }
        return {
          key,
          partition,
          found: true,
          versions: Dvv.siblings(found.object).map((s) => ({ dot: `${s.dot.id}:${s.dot.counter}`, deleted: s.value.deleted, value: Buffer.from(s.value.value).toString("base64") }))
        }
      }))
    },
    ...(settings.enableFaultInjection ? { faults: { set: (d: ReadonlyArray<string>) => transportService.setDropped(d), get: () => transportService.getDropped() } } : {})
  })
  const engine_ = engineService
  let closing: Promise<void> | undefined
  // A node that asked to leave is done once the ring no longer has it, current or next.
  let leaving = false
  let resolveLeft: () => void = () => {}
  const left = new Promise<void>((resolve) => (resolveLeft = resolve))
  membershipService.onRing((s) => {
    if (leaving && !s.ring.members.includes(settings.id) && !s.ring.nextMembers.includes(settings.id)) resolveLeft()
  })
  return {
    app,
    left,
    applyLive: (patch) => {
      if (patch.r !== undefined) live.r = patch.r
      if (patch.w !== undefined) live.w = patch.w
      if (patch.maxValueBytes !== undefined) live.maxValueBytes = patch.maxValueBytes
      transferService.reconfigure({
        ...(patch.transferConcurrency !== undefined ? { concurrency: patch.transferConcurrency } : {}),
        ...(patch.transferBytesPerSecond !== undefined ? { bytesPerSecond: patch.transferBytesPerSecond } : {})
      })
      if (patch.aaeIntervalMs !== undefined) aaeService.reconfigure({ intervalMs: patch.aaeIntervalMs })
      if (patch.aaeWindow !== undefined) aaeService.reconfigure({ window: patch.aaeWindow ?? undefined })
      const grace = patch.compaction?.tombstoneGraceMs
      if (grace !== undefined) {
        live.tombstoneGraceMs = grace
        aaeService.reconfigure({ tombstoneGraceMs: grace })
        reapingService.reconfigure({ tombstoneGraceMs: grace })
      }
      if (patch.logLevel !== undefined) logger.level = patch.logLevel
      const c = patch.compaction
      if (c !== undefined) {
        Effect.runSync(engine_.reconfigure({
          ...(c.deadRatio !== undefined ? { compactDeadRatio: c.deadRatio } : {}),
          ...(c.deadBytes !== undefined ? { compactDeadBytes: c.deadBytes } : {}),
          ...(c.smallBytes !== undefined ? { compactSmallBytes: c.smallBytes } : {}),
          ...(c.tombstoneGraceMs !== undefined ? { tombstoneGraceMs: c.tombstoneGraceMs } : {})
        }))
      }
    },
    close: () => {
      closing ??= (async () => {
        // close() stops accepting and waits for every connection to end. A keep-alive
        // connection whose request was in flight goes idle afterwards and would hold close()
        // for the 72 s keep-alive timeout: close such connections as they go idle.
        const sweep = setInterval(() => app.server.closeIdleConnections(), 50)
        try {
          await app.close()
        } finally {
          clearInterval(sweep)
          clearInterval(fallbackTicker)
          quorumFailures.close()
        }
        await runtime.dispose()
      })()
      return closing
    }
  }
}

/** A 32-bit hash of a state's ring (current and next owners), equal on nodes that agree. */
const ringHash = (s: State.ClusterState): number =>
  crc32(JSON.stringify([s.ring.version, s.ring.owners, s.ring.next]))

/** Starts a node and resolves once it serves requests. */
export const startNode = async (settings: NodeSettings, options: StartOptions = {}): Promise<RunningNode> => {
  const node = await assembleNode(settings, options)
  try {
    await node.app.listen({ host: settings.host, port: settings.port })
  } catch (e) {
    await node.close()
    throw e
  }
  const scheme = settings.tlsCert === undefined ? "http" : "https"
  return { id: settings.id, url: `${scheme}://${settings.host}:${settings.port}`, left: node.left, applyLive: node.applyLive, close: node.close }
}

/**
 * What a node exposes on GET /metrics, in Prometheus text format (prom-client): request
 * counts and latency per operation and status, siblings and object sizes per write, and the
 * storage engine's figures read at scrape time. One registry per node, so several nodes can
 * live in one process (tests).
 */
import client from "prom-client"
import type { LogStats } from "../../engine/Log.ts"

/** The node's metrics. */
export interface Metrics {
  readonly registry: client.Registry
  /** The exposition text of one scrape: the engine's and the cluster's figures are read once for it, not once per metric. */
  scrape(): Promise<string>
  /** Records one HTTP request. */
  request(op: string, status: number, seconds: number): void
  /** Records the object a write left behind. */
  object(siblings: number, bytes: number): void
  siblingWarning(): void
  /** Records one refusal by a bound (issue 11): `limit` names it, e.g. `http_in_flight`. */
  limitHit(limit: string): void
}

/** What the cluster looks like from here, read at each scrape. */
export interface ClusterFigures {
  /** The ring version this node has adopted, a hash of its owners (do nodes agree?), and whether it is settled. */
  readonly ring?: { readonly version: number; readonly hash: number; readonly settled: boolean }
  /** Failure detector phi per peer. */
  readonly phi?: ReadonlyMap<string, number>
  /** Transfers this node receives now, by state, and the records they brought so far. */
  readonly transfers?: { readonly running: number; readonly stalled: number; readonly keys: number }
  /** The coordinator's counters. */
  readonly coordinator?: { readonly fallbackWrites: number; readonly readRepairs: number; readonly forwardedWrites: number; readonly quorumFailures: { readonly get: number; readonly put: number } }
  readonly parked: ReadonlyMap<string, number>
  readonly members: ReadonlyArray<string>
  /** Anti-entropy per partition this node is a primary of (AntiEntropy.status), and whether reaping waits. */
  readonly aae?: ReadonlyArray<PartitionFigures>
  /** Pushes of parked writes to the primaries, per partition parked here (AntiEntropy.fallbacks). */
  readonly aaeFallbacks?: ReadonlyArray<{ readonly partition: number; readonly exchanges: number; readonly keysRepaired: number }>
  /** Refusals counted elsewhere (the transport's bounds), by limit name, since the node started. */
  readonly limits?: Readonly<Record<string, number>>
}

/** One partition's anti-entropy figures; counts are totals since the node started. */
export interface PartitionFigures {
  readonly partition: number
  /** When the last exchange ended (ms since the epoch). */
  readonly lastExchange: number | undefined
  readonly exchanges: number
  readonly keysCompared: number
  readonly keysRepaired: number
  readonly bytes: number
  /** Whether its tombstones may not be reaped now (Reaping.ts says why on /admin/aae). */
  readonly reapBlocked?: boolean
}

/** Creates a node's metrics; `engineStats` and `cluster` are read at each scrape. */
export const makeMetrics = (readEngine: () => LogStats, readCluster?: () => ClusterFigures): Metrics => {
  // A dozen collectors read these figures; computing the cluster's walks every partition's
  // tree (AntiEntropy.status), so one scrape reads them once and every collector shares it.
  let scraping = 0
  let snapshot: { engine?: LogStats; cluster?: ClusterFigures } = {}
  const engineStats = (): LogStats => scraping > 0 ? (snapshot.engine ??= readEngine()) : readEngine()
  const cluster = readCluster === undefined ? undefined : (): ClusterFigures => scraping > 0 ? (snapshot.cluster ??= readCluster()) : readCluster()
  const registry = new client.Registry()
  client.collectDefaultMetrics({ register: registry })
  const requests = new client.Counter({ name: "tally_http_requests_total", help: "HTTP requests by operation and status", labelNames: ["op", "status"], registers: [registry] })
  const latency = new client.Histogram({
    name: "tally_http_request_duration_seconds",
    help: "HTTP request latency by operation and status",
    labelNames: ["op", "status"],
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [registry]
  })
  const siblings = new client.Histogram({ name: "tally_object_siblings", help: "Siblings of an object after a write", buckets: [1, 2, 3, 5, 10, 25, 50, 100], registers: [registry] })
  const sizes = new client.Histogram({ name: "tally_object_bytes", help: "Encoded size of an object after a write", buckets: [256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216], registers: [registry] })
  const warnings = new client.Counter({ name: "tally_sibling_warnings_total", help: "Writes that left a key at or above the sibling warning threshold", registers: [registry] })
  const gauge = (name: string, help: string, read: (s: LogStats) => number) =>
    new client.Gauge({ name, help, registers: [registry], collect() { this.set(read(engineStats())) } })
  const counter = (name: string, help: string, read: (s: LogStats) => number) =>
    new client.Counter({ name, help, registers: [registry], collect() { this.reset(); this.inc(read(engineStats())) } })
  gauge("tally_engine_keys", "Keys in the index (tombstones included)", (s) => s.keys)
  gauge("tally_engine_segments", "Segment files", (s) => s.segments)
  gauge("tally_engine_bytes", "Bytes in segment files", (s) => s.bytes)
  gauge("tally_engine_dead_bytes", "Bytes of superseded records, reclaimable by compaction", (s) => s.deadBytes)
  gauge("tally_engine_last_lsn", "Highest committed log sequence number", (s) => s.lastLsn)
  gauge("tally_engine_startup_seconds", "Time the last start-up took to rebuild the index", (s) => s.startupMs / 1000)
  counter("tally_engine_compactions_total", "Compactions completed", (s) => s.compactions)
  counter("tally_engine_reclaimed_bytes_total", "Bytes reclaimed by compaction", (s) => s.reclaimedBytes)
  counter("tally_engine_fsyncs_total", "fdatasync calls on the active segment", (s) => s.fsyncs)
  counter("tally_engine_fsync_seconds_total", "Time spent in fdatasync", (s) => s.fsyncSeconds)
  counter("tally_engine_batches_total", "Group-commit batches written", (s) => s.batches)
  counter("tally_engine_records_total", "Records written", (s) => s.records)
  counter("tally_engine_corruptions_total", "Damaged records or ranges found", (s) => s.corruptions)
  gauge("tally_engine_failed", "1 once storage stopped taking writes after an I/O failure it cannot undo (fsync, write, compaction commit); a restart recovers", (s) => s.failed)
  counter("tally_engine_overloaded_total", "Writes refused because too many bytes were waiting for the disk", (s) => s.overloaded)
  counter("tally_engine_dropped_tombstones_total", "Tombstones reaped by compaction", (s) => s.droppedTombstones)
  if (cluster !== undefined) {
    new client.Gauge({
      name: "tally_handoff_parked",
      help: "Writes parked on this node for an unreachable owner, per target",
      labelNames: ["target"],
      registers: [registry],
      collect() {
        this.reset()
        for (const [target, n] of cluster().parked) this.set({ target }, n)
      }
    })
    new client.Gauge({
      name: "tally_cluster_members",
      help: "Members by status as this node sees them",
      labelNames: ["status"],
      registers: [registry],
      collect() {
        this.reset()
        const counts = new Map<string, number>()
        for (const s of cluster().members) counts.set(s, (counts.get(s) ?? 0) + 1)
        for (const status of ["up", "suspect", "down", "joining", "leaving"]) this.set({ status }, counts.get(status) ?? 0)
      }
    })
  }
  if (cluster !== undefined) {
    const g = (name: string, help: string, read: (c: ClusterFigures) => number | undefined) =>
      new client.Gauge({ name, help, registers: [registry], collect() { const v = read(cluster()); if (v !== undefined) this.set(v) } })
    g("tally_ring_version", "Ring version this node has adopted", (c) => c.ring?.version)
    g("tally_ring_hash", "Hash of the ring's current and next owners: equal on every node once gossip has converged", (c) => c.ring?.hash)
    g("tally_ring_settled", "1 when nothing is moving and no membership request is pending", (c) => (c.ring === undefined ? undefined : c.ring.settled ? 1 : 0))
    g("tally_transfers_running", "Partition transfers this node is receiving", (c) => c.transfers?.running)
    g("tally_transfers_stalled", "Transfers to this node with no progress for 60 s", (c) => c.transfers?.stalled)
    g("tally_transfer_keys_received", "Records the running transfers to this node have brought", (c) => c.transfers?.keys)
    const cc = (name: string, help: string, read: (c: NonNullable<ClusterFigures["coordinator"]>) => number) =>
      new client.Counter({ name, help, registers: [registry], collect() { const v = cluster().coordinator; if (v !== undefined) { this.reset(); this.inc(read(v)) } } })
    cc("tally_fallback_writes_total", "Replica copies sent to a fallback or parked here (sloppy quorum)", (c) => c.fallbackWrites)
    cc("tally_read_repairs_total", "Replicas repaired by reads", (c) => c.readRepairs)
    cc("tally_forwarded_writes_total", "Client writes forwarded to a primary", (c) => c.forwardedWrites)
    new client.Counter({
      name: "tally_quorum_failures_total",
      help: "Requests that missed their quorum (503 quorum_not_met or 504 timeout), by operation",
      labelNames: ["op"],
      registers: [registry],
      collect() {
        const v = cluster().coordinator
        if (v === undefined) return
        this.reset()
        this.inc({ op: "get" }, v.quorumFailures.get)
        this.inc({ op: "put" }, v.quorumFailures.put)
      }
    })
    // One list per scrape for the six per-partition metrics: it walks every partition's tree.
    let partitionsAt = -Infinity
    let partitions: ReadonlyArray<PartitionFigures> = []
    const partitionFigures = () => {
      const t = performance.now()
      if (t - partitionsAt > 500) {
        partitions = cluster().aae ?? []
        partitionsAt = t
      }
      return partitions
    }
    const perPartition = (kind: "gauge" | "counter", name: string, help: string, read: (p: PartitionFigures) => number | undefined) => {
      const collect = function(this: client.Gauge | client.Counter) {
        this.reset()
        for (const p of partitionFigures()) {
          const v = read(p)
          if (v === undefined) continue
          if (this instanceof client.Gauge) this.set({ partition: String(p.partition) }, v)
          else this.inc({ partition: String(p.partition) }, v)
        }
      }
      const spec = { name, help, labelNames: ["partition"], registers: [registry], collect }
      return kind === "gauge" ? new client.Gauge(spec) : new client.Counter(spec)
    }
    perPartition("gauge", "tally_aae_last_exchange_seconds", "When the last anti-entropy exchange of the partition ended, Unix time", (p) => (p.lastExchange === undefined ? undefined : p.lastExchange / 1000))
    perPartition("counter", "tally_aae_exchanges_total", "Anti-entropy exchanges of the partition this node started", (p) => p.exchanges)
    perPartition("counter", "tally_aae_keys_compared_total", "Keys whose versions anti-entropy compared, per partition", (p) => p.keysCompared)
    perPartition("counter", "tally_aae_keys_repaired_total", "Keys anti-entropy repaired, per partition", (p) => p.keysRepaired)
    perPartition("counter", "tally_aae_exchange_bytes_total", "Bytes anti-entropy exchanges sent and received, per partition", (p) => p.bytes)
    perPartition("gauge", "tally_aae_reap_blocked", "1 while the partition's tombstones may not be reaped (GET /admin/aae says why)", (p) => (p.reapBlocked === undefined ? undefined : p.reapBlocked ? 1 : 0))
    const perFallback = (name: string, help: string, read: (f: NonNullable<ClusterFigures["aaeFallbacks"]>[number]) => number) =>
      new client.Counter({
        name, help, labelNames: ["partition"], registers: [registry],
        collect() {
          this.reset()
          for (const f of cluster().aaeFallbacks ?? []) this.inc({ partition: String(f.partition) }, read(f))
        }
      })
    perFallback("tally_aae_fallback_pushes_total", "Exchanges in which this node, a fallback, compared its parked writes of the partition with a primary", (f) => f.exchanges)
    perFallback("tally_aae_fallback_keys_pushed_total", "Parked writes of the partition this node pushed to a primary that lacked them", (f) => f.keysRepaired)
    new client.Gauge({
      name: "tally_peer_phi",
      help: "Failure detector phi per peer (at 5: suspect, at 8: down)",
      labelNames: ["peer"],
      registers: [registry],
      collect() {
        this.reset()
        for (const [peer, phi] of cluster().phi ?? []) this.set({ peer }, Number.isFinite(phi) ? phi : 1e6)
      }
    })
  }
  const hits = new Map<string, number>()
  new client.Counter({
    name: "tally_limit_hits_total",
    help: "Requests, connections or frames refused by a bound (--max-requests-in-flight, --max-inbound-connections, frame sizes, read repairs), by limit",
    labelNames: ["limit"],
    registers: [registry],
    collect() {
      this.reset()
      const all = new Map(hits)
      for (const [k, v] of Object.entries(cluster?.().limits ?? {})) all.set(k, (all.get(k) ?? 0) + v)
      for (const [limit, n] of all) this.inc({ limit }, n)
    }
  })
  const children = new Map<string, { count: client.Counter.Internal; time: client.Histogram.Internal<"op" | "status"> }>()
  return {
    registry,
    scrape: async () => {
      if (scraping++ === 0) snapshot = {}
      try {
        return await registry.metrics()
      } finally {
        if (--scraping === 0) snapshot = {}
      }
    },
    request: (op, status, seconds) => {
      // Label lookups hash their labels on every call: keep the children per (op, status).
      const k = `${op} ${status}`
      let c = children.get(k)
      if (c === undefined) {
        const labels = { op, status: String(status) }
        c = { count: requests.labels(labels), time: latency.labels(labels) }
        children.set(k, c)
      }
      c.count.inc()
      c.time.observe(seconds)
    },
    object: (n, bytes) => {
      siblings.observe(n)
      sizes.observe(bytes)
    },
    siblingWarning: () => warnings.inc(),
    limitHit: (limit) => void hits.set(limit, (hits.get(limit) ?? 0) + 1)
  }
}

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
  /** Records one HTTP request. */
  request(op: string, status: number, seconds: number): void
  /** Records the object a write left behind. */
  object(siblings: number, bytes: number): void
  siblingWarning(): void
}

/** What the cluster looks like from here, read at each scrape. */
export interface ClusterFigures {
  readonly parked: ReadonlyMap<string, number>
  readonly members: ReadonlyArray<string>
}

/** Creates a node's metrics; `engineStats` and `cluster` are read at each scrape. */
export const makeMetrics = (engineStats: () => LogStats, cluster?: () => ClusterFigures): Metrics => {
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
        for (const status of ["up", "suspect", "down", "leaving"]) this.set({ status }, counts.get(status) ?? 0)
      }
    })
  }
  const children = new Map<string, { count: client.Counter.Internal; time: client.Histogram.Internal<"op" | "status"> }>()
  return {
    registry,
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
    siblingWarning: () => warnings.inc()
  }
}

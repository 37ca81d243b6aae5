/** An in-process node on an in-memory engine, for fastify.inject tests. */
import { Writable } from "node:stream"
import type { NodeSettings } from "../../src/config/Settings.ts"
import { assembleNode } from "../../src/node/Node.ts"

export const testSettings = (over: Partial<NodeSettings> = {}): NodeSettings => ({
  id: "test-node",
  host: "127.0.0.1",
  port: 0,
  clusterPort: 0,
  data: "/data",
  seeds: [],
  n: 3,
  r: 2,
  w: 2,
  partitions: 64,
  fsync: "batch",
  maxValueBytes: 1024 * 1024,
  logLevel: "silent",
  enableFaultInjection: false,
  config: undefined,
  compaction: { deadRatio: 0.4, deadBytes: 32 << 20, smallBytes: 4 << 20, intervalMs: 0, tombstoneGraceMs: 86_400_000 },
  ...over
})

/** A sink for logs a test does not read. */
export const quiet = () => new Writable({ write: (_c, _e, cb) => cb() })

export const testNode = (over: Partial<NodeSettings> = {}) => assembleNode(testSettings(over), { memory: true, logStream: quiet() })

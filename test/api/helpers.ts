/** An in-process node on an in-memory engine, for fastify.inject tests. */
import { Writable } from "node:stream"
import { DEFAULTS, type NodeSettings } from "../../src/config/Settings.ts"
import { assembleNode } from "../../src/node/Node.ts"

export const testSettings = (over: Partial<NodeSettings> = {}): NodeSettings => ({
  ...DEFAULTS,
  id: "test-node",
  port: 0,
  clusterPort: 0,
  data: "/data",
  logLevel: "silent",
  config: undefined,
  compaction: { ...DEFAULTS.compaction, intervalMs: 0 },
  ...over
})

/** A sink for logs a test does not read. */
export const quiet = () => new Writable({ write: (_c, _e, cb) => cb() })

export const testNode = (over: Partial<NodeSettings> = {}) => assembleNode(testSettings(over), { memory: true, logStream: quiet() })

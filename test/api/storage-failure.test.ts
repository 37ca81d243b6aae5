/**
 * A node whose storage failed (an fsync error) stops acknowledging writes: PUT and DELETE
 * answer 503 storage_error, /health answers 503 "degraded" with the reason, /metrics says
 * so, and reads of what was acknowledged go on.
 */
import t from "tap"
import { makeMemoryFiles } from "../../engine/Files.ts"
import { assembleNode } from "../../src/node/Node.ts"
import { quiet, testSettings } from "./helpers.ts"

t.test("an fsync failure: writes 503 storage_error, /health 503 degraded, reads served", async (t) => {
  const files = makeMemoryFiles()
  const node = await assembleNode(testSettings({ n: 1, r: 1, w: 1 }), { memory: true, engineFiles: files, logStream: quiet() })
  t.teardown(() => node.close())
  const ok = await node.app.inject({ method: "PUT", url: "/kv/kept", payload: "v1" })
  t.equal(ok.statusCode, 204)
  t.equal((await node.app.inject({ method: "GET", url: "/health" })).statusCode, 200)
  files.inject({ op: "datasync", path: /\.seg$/, times: 1000 })
  const failed = await node.app.inject({ method: "PUT", url: "/kv/lost", payload: "v2" })
  t.equal(failed.statusCode, 503)
  t.equal(failed.json().error, "storage_error")
  files.clearFaults()
  const later = await node.app.inject({ method: "DELETE", url: "/kv/kept" })
  t.equal(later.statusCode, 503, "later writes are refused although the disk would take them")
  t.equal(later.json().error, "storage_error")
  const health = await node.app.inject({ method: "GET", url: "/health" })
  t.equal(health.statusCode, 503)
  t.equal(health.json().status, "degraded")
  t.match(health.json().reason, /fsync/)
  const metrics = await node.app.inject({ method: "GET", url: "/metrics" })
  t.match(metrics.body, /^tally_engine_failed 1$/m)
  const read = await node.app.inject({ method: "GET", url: "/kv/kept" })
  t.equal(read.statusCode, 200, "acknowledged data is still served")
  t.equal(read.body, "v1")
})

/**
 * A power cut right after a node's first start keeps its data directory. The directory is
 * made by whichever service opens first (membership, before the engine); if its entry in the
 * parent is not synced, a power loss drops the directory and every file in it, acknowledged
 * writes and parked hints included, however carefully each file was synced. The simulator
 * found it (seed 5071: a crashed fallback came back with no handoff directory, and the
 * writes it had parked were lost).
 */
import { Writable } from "node:stream"
import t from "tap"
import { makeMemoryFiles } from "../../engine/Files.ts"
import { assembleNode } from "../../src/node/Node.ts"
import { testSettings } from "../api/helpers.ts"

const quiet = () => new Writable({ write: (_c, _e, cb) => cb() })

t.test("a power cut after the first start keeps the data directory and the acknowledged writes in it", async (t) => {
  const disk = makeMemoryFiles()
  const data = "/data/fresh/p1"
  const node = await assembleNode(testSettings({ id: "p1", data, fsync: "always" }), { files: disk, logStream: quiet() })
  for (let i = 0; i < 5; i++) t.equal((await node.app.inject({ method: "PUT", url: `/kv/k${i}`, payload: `v${i}` })).statusCode, 204)
  // A clean stop syncs every file it wrote, but not the directory entries above the data
  // directory; then a power loss keeps only what was synced, names included.
  await node.close()
  disk.crash()
  t.ok(disk.exists(data), "the data directory survived")
  t.ok(disk.exists(`${data}/cluster.json`), "and the membership state in it")
  const again = await assembleNode(testSettings({ id: "p1", data, fsync: "always" }), { files: disk, logStream: quiet() })
  t.teardown(() => again.close())
  for (let i = 0; i < 5; i++) {
    const r = await again.app.inject({ method: "GET", url: `/kv/k${i}` })
    t.equal(r.statusCode, 200, `k${i} is still there`)
    t.equal(r.body, `v${i}`)
  }
})

/**
 * Local amnesia (Riak's kv679), black-box through the HTTP API with real processes: a node
 * that comes back with an empty data directory, or with an old copy of it, must not mint
 * version counters its peers have already seen; writes through it must survive.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import t from "tap"
import { get, put, startCluster } from "./harness.ts"

const KEYS = 30

t.test("writes through a node that lost its disk, or got an old copy back, are not lost", async (t) => {
  const root = t.testdir()
  const c = await startCluster(root, 3, { basePort: 10000 + Math.floor(Math.random() * 800) * 4 })
  t.teardown(() => c.stopAll())
  const [n1, n2, n3] = c.nodes as [typeof c.nodes[0], typeof c.nodes[0], typeof c.nodes[0]]
  const keys = Array.from({ length: KEYS }, (_, i) => `amnesia-${i}`)
  const write = async (round: string) => {
    for (const k of keys) t.equal((await put(n2, k, `${round}-${k}`, "?w=3")).status, 204, `${round}: ${k} acknowledged by all three`)
  }
  const survives = async (round: string) => {
    let lost = 0
    for (const k of keys) {
      const r = await get(n3, k, "?r=3")
      if (!r.values.includes(`${round}-${k}`)) lost++
    }
    t.equal(lost, 0, `${round}: ${KEYS - lost} of ${KEYS} acknowledged writes read back from another node`)
  }
  await write("before")
  // 1. The disk is lost: same id, empty directory.
  await c.kill(n2)
  fs.rmSync(path.join(root, "n2"), { recursive: true, force: true })
  await c.start(n2)
  await write("after-wipe")
  await survives("after-wipe")
  // 2. An old copy of the directory is restored over a newer one.
  await c.kill(n2, "SIGTERM")
  fs.cpSync(path.join(root, "n2"), path.join(root, "n2-copy"), { recursive: true })
  await c.start(n2)
  await write("newer")
  await c.kill(n2)
  fs.rmSync(path.join(root, "n2"), { recursive: true, force: true })
  fs.renameSync(path.join(root, "n2-copy"), path.join(root, "n2"))
  await c.start(n2)
  await write("after-restore")
  await survives("after-restore")
  void n1
})

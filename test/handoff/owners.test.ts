/**
 * Issue 11, hostile peers: a hinted copy ("put" with `hint`) is parked only for a member of
 * the receiving node's ring. One for an invented owner is answered `bad_request` (an apierr
 * reply: the connection stays open), counted, and creates no parked log under
 * <data>/handoff/; one for a real member is still parked.
 */
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { Effect, Exit, ManagedRuntime } from "effect"
import t from "tap"
import { assembleNode } from "../../src/node/Node.ts"
import { MemoryNetwork, Transport } from "../../src/transport/Transport.ts"
import * as Dvv from "../../src/versions/Dvv.ts"
import { encodeObject } from "../../src/versions/Sibling.ts"
import { quiet, testSettings } from "../api/helpers.ts"

const CLUSTER = { n: 3, partitions: 64 }

t.test("a hint for an owner that is not a ring member is refused and parks nothing; one for a member is parked", async (t) => {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), "tally-hint-owners-"))
  t.teardown(() => fs.rmSync(base, { recursive: true, force: true }))
  const data = path.join(base, "m1")
  const network = new MemoryNetwork()
  const node = await assembleNode(testSettings({ id: "m1", data }), { network, logStream: quiet() })
  t.teardown(() => node.close())
  t.equal((await node.app.inject({ method: "GET", url: "/health" })).statusCode, 200, "m1 is a ring member")

  const evil = ManagedRuntime.make(Transport.layerMemory(network, { nodeId: "evil", cluster: CLUSTER }))
  t.teardown(() => evil.dispose())
  const m1 = { id: "m1", host: "memory", port: 0 }
  const ask = (m: unknown) => evil.runPromise(Effect.exit(Effect.gen(function*() {
    return yield* (yield* Transport).request(m1, m, 1000)
  })))
  const sibling = { value: Buffer.from("x"), contentType: "text/plain", lastModified: 1, deleted: false }
  const object = encodeObject(Dvv.update(Dvv.empty(), new Map(), "evil", sibling))
  const handoffDir = path.join(data, "handoff")
  const parkedLogs = () => fs.readdirSync(handoffDir).filter((d) => !d.startsWith("."))

  for (const owner of ["ghost", "evil", "m2", "x".repeat(64)]) {
    const exit = await ask({ t: "put", key: `k-${owner.slice(0, 8)}`, object, hint: owner })
    t.ok(Exit.isSuccess(exit), `${owner.slice(0, 8)}: answered, not a transport failure`)
    const reply = Exit.isSuccess(exit) ? exit.value as { t: string; code?: string } : undefined
    t.equal(reply?.t, "apierr", `${owner.slice(0, 8)}: refused`)
    t.equal(reply?.code, "bad_request", `${owner.slice(0, 8)}: with bad_request`)
    t.notOk(fs.existsSync(path.join(handoffDir, owner)), `${owner.slice(0, 8)}: no parked log directory`)
  }
  t.same(parkedLogs(), [], "nothing parked for any invented owner")
  const cluster = JSON.parse((await node.app.inject({ method: "GET", url: "/admin/cluster" })).body)
  t.same(cluster.nodes.map((m: { id: string }) => m.id), ["m1"], "the ring is unchanged")
  const metrics = (await node.app.inject({ method: "GET", url: "/metrics" })).body
  t.match(metrics, /^tally_limit_hits_total\{limit="hints_unknown_owner"\} 4$/m, "every refused hint is counted on /metrics")

  // The same connection still serves: a legitimate hint, for a real member, is parked.
  const ok = await ask({ t: "put", key: "legit", object, hint: "m1" })
  t.ok(Exit.isSuccess(ok) && (ok.value as { t: string }).t === "ok", "a hint for a ring member is accepted")
  t.same(parkedLogs(), ["m1"], "and parked under its owner")
  const read = await ask({ t: "get", key: "legit", hint: "m1" })
  t.ok(Exit.isSuccess(read) && (read.value as { object: unknown }).object instanceof Uint8Array, "and reads back from the parked log")
})

/**
 * Every internode message is checked before it is acted on (issue 11): for each kind, a
 * hostile variant is refused with code "hostile" and changes nothing (the node's cluster view
 * and stored keys are the same, and it restarts from its cluster.json); on TCP the refusal
 * closes the connection, so the sender must reconnect and say hello again.
 */
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { Effect, Exit, ManagedRuntime } from "effect"
import t from "tap"
import { stateProblem } from "../../src/membership/ClusterState.ts"
import { assembleNode } from "../../src/node/Node.ts"
import { helloProblem } from "../../src/transport/Frame.ts"
import { HostileMessage, MemoryNetwork, Transport, type TransportError } from "../../src/transport/Transport.ts"
import * as Dvv from "../../src/versions/Dvv.ts"
import { encodeObject } from "../../src/versions/Sibling.ts"
import { run, startTcp } from "../transport/helpers.ts"
import { quiet, testSettings } from "../api/helpers.ts"

const CLUSTER = { n: 3, partitions: 64 }

t.test("hostile messages of every kind are refused and change nothing; the node restarts from its state", async (t) => {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), "tally-messages-"))
  t.teardown(() => fs.rmSync(base, { recursive: true, force: true }))
  const data = path.join(base, "m1")
  const network = new MemoryNetwork()
  const settings = testSettings({ id: "m1", data })
  let node = await assembleNode(settings, { network, logStream: quiet() })
  t.teardown(() => node.close())
  for (const k of ["a", "b"]) t.equal((await node.app.inject({ method: "PUT", url: `/kv/${k}`, payload: k })).statusCode, 204)
  const view = async () => (await node.app.inject({ method: "GET", url: "/admin/cluster" })).body
  const keys = async () => Promise.all(["a", "b"].map(async (k) => (await node.app.inject({ method: "GET", url: `/kv/${k}` })).body))
  const before = [await view(), await keys()]

  const evil = ManagedRuntime.make(Transport.layerMemory(network, { nodeId: "evil", cluster: CLUSTER }))
  t.teardown(() => evil.dispose())
  const m1 = { id: "m1", host: "memory", port: 0 }
  const ask = (m: unknown) => evil.runPromise(Effect.exit(Effect.gen(function*() {
    return yield* (yield* Transport).request(m1, m, 1000)
  })))
  // A good state to spoil: the node's own, as gossip returns it.
  const good = await ask({ t: "gossip", state: { ...JSON.parse(fs.readFileSync(path.join(data, "cluster.json"), "utf8")) } })
  t.ok(Exit.isSuccess(good), "a well-formed gossip is answered")
  const state = (good as Exit.Success<{ state: Record<string, any> }, unknown>).value.state
  const member = { id: "evil", host: "10.0.0.9", port: 9000, clusterPort: 10000, incarnation: 1 }
  const sibling = { value: Buffer.from("x"), contentType: "text/plain", lastModified: 1, deleted: false }
  const object = encodeObject(Dvv.update(Dvv.empty(), new Map(), "evil", sibling))
  const hostile: Array<[string, unknown]> = [
    ["gossip: a member without port or incarnation", { t: "gossip", state: { ...state, members: [...state.members, { id: "evil", host: "h", clusterPort: 1 }] } }],
    ["gossip: a member with port 70000", { t: "gossip", state: { ...state, members: [...state.members, { ...member, port: 70000 }] } }],
    ["gossip: a member id of ..", { t: "gossip", state: { ...state, members: [...state.members, { ...member, id: ".." }] } }],
    ["gossip: a ring member with no address", { t: "gossip", state: { ...state, ring: { ...state.ring, version: state.ring.version + 1, members: [...state.ring.members, "ghost"], nextMembers: [...state.ring.nextMembers, "ghost"] } } }],
    ["gossip: an owner that is not a ring member", { t: "gossip", state: { ...state, members: [...state.members, member], ring: { ...state.ring, version: state.ring.version + 1, owners: state.ring.owners.map(() => "evil") } } }],
    ["gossip: another N", { t: "gossip", state: { ...state, n: 5 } }],
    ["gossip: a join request for a path", { t: "gossip", state: { ...state, requests: [{ id: "r", kind: "join", node: "../x" }] } }],
    ["gossip: a negative ring version", { t: "gossip", state: { ...state, ring: { ...state.ring, version: -1 } } }],
    ["gossip: not a state", { t: "gossip", state: "x" }],
    ["join: as another node", { t: "join", member: { ...member, id: "m2" } }],
    ["join: without an incarnation", { t: "join", member: { id: "evil", host: "h", port: 1, clusterPort: 2 } }],
    ["join: a host with a slash", { t: "join", member: { ...member, host: "a/b" } }],
    ["put: a hint of ..", { t: "put", key: "z", object, hint: ".." }],
    ["put: an empty key", { t: "put", key: "", object }],
    ["get: a hint that is a path", { t: "get", key: "a", hint: "../../x" }],
    ["coord: w of 0", { t: "coord", key: "a", context: "", sibling: new Uint8Array(1), w: 0, sloppy: true, timeoutMs: 100 }],
    ["coord: a negative timeout", { t: "coord", key: "a", context: "", sibling: new Uint8Array(1), w: 1, sloppy: true, timeoutMs: -1 }],
    ["handoff: a key of 2000 characters", { t: "handoff", records: [{ key: "k".repeat(2000), object }] }],
    ["xfer-keys: a limit of 0", { t: "xfer-keys", partition: 0, after: null, limit: 0 }],
    ["xfer-keys: an after of 10,000 characters", { t: "xfer-keys", partition: 0, after: "k".repeat(10_000), limit: 10 }],
    ["aae-branches: a partition out of range", { t: "aae-branches", partition: 1e9, root: 1 }],
    ["unknown kind", { t: "drop-table" }],
    ["not an object", 42]
  ]
  for (const [what, m] of hostile) {
    const exit = await ask(m)
    const e = Exit.isFailure(exit) ? (exit.cause.reasons.find((r) => r._tag === "Fail") as { error?: TransportError } | undefined)?.error : undefined
    t.equal(e?.remoteCode, "hostile", `${what}: refused as hostile`)
  }
  t.same([await view(), await keys()], before, "the cluster view and every key are unchanged")
  const stored = JSON.parse(fs.readFileSync(path.join(data, "cluster.json"), "utf8"))
  t.equal(stateProblem(stored, CLUSTER, Dvv.NODE_ID), undefined, "cluster.json holds a well-formed state")
  t.notOk(JSON.stringify(stored).includes("evil"), "nothing of the hostile messages in it")
  await node.close()
  node = await assembleNode(settings, { network, logStream: quiet() })
  t.equal((await node.app.inject({ method: "GET", url: "/kv/a" })).body, "a", "the node restarts from its cluster.json and serves")
})

t.test("a hello naming no node id is refused", async (t) => {
  for (const from of ["..", ".", "a/b", "", "x".repeat(65)]) {
    t.match(helloProblem({ nodeId: "b", cluster: CLUSTER }, { k: "hello", id: 0, from, cluster: CLUSTER, version: 1 }), /is not a node id/, JSON.stringify(from))
  }
  t.equal(helloProblem({ nodeId: "b", cluster: CLUSTER }, { k: "hello", id: 0, from: "a", cluster: CLUSTER, version: 1 }), undefined)
})

t.test("on TCP a hostile message closes its connection; the sender reconnects to be heard again", async (t) => {
  const b = await startTcp(t, { nodeId: "b" })
  await b.serve((_from, p) => (p === "bad" ? Effect.fail(new HostileMessage({ message: "a test refusal" })) : Effect.succeed(p)))
  const a = await startTcp(t, { nodeId: "a" })
  t.equal(await run(a.api.request(b.api.self, "good", 2000)), "good")
  t.equal(b.api.stats().inbound, 1)
  const refused = await Effect.runPromise(Effect.flip(a.api.request(b.api.self, "bad", 2000)))
  t.equal(refused.remoteCode, "hostile")
  for (let i = 0; i < 50 && b.api.stats().inbound > 0; i++) await new Promise((r) => setTimeout(r, 50))
  t.equal(b.api.stats().inbound, 0, "the connection was closed")
  t.equal(b.api.stats().limits?.internode_hostile_messages, 1, "and counted")
  let answer: unknown
  for (let i = 0; i < 40 && answer !== "again"; i++) {
    answer = await Effect.runPromise(a.api.request(b.api.self, "again", 2000).pipe(Effect.orElseSucceed(() => undefined)))
    if (answer !== "again") await new Promise((r) => setTimeout(r, 50))
  }
  t.equal(answer, "again", "a new connection is served")
})

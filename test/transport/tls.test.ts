import * as net from "node:net"
import * as tls from "node:tls"
import t from "tap"
import { encodeFrame, hello } from "../../src/transport/Frame.ts"
import * as Tls from "../../src/transport/Tls.ts"
import { CLUSTER, failure, run, sleep, startTcp, testHandler, waitFor } from "./helpers.ts"

const SECRET = "correct horse battery staple"
const OTHER = "another cluster's secret, 32 b"

t.test("two transports with the same secret talk over TLS 1.3 PSK, both ways", async (t) => {
  const key = Tls.fromSecrets([SECRET])
  const a = await startTcp(t, { nodeId: "a", tls: key })
  const b = await startTcp(t, { nodeId: "b", tls: key })
  const seen: Array<{ from: string; payload: unknown }> = []
  await b.serve(testHandler(seen))
  await a.serve(testHandler())
  t.match(await run(a.api.request(b.api.self, { echo: "x" }, 2000)), { from: "a", echo: "x" })
  t.match(await run(b.api.request(a.api.self, { echo: "y" }, 2000)), { from: "b", echo: "y" })
  await run(a.api.send(b.api.self, { echo: "one-way" }))
  await waitFor("one-way delivery", () => seen.some((s) => (s.payload as { echo?: string }).echo === "one-way"))

  // The port really speaks TLS 1.3 with the PSK, and a TLS client without it gets nowhere.
  const protocol = await new Promise<string | null>((resolve, reject) => {
    const s = tls.connect({ host: "127.0.0.1", port: b.api.self.port, ...Tls.connectOptions(key) }, () => {
      resolve(s.getProtocol())
      s.destroy()
    })
    s.on("error", reject)
  })
  t.equal(protocol, "TLSv1.3")
})

t.test("another secret fails the handshake: refused, and its handler never runs", async (t) => {
  const a = await startTcp(t, { nodeId: "a", tls: Tls.fromSecrets([OTHER]) })
  const b = await startTcp(t, { nodeId: "b", tls: Tls.fromSecrets([SECRET]) })
  const seen: Array<{ from: string; payload: unknown }> = []
  await b.serve(testHandler(seen))
  const e = await failure(a.api.request(b.api.self, { echo: 1 }, 2000))
  t.equal(e.reason, "refused")
  t.match(e.message, /TLS handshake/)
  await run(a.api.send(b.api.self, { echo: "one-way" })).catch(() => {})
  await sleep(200)
  t.same(seen, [], "nothing reached b's handler")
  t.equal(b.api.stats().inbound, 0, "no connection accepted")
  await waitFor("b's warning", () => b.logs.some((l) => /TLS handshake failed/.test(l)))

  // A node without any secret is refused the same way, and cannot be reached by one with it.
  const plain = await startTcp(t, { nodeId: "p" })
  await plain.serve(testHandler(seen))
  t.not((await failure(plain.api.request(b.api.self, { echo: 2 }, 2000))).reason, "timeout")
  t.not((await failure(b.api.request(plain.api.self, { echo: 3 }, 2000))).reason, "timeout")
  t.same(seen, [], "no handler ran on either side")
})

t.test("a plaintext client sending well-formed frames to a secured port gets nothing parsed", async (t) => {
  const b = await startTcp(t, { nodeId: "b", tls: Tls.fromSecrets([SECRET]) })
  const seen: Array<{ from: string; payload: unknown }> = []
  await b.serve(testHandler(seen))
  const received: Buffer[] = []
  await new Promise<void>((resolve) => {
    const s = net.connect({ host: "127.0.0.1", port: b.api.self.port })
    s.on("connect", () => {
      s.write(encodeFrame(hello("mallory", CLUSTER)))
      s.write(encodeFrame({ k: "req", id: 1, p: { echo: "plaintext" } }))
      s.write(encodeFrame({ k: "one", id: 2, p: { echo: "plaintext" } }))
    })
    s.on("data", (d: Buffer) => received.push(d))
    s.on("error", () => {})
    s.on("close", () => resolve())
  })
  const bytes = Buffer.concat(received)
  t.notOk(bytes.toString("latin1").includes("hello"), "no hello of ours came back")
  t.same(seen, [], "no frame reached the handler")
  t.equal(b.api.stats().inbound, 0)
  t.notOk(b.logs.some((l) => /mallory|frame before its hello/.test(l)), "the frames were never decoded")
})

t.test("the previous secret is still accepted; a node connects with its current one", async (t) => {
  const rotated = await startTcp(t, { nodeId: "r", tls: Tls.fromSecrets([OTHER, SECRET]) })
  const old = await startTcp(t, { nodeId: "o", tls: Tls.fromSecrets([SECRET]) })
  await rotated.serve(testHandler())
  await old.serve(testHandler())
  t.match(await run(old.api.request(rotated.api.self, { echo: 1 }, 2000)), { from: "o" }, "old -> rotated: the previous secret is accepted")
  t.equal((await failure(rotated.api.request(old.api.self, { echo: 2 }, 2000))).reason, "refused", "rotated -> old: the new secret is not known there yet")
  const updated = await startTcp(t, { nodeId: "u", tls: Tls.fromSecrets([SECRET, OTHER]) })
  await updated.serve(testHandler())
  t.match(await run(rotated.api.request(updated.api.self, { echo: 3 }, 2000)), { from: "r" })
  t.match(await run(updated.api.request(rotated.api.self, { echo: 4 }, 2000)), { from: "u" })
})

t.test("secret files: trimmed, at least 16 bytes, at most a current and a previous line", async (t) => {
  const same = (a: ReadonlyArray<Buffer> | string) => (typeof a === "string" ? a : a.map((b) => b.toString()))
  t.same(same(Tls.parseSecretText("s", `${SECRET}\n`)), [SECRET], "trailing newline trimmed")
  t.same(same(Tls.parseSecretText("s", `${SECRET}\r\n${OTHER}\n\n`)), [SECRET, OTHER])
  t.match(Tls.parseSecretText("s", "\n"), /cluster secret file s is empty/)
  t.match(Tls.parseSecretText("s", ""), /is empty/)
  t.match(Tls.parseSecretText("s", "short-secret\n"), /12 bytes; it needs at least 16/)
  t.match(Tls.parseSecretText("s", `${SECRET}\n${OTHER}\n${SECRET}x`), /3 secrets/)
  t.throws(() => Tls.readSecretFile("/nonexistent/secret"), /cannot read cluster secret file \/nonexistent\/secret: no such file/)
  t.not(Tls.pskKey(Buffer.from(SECRET)).psk.toString("hex"), Tls.pskKey(Buffer.from(OTHER)).psk.toString("hex"))
  t.notOk(Tls.pskKey(Buffer.from(SECRET)).identity.includes(Buffer.from(SECRET).toString("hex")), "the identity does not reveal the secret")
  t.equal(Tls.CIPHER, "TLS_AES_128_GCM_SHA256")
})

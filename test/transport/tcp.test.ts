import * as net from "node:net"
import { Effect } from "effect"
import t from "tap"
import { encodeFrame, hello } from "../../src/transport/Frame.ts"
import { Transport } from "../../src/transport/Transport.ts"
import { CLUSTER, failure, run, sleep, spawnPeer, startTcp, testHandler, timed, waitFor } from "./helpers.ts"

t.test("request and response both ways, handler errors as remote, no handler as unavailable", async (t) => {
  const a = await startTcp(t, { nodeId: "a" })
  const b = await startTcp(t, { nodeId: "b" })
  t.equal(b.api.self.id, "b")
  t.ok(b.api.self.port > 0, "a free port was bound")
  t.match((await failure(a.api.request(b.api.self, { echo: 1 }, 1000))), { reason: "remote", remoteCode: "unavailable" }, "before serve")

  const seen: Array<{ from: string; payload: unknown }> = []
  await b.serve(testHandler(seen))
  await a.serve(testHandler())
  const bytes = new Uint8Array([0, 1, 2, 255])
  const reply = (await run(a.api.request(b.api.self, { echo: { s: "é", n: -5, f: 1.5, bytes, list: [null, true] } }, 1000))) as { from: string; echo: { bytes: Uint8Array } }
  t.equal(reply.from, "a", "the handler sees the sender's node id")
  t.same(reply.echo, { s: "é", n: -5, f: 1.5, bytes, list: [null, true] })
  t.ok(reply.echo.bytes instanceof Uint8Array)
  t.equal(seen.length, 1)
  t.match(await run(b.api.request(a.api.self, { echo: "back" }, 1000)), { from: "b", echo: "back" })

  t.match(await failure(a.api.request(b.api.self, { fail: "disk_full" }, 1000)), { _tag: "TransportError", reason: "remote", remoteCode: "disk_full", peer: "b", message: "failed with disk_full" })
  const died = await failure(a.api.request(b.api.self, { die: true }, 1000))
  t.match(died, { reason: "remote", remoteCode: "defect" })
  t.notMatch(died.message, /boom/, "a defect is not described to the peer")
  t.ok(b.logs.some((l) => /handler died/.test(l) && /boom/.test(l)), "but logged where it happened")

  await run(a.api.send(b.api.self, { echo: "one-way" }))
  await waitFor("one-way delivery", () => seen.some((s) => (s.payload as { echo?: string }).echo === "one-way"))
  t.equal(a.api.stats().outbound, 1, "one connection a→b, reused")
  t.equal(b.api.stats().inbound, 1)
})

t.test("1000 concurrent requests share one connection and each gets its own answer", async (t) => {
  const a = await startTcp(t, { nodeId: "a" })
  const b = await startTcp(t, { nodeId: "b" })
  // Random delays so answers come back out of order.
  await b.serve((_from, p) => Effect.delay(Effect.succeed((p as number) * 2), Math.floor(Math.random() * 20)))
  const [answers, ms] = await timed(() =>
    run(Effect.forEach(Array.from({ length: 1000 }, (_, i) => i), (i) => a.api.request(b.api.self, i, 10_000), { concurrency: "unbounded" }))
  )
  t.same(answers, Array.from({ length: 1000 }, (_, i) => i * 2))
  t.equal(b.api.stats().inbound, 1, "one connection")
  t.equal(a.api.stats().pending, 0)
  t.ok(ms < 5000, `${ms.toFixed(0)} ms`)
})

t.test("in-flight requests per peer are bounded; the rest wait their turn", async (t) => {
  const a = await startTcp(t, { nodeId: "a", maxInFlight: 4 })
  const b = await startTcp(t, { nodeId: "b" })
  let now = 0
  let peak = 0
  await b.serve((_from, p) =>
    Effect.acquireUseRelease(
      Effect.sync(() => (peak = Math.max(peak, ++now))),
      () => Effect.delay(Effect.succeed(p), 5),
      () => Effect.sync(() => now--)
    )
  )
  const answers = await run(Effect.forEach(Array.from({ length: 40 }, (_, i) => i), (i) => a.api.request(b.api.self, i, 5000), { concurrency: "unbounded" }))
  t.same(answers, Array.from({ length: 40 }, (_, i) => i))
  t.equal(peak, 4, "never more than maxInFlight at the peer")
  // Waiting for a slot counts against the timeout.
  const slow = Effect.forEach([1, 2, 3, 4], () => a.api.request(b.api.self, { sleep: 300 }, 2000), { concurrency: "unbounded" })
  await b.serve(testHandler())
  const [late] = await Promise.all([
    sleep(20).then(() => failure(a.api.request(b.api.self, { echo: "late" }, 100))),
    run(slow)
  ])
  t.equal(late.reason, "timeout")
})

t.test("a request times out after its timeout; the connection stays usable and the late answer is ignored", async (t) => {
  const a = await startTcp(t, { nodeId: "a" })
  const b = await startTcp(t, { nodeId: "b" })
  await b.serve(testHandler())
  const [e, ms] = await timed(() => failure(a.api.request(b.api.self, { sleep: 400 }, 100)))
  t.match(e, { reason: "timeout", peer: "b" })
  t.match(e.message, /did not answer within 100 ms/)
  t.ok(ms >= 95 && ms < 350, `timed out after ${ms.toFixed(0)} ms`)
  await sleep(400)
  t.match(await run(a.api.request(b.api.self, { echo: 2 }, 1000)), { echo: 2 })
  t.equal(a.api.stats().pending, 0)
})

t.test("a peer killed mid-request fails it with unreachable at once; after a restart on the same port requests work again", async (t) => {
  const a = await startTcp(t, { nodeId: "a" })
  const peer = await spawnPeer(t, "p")
  const p = { id: "p", host: "127.0.0.1", port: peer.port }
  t.match(await run(a.api.request(p, { echo: "hi" }, 2000)), { from: "a", echo: "hi" })

  const inFlight = failure(a.api.request(p, { sleep: 5000 }, 10_000))
  await sleep(100)
  const killedAt = performance.now()
  await peer.kill()
  const e = await inFlight
  const after = performance.now() - killedAt
  t.match(e, { reason: "unreachable", peer: "p" })
  t.match(e.message, /dropped/)
  t.ok(after < 1000, `failed ${after.toFixed(0)} ms after the kill`)

  const down = await failure(a.api.request(p, { echo: 1 }, 2000))
  t.equal(down.reason, "unreachable", "while the peer is down: unreachable, not a timeout")
  const [, fast] = await timed(() => failure(a.api.request(p, { echo: 1 }, 2000)))
  t.ok(fast < 100, `fails fast while backing off (${fast.toFixed(0)} ms)`)

  await spawnPeer(t, "p", peer.port)
  let answer: unknown
  const until = Date.now() + 5000
  while (answer === undefined && Date.now() < until) {
    answer = await run(Effect.orElseSucceed(a.api.request(p, { echo: "again" }, 1000), () => undefined))
    if (answer === undefined) await sleep(25)
  }
  t.match(answer, { echo: "again" }, "reconnected")
})

t.test("nothing listening: unreachable quickly, with the address in the message", async (t) => {
  const a = await startTcp(t, { nodeId: "a" })
  const spare = await startTcp(t, { nodeId: "spare" })
  const port = spare.api.self.port
  await spare.close()
  const [e, ms] = await timed(() => failure(a.api.request({ id: "x", host: "127.0.0.1", port }, 1, 5000)))
  t.match(e, { reason: "unreachable", peer: "x" })
  t.match(e.message, new RegExp(`cannot connect to node x at 127.0.0.1:${port}.*ECONNREFUSED`))
  t.ok(ms < 1000, `${ms.toFixed(0)} ms`)
  await run(a.api.send({ id: "y", host: "127.0.0.1", port }, 1))
  t.pass("a one-way send to a peer not yet known to be down is accepted")
})

t.test("malformed bytes close only their connection; the server keeps serving others", async (t) => {
  const a = await startTcp(t, { nodeId: "a" })
  const b = await startTcp(t, { nodeId: "b" })
  await b.serve(testHandler())
  t.match(await run(a.api.request(b.api.self, { echo: 1 }, 1000)), { echo: 1 })

  const raw = (bytes: ReadonlyArray<Uint8Array>) =>
    new Promise<{ closedMs: number; received: number }>((resolve, reject) => {
      const s = net.connect({ host: "127.0.0.1", port: b.api.self.port })
      let received = 0
      const t0 = performance.now()
      s.on("data", (d) => (received += d.length))
      s.on("error", () => {})
      s.on("connect", () => {
        for (const chunk of bytes) s.write(chunk)
      })
      s.on("close", () => resolve({ closedMs: performance.now() - t0, received }))
      setTimeout(() => reject(new Error("the server did not close the connection")), 3000)
    })
  const tooLong = Buffer.from([0xff, 0xff, 0xff, 0xff])
  const notMsgpack = Buffer.from([0, 0, 0, 2, 0xc1, 0xc1])
  const helloFrame = encodeFrame(hello("raw", CLUSTER))
  const cases: Array<[string, Uint8Array[]]> = [
    ["a length over the limit", [tooLong]],
    ["a body that is not msgpack", [notMsgpack]],
    ["a request before any hello", [encodeFrame({ k: "req", id: 1, p: 1 })]],
    ["garbage after a good hello", [helloFrame, notMsgpack]],
    ["an answer frame sent to a server", [helloFrame, encodeFrame({ k: "res", id: 1, p: 1 })]]
  ]
  for (const [name, bytes] of cases) {
    const r = await raw(bytes)
    t.ok(r.closedMs < 1000, `${name}: closed after ${r.closedMs.toFixed(0)} ms`)
    t.match(await run(a.api.request(b.api.self, { echo: name }, 1000)), { echo: name }, `${name}: the server still serves a`)
  }
  t.equal(b.logs.filter((l) => /closing connection from/.test(l)).length, cases.length, "each one logged")
  t.ok(b.logs.some((l) => /malformed frame \(too_large\)/.test(l)))
  t.ok(b.logs.some((l) => /malformed frame \(not_msgpack\)/.test(l)))
  t.equal(b.api.stats().inbound, 1, "only a's connection is left")
})

t.test("a node with different cluster settings is refused with a message naming the setting", async (t) => {
  const a = await startTcp(t, { nodeId: "a" })
  const b = await startTcp(t, { nodeId: "b" })
  const c = await startTcp(t, { nodeId: "c", cluster: { n: 5, partitions: 64 } })
  const d = await startTcp(t, { nodeId: "d", cluster: { n: 3, partitions: 128 } })
  for (const x of [a, b, c, d]) await x.serve(testHandler())

  const e1 = await failure(c.api.request(b.api.self, 1, 2000))
  t.match(e1, { reason: "refused", peer: "b" })
  t.match(e1.message, /cluster setting n differs: node b has n=3, node c has n=5/)
  const e2 = await failure(a.api.request(c.api.self, 1, 2000))
  t.match(e2.message, /cluster setting n differs: node c has n=5, node a has n=3/)
  const e3 = await failure(a.api.request(d.api.self, 1, 2000))
  t.match(e3, { reason: "refused" })
  t.match(e3.message, /cluster setting partitions differs: node d has partitions=128, node a has partitions=64/)
  const again = await failure(c.api.request(b.api.self, 1, 2000))
  t.equal(again.reason, "refused", "still refused on the next try")
  t.ok(b.logs.some((l) => /refused node c/.test(l)), "the refusing side logs it")

  const wrongId = await failure(a.api.request({ id: "z", host: "127.0.0.1", port: b.api.self.port }, 1, 2000))
  t.match(wrongId, { reason: "refused" })
  t.match(wrongId.message, /expected node z at this address but found node b/)
  t.match(await run(a.api.request(b.api.self, { echo: "ok" }, 1000)), { echo: "ok" }, "matching nodes still talk")
})

t.test("setDropped: requests to a dropped peer time out, traffic from it is ignored, and un-dropping restores both", async (t) => {
  const a = await startTcp(t, { nodeId: "a" })
  const b = await startTcp(t, { nodeId: "b" })
  const seenA: Array<{ from: string; payload: unknown }> = []
  const seenB: Array<{ from: string; payload: unknown }> = []
  await a.serve(testHandler(seenA))
  await b.serve(testHandler(seenB))
  t.match(await run(a.api.request(b.api.self, { echo: 0 }, 1000)), { echo: 0 }, "connected before the fault")

  a.api.setDropped(["b"])
  t.same(a.api.getDropped(), ["b"])
  const [out, outMs] = await timed(() => failure(a.api.request(b.api.self, { echo: 1 }, 200)))
  t.match(out, { reason: "timeout", peer: "b" })
  t.ok(outMs >= 195 && outMs < 500, `a→b timed out after ${outMs.toFixed(0)} ms, not sooner, not much later`)
  const [inn, inMs] = await timed(() => failure(b.api.request(a.api.self, { echo: 2 }, 200)))
  t.match(inn, { reason: "timeout", peer: "a" }, "b→a: a ignores b's request, b sees silence")
  t.ok(inMs >= 195 && inMs < 500, `${inMs.toFixed(0)} ms`)
  await run(a.api.send(b.api.self, { echo: "lost" }))
  await sleep(50)
  t.same(seenA.filter((s) => s.from === "b"), [], "a's handler never saw b")
  t.notOk(seenB.some((s) => (s.payload as { echo?: unknown }).echo === 1 || (s.payload as { echo?: unknown }).echo === "lost"), "b never got a's messages")

  a.api.setDropped([])
  t.match(await run(a.api.request(b.api.self, { echo: 3 }, 1000)), { echo: 3 })
  t.match(await run(b.api.request(a.api.self, { echo: 4 }, 1000)), { echo: 4 })

  // A node dropped before it ever connected: the server stays silent, then greets it on un-drop.
  const c = await startTcp(t, { nodeId: "c" })
  b.api.setDropped(["c"])
  t.match(await failure(c.api.request(b.api.self, { echo: 5 }, 150)), { reason: "timeout" })
  t.equal(c.api.stats().outbound, 1, "the connection is open, just silent")
  b.api.setDropped([])
  t.match(await run(c.api.request(b.api.self, { echo: 6 }, 1000)), { echo: 6 }, "same connection, now answered")
  t.notOk(seenB.some((s) => s.from === "c" && (s.payload as { echo?: unknown }).echo === 5), "the request sent while dropped was never handled")
})

t.test("an 8 MiB payload goes both ways", async (t) => {
  const a = await startTcp(t, { nodeId: "a" })
  const b = await startTcp(t, { nodeId: "b" })
  await b.serve((_from, p) => Effect.succeed({ size: (p as Uint8Array).length, back: p }))
  const big = new Uint8Array(8 * 1024 * 1024).map((_, i) => (i * 31) & 0xff)
  const [r, ms] = await timed(() => run(a.api.request(b.api.self, big, 10_000)) as Promise<{ size: number; back: Uint8Array }>)
  t.equal(r.size, big.length)
  t.ok(Buffer.from(r.back).equals(Buffer.from(big)), `same bytes back (${ms.toFixed(0)} ms)`)
  const small = await startTcp(t, { nodeId: "s", maxFrameBytes: 1024 })
  t.match(await failure(small.api.request(b.api.self, new Uint8Array(2000), 1000)), { reason: "too_large" })
})

t.test("shutdown: pending requests fail with closed, later ones too, and the port is released", async (t) => {
  const a = await startTcp(t, { nodeId: "a" })
  const b = await startTcp(t, { nodeId: "b" })
  await b.serve(testHandler())
  const pending = failure(a.api.request(b.api.self, { sleep: 5000 }, 10_000))
  await sleep(50)
  await a.close()
  t.match(await pending, { reason: "closed" })
  t.match(await failure(a.api.request(b.api.self, 1, 1000)), { reason: "closed" })
  const port = b.api.self.port
  t.match(await failure(b.api.request(a.api.self, 1, 1000)), { reason: "unreachable" }, "a is gone: its port refuses")
  await b.close()
  const again = await startTcp(t, { nodeId: "b", port })
  t.equal(again.api.self.port, port, "the port is free again")
  const clash = await run(Effect.flip(Effect.scoped(Effect.asVoid(Effect.provide(Transport, Transport.layer({ nodeId: "x", host: "127.0.0.1", port, cluster: CLUSTER }))))))
  t.match(clash, { reason: "listen" })
  t.match(clash.message, /cannot listen on 127\.0\.0\.1:\d+.*EADDRINUSE/)
})

t.test("writes queue behind a full socket and drain in order", async (t) => {
  const a = await startTcp(t, { nodeId: "a" })
  const b = await startTcp(t, { nodeId: "b" })
  await b.serve((_from, p) => Effect.succeed({ size: (p as Uint8Array).length, first: (p as Uint8Array)[0], back: p }))
  const sizes = Array.from({ length: 32 }, (_, i) => 256 * 1024 + i)
  const answers = (await run(Effect.forEach(sizes, (n, i) => a.api.request(b.api.self, new Uint8Array(n).fill(i), 10_000), { concurrency: "unbounded" }))) as Array<{ size: number; first: number; back: Uint8Array }>
  t.same(answers.map((x) => [x.size, x.first]), sizes.map((n, i) => [n, i]))
  t.ok(answers.every((x, i) => x.back.length === sizes[i] && x.back.every((v) => v === i)), "every byte where it belongs")
})

t.test("one-way sends to a silent peer: wait for room, time out, and are dropped if never sent", async (t) => {
  const a = await startTcp(t, { nodeId: "a", maxInFlight: 2, sendTimeoutMs: 100 })
  const b = await startTcp(t, { nodeId: "b" })
  const seen: Array<{ from: string; payload: unknown }> = []
  await b.serve(testHandler(seen))
  b.api.setDropped(["a"])
  const held = Promise.all([failure(a.api.request(b.api.self, 1, 300)), failure(a.api.request(b.api.self, 2, 300))])
  const [e, ms] = await timed(() => failure(a.api.send(b.api.self, 3)))
  t.match(e, { reason: "timeout", peer: "b" })
  t.match(e.message, /no room for a message to node b within 100 ms/)
  t.ok(ms >= 95 && ms < 250, `no room within ${ms.toFixed(0)} ms`)
  t.same((await held).map((x) => x.reason), ["timeout", "timeout"])
  const [, fast] = await timed(() => run(a.api.send(b.api.self, 4)))
  t.ok(fast < 50, `room again once the requests timed out (${fast.toFixed(0)} ms)`)
  await sleep(150)
  b.api.setDropped([])
  await run(a.api.send(b.api.self, 5))
  await waitFor("delivery after un-drop", () => seen.some((s) => (s.payload as { echo?: unknown } | number) === 5))
  t.same(seen.map((s) => s.payload), [5], "a message that waited past its time for the connection was dropped, not sent late")
})

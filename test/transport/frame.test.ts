import { encode } from "@msgpack/msgpack"
import fc from "fast-check"
import t from "tap"
import {
  DEFAULT_MAX_FRAME_BYTES,
  FrameDecoder,
  HEADER_BYTES,
  MalformedFrame,
  PROTOCOL_VERSION,
  decodeBody,
  encodeFrame,
  frameKinds,
  hello,
  helloProblem,
  type Frame
} from "../../src/transport/Frame.ts"
import { anyFrame } from "../../fuzz/frameInputs.ts"

/** msgpack-able payloads and well-formed frames: the fuzz inputs' own, so both test the same space. */
const frame = anyFrame

/** Plain objects and plain Uint8Arrays throughout (fast-check makes null-prototype objects; bins decode as Buffer views). */
const plain = (v: unknown): unknown => {
  if (v instanceof Uint8Array) return new Uint8Array(v)
  if (Array.isArray(v)) return v.map(plain)
  if (typeof v === "object" && v !== null) return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)]))
  return v
}

const concat = (parts: ReadonlyArray<Uint8Array>): Uint8Array => Buffer.concat(parts)

/** `bytes` cut at the given (sorted, deduplicated) offsets. */
const cut = (bytes: Uint8Array, at: ReadonlyArray<number>): Uint8Array[] => {
  const points = [...new Set(at.map((x) => x % (bytes.length + 1)))].sort((a, b) => a - b)
  const out: Uint8Array[] = []
  let prev = 0
  for (const p of [...points, bytes.length]) {
    out.push(bytes.subarray(prev, p))
    prev = p
  }
  return out
}

/** A length prefix and a body. */
const framed = (body: Uint8Array): Uint8Array => {
  const out = Buffer.alloc(HEADER_BYTES + body.length)
  out.writeUInt32BE(body.length, 0)
  out.set(body, HEADER_BYTES)
  return out
}

t.test("encode then decode gives back every frame", async (t) => {
  fc.assert(
    fc.property(frame, (f) => {
      const bytes = encodeFrame(f)
      t.equal(Buffer.from(bytes).readUInt32BE(0), bytes.length - HEADER_BYTES)
      const { frames, error } = new FrameDecoder().push(bytes)
      t.equal(error, undefined)
      t.strictSame(plain(frames), plain([f]))
    }),
    { numRuns: 300 }
  )
})

t.test("any chunking of any frame sequence decodes to the same frames", async (t) => {
  fc.assert(
    fc.property(fc.array(frame, { maxLength: 8 }), fc.array(fc.nat(), { maxLength: 30 }), (frames, at) => {
      const stream = concat(frames.map(encodeFrame))
      const decoder = new FrameDecoder()
      const got: Frame[] = []
      for (const chunk of cut(stream, at)) {
        const r = decoder.push(chunk)
        t.equal(r.error, undefined)
        got.push(...r.frames)
      }
      t.strictSame(plain(got), plain(frames))
      t.equal(decoder.pendingBytes, 0)
    }),
    { numRuns: 300 }
  )
})

t.test("byte by byte, and several frames in one chunk", async (t) => {
  const frames: Frame[] = [hello("a", { n: 3, partitions: 64 }), { k: "req", id: 1, p: { op: "get", key: "k" } }, { k: "res", id: 1, p: new Uint8Array([1, 2, 3]) }]
  const stream = concat(frames.map(encodeFrame))
  const d = new FrameDecoder()
  const got: Frame[] = []
  for (let i = 0; i < stream.length; i++) got.push(...d.push(stream.subarray(i, i + 1)).frames)
  t.strictSame(plain(got), plain(frames))
  t.strictSame(plain(new FrameDecoder().push(stream).frames), plain(frames))
})

t.test("a byte array payload decodes as a Uint8Array with the same bytes", async (t) => {
  const value = new Uint8Array(70_000).map((_, i) => i % 251)
  const [f] = new FrameDecoder().push(encodeFrame({ k: "req", id: 9, p: { value } })).frames
  const got = (f as { p: { value: Uint8Array } }).p.value
  t.ok(got instanceof Uint8Array)
  t.ok(Buffer.from(got).equals(Buffer.from(value)))
})

t.test("decoding is linear: a large frame in small chunks, many frames in one chunk", async (t) => {
  const big = encodeFrame({ k: "res", id: 1, p: new Uint8Array(16 * 1024 * 1024) })
  let t0 = performance.now()
  const d = new FrameDecoder()
  let frames = 0
  for (let i = 0; i < big.length; i += 1024) frames += d.push(big.subarray(i, i + 1024)).frames.length
  const bigMs = performance.now() - t0
  t.equal(frames, 1)
  t.ok(bigMs < 2000, `16 MiB in 1 KiB chunks took ${bigMs.toFixed(0)} ms`)

  const small = concat(Array.from({ length: 100_000 }, (_, i) => encodeFrame({ k: "one", id: i, p: i })))
  t0 = performance.now()
  const r = new FrameDecoder().push(small)
  const smallMs = performance.now() - t0
  t.equal(r.frames.length, 100_000)
  t.ok(smallMs < 2000, `100,000 frames in one chunk took ${smallMs.toFixed(0)} ms`)
})

t.test("a length over the limit is malformed as soon as the header arrives", async (t) => {
  const d = new FrameDecoder(1000)
  const header = Buffer.alloc(4)
  header.writeUInt32BE(1001, 0)
  const ok = encodeFrame({ k: "one", id: 1, p: "x" })
  const r = d.push(concat([ok, header.subarray(0, 2)]))
  t.equal(r.frames.length, 1, "the frame before the damage is delivered")
  t.equal(r.error, undefined)
  const bad = d.push(header.subarray(2))
  t.ok(bad.error instanceof MalformedFrame)
  t.equal(bad.error?.reason, "too_large")
  t.match(bad.error?.message, /1001 bytes is over the limit of 1000/)
  t.equal(d.push(ok).error, bad.error, "the decoder stays stopped")
  t.equal(d.push(ok).frames.length, 0)
  t.equal(new FrameDecoder().maxFrameBytes, DEFAULT_MAX_FRAME_BYTES)
  const exact = encodeFrame({ k: "one", id: 1, p: "y".repeat(980) })
  t.equal(new FrameDecoder(exact.length - HEADER_BYTES).push(exact).frames.length, 1, "a frame of exactly the limit passes")
})

t.test("bodies that are not one msgpack value, or not a frame, are malformed", async (t) => {
  const cases: Array<[string, Uint8Array, "not_msgpack" | "bad_shape"]> = [
    ["empty body", new Uint8Array(0), "not_msgpack"],
    ["truncated value", encode({ k: "req", id: 1, p: "hello" }).subarray(0, 10), "not_msgpack"],
    ["trailing bytes", concat([encode({ k: "req", id: 1, p: 1 }), new Uint8Array([0xc0])]), "not_msgpack"],
    ["reserved byte 0xc1", new Uint8Array([0xc1]), "not_msgpack"],
    ["__proto__ key", new Uint8Array([0x81, 0xa9, ...Buffer.from("__proto__"), 0x01]), "not_msgpack"],
    ["huge array length", new Uint8Array([0xdd, 0xff, 0xff, 0xff, 0xff]), "not_msgpack"],
    ["a number", encode(42), "bad_shape"],
    ["an array", encode(["req", 1]), "bad_shape"],
    ["bin", encode(new Uint8Array([1])), "bad_shape"],
    ["unknown kind", encode({ k: "ping", id: 1 }), "bad_shape"],
    ["no kind", encode({ id: 1, p: 1 }), "bad_shape"],
    ["negative id", encode({ k: "req", id: -1, p: 1 }), "bad_shape"],
    ["fractional id", encode({ k: "req", id: 1.5, p: 1 }), "bad_shape"],
    ["string id", encode({ k: "req", id: "1", p: 1 }), "bad_shape"],
    ["req without payload", encode({ k: "req", id: 1 }), "bad_shape"],
    ["err without message", encode({ k: "err", id: 1, code: "x" }), "bad_shape"],
    ["hello without from", encode({ k: "hello", id: 0, cluster: { n: 3, partitions: 64 }, version: 1 }), "bad_shape"],
    ["hello with n 0", encode({ k: "hello", id: 0, from: "a", cluster: { n: 0, partitions: 64 }, version: 1 }), "bad_shape"],
    ["hello without cluster", encode({ k: "hello", id: 0, from: "a", version: 1 }), "bad_shape"]
  ]
  for (const [name, body, reason] of cases) {
    const direct = decodeBody(body)
    t.ok(direct instanceof MalformedFrame, `${name}: malformed`)
    t.equal((direct as MalformedFrame).reason, reason, `${name}: ${reason}`)
    const r = new FrameDecoder().push(concat([encodeFrame({ k: "one", id: 7, p: null }), framed(body), encodeFrame({ k: "one", id: 8, p: null })]))
    t.equal(r.error?.reason, reason, `${name}: the decoder reports it`)
    t.strictSame(r.frames.map((f) => f.id), [7], `${name}: frames before it are kept, none after`)
  }
  t.strictSame(
    decodeBody(encode({ k: "res", id: 3, p: 1, extra: "ignored" })),
    { k: "res", id: 3, p: 1, extra: "ignored" },
    "unknown extra fields are allowed"
  )
})

t.test("push never throws on arbitrary bytes in arbitrary chunks", async (t) => {
  fc.assert(
    fc.property(
      fc.array(fc.oneof(fc.uint8Array({ maxLength: 64 }), frame.map(encodeFrame), fc.uint8Array({ maxLength: 64 }).map(framed)), { maxLength: 6 }),
      fc.array(fc.nat(), { maxLength: 10 }),
      (parts, at) => {
        const d = new FrameDecoder(4096)
        let stopped = false
        for (const chunk of cut(concat(parts), at)) {
          const r = d.push(chunk)
          if (stopped) t.equal(r.frames.length, 0)
          if (r.error !== undefined) stopped = true
        }
      }
    ),
    { numRuns: 1000 }
  )
  t.pass("no exception")
})

t.test("a single flipped bit is either still a frame or reported, never thrown", async (t) => {
  const bytes = encodeFrame({ k: "req", id: 12345, p: { key: "user:1", value: new Uint8Array([9, 8, 7]), n: 3 } })
  let reported = 0
  for (let bit = 0; bit < bytes.length * 8; bit++) {
    const copy = Uint8Array.from(bytes)
    copy[bit >> 3]! ^= 1 << (bit & 7)
    const r = new FrameDecoder(1 << 20).push(copy)
    if (r.error !== undefined) reported++
  }
  t.ok(reported > 0, `${reported} of ${bytes.length * 8} flips reported`)
})

t.test("hello: the first frame, and what makes a peer refuse it", async (t) => {
  const ours = { nodeId: "a", cluster: { n: 3, partitions: 64 } }
  const h = hello("b", { n: 3, partitions: 64 })
  t.strictSame(h, { k: "hello", id: 0, from: "b", cluster: { n: 3, partitions: 64 }, version: PROTOCOL_VERSION })
  t.equal(helloProblem(ours, h), undefined)
  t.equal(helloProblem(ours, h, "b"), undefined)
  t.match(helloProblem(ours, hello("b", { n: 5, partitions: 64 })), /cluster setting n differs: node b has n=5, node a has n=3/)
  t.match(helloProblem(ours, hello("b", { n: 3, partitions: 128 })), /cluster setting partitions differs: node b has partitions=128, node a has partitions=64/)
  t.match(helloProblem(ours, { ...h, version: 2 }), /protocol version 2/)
  t.match(helloProblem(ours, h, "c"), /expected node c at this address but found node b/)
  t.strictSame([...frameKinds], ["hello", "req", "res", "err", "one"])
})

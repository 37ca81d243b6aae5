/**
 * Hostile inputs for the internode frame parser, shared by the CI test
 * (test/transport/frame-fuzz.test.ts) and the long run (`npm run fuzz`). Each case is a byte
 * stream cut into chunks, with what a correct parser must do with it; `checkCase` runs one
 * through a fresh FrameDecoder and returns a problem sentence, or undefined when it held.
 */
import { encode } from "@msgpack/msgpack"
import fc from "fast-check"
import { DEFAULT_MAX_FRAME_BYTES, FrameDecoder, HEADER_BYTES, MalformedFrame, decodeBody, encodeFrame, type Frame } from "../src/transport/Frame.ts"

/** The frame size limit the fuzzed decoders use: small, so "over the limit" is cheap to reach. */
export const FUZZ_MAX = 4096

/** What a case expects: every frame back in order, or merely no throw and the invariants. */
export type Expect = { readonly kind: "roundtrip"; readonly frames: ReadonlyArray<Frame>; readonly complete: boolean } | { readonly kind: "any" } | { readonly kind: "malformed" }

export interface Case {
  readonly family: string
  readonly chunks: ReadonlyArray<Uint8Array>
  readonly expect: Expect
}

/** msgpack-able values that decode to themselves (no -0, no undefined, no lone surrogates). */
const { value: payload } = fc.letrec<{ value: unknown }>((tie) => ({
  value: fc.oneof(
    { depthSize: "small", withCrossShrink: true },
    fc.constant(null),
    fc.boolean(),
    fc.integer({ min: -(2 ** 31), max: 2 ** 32 }),
    fc.maxSafeInteger(),
    fc.double({ noNaN: true }).filter((x) => !Object.is(x, -0)),
    fc.string({ unit: "binary", maxLength: 40 }),
    fc.uint8Array({ maxLength: 300 }),
    fc.array(tie("value"), { maxLength: 5 }),
    fc.dictionary(fc.string({ maxLength: 8 }).filter((k) => k !== "__proto__"), tie("value"), { maxKeys: 5 })
  )
}))

const id = fc.nat({ max: Number.MAX_SAFE_INTEGER })
/** Well-formed frames of every kind. */
export const anyFrame: fc.Arbitrary<Frame> = fc.oneof(
  fc.record({
    k: fc.constant("hello" as const),
    id,
    from: fc.string({ minLength: 1, maxLength: 64 }),
    cluster: fc.record({ n: fc.integer({ min: 1, max: 9 }), partitions: fc.integer({ min: 1, max: 4096 }) }),
    version: fc.nat({ max: 10 })
  }),
  fc.record({ k: fc.constantFrom("req" as const, "res" as const, "one" as const), id, p: payload }),
  fc.record({ k: fc.constant("err" as const), id, code: fc.string({ maxLength: 20 }), message: fc.string({ maxLength: 80 }) })
)

/** Well-formed frames within FUZZ_MAX. */
export const frame: fc.Arbitrary<Frame> = anyFrame.filter((f) => encodeFrame(f).length - HEADER_BYTES <= FUZZ_MAX)

const concat = (parts: ReadonlyArray<Uint8Array>): Uint8Array => Buffer.concat(parts)
const header = (n: number): Uint8Array => {
  const h = Buffer.alloc(HEADER_BYTES)
  h.writeUInt32BE(n >>> 0, 0)
  return h
}
const withHeader = (body: Uint8Array): Uint8Array => concat([header(body.length), body])

/** Cuts bytes at the given fractions into chunks (empty chunks included: they are legal pushes). */
const cut = (bytes: Uint8Array, at: ReadonlyArray<number>): Uint8Array[] => {
  const points = at.map((f) => Math.floor(f * (bytes.length + 1))).sort((a, b) => a - b)
  const out: Uint8Array[] = []
  let prev = 0
  for (const p of points) {
    out.push(bytes.subarray(prev, p))
    prev = p
  }
  out.push(bytes.subarray(prev))
  return out
}
const cuts = fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 6 })

/** msgpack heads that declare a huge or lying size, followed by little or nothing. */
const lyingHeads: ReadonlyArray<number[]> = [
  [0xdb, 0xff, 0xff, 0xff, 0xff], // str32 of 4 GiB
  [0xc6, 0xff, 0xff, 0xff, 0xff], // bin32 of 4 GiB
  [0xdd, 0xff, 0xff, 0xff, 0xff], // array32 of 4G items
  [0xdf, 0xff, 0xff, 0xff, 0xff], // map32 of 4G pairs
  [0xc9, 0xff, 0xff, 0xff, 0xff, 0x01], // ext32 of 4 GiB
  [0xc9, 0x00, 0x00, 0x00, 0x05, 0xff], // timestamp ext of a bad length
  [0xd7, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], // timestamp 64 with nanoseconds over 1e9
  [0xc7, 0x0c, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], // timestamp 96 far away
  [0xd4, 0x05, 0x00], // an unknown fixext
  [0xc1], // never used
  [0xda, 0x10, 0x00], // str16 longer than the body
  [0xdc, 0xff, 0xff], // array16 of 65535, short
  [0xde, 0xff, 0xff] // map16 of 65535, short
]

/** A map with the frame keys but one field the wrong type or hostile. */
const hostileFields = fc.record({
  k: fc.oneof(fc.constantFrom("hello", "req", "res", "err", "one", "HELLO", "", "__proto__", "constructor"), payload),
  id: fc.oneof(id, fc.constantFrom(-1, 2 ** 53, 2 ** 64, Number.NaN, Infinity, -Infinity, 0.5, -0), payload),
  from: fc.oneof(fc.string({ maxLength: 70 }), fc.constantFrom("", ".", "..", "../../x", "a/b", "\u0000"), payload),
  cluster: fc.oneof(fc.record({ n: fc.oneof(fc.integer(), fc.double()), partitions: fc.oneof(fc.integer(), fc.double()) }), payload),
  version: fc.oneof(fc.nat(), fc.double(), payload),
  p: payload,
  code: fc.oneof(fc.string({ maxLength: 10 }), payload),
  message: fc.oneof(fc.string({ maxLength: 10 }), payload)
}, { requiredKeys: [] })

/** Deeply nested arrays or maps (a recursive decoder would overflow its stack). */
const deep = fc.tuple(fc.integer({ min: 1, max: FUZZ_MAX - 8 }), fc.constantFrom(0x91, 0x81)).map(([depth, head]) => {
  if (head === 0x91) return Buffer.concat([Buffer.alloc(depth, 0x91), Buffer.from([0xc0])])
  // {"": {"": ... nil}}
  const parts: number[] = []
  for (let i = 0; i < Math.floor(depth / 2); i++) parts.push(0x81, 0xa0)
  parts.push(0xc0)
  return Buffer.from(parts)
})

/** Every family of input, weighted towards the hostile ones. */
export const anyCase: fc.Arbitrary<Case> = fc.oneof(
  // Random bytes, random chunks.
  fc.tuple(fc.uint8Array({ maxLength: 600 }), cuts).map(([b, c]): Case => ({ family: "random", chunks: cut(b, c), expect: { kind: "any" } })),
  // Random bytes behind a length that is right for them.
  fc.tuple(fc.uint8Array({ maxLength: 600 }), cuts).map(([b, c]): Case => ({ family: "random-body", chunks: cut(withHeader(b), c), expect: { kind: "any" } })),
  // Well-formed frames, concatenated and cut anywhere: they must all come back.
  fc.tuple(fc.array(frame, { minLength: 1, maxLength: 5 }), cuts).map(([fs, c]): Case => ({ family: "roundtrip", chunks: cut(concat(fs.map(encodeFrame)), c), expect: { kind: "roundtrip", frames: fs, complete: true } })),
  // Well-formed frames truncated: the complete ones come back, the rest waits, no error.
  fc.tuple(fc.array(frame, { minLength: 1, maxLength: 4 }), fc.double({ min: 0, max: 1, noNaN: true }), cuts).map(([fs, f, c]): Case => {
    const encoded = fs.map(encodeFrame)
    const all = concat(encoded)
    const keep = Math.floor(f * all.length)
    let n = 0
    let at = 0
    for (const e of encoded) {
      if (at + e.length > keep) break
      at += e.length
      n++
    }
    return { family: "truncated", chunks: cut(all.subarray(0, keep), c), expect: { kind: "roundtrip", frames: fs.slice(0, n), complete: keep === at } }
  }),
  // Well-formed frames whose length prefix lies by a little.
  fc.tuple(frame, fc.integer({ min: -8, max: 8 }).filter((d) => d !== 0), fc.uint8Array({ maxLength: 16 }), cuts).map(([f, d, tail, c]): Case => {
    const e = Buffer.from(encodeFrame(f))
    e.writeUInt32BE(Math.max(0, e.length - HEADER_BYTES + d), 0)
    return { family: "wrong-length", chunks: cut(concat([e, tail]), c), expect: { kind: "any" } }
  }),
  // Huge declared sizes: refused from the header alone.
  fc.tuple(fc.integer({ min: FUZZ_MAX + 1, max: 0xffff_ffff }), fc.uint8Array({ maxLength: 64 }), cuts).map(([n, tail, c]): Case => ({ family: "huge-length", chunks: cut(concat([header(n), tail]), c), expect: { kind: "malformed" } })),
  // Lying msgpack sizes inside a small, honest frame.
  fc.tuple(fc.constantFrom(...lyingHeads), fc.uint8Array({ maxLength: 32 }), cuts).map(([h, tail, c]): Case => ({ family: "lying-msgpack", chunks: cut(withHeader(concat([Buffer.from(h), tail])), c), expect: { kind: "any" } })),
  // A frame-shaped map with hostile fields.
  fc.tuple(hostileFields, cuts).map(([m, c]): Case => ({ family: "hostile-fields", chunks: cut(withHeader(encode(m)), c), expect: { kind: "any" } })),
  // Deep nesting, as the body or as a payload.
  fc.tuple(deep, fc.boolean(), cuts).map(([d, asPayload, c]): Case => {
    const body = asPayload ? concat([Buffer.from([0x83, 0xa1, 0x6b, 0xa3, 0x72, 0x65, 0x71, 0xa2, 0x69, 0x64, 0x01, 0xa1, 0x70]), d]) : d
    return { family: "deep", chunks: cut(withHeader(body.subarray(0, FUZZ_MAX)), c), expect: { kind: "any" } }
  }),
  // A valid frame then garbage: the frame comes back, then the damage (or a wait).
  fc.tuple(frame, fc.uint8Array({ minLength: 1, maxLength: 64 }), cuts).map(([f, g, c]): Case => ({ family: "frame-then-garbage", chunks: cut(concat([encodeFrame(f), g]), c), expect: { kind: "any" } }))
)

// Buffers have toJSON, which runs before a replacer: look at the raw value in its holder.
const normalise = (v: unknown): unknown =>
  JSON.parse(JSON.stringify(v, function(this: Record<string, unknown>, k, x) {
    const raw = this[k]
    return raw instanceof Uint8Array ? { bin: Buffer.from(raw).toString("hex") } : x
  }))

/** Runs one case on a fresh decoder; a problem sentence, or undefined when every property held. */
export const checkCase = (c: Case, max = FUZZ_MAX): string | undefined => {
  const d = new FrameDecoder(max)
  const got: Frame[] = []
  let error: MalformedFrame | undefined
  for (const chunk of c.chunks) {
    let r
    try {
      r = d.push(chunk)
    } catch (e) {
      return `push threw ${(e as Error)?.stack ?? e}`
    }
    got.push(...r.frames)
    if (r.error !== undefined) {
      if (!(r.error instanceof MalformedFrame)) return "the error is not a MalformedFrame"
      if (error !== undefined && r.frames.length > 0) return "frames after damage"
      error = r.error
    }
    // Never more held than one incomplete frame: a declared size is the only allocation bound.
    if (r.error === undefined && d.pendingBytes >= HEADER_BYTES + max) return `pending ${d.pendingBytes} bytes with a limit of ${max}`
    if (r.error !== undefined && d.pendingBytes !== 0) return "a failed decoder still holds bytes"
  }
  for (const f of got) {
    if (typeof f !== "object" || f === null || !["hello", "req", "res", "err", "one"].includes(f.k) || !Number.isSafeInteger(f.id) || f.id < 0) return `a bad frame passed: ${JSON.stringify(normalise(f)).slice(0, 200)}`
  }
  if (({} as Record<string, unknown>).polluted !== undefined || Object.prototype.hasOwnProperty.call(Object.prototype, "k")) return "Object.prototype was polluted"
  switch (c.expect.kind) {
    case "roundtrip": {
      if (error !== undefined) return `a well-formed stream was refused: ${error.message}`
      if (JSON.stringify(normalise(got)) !== JSON.stringify(normalise(c.expect.frames))) return `frames differ: ${got.length} decoded, ${c.expect.frames.length} sent`
      if (c.expect.complete && d.pendingBytes !== 0) return `${d.pendingBytes} bytes left after complete frames`
      return undefined
    }
    case "malformed":
      return error?.reason === "too_large" ? undefined : `a huge declared size was not refused as too_large (${error?.reason})`
    case "any":
      return undefined
  }
}

/** decodeBody on a raw body must return a frame or a MalformedFrame, never throw. */
export const checkBody = (body: Uint8Array, max = DEFAULT_MAX_FRAME_BYTES): string | undefined => {
  try {
    const r = decodeBody(body, max)
    return r instanceof MalformedFrame || (typeof r === "object" && r !== null) ? undefined : "decodeBody returned neither"
  } catch (e) {
    return `decodeBody threw ${(e as Error)?.stack ?? e}`
  }
}

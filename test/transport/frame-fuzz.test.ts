/**
 * Property-based fuzzing of the frame parser (issue 10, "Hostile input"): random, truncated,
 * mis-sized and hostile-msgpack streams never make it throw, never make it hold more than one
 * incomplete frame, and well-formed frames come back whatever the chunking.
 * The long run is `npm run fuzz` (fuzz/frames.ts), the same inputs a million times.
 */
import fc from "fast-check"
import t from "tap"
import { FrameDecoder, MalformedFrame, decodeBody } from "../../src/transport/Frame.ts"
import { FUZZ_MAX, anyCase, checkBody, checkCase } from "../../fuzz/frameInputs.ts"

const RUNS = Number(process.env.FRAME_FUZZ_RUNS ?? 30_000)

t.test(`${RUNS} hostile streams: no throw, bounded, well-formed frames round-trip`, async (t) => {
  const families = new Map<string, number>()
  fc.assert(
    fc.property(anyCase, (c) => {
      families.set(c.family, (families.get(c.family) ?? 0) + 1)
      const problem = checkCase(c)
      if (problem !== undefined) throw new Error(problem)
    }),
    { numRuns: RUNS }
  )
  t.comment(`families: ${JSON.stringify(Object.fromEntries(families))}`)
  t.ok(families.size >= 10, "every family ran")
})

t.test("decodeBody on raw bytes returns a frame or a MalformedFrame, never throws", async (t) => {
  fc.assert(fc.property(fc.uint8Array({ maxLength: 300 }), (b) => checkBody(b, FUZZ_MAX) === undefined), { numRuns: 10_000 })
  t.pass()
})

t.test("a length over the limit is refused from the header alone, with nothing buffered", async (t) => {
  for (const n of [FUZZ_MAX + 1, 2 ** 31, 0xffff_ffff]) {
    const d = new FrameDecoder(FUZZ_MAX)
    const h = Buffer.alloc(4)
    h.writeUInt32BE(n, 0)
    const r = d.push(h)
    t.equal(r.error?.reason, "too_large", `${n} refused`)
    t.equal(d.pendingBytes, 0)
    t.equal(d.push(Buffer.alloc(10)).error, r.error, "and it stays refused")
  }
})

t.test("msgpack sizes that lie inside an honest frame are damage, not allocations", async (t) => {
  const before = process.memoryUsage().arrayBuffers
  for (const head of [[0xdb], [0xc6], [0xdd], [0xdf]]) {
    const body = Buffer.from([...head, 0xff, 0xff, 0xff, 0xff])
    const r = decodeBody(body, FUZZ_MAX)
    t.ok(r instanceof MalformedFrame, `0x${head[0]!.toString(16)} of 4G refused`)
  }
  t.ok(process.memoryUsage().arrayBuffers - before < 64 * 1024 * 1024, "no large buffer was allocated")
})

t.test("deep nesting does not overflow the stack", async (t) => {
  const deep = Buffer.concat([Buffer.alloc(1_000_000, 0x91), Buffer.from([0xc0])])
  t.equal(checkBody(deep), undefined)
})

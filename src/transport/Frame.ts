/**
 * The internode wire format, defined once. Pure encode and an incremental decoder; no I/O.
 *
 *     frame = length:u32be  body:msgpack[length]          (length <= maxFrameBytes, 64 MiB)
 *     body  = { k: kind, id: u53, ...fields of the kind }
 *
 *     k        fields                                                   sent by
 *     "hello"  from: node id, cluster: { n, partitions }, version: 1    both sides, first frame
 *     "req"    p: payload                                               requester; answered by res or err with its id
 *     "res"    p: payload                                               responder
 *     "err"    code: string, message: string                            responder; id 0 = about the connection
 *     "one"    p: payload                                               sender of a one-way message; never answered
 *
 * Payloads are any msgpack value; byte arrays travel as msgpack bin and decode as Uint8Array
 * (Buffer) views of the received bytes, not copies: do not reuse a chunk after pushing it.
 * `undefined` travels as nil and arrives as null.
 * Damage policy: a length over the limit, a body that is not exactly one msgpack value, or
 * a value that is not a frame of a known kind is malformed. The decoder then stops for good:
 * the stream cannot be resynchronised (a length field is never trusted past damage), so the
 * connection is closed. Unknown extra fields are ignored, for forward compatibility.
 */
import { Decoder, Encoder } from "@msgpack/msgpack"
import { Schema } from "effect"
import { NODE_ID } from "../versions/Dvv.ts"

/** Bytes of the length prefix. */
export const HEADER_BYTES = 4

/** Default maximum body size. */
export const DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024

/** The protocol version this module speaks, sent in every hello. */
export const PROTOCOL_VERSION = 1

/** Cluster settings two nodes must agree on to talk at all. */
export interface ClusterSettings {
  readonly n: number
  readonly partitions: number
}

/** First frame on every connection, from each side. */
export interface Hello {
  readonly k: "hello"
  readonly id: number
  readonly from: string
  readonly cluster: ClusterSettings
  readonly version: number
}

/** A request; answered by a `Response` or an `ErrorReply` with the same id. */
export interface Request {
  readonly k: "req"
  readonly id: number
  readonly p: unknown
}

/** A successful answer to the request with the same id. */
export interface Response {
  readonly k: "res"
  readonly id: number
  readonly p: unknown
}

/** A failed answer to the request with the same id; id 0 speaks about the whole connection. */
export interface ErrorReply {
  readonly k: "err"
  readonly id: number
  readonly code: string
  readonly message: string
}

/** A one-way message: handled like a request, never answered. */
export interface OneWay {
  readonly k: "one"
  readonly id: number
  readonly p: unknown
}

/** Any frame. */
export type Frame = Hello | Request | Response | ErrorReply | OneWay

/** The kinds of frame, in the order of the table above. */
export const frameKinds = ["hello", "req", "res", "err", "one"] as const

/** Why bytes were not a frame. */
export const malformedReasons = {
  too_large: "the length prefix is over the maximum frame size",
  not_msgpack: "the body is not exactly one msgpack value",
  bad_shape: "the body is not an object with a known kind and that kind's fields"
} as const

/** Why bytes were not a frame, as a code. */
export type MalformedReason = keyof typeof malformedReasons

/** Bytes that are not a frame: the connection they came on must be closed. */
export class MalformedFrame extends Schema.TaggedError<MalformedFrame>()("MalformedFrame", {
  reason: Schema.Literals(Object.keys(malformedReasons) as [MalformedReason, ...MalformedReason[]]),
  message: Schema.String
}) {}

let encoder = new Encoder()
const RESET_ENCODER_ABOVE = 1024 * 1024

/** Encodes one frame with its length prefix. Throws (a defect) when a payload is not msgpack-able. */
export const encodeFrame = (frame: Frame): Uint8Array => {
  const body = encoder.encodeSharedRef(frame)
  const out = Buffer.allocUnsafe(HEADER_BYTES + body.length)
  out.writeUInt32BE(body.length, 0)
  out.set(body, HEADER_BYTES)
  // The shared encoder keeps its largest buffer; do not let one 8 MiB frame pin it forever.
  if (body.length > RESET_ENCODER_ABOVE) encoder = new Encoder()
  return out
}

/** The body size of an encoded frame. */
export const bodyBytes = (encoded: Uint8Array): number => encoded.length - HEADER_BYTES

const isObject = (u: unknown): u is Record<string, unknown> => typeof u === "object" && u !== null && !Array.isArray(u) && !(u instanceof Uint8Array)
const isId = (u: unknown): u is number => typeof u === "number" && Number.isSafeInteger(u) && u >= 0
const isCount = (u: unknown): u is number => typeof u === "number" && Number.isSafeInteger(u) && u >= 1

/** Why a decoded value is not a frame, or undefined when it is one. Checked by hand: it runs per frame. */
const shapeProblem = (v: unknown): string | undefined => {
  if (!isObject(v)) return "the body is not a map"
  if (!isId(v.id)) return "id is not a non-negative integer"
  switch (v.k) {
    case "req":
    case "res":
    case "one":
      return "p" in v ? undefined : `a ${v.k} frame has no payload (p)`
    case "err":
      return typeof v.code === "string" && typeof v.message === "string" ? undefined : "an err frame needs string code and message"
    case "hello": {
      if (typeof v.from !== "string" || v.from.length === 0) return "a hello needs a node id (from)"
      if (!isId(v.version)) return "a hello needs an integer version"
      const c = v.cluster
      return isObject(c) && isCount(c.n) && isCount(c.partitions) ? undefined : "a hello needs cluster { n, partitions } as positive integers"
    }
    default:
      return `unknown kind ${JSON.stringify(v.k)?.slice(0, 40)}`
  }
}

/** Decodes one body (without its length prefix). */
export const decodeBody = (body: Uint8Array, maxFrameBytes = DEFAULT_MAX_FRAME_BYTES): Frame | MalformedFrame => {
  let value: unknown
  try {
    value = decoderFor(maxFrameBytes).decode(body)
  } catch (e) {
    return new MalformedFrame({ reason: "not_msgpack", message: `frame body of ${body.length} bytes is not msgpack: ${(e as Error)?.message ?? e}` })
  }
  const problem = shapeProblem(value)
  return problem === undefined ? (value as Frame) : new MalformedFrame({ reason: "bad_shape", message: problem })
}

// Lengths in a body can never exceed the body, so anything larger is damage, not an allocation.
const decoders = new Map<number, Decoder>()
const decoderFor = (max: number): Decoder => {
  let d = decoders.get(max)
  if (d === undefined) {
    d = new Decoder({ maxStrLength: max, maxBinLength: max, maxArrayLength: max, maxMapLength: max, maxExtLength: max })
    decoders.set(max, d)
  }
  return d
}

/** What one `push` produced: the frames completed, and the damage that stopped decoding, if any. */
export interface Decoded {
  readonly frames: ReadonlyArray<Frame>
  readonly error: MalformedFrame | undefined
}

/**
 * Turns a byte stream, in chunks of any size, into frames. Chunks are kept as given until a
 * frame is complete; a frame inside one chunk is decoded in place, one spanning chunks is
 * copied once. Never throws: damage is returned, and every later push returns it again.
 */
export class FrameDecoder {
  /** The largest body accepted; a transport raises it once the peer's hello is accepted. */
  maxFrameBytes: number
  private chunks: Uint8Array[] = []
  /** Index of the first live chunk, and the consumed bytes of it. */
  private first = 0
  private offset = 0
  private buffered = 0
  /** Body length of the frame being assembled, or -1 before its header is read. */
  private need = -1
  private failure: MalformedFrame | undefined

  constructor(maxFrameBytes = DEFAULT_MAX_FRAME_BYTES) {
    this.maxFrameBytes = maxFrameBytes
  }

  /** The damage that stopped this decoder, if any. */
  get error(): MalformedFrame | undefined {
    return this.failure
  }

  /** Bytes received but not yet part of a complete frame. */
  get pendingBytes(): number {
    return this.buffered
  }

  push(chunk: Uint8Array): Decoded {
    if (this.failure !== undefined) return { frames: [], error: this.failure }
    if (chunk.length > 0) {
      this.chunks.push(chunk)
      this.buffered += chunk.length
    }
    const frames: Frame[] = []
    for (;;) {
      if (this.need < 0) {
        if (this.buffered < HEADER_BYTES) break
        const h = this.take(HEADER_BYTES)
        this.need = ((h[0]! << 24) >>> 0) + (h[1]! << 16) + (h[2]! << 8) + h[3]!
        if (this.need > this.maxFrameBytes) {
          return this.fail(frames, new MalformedFrame({ reason: "too_large", message: `frame of ${this.need} bytes is over the limit of ${this.maxFrameBytes}` }))
        }
      }
      if (this.buffered < this.need) break
      const body = this.take(this.need)
      this.need = -1
      const frame = decodeBody(body, this.maxFrameBytes)
      if (frame instanceof MalformedFrame) return this.fail(frames, frame)
      frames.push(frame)
    }
    if (this.first > 64 && this.first * 2 > this.chunks.length) {
      this.chunks = this.chunks.slice(this.first)
      this.first = 0
    }
    return { frames, error: undefined }
  }

  private fail(frames: Frame[], error: MalformedFrame): Decoded {
    this.failure = error
    this.chunks = []
    this.first = 0
    this.offset = 0
    this.buffered = 0
    return { frames, error }
  }

  /** Removes `n <= buffered` bytes from the front: a view when they lie in one chunk, else one copy. */
  private take(n: number): Uint8Array {
    if (n === 0) return EMPTY
    this.buffered -= n
    const head = this.chunks[this.first]!
    if (head.length - this.offset >= n) {
      const out = head.subarray(this.offset, this.offset + n)
      this.advance(head, n)
      return out
    }
    const out = new Uint8Array(n)
    let filled = 0
    while (filled < n) {
      const c = this.chunks[this.first]!
      const k = Math.min(n - filled, c.length - this.offset)
      out.set(c.subarray(this.offset, this.offset + k), filled)
      filled += k
      this.advance(c, k)
    }
    return out
  }

  private advance(chunk: Uint8Array, k: number): void {
    this.offset += k
    if (this.offset === chunk.length) {
      this.chunks[this.first] = EMPTY
      this.first++
      this.offset = 0
      if (this.first === this.chunks.length) {
        this.chunks = []
        this.first = 0
      }
    }
  }
}

const EMPTY = new Uint8Array(0)

/**
 * Why a peer's hello is unacceptable to us, as a sentence naming the setting that differs,
 * or undefined when the two nodes may talk. `expectedId` is the node we meant to reach, if any.
 */
export const helloProblem = (ours: { readonly nodeId: string; readonly cluster: ClusterSettings }, theirs: Hello, expectedId?: string): string | undefined => {
  // Every per-peer table (failure detector, waiting slots, parked logs) is keyed by this id.
  if (!NODE_ID.test(theirs.from)) return `${JSON.stringify(theirs.from.slice(0, 80))} is not a node id (1 to 64 of A-Z a-z 0-9 _ . -, not . or ..)`
  if (theirs.version !== PROTOCOL_VERSION) {
    return `node ${theirs.from} speaks protocol version ${theirs.version}, node ${ours.nodeId} speaks ${PROTOCOL_VERSION}`
  }
  for (const key of ["n", "partitions"] as const) {
    if (theirs.cluster[key] !== ours.cluster[key]) {
      return `cluster setting ${key} differs: node ${theirs.from} has ${key}=${theirs.cluster[key]}, node ${ours.nodeId} has ${key}=${ours.cluster[key]}; every node of a cluster must use the same --n and --partitions`
    }
  }
  if (expectedId !== undefined && theirs.from !== expectedId) {
    return `expected node ${expectedId} at this address but found node ${theirs.from}`
  }
  return undefined
}

/** Our hello. */
export const hello = (nodeId: string, cluster: ClusterSettings): Hello => ({
  k: "hello",
  id: 0,
  from: nodeId,
  cluster: { n: cluster.n, partitions: cluster.partitions },
  version: PROTOCOL_VERSION
})

/**
 * The engine's small control files, each one JSON object followed by a line holding the
 * CRC-32 of that JSON, written whole or not at all (writeFileDurable):
 *
 * - `MERGE`: a compaction's commit point. It names the inputs (those holding damage are kept
 *   aside as `<id>.seg.damaged`, never deleted) and, for each output, its size
 *   and CRC-32, so that whoever finishes the compaction (the compaction itself, or recovery
 *   after a crash) checks every output before deleting an input. Version 1 manifests (ids
 *   only) are still finished, by checking that each output scans without damage.
 * - `STATE`: what compaction and partition drops have done to the log's history: the LSN
 *   through which superseded records may have been removed (readers of `changes` from an
 *   earlier LSN need a snapshot), and for each dropped partition the LSN through which its
 *   records are gone.
 * - `IDENTITY`: a random id made with the directory and never rewritten, so the node can
 *   tell its own directory from a fresh or a restored one.
 */
import { crc32 } from "node:zlib"

/** One compaction output as the manifest records it. */
export interface ManifestOutput {
  readonly id: number
  readonly size: number
  /** CRC-32 of the whole output file; undefined in a version 1 manifest. */
  readonly crc: number | undefined
}

/** A decoded MERGE manifest. */
export interface Manifest {
  readonly inputs: ReadonlyArray<number>
  /** Inputs holding damage: kept aside as `<id>.seg.damaged` instead of deleted. */
  readonly damaged: ReadonlyArray<number>
  readonly outputs: ReadonlyArray<ManifestOutput>
}

/** A decoded STATE file. */
export interface LogState {
  readonly compactedThrough: number
  readonly drops: ReadonlyMap<number, number>
}

/** A decoded IDENTITY file. */
export interface Identity {
  readonly id: string
  readonly created: number
}

/** Control file names in the data directory. */
export const MERGE_MANIFEST = "MERGE"
export const STATE_FILE = "STATE"
export const IDENTITY_FILE = "IDENTITY"

const frame = (o: unknown): Buffer => {
  const body = JSON.stringify(o)
  return Buffer.from(`${body}\n${crc32(Buffer.from(body))}\n`)
}

const unframe = (buf: Buffer): Record<string, unknown> | undefined => {
  const [body, sum] = buf.toString("utf8").split("\n")
  if (body === undefined || sum === undefined || String(crc32(Buffer.from(body))) !== sum) return undefined
  try {
    const o = JSON.parse(body) as unknown
    return typeof o === "object" && o !== null && !Array.isArray(o) ? (o as Record<string, unknown>) : undefined
  } catch {
    return undefined
  }
}

const isId = (x: unknown): x is number => Number.isSafeInteger(x) && (x as number) >= 0

/** Encodes a MERGE manifest (version 2). */
export const encodeManifest = (m: Manifest): Buffer =>
  frame({ version: 2, inputs: m.inputs, damaged: m.damaged, outputs: m.outputs.map((o) => ({ id: o.id, size: o.size, crc: o.crc })) })

/** Decodes a MERGE manifest of either version; undefined if damaged or malformed. */
export const decodeManifest = (buf: Buffer): Manifest | undefined => {
  const o = unframe(buf)
  if (o === undefined || !Array.isArray(o.inputs) || !Array.isArray(o.outputs) || !o.inputs.every(isId)) return undefined
  if (o.version === 2) {
    const outs = o.outputs as Array<Record<string, unknown>>
    if (!outs.every((x) => typeof x === "object" && x !== null && isId(x.id) && isId(x.size) && isId(x.crc))) return undefined
    const damaged = o.damaged === undefined ? [] : o.damaged
    if (!Array.isArray(damaged) || !damaged.every(isId)) return undefined
    return { inputs: o.inputs as number[], damaged: damaged as number[], outputs: outs.map((x) => ({ id: x.id as number, size: x.size as number, crc: x.crc as number })) }
  }
  if (o.version !== undefined || !o.outputs.every(isId)) return undefined
  return { inputs: o.inputs as number[], damaged: [], outputs: (o.outputs as number[]).map((id) => ({ id, size: -1, crc: undefined })) }
}

/** Encodes the STATE file. */
export const encodeState = (s: LogState): Buffer =>
  frame({ version: 1, compactedThrough: s.compactedThrough, drops: Object.fromEntries([...s.drops].map(([p, l]) => [String(p), l])) })

/** Decodes the STATE file; undefined if damaged or malformed. */
export const decodeState = (buf: Buffer): LogState | undefined => {
  const o = unframe(buf)
  if (o === undefined || o.version !== 1 || !isId(o.compactedThrough) || typeof o.drops !== "object" || o.drops === null) return undefined
  const drops = new Map<number, number>()
  for (const [p, l] of Object.entries(o.drops as Record<string, unknown>)) {
    const n = Number(p)
    if (!isId(n) || !isId(l)) return undefined
    drops.set(n, l)
  }
  return { compactedThrough: o.compactedThrough, drops }
}

/** Encodes the IDENTITY file. */
export const encodeIdentity = (i: Identity): Buffer => frame({ version: 1, id: i.id, created: i.created })

/** Decodes the IDENTITY file; undefined if damaged or malformed. */
export const decodeIdentity = (buf: Buffer): Identity | undefined => {
  const o = unframe(buf)
  if (o === undefined || o.version !== 1 || typeof o.id !== "string" || !/^[0-9a-f]{32}$/.test(o.id) || !isId(o.created)) return undefined
  return { id: o.id, created: o.created }
}

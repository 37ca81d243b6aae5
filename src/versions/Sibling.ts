/**
 * One version of a key as the node stores it: the client's bytes, their content type, when
 * the coordinator wrote them, and whether this version is a delete. A key's stored object is
 * a DvvSet of these (Dvv.ts), encoded as one engine record by `encodeObject`.
 *
 * Sibling bytes: flags u8 (1 = deleted), lastModified f64 ms, content-type length u8 and
 * ASCII, then the value to the end.
 */
import { RecordType } from "../../engine/Record.ts"
import * as Dvv from "./Dvv.ts"

/** A stored version. */
export interface Sibling {
  readonly value: Uint8Array
  readonly contentType: string
  readonly lastModified: number
  readonly deleted: boolean
}

/** The versions of one key. */
export type StoredObject = Dvv.DvvSet<Sibling>

const MAX_CT = 255

/** Encodes one sibling. */
export const encodeSibling = (s: Sibling): Uint8Array => {
  const ct = Buffer.from(s.contentType.slice(0, MAX_CT), "latin1")
  const out = Buffer.allocUnsafe(10 + ct.length + s.value.length)
  out[0] = s.deleted ? 1 : 0
  out.writeDoubleLE(s.lastModified, 1)
  out[9] = ct.length
  ct.copy(out, 10)
  out.set(s.value, 10 + ct.length)
  return out
}

/** Decodes one sibling; throws on malformed bytes (decodeSet turns that into undefined). */
export const decodeSibling = (b: Uint8Array): Sibling => {
  const buf = Buffer.from(b.buffer, b.byteOffset, b.length)
  if (buf.length < 10 || buf[0]! > 1 || buf.length < 10 + buf[9]!) throw new Error("malformed sibling")
  const ctEnd = 10 + buf[9]!
  return {
    deleted: buf[0] === 1,
    lastModified: buf.readDoubleLE(1),
    contentType: buf.toString("latin1", 10, ctEnd),
    value: buf.subarray(ctEnd)
  }
}

/** The stored bytes of an object. */
export const encodeObject = (o: StoredObject): Uint8Array => Dvv.encodeSet(o, encodeSibling)

/** An object from stored bytes, or undefined if they are not one. */
export const decodeObject = (b: Uint8Array): StoredObject | undefined => Dvv.decodeSet(b, decodeSibling)

/** The siblings a client sees: deletes are hidden (the context still covers them). */
export const liveSiblings = (o: StoredObject): Sibling[] => Dvv.values(o).filter((s) => !s.deleted)

/** The stored bytes of an object record: a tombstone keeps them in its metadata. */
export const objectBytes = (e: { readonly type: RecordType; readonly meta: Uint8Array; readonly value: Uint8Array }): Uint8Array =>
  e.type === RecordType.Tombstone ? e.meta : e.value

/** Whether every version is a delete (the object is stored as an engine tombstone). */
export const allDeleted = (o: StoredObject): boolean => Dvv.values(o).every((s) => s.deleted)

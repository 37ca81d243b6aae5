/**
 * The checker of the chaos run and of the simulator: Jepsen's set-full over read-merge-write
 * sets. Pure: a history of writes and the final merged read of every key in, the verdict out.
 * `checkSets` adds deletes (an element a delete had read may go: the delete's context covered
 * it), the reads made during the run (none may hold an element nobody wrote) and the final
 * versions with their dots (none an acknowledged delete's context covered may be live again).
 */
import * as Dvv from "../src/versions/Dvv.ts"

/** One write a client sent: the element it added to `key`, and whether the cluster acknowledged it (204). */
export interface WriteOp {
  readonly key: string
  readonly element: string
  readonly acked: boolean
}

/** An element of a key. */
export interface Element {
  readonly key: string
  readonly element: string
}

/** What the checker found. */
export interface Verdict {
  readonly acked: number
  /** Acknowledged, absent from the final read of its key. */
  readonly lost: Element[]
  /** Present in a final read, never written by any client. */
  readonly unexpected: Element[]
  /** Written without an acknowledgement (timeout, 503...) and present: allowed. */
  readonly indeterminateOk: number
  /** Written without an acknowledgement and absent: allowed. */
  readonly indeterminateAbsent: number
}

/** Checks a history against the final merged reads (key to the elements it holds; a missing key holds none). */
export const check = (history: ReadonlyArray<WriteOp>, finalReads: ReadonlyMap<string, ReadonlyArray<string>>): Verdict => {
  const written = new Map<string, Map<string, boolean>>()
  for (const op of history) {
    let m = written.get(op.key)
    if (m === undefined) written.set(op.key, (m = new Map()))
    m.set(op.element, (m.get(op.element) ?? false) || op.acked)
  }
  const lost: Element[] = []
  const unexpected: Element[] = []
  let acked = 0
  let indeterminateOk = 0
  let indeterminateAbsent = 0
  for (const [key, elements] of written) {
    const present = new Set(finalReads.get(key) ?? [])
    for (const [element, ok] of elements) {
      if (ok) {
        acked++
        if (!present.has(element)) lost.push({ key, element })
      } else if (present.has(element)) indeterminateOk++
      else indeterminateAbsent++
    }
  }
  for (const [key, elements] of finalReads) {
    const w = written.get(key)
    for (const element of new Set(elements)) if (w?.has(element) !== true) unexpected.push({ key, element })
  }
  return { acked, lost, unexpected, indeterminateOk, indeterminateAbsent }
}

/** The elements of a GET answer (status and body): the union over its siblings; none for a 404. */
export const elementsOf = (status: number, body: string): string[] => {
  if (status === 200) return JSON.parse(body) as string[]
  if (status === 300) return (JSON.parse(body).siblings as Array<{ value: string }>).flatMap((s) => JSON.parse(Buffer.from(s.value, "base64").toString()) as string[])
  return []
}

/** A delete a client sent with the context of its read, and what that read held. */
export interface DeleteOp {
  readonly key: string
  /** The elements of the read whose context the delete carried. */
  readonly read: ReadonlyArray<string>
  /** That context (X-Context), as sent. */
  readonly context: string
  readonly acked: boolean
}

/** A read a client made during the run. */
export interface ReadOp {
  readonly key: string
  readonly elements: ReadonlyArray<string>
}

/** A live version of a key at the end, with its dot (`id:counter`, as /admin/local shows it). */
export interface FinalVersion {
  readonly dot: string
  readonly elements: ReadonlyArray<string>
}

/** Everything `checkSets` looks at. */
export interface SetHistory {
  readonly writes: ReadonlyArray<WriteOp>
  readonly deletes: ReadonlyArray<DeleteOp>
  readonly reads: ReadonlyArray<ReadOp>
  /** The final merged read of every key (a missing key holds none). */
  readonly finalReads: ReadonlyMap<string, ReadonlyArray<string>>
  /** The final live versions of every key (one converged replica's). */
  readonly finalVersions: ReadonlyMap<string, ReadonlyArray<FinalVersion>>
}

/** What `checkSets` found, beyond `check`'s verdict. */
export interface SetVerdict extends Verdict {
  /** Acknowledged, absent, and read by a delete (acknowledged or not) that may have removed it. */
  readonly covered: number
  /** Elements a read returned that no client ever wrote. */
  readonly unexpectedReads: Element[]
  /** Live versions at the end whose dot an acknowledged delete had seen: deleted, then back. */
  readonly resurrected: Array<{ readonly key: string; readonly dot: string }>
  readonly deletesAcked: number
}

const parseDot = (s: string): Dvv.Dot | undefined => {
  const at = s.lastIndexOf(":")
  const counter = Number(s.slice(at + 1))
  return at <= 0 || !Number.isSafeInteger(counter) ? undefined : { id: s.slice(0, at), counter }
}

/** The set-full verdict with deletes, reads and final versions (see the module comment). */
export const checkSets = (h: SetHistory): SetVerdict => {
  const base = check(h.writes, h.finalReads)
  const deletedAfterRead = new Map<string, Set<string>>()
  for (const d of h.deletes) {
    let s = deletedAfterRead.get(d.key)
    if (s === undefined) deletedAfterRead.set(d.key, (s = new Set()))
    for (const e of d.read) s.add(e)
  }
  const lost = base.lost.filter((x) => deletedAfterRead.get(x.key)?.has(x.element) !== true)
  const written = new Set(h.writes.map((w) => `${w.key}\u0000${w.element}`))
  const unexpectedReads: Element[] = []
  const seen = new Set<string>()
  for (const r of h.reads) {
    for (const element of r.elements) {
      const k = `${r.key}\u0000${element}`
      if (!written.has(k) && !seen.has(k)) {
        seen.add(k)
        unexpectedReads.push({ key: r.key, element })
      }
    }
  }
  const resurrected: Array<{ key: string; dot: string }> = []
  for (const d of h.deletes) {
    if (!d.acked) continue
    const context = Dvv.decodeContext(d.context)
    if (context === undefined) continue
    for (const v of h.finalVersions.get(d.key) ?? []) {
      const dot = parseDot(v.dot)
      if (dot !== undefined && Dvv.covers(context, dot) && !resurrected.some((x) => x.key === d.key && x.dot === v.dot)) resurrected.push({ key: d.key, dot: v.dot })
    }
  }
  return {
    ...base,
    lost,
    covered: base.lost.length - lost.length,
    unexpectedReads,
    resurrected,
    deletesAcked: h.deletes.filter((d) => d.acked).length
  }
}

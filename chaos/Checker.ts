/**
 * The chaos run's checker: Jepsen's set-full over read-merge-write sets. Pure: a history of
 * writes and the final merged read of every key in, the verdict out.
 */

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

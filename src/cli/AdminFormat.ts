/**
 * What `tally admin` prints, as pure functions of the node's answers: the member table, the
 * ring as ranges per owner, and one line per transfer. The transfer line is the format that
 * scripts parse (`partition P from->to state keysSent/keysTotal`); keep it stable.
 */
import type { ClusterView, Transfer } from "./AdminApi.ts"

/** Rows as aligned columns, two spaces apart, no trailing blanks. */
export const table = (rows: ReadonlyArray<ReadonlyArray<string>>): string => {
  const widths: Array<number> = []
  for (const row of rows) row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, cell.length)))
  return rows.map((row) => row.map((cell, i) => cell.padEnd(widths[i]!)).join("  ").trimEnd()).join("\n") + "\n"
}

const settledLine = (view: ClusterView): string =>
  view.settled === true
    ? "ring: settled"
    : view.settled === false
    ? "ring: not settled; partitions are moving (tally admin transfers shows them)"
    : "ring: this node does not say whether it is settled"

/** `tally admin status`: one row per member, then the ring's size and whether it is settled. */
export const formatStatus = (view: ClusterView): string => {
  const rows = view.nodes.map((m) => [m.id, m.address, m.status, String(m.partitions), m.parked === undefined ? "-" : String(m.parked)])
  const members = `${view.nodes.length} member${view.nodes.length === 1 ? "" : "s"}, n ${view.n}, ${view.partitions} partitions`
  return table([["ID", "ADDRESS", "STATUS", "PARTITIONS", "PARKED"], ...rows]) + `${members}\n${settledLine(view)}\n`
}

/** Sorted partition numbers as ranges: [0, 1, 2, 5, 7, 8] is "0-2, 5, 7-8". */
export const ranges = (partitions: ReadonlyArray<number>): string => {
  const sorted = [...partitions].sort((a, b) => a - b)
  const out: Array<string> = []
  let i = 0
  while (i < sorted.length) {
    let j = i
    while (j + 1 < sorted.length && sorted[j + 1] === sorted[j]! + 1) j++
    out.push(i === j ? String(sorted[i]) : `${sorted[i]}-${sorted[j]}`)
    i = j + 1
  }
  return out.join(", ")
}

/** `tally admin ring`: each owner's partition count and ranges, members owning none included. */
export const formatRing = (view: ClusterView, owners: ReadonlyArray<string>): string => {
  const owned = new Map<string, Array<number>>(view.nodes.map((m) => [m.id, []]))
  owners.forEach((owner, p) => {
    const list = owned.get(owner)
    if (list === undefined) owned.set(owner, [p])
    else list.push(p)
  })
  const rows = [...owned].map(([id, ps]) => [id, String(ps.length), ps.length === 0 ? "-" : ranges(ps)])
  return `${owners.length} partitions, n ${view.n}\n` + table([["OWNER", "COUNT", "PARTITIONS"], ...rows])
}

/** A transfer's identity across polls. */
export const transferKey = (t: Transfer): string => `${t.partition} ${t.from} ${t.to}`

/** The plain line for one transfer: `partition 3 n1->n2 running 50/100`. */
export const transferLine = (t: Transfer): string => `partition ${t.partition} ${t.from}->${t.to} ${t.state} ${t.keysSent}/${t.keysTotal}`

/** What `tally admin transfers` prints: one line per transfer, or that there are none. */
export const formatTransfers = (transfers: ReadonlyArray<Transfer>): string =>
  transfers.length === 0 ? `${NO_TRANSFERS}\n` : transfers.map((t) => `${transferLine(t)}\n`).join("")

/** The line that says the cluster has nothing left to move. */
export const NO_TRANSFERS = "no transfers: the ring is settled"

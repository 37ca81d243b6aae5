/**
 * What `tally admin` prints, as pure functions of the node's answers: the member table, the
 * ring as ranges per owner, one line per transfer, and anti-entropy per partition. The transfer line is the format that
 * scripts parse (`partition P from->to state keysSent/keysTotal`); keep it stable.
 */
import type { Aae, ClusterView, Transfer } from "./AdminApi.ts"

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

/** How long ago an ISO 8601 time was, to the second: "never" for null, "5s ago", "3m ago", "2h ago", "4d ago". */
export const ago = (iso: string | null, now: number): string => {
  if (iso === null) return "never"
  const t = Date.parse(iso)
  if (Number.isNaN(t)) return iso
  const s = Math.max(0, Math.round((now - t) / 1000))
  return s < 120 ? `${s}s ago` : s < 7200 ? `${Math.round(s / 60)}m ago` : s < 172800 ? `${Math.round(s / 3600)}h ago` : `${Math.round(s / 86400)}d ago`
}

/** What happens to a partition's tombstones now, as the TOMBSTONES column says it. */
const tombstones = (p: Aae["partitions"][number]): string =>
  p.reapBefore === undefined && p.reapBlocked === undefined
    ? "-"
    : p.reapBefore !== null && p.reapBefore !== undefined
    ? `reapable up to ${p.reapBefore}`
    : `kept: ${p.reapBlocked ?? "the node does not say why"}`

/** `tally admin aae`: one row per partition this node is a primary of, then the totals. */
export const formatAae = (view: Aae, now: number): string => {
  const ps = [...view.partitions].sort((a, b) => a.partition - b.partition)
  const rows = ps.map((p) => [
    String(p.partition),
    String(p.keys),
    p.peers.length === 0 ? "-" : p.peers.join(","),
    ago(p.lastExchange, now),
    String(p.exchanges),
    String(p.keysCompared),
    String(p.keysRepaired),
    String(p.bytes),
    tombstones(p)
  ])
  const sum = (f: (p: Aae["partitions"][number]) => number) => ps.reduce((n, p) => n + f(p), 0)
  const grace = view.reaping === undefined ? "" : `, tombstone grace ${view.reaping.tombstoneGraceSeconds} s`
  const head = `node ${view.node}: ${ps.length} partition${ps.length === 1 ? "" : "s"}${grace}\n`
  if (ps.length === 0) return `${head}no partitions: this node is a primary of none, or the ring has one member\n${formatFallbacks(view.fallbacks ?? [], now)}`
  return head + table([["PARTITION", "KEYS", "PEERS", "LAST EXCHANGE", "EXCHANGES", "COMPARED", "REPAIRED", "BYTES", "TOMBSTONES"], ...rows]) +
    `total: ${sum((p) => p.exchanges)} exchanges, ${sum((p) => p.keysCompared)} keys compared, ${sum((p) => p.keysRepaired)} repaired, ${sum((p) => p.bytes)} bytes\n` +
    formatFallbacks(view.fallbacks ?? [], now)
}

/** The partitions whose writes the node parks for an absent owner, and its pushes of them to the primaries. */
const formatFallbacks = (fs: NonNullable<Aae["fallbacks"]>, now: number): string => {
  if (fs.length === 0) return ""
  const rows = fs.map((f) => [String(f.partition), String(f.parked), f.peers.length === 0 ? "-" : f.peers.join(","), ago(f.lastExchange, now), String(f.exchanges), String(f.keysCompared), String(f.keysRepaired), String(f.bytes)])
  return `parked here for absent owners, pushed to the primaries that are up:\n` +
    table([["PARTITION", "PARKED", "PRIMARIES UP", "LAST PUSH", "PUSHES", "COMPARED", "PUSHED", "BYTES"], ...rows])
}

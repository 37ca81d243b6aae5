/**
 * What `tally admin` prints, without a node: ranges and tables (AdminFormat) and the two
 * transfer displays (TransferProgress), plain lines and bars on a terminal stand-in.
 */
import { Writable } from "node:stream"
import t from "tap"
import type { Aae, ClusterView, Transfer } from "../../src/cli/AdminApi.ts"
import { ago, formatAae, formatRing, formatStatus, formatTransfers, ranges, table, transferLine } from "../../src/cli/AdminFormat.ts"
import * as TransferProgress from "../../src/cli/TransferProgress.ts"

const view: ClusterView = {
  nodes: [
    { id: "a", address: "10.0.0.1:9081", status: "up", partitions: 3 },
    { id: "bb", address: "10.0.0.2:9081", status: "joining", partitions: 0, parked: 4 }
  ],
  n: 2,
  partitions: 4,
  owners: ["a", "a", "gone", "a"],
  settled: true
}

const transfer = (partition: number, state: string, keysSent: number, keysTotal: number): Transfer => ({ partition, from: "a", to: "bb", state, keysSent, keysTotal })

t.test("ranges and tables", async (t) => {
  t.equal(ranges([]), "")
  t.equal(ranges([5]), "5")
  t.equal(ranges([8, 0, 1, 2, 5, 7]), "0-2, 5, 7-8", "sorted, runs collapsed")
  t.equal(table([["A", "LONG"], ["xyz", ""]]), "A    LONG\nxyz\n", "aligned, no trailing blanks")
})

t.test("status and ring", async (t) => {
  t.equal(
    formatStatus(view),
    "ID  ADDRESS        STATUS   PARTITIONS  PARKED\na   10.0.0.1:9081  up       3           -\nbb  10.0.0.2:9081  joining  0           4\n2 members, n 2, 4 partitions\nring: settled\n",
    "a missing parked count shows as -"
  )
  t.equal(
    formatRing(view, view.owners!),
    "4 partitions, n 2\nOWNER  COUNT  PARTITIONS\na      3      0-1, 3\nbb     0      -\ngone   1      2\n",
    "members owning nothing and owners that are no longer members are listed"
  )
})

t.test("anti-entropy: a row per partition, the tombstones' fate, totals", async (t) => {
  const now = Date.parse("2026-01-01T00:10:00.000Z")
  t.equal(ago(null, now), "never")
  t.equal(ago("2026-01-01T00:09:55.000Z", now), "5s ago")
  t.equal(ago("2026-01-01T00:00:00.000Z", now), "10m ago")
  t.equal(ago("2025-12-31T21:10:00.000Z", now), "3h ago")
  t.equal(ago("2025-12-25T00:10:00.000Z", now), "7d ago")
  t.equal(ago("2026-01-01T00:10:01.000Z", now), "0s ago", "a clock a little ahead is not negative")
  const view: Aae = {
    node: "a",
    partitions: [
      { partition: 3, keys: 10, peers: ["b", "c"], lastExchange: "2026-01-01T00:09:58.000Z", exchanges: 4, keysCompared: 12, keysRepaired: 2, bytes: 4096, reapBefore: "2025-12-31T00:00:00.000Z", reapBlocked: null },
      { partition: 1, keys: 0, peers: [], lastExchange: null, exchanges: 0, keysCompared: 0, keysRepaired: 0, bytes: 0, reapBefore: null, reapBlocked: "writes for it are parked on b" },
      { partition: 2, keys: 1, peers: ["b"], lastExchange: null, exchanges: 0, keysCompared: 0, keysRepaired: 0, bytes: 0 }
    ],
    reaping: { tombstoneGraceSeconds: 60 }
  }
  t.equal(
    formatAae(view, now),
    [
      "node a: 3 partitions, tombstone grace 60 s",
      "PARTITION  KEYS  PEERS  LAST EXCHANGE  EXCHANGES  COMPARED  REPAIRED  BYTES  TOMBSTONES",
      "1          0     -      never          0          0         0         0      kept: writes for it are parked on b",
      "2          1     b      never          0          0         0         0      -",
      "3          10    b,c    2s ago         4          12        2         4096   reapable up to 2025-12-31T00:00:00.000Z",
      "total: 4 exchanges, 12 keys compared, 2 repaired, 4096 bytes",
      ""
    ].join("\n"),
    "sorted by partition; a node that does not say what happens to tombstones shows -"
  )
  t.equal(formatAae({ node: "a", partitions: [] }, now), "node a: 0 partitions\nno partitions: this node is a primary of none, or the ring has one member\n")
  const fallbacks = [{ partition: 5, parked: 3, peers: ["b", "c"], lastExchange: new Date(now - 1000).toISOString(), lastPeer: "c", exchanges: 2, keysCompared: 6, keysRepaired: 3, bytes: 200 }]
  t.equal(
    formatAae({ node: "a", partitions: [], fallbacks }, now),
    [
      "node a: 0 partitions",
      "no partitions: this node is a primary of none, or the ring has one member",
      "parked here for absent owners, pushed to the primaries that are up:",
      "PARTITION  PARKED  PRIMARIES UP  LAST PUSH  PUSHES  COMPARED  PUSHED  BYTES",
      "5          3       b,c           1s ago     2       6         3       200",
      ""
    ].join("\n"),
    "the partitions parked here follow, with their pushes"
  )
})

t.test("transfer lines", async (t) => {
  t.equal(transferLine(transfer(3, "running", 5, 10)), "partition 3 a->bb running 5/10")
  t.equal(formatTransfers([]), "no transfers: the ring is settled\n")
})

t.test("plain progress: a line when a transfer appears, changes or leaves the list", async (t) => {
  let out = ""
  const progress = TransferProgress.lines((s) => (out += s))
  progress.update([transfer(1, "pending", 0, 0), transfer(2, "running", 1, 4)])
  progress.update([transfer(1, "pending", 0, 0), transfer(2, "running", 1, 4)])
  progress.update([transfer(1, "running", 0, 9), transfer(2, "running", 3, 4)])
  progress.update([transfer(1, "running", 9, 9)])
  progress.update([])
  progress.end()
  t.equal(
    out,
    [
      "partition 1 a->bb pending 0/0",
      "partition 2 a->bb running 1/4",
      "partition 1 a->bb running 0/9",
      "partition 2 a->bb running 3/4",
      "partition 2 a->bb done 4/4",
      "partition 1 a->bb running 9/9",
      "partition 1 a->bb done 9/9",
      ""
    ].join("\n"),
    "an unchanged poll prints nothing"
  )
})

t.test("on a terminal: one bar per transfer, finished ones logged above", async (t) => {
  let out = ""
  const tty = Object.assign(
    new Writable({
      write: (chunk: Buffer, _encoding, done) => {
        out += chunk.toString()
        done()
      }
    }),
    { isTTY: true, columns: 120 }
  )
  const forStream = TransferProgress.forStream(tty as unknown as NodeJS.WriteStream)
  forStream.update([transfer(1, "pending", 0, 0), transfer(12, "running", 50, 100)])
  await new Promise((r) => setTimeout(r, 250))
  const first = out.replaceAll(/\x1b\[[0-9;?]*[A-Za-z]/g, "")
  t.match(first, /partition 1 a->bb   pending  ░{30}  0\/0/, "an empty bar for a pending transfer")
  t.match(first, /partition 12 a->bb  running  █{15}░{15}  50\/100/, "half a bar at half the keys, labels aligned")
  forStream.update([transfer(12, "running", 100, 100)])
  forStream.update([])
  forStream.end()
  forStream.end()
  const all = out.replaceAll(/\x1b\[[0-9;?]*[A-Za-z]/g, "")
  t.match(all, "partition 1 a->bb done 0/0\n", "finished transfers are logged as plain lines")
  t.match(all, "partition 12 a->bb done 100/100\n")

  const plain = TransferProgress.forStream(Object.assign(new Writable({ write: (_c, _e, done) => done() }), { isTTY: false }) as unknown as NodeJS.WriteStream)
  t.equal(typeof plain.update, "function", "plain lines where there is no terminal")
})

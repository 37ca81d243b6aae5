/**
 * How `--watch` and `--wait` show transfers poll after poll: one progress bar per transfer
 * (cli-progress) on a terminal; elsewhere plain lines, one each time a transfer appears,
 * moves or ends, in the format scripts parse (AdminFormat.transferLine). A transfer that
 * leaves the list has finished: it is shown once more as `done`.
 */
import cliProgress from "cli-progress"
import type { Transfer } from "./AdminApi.ts"
import { transferKey, transferLine } from "./AdminFormat.ts"

/** A display of the cluster's transfers over time. */
export interface TransferProgress {
  /** Shows one poll's list. */
  readonly update: (transfers: ReadonlyArray<Transfer>) => void
  /** Stops drawing; idempotent. Lines written afterwards go below the display. */
  readonly end: () => void
}

/** `t` once it has left the list. */
const finished = (t: Transfer): Transfer => ({ ...t, state: "done", keysSent: Math.max(t.keysSent, t.keysTotal) })

/** Plain lines through `write`: a line per transfer whenever its state or counts change. */
export const lines = (write: (text: string) => void): TransferProgress => {
  const last = new Map<string, Transfer>()
  return {
    update: (transfers) => {
      const now = new Set(transfers.map(transferKey))
      for (const [key, t] of last) {
        if (!now.has(key)) {
          last.delete(key)
          write(`${transferLine(finished(t))}\n`)
        }
      }
      for (const t of transfers) {
        const key = transferKey(t)
        const before = last.get(key)
        last.set(key, t)
        if (before === undefined || transferLine(before) !== transferLine(t)) write(`${transferLine(t)}\n`)
      }
    },
    end: () => {}
  }
}

interface Payload {
  readonly label: string
  readonly state: string
  readonly counts: string
}

/** One bar per transfer on the terminal `stream`; finished ones are logged above the bars and removed. */
export const bars = (stream: NodeJS.WritableStream): TransferProgress => {
  const multi = new cliProgress.MultiBar(
    {
      stream,
      format: "{label}  {state}  {bar}  {counts}",
      barsize: 30,
      // Nothing to restore if Ctrl-C ends the process mid-draw: the cursor stays shown and
      // line wrapping on (lines are cut to the terminal's width instead).
      hideCursor: false,
      linewrap: true,
      gracefulExit: false,
      clearOnComplete: false,
      autopadding: false
    },
    cliProgress.Presets.shades_classic
  )
  const shown = new Map<string, { readonly bar: cliProgress.SingleBar; transfer: Transfer }>()
  let ended = false
  const payload = (t: Transfer, labelWidth: number, stateWidth: number): Payload => ({
    label: `partition ${t.partition} ${t.from}->${t.to}`.padEnd(labelWidth),
    state: t.state.padEnd(stateWidth),
    counts: `${t.keysSent}/${t.keysTotal}`
  })
  return {
    update: (transfers) => {
      if (ended) return
      const now = new Set(transfers.map(transferKey))
      for (const [key, { bar, transfer }] of shown) {
        if (now.has(key)) continue
        shown.delete(key)
        // Logged lines are drawn on the next redraw, which remove() does.
        multi.log(`${transferLine(finished(transfer))}\n`)
        multi.remove(bar)
      }
      const labelWidth = Math.max(0, ...transfers.map((t) => `partition ${t.partition} ${t.from}->${t.to}`.length))
      const stateWidth = Math.max(0, ...transfers.map((t) => t.state.length))
      for (const t of transfers) {
        const total = Math.max(1, t.keysTotal)
        const value = Math.min(t.keysSent, total)
        const entry = shown.get(transferKey(t))
        if (entry === undefined) {
          shown.set(transferKey(t), { bar: multi.create(total, value, payload(t, labelWidth, stateWidth)), transfer: t })
        } else {
          entry.transfer = t
          entry.bar.setTotal(total)
          entry.bar.update(value, payload(t, labelWidth, stateWidth))
        }
      }
      for (const { bar, transfer } of shown.values()) bar.update(payload(transfer, labelWidth, stateWidth))
    },
    end: () => {
      if (ended) return
      ended = true
      multi.update()
      multi.stop()
    }
  }
}

/** Bars when `stream` is a terminal, plain lines otherwise. */
export const forStream = (stream: NodeJS.WriteStream): TransferProgress =>
  stream.isTTY === true ? bars(stream) : lines((text) => stream.write(text))

/**
 * A node's one logging path: pino JSON lines on stderr, one per event, for the node's own
 * messages, Fastify's, and the Effect services' (through `effectLogger`). stdout carries only
 * the `ready` line. Events that come in bursts under failure (quorum failures, fallback
 * writes) go through `burstLog`: at most one line per kind per window, with a count.
 */
import * as Logger from "effect/Logger"
import * as References from "effect/References"
import pino from "pino"
import type { LogLevel } from "../config/Settings.ts"

/** The level of one line. */
type LineLevel = Exclude<LogLevel, "silent">

/** A node's logger. */
export type NodeLogger = pino.Logger

/** A pino logger for node `id` at `level`, writing JSON lines to `stream` (stderr by default). */
export const makeLogger = (id: string, level: LogLevel, stream: NodeJS.WritableStream = process.stderr): NodeLogger =>
  pino({ level, base: { node: id } }, stream)

const EFFECT_LEVELS: Readonly<Record<string, LineLevel>> = {
  Fatal: "fatal", Error: "error", Warning: "warn", Warn: "warn", Info: "info", Debug: "debug", Trace: "trace"
}

/** Effect's log calls as lines of `logger`, with their annotations (module, peer, ...) as fields. */
export const effectLogger = (logger: NodeLogger) =>
  Logger.make((o) => {
    const level = EFFECT_LEVELS[o.logLevel] ?? "info"
    if (!logger.isLevelEnabled(level)) return
    const msg = Array.isArray(o.message) ? o.message.map(String).join(" ") : String(o.message)
    // `node` is already on every line (the logger's base); a second one would repeat the key.
    const { node: _node, ...annotations } = o.fiber.getRef(References.CurrentLogAnnotations)
    if (Object.keys(annotations).length === 0) logger[level](msg)
    else logger[level](annotations, msg)
  })

/** How often at most a burst's kind is logged, in ms. */
export const BURST_WINDOW_MS = 1_000

/** One kind of event that may come thousands of times a second. */
export interface Burst {
  /** Counts one event; `fields` and `message` describe the latest. */
  note(fields: Record<string, unknown>, message: string): void
}

/**
 * Rate-limited warnings of one kind: the first event of a quiet period is logged at once;
 * the ones within the next `windowMs` are counted, and when the window ends one line tells
 * the latest of them with `suppressed`, the number not logged. No event goes uncounted.
 */
export const burstLog = (logger: NodeLogger, kind: string, options: { readonly windowMs?: number; readonly level?: LineLevel } = {}) => {
  const windowMs = options.windowMs ?? BURST_WINDOW_MS
  const level = options.level ?? "warn"
  let timer: ReturnType<typeof setTimeout> | undefined
  let suppressed = 0
  let latest: { fields: Record<string, unknown>; message: string } | undefined
  const openWindow = () => {
    timer = setTimeout(() => {
      timer = undefined
      if (suppressed === 0 || latest === undefined) return
      logger[level]({ ...latest.fields, kind, suppressed, windowMs }, `${latest.message} (and ${suppressed} more ${kind} in the last ${windowMs} ms)`)
      suppressed = 0
      latest = undefined
      openWindow()
    }, windowMs)
    // A pending summary must not keep a stopping node alive.
    timer.unref?.()
  }
  const burst: Burst & { close(): void } = {
    note: (fields, message) => {
      if (timer === undefined) {
        logger[level]({ ...fields, kind }, message)
        openWindow()
        return
      }
      suppressed++
      latest = { fields, message }
    },
    /** Logs what is still counted and stops the timer. */
    close: () => {
      if (timer !== undefined) clearTimeout(timer)
      timer = undefined
      if (suppressed > 0 && latest !== undefined) logger[level]({ ...latest.fields, kind, suppressed }, `${latest.message} (and ${suppressed} more ${kind})`)
      suppressed = 0
      latest = undefined
    }
  }
  return burst
}

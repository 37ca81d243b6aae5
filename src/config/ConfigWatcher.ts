/**
 * Watches a node's `--config` file and, on each change, re-resolves its settings with the
 * same flags and environment. A valid change hands its live part to `applyLive` and names
 * each other changed setting as needing a restart; an invalid one is logged and ignored, so
 * the node always runs on the last settings that resolved.
 */
import * as fs from "node:fs"
import * as nodePath from "node:path"
import { watch } from "chokidar"
import * as Effect from "effect/Effect"
import * as Result from "effect/Result"
import type * as Scope from "effect/Scope"
import {
  applyLivePatch,
  diffSettings,
  parseConfigText,
  resolveSettings,
  type EnvValues,
  type FlagValues,
  type LiveSettingsShape,
  type NodeSettings
} from "./Settings.ts"

/** Severity of a watcher message. */
export type WatchLogLevel = "error" | "warn" | "info" | "debug"

/** Where the watcher's messages go. */
export type WatchLog = (level: WatchLogLevel, message: string) => void

/** What a re-read of the config file found. */
export type ReloadOutcome =
  | { readonly _tag: "Invalid"; readonly errors: ReadonlyArray<string> }
  | { readonly _tag: "Unchanged" }
  | {
    readonly _tag: "Changed"
    /** The settings the node runs on afterwards: the live changes applied, the others not. */
    readonly settings: NodeSettings
    readonly live: Partial<LiveSettingsShape>
    readonly restartNeeded: ReadonlyArray<string>
  }

/** The sources a config file is resolved with, besides the file. */
export interface ReloadSources {
  readonly path: string
  readonly flags?: FlagValues | undefined
  readonly env?: EnvValues | undefined
}

/**
 * Compares what the config file's `text` resolves to with the settings the node runs on.
 * Settings that need a restart stay as they run, so each re-read names them again until the
 * node is restarted.
 */
export const reloadFrom = (running: NodeSettings, text: string, sources: ReloadSources): ReloadOutcome => {
  const parsed = parseConfigText(sources.path, text)
  if (Result.isFailure(parsed)) return { _tag: "Invalid", errors: parsed.failure }
  const next = resolveSettings({ flags: { ...sources.flags, config: sources.path }, env: sources.env, file: parsed.success })
  if (Result.isFailure(next)) return { _tag: "Invalid", errors: next.failure }
  const { live, restartNeeded } = diffSettings(running, next.success)
  if (Object.keys(live).length === 0 && restartNeeded.length === 0) return { _tag: "Unchanged" }
  return { _tag: "Changed", settings: applyLivePatch(running, live), live, restartNeeded }
}

/** One `name=value` per changed live setting. */
export const describePatch = (patch: Partial<LiveSettingsShape>): string => {
  const { compaction, ...top } = patch
  const parts = Object.entries(top).map(([k, v]) => `${k}=${String(v)}`)
  for (const [k, v] of Object.entries(compaction ?? {})) parts.push(`compaction.${k}=${String(v)}`)
  return parts.join(", ")
}

/** What `watch` needs. */
export interface ConfigWatcherOptions extends ReloadSources {
  /** The settings the node started with. */
  readonly initial: NodeSettings
  /** Applies changed live settings to the running node. */
  readonly applyLive: (patch: Partial<LiveSettingsShape>) => void
  readonly log: WatchLog
  /** Quiet time after the last file event before re-reading (default 100 ms). */
  readonly debounceMs?: number | undefined
}

/** A running config watcher. */
export interface ConfigWatcher {
  /** The settings the node runs on now. */
  readonly current: Effect.Effect<NodeSettings>
  /** Re-reads the file now, as a change event would. */
  readonly reload: Effect.Effect<ReloadOutcome>
}

/**
 * Watches `options.path` until the scope closes; succeeds once watching, after one re-read.
 * The directory is watched rather than the file, so editors that save by writing a new file
 * and renaming it over the old one are seen.
 */
export const watchConfig = (options: ConfigWatcherOptions): Effect.Effect<ConfigWatcher, never, Scope.Scope> =>
  Effect.gen(function*() {
    const file = nodePath.resolve(options.path)
    const dir = nodePath.dirname(file)
    const debounceMs = options.debounceMs ?? 100
    let running = options.initial
    let timer: ReturnType<typeof setTimeout> | undefined

    const reloadNow = (): ReloadOutcome => {
      let text: string
      try {
        text = fs.readFileSync(file, "utf8")
      } catch (e) {
        const errors = [`cannot read config file ${options.path}: ${e instanceof Error ? e.message : String(e)}`]
        options.log("error", `${errors[0]}; keeping the current settings`)
        return { _tag: "Invalid", errors }
      }
      const outcome = reloadFrom(running, text, options)
      switch (outcome._tag) {
        case "Invalid":
          options.log("error", `config file ${options.path} is invalid, keeping the current settings: ${outcome.errors.join("; ")}`)
          return outcome
        case "Unchanged":
          options.log("debug", `config file ${options.path} re-read: no setting changed`)
          return outcome
        case "Changed": {
          if (Object.keys(outcome.live).length > 0) {
            try {
              options.applyLive(outcome.live)
            } catch (e) {
              const message = `config file ${options.path}: applying ${describePatch(outcome.live)} failed: ${e instanceof Error ? e.message : String(e)}`
              options.log("error", `${message}; keeping the current settings`)
              return { _tag: "Invalid", errors: [message] }
            }
            running = outcome.settings
            options.log("info", `config file ${options.path}: applied ${describePatch(outcome.live)}`)
          }
          for (const name of outcome.restartNeeded) {
            options.log("warn", `setting ${name} changed in ${options.path}; restart the node to apply it`)
          }
          return outcome
        }
      }
    }

    const schedule = () => {
      if (timer !== undefined) clearTimeout(timer)
      timer = setTimeout(() => {
        timer = undefined
        reloadNow()
      }, debounceMs)
    }

    yield* Effect.acquireRelease(
      Effect.callback<ReturnType<typeof watch>>((resume) => {
        const watcher = watch(dir, {
          depth: 0,
          ignoreInitial: true,
          ignored: (p: string) => {
            const abs = nodePath.resolve(p)
            return abs !== dir && abs !== file
          },
          awaitWriteFinish: { stabilityThreshold: 50, pollInterval: 10 }
        })
        watcher.on("add", schedule)
        watcher.on("change", schedule)
        watcher.on("unlink", () => {
          if (timer !== undefined) clearTimeout(timer)
          options.log("warn", `config file ${options.path} was removed; keeping the current settings until it is back`)
        })
        watcher.on("error", (e) => options.log("warn", `watching config file ${options.path}: ${e instanceof Error ? e.message : String(e)}`))
        watcher.once("ready", () => resume(Effect.succeed(watcher)))
      }),
      (watcher) =>
        Effect.promise(() => {
          if (timer !== undefined) clearTimeout(timer)
          return watcher.close()
        })
    )
    // A change made between the first read and the watch is caught here.
    reloadNow()

    return {
      current: Effect.sync(() => running),
      reload: Effect.sync(reloadNow)
    }
  })

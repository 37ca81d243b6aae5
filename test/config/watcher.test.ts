import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { Effect, Exit, Result, Scope } from "effect"
import t, { type Test } from "tap"
import { reloadFrom, watchConfig, type WatchLogLevel } from "../../src/config/ConfigWatcher.ts"
import { loadSettings, resolveSettings, type LiveSettingsShape } from "../../src/config/Settings.ts"

const waitFor = async (what: string, check: () => boolean, timeoutMs = 5000) => {
  const until = Date.now() + timeoutMs
  while (!check()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

const setup = (t: Test, content: object) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tally-watch-"))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const file = path.join(dir, "tally.json")
  fs.writeFileSync(file, JSON.stringify(content))
  return { dir, file }
}

const start = async (t: Test, file: string, flags: Record<string, string> = {}) => {
  const initial = loadSettings({ flags: { ...flags, config: file } })
  if (Result.isFailure(initial)) throw new Error(initial.failure.join("; "))
  const patches: Array<Partial<LiveSettingsShape>> = []
  const logs: Array<{ level: WatchLogLevel; message: string }> = []
  const scope = Effect.runSync(Scope.make())
  t.teardown(() => Effect.runPromise(Scope.close(scope, Exit.void)))
  const watcher = await Effect.runPromise(
    watchConfig({
      path: file,
      flags: { ...flags, config: file },
      env: {},
      initial: initial.success,
      applyLive: (p) => patches.push(p),
      log: (level, message) => logs.push({ level, message }),
      debounceMs: 30
    }).pipe(Scope.provide(scope))
  )
  return { watcher, patches, logs, initial: initial.success }
}

t.test("a live change calls applyLive; a restart-only change logs one line per setting", async (t) => {
  const { file } = setup(t, { w: 2, port: 8100 })
  const { watcher, patches, logs } = await start(t, file)

  fs.writeFileSync(file, JSON.stringify({ w: 3, port: 8100, compaction: { deadRatio: 0.5 } }))
  await waitFor("applyLive", () => patches.length === 1)
  t.same(patches[0], { w: 3, compaction: { deadRatio: 0.5 } })
  t.match(logs.at(-1), { level: "info", message: `config file ${file}: applied w=3, compaction.deadRatio=0.5` })
  t.equal((await Effect.runPromise(watcher.current)).w, 3)

  fs.writeFileSync(file, JSON.stringify({ w: 3, port: 8200, partitions: 128, compaction: { deadRatio: 0.5 } }))
  await waitFor("restart lines", () => logs.filter((l) => l.level === "warn").length >= 5)
  t.same(
    logs.filter((l) => l.level === "warn").map((l) => l.message),
    [
      `setting id changed in ${file}; restart the node to apply it`,
      `setting port changed in ${file}; restart the node to apply it`,
      `setting clusterPort changed in ${file}; restart the node to apply it`,
      `setting data changed in ${file}; restart the node to apply it`,
      `setting partitions changed in ${file}; restart the node to apply it`
    ],
    "id, clusterPort and data follow the port by default, so they change too"
  )
  t.equal(patches.length, 1, "nothing live changed, applyLive not called")
  const current = await Effect.runPromise(watcher.current)
  t.equal(current.port, 8100, "the node still runs on its old port")
})

t.test("an invalid file is logged and the previous settings kept; a later valid change is picked up", async (t) => {
  const { file } = setup(t, { r: 1, maxValueBytes: 1000 })
  const { watcher, patches, logs } = await start(t, file)

  fs.writeFileSync(file, "{ \"r\": 2, ")
  await waitFor("bad JSON message", () => logs.some((l) => l.level === "error"))
  t.match(logs.find((l) => l.level === "error")!.message, new RegExp(`^config file .*tally\\.json is invalid, keeping the current settings: config file .* is not valid JSON`))

  fs.writeFileSync(file, JSON.stringify({ r: 7, maxValueBytes: "big" }))
  await waitFor("bad value message", () => logs.filter((l) => l.level === "error").length === 2)
  const message = logs.filter((l) => l.level === "error")[1]!.message
  t.match(message, `"r" in ${file} must be an integer from 1 to n (3); got 7`)
  t.match(message, `"maxValueBytes" in ${file} must be an integer from 1 to 268435456; got "big" (a string)`)

  fs.writeFileSync(file, JSON.stringify({ r: 1, maxValueBytes: 1000, bogus: true }))
  await waitFor("unknown key message", () => logs.filter((l) => l.level === "error").length === 3)
  t.match(logs.filter((l) => l.level === "error")[2]!.message, `unknown setting "bogus" in ${file}`)
  t.equal(patches.length, 0, "nothing applied from invalid files")
  t.equal((await Effect.runPromise(watcher.current)).maxValueBytes, 1000)

  fs.writeFileSync(file, JSON.stringify({ r: 3, maxValueBytes: 2000 }))
  await waitFor("applyLive", () => patches.length === 1)
  t.same(patches[0], { r: 3, maxValueBytes: 2000 })
  t.equal((await Effect.runPromise(watcher.current)).r, 3)
})

t.test("a file replaced by rename (as editors save) is seen", async (t) => {
  const { dir, file } = setup(t, { logLevel: "info" })
  const { patches, logs } = await start(t, file)
  const tmp = path.join(dir, ".tally.json.swp")
  fs.writeFileSync(tmp, JSON.stringify({ logLevel: "debug" }))
  fs.renameSync(tmp, file)
  await waitFor("applyLive after rename", () => patches.length === 1)
  t.same(patches[0], { logLevel: "debug" })

  fs.rmSync(file)
  await waitFor("removal message", () => logs.some((l) => l.message.includes("was removed")))
  fs.writeFileSync(file, JSON.stringify({ logLevel: "warn" }))
  await waitFor("applyLive after re-creation", () => patches.length === 2)
  t.same(patches[1], { logLevel: "warn" })
})

t.test("flags keep precedence over the file on reload", async (t) => {
  const { file } = setup(t, { w: 1 })
  const { watcher, patches } = await start(t, file, { w: "2" })
  t.equal((await Effect.runPromise(watcher.current)).w, 2)
  fs.writeFileSync(file, JSON.stringify({ w: 3 }))
  const outcome = await Effect.runPromise(watcher.reload)
  t.equal(outcome._tag, "Unchanged")
  t.equal(patches.length, 0)
})

t.test("reloadFrom is the pure step", async (t) => {
  const initial = resolveSettings({ flags: { config: "t.json" } })
  if (Result.isFailure(initial)) throw new Error("defaults")
  const sources = { path: "t.json" }
  t.same(reloadFrom(initial.success, "{}", sources), { _tag: "Unchanged" })
  t.match(reloadFrom(initial.success, "nope", sources), { _tag: "Invalid", errors: [/^config file t\.json is not valid JSON/] })
  t.match(reloadFrom(initial.success, `{"w": 3, "fsync": "never"}`, sources), {
    _tag: "Changed",
    live: { w: 3 },
    restartNeeded: ["fsync"],
    settings: { w: 3, fsync: "batch" }
  })
})

/**
 * The data-directory lock with real processes (fixtures/locker.ts opens a Log and holds it).
 * The lock is the kernel's (an open file description lock on <dir>/LOCK, files.tryLock), so
 * it goes with its holder however the holder dies, and no pid is ever checked for liveness:
 *
 * (a) a holder killed by SIGKILL and left a zombie (its parent never reaps it) does not
 *     block a restart: the pid still exists, the lock does not;
 * (b) a LOCK file naming a live unrelated process does not block an open;
 * (c) a live holder does: DataDirLocked naming the dir and the holder's pid;
 * (d) two children released at the same moment on one dir: exactly one opens, 20 times;
 * (e) one process opening the same dir twice fails the second time, and close releases.
 */
import { spawn, type ChildProcess } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import t, { type Test } from "tap"
import { DataDirLocked } from "../../engine/Errors.ts"
import { nodeFilesApi } from "../../engine/Files.ts"
import { openLog, put, valueOf } from "./helpers.ts"

const LOCKER = fileURLToPath(new URL("./fixtures/locker.ts", import.meta.url))
const LIMIT_MS = 20_000

/** A spawned process whose stdout lines can be awaited. */
interface Proc {
  readonly child: ChildProcess
  readonly lines: string[]
  /** The first line (past or future) starting with `prefix`. */
  line(prefix: string): Promise<string>
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>
}

const running = new Set<Proc>()

/** Kills what a test left running: the whole group of a detached child, else the child. */
const killLeftovers = () => {
  for (const p of running) {
    const pid = p.child.pid
    if (pid === undefined || p.child.exitCode !== null || p.child.signalCode !== null) continue
    try {
      if (p.child.spawnargs[0] === "bash") process.kill(-pid, "SIGKILL")
      else process.kill(pid, "SIGKILL")
    } catch {
      // already gone
    }
  }
  running.clear()
}

const start = (command: string, args: string[], detached = false): Proc => {
  // tap's hooks are not wanted in the children.
  const env = { ...process.env, NODE_OPTIONS: "" }
  const child = spawn(command, args, { stdio: ["pipe", "pipe", "pipe"], env, detached })
  const lines: string[] = []
  const waiters: Array<{ prefix: string; resolve: (l: string) => void }> = []
  let partial = ""
  let stderr = ""
  child.stdout!.setEncoding("utf8")
  child.stdout!.on("data", (chunk: string) => {
    const parts = (partial + chunk).split("\n")
    partial = parts.pop()!
    for (const l of parts) {
      lines.push(l)
      for (const w of waiters.filter((w) => l.startsWith(w.prefix))) {
        waiters.splice(waiters.indexOf(w), 1)
        w.resolve(l)
      }
    }
  })
  child.stderr!.setEncoding("utf8")
  child.stderr!.on("data", (c: string) => {
    stderr += c
  })
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>((resolve) =>
    child.on("close", (code, signal) => resolve({ code, signal, stderr }))
  )
  const proc: Proc = {
    child,
    lines,
    exited,
    line: (prefix) => {
      const seen = lines.find((l) => l.startsWith(prefix))
      if (seen !== undefined) return Promise.resolve(seen)
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no line ${prefix} within ${LIMIT_MS} ms; stderr: ${stderr}`)), LIMIT_MS)
        waiters.push({ prefix, resolve: (l) => (clearTimeout(timer), resolve(l)) })
        void exited.then(() => setTimeout(() => {
          clearTimeout(timer)
          reject(new Error(`exited without a line ${prefix}; stderr: ${stderr}`))
        }, 50))
      })
    }
  }
  running.add(proc)
  return proc
}

const locker = (dir: string, wait = false) => start(process.execPath, [LOCKER, dir, ...(wait ? ["wait"] : [])])

/** State (R, S, Z, ...), parent and thread count of a process, from /proc; undefined once it is gone. */
const procStat = (pid: number): { state: string; ppid: number; threads: number } | undefined => {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, "utf8")
    const [state, ppid] = s.slice(s.lastIndexOf(")") + 2).split(" ")
    const threads = Number(/^Threads:\s+(\d+)/m.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"))?.[1])
    return { state: state!, ppid: Number(ppid), threads }
  } catch {
    return undefined
  }
}

const until = async (what: string, ok: () => boolean) => {
  const deadline = Date.now() + LIMIT_MS
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 10))
  }
}

const refusal = (f: () => unknown): unknown => {
  try {
    f()
  } catch (e) {
    return e
  }
  return undefined
}

/** Opens `dir` here, writes and reads a key, and closes: the directory is usable. */
const openHere = async (t: Test, dir: string, what: string) => {
  const log = openLog(nodeFilesApi, dir)
  await put(log, "k", what)
  t.equal(valueOf(log, "k"), what, `${what}: opened, written and read`)
  await log.close()
}

t.teardown(killLeftovers)

t.test("(a) a holder killed by SIGKILL and left a zombie does not block the restart", async (t) => {
  t.teardown(killLeftovers)
  const dir = t.testdir()
  // The fixture's parent must never reap it, so it stays a zombie after the kill: bash
  // starts it in the background and becomes perl, which waits for its child only once
  // stdin closes. (`exec sleep` would never reap it at all, and pid 1 here does not reap
  // orphans either, so the zombie would outlive the test.)
  const parent = start("bash", ["-c", `"$0" "$1" "$2" & exec perl -e 'sysread(STDIN, my $b, 1); wait; exit 0'`, process.execPath, LOCKER, dir], true)
  const pid = Number((await parent.line("L ")).split(" ")[1])
  t.equal(procStat(pid)?.ppid, parent.child.pid, "the holder's parent is the process that will not reap it")
  t.type(refusal(() => openLog(nodeFilesApi, dir)), DataDirLocked, "locked while the holder lives")

  process.kill(pid, "SIGKILL")
  // The main thread shows Z while Node's other threads are still exiting (a few ms); the
  // last of them closes the descriptors. A zombie is what is left when only it remains.
  await until(`process ${pid} to be a zombie`, () => {
    const s = procStat(pid)
    return s?.state === "Z" && s.threads === 1
  })
  t.equal(procStat(pid)?.state, "Z", `process ${pid} is a zombie (state Z in /proc/${pid}/stat, its threads all gone)`)
  t.equal(fs.readFileSync(path.join(dir, "LOCK"), "utf8"), String(pid), "the LOCK file still names it")
  t.doesNotThrow(() => process.kill(pid, 0), "and kill(pid, 0) still finds it, as the old pid check did")

  // At once, while the zombie is still there.
  await openHere(t, dir, "after the zombie")
  t.equal(procStat(pid)?.state, "Z", "the holder was still a zombie during the open")

  parent.child.stdin!.end()
  const end = await parent.exited
  t.equal(end.code, 0, "the parent reaped its zombie and exited", { stderr: end.stderr })
  t.equal(procStat(pid), undefined, "the zombie is gone")
})

t.test("(b) a LOCK file naming a live unrelated process does not block an open", async (t) => {
  for (const [who, pid] of [["the test runner (process.ppid)", process.ppid], ["init (pid 1)", 1]] as const) {
    const dir = t.testdir()
    fs.writeFileSync(path.join(dir, "LOCK"), String(pid))
    t.doesNotThrow(() => process.kill(pid, 0), `${who} is alive`)
    const log = openLog(nodeFilesApi, dir)
    t.equal(fs.readFileSync(path.join(dir, "LOCK"), "utf8"), String(process.pid), `${who}: the LOCK file now names this process`)
    await put(log, "k", "v")
    await log.close()
    t.ok(fs.existsSync(path.join(dir, "LOCK")), `${who}: close leaves the LOCK file in place`)
  }
})

t.test("(c) while a live child holds the dir, opening fails with DataDirLocked naming the dir", async (t) => {
  t.teardown(killLeftovers)
  const dir = t.testdir()
  const holder = locker(dir)
  const pid = Number((await holder.line("L ")).split(" ")[1])
  t.equal(pid, holder.child.pid, "the child holds the lock")

  const err = refusal(() => openLog(nodeFilesApi, dir)) as DataDirLocked
  t.type(err, DataDirLocked, "this process is refused")
  t.equal(err.code, "data_dir_locked")
  t.equal(err.dir, dir, "the error names the dir")
  t.match(err.message, dir, "so does its message")
  t.equal(err.pid, pid, "and the holder's pid, read from the LOCK file")
  t.match(err.message, String(pid))

  const other = locker(dir)
  const r = JSON.parse((await other.line("R ")).slice(2)) as { pid: number; dir: string; message: string }
  t.same([r.pid, r.dir], [pid, dir], "another process is refused too, told the same")
  t.equal((await other.exited).code, 0)

  process.kill(pid, "SIGKILL")
  t.equal((await holder.exited).signal, "SIGKILL")
  await openHere(t, dir, "after the holder was killed")
})

// LOCK_ROUNDS=200 for a long run; each round is two child processes.
const ROUNDS = Number(process.env.LOCK_ROUNDS ?? 8)

t.test(`(d) two children released at the same moment: exactly one opens, ${ROUNDS} rounds`, async (t) => {
  t.teardown(killLeftovers)
  const dir = t.testdir()
  const outcomes: string[] = []
  for (let round = 1; round <= ROUNDS; round++) {
    const pair = [locker(dir, true), locker(dir, true)]
    await Promise.all(pair.map((p) => p.line("W")))
    // Both are blocked reading stdin: one write each releases them within microseconds.
    for (const p of pair) p.child.stdin!.write("g")
    const results = await Promise.all(pair.map((p) => Promise.race([p.line("L "), p.line("R ")])))
    const opened = results.filter((l) => l.startsWith("L ")).length
    outcomes.push(results.map((l) => l[0]).join(""))
    t.equal(opened, 1, `round ${round}: exactly one of the two opened (${results.join(" | ")})`)
    for (let i = 0; i < 2; i++) {
      const p = pair[i]!
      if (results[i]!.startsWith("L ")) {
        p.child.kill("SIGKILL")
        t.equal((await p.exited).signal, "SIGKILL", `round ${round}: the winner was killed`)
      } else {
        const end = await p.exited
        t.equal(end.code, 0, `round ${round}: the loser exited after its refusal`, { stderr: end.stderr })
      }
    }
  }
  t.comment(`outcomes (L opened, R refused): ${outcomes.join(" ")}`)
})

t.test("(e) one process opening the same dir twice fails the second open", async (t) => {
  const dir = t.testdir()
  const log = openLog(nodeFilesApi, dir)
  const err = refusal(() => openLog(nodeFilesApi, dir)) as DataDirLocked
  t.type(err, DataDirLocked, "the second open is refused")
  t.equal(err.pid, process.pid, "it names this process")
  t.match(err.message, dir)
  await put(log, "k", "first")
  t.equal(valueOf(log, "k"), "first", "the first open is unharmed")
  await log.close()
  t.ok(fs.existsSync(path.join(dir, "LOCK")), "close leaves the LOCK file in place")
  await openHere(t, dir, "after close")
})

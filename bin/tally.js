#!/usr/bin/env node
// The `tally` entry point on the Node 24 that `npm install` brings (bin/tally execs it).
// The CLI is TypeScript that Node 24 runs by stripping types; an older Node would stop at
// ERR_UNKNOWN_FILE_EXTENSION, so this file is plain JavaScript that checks first and says
// what to run instead. The import is dynamic so that the check runs before any .ts loads.
const NEEDED = 24
const major = Number(process.versions.node.split(".")[0])
if (!(major >= NEEDED)) {
  process.stderr.write(
    `tally needs Node ${NEEDED} or later; this is Node ${process.versions.node} (${process.execPath}).\n` +
      "Run bin/tally or npx tally, which use the Node 24 that npm install put in node_modules/.bin/node,\n" +
      "or run this file with that Node: node_modules/.bin/node bin/tally.js ...\n"
  )
  process.exit(1)
}

// Run through npm (`npx tally`, `npm start`), a shell sits between npm and this process, and
// npm's SIGTERM stops the shell, not us: we would live on under PID 1 with the port and the
// data directory. So under npm, a parent that goes away is a SIGTERM, and the command stops
// as it does on one (a node closes cleanly). Outside npm, a parent's exit changes nothing:
// `tally node &` from a shell that then exits keeps running, as a daemon should.
if (process.env.npm_command !== undefined && process.platform !== "win32") {
  const parent = process.ppid
  const watch = setInterval(() => {
    if (process.ppid === parent) return
    clearInterval(watch)
    process.kill(process.pid, "SIGTERM")
  }, 500)
  watch.unref()
}

// Node keeps the compiled code of every module it loads in a cache directory (its default is
// under the temporary directory), so that later starts skip parsing and compiling Effect's
// modules: a CLI command starts with about a third less CPU. A cache that cannot be written
// only costs that saving.
const { enableCompileCache } = await import("node:module")
enableCompileCache?.()

await import("../src/cli/main.ts")

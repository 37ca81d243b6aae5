import fc from "fast-check"
import t from "tap"
import { DEFAULTS, FailureDetector, phiOf, type NodeStatus } from "../../src/membership/FailureDetector.ts"

// Times are plain milliseconds: a node "beats" by a call to `heartbeat`, silence is a later
// `nowMs`. Detection times are found by scanning silence in 1 ms steps.

const SECOND = 1000

/** A detector that heard `node` beat `count` times, `intervalMs` apart; returns the last beat. */
const steady = (fd: FailureDetector, node: string, count: number, intervalMs = SECOND, startMs = 0): number => {
  let now = startMs
  for (let i = 0; i < count; i++) {
    if (i > 0) now += intervalMs
    fd.heartbeat(node, now)
  }
  return now
}

/** Milliseconds of silence after `lastMs` until `node` first has `status`; undefined if not within `limitMs`. */
const silenceUntil = (
  fd: FailureDetector,
  node: string,
  lastMs: number,
  status: NodeStatus,
  limitMs = 60 * SECOND
): number | undefined => {
  for (let silence = 0; silence <= limitMs; silence++) {
    if (fd.status(node, lastMs + silence) === status) return silence
  }
  return undefined
}

/** Akka's PhiAccrualFailureDetector.phi, literally. */
const akkaPhi = (timeDiff: number, mean: number, stdDeviation: number): number => {
  const y = (timeDiff - mean) / stdDeviation
  const e = Math.exp(-y * (1.5976 + 0.070566 * y * y))
  return timeDiff > mean ? -Math.log10(e / (1 + e)) : -Math.log10(1 - 1 / (1 + e))
}

const seconds = (ms: number | undefined) => (ms === undefined ? "never" : `${(ms / SECOND).toFixed(3)} s`)

t.test("phiOf agrees with Akka's formula and stays finite where Akka's reaches Infinity", async (t) => {
  t.ok(Math.abs(phiOf(1000, 1000, 100) - Math.log10(2)) < 1e-15, "half the beats come later than the mean")
  fc.assert(
    fc.property(fc.double({ min: -30, max: 20, noNaN: true }), (y) => {
      const ours = phiOf(1000 + y * 100, 1000, 100)
      const akka = akkaPhi(1000 + y * 100, 1000, 100)
      return Math.abs(ours - akka) <= 1e-9 * Math.max(1, akka)
    })
  )
  t.equal(akkaPhi(1000 + 25 * 100, 1000, 100), Infinity, "Akka's underflows 25 deviations out")
  const far = [25, 100, 1e3, 1e6].map((y) => phiOf(1000 + y * 100, 1000, 100))
  t.ok(far.every(Number.isFinite), `finite far out: ${far.map((p) => p.toPrecision(4)).join(", ")}`)
  t.ok(far.every((p, i) => i === 0 || p > far[i - 1]!), "and still increasing")
})

t.test("steady 1 s heartbeats keep phi low", async (t) => {
  const fd = new FailureDetector()
  let now = 0
  let worstAtArrival = 0
  for (let i = 0; i < 300; i++) {
    if (i > 0) worstAtArrival = Math.max(worstAtArrival, fd.phi("a", now))
    fd.heartbeat("a", now)
    if (fd.phi("a", now) >= 1 || fd.status("a", now) !== "up") t.fail(`phi ${fd.phi("a", now)} after beat ${i}`)
    now += SECOND
  }
  t.comment(`highest phi as each beat arrived: ${worstAtArrival.toExponential(2)}`)
  t.ok(worstAtArrival < 1, "phi stays below 1 even as each beat is due")
  const stats = fd.stats("a")!
  t.equal(stats.meanMs, (750 + 1250 + 299 * SECOND) / 301, "seed intervals averaged in with the real ones")
})

t.test("phi only grows with silence", async (t) => {
  const fd = new FailureDetector()
  const last = steady(fd, "a", 60)
  let previous = -1
  for (let silence = 0; silence <= 120 * SECOND; silence += 7) {
    const phi = fd.phi("a", last + silence)
    if (!(phi >= previous) || !Number.isFinite(phi)) {
      t.fail(`phi ${phi} after ${silence} ms, was ${previous}`)
      return
    }
    previous = phi
  }
  t.ok(previous > 1000, `still finite after 2 min of silence: phi ${previous.toPrecision(4)}`)

  fc.assert(
    fc.property(
      fc.array(fc.integer({ min: 1, max: 5000 }), { minLength: 0, maxLength: 50 }),
      fc.integer({ min: 0, max: 20000 }),
      fc.integer({ min: 0, max: 20000 }),
      (intervals, a, b) => {
        const fd = new FailureDetector()
        let now = 0
        fd.heartbeat("a", now)
        for (const dt of intervals) fd.heartbeat("a", (now += dt))
        return fd.phi("a", now + Math.min(a, b)) <= fd.phi("a", now + Math.max(a, b))
      }
    )
  )
})

t.test("1 s heartbeats: suspect, then down, after two to three seconds of silence", async (t) => {
  const fd = new FailureDetector()
  const last = steady(fd, "a", 120)
  const suspect = silenceUntil(fd, "a", last, "suspect")
  const down = silenceUntil(fd, "a", last, "down")
  t.comment(`steady 1 s beats: suspect after ${seconds(suspect)}, down after ${seconds(down)} of silence`)
  t.equal(fd.status("a", last + 2 * SECOND), "up", "one lost beat is forgiven")
  t.ok(suspect !== undefined && suspect > 2 * SECOND && suspect < 3 * SECOND, "suspect within 2-3 s")
  t.ok(down !== undefined && suspect !== undefined && down > suspect && down < 3 * SECOND, "down within 3 s")

  // A jittery link (±30%) widens the fitted deviation, and with it the time to convict.
  const jittery = new FailureDetector()
  let now = 0
  fc.sample(fc.integer({ min: 700, max: 1300 }), { numRuns: 120, seed: 42 }).forEach((dt, i) => {
    jittery.heartbeat("b", i === 0 ? now : (now += dt))
  })
  const jSuspect = silenceUntil(jittery, "b", now, "suspect")
  const jDown = silenceUntil(jittery, "b", now, "down")
  const stats = jittery.stats("b")!
  t.comment(
    `±30% jitter (σ ${stats.stdDevMs.toFixed(0)} ms): suspect after ${seconds(jSuspect)}, down after ${seconds(jDown)}`
  )
  t.ok(jSuspect !== undefined && jDown !== undefined && jSuspect < jDown, "suspect before down")
  t.ok(jDown !== undefined && jDown > down! && jDown < 4 * SECOND, "down later than for steady beats, within 4 s")
})

t.test("jittery heartbeats that keep arriving are never convicted", async (t) => {
  let worst = 0
  fc.assert(
    fc.property(fc.array(fc.integer({ min: 700, max: 1300 }), { minLength: 1, maxLength: 400 }), (intervals) => {
      const fd = new FailureDetector()
      let now = 0
      fd.heartbeat("a", now)
      for (const dt of intervals) {
        now += dt
        const phi = fd.phi("a", now) // the longest this beat's silence gets
        worst = Math.max(worst, phi)
        if (fd.status("a", now) !== "up") return false
        fd.heartbeat("a", now)
      }
      return true
    }),
    { numRuns: 300 }
  )
  t.comment(`highest phi as a jittery beat arrived: ${worst.toFixed(3)}`)
  t.ok(worst < DEFAULTS.suspectThreshold, "not even suspect")

  // The worst case within ±30%: a run of fast beats shrinks the mean, then the slowest gap.
  const fd = new FailureDetector()
  const last = steady(fd, "a", 60, 700)
  t.equal(fd.status("a", last + 1300), "up", "a 1.3 s gap after 0.7 s beats is forgiven")
  const eager = new FailureDetector({ acceptableHeartbeatPauseMs: 0 })
  steady(eager, "a", 60, 700)
  t.equal(eager.status("a", last + 1300), "down", "but convicts with no acceptable pause")
})

t.test("a node that comes back is up again from its first heartbeat", async (t) => {
  const fd = new FailureDetector()
  let last = steady(fd, "a", 60)
  const before = fd.stats("a")!
  t.equal(fd.status("a", last + 30 * SECOND), "down")
  last += 30 * SECOND
  fd.heartbeat("a", last)
  t.equal(fd.status("a", last), "up", "up on the first beat back")
  t.same(fd.stats("a"), { ...before, lastHeartbeatMs: last }, "the 30 s outage is not learned as an interval")
  for (let i = 0; i < 10; i++) {
    t.equal(fd.status("a", last + SECOND), "up", `beat ${i + 1} after the return arrives with the node up`)
    fd.heartbeat("a", (last += SECOND))
  }
  const down = silenceUntil(fd, "a", last, "down")
  t.ok(down !== undefined && down < 3 * SECOND, `detected again as fast as before: ${seconds(down)}`)
})

t.test("the interval window never grows past windowSize", async (t) => {
  const windowSize = 16
  const fd = new FailureDetector({ windowSize })
  let now = 0
  const intervals: Array<number> = [750, 1250] // the seeds
  fd.heartbeat("a", now)
  for (let i = 0; i < 1000; i++) {
    const dt = 900 + ((i * 37) % 200)
    fd.heartbeat("a", (now += dt))
    intervals.push(dt)
    const { samples, meanMs, stdDevMs } = fd.stats("a")!
    const recent = intervals.slice(-windowSize)
    const mean = recent.reduce((a, b) => a + b, 0) / recent.length
    const sd = Math.sqrt(recent.reduce((a, b) => a + (b - mean) ** 2, 0) / recent.length)
    if (samples !== recent.length || Math.abs(meanMs - mean) > 1e-9 || Math.abs(stdDevMs - sd) > 1e-6) {
      t.fail(`after ${i + 1} beats: ${JSON.stringify({ samples, meanMs, stdDevMs })}, want ${recent.length} ${mean} ${sd}`)
      return
    }
  }
  t.pass("window holds exactly the last 16 intervals after 1000 beats")

  const big = new FailureDetector()
  steady(big, "b", 5000)
  t.equal(big.stats("b")!.samples, DEFAULTS.windowSize, "the default window stops at 1000 intervals")
  t.equal(big.stats("b")!.meanMs, SECOND, "the seeds have aged out")
})

t.test("one heartbeat then silence is still convicted, thanks to the estimate", async (t) => {
  const fd = new FailureDetector()
  fd.heartbeat("a", 0)
  t.same(fd.stats("a"), { samples: 2, meanMs: 1000, stdDevMs: 250, lastHeartbeatMs: 0 }, "seeded est ± est/4")
  const suspect = silenceUntil(fd, "a", 0, "suspect")
  const down = silenceUntil(fd, "a", 0, "down")
  t.comment(`single beat: suspect after ${seconds(suspect)}, down after ${seconds(down)} of silence`)
  t.ok(suspect !== undefined && suspect > 2 * SECOND, "not suspected before two expected intervals")
  t.ok(down !== undefined && down < 4 * SECOND, "down within 4 s")

  const slow = new FailureDetector({ firstHeartbeatEstimateMs: 5 * SECOND })
  slow.heartbeat("b", 0)
  const slowDown = silenceUntil(slow, "b", 0, "down")
  t.comment(`single beat, 5 s estimate: down after ${seconds(slowDown)}`)
  t.ok(slowDown !== undefined && slowDown > 5 * SECOND && slowDown < 15 * SECOND, "scales with the estimate")
})

t.test("nodes never heard from, removed, duplicates", async (t) => {
  const fd = new FailureDetector()
  t.equal(fd.phi("ghost", 0), Infinity, "never heard from: phi Infinity")
  t.equal(fd.status("ghost", 0), "down", "and down for routing")
  t.equal(fd.stats("ghost"), undefined)

  fd.heartbeat("b", 10)
  fd.heartbeat("a", 20)
  t.same(fd.nodes(), ["b", "a"])
  fd.heartbeat("a", 20)
  fd.heartbeat("a", 5)
  t.equal(fd.stats("a")!.samples, 2, "a duplicate or earlier beat records no interval")
  t.equal(fd.stats("a")!.lastHeartbeatMs, 20)

  t.equal(fd.remove("b"), true)
  t.equal(fd.remove("b"), false)
  t.same(fd.nodes(), ["a"])
  t.equal(fd.status("b", 10), "down", "removed: as if never heard from")
  fd.heartbeat("b", 5000)
  t.equal(fd.stats("b")!.samples, 2, "a removed node starts again from the seeds")

  t.throws(() => fd.heartbeat("a", NaN), RangeError)
})

t.test("options are checked all at once", async (t) => {
  t.same(new FailureDetector().options, DEFAULTS)
  const bad = { threshold: 4, suspectThreshold: 5, windowSize: 0.5, minStdDevMs: 0, acceptableHeartbeatPauseMs: -1 }
  t.throws(() => new FailureDetector(bad), RangeError)
  try {
    new FailureDetector(bad)
  } catch (e) {
    for (const name of ["suspectThreshold", "windowSize", "minStdDevMs", "acceptableHeartbeatPauseMs"]) {
      t.match((e as Error).message, name, `names ${name}`)
    }
  }
  t.doesNotThrow(() => new FailureDetector({ suspectThreshold: 8, windowSize: 1, acceptableHeartbeatPauseMs: 0 }))
})

/**
 * The one seeded generator of the code base (mulberry32): small, fast, and the same
 * everywhere, so a run replays from its seed. The in-memory disk's fault choices
 * (Files.ts), the simulator's virtual Math.random and workload (sim/), the chaos run's
 * schedule (chaos/) and the engine's crash tests all draw from it. Not for anything secret.
 */

/** A generator uniform in [0, 1), fully determined by `seed`. */
export const prng = (seed: number): (() => number) => {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

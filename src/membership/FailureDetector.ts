/**
 * Phi accrual failure detection (Hayashibara et al. 2004, as in Akka), pure: the caller passes
 * the time. Phi is -log10 of the chance that a live node's next heartbeat would come even later
 * than the silence seen so far, under a normal fit of its last `windowSize` intervals with the
 * acceptable pause added to the mean: phi 1 is a 10% chance of being wrong, phi 8 one in 10^8.
 * With heartbeats every second the defaults forgive one lost beat and convict after ~2.5 s.
 */

/** What routing should make of a node: `suspect` is cheap to act on, `down` hands off. */
export type NodeStatus = "up" | "suspect" | "down"

/** How the detector weighs silence; every time is in milliseconds. */
export interface FailureDetectorOptions {
  /** Phi at or above which a node is down. */
  readonly threshold: number
  /** Phi at or above which a node is suspect; at most `threshold`. */
  readonly suspectThreshold: number
  /** How many recent intervals the mean and standard deviation are taken over. */
  readonly windowSize: number
  /** Floor on the standard deviation, so that very regular beats do not make phi hair-trigger. */
  readonly minStdDevMs: number
  /** Silence beyond the usual interval that is still normal; added to the mean. */
  readonly acceptableHeartbeatPauseMs: number
  /** The expected interval, seeding a new node's history before its second heartbeat. */
  readonly firstHeartbeatEstimateMs: number
}

/**
 * Defaults for heartbeats sent every second between nodes. `threshold` 8 is Cassandra's
 * `phi_convict_threshold` and Akka's. `suspectThreshold` 5 is a thousand times likelier to be
 * wrong than a conviction, fine for a reversible choice such as reading from another replica
 * first, yet under the model still one false suspicion per 10^5 on-time beats. A pause of one
 * interval means a single lost heartbeat, or a stall of up to ~1.4 s in either event loop, never
 * even suspects a node, while two lost beats in a row convict it; with no pause a stall of
 * ~0.5 s (a major GC, a slow fsync) would convict a healthy peer and start hinted handoff.
 */
export const DEFAULTS: FailureDetectorOptions = {
  threshold: 8,
  suspectThreshold: 5,
  windowSize: 1000,
  minStdDevMs: 100,
  acceptableHeartbeatPauseMs: 1000,
  firstHeartbeatEstimateMs: 1000
}

/** A node's heartbeat history: its interval window (seed intervals included) and last beat. */
export interface HeartbeatStats {
  readonly samples: number
  readonly meanMs: number
  /** Of the window itself, before `minStdDevMs` applies. */
  readonly stdDevMs: number
  readonly lastHeartbeatMs: number
}

/**
 * Phi after `elapsedMs` of silence for intervals of the given mean and standard deviation:
 * log10(1 + e^z), where 1 / (1 + e^z) is the logistic approximation of the normal tail that Akka
 * uses. Computed so that neither tail overflows or underflows: finite and increasing in
 * `elapsedMs`, where Akka's `-log10(e / (1 + e))` reaches Infinity some 22 deviations out.
 */
export const phiOf = (elapsedMs: number, meanMs: number, stdDevMs: number): number => {
  const y = (elapsedMs - meanMs) / stdDevMs
  const z = y * (1.5976 + 0.070566 * y * y)
  return (z > 0 ? z + Math.log1p(Math.exp(-z)) : Math.log1p(Math.exp(z))) / Math.LN10
}

class History {
  /** A ring once full: `next` is the oldest interval, the one to overwrite. */
  readonly intervals: Array<number> = []
  next = 0
  sum = 0
  sumSq = 0
  last: number

  constructor(last: number) {
    this.last = last
  }

  push(interval: number, windowSize: number): void {
    const intervals = this.intervals
    if (intervals.length < windowSize) {
      intervals.push(interval)
      this.sum += interval
      this.sumSq += interval * interval
      return
    }
    const old = intervals[this.next]!
    intervals[this.next] = interval
    if (++this.next < windowSize) {
      this.sum += interval - old
      this.sumSq += interval * interval - old * old
      return
    }
    // Once per lap, recount exactly, so rounding in the running sums never accumulates.
    this.next = 0
    let sum = 0
    let sumSq = 0
    for (const x of intervals) {
      sum += x
      sumSq += x * x
    }
    this.sum = sum
    this.sumSq = sumSq
  }

  mean(): number {
    return this.sum / this.intervals.length
  }

  stdDev(): number {
    const mean = this.mean()
    return Math.sqrt(Math.max(0, this.sumSq / this.intervals.length - mean * mean))
  }
}

const problems = (o: FailureDetectorOptions): Array<string> => {
  const out: Array<string> = []
  const positive = (name: keyof FailureDetectorOptions) => {
    if (!(Number.isFinite(o[name]) && o[name] > 0)) out.push(`${name} must be a positive number, got ${o[name]}`)
  }
  positive("threshold")
  positive("suspectThreshold")
  positive("minStdDevMs")
  positive("firstHeartbeatEstimateMs")
  if (o.suspectThreshold > o.threshold) {
    out.push(`suspectThreshold must be at most threshold (${o.threshold}), got ${o.suspectThreshold}`)
  }
  if (!(Number.isSafeInteger(o.windowSize) && o.windowSize >= 1)) {
    out.push(`windowSize must be a positive integer, got ${o.windowSize}`)
  }
  if (!(Number.isFinite(o.acceptableHeartbeatPauseMs) && o.acceptableHeartbeatPauseMs >= 0)) {
    out.push(`acceptableHeartbeatPauseMs must be a number of at least 0, got ${o.acceptableHeartbeatPauseMs}`)
  }
  return out
}

/**
 * A phi accrual failure detector over any number of nodes. Times are the caller's monotonic
 * clock in milliseconds; nothing here reads a clock or allocates per heartbeat once a node's
 * window is full.
 */
export class FailureDetector {
  readonly options: FailureDetectorOptions
  readonly #histories = new Map<string, History>()

  /** @throws RangeError naming every invalid option: a misconfiguration is a defect. */
  constructor(options: Partial<FailureDetectorOptions> = {}) {
    this.options = { ...DEFAULTS, ...options }
    const found = problems(this.options)
    if (found.length > 0) throw new RangeError(`FailureDetector: ${found.join("; ")}`)
  }

  /**
   * Records a heartbeat from `node` at `nowMs`. The first one seeds the history with the
   * intervals est ± est/4 (Akka's seeding), so a node that dies straight after it is still
   * convicted in bounded time. A beat no later than the last one is a duplicate and ignored;
   * the silence before a beat that finds the node down is not recorded, as it says nothing
   * about the node's rhythm while alive, and the node is up again from that beat on.
   */
  heartbeat(node: string, nowMs: number): void {
    if (!Number.isFinite(nowMs)) throw new RangeError(`FailureDetector: heartbeat time must be finite, got ${nowMs}`)
    const history = this.#histories.get(node)
    if (history === undefined) {
      const fresh = new History(nowMs)
      const estimate = this.options.firstHeartbeatEstimateMs
      fresh.push(estimate - estimate / 4, this.options.windowSize)
      fresh.push(estimate + estimate / 4, this.options.windowSize)
      this.#histories.set(node, fresh)
      return
    }
    if (!(nowMs > history.last)) return
    if (this.#phi(history, nowMs) < this.options.threshold) history.push(nowMs - history.last, this.options.windowSize)
    history.last = nowMs
  }

  /**
   * Phi of `node` at `nowMs`: about 0 right after a beat, then increasing, finite, with
   * silence. A node never heard from (or removed) has phi Infinity, so it is `down` and not
   * routed to; to give a joining node a grace period, record a heartbeat when it joins.
   */
  phi(node: string, nowMs: number): number {
    const history = this.#histories.get(node)
    return history === undefined ? Infinity : this.#phi(history, nowMs)
  }

  /** `down` at phi ≥ `threshold`, `suspect` at phi ≥ `suspectThreshold`, else `up`. */
  status(node: string, nowMs: number): NodeStatus {
    const phi = this.phi(node, nowMs)
    return phi >= this.options.threshold ? "down" : phi >= this.options.suspectThreshold ? "suspect" : "up"
  }

  /** Forgets `node`, which counts as never heard from until its next heartbeat; true if known. */
  remove(node: string): boolean {
    return this.#histories.delete(node)
  }

  /** The nodes heard from and not removed, in order of first heartbeat. */
  nodes(): Array<string> {
    return Array.from(this.#histories.keys())
  }

  /** The interval window of `node`, for metrics and tests; undefined if never heard from. */
  stats(node: string): HeartbeatStats | undefined {
    const history = this.#histories.get(node)
    if (history === undefined) return undefined
    return {
      samples: history.intervals.length,
      meanMs: history.mean(),
      stdDevMs: history.stdDev(),
      lastHeartbeatMs: history.last
    }
  }

  #phi(history: History, nowMs: number): number {
    const { acceptableHeartbeatPauseMs, minStdDevMs } = this.options
    const meanMs = history.mean() + acceptableHeartbeatPauseMs
    return phiOf(nowMs - history.last, meanMs, Math.max(history.stdDev(), minStdDevMs))
  }
}

// Token buckets for ICMP errors: one per source, in a fixed-size table
// (bounded memory whatever the number of sources, no allocation per packet; a
// hash collision makes two sources share one bucket, which only errs towards
// fewer ICMP messages), and one for all sources together, because a flood
// from many (spoofed) sources would otherwise get a full per-source budget
// each.

const SLOTS = 1024;

export class PerSourceLimiter {
  private readonly used = new Uint8Array(SLOTS);
  private readonly tokens = new Float64Array(SLOTS);
  private readonly stamp = new Float64Array(SLOTS);

  /**
   * @param ratePerSecond tokens added per second per source
   * @param burst bucket size
   */
  constructor(
    private readonly ratePerSecond = 10,
    private readonly burst = 10,
  ) {}

  /** Takes a token for `source` at time `nowMs`; false when the source is over its rate. */
  allow(source: number, nowMs: number): boolean {
    const slot = Math.imul(source, 0x9e3779b1) >>> 22; // top 10 bits: 0..1023
    if (this.used[slot] === 0) {
      this.used[slot] = 1;
      this.tokens[slot] = this.burst;
    } else {
      const refill = ((nowMs - this.stamp[slot]) * this.ratePerSecond) / 1000;
      this.tokens[slot] = Math.min(this.burst, this.tokens[slot] + refill);
    }
    this.stamp[slot] = nowMs;
    if (this.tokens[slot] < 1) return false;
    this.tokens[slot] -= 1;
    return true;
  }
}

/** One token bucket. */
export class TokenBucket {
  private tokens: number;
  private stamp = Number.NEGATIVE_INFINITY;

  constructor(
    private readonly ratePerSecond: number,
    private readonly burst: number,
  ) {
    this.tokens = burst;
  }

  /** Takes a token at time `nowMs`; false when none is left. */
  take(nowMs: number): boolean {
    if (this.stamp !== Number.NEGATIVE_INFINITY) {
      this.tokens = Math.min(this.burst, this.tokens + ((nowMs - this.stamp) * this.ratePerSecond) / 1000);
    }
    this.stamp = nowMs;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}

// Per-source token buckets for ICMP errors, in a fixed-size table: bounded
// memory whatever the number of sources, no allocation per packet. A hash
// collision makes two sources share one bucket, which only errs towards fewer
// ICMP messages.

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

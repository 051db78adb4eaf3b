// The open run per destination while one batch is gathered: an
// open-addressing table keyed by (address, port), emptied per batch by a
// stamp instead of a fill, so finding a peer's run costs a hash and a probe
// or two and nothing is allocated.

export class RunIndex {
  private readonly mask: number;
  private readonly shift: number;
  private readonly stamp: Uint32Array;
  private readonly addr: Uint32Array;
  private readonly port: Uint16Array;
  private current = 0;
  /** The run's staged entry. */
  readonly entry: Uint32Array;
  /** Its segment size; 0 once closed by a shorter datagram. */
  readonly seg: Uint16Array;
  /** Datagrams in it. */
  readonly segments: Uint16Array;

  /** Room for `destinations` distinct destinations per batch at half load. */
  constructor(destinations: number) {
    let bits = 4;
    while (1 << bits < destinations * 2) bits++;
    const size = 1 << bits;
    this.mask = size - 1;
    this.shift = 32 - bits;
    this.stamp = new Uint32Array(size);
    this.addr = new Uint32Array(size);
    this.port = new Uint16Array(size);
    this.entry = new Uint32Array(size);
    this.seg = new Uint16Array(size);
    this.segments = new Uint16Array(size);
  }

  /** Forgets every run (stamp 0 is never current). */
  clear(): void {
    if (this.current === 0xffffffff) {
      this.stamp.fill(0);
      this.current = 0;
    }
    this.current++;
  }

  /** The slot of (addr, port)'s open run, or -1. */
  find(addr: number, port: number): number {
    const h = this.probe(addr, port);
    return this.stamp[h] === this.current ? h : -1;
  }

  /** Opens (or replaces) the run of (addr, port) at staged entry `entry`. */
  open(addr: number, port: number, entry: number, seg: number): void {
    const h = this.probe(addr, port);
    this.stamp[h] = this.current;
    this.addr[h] = addr;
    this.port[h] = port;
    this.entry[h] = entry;
    this.seg[h] = seg;
    this.segments[h] = 1;
  }

  /** The slot holding (addr, port) this batch, else the first free one on its probe path. */
  private probe(addr: number, port: number): number {
    // Fibonacci hashing: the top bits of the product mix every input bit.
    let h = Math.imul(addr ^ (port << 16), 0x9e3779b1) >>> this.shift;
    while (this.stamp[h] === this.current && (this.addr[h] !== addr || this.port[h] !== port)) {
      h = (h + 1) & this.mask;
    }
    return h;
  }
}

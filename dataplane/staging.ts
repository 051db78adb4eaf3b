// What the engine hands a Device or Transport: where each staged packet
// already lies (packets are never copied between arenas) and, toward peers,
// where it goes. One object per direction, kept for the engine's life, so
// the native side binds its arrays once; ICMP errors have their own small
// arena and batch (icmp-out.ts).

import type { DatagramTxBatch } from "./io.js";

/** Staged packets of one direction; count and pending track a write in progress. */
export class Staging implements DatagramTxBatch {
  offsets: Uint32Array;
  lengths: Uint32Array;
  addrs: Uint32Array;
  ports: Uint16Array;
  count = 0;
  /** First staged packet not yet accepted by the kernel (after a short write). */
  pending = 0;

  constructor(
    readonly bytes: Uint8Array,
    capacity: number,
  ) {
    [this.offsets, this.lengths, this.addrs, this.ports] = Staging.carve(capacity);
  }

  /**
   * All four arrays in one ArrayBuffer: before every write/send the addon
   * checks each distinct buffer under its pointers (not detached), one
   * buffer is one check.
   */
  private static carve(size: number): [Uint32Array, Uint32Array, Uint32Array, Uint16Array] {
    const buf = new ArrayBuffer(size * 14);
    return [
      new Uint32Array(buf, 0, size),
      new Uint32Array(buf, size * 4, size),
      new Uint32Array(buf, size * 8, size),
      new Uint16Array(buf, size * 12, size),
    ];
  }

  /** Room for `needed` entries: sized up front from the source's capacity, growing is a safety net. */
  ensure(needed: number): void {
    if (needed <= this.offsets.length) return;
    const [offsets, lengths, addrs, ports] = Staging.carve(Math.max(needed, this.offsets.length * 2));
    offsets.set(this.offsets);
    lengths.set(this.lengths);
    addrs.set(this.addrs);
    ports.set(this.ports);
    [this.offsets, this.lengths, this.addrs, this.ports] = [offsets, lengths, addrs, ports];
  }
}

// Splitting a super-packet read from flannel0 (TSO/USO, behind a virtio-net
// header) into the ordinary IPv4 packets flannel peers expect: one packet per
// datagram, none longer than the overlay MTU. The bytes move in the addon
// (gsoSplit, in place: segment k lands at off + k * stride); this wrapper only
// keeps the result without allocating.

import { type Addon, loadAddon } from "../native/index.js";

export class Splitter {
  private readonly out = new Uint32Array(3);
  private addon: Addon | null = null;

  /**
   * Splits bytes[off, +len) (len = the IP total length) into segments of
   * gsoSize payload bytes, in place, within `room` bytes from off. False when
   * it is not a splittable IPv4 TCP/UDP super-packet or does not fit.
   */
  split(bytes: Uint8Array, off: number, len: number, gsoType: number, gsoSize: number, room: number): boolean {
    if (this.addon === null) this.addon = loadAddon();
    return this.addon.gsoSplit(bytes, off, len, gsoType, gsoSize, room, this.out);
  }

  /** Of the last successful split: how many packets. */
  get segments(): number {
    return this.out[0] as number;
  }
  /** Bytes from one segment's start to the next (every segment but the last is this long). */
  get stride(): number {
    return this.out[1] as number;
  }
  /** Bytes of all segments together. */
  get total(): number {
    return this.out[2] as number;
  }
}

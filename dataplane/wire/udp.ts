// A zero-copy view of a UDP header (RFC 768): field offsets, getters,
// setters and the checksum over the pseudo-header. Like Ipv4View, one view is
// pointed at packet after packet, so reading or patching one allocates nothing.

import { internetChecksum } from "./checksum.js";

export const UDP_HEADER = 8;
export const UDP_SRC_PORT = 0;
export const UDP_DST_PORT = 2;
export const UDP_LENGTH = 4;
export const UDP_CHECKSUM = 6;

/** Outcome of validating bytes as a UDP header. */
export const UdpCheck = {
  Ok: 0,
  /** Fewer than 8 bytes, or a length field below 8 or beyond what is there. */
  Malformed: 1,
} as const;
export type UdpCheck = (typeof UdpCheck)[keyof typeof UdpCheck];

export class UdpView {
  bytes: Uint8Array = new Uint8Array(0);
  off = 0;

  /** Points the view at the UDP header at bytes[off] with `len` bytes of datagram available, and validates it. */
  check(bytes: Uint8Array, off: number, len: number): UdpCheck {
    this.bytes = bytes;
    this.off = off;
    if (len < UDP_HEADER) return UdpCheck.Malformed;
    const length = this.length;
    if (length < UDP_HEADER || length > len) return UdpCheck.Malformed;
    return UdpCheck.Ok;
  }

  /** Points the view at bytes[off] without validating (the caller knows the header is there). */
  at(bytes: Uint8Array, off: number): this {
    this.bytes = bytes;
    this.off = off;
    return this;
  }

  get srcPort(): number {
    return this.u16(UDP_SRC_PORT);
  }
  set srcPort(port: number) {
    this.put16(UDP_SRC_PORT, port);
  }
  get dstPort(): number {
    return this.u16(UDP_DST_PORT);
  }
  set dstPort(port: number) {
    this.put16(UDP_DST_PORT, port);
  }
  /** Header plus payload, bytes. */
  get length(): number {
    return this.u16(UDP_LENGTH);
  }
  set length(value: number) {
    this.put16(UDP_LENGTH, value);
  }
  /** 0 means the sender computed none (allowed over IPv4). */
  get checksum(): number {
    return this.u16(UDP_CHECKSUM);
  }
  set checksum(value: number) {
    this.put16(UDP_CHECKSUM, value);
  }

  /**
   * Recomputes the checksum over `l4Length` bytes of header and payload with
   * `pseudo`, the pseudo-header sum (Ipv4View.pseudoHeaderSum). A computed 0 is
   * sent as 0xffff, since 0 on the wire means "no checksum" (RFC 768).
   */
  updateChecksum(pseudo: number, l4Length: number): void {
    this.checksum = 0;
    const sum = internetChecksum(this.bytes, this.off, l4Length, pseudo);
    this.checksum = sum === 0 ? 0xffff : sum;
  }

  private u16(field: number): number {
    return (this.bytes[this.off + field] << 8) | this.bytes[this.off + field + 1];
  }
  private put16(field: number, value: number): void {
    this.bytes[this.off + field] = (value >>> 8) & 0xff;
    this.bytes[this.off + field + 1] = value & 0xff;
  }
}

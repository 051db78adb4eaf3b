// A zero-copy view of an IPv4 header. `check()` validates once; after it
// returns Ipv4Check.Ok every accessor is safe for that packet. One view is
// reused for every packet of a batch, so reading a packet allocates nothing.

import { internetChecksum, updateChecksum16 } from "./checksum.js";

export const IPV4_MIN_HEADER = 20;
export const PROTO_ICMP = 1;
export const PROTO_TCP = 6;
export const PROTO_UDP = 17;

// Field offsets from the start of the header (RFC 791 3.1).
export const IPV4_VERSION_IHL = 0;
export const IPV4_TOS = 1;
export const IPV4_TOTAL_LENGTH = 2;
export const IPV4_ID = 4;
/** Flags (3 bits: reserved, DF 0x40, MF 0x20) and the 13-bit fragment offset. */
export const IPV4_FLAGS_FRAGMENT = 6;
export const IPV4_TTL = 8;
export const IPV4_PROTOCOL = 9;
export const IPV4_CHECKSUM = 10;
export const IPV4_SRC = 12;
export const IPV4_DST = 16;

/** Outcome of validating bytes as an IPv4 packet. */
export const Ipv4Check = {
  Ok: 0,
  /** Fewer than 20 bytes, IHL < 5, header or total length beyond what was read. */
  Malformed: 1,
  /** Version nibble is not 4 (IPv6 and garbage alike). */
  NotIpv4: 2,
} as const;
export type Ipv4Check = (typeof Ipv4Check)[keyof typeof Ipv4Check];

export class Ipv4View {
  bytes: Uint8Array = new Uint8Array(0);
  off = 0;

  /** Points the view at bytes[off, off+len) and validates it. */
  check(bytes: Uint8Array, off: number, len: number): Ipv4Check {
    this.bytes = bytes;
    this.off = off;
    if (len < 1) return Ipv4Check.Malformed;
    if (bytes[off] >>> 4 !== 4) return Ipv4Check.NotIpv4;
    if (len < IPV4_MIN_HEADER) return Ipv4Check.Malformed;
    const ihl = (bytes[off] & 0x0f) << 2;
    if (ihl < IPV4_MIN_HEADER || ihl > len) return Ipv4Check.Malformed;
    const total = (bytes[off + 2] << 8) | bytes[off + 3];
    if (total < ihl || total > len) return Ipv4Check.Malformed;
    return Ipv4Check.Ok;
  }

  get headerLength(): number {
    return (this.bytes[this.off] & 0x0f) << 2;
  }
  get totalLength(): number {
    return (this.bytes[this.off + 2] << 8) | this.bytes[this.off + 3];
  }
  get ttl(): number {
    return this.bytes[this.off + 8];
  }
  get protocol(): number {
    return this.bytes[this.off + 9];
  }
  get checksum(): number {
    return (this.bytes[this.off + 10] << 8) | this.bytes[this.off + 11];
  }
  get src(): number {
    const b = this.bytes;
    const o = this.off + 12;
    return ((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) >>> 0;
  }
  get dst(): number {
    const b = this.bytes;
    const o = this.off + 16;
    return ((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) >>> 0;
  }
  /** Don't Fragment flag. */
  get dontFragment(): boolean {
    return (this.bytes[this.off + 6] & 0x40) !== 0;
  }
  /** Fragment offset in 8-byte units; non-zero means a later fragment. */
  get fragmentOffset(): number {
    return ((this.bytes[this.off + 6] & 0x1f) << 8) | this.bytes[this.off + 7];
  }
  /** More Fragments flag: a fragment other than the last. */
  get moreFragments(): boolean {
    return (this.bytes[this.off + IPV4_FLAGS_FRAGMENT] & 0x20) !== 0;
  }

  // Setters write the field only: the header checksum is the caller's to
  // fix, once, after every change (updateHeaderChecksum), or per field with
  // the RFC 1624 update as decrementTtl does.
  set ttl(value: number) {
    this.bytes[this.off + IPV4_TTL] = value;
  }
  set src(addr: number) {
    writeAddr(this.bytes, this.off + IPV4_SRC, addr);
  }
  set dst(addr: number) {
    writeAddr(this.bytes, this.off + IPV4_DST, addr);
  }

  /** Recomputes the header checksum over headerLength bytes. */
  updateHeaderChecksum(): void {
    const b = this.bytes;
    const o = this.off;
    b[o + IPV4_CHECKSUM] = 0;
    b[o + IPV4_CHECKSUM + 1] = 0;
    const sum = internetChecksum(b, o, this.headerLength);
    b[o + IPV4_CHECKSUM] = sum >>> 8;
    b[o + IPV4_CHECKSUM + 1] = sum & 0xff;
  }

  /** Ones'-complement sum of the TCP/UDP pseudo-header (RFC 768, RFC 9293 3.1) for `l4Length` bytes. */
  pseudoHeaderSum(l4Length: number): number {
    const s = this.src;
    const d = this.dst;
    return (s >>> 16) + (s & 0xffff) + (d >>> 16) + (d & 0xffff) + this.protocol + l4Length;
  }

  /**
   * Decrements TTL in place with the RFC 1624 checksum update and returns the
   * new TTL. A packet whose TTL is already 0 is left untouched (returns 0).
   */
  decrementTtl(): number {
    const b = this.bytes;
    const o = this.off;
    const ttl = b[o + 8];
    if (ttl === 0) return 0;
    const oldWord = (ttl << 8) | b[o + 9];
    const newWord = oldWord - 0x100;
    const sum = updateChecksum16((b[o + 10] << 8) | b[o + 11], oldWord, newWord);
    b[o + 8] = ttl - 1;
    b[o + 10] = sum >>> 8;
    b[o + 11] = sum & 0xff;
    return ttl - 1;
  }
}

/** Reads a big-endian IPv4 address at bytes[off]. */
export function readAddr(bytes: Uint8Array, off: number): number {
  return ((bytes[off] << 24) | (bytes[off + 1] << 16) | (bytes[off + 2] << 8) | bytes[off + 3]) >>> 0;
}

export function writeAddr(bytes: Uint8Array, off: number, addr: number): void {
  bytes[off] = addr >>> 24;
  bytes[off + 1] = (addr >>> 16) & 0xff;
  bytes[off + 2] = (addr >>> 8) & 0xff;
  bytes[off + 3] = addr & 0xff;
}

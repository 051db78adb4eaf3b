// ICMP error messages weft writes back into flannel0 (COMPAT.md): source is
// the flannel0 address, TTL 8, payload the offender's IP header + 8 bytes.

import { isMartian } from "../addr.js";
import { internetChecksum } from "./checksum.js";
import { IPV4_MIN_HEADER, type Ipv4View, PROTO_ICMP, writeAddr } from "./ipv4.js";

export const ICMP_DEST_UNREACH = 3;
export const ICMP_TIME_EXCEEDED = 11;
export const CODE_NET_UNREACH = 0;
export const CODE_FRAG_NEEDED = 4;
export const CODE_TTL_EXCEEDED = 0;

const ICMP_HEADER = 8;
const ERROR_TTL = 8;
/** Largest ICMP error we build: 20 (IP) + 8 (ICMP) + 60 (max header) + 8. */
export const ICMP_ERROR_MAX = IPV4_MIN_HEADER + ICMP_HEADER + 60 + 8;

/** ICMP types that are errors: never answer them with another error (RFC 1122 3.2.2). */
function isIcmpError(type: number): boolean {
  return type === 3 || type === 4 || type === 5 || type === 11 || type === 12;
}

/**
 * Whether the packet in `ip` (already validated) may be answered with an ICMP
 * error: only first fragments, never about an ICMP error, and only when both
 * ends are ordinary unicast addresses: an error about a packet from or to
 * 0/8, loopback, multicast, 240/4 or broadcast is a reflection waiting to
 * happen (RFC 1812 4.3.2.7).
 */
export function mayAnswerWithError(ip: Ipv4View): boolean {
  if (ip.fragmentOffset !== 0) return false;
  if (isMartian(ip.src) || isMartian(ip.dst)) return false;
  if (ip.protocol === PROTO_ICMP) {
    const icmpOff = ip.headerLength;
    if (ip.totalLength <= icmpOff) return false;
    if (isIcmpError(ip.bytes[ip.off + icmpOff])) return false;
  }
  return true;
}

/** Length of the ICMP error buildIcmpError would make about `ip`. */
export function icmpErrorLength(ip: Ipv4View): number {
  return IPV4_MIN_HEADER + ICMP_HEADER + Math.min(ip.totalLength, ip.headerLength + 8);
}

let nextId = 1;

/**
 * Builds an ICMP error about `ip` into out[outOff…] and returns its length.
 * `extra` fills the 4 "unused" bytes (next-hop MTU for Fragmentation Needed).
 */
export function buildIcmpError(
  out: Uint8Array,
  outOff: number,
  type: number,
  code: number,
  extra: number,
  ip: Ipv4View,
  source: number,
): number {
  const total = icmpErrorLength(ip);
  const quoted = total - IPV4_MIN_HEADER - ICMP_HEADER;
  const o = outOff;
  out[o] = 0x45;
  out[o + 1] = 0;
  out[o + 2] = total >>> 8;
  out[o + 3] = total & 0xff;
  const id = nextId;
  nextId = (nextId + 1) & 0xffff;
  out[o + 4] = id >>> 8;
  out[o + 5] = id & 0xff;
  out[o + 6] = 0;
  out[o + 7] = 0;
  out[o + 8] = ERROR_TTL;
  out[o + 9] = PROTO_ICMP;
  out[o + 10] = 0;
  out[o + 11] = 0;
  writeAddr(out, o + 12, source);
  writeAddr(out, o + 16, ip.src);
  const ipSum = internetChecksum(out, o, IPV4_MIN_HEADER);
  out[o + 10] = ipSum >>> 8;
  out[o + 11] = ipSum & 0xff;

  const c = o + IPV4_MIN_HEADER;
  out[c] = type;
  out[c + 1] = code;
  out[c + 2] = 0;
  out[c + 3] = 0;
  out[c + 4] = (extra >>> 24) & 0xff;
  out[c + 5] = (extra >>> 16) & 0xff;
  out[c + 6] = (extra >>> 8) & 0xff;
  out[c + 7] = extra & 0xff;
  // A byte loop, not subarray(): no view object per ICMP error.
  const src = ip.bytes;
  for (let i = 0; i < quoted; i++) out[c + ICMP_HEADER + i] = src[ip.off + i];
  const icmpSum = internetChecksum(out, c, ICMP_HEADER + quoted);
  out[c + 2] = icmpSum >>> 8;
  out[c + 3] = icmpSum & 0xff;
  return total;
}

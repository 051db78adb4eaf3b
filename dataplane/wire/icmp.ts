// ICMP error messages weft writes back into flannel0 (COMPAT.md): source is
// the flannel0 address, TTL 8, payload the offender's IP header + 8 bytes.

import { isMartian } from "../../net/addr.js";
import { internetChecksum } from "./checksum.js";
import {
  IPV4_CHECKSUM,
  IPV4_DST,
  IPV4_FLAGS_FRAGMENT,
  IPV4_ID,
  IPV4_MIN_HEADER,
  IPV4_PROTOCOL,
  IPV4_SRC,
  IPV4_TOS,
  IPV4_TOTAL_LENGTH,
  IPV4_TTL,
  IPV4_VERSION_IHL,
  type Ipv4View,
  PROTO_ICMP,
  writeAddr,
} from "./ipv4.js";
import { writeU16 } from "./tcp.js";

export const ICMP_DEST_UNREACH = 3;
export const ICMP_TIME_EXCEEDED = 11;
export const CODE_NET_UNREACH = 0;
export const CODE_FRAG_NEEDED = 4;
export const CODE_TTL_EXCEEDED = 0;

const ICMP_HEADER = 8;
// Field offsets in the ICMP header.
const ICMP_TYPE = 0;
const ICMP_CODE = 1;
const ICMP_CHECKSUM = 2;
/** The 4 bytes after the checksum ("unused", or the next-hop MTU). */
const ICMP_REST = 4;
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
    if (isIcmpError(ip.bytes[ip.off + icmpOff + ICMP_TYPE])) return false;
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
  out[o + IPV4_VERSION_IHL] = 0x45;
  out[o + IPV4_TOS] = 0;
  writeU16(out, o + IPV4_TOTAL_LENGTH, total);
  writeU16(out, o + IPV4_ID, nextId);
  nextId = (nextId + 1) & 0xffff;
  writeU16(out, o + IPV4_FLAGS_FRAGMENT, 0);
  out[o + IPV4_TTL] = ERROR_TTL;
  out[o + IPV4_PROTOCOL] = PROTO_ICMP;
  writeU16(out, o + IPV4_CHECKSUM, 0);
  writeAddr(out, o + IPV4_SRC, source);
  writeAddr(out, o + IPV4_DST, ip.src);
  writeU16(out, o + IPV4_CHECKSUM, internetChecksum(out, o, IPV4_MIN_HEADER));

  const c = o + IPV4_MIN_HEADER;
  out[c + ICMP_TYPE] = type;
  out[c + ICMP_CODE] = code;
  writeU16(out, c + ICMP_CHECKSUM, 0);
  // The "unused" word: the next-hop MTU for Fragmentation Needed, else 0.
  writeU16(out, c + ICMP_REST, (extra >>> 16) & 0xffff);
  writeU16(out, c + ICMP_REST + 2, extra & 0xffff);
  // A byte loop, not subarray(): no view object per ICMP error.
  const src = ip.bytes;
  for (let i = 0; i < quoted; i++) out[c + ICMP_HEADER + i] = src[ip.off + i];
  writeU16(out, c + ICMP_CHECKSUM, internetChecksum(out, c, ICMP_HEADER + quoted));
  return total;
}

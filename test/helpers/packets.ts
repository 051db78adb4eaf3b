// Builds small, valid IPv4 packets for tests: a slow, obvious construction
// (full checksums, no tricks) that the fast code is compared against.

import { internetChecksum, onesSum } from "../../dataplane/wire/checksum.js";
import { writeAddr } from "../../dataplane/wire/ipv4.js";
import { parseIpv4 } from "../../net/addr.js";

export interface PacketSpec {
  src: string | number;
  dst: string | number;
  ttl?: number;
  protocol?: number;
  payload?: Uint8Array;
  /** Bytes of IP options (multiple of 4). */
  options?: Uint8Array;
  id?: number;
  dontFragment?: boolean;
  fragmentOffset?: number;
  moreFragments?: boolean;
}

const addr = (a: string | number) => (typeof a === "number" ? a : parseIpv4(a));

export function ipv4Packet(spec: PacketSpec): Uint8Array {
  const options = spec.options ?? new Uint8Array(0);
  const payload = spec.payload ?? new Uint8Array(8);
  const ihl = 20 + options.length;
  const total = ihl + payload.length;
  const p = new Uint8Array(total);
  p[0] = 0x40 | (ihl >> 2);
  p[2] = total >> 8;
  p[3] = total & 0xff;
  const id = spec.id ?? 0x1234;
  p[4] = id >> 8;
  p[5] = id & 0xff;
  const frag = (spec.fragmentOffset ?? 0) | (spec.dontFragment ? 0x4000 : 0) | (spec.moreFragments ? 0x2000 : 0);
  p[6] = frag >> 8;
  p[7] = frag & 0xff;
  p[8] = spec.ttl ?? 64;
  p[9] = spec.protocol ?? 17;
  writeAddr(p, 12, addr(spec.src));
  writeAddr(p, 16, addr(spec.dst));
  p.set(options, 20);
  p.set(payload, ihl);
  const sum = internetChecksum(p, 0, ihl);
  p[10] = sum >> 8;
  p[11] = sum & 0xff;
  return p;
}

/** An ICMP message (type, code, 4 rest-of-header bytes zero, data) with its checksum. */
export function icmpMessage(type: number, code: number, data: Uint8Array = new Uint8Array(8)): Uint8Array {
  const m = new Uint8Array(8 + data.length);
  m[0] = type;
  m[1] = code;
  m.set(data, 8);
  const sum = internetChecksum(m, 0, m.length);
  m[2] = sum >> 8;
  m[3] = sum & 0xff;
  return m;
}

/** A UDP datagram with a correct checksum over the IPv4 pseudo-header. */
export function udpPacket(src: string, dst: string, srcPort: number, dstPort: number, data: Uint8Array, ttl = 64) {
  const u = new Uint8Array(8 + data.length);
  u[0] = srcPort >> 8;
  u[1] = srcPort & 0xff;
  u[2] = dstPort >> 8;
  u[3] = dstPort & 0xff;
  u[4] = u.length >> 8;
  u[5] = u.length & 0xff;
  u.set(data, 8);
  const pseudo = new Uint8Array(12);
  writeAddr(pseudo, 0, addr(src));
  writeAddr(pseudo, 4, addr(dst));
  pseudo[9] = 17;
  pseudo[10] = u.length >> 8;
  pseudo[11] = u.length & 0xff;
  let sum = internetChecksum(u, 0, u.length, onesSum(pseudo, 0, 12));
  if (sum === 0) sum = 0xffff;
  u[6] = sum >> 8;
  u[7] = sum & 0xff;
  return ipv4Packet({ src, dst, ttl, protocol: 17, payload: u });
}

/** True when the IPv4 header checksum of p verifies. */
export function headerChecksumOk(p: Uint8Array): boolean {
  return onesSum(p, 0, (p[0] & 15) * 4) === 0xffff;
}

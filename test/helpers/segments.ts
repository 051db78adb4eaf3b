// Slow, obviously-correct references for the offload code: build TCP/UDP
// packets field by field, split a super-packet by building each segment from
// scratch, and check checksums by summing a freshly built pseudo-header and
// the whole segment. No in-place tricks, no incremental arithmetic.

import { internetChecksum, onesSum } from "../../dataplane/wire/checksum.js";

export const FIN = 0x01;
export const SYN = 0x02;
export const RST = 0x04;
export const PSH = 0x08;
export const ACK = 0x10;
export const URG = 0x20;
export const ECE = 0x40;
export const CWR = 0x80;

export const u16 = (b: Uint8Array, o: number) => (b[o] << 8) | b[o + 1];
export const u32 = (b: Uint8Array, o: number) => ((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) >>> 0;
export function put16(b: Uint8Array, o: number, v: number): void {
  b[o] = (v >>> 8) & 0xff;
  b[o + 1] = v & 0xff;
}
export function put32(b: Uint8Array, o: number, v: number): void {
  b[o] = (v >>> 24) & 0xff;
  b[o + 1] = (v >>> 16) & 0xff;
  b[o + 2] = (v >>> 8) & 0xff;
  b[o + 3] = v & 0xff;
}

export interface L4Spec {
  src?: number;
  dst?: number;
  ipOptions?: Uint8Array;
  id?: number;
  df?: boolean;
  mf?: boolean;
  fragOffset?: number;
  ttl?: number;
  tos?: number;
  srcPort?: number;
  dstPort?: number;
  payload: Uint8Array;
}

export interface TcpSpec extends L4Spec {
  seq: number;
  ack?: number;
  flags?: number;
  window?: number;
  urgent?: number;
  tcpOptions?: Uint8Array;
  /** Leave the TCP checksum field as this value instead of computing it. */
  checksum?: number;
}

function ipHeader(spec: L4Spec, protocol: number, l4Length: number): Uint8Array {
  const options = spec.ipOptions ?? new Uint8Array(0);
  const ihl = 20 + options.length;
  const h = new Uint8Array(ihl);
  h[0] = 0x40 | (ihl >>> 2);
  h[1] = spec.tos ?? 0;
  put16(h, 2, ihl + l4Length);
  put16(h, 4, spec.id ?? 0x1000);
  put16(h, 6, (spec.df ? 0x4000 : 0) | (spec.mf ? 0x2000 : 0) | (spec.fragOffset ?? 0));
  h[8] = spec.ttl ?? 64;
  h[9] = protocol;
  put32(h, 12, spec.src ?? 0x0af40102);
  put32(h, 16, spec.dst ?? 0x0af40207);
  h.set(options, 20);
  put16(h, 10, internetChecksum(h, 0, ihl));
  return h;
}

/** The 12-byte IPv4 pseudo-header of the packet p, for an L4 part of l4Length bytes. */
export function pseudoHeader(p: Uint8Array, protocol: number, l4Length: number): Uint8Array {
  const ph = new Uint8Array(12);
  ph.set(p.subarray(12, 20), 0);
  ph[9] = protocol;
  put16(ph, 10, l4Length);
  return ph;
}

/** Checksum over pseudo-header + L4 bytes, computed on one freshly concatenated buffer. */
export function l4Checksum(p: Uint8Array, protocol: number): number {
  const ihl = (p[0] & 15) * 4;
  const total = u16(p, 2);
  const l4 = p.slice(ihl, total);
  const whole = new Uint8Array(12 + l4.length);
  whole.set(pseudoHeader(p, protocol, l4.length), 0);
  whole.set(l4, 12);
  return internetChecksum(whole, 0, whole.length);
}

/** True when the L4 checksum (TCP, UDP or ICMP) of the IPv4 packet verifies by full recomputation. */
export function l4ChecksumOk(p: Uint8Array): boolean {
  const ihl = (p[0] & 15) * 4;
  const total = u16(p, 2);
  const protocol = p[9];
  if (protocol === 1) return onesSum(p, ihl, total - ihl) === 0xffff;
  const l4 = p.slice(ihl, total);
  if (protocol === 17 && u16(l4, 6) === 0) return true; // no checksum
  const whole = new Uint8Array(12 + l4.length);
  whole.set(pseudoHeader(p, protocol, l4.length), 0);
  whole.set(l4, 12);
  return onesSum(whole, 0, whole.length) === 0xffff;
}

export function ipChecksumOk(p: Uint8Array): boolean {
  return onesSum(p, 0, (p[0] & 15) * 4) === 0xffff;
}

export function tcpPacket(spec: TcpSpec): Uint8Array {
  const options = spec.tcpOptions ?? new Uint8Array(0);
  const thl = 20 + options.length;
  const ip = ipHeader(spec, 6, thl + spec.payload.length);
  const p = new Uint8Array(ip.length + thl + spec.payload.length);
  p.set(ip, 0);
  const t = ip.length;
  put16(p, t, spec.srcPort ?? 40000);
  put16(p, t + 2, spec.dstPort ?? 5001);
  put32(p, t + 4, spec.seq >>> 0);
  put32(p, t + 8, spec.ack ?? 0x11223344);
  p[t + 12] = (thl >>> 2) << 4;
  p[t + 13] = spec.flags ?? ACK;
  put16(p, t + 14, spec.window ?? 502);
  put16(p, t + 18, spec.urgent ?? 0);
  p.set(options, t + 20);
  p.set(spec.payload, t + thl);
  put16(p, t + 16, spec.checksum ?? l4Checksum(p, 6));
  return p;
}

export function udpPacketSpec(spec: L4Spec): Uint8Array {
  const ip = ipHeader(spec, 17, 8 + spec.payload.length);
  const p = new Uint8Array(ip.length + 8 + spec.payload.length);
  p.set(ip, 0);
  const u = ip.length;
  put16(p, u, spec.srcPort ?? 40000);
  put16(p, u + 2, spec.dstPort ?? 5201);
  put16(p, u + 4, 8 + spec.payload.length);
  p.set(spec.payload, u + 8);
  const sum = l4Checksum(p, 17);
  put16(p, u + 6, sum === 0 ? 0xffff : sum);
  return p;
}

/**
 * What splitting the TCP (gsoType 1) or UDP (5) super-packet p into segments
 * of mss payload bytes must give: each segment built from scratch.
 */
export function referenceSplit(p: Uint8Array, gsoType: number, mss: number): Uint8Array[] {
  const ihl = (p[0] & 15) * 4;
  const tcp = gsoType === 1;
  const l4hl = tcp ? (p[ihl + 12] >> 4) * 4 : 8;
  const hdr = ihl + l4hl;
  const payload = p.slice(hdr, u16(p, 2));
  const n = Math.max(1, Math.ceil(payload.length / mss));
  const id0 = u16(p, 4);
  const out: Uint8Array[] = [];
  for (let k = 0; k < n; k++) {
    const data = payload.slice(k * mss, Math.min((k + 1) * mss, payload.length));
    const s = new Uint8Array(hdr + data.length);
    s.set(p.subarray(0, hdr), 0);
    s.set(data, hdr);
    put16(s, 2, s.length);
    put16(s, 4, (id0 + k) & 0xffff);
    put16(s, 10, 0);
    put16(s, 10, internetChecksum(s, 0, ihl));
    if (tcp) {
      const t = ihl;
      put32(s, t + 4, (u32(p, t + 4) + k * mss) >>> 0);
      let flags = p[t + 13];
      if (k !== n - 1) flags &= ~(FIN | PSH);
      if (k !== 0) flags &= ~CWR;
      if (flags & URG) {
        const urgent = u16(p, t + 18);
        if (urgent > k * mss) put16(s, t + 18, urgent - k * mss);
        else {
          flags &= ~URG;
          put16(s, t + 18, 0);
        }
      }
      s[t + 13] = flags;
      put16(s, t + 16, 0);
      put16(s, t + 16, l4Checksum(s, 6));
    } else {
      put16(s, ihl + 4, 8 + data.length);
      put16(s, ihl + 6, 0);
      const sum = l4Checksum(s, 17);
      put16(s, ihl + 6, sum === 0 ? 0xffff : sum);
    }
    out.push(s);
  }
  return out;
}

/** A packet whose TCP checksum field holds the pseudo-header sum (NEEDS_CSUM), completed the slow way. */
export function completeTcpChecksum(p: Uint8Array): Uint8Array {
  const c = p.slice();
  const ihl = (c[0] & 15) * 4;
  put16(c, ihl + 16, 0);
  put16(c, ihl + 16, l4Checksum(c, 6));
  return c;
}

export function hex(b: Uint8Array): string {
  return Buffer.from(b).toString("hex");
}

/** Lays packets end to end in one buffer, as the engine stages them. */
export function stage(packets: Uint8Array[]): { bytes: Uint8Array; offsets: Uint32Array; lengths: Uint32Array } {
  const total = packets.reduce((n, p) => n + p.length, 0);
  const bytes = new Uint8Array(total);
  const offsets = new Uint32Array(packets.length);
  const lengths = new Uint32Array(packets.length);
  let at = 0;
  packets.forEach((p, i) => {
    bytes.set(p, at);
    offsets[i] = at;
    lengths[i] = p.length;
    at += p.length;
  });
  return { bytes, offsets, lengths };
}

// Coalescing packets received from peers into super-packets for one flannel0
// write each (GRO toward the TUN). The policy, which neighbours may join,
// lives here; the addon's groMerge moves the payloads, verifies each packet's
// L4 checksum (one that fails ends the run) and seeds the checksum the kernel
// completes per segment (VIRTIO_NET_HDR_F_NEEDS_CSUM).
//
//   staged: [A1][A2][A3][B1][A4]  ──►  [A1+A2+A3 gso=size][B1][A4]
//
// A run is consecutive staged packets of one flow, so merging in place only
// ever overwrites bytes of packets already in the run. Joining needs, for both
// protocols: IPv4 without options, not a fragment, same TOS/TTL/DF/addresses
// (and, without DF, the next IP id); every payload the first's size except the
// last, which may be shorter. TCP (GSO_TCPV4) also needs the same ports, ACK
// number, window, header length and option bytes, the next sequence number,
// no SYN/FIN/RST/URG, CWR only on the first, PSH only on the last. UDP
// (GSO_UDP_L4, only when flannel0 took TUN_F_USO4) needs the same ports and a
// checksum (the kernel writes one into every segment; a datagram sent without
// one must arrive without one). At most 64 segments and 65535 bytes, and the
// result stays inside the first packet's arena slot.

import { type Addon, loadAddon } from "../native/index.js";
import { PROTO_TCP, PROTO_UDP } from "../wire/ipv4.js";
import {
  readU32,
  TCP_ACK,
  TCP_ACK_FLAG,
  TCP_CWR,
  TCP_FIN,
  TCP_FLAGS,
  TCP_PSH,
  TCP_RST,
  TCP_SEQ,
  TCP_SYN,
  TCP_URG,
  TCP_WINDOW,
  tcpHeaderLength,
} from "../wire/tcp.js";

export const GRO_MAX_SEGMENTS = 64;
const IP_MAX_TOTAL = 65535;
const NEVER = TCP_SYN | TCP_FIN | TCP_RST | TCP_URG;

export class Coalescer {
  private addon: Addon | null = null;
  /** Super-packets built and segments that went into them (for metrics and tests). */
  superPackets = 0;
  mergedSegments = 0;

  /** udp: also build UDP super-packets (the device takes GSO_UDP_L4 writes). */
  constructor(private readonly udp = false) {}

  /**
   * Coalesces the staged packets [0, count) in place: offsets/lengths are
   * rewritten and gso[k] set to the segment payload size of a super-packet
   * (0 for a packet left alone). `slotSize` bounds growth to the first
   * packet's slot of `bytes`. Returns the new count.
   */
  coalesce(
    bytes: Uint8Array,
    offsets: Uint32Array,
    lengths: Uint32Array,
    gso: Uint16Array,
    count: number,
    slotSize: number,
  ): number {
    let out = 0;
    let i = 0;
    while (i < count) {
      const head = offsets[i];
      const room = Math.min(IP_MAX_TOTAL, slotSize - (head % slotSize));
      let size = tcpRunPayload(bytes, head, lengths[i]);
      let end = i + 1;
      if (size > 0) {
        end = tcpRunEnd(bytes, offsets, lengths, i, count, size, room);
      } else if (this.udp) {
        size = udpRunPayload(bytes, head, lengths[i]);
        if (size > 0) end = udpRunEnd(bytes, offsets, lengths, i, count, size, room);
      }
      let merged = 1;
      if (end - i >= 2) {
        if (this.addon === null) this.addon = loadAddon();
        merged = Math.max(1, this.addon.groMerge(bytes, offsets, lengths, i, end - i, room));
      }
      offsets[out] = head;
      lengths[out] = lengths[i];
      gso[out] = merged >= 2 ? size : 0;
      if (merged >= 2) {
        this.superPackets++;
        this.mergedSegments += merged;
      }
      out++;
      i += merged;
    }
    return out;
  }
}

/** Where the TCP run that packet i (payload mss) starts ends: one past its last member. */
function tcpRunEnd(
  bytes: Uint8Array,
  offsets: Uint32Array,
  lengths: Uint32Array,
  i: number,
  count: number,
  mss: number,
  room: number,
): number {
  const head = offsets[i];
  const ihl = (bytes[head] & 0x0f) << 2;
  const t = head + ihl;
  const thl = tcpHeaderLength(bytes, t);
  let total = lengths[i];
  let nextSeq = (readU32(bytes, t + TCP_SEQ) + mss) >>> 0;
  let lastId = (bytes[head + 4] << 8) | bytes[head + 5];
  const df = (bytes[head + 6] & 0x40) !== 0;
  const wantFlags = bytes[t + TCP_FLAGS] & ~(TCP_CWR | TCP_PSH);
  let end = i + 1;
  while (end < count && end - i < GRO_MAX_SEGMENTS) {
    const q = offsets[end];
    const qLen = lengths[end];
    if (qLen <= ihl + thl || (bytes[q] & 0x0f) << 2 !== ihl) break;
    const qt = q + ihl;
    const qFlags = bytes[qt + TCP_FLAGS];
    if ((qFlags & ~TCP_PSH) !== wantFlags) break;
    if (!sameFlow(bytes, head, q, ihl, thl)) break;
    if (readU32(bytes, qt + TCP_SEQ) !== nextSeq) break;
    const id = (bytes[q + 4] << 8) | bytes[q + 5];
    if (!df && id !== ((lastId + 1) & 0xffff)) break;
    const payload = qLen - ihl - thl;
    if (payload > mss || total + payload > room) break;
    total += payload;
    nextSeq = (nextSeq + payload) >>> 0;
    lastId = id;
    end++;
    if (payload < mss || (qFlags & TCP_PSH) !== 0) break;
  }
  return end;
}

/** Where the UDP run that packet i (payload size) starts ends: one past its last member. */
function udpRunEnd(
  bytes: Uint8Array,
  offsets: Uint32Array,
  lengths: Uint32Array,
  i: number,
  count: number,
  size: number,
  room: number,
): number {
  const head = offsets[i];
  let total = lengths[i];
  let lastId = (bytes[head + 4] << 8) | bytes[head + 5];
  const df = (bytes[head + 6] & 0x40) !== 0;
  let end = i + 1;
  while (end < count && end - i < GRO_MAX_SEGMENTS) {
    const q = offsets[end];
    const payload = udpRunPayload(bytes, q, lengths[end]);
    if (payload === 0 || payload > size || total + payload > room) break;
    if (!sameIpv4Header(bytes, head, q)) break;
    if (readU32(bytes, q + 20) !== readU32(bytes, head + 20)) break; // ports
    const id = (bytes[q + 4] << 8) | bytes[q + 5];
    if (!df && id !== ((lastId + 1) & 0xffff)) break;
    total += payload;
    lastId = id;
    end++;
    if (payload < size) break;
  }
  return end;
}

/**
 * The payload size of the UDP datagram at bytes[p, +len) when it may take
 * part in a run (IPv4 without options, not a fragment, a length field that
 * matches, a checksum, a payload); otherwise 0.
 */
function udpRunPayload(bytes: Uint8Array, p: number, len: number): number {
  if (bytes[p] !== 0x45 || bytes[p + 9] !== PROTO_UDP || len <= 28) return 0;
  if ((bytes[p + 6] & 0x3f) !== 0 || bytes[p + 7] !== 0) return 0;
  if (((bytes[p + 24] << 8) | bytes[p + 25]) !== len - 20) return 0;
  if (bytes[p + 26] === 0 && bytes[p + 27] === 0) return 0;
  return len - 28;
}

/**
 * The TCP payload size of the packet at bytes[p, +len) when it may start a
 * run (IPv4 TCP without IP options, not a fragment, data, none of the flags
 * that end a run, no PSH); otherwise 0. `len` is its IP total length.
 */
function tcpRunPayload(bytes: Uint8Array, p: number, len: number): number {
  if (bytes[p] !== 0x45 || bytes[p + 9] !== PROTO_TCP) return 0;
  if ((bytes[p + 6] & 0x3f) !== 0 || bytes[p + 7] !== 0) return 0;
  if (len < 40) return 0;
  const t = p + 20;
  const flags = bytes[t + TCP_FLAGS];
  if ((flags & (NEVER | TCP_PSH)) !== 0 || (flags & TCP_ACK_FLAG) === 0) return 0;
  const thl = tcpHeaderLength(bytes, t);
  if (thl < 20 || len <= 20 + thl) return 0;
  return len - 20 - thl;
}

/**
 * Whether packet q belongs to packet p's flow and may share its header: the
 * IPv4 fields below; TCP ports, ACK number, header length, window and option
 * bytes.
 */
function sameFlow(bytes: Uint8Array, p: number, q: number, ihl: number, thl: number): boolean {
  if (!sameIpv4Header(bytes, p, q)) return false;
  const pt = p + ihl;
  const qt = q + ihl;
  if (tcpHeaderLength(bytes, qt) !== thl) return false;
  for (let k = 0; k < 4; k++) if (bytes[qt + k] !== bytes[pt + k]) return false;
  for (let k = TCP_ACK; k < TCP_ACK + 4; k++) if (bytes[qt + k] !== bytes[pt + k]) return false;
  if (bytes[qt + TCP_WINDOW] !== bytes[pt + TCP_WINDOW] || bytes[qt + TCP_WINDOW + 1] !== bytes[pt + TCP_WINDOW + 1])
    return false;
  for (let k = 20; k < thl; k++) if (bytes[qt + k] !== bytes[pt + k]) return false;
  return true;
}

/** Version/IHL, TOS, DF and not a fragment, TTL, protocol and addresses agree. */
function sameIpv4Header(bytes: Uint8Array, p: number, q: number): boolean {
  if (bytes[q] !== bytes[p] || bytes[q + 1] !== bytes[p + 1]) return false;
  if (bytes[q + 6] !== bytes[p + 6] || bytes[q + 7] !== bytes[p + 7]) return false;
  if (bytes[q + 8] !== bytes[p + 8] || bytes[q + 9] !== bytes[p + 9]) return false;
  for (let k = 12; k < 20; k++) if (bytes[q + k] !== bytes[p + k]) return false;
  return true;
}

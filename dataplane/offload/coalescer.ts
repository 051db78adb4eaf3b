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
import {
  IPV4_DST,
  IPV4_FLAGS_FRAGMENT,
  IPV4_ID,
  IPV4_MIN_HEADER,
  IPV4_PROTOCOL,
  IPV4_SRC,
  IPV4_TTL,
  IPV4_VERSION_IHL,
  PROTO_TCP,
  PROTO_UDP,
} from "../wire/ipv4.js";
import {
  readU16,
  readU32,
  TCP_ACK,
  TCP_ACK_FLAG,
  TCP_CWR,
  TCP_FIN,
  TCP_FLAGS,
  TCP_MIN_HEADER,
  TCP_PSH,
  TCP_RST,
  TCP_SEQ,
  TCP_SRC_PORT,
  TCP_SYN,
  TCP_URG,
  TCP_WINDOW,
  tcpHeaderLength,
} from "../wire/tcp.js";
import { UDP_CHECKSUM, UDP_HEADER, UDP_LENGTH, UDP_SRC_PORT } from "../wire/udp.js";

/** The DF bit in the flags/fragment word, and MF with the fragment offset. */
const IPV4_DF = 0x4000;
const IPV4_MF_OFFSET = 0x3fff;

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
      const end = this.runEnd(bytes, offsets, lengths, i, count, room);
      const size = this.runSize;
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

  /** The segment payload size of the run runEnd found last (0: packet i starts none). */
  private runSize = 0;

  /** One past the last packet of the run packet i starts (i + 1: none), at most `room` bytes; its size in runSize. */
  private runEnd(
    bytes: Uint8Array,
    offsets: Uint32Array,
    lengths: Uint32Array,
    i: number,
    count: number,
    room: number,
  ): number {
    const head = offsets[i];
    let size = tcpRunPayload(bytes, head, lengths[i]);
    let end = i + 1;
    if (size > 0) {
      end = tcpRunEnd(bytes, offsets, lengths, i, count, size, room);
    } else if (this.udp) {
      size = udpRunPayload(bytes, head, lengths[i]);
      if (size > 0) end = udpRunEnd(bytes, offsets, lengths, i, count, size, room);
    }
    this.runSize = size;
    return end;
  }

  /**
   * Marks the runs among the staged packets [0, count) without moving a
   * byte: a run's first packet gets gso[i] (its segment payload size) and
   * runs[i] (packets in it), its headers fixed for the whole run; every other
   * entry gets 0 and 0. The device writes each run from pieces (scatter-gather),
   * so a run is bounded by 65535 bytes and GRO_MAX_SEGMENTS, not by a slot.
   */
  gather(
    bytes: Uint8Array,
    offsets: Uint32Array,
    lengths: Uint32Array,
    gso: Uint16Array,
    runs: Uint16Array,
    count: number,
  ): void {
    let i = 0;
    while (i < count) {
      const end = this.runEnd(bytes, offsets, lengths, i, count, IP_MAX_TOTAL);
      const size = this.runSize;
      let merged = 1;
      if (end - i >= 2) {
        if (this.addon === null) this.addon = loadAddon();
        merged = Math.max(1, this.addon.groMerge(bytes, offsets, lengths, i, end - i, IP_MAX_TOTAL, true));
      }
      gso[i] = merged >= 2 ? size : 0;
      runs[i] = merged;
      for (let k = i + 1; k < i + merged; k++) {
        gso[k] = 0;
        runs[k] = 0;
      }
      if (merged >= 2) {
        this.superPackets++;
        this.mergedSegments += merged;
      }
      i += merged;
    }
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
  const ihl = ipv4HeaderLength(bytes, head);
  const t = head + ihl;
  const thl = tcpHeaderLength(bytes, t);
  let total = lengths[i];
  let nextSeq = (readU32(bytes, t + TCP_SEQ) + mss) >>> 0;
  let lastId = readU16(bytes, head + IPV4_ID);
  const df = dontFragment(bytes, head);
  const wantFlags = bytes[t + TCP_FLAGS] & ~(TCP_CWR | TCP_PSH);
  let end = i + 1;
  while (end < count && end - i < GRO_MAX_SEGMENTS) {
    const q = offsets[end];
    const qLen = lengths[end];
    if (qLen <= ihl + thl || ipv4HeaderLength(bytes, q) !== ihl) break;
    const qt = q + ihl;
    const qFlags = bytes[qt + TCP_FLAGS];
    if ((qFlags & ~TCP_PSH) !== wantFlags) break;
    if (!sameFlow(bytes, head, q, ihl, thl)) break;
    if (readU32(bytes, qt + TCP_SEQ) !== nextSeq) break;
    const id = readU16(bytes, q + IPV4_ID);
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
  let lastId = readU16(bytes, head + IPV4_ID);
  const df = dontFragment(bytes, head);
  let end = i + 1;
  while (end < count && end - i < GRO_MAX_SEGMENTS) {
    const q = offsets[end];
    const payload = udpRunPayload(bytes, q, lengths[end]);
    if (payload === 0 || payload > size || total + payload > room) break;
    if (!sameIpv4Header(bytes, head, q)) break;
    // Both ports in one word.
    if (readU32(bytes, q + IPV4_MIN_HEADER + UDP_SRC_PORT) !== readU32(bytes, head + IPV4_MIN_HEADER + UDP_SRC_PORT))
      break;
    const id = readU16(bytes, q + IPV4_ID);
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
  const u = p + IPV4_MIN_HEADER;
  if (!plainHeader(bytes, p, PROTO_UDP) || len <= IPV4_MIN_HEADER + UDP_HEADER) return 0;
  if (readU16(bytes, u + UDP_LENGTH) !== len - IPV4_MIN_HEADER) return 0;
  if (readU16(bytes, u + UDP_CHECKSUM) === 0) return 0;
  return len - IPV4_MIN_HEADER - UDP_HEADER;
}

/**
 * The TCP payload size of the packet at bytes[p, +len) when it may start a
 * run (IPv4 TCP without IP options, not a fragment, data, none of the flags
 * that end a run, no PSH); otherwise 0. `len` is its IP total length.
 */
function tcpRunPayload(bytes: Uint8Array, p: number, len: number): number {
  if (!plainHeader(bytes, p, PROTO_TCP)) return 0;
  if (len < IPV4_MIN_HEADER + TCP_MIN_HEADER) return 0;
  const t = p + IPV4_MIN_HEADER;
  const flags = bytes[t + TCP_FLAGS];
  if ((flags & (NEVER | TCP_PSH)) !== 0 || (flags & TCP_ACK_FLAG) === 0) return 0;
  const thl = tcpHeaderLength(bytes, t);
  if (thl < TCP_MIN_HEADER || len <= IPV4_MIN_HEADER + thl) return 0;
  return len - IPV4_MIN_HEADER - thl;
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
  // Both ports in one word, then the ACK number.
  if (readU32(bytes, qt + TCP_SRC_PORT) !== readU32(bytes, pt + TCP_SRC_PORT)) return false;
  if (readU32(bytes, qt + TCP_ACK) !== readU32(bytes, pt + TCP_ACK)) return false;
  if (readU16(bytes, qt + TCP_WINDOW) !== readU16(bytes, pt + TCP_WINDOW)) return false;
  for (let k = TCP_MIN_HEADER; k < thl; k++) if (bytes[qt + k] !== bytes[pt + k]) return false;
  return true;
}

/** Version/IHL, TOS, DF and not a fragment, TTL, protocol and addresses agree. */
function sameIpv4Header(bytes: Uint8Array, p: number, q: number): boolean {
  if (readU16(bytes, q + IPV4_VERSION_IHL) !== readU16(bytes, p + IPV4_VERSION_IHL)) return false; // and TOS
  if (readU16(bytes, q + IPV4_FLAGS_FRAGMENT) !== readU16(bytes, p + IPV4_FLAGS_FRAGMENT)) return false;
  if (readU16(bytes, q + IPV4_TTL) !== readU16(bytes, p + IPV4_TTL)) return false; // and protocol
  return (
    readU32(bytes, q + IPV4_SRC) === readU32(bytes, p + IPV4_SRC) &&
    readU32(bytes, q + IPV4_DST) === readU32(bytes, p + IPV4_DST)
  );
}

/** IPv4 without options carrying `proto`, not a fragment (neither MF nor an offset). */
function plainHeader(bytes: Uint8Array, p: number, proto: number): boolean {
  if (bytes[p + IPV4_VERSION_IHL] !== 0x45 || bytes[p + IPV4_PROTOCOL] !== proto) return false;
  return (readU16(bytes, p + IPV4_FLAGS_FRAGMENT) & IPV4_MF_OFFSET) === 0;
}

function ipv4HeaderLength(bytes: Uint8Array, p: number): number {
  return (bytes[p + IPV4_VERSION_IHL] & 0x0f) << 2;
}

function dontFragment(bytes: Uint8Array, p: number): boolean {
  return (readU16(bytes, p + IPV4_FLAGS_FRAGMENT) & IPV4_DF) !== 0;
}

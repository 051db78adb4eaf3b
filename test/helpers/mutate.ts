// Inputs for the fuzz tests: plausible TCP/UDP packets and flows (so that a
// mutation reaches past the first checks), and a mutator that breaks them in
// the ways the addon's checks are about: lengths, IHL, data offset, protocol,
// checksums that still verify after a header change, truncation, garbage.

import { internetChecksum } from "../../dataplane/wire/checksum.js";
import { randomInt } from "./random.js";
import { ACK, l4Checksum, put16, put32, tcpPacket, udpPacketSpec } from "./segments.js";

/** The fuzz seed: WEFT_FUZZ_SEED when set (to replay a failure), else a fresh one per run. */
export function fuzzSeed(): number {
  const env = process.env.WEFT_FUZZ_SEED;
  if (env === undefined || env === "") return (Date.now() ^ (process.pid << 16)) >>> 0;
  const seed = Number(env);
  if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) {
    throw new Error(`WEFT_FUZZ_SEED must be an integer in 0..4294967295, got "${env}"`);
  }
  return seed;
}

/**
 * n bytes of noise, seeded from rand: xorshift32 per byte, several times
 * faster than a rand() call per byte (the fuzz makes megabytes of payload).
 */
export function noise(rand: () => number, n: number): Uint8Array {
  const b = new Uint8Array(n);
  let x = (randomInt(rand, 2 ** 32) | 1) >>> 0;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x;
  }
  return b;
}

/** Values that sit on the edges of the addon's checks. */
const EDGE_BYTES = [0, 1, 4, 5, 0x0f, 0x10, 0x40, 0x45, 0x46, 0x4f, 0x50, 0x7f, 0x80, 0xf0, 0xff];
const EDGE_SIZES = [0, 1, 2, 7, 8, 19, 20, 39, 40, 59, 60, 536, 1400, 1460, 9000, 65467, 65507, 65535];

export function edgeSize(rand: () => number): number {
  return rand() < 0.5 ? (EDGE_SIZES[randomInt(rand, EDGE_SIZES.length)] as number) : randomInt(rand, 65536);
}

function options(rand: () => number, maxWords: number): Uint8Array {
  return noise(rand, 4 * randomInt(rand, maxWords + 1));
}

/** Payload length: mostly small, sometimes up to a full super-packet. */
function payloadLength(rand: () => number, big: boolean): number {
  if (big && rand() < 0.1) return randomInt(rand, 65000);
  return rand() < 0.1 ? 0 : randomInt(rand, 3000);
}

export interface FlowSpec {
  tcp: boolean;
  /** Packets in the flow. */
  count: number;
  /** Payload of every packet but the last (the last may be shorter). */
  size: number;
}

/**
 * A flow of packets the coalescer would glue: same header, consecutive
 * sequence numbers and ids, equal payloads (the last one shorter or equal).
 */
export function flow(rand: () => number, spec: FlowSpec): Uint8Array[] {
  const ipOptions = rand() < 0.8 ? new Uint8Array(0) : options(rand, 10);
  const tcpOptions = rand() < 0.6 ? new Uint8Array(0) : options(rand, 10);
  const df = rand() < 0.8;
  const seq0 = randomInt(rand, 2 ** 32);
  const id0 = randomInt(rand, 65536);
  const out: Uint8Array[] = [];
  for (let k = 0; k < spec.count; k++) {
    const last = k === spec.count - 1;
    const len = last ? randomInt(rand, spec.size + 1) : spec.size;
    const common = { ipOptions, df, id: (id0 + k) & 0xffff, payload: noise(rand, len) };
    out.push(
      spec.tcp
        ? tcpPacket({ ...common, seq: (seq0 + k * spec.size) >>> 0, flags: ACK, tcpOptions })
        : udpPacketSpec(common),
    );
  }
  return out;
}

/** One TCP or UDP packet, maybe with options, maybe a super-packet's size. */
export function packet(rand: () => number, big = false): Uint8Array {
  const spec = {
    ipOptions: rand() < 0.8 ? new Uint8Array(0) : options(rand, 10),
    df: rand() < 0.5,
    payload: noise(rand, payloadLength(rand, big)),
  };
  if (rand() < 0.5) return udpPacketSpec(spec);
  return tcpPacket({
    ...spec,
    seq: randomInt(rand, 2 ** 32),
    flags: randomInt(rand, 256),
    urgent: randomInt(rand, 65536),
    tcpOptions: rand() < 0.6 ? new Uint8Array(0) : options(rand, 10),
  });
}

/** Recomputes the IP header checksum (IHL as the packet says, when it fits). */
export function fixIpChecksum(p: Uint8Array): void {
  const ihl = (p[0] & 15) * 4;
  if (p.length < 20 || ihl < 20 || ihl > p.length) return;
  put16(p, 10, 0);
  put16(p, 10, internetChecksum(p, 0, ihl));
}

/** Recomputes the L4 checksum, so a header mutation still passes the checksum gate. */
export function fixL4Checksum(p: Uint8Array): void {
  const ihl = (p[0] & 15) * 4;
  const total = p.length >= 4 ? (p[2] << 8) | p[3] : 0;
  if (ihl < 20 || total !== p.length) return;
  const field = p[9] === 6 ? ihl + 16 : p[9] === 17 ? ihl + 6 : -1;
  if (field < 0 || field + 2 > total) return;
  put16(p, field, 0);
  const sum = l4Checksum(p, p[9] as number);
  put16(p, field, p[9] === 17 && sum === 0 ? 0xffff : sum);
}

/**
 * The whole flow with one header byte set alike in every packet (checksums
 * fixed): a flow that still looks consistent, with a header the checks must
 * refuse (a TCP data offset below 5, an IHL below 5, another protocol).
 */
export function mutateFlow(rand: () => number, pkts: Uint8Array[]): Uint8Array[] {
  const head = pkts[0] as Uint8Array;
  const ihl = (head[0] & 15) * 4;
  const at = [0, 6, 9, ihl + 12, ihl + 13][randomInt(rand, 5)] as number;
  const value = EDGE_BYTES[randomInt(rand, EDGE_BYTES.length)] as number;
  return pkts.map((p) => {
    const q = p.slice();
    if (at < q.length) q[at] = value;
    fixIpChecksum(q);
    fixL4Checksum(q);
    return q;
  });
}

/** 1-4 mutations of a copy of p. */
export function mutate(rand: () => number, p: Uint8Array): Uint8Array {
  let q = p.slice();
  const n = 1 + randomInt(rand, 4);
  for (let m = 0; m < n; m++) {
    const ihl = q.length > 0 ? (q[0] & 15) * 4 : 0;
    switch (randomInt(rand, 10)) {
      case 0:
        if (q.length > 0) q[randomInt(rand, q.length)] ^= 1 << randomInt(rand, 8);
        break;
      case 1: {
        // A header byte the checks read: version/IHL, length, flags, protocol,
        // TCP data offset and flags, UDP length.
        const at = [0, 2, 3, 6, 9, ihl + 4, ihl + 5, ihl + 12, ihl + 13][randomInt(rand, 9)] as number;
        if (at < q.length) q[at] = EDGE_BYTES[randomInt(rand, EDGE_BYTES.length)] as number;
        break;
      }
      case 2:
        q = q.slice(0, randomInt(rand, q.length + 1));
        break;
      case 3: {
        const longer = new Uint8Array(q.length + 1 + randomInt(rand, 64));
        longer.set(q);
        longer.set(noise(rand, longer.length - q.length), q.length);
        q = longer;
        break;
      }
      case 4:
        if (q.length >= 4) put16(q, 2, q.length & 0xffff);
        break;
      case 5:
        if (q.length >= 4) put16(q, 2, edgeSize(rand));
        break;
      case 6:
        if (ihl + 8 <= q.length) put32(q, ihl + 4, randomInt(rand, 2 ** 32));
        break;
      default:
        fixIpChecksum(q);
        fixL4Checksum(q);
    }
  }
  return q;
}

// Splitting (TSO/USO super-packets from flannel0) and coalescing (TCP GRO
// toward flannel0) against slow references on random flows, and the engine's
// offload paths over the in-memory fakes.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Worker } from "node:worker_threads";
import { overlayMtu } from "../control/daemon.js";
import { Drop } from "../dataplane/counters.js";
import { engineOver, FakeDevice, FakeTransport } from "../dataplane/fake-io.js";
import { MAX_RUN_BYTES, TSO_SLOT_SIZE } from "../dataplane/io.js";
import { LeaseTable } from "../dataplane/leases.js";
import { GSO_TYPE, loadAddon } from "../dataplane/native/index.js";
import { Coalescer } from "../dataplane/offload/coalescer.js";
import { internetChecksum, onesSum } from "../dataplane/wire/checksum.js";
import { type Ipv4Prefix, parseIpv4, parsePrefix } from "../net/addr.js";
import { randomBytes, randomInt, seededRandom } from "./helpers/random.js";
import {
  ACK,
  CWR,
  completeTcpChecksum,
  ECE,
  FIN,
  hex,
  ipChecksumOk,
  l4ChecksumOk,
  PSH,
  pseudoHeader,
  put16,
  RST,
  referenceSplit,
  SYN,
  tcpPacket,
  URG,
  u16,
  u32,
  udpPacketSpec,
} from "./helpers/segments.js";

const addon = loadAddon();

/** Runs gsoSplit on a copy of p placed at `off` in a buffer with `room` bytes for it (and canaries around). */
function nativeSplit(p: Uint8Array, gsoType: number, mss: number, room = TSO_SLOT_SIZE, off = 16) {
  const buf = new Uint8Array(off + room + 16).fill(0xa5);
  buf.set(p, off);
  const before = buf.slice();
  const out = new Uint32Array(3);
  const ok = addon.gsoSplit(buf, off, p.length, gsoType, mss, room, out);
  const segments: Uint8Array[] = [];
  if (ok) {
    const [n, stride, total] = out as unknown as [number, number, number];
    for (let k = 0; k < n; k++) {
      const start = off + k * stride;
      segments.push(buf.slice(start, Math.min(start + stride, off + total)));
    }
  }
  return { ok, segments, out, buf, before, off, room };
}

function options(rand: () => number, maxWords: number): Uint8Array {
  // NOPs and random bytes: the splitter copies options, it does not parse them.
  const o = randomBytes(rand, 4 * randomInt(rand, maxWords + 1));
  return o;
}

describe("gsoSplit: super-packets from flannel0 into ordinary packets", () => {
  it("splits random TCP super-packets exactly like the slow reference (options, wraparound, FIN/PSH/URG/CWR)", () => {
    const seed = 0x5eed01;
    const rand = seededRandom(seed);
    for (let iter = 0; iter < 300; iter++) {
      const ipOptions = rand() < 0.3 ? options(rand, 10) : undefined;
      const tcpOptions = rand() < 0.6 ? options(rand, 10) : undefined;
      const mss = 1 + randomInt(rand, rand() < 0.2 ? 64 : 1460);
      const hdr = 20 + (ipOptions?.length ?? 0) + 20 + (tcpOptions?.length ?? 0);
      // Keep within 64 segments mostly; some run longer to test the room check.
      const payloadLen = randomInt(rand, Math.min(65535 - hdr, mss * (rand() < 0.9 ? 64 : 200)) + 1);
      const flags =
        ACK | (rand() < 0.3 ? FIN : 0) | (rand() < 0.5 ? PSH : 0) | (rand() < 0.2 ? URG : 0) | (rand() < 0.2 ? CWR : 0);
      const p = tcpPacket({
        ipOptions,
        tcpOptions,
        payload: randomBytes(rand, payloadLen),
        seq: rand() < 0.3 ? 0xffffffff - randomInt(rand, 70000) : randomInt(rand, 2 ** 32),
        id: rand() < 0.3 ? 0xffff - randomInt(rand, 40) : randomInt(rand, 65536),
        df: rand() < 0.5,
        flags: flags | (rand() < 0.2 ? ECE : 0),
        urgent: randomInt(rand, 65536),
        checksum: randomInt(rand, 65536),
      });
      const r = nativeSplit(p, GSO_TYPE.TCPV4, mss);
      const want = referenceSplit(p, GSO_TYPE.TCPV4, mss);
      const wantBytes = want.reduce((n, s) => n + s.length, 0);
      if (wantBytes > TSO_SLOT_SIZE) {
        assert.equal(r.ok, false, `seed ${seed} iter ${iter}: refuses what does not fit`);
        assert.deepEqual(r.buf, r.before, "and leaves the bytes alone");
        continue;
      }
      assert.equal(r.ok, true, `seed ${seed} iter ${iter}`);
      assert.equal(r.segments.length, want.length, `seed ${seed} iter ${iter}: segment count`);
      for (let k = 0; k < want.length; k++) {
        assert.equal(
          hex(r.segments[k] as Uint8Array),
          hex(want[k] as Uint8Array),
          `seed ${seed} iter ${iter} seg ${k}`,
        );
      }
      assert.equal(r.out[2], wantBytes);
      assert.deepEqual(r.buf.subarray(r.off + r.room), r.before.subarray(r.off + r.room), "nothing past room");
      assert.deepEqual(r.buf.subarray(0, r.off), r.before.subarray(0, r.off), "nothing before off");
    }
  });

  it("gives every TCP segment a valid IP header and TCP checksum by full recomputation", () => {
    const rand = seededRandom(7);
    const p = tcpPacket({ payload: randomBytes(rand, 60001), seq: 0xfffffff0, flags: ACK | PSH | FIN, checksum: 0 });
    const r = nativeSplit(p, GSO_TYPE.TCPV4, 1448);
    assert.equal(r.segments.length, Math.ceil(60001 / 1448));
    let expectSeq = 0xfffffff0;
    for (const [k, s] of r.segments.entries()) {
      assert.ok(ipChecksumOk(s), `segment ${k} IP checksum`);
      assert.ok(l4ChecksumOk(s), `segment ${k} TCP checksum`);
      assert.ok(s.length <= 20 + 20 + 1448);
      assert.equal(u32(s, 24), expectSeq >>> 0, "sequence numbers advance and wrap");
      expectSeq += s.length - 40;
      const last = k === r.segments.length - 1;
      assert.equal((s[33] & (FIN | PSH)) !== 0, last, "FIN/PSH only on the last");
    }
  });

  it("splits random UDP super-packets (USO) exactly like the slow reference", () => {
    const seed = 0x5eed02;
    const rand = seededRandom(seed);
    for (let iter = 0; iter < 100; iter++) {
      const mss = 1 + randomInt(rand, 1472);
      const payload = randomBytes(rand, randomInt(rand, Math.min(65000, mss * 64)) + 1);
      const p = udpPacketSpec({
        payload,
        id: randomInt(rand, 65536),
        ipOptions: rand() < 0.2 ? options(rand, 4) : undefined,
      });
      const r = nativeSplit(p, GSO_TYPE.UDP_L4, mss);
      const want = referenceSplit(p, GSO_TYPE.UDP_L4, mss);
      assert.equal(r.ok, true);
      assert.deepEqual(r.segments.map(hex), want.map(hex), `seed ${seed} iter ${iter}`);
      for (const s of r.segments) assert.ok(l4ChecksumOk(s) && ipChecksumOk(s));
    }
  });

  it("refuses fragments, a protocol that does not match the GSO type and a wrong length, touching nothing", () => {
    const payload = new Uint8Array(5000).fill(7);
    const cases: [string, Uint8Array, number, number][] = [
      ["first fragment", tcpPacket({ payload, seq: 1, mf: true }), GSO_TYPE.TCPV4, 1000],
      ["later fragment", tcpPacket({ payload, seq: 1, fragOffset: 100 }), GSO_TYPE.TCPV4, 1000],
      ["UDP as TCPV4", udpPacketSpec({ payload }), GSO_TYPE.TCPV4, 1000],
      ["TCP as UDP_L4", tcpPacket({ payload, seq: 1 }), GSO_TYPE.UDP_L4, 1000],
      ["TCPV6", tcpPacket({ payload, seq: 1 }), GSO_TYPE.TCPV6, 1000],
      ["gso size 0", tcpPacket({ payload, seq: 1 }), GSO_TYPE.TCPV4, 0],
    ];
    for (const [name, p, type, mss] of cases) {
      const r = nativeSplit(p, type, mss);
      assert.equal(r.ok, false, name);
      assert.deepEqual(r.buf, r.before, `${name}: bytes untouched`);
    }
    const p = tcpPacket({ payload, seq: 1 });
    const short = new Uint8Array(16 + p.length + 16);
    short.set(p, 16);
    assert.equal(
      addon.gsoSplit(short, 16, p.length - 1, 1, 1000, p.length, new Uint32Array(3)),
      false,
      "length != IP total",
    );
    assert.equal(nativeSplit(p, GSO_TYPE.TCPV4, 1000, p.length + 100).ok, false, "too little room");
  });

  it("completes the checksum of a super-packet that holds one segment or none", () => {
    for (const len of [0, 1, 1000]) {
      const p = tcpPacket({ payload: new Uint8Array(len).fill(3), seq: 9, checksum: 0x1234 });
      const r = nativeSplit(p, GSO_TYPE.TCPV4, 1000);
      assert.equal(r.segments.length, 1);
      assert.ok(l4ChecksumOk(r.segments[0] as Uint8Array), `payload ${len}`);
    }
  });
});

// ---- Coalescing ----

interface FlowState {
  src: number;
  srcPort: number;
  seq: number;
  ack: number;
  id: number;
  window: number;
  df: boolean;
  mss: number;
  ts: number;
  withTs: boolean;
}

function tsOption(ts: number): Uint8Array {
  const o = new Uint8Array([1, 1, 8, 10, 0, 0, 0, 0, 0, 0, 0, 0]);
  o[4] = ts >>> 24;
  o[5] = (ts >>> 16) & 255;
  o[6] = (ts >>> 8) & 255;
  o[7] = ts & 255;
  return o;
}

/** A batch as a peer would send it: mostly runs of full segments, with every kind of reason not to coalesce. */
function randomBatch(rand: () => number): Uint8Array[] {
  const flows: FlowState[] = Array.from({ length: 1 + randomInt(rand, 3) }, (_, k) => {
    const df = rand() < 0.7;
    return {
      src: 0x0af40100 + k + 2,
      srcPort: 40000 + k,
      seq: rand() < 0.3 ? 0xffffffff - randomInt(rand, 30000) : randomInt(rand, 2 ** 32),
      ack: randomInt(rand, 2 ** 32),
      id: randomInt(rand, 65536),
      window: 500 + k,
      df,
      mss: 100 + randomInt(rand, 1349),
      ts: randomInt(rand, 2 ** 32),
      withTs: rand() < 0.6,
    };
  });
  const n = 5 + randomInt(rand, 150);
  const out: Uint8Array[] = [];
  let f = flows[0] as FlowState;
  for (let k = 0; k < n; k++) {
    if (rand() < 0.1) f = flows[randomInt(rand, flows.length)] as FlowState;
    const m = rand();
    const odd = (p: number) => m < p;
    let payloadLen = f.mss;
    let flags = ACK;
    let ipOptions: Uint8Array | undefined;
    let mf = false;
    let badSum = false;
    let tos = 0;
    let ttl = 63;
    // One oddity per packet at most, each with a few percent chance.
    if (odd(0.05)) payloadLen = 1 + randomInt(rand, f.mss - 1);
    else if (odd(0.08)) flags |= PSH;
    else if (odd(0.09)) flags |= FIN;
    else if (odd(0.1)) flags |= SYN;
    else if (odd(0.11)) flags |= RST;
    else if (odd(0.12)) flags |= URG;
    else if (odd(0.14)) flags |= CWR;
    else if (odd(0.15)) flags |= ECE;
    else if (odd(0.17)) f.seq = (f.seq + 1 + randomInt(rand, 5000)) >>> 0;
    else if (odd(0.18)) f.window++;
    else if (odd(0.19)) f.ack = (f.ack + 1448) >>> 0;
    else if (odd(0.21)) f.ts++;
    else if (odd(0.22)) ipOptions = new Uint8Array([1, 1, 1, 0]);
    else if (odd(0.23)) mf = true;
    else if (odd(0.25)) badSum = true;
    else if (odd(0.26)) payloadLen = 0;
    else if (odd(0.27) && !f.df) f.id = (f.id + 7) & 0xffff;
    else if (odd(0.28)) tos = 2;
    else if (odd(0.29)) ttl = 62;
    else if (odd(0.31)) {
      out.push(udpPacketSpec({ payload: randomBytes(rand, 100) }));
      continue;
    }
    const p = tcpPacket({
      src: f.src,
      srcPort: f.srcPort,
      seq: f.seq,
      ack: f.ack,
      id: f.id,
      df: f.df,
      mf,
      ttl,
      tos,
      window: f.window,
      flags,
      urgent: flags & URG ? 10 : 0,
      ipOptions,
      tcpOptions: f.withTs ? tsOption(f.ts) : undefined,
      payload: randomBytes(rand, payloadLen),
    });
    if (badSum) p[(p[0] & 15) * 4 + 17] ^= 0x40;
    out.push(p);
    f.seq = (f.seq + payloadLen) >>> 0;
    f.id = (f.id + 1) & 0xffff;
  }
  return out;
}

const tcpFlags = (p: Uint8Array) => p[(p[0] & 15) * 4 + 13] as number;
const tcpHdr = (p: Uint8Array) => (p[0] & 15) * 4 + ((p[(p[0] & 15) * 4 + 12] as number) >> 4) * 4;
const payloadOf = (p: Uint8Array) => p.length - tcpHdr(p);

/** May p start a super-packet? Written out plainly. */
function mayStart(p: Uint8Array): boolean {
  if (p[0] !== 0x45 || p[9] !== 6 || (u16(p, 6) & 0x3fff) !== 0) return false;
  const f = tcpFlags(p);
  if ((f & ACK) === 0 || (f & (SYN | FIN | RST | URG | PSH)) !== 0) return false;
  return payloadOf(p) > 0 && l4ChecksumOk(p);
}

/** May q follow `last` in a run headed by h? Written out plainly. */
function mayFollow(h: Uint8Array, last: Uint8Array, q: Uint8Array, mss: number): boolean {
  if (q[0] !== 0x45 || q[9] !== 6) return false;
  if (q[1] !== h[1] || q[6] !== h[6] || q[7] !== h[7] || q[8] !== h[8]) return false;
  if (hex(q.subarray(12, 20)) !== hex(h.subarray(12, 20))) return false;
  if (tcpHdr(q) !== tcpHdr(h)) return false;
  if (hex(q.subarray(20, 24)) !== hex(h.subarray(20, 24))) return false; // ports
  if (u32(q, 28) !== u32(h, 28)) return false; // ack
  if (u16(q, 34) !== u16(h, 34)) return false; // window
  if (hex(q.subarray(40, tcpHdr(q))) !== hex(h.subarray(40, tcpHdr(h)))) return false; // options
  if (u32(q, 24) !== (u32(last, 24) + payloadOf(last)) >>> 0) return false;
  if ((tcpFlags(q) & ~PSH) !== (tcpFlags(h) & ~(PSH | CWR))) return false;
  if ((h[6] & 0x40) === 0 && u16(q, 4) !== ((u16(last, 4) + 1) & 0xffff)) return false;
  const pl = payloadOf(q);
  return pl > 0 && pl <= mss && l4ChecksumOk(q);
}

/** The super-packet a run must become: head's headers, all payloads, PSH of the last, seeded checksum. */
function glue(run: Uint8Array[]): Uint8Array {
  const h = run[0] as Uint8Array;
  const hdr = tcpHdr(h);
  const total = hdr + run.reduce((n, p) => n + payloadOf(p), 0);
  const s = new Uint8Array(total);
  s.set(h.subarray(0, hdr));
  let at = hdr;
  for (const p of run) {
    s.set(p.subarray(tcpHdr(p)), at);
    at += payloadOf(p);
  }
  put16(s, 2, total);
  put16(s, 10, 0);
  put16(s, 10, internetChecksum(s, 0, 20));
  s[33] = (s[33] as number) | (tcpFlags(run[run.length - 1] as Uint8Array) & PSH);
  put16(s, 36, onesSum(pseudoHeader(s, 6, total - 20), 0, 12));
  return s;
}

function referenceCoalesce(
  pkts: Uint8Array[],
  rooms: number[],
): { packet: Uint8Array; gso: number; run: Uint8Array[] }[] {
  const out: { packet: Uint8Array; gso: number; run: Uint8Array[] }[] = [];
  let i = 0;
  while (i < pkts.length) {
    const h = pkts[i] as Uint8Array;
    const run = [h];
    const mss = payloadOf(h);
    if (mayStart(h)) {
      let total = h.length;
      for (let j = i + 1; j < pkts.length && run.length < 64; j++) {
        const q = pkts[j] as Uint8Array;
        if (!mayFollow(h, run[run.length - 1] as Uint8Array, q, mss)) break;
        if (total + payloadOf(q) > Math.min(65535, rooms[i] as number)) break;
        run.push(q);
        total += payloadOf(q);
        if (payloadOf(q) < mss || (tcpFlags(q) & PSH) !== 0) break;
      }
    }
    out.push(run.length >= 2 ? { packet: glue(run), gso: mss, run } : { packet: h, gso: 0, run });
    i += run.length;
  }
  return out;
}

const SLOT = 65536;

/** Lays packets into slots the way UDP GRO fills them (end to end), a new slot now and then. */
function layOut(rand: () => number, pkts: Uint8Array[], slots = 64) {
  const bytes = new Uint8Array(slots * SLOT);
  const offsets = new Uint32Array(pkts.length);
  const lengths = new Uint32Array(pkts.length);
  const rooms: number[] = [];
  let slot = 0;
  let at = 0;
  pkts.forEach((p, i) => {
    if (i > 0 && (rand() < 0.25 || at + p.length > SLOT)) {
      slot++;
      at = 0;
    }
    const off = slot * SLOT + at;
    bytes.set(p, off);
    offsets[i] = off;
    lengths[i] = p.length;
    rooms.push(Math.min(65535, (slot + 1) * SLOT - off));
    at += p.length;
  });
  return { bytes, offsets, lengths, rooms };
}

describe("TCP coalescing toward flannel0", () => {
  it("coalesces random interleaved flows exactly like the slow reference", () => {
    const seed = 0x5eed03;
    const rand = seededRandom(seed);
    let superPackets = 0;
    for (let iter = 0; iter < 300; iter++) {
      const pkts = randomBatch(rand);
      const { bytes, offsets, lengths, rooms } = layOut(rand, pkts);
      const gso = new Uint16Array(pkts.length);
      const want = referenceCoalesce(pkts, rooms);
      const n = new Coalescer().coalesce(bytes, offsets, lengths, gso, pkts.length, SLOT);
      assert.equal(n, want.length, `seed ${seed} iter ${iter}: count`);
      for (let k = 0; k < n; k++) {
        const got = bytes.slice(offsets[k], (offsets[k] as number) + (lengths[k] as number));
        const w = want[k] as { packet: Uint8Array; gso: number };
        assert.equal(gso[k], w.gso, `seed ${seed} iter ${iter} out ${k}: gso`);
        assert.equal(hex(got), hex(w.packet), `seed ${seed} iter ${iter} out ${k}`);
        if (w.gso > 0) superPackets++;
      }
    }
    assert.ok(superPackets > 100, `the random flows coalesce often enough to mean something (${superPackets})`);
  });

  it("a super-packet splits back into exactly the segments it was built from", () => {
    const rand = seededRandom(0x5eed04);
    let checked = 0;
    for (let iter = 0; iter < 100; iter++) {
      const pkts = randomBatch(rand);
      const { rooms } = layOut(rand, pkts);
      for (const w of referenceCoalesce(pkts, rooms)) {
        if (w.gso === 0) continue;
        const back = referenceSplit(completeTcpChecksum(w.packet), GSO_TYPE.TCPV4, w.gso);
        assert.deepEqual(back.map(hex), w.run.map(hex));
        checked++;
      }
    }
    assert.ok(checked > 50);
  });

  it("merges a run of full segments with a short PSH tail and seeds the checksum for the kernel", () => {
    const mss = 1000;
    const pkts = [0, 1, 2].map((k) =>
      tcpPacket({
        seq: 0xfffffc00 + k * mss,
        id: 0xfffe + k,
        payload: new Uint8Array(k === 2 ? 10 : mss).fill(k + 1),
        flags: ACK | (k === 2 ? PSH : 0),
      }),
    );
    const { bytes, offsets, lengths } = layOut(() => 0.9, pkts);
    const gso = new Uint16Array(3);
    assert.equal(new Coalescer().coalesce(bytes, offsets, lengths, gso, 3, SLOT), 1);
    assert.equal(gso[0], mss);
    const merged = bytes.slice(offsets[0], (offsets[0] as number) + (lengths[0] as number));
    assert.equal(merged.length, 40 + 2010);
    assert.ok(ipChecksumOk(merged));
    assert.equal(tcpFlags(merged), ACK | PSH);
    assert.ok(l4ChecksumOk(completeTcpChecksum(merged)));
  });

  it("leaves a lone segment, a pure ACK, a fragment and a packet with IP options alone", () => {
    const pkts = [
      tcpPacket({ seq: 1, payload: new Uint8Array(100) }),
      tcpPacket({ seq: 1000, payload: new Uint8Array(0) }),
      tcpPacket({ seq: 1000, payload: new Uint8Array(100), mf: true }),
      tcpPacket({ seq: 1100, payload: new Uint8Array(100), mf: true, id: 0x1001 }),
      tcpPacket({ seq: 5000, payload: new Uint8Array(100), ipOptions: new Uint8Array([1, 1, 1, 0]) }),
      tcpPacket({ seq: 5100, payload: new Uint8Array(100), ipOptions: new Uint8Array([1, 1, 1, 0]), id: 0x1001 }),
    ];
    const { bytes, offsets, lengths } = layOut(() => 0.9, pkts);
    const gso = new Uint16Array(pkts.length);
    assert.equal(new Coalescer().coalesce(bytes, offsets, lengths, gso, pkts.length, SLOT), pkts.length);
    assert.deepEqual([...gso], [0, 0, 0, 0, 0, 0]);
  });

  it("ends a run before a segment whose TCP checksum fails and leaves that segment alone", () => {
    const pkts = [0, 1, 2, 3].map((k) => tcpPacket({ seq: k * 500, id: 10 + k, payload: new Uint8Array(500).fill(k) }));
    (pkts[2] as Uint8Array)[40] ^= 1; // corrupt a payload byte
    const { bytes, offsets, lengths } = layOut(() => 0.9, pkts);
    const gso = new Uint16Array(4);
    assert.equal(new Coalescer().coalesce(bytes, offsets, lengths, gso, 4, SLOT), 3);
    assert.deepEqual([...gso.subarray(0, 3)], [500, 0, 0]);
    assert.equal(lengths[0], 40 + 1000);
    assert.equal(hex(bytes.slice(offsets[1], (offsets[1] as number) + 540)), hex(pkts[2] as Uint8Array));
  });

  it("stops at 64 segments and keeps a super-packet inside its slot", () => {
    const many = Array.from({ length: 70 }, (_, k) => tcpPacket({ seq: k * 100, id: k, payload: new Uint8Array(100) }));
    const a = layOut(() => 0.9, many);
    const gso = new Uint16Array(70);
    assert.equal(new Coalescer().coalesce(a.bytes, a.offsets, a.lengths, gso, 70, SLOT), 2);
    assert.equal(a.lengths[0], 40 + 64 * 100);
    // A run that starts near the end of its slot cannot grow past it.
    const big = Array.from({ length: 3 }, (_, k) => tcpPacket({ seq: k * 1400, id: k, payload: new Uint8Array(1400) }));
    const bytes = new Uint8Array(2 * SLOT);
    const offsets = new Uint32Array([SLOT - 1500, SLOT, SLOT + 1440]);
    const lengths = new Uint32Array([1440, 1440, 1440]);
    for (const [k, p] of big.entries()) bytes.set(p, offsets[k] as number);
    const g = new Uint16Array(3);
    assert.equal(new Coalescer().coalesce(bytes, offsets, lengths, g, 3, SLOT), 2);
    assert.deepEqual([...g.subarray(0, 2)], [0, 1400], "the first stays alone, the next two merge in the next slot");
  });
});

// ---- The engine's offload paths over fakes ----

const network = parsePrefix("10.244.0.0/16") as Ipv4Prefix;
const H2 = parseIpv4("198.18.0.2");
const POD1 = parseIpv4("10.244.1.2");
const POD2 = parseIpv4("10.244.2.7");

function rig(opts: { deviceGso?: boolean; transportGso?: boolean } = {}) {
  const device = new FakeDevice("flannel0", { gso: opts.deviceGso ?? true });
  const transport = new FakeTransport(8285, { gso: opts.transportGso ?? false });
  const engine = engineOver(device, transport, { localAddr: parseIpv4("10.244.1.0"), mtu: 1472 });
  engine.setTable(
    LeaseTable.build(
      network,
      24,
      [
        { subnet: parsePrefix("10.244.2.0/24") as Ipv4Prefix, publicIp: H2 },
        { subnet: parsePrefix("10.244.1.0/24") as Ipv4Prefix, publicIp: parseIpv4("198.18.0.1") },
      ],
      8285,
    ),
  );
  engine.start();
  return { device, transport, engine };
}

function superPacket(payloadLen: number, ttl = 64): Uint8Array {
  const rand = seededRandom(payloadLen);
  return tcpPacket({
    src: POD1,
    dst: POD2,
    seq: 0xffff0000,
    ttl,
    payload: randomBytes(rand, payloadLen),
    flags: ACK | PSH,
    checksum: 0x4321,
  });
}

describe("engine with offloads (fakes)", () => {
  it("splits a super-packet from flannel0 into valid packets no longer than the MTU, TTL-1 once, counted as packets", () => {
    const r = rig();
    const p = superPacket(60000);
    r.device.inject([{ data: p, gsoSize: 1420 }]);
    const segs = Math.ceil(60000 / 1420);
    assert.equal(r.transport.sent.length, segs);
    for (const d of r.transport.sent) {
      assert.equal(d.addr, H2);
      assert.ok(d.data.length <= 1472);
      assert.ok(ipChecksumOk(d.data) && l4ChecksumOk(d.data));
      assert.equal(d.data[8], 63);
    }
    const want = referenceSplit(p, GSO_TYPE.TCPV4, 1420).map((s) => {
      const c = s.slice();
      c[8] = 63;
      put16(c, 10, 0);
      put16(c, 10, internetChecksum(c, 0, 20));
      return hex(c);
    });
    assert.deepEqual(
      r.transport.sent.map((d) => hex(d.data)),
      want,
    );
    const c = r.engine.counters.tx;
    assert.equal(c.inPackets, segs);
    assert.equal(c.outPackets, segs);
    assert.equal(c.outBytes, 60000 + segs * 40);
    assert.equal(r.transport.entries, segs, "one datagram per entry without UDP GSO");
  });

  it("sends a split super-packet as UDP GSO runs of at most 64 datagrams and 65507 bytes", () => {
    const r = rig({ transportGso: true });
    r.device.inject([
      { data: superPacket(60000), gsoSize: 1420 },
      tcpPacket({ src: POD1, dst: POD2, seq: 1, payload: new Uint8Array(100) }),
    ]);
    const segs = Math.ceil(60000 / 1420);
    assert.equal(r.transport.sent.length, segs + 1);
    assert.equal(r.transport.entries, Math.ceil((segs * 1460) / MAX_RUN_BYTES) + 1);
    for (const d of r.transport.sent) assert.ok(ipChecksumOk(d.data) && l4ChecksumOk(d.data) && d.data.length <= 1472);
  });

  it("sends the segments of two super-packets to one peer as one run, from where they lie, datagram for datagram", () => {
    // The two split super-packets lie in two device slots: the second's
    // segments are not behind the first's, yet they leave as one UDP_SEGMENT
    // entry (one iovec per datagram), byte for byte what single sends carry.
    const packets = [
      { data: superPacket(10000), gsoSize: 1000 },
      { data: superPacket(9000), gsoSize: 1000 },
    ];
    const runs = rig({ transportGso: true });
    const single = rig({ transportGso: false });
    runs.device.inject(packets);
    single.device.inject(packets);
    assert.equal(runs.transport.sent.length, 19);
    assert.equal(runs.transport.entries, 1);
    assert.deepEqual(
      runs.transport.sent.map((d) => hex(d.data)),
      single.transport.sent.map((d) => hex(d.data)),
    );
  });

  it("goes back to one datagram per entry once the transport refuses UDP GSO", () => {
    const r = rig({ transportGso: true });
    r.transport.refuseGso();
    r.device.inject([{ data: superPacket(20000), gsoSize: 1000 }]);
    assert.equal(r.transport.sent.length, 20);
    assert.equal(r.transport.entries, 20);
  });

  it("drops and counts a super-packet it cannot split, and one whose segments exceed the MTU", () => {
    const r = rig();
    r.device.inject([
      { data: superPacket(5000), gsoSize: 1000, gsoType: GSO_TYPE.UDP_L4 },
      { data: superPacket(5000), gsoSize: 1500 },
    ]);
    assert.equal(r.transport.sent.length, 0);
    assert.equal(r.engine.counters.tx.drops[Drop.GsoUnsplittable], 1);
    assert.equal(r.engine.counters.tx.drops[Drop.Oversize], 4);
  });

  function flowRun(n: number, mss: number, from = POD2, to = POD1): { data: Uint8Array; parts: Uint8Array[] } {
    const parts = Array.from({ length: n }, (_, k) =>
      tcpPacket({
        src: from,
        dst: to,
        seq: 7 + k * mss,
        id: 100 + k,
        df: true,
        payload: new Uint8Array(k === n - 1 ? mss / 2 : mss).fill(k),
        flags: ACK | (k === n - 1 ? PSH : 0),
      }),
    );
    const data = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
    let at = 0;
    for (const p of parts) {
      data.set(p, at);
      at += p.length;
    }
    return { data, parts };
  }

  it("writes a UDP GRO run of one TCP flow into flannel0 as one super-packet", () => {
    const r = rig({ transportGso: true });
    const { data, parts } = flowRun(20, 1000);
    r.transport.inject([{ data, src: H2, segSize: 1040 }]);
    assert.equal(r.device.written.length, 1);
    assert.equal(r.device.writtenGso[0], 1000);
    const w = r.device.written[0] as Uint8Array;
    const back = referenceSplit(completeTcpChecksum(w), GSO_TYPE.TCPV4, 1000);
    const want = parts.map((p) => {
      const c = p.slice();
      c[8]--;
      put16(c, 10, 0);
      put16(c, 10, internetChecksum(c, 0, 20));
      return hex(c);
    });
    assert.deepEqual(back.map(hex), want, "TTL-1 on every segment, nothing else changed");
    assert.equal(r.engine.counters.rx.inPackets, 20);
    assert.equal(r.engine.counters.rx.outPackets, 20);
  });

  it("checks the sender once per GRO datagram and counts every packet it held", () => {
    const r = rig({ transportGso: true });
    const { data } = flowRun(10, 1000);
    r.transport.inject([{ data, src: parseIpv4("198.18.0.99"), segSize: 1040 }]);
    assert.equal(r.device.written.length, 0);
    assert.equal(r.engine.counters.rx.drops[Drop.UnknownSender], 10);
    assert.equal(r.engine.counters.rx.inPackets, 10);
  });

  it("validates each packet of a GRO run on its own", () => {
    const r = rig({ transportGso: true });
    const { data, parts } = flowRun(6, 1000);
    data[3 * 1040] = 0x65; // the 4th datagram is not IPv4
    r.transport.inject([{ data, src: H2, segSize: 1040 }]);
    assert.equal(r.engine.counters.rx.drops[Drop.NotIpv4], 1);
    assert.equal(r.engine.counters.rx.outPackets, 5);
    // 1-3 merge; 5-6 no longer follow 3 (sequence gap), and merge with each other.
    assert.deepEqual(r.device.writtenGso, [1000, 1000]);
    assert.equal(r.device.written[0]?.length, 40 + 3000);
    assert.equal(r.device.written[1]?.length, 40 + 1500);
    assert.ok(parts.length === 6);
  });

  it("does not coalesce when flannel0 takes no super-packets, or when told not to", () => {
    for (const make of [
      () => rig({ deviceGso: false, transportGso: true }),
      () => {
        const device = new FakeDevice("flannel0", { gso: true });
        const transport = new FakeTransport(8285, { gso: true });
        const engine = engineOver(device, transport, { localAddr: 1, mtu: 1472, peerCheck: false, coalesce: false });
        engine.setTable(LeaseTable.build(network, 24, [], 8285));
        engine.start();
        return { device, transport, engine };
      },
    ]) {
      const r = make();
      const { data } = flowRun(8, 1000);
      r.transport.inject([{ data, src: H2, segSize: 1040 }]);
      assert.equal(r.device.written.length, 8);
      assert.ok(r.device.writtenGso.every((g) => g === 0));
    }
  });

  it("stages segments longer than a UDP payload may be as drops, not an endless loop (MTU from loopback's 65,536)", async () => {
    /** Runs the super-packet in a worker; a staging that never ends is stopped after 30 s and reported. */
    const run = (gsoSize: number, payload: number) =>
      new Promise<{ inPackets: number; outPackets: number; dropped: number; sent: number[]; entries: number }>(
        (resolve, reject) => {
          const worker = new Worker(new URL("./helpers/jumbo-stride.js", import.meta.url), {
            workerData: { gsoSize, payload, mtu: 65536 - 28 },
          });
          const guard = setTimeout(() => {
            void worker.terminate();
            reject(new Error(`staging a stride of ${40 + gsoSize} never finished`));
          }, 30_000);
          worker.once("message", (m) => {
            clearTimeout(guard);
            void worker.terminate();
            resolve(m);
          });
          worker.once("error", (e) => {
            clearTimeout(guard);
            reject(e);
          });
        },
      );
    // Stride 65,508: one byte more than a datagram carries.
    const over = await run(65468, 65490);
    assert.deepEqual(over, { inPackets: 2, outPackets: 0, dropped: 2, sent: [], entries: 0 });
    // Stride 65,507: each segment is one datagram of its own.
    const fits = await run(65467, 65490);
    assert.deepEqual(fits, { inPackets: 2, outPackets: 2, dropped: 0, sent: [65507, 63], entries: 2 });
  });

  it("weftd derives flannel0's MTU from the underlay's, never above the largest UDP payload", () => {
    assert.equal(overlayMtu(1500), 1472);
    assert.equal(overlayMtu(9000), 8972);
    assert.equal(overlayMtu(65536), 65507);
  });
});

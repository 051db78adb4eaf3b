// UDP on the offload paths: small packets of one size to one peer leave as
// UDP GSO runs (gathered into one slot), and UDP datagrams of one flow from a
// peer reach flannel0 as one GSO_UDP_L4 super-packet. Both against slow
// references over random traffic.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { engineOver, FakeDevice, FakeTransport } from "../dataplane/fake-io.js";
import { MAX_RUN_BYTES } from "../dataplane/io.js";
import { LeaseTable } from "../dataplane/leases.js";
import { GSO_TYPE } from "../dataplane/native/index.js";
import { Coalescer } from "../dataplane/offload/coalescer.js";
import { internetChecksum, onesSum } from "../dataplane/wire/checksum.js";
import { type Ipv4Prefix, parseIpv4, parsePrefix } from "../net/addr.js";
import { randomBytes, randomInt, seededRandom } from "./helpers/random.js";
import {
  hex,
  ipChecksumOk,
  l4Checksum,
  l4ChecksumOk,
  pseudoHeader,
  put16,
  referenceSplit,
  tcpPacket,
  udpPacketSpec,
} from "./helpers/segments.js";

const network = parsePrefix("10.244.0.0/16") as Ipv4Prefix;
const PEERS = [parseIpv4("198.18.0.2"), parseIpv4("198.18.0.3"), parseIpv4("198.18.0.4")];
const POD1 = parseIpv4("10.244.1.2");
const podOf = (peer: number) => parseIpv4(`10.244.${peer + 2}.7`);
const u16 = (p: Uint8Array, o: number) => ((p[o] as number) << 8) | (p[o + 1] as number);

function rig(opts: { transportGso: boolean; deviceGso?: boolean; udpGso?: boolean }) {
  const device = new FakeDevice("flannel0", { gso: opts.deviceGso ?? true, udpGso: opts.udpGso });
  const transport = new FakeTransport(8285, { gso: opts.transportGso });
  const engine = engineOver(device, transport, { localAddr: parseIpv4("10.244.1.0"), mtu: 1472 });
  const leases = PEERS.map((publicIp, k) => ({
    subnet: parsePrefix(`10.244.${k + 2}.0/24`) as Ipv4Prefix,
    publicIp,
  }));
  engine.setTable(LeaseTable.build(network, 24, leases, 8285));
  engine.start();
  return { device, transport, engine };
}

/** What the engine must send for p: the same packet with TTL-1 and the header checksum fixed. */
function forwarded(p: Uint8Array): string {
  const c = p.slice();
  c[8] = (c[8] as number) - 1;
  put16(c, 10, 0);
  put16(c, 10, internetChecksum(c, 0, (c[0] & 15) * 4));
  return hex(c);
}

function perPeer(sent: readonly { data: Uint8Array; addr: number }[]): Map<number, string[]> {
  const m = new Map<number, string[]>();
  for (const d of sent) {
    const list = m.get(d.addr) ?? [];
    list.push(hex(d.data));
    m.set(d.addr, list);
  }
  return m;
}

describe("UDP GSO runs toward peers", () => {
  it("sends random traffic datagram for datagram as without runs, in order per peer, in fewer entries", () => {
    const rand = seededRandom(0x0dd5eed);
    const sizes = [64, 64, 64, 200, 1400, 1400, 1444, 30];
    let entriesWith = 0;
    let entriesWithout = 0;
    let datagrams = 0;
    for (let iter = 0; iter < 200; iter++) {
      const withRuns = rig({ transportGso: true });
      const without = rig({ transportGso: false });
      const batch: ({ data: Uint8Array; gsoSize?: number } | Uint8Array)[] = [];
      const n = 1 + randomInt(rand, 64);
      // Bursts: the same peer and size for a while, then a change.
      let peer = randomInt(rand, PEERS.length);
      let size = sizes[randomInt(rand, sizes.length)] as number;
      for (let k = 0; k < n; k++) {
        if (rand() < 0.2) peer = randomInt(rand, PEERS.length);
        if (rand() < 0.2) size = sizes[randomInt(rand, sizes.length)] as number;
        if (rand() < 0.04) {
          // A TCP super-packet to the same peer: the segments must stay in order with the rest.
          const pl = 3000 + randomInt(rand, 20000);
          batch.push({
            data: tcpPacket({ src: POD1, dst: podOf(peer), seq: k, df: true, payload: randomBytes(rand, pl) }),
            gsoSize: 1000,
          });
          continue;
        }
        const payload = randomBytes(rand, Math.max(0, size - 28));
        batch.push(udpPacketSpec({ src: POD1, dst: podOf(peer), id: k, df: rand() < 0.5, payload }));
      }
      withRuns.device.inject(batch);
      without.device.inject(batch);
      assert.deepEqual(perPeer(withRuns.transport.sent), perPeer(without.transport.sent), `iter ${iter}`);
      assert.equal(withRuns.transport.sent.length, without.transport.sent.length);
      assert.equal(withRuns.engine.counters.tx.outPackets, without.engine.counters.tx.outPackets);
      assert.equal(withRuns.engine.counters.tx.outBytes, without.engine.counters.tx.outBytes);
      entriesWith += withRuns.transport.entries;
      entriesWithout += without.transport.entries;
      datagrams += without.transport.sent.length;
    }
    assert.equal(entriesWithout, datagrams, "without UDP GSO every datagram is an entry");
    assert.ok(entriesWith * 3 < entriesWithout, `runs cut the entries (${entriesWith} vs ${entriesWithout})`);
  });

  it("keeps each datagram the packet it was, TTL-1 once", () => {
    const r = rig({ transportGso: true });
    const pkts = Array.from({ length: 10 }, (_, k) =>
      udpPacketSpec({ src: POD1, dst: podOf(0), id: k, payload: new Uint8Array(36).fill(k) }),
    );
    r.device.inject(pkts);
    assert.equal(r.transport.entries, 1);
    assert.deepEqual(
      r.transport.sent.map((d) => hex(d.data)),
      pkts.map(forwarded),
    );
  });

  it("caps a run at 64 datagrams and at 65507 bytes, and ends it after a shorter datagram", () => {
    const small = rig({ transportGso: true });
    small.device.inject(
      Array.from({ length: 70 }, (_, k) => udpPacketSpec({ dst: podOf(0), id: k, payload: new Uint8Array(72) })),
    );
    assert.equal(small.transport.entries, 2, "64 + 6");
    const big = rig({ transportGso: true });
    big.device.inject(
      Array.from({ length: 50 }, (_, k) => udpPacketSpec({ dst: podOf(0), id: k, payload: new Uint8Array(1372) })),
    );
    assert.equal(Math.floor(MAX_RUN_BYTES / 1400), 46);
    assert.equal(big.transport.entries, 2, "46 + 4");
    const tail = rig({ transportGso: true });
    const sizes = [100, 100, 60, 100, 100, 140, 140];
    tail.device.inject(sizes.map((s, k) => udpPacketSpec({ dst: podOf(0), id: k, payload: new Uint8Array(s - 28) })));
    // [100 100 60] [100 100] [140 140]: a shorter one is the tail, a longer one starts anew.
    assert.equal(tail.transport.entries, 3);
    assert.deepEqual(
      tail.transport.sent.map((d) => d.data.length),
      sizes,
    );
  });

  it("sends one datagram per entry when the device slots are too small for a run or the socket has no GSO", () => {
    const device = new FakeDevice("flannel0", { gso: false });
    const transport = new FakeTransport(8285, { gso: true });
    const engine = engineOver(device, transport, { localAddr: 1, mtu: 1472 });
    engine.setTable(
      LeaseTable.build(network, 24, [{ subnet: parsePrefix("10.244.2.0/24") as Ipv4Prefix, publicIp: 9 }], 8285),
    );
    engine.start();
    device.inject(
      Array.from({ length: 8 }, (_, k) => udpPacketSpec({ dst: podOf(0), id: k, payload: new Uint8Array(40) })),
    );
    assert.equal(transport.entries, 8);
    const plain = rig({ transportGso: true });
    plain.transport.refuseGso();
    plain.device.inject(
      Array.from({ length: 8 }, (_, k) => udpPacketSpec({ dst: podOf(0), id: k, payload: new Uint8Array(40) })),
    );
    assert.equal(plain.transport.entries, 8);
  });
});

// ---- Coalescing UDP toward flannel0 ----

const udpPayload = (p: Uint8Array) => p.length - 28;

/** May p start a UDP super-packet? Written out plainly. */
function mayStart(p: Uint8Array): boolean {
  if (p[0] !== 0x45 || p[9] !== 17 || (u16(p, 6) & 0x3fff) !== 0) return false;
  return udpPayload(p) > 0 && u16(p, 24) === p.length - 20 && u16(p, 26) !== 0 && l4ChecksumOk(p);
}

/** May q follow `last` in a run headed by h (payload size)? */
function mayFollow(h: Uint8Array, last: Uint8Array, q: Uint8Array, size: number): boolean {
  if (!mayStart(q)) return false;
  if (q[1] !== h[1] || q[6] !== h[6] || q[7] !== h[7] || q[8] !== h[8]) return false;
  if (hex(q.subarray(12, 24)) !== hex(h.subarray(12, 24))) return false; // addresses and ports
  if ((h[6] & 0x40) === 0 && u16(q, 4) !== ((u16(last, 4) + 1) & 0xffff)) return false;
  return udpPayload(q) <= size;
}

function glue(run: Uint8Array[]): Uint8Array {
  const h = run[0] as Uint8Array;
  const total = 28 + run.reduce((n, p) => n + udpPayload(p), 0);
  const s = new Uint8Array(total);
  s.set(h.subarray(0, 28));
  let at = 28;
  for (const p of run) {
    s.set(p.subarray(28), at);
    at += udpPayload(p);
  }
  put16(s, 2, total);
  put16(s, 10, 0);
  put16(s, 10, internetChecksum(s, 0, 20));
  put16(s, 24, total - 20);
  put16(s, 26, onesSum(pseudoHeader(s, 17, total - 20), 0, 12));
  return s;
}

function reference(pkts: Uint8Array[], room: number): { packet: Uint8Array; gso: number; run: Uint8Array[] }[] {
  const out: { packet: Uint8Array; gso: number; run: Uint8Array[] }[] = [];
  let i = 0;
  while (i < pkts.length) {
    const h = pkts[i] as Uint8Array;
    const run = [h];
    const size = udpPayload(h);
    if (mayStart(h)) {
      let total = h.length;
      for (let j = i + 1; j < pkts.length && run.length < 64; j++) {
        const q = pkts[j] as Uint8Array;
        if (!mayFollow(h, run[run.length - 1] as Uint8Array, q, size)) break;
        if (total + udpPayload(q) > Math.min(65535, room)) break;
        run.push(q);
        total += udpPayload(q);
        if (udpPayload(q) < size) break;
      }
    }
    out.push(run.length >= 2 ? { packet: glue(run), gso: size, run } : { packet: h, gso: 0, run });
    i += run.length;
  }
  return out;
}

/** Random UDP flows with the things that must stop a run sprinkled in. */
function randomUdpBatch(rand: () => number): Uint8Array[] {
  const flows = Array.from({ length: 1 + randomInt(rand, 3) }, (_, k) => ({
    srcPort: 30000 + k,
    id: randomInt(rand, 0x10000),
    df: rand() < 0.5,
    size: [18, 64, 500, 1372][randomInt(rand, 4)] as number,
  }));
  const out: Uint8Array[] = [];
  const n = 1 + randomInt(rand, 100);
  let f = flows[0] as (typeof flows)[number];
  for (let k = 0; k < n; k++) {
    if (rand() < 0.15) f = flows[randomInt(rand, flows.length)] as (typeof flows)[number];
    const odd = rand();
    let size = f.size;
    let ttl = 64;
    let mf = false;
    let ipOptions: Uint8Array | undefined;
    let zeroSum = false;
    let badSum = false;
    if (odd < 0.04) size = randomInt(rand, f.size);
    else if (odd < 0.06) size = f.size + 1;
    else if (odd < 0.08) ttl = 63;
    else if (odd < 0.1) mf = true;
    else if (odd < 0.12) ipOptions = new Uint8Array([1, 1, 1, 0]);
    else if (odd < 0.14) zeroSum = true;
    else if (odd < 0.16) badSum = true;
    else if (odd < 0.18 && !f.df) f.id = (f.id + 5) & 0xffff;
    else if (odd < 0.2) {
      out.push(tcpPacket({ seq: k, payload: randomBytes(rand, 100) }));
      continue;
    }
    const p = udpPacketSpec({
      srcPort: f.srcPort,
      id: f.id,
      df: f.df,
      mf,
      ttl,
      ipOptions,
      payload: randomBytes(rand, size),
    });
    const u = (p[0] & 15) * 4;
    if (zeroSum) put16(p, u + 6, 0);
    if (badSum) p[p.length - 1] ^= 0x10;
    out.push(p);
    f.id = (f.id + 1) & 0xffff;
  }
  return out;
}

const SLOT = 65536;

function layOut(pkts: Uint8Array[]) {
  const bytes = new Uint8Array(Math.max(1, pkts.length) * 2048 + SLOT);
  const offsets = new Uint32Array(pkts.length);
  const lengths = new Uint32Array(pkts.length);
  let at = 0;
  for (const [i, p] of pkts.entries()) {
    bytes.set(p, at);
    offsets[i] = at;
    lengths[i] = p.length;
    at += p.length;
  }
  return { bytes, offsets, lengths };
}

describe("UDP coalescing toward flannel0", () => {
  it("coalesces random UDP flows exactly like the slow reference", () => {
    let superPackets = 0;
    for (let iter = 0; iter < 300; iter++) {
      const rand = seededRandom(0x0d9000 + iter);
      const pkts = randomUdpBatch(rand);
      const { bytes, offsets, lengths } = layOut(pkts);
      const gso = new Uint16Array(pkts.length);
      const want = reference(pkts, bytes.length);
      const n = new Coalescer(true).coalesce(bytes, offsets, lengths, gso, pkts.length, bytes.length);
      assert.equal(n, want.length, `iter ${iter}: count`);
      for (let k = 0; k < n; k++) {
        const w = want[k] as { packet: Uint8Array; gso: number };
        const got = bytes.slice(offsets[k], (offsets[k] as number) + (lengths[k] as number));
        assert.equal(gso[k], w.gso, `iter ${iter} out ${k}: gso`);
        assert.equal(hex(got), hex(w.packet), `iter ${iter} out ${k}`);
        if (w.gso > 0) superPackets++;
      }
    }
    assert.ok(superPackets > 100, `random flows coalesce often enough to mean something (${superPackets})`);
  });

  it("a UDP super-packet splits back into the datagrams it was built from (consecutive ids)", () => {
    const pkts = Array.from({ length: 5 }, (_, k) =>
      udpPacketSpec({ id: 0xfffe + k, payload: randomBytes(seededRandom(k), k === 4 ? 20 : 64) }),
    );
    const { bytes, offsets, lengths } = layOut(pkts);
    const gso = new Uint16Array(5);
    assert.equal(new Coalescer(true).coalesce(bytes, offsets, lengths, gso, 5, bytes.length), 1);
    assert.equal(gso[0], 64);
    const merged = bytes.slice(0, lengths[0]);
    assert.ok(ipChecksumOk(merged));
    assert.equal(u16(merged, 24), merged.length - 20, "the UDP length covers the whole super-packet");
    // Complete the seeded checksum the way the kernel would, then cut it up.
    const whole = merged.slice();
    put16(whole, 26, 0);
    put16(whole, 26, l4Checksum(whole, 17) || 0xffff);
    assert.deepEqual(referenceSplit(whole, GSO_TYPE.UDP_L4, 64).map(hex), pkts.map(hex));
  });

  it("leaves UDP alone without the udp option, and never merges a datagram without a checksum or with a wrong one", () => {
    const mk = (k: number) => udpPacketSpec({ id: k, payload: new Uint8Array(50).fill(k) });
    const pkts = [mk(0), mk(1), mk(2), mk(3), mk(4), mk(5)];
    put16(pkts[2] as Uint8Array, 26, 0);
    (pkts[4] as Uint8Array)[40] ^= 1;
    const a = layOut(pkts);
    assert.equal(
      new Coalescer(false).coalesce(a.bytes, a.offsets, a.lengths, new Uint16Array(6), 6, a.bytes.length),
      6,
    );
    const b = layOut(pkts);
    const gso = new Uint16Array(6);
    // [0 1] [2: no checksum] [3: alone, 4 fails] [4] [5]
    assert.equal(new Coalescer(true).coalesce(b.bytes, b.offsets, b.lengths, gso, 6, b.bytes.length), 5);
    assert.deepEqual([...gso.subarray(0, 5)], [50, 0, 0, 0, 0]);
  });

  it("merges DF datagrams whatever their ids (RFC 6864), but not datagrams without DF out of id order", () => {
    const df = Array.from({ length: 4 }, () => udpPacketSpec({ id: 0, df: true, payload: new Uint8Array(64) }));
    const a = layOut(df);
    assert.equal(new Coalescer(true).coalesce(a.bytes, a.offsets, a.lengths, new Uint16Array(4), 4, a.bytes.length), 1);
    const plain = Array.from({ length: 4 }, () => udpPacketSpec({ id: 0, payload: new Uint8Array(64) }));
    const b = layOut(plain);
    assert.equal(new Coalescer(true).coalesce(b.bytes, b.offsets, b.lengths, new Uint16Array(4), 4, b.bytes.length), 4);
  });

  it("the engine writes a UDP GRO run of one flow as one super-packet only when flannel0 takes UDP GSO", () => {
    const pkts = Array.from({ length: 12 }, (_, k) =>
      udpPacketSpec({ src: podOf(0), dst: POD1, id: 40 + k, payload: new Uint8Array(64).fill(k) }),
    );
    const run = new Uint8Array(pkts.length * 92);
    for (const [k, p] of pkts.entries()) run.set(p, k * 92);
    for (const udpGso of [true, false]) {
      const r = rig({ transportGso: true, udpGso });
      r.transport.inject([{ data: run, src: PEERS[0] as number, segSize: 92 }]);
      assert.equal(r.engine.counters.rx.outPackets, 12);
      if (udpGso) {
        assert.deepEqual(r.device.writtenGso, [64]);
        const whole = (r.device.written[0] as Uint8Array).slice();
        put16(whole, 26, 0);
        put16(whole, 26, l4Checksum(whole, 17) || 0xffff);
        assert.deepEqual(referenceSplit(whole, GSO_TYPE.UDP_L4, 64).map(hex), pkts.map(forwarded));
      } else {
        assert.equal(r.device.written.length, 12);
        assert.deepEqual(r.device.written.map(hex), pkts.map(forwarded));
      }
    }
  });
});

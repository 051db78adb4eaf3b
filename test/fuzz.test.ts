// Hostile input through the real engine over the fakes: random and mutated
// packets in both directions, at least 10^6 inputs per run; then with every
// offload on (super-packets with hostile virtio-net fields split by the
// addon, GRO runs coalesced by it). Nothing may throw, and every input must
// be either forwarded or counted under a drop reason.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Drop } from "../dataplane/counters.js";
import { engineOver, FakeDevice, FakeTransport, type InjectedPacket } from "../dataplane/fake-io.js";
import { LeaseTable } from "../dataplane/leases.js";
import { GSO_TYPE } from "../dataplane/native/index.js";
import { onesSum } from "../dataplane/wire/checksum.js";
import { type Ipv4Prefix, parseIpv4, parsePrefix } from "../net/addr.js";
import { edgeSize, flow, fuzzSeed, mutate, mutateFlow, packet } from "./helpers/mutate.js";
import { headerChecksumOk, ipv4Packet } from "./helpers/packets.js";
import { randomBytes, randomInt, seededRandom } from "./helpers/random.js";
import { l4ChecksumOk, pseudoHeader, u16 } from "./helpers/segments.js";

const network = parsePrefix("10.244.0.0/16") as Ipv4Prefix;
const PEERS = [parseIpv4("198.18.0.2"), parseIpv4("198.18.0.3")];
/** Seeds the offload runs (WEFT_FUZZ_SEED replays one; the runs without offloads keep their fixed seeds). */
const SEED = fuzzSeed();

function makeRig(capacity: number) {
  const device = new FakeDevice("flannel0", { capacity, record: false });
  const transport = new FakeTransport(8285, { capacity, record: false });
  const engine = engineOver(device, transport, { localAddr: parseIpv4("10.244.1.0"), mtu: 1472 });
  engine.setTable(
    LeaseTable.build(
      network,
      24,
      [
        { subnet: parsePrefix("10.244.2.0/24") as Ipv4Prefix, publicIp: PEERS[0] as number },
        { subnet: parsePrefix("10.244.3.0/24") as Ipv4Prefix, publicIp: PEERS[1] as number },
      ],
      8285,
    ),
  );
  engine.start();
  return { device, transport, engine };
}

/**
 * Engine over recording fakes, one peer leased; with gso every offload is on:
 * super-packets from flannel0, GRO runs from peers, coalescing.
 */
function oneLeaseRig(gso: boolean) {
  const device = new FakeDevice("flannel0", { capacity: 64, gso });
  const transport = new FakeTransport(8285, { capacity: 64, gso });
  const engine = engineOver(device, transport, { localAddr: parseIpv4("10.244.1.0"), mtu: 1472 });
  engine.setTable(
    LeaseTable.build(
      network,
      24,
      [{ subnet: parsePrefix("10.244.2.0/24") as Ipv4Prefix, publicIp: PEERS[0] as number }],
      8285,
    ),
  );
  engine.start();
  return { device, transport, engine };
}

/** A packet that is plausible enough to reach deep into the engine, then mangled. */
function hostilePacket(rand: () => number): Uint8Array {
  const kind = randomInt(rand, 12);
  const hosts = ["10.244.2.9", "10.244.3.9", "10.244.99.9", "10.244.1.5", "224.0.0.1", "255.255.255.255", "0.0.0.0"];
  const base = ipv4Packet({
    src: hosts[randomInt(rand, hosts.length)] as string,
    dst: hosts[randomInt(rand, hosts.length)] as string,
    ttl: randomInt(rand, 4) === 0 ? randomInt(rand, 3) : 64,
    protocol: [1, 6, 17, randomInt(rand, 256)][randomInt(rand, 4)] as number,
    payload: randomBytes(rand, randomInt(rand, 1600)),
    options: randomBytes(rand, 4 * randomInt(rand, 3)),
    fragmentOffset: randomInt(rand, 4) === 0 ? randomInt(rand, 8191) : 0,
    dontFragment: rand() < 0.5,
  });
  switch (kind) {
    case 0:
      return randomBytes(rand, randomInt(rand, 80)); // garbage
    case 1:
      return base.subarray(0, randomInt(rand, base.length + 1)); // truncated
    case 2:
      base[0] = (base[0] & 0xf0) | randomInt(rand, 16); // bad IHL
      return base;
    case 3:
      base[2] = randomInt(rand, 256); // total length beyond or below the buffer
      base[3] = randomInt(rand, 256);
      return base;
    case 4:
      base[0] = (randomInt(rand, 16) << 4) | (base[0] & 15); // IPv6 and other versions
      return base;
    case 5:
      for (let i = 0; i < 4; i++) base[randomInt(rand, base.length)] ^= 1 << randomInt(rand, 8); // bit flips
      return base;
    case 6:
      return new Uint8Array(0);
    default:
      return base;
  }
}

describe("fuzz: hostile packets through the engine", () => {
  it("flannel0 -> peers: 600k inputs, no exception, forwarded + dropped = received", () => {
    const rand = seededRandom(20261122);
    const { device, engine } = makeRig(64);
    const pool = Array.from({ length: 4096 }, () => hostilePacket(rand));
    let total = 0;
    let batches = 0;
    for (let round = 0; round < 150; round++) {
      // Batches of every size, from empty-ish to full.
      for (let first = 0; first < pool.length; ) {
        const n = 1 + randomInt(rand, 64);
        batches += device.inject(pool.slice(first, first + n));
        first += n;
      }
      total += pool.length;
      // Refresh part of the pool so later rounds see new inputs (TTL mutates in place too).
      for (let i = 0; i < 256; i++) pool[randomInt(rand, pool.length)] = hostilePacket(rand);
    }
    const c = engine.counters.tx;
    assert.equal(c.inPackets, total);
    assert.equal(c.batches, batches, "every batch handled once");
    assert.equal(c.outPackets + c.dropped(), c.inPackets);
    assert.ok(c.outPackets > 0 && c.dropped() > 0, "both outcomes exercised");
  });

  it("peers -> flannel0: 600k datagrams from leased and unknown senders, truncated ones too", () => {
    const rand = seededRandom(8285);
    const { transport, device, engine } = makeRig(64);
    const senders = [...PEERS, parseIpv4("198.18.0.99"), 0];
    const pool = Array.from({ length: 4096 }, () => ({
      data: rand() < 0.02 ? new Uint8Array(2049 + randomInt(rand, 3000)) : hostilePacket(rand),
      src: senders[randomInt(rand, senders.length)] as number,
    }));
    let total = 0;
    // What the engine must count without looking inside: cut datagrams, then strangers.
    let truncated = 0;
    let strangers = 0;
    for (let round = 0; round < 150; round++) {
      for (let first = 0; first < pool.length; ) {
        const n = 1 + randomInt(rand, 64);
        transport.inject(pool.slice(first, first + n));
        first += n;
      }
      for (const d of pool) {
        if (d.data.length > transport.rx.slotSize) truncated++;
        else if (!PEERS.includes(d.src)) strangers++;
      }
      total += pool.length;
      for (let i = 0; i < 256; i++)
        pool[randomInt(rand, pool.length)] = { data: hostilePacket(rand), src: senders[randomInt(rand, 4)] as number };
    }
    const c = engine.counters.rx;
    assert.equal(c.inPackets, total);
    assert.equal(c.outPackets + c.dropped(), c.inPackets);
    assert.equal(device.outPackets, c.outPackets, "every forwarded packet reached flannel0");
    assert.equal(c.drops[Drop.Truncated], truncated);
    assert.equal(c.drops[Drop.UnknownSender], strangers);
    assert.ok(truncated > 0 && strangers > 0, "both kinds were in the input");
  });

  it("every packet written into flannel0 or sent to a peer is a valid IPv4 packet with a good header checksum", () => {
    const rand = seededRandom(99);
    const { device, transport } = oneLeaseRig(false);
    for (let i = 0; i < 200; i++) {
      const batch = Array.from({ length: 64 }, () => hostilePacket(rand));
      // Only inputs with a good header checksum can be expected to leave with one.
      device.inject(batch.filter((p) => p.length >= 20 && p[0] >> 4 === 4 && headerChecksumOk(p)));
      transport.inject(
        batch
          .map((p) => ({ data: p, src: PEERS[0] as number }))
          .filter((d) => d.data.length >= 20 && d.data[0] >> 4 === 4 && headerChecksumOk(d.data)),
      );
    }
    const out = [...device.written, ...transport.sent.map((s) => s.data)];
    assert.ok(out.length > 1000);
    for (const p of out) {
      assert.equal(p[0] >> 4, 4);
      assert.equal((p[2] << 8) | p[3], p.length, "sent exactly the IP total length");
      assert.ok(headerChecksumOk(p), "header checksum still verifies");
    }
  });
});

/** A super-packet read from flannel0 with virtio-net fields as hostile as a peer pod could make them. */
function superPacket(rand: () => number, hostile: boolean): InjectedPacket {
  const gsoSize = rand() < 0.5 ? 0 : rand() < 0.7 ? 1 + randomInt(rand, 1432) : edgeSize(rand);
  // Without GSO the TUN hands over nothing longer than flannel0's MTU.
  let base = packet(rand, gsoSize !== 0);
  while (gsoSize === 0 && base.length > 1400) base = packet(rand);
  const data = hostile && rand() < 0.5 ? mutate(rand, base) : base;
  const fitting = data.length > 9 ? (data[9] === 6 ? GSO_TYPE.TCPV4 : GSO_TYPE.UDP_L4) : GSO_TYPE.TCPV4;
  const gsoType = rand() < 0.7 ? fitting : [GSO_TYPE.TCPV6, 0, 0x81, 0x85, randomInt(rand, 256)][randomInt(rand, 5)];
  return { data, gsoSize, gsoType: gsoType as number };
}

/** A GRO slot as UDP_GRO delivers it: a flow's packets end to end, each segSize long but the last. */
function groRun(rand: () => number, hostile: boolean) {
  const tcp = rand() < 0.6;
  const size = 1 + randomInt(rand, 1400);
  let pkts = flow(rand, { tcp, count: 1 + randomInt(rand, 16), size });
  if (hostile && rand() < 0.3) pkts = mutateFlow(rand, pkts);
  if (hostile) pkts = pkts.map((p) => (rand() < 0.1 ? mutate(rand, p) : p));
  const data = new Uint8Array(pkts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of pkts) {
    data.set(p, at);
    at += p.length;
  }
  const head = pkts[0] as Uint8Array;
  const segSize = hostile && rand() < 0.1 ? 1 + randomInt(rand, 2000) : Math.max(1, head.length);
  const src = hostile && rand() < 0.05 ? parseIpv4("198.18.0.99") : (PEERS[0] as number);
  return { data, src, segSize };
}

/** Header bytes of a written (super-)packet: IP header plus TCP or UDP header. */
function l4HeaderEnd(p: Uint8Array): number {
  const ihl = (p[0] & 15) * 4;
  return ihl + (p[9] === 6 ? (p[ihl + 12] >> 4) * 4 : 8);
}

describe("fuzz: offloads on, through the engine", () => {
  for (const hostile of [false, true]) {
    const what = hostile ? "hostile packets" : "well-formed packets";
    it(`flannel0 -> peers: 12k ${what} behind hostile virtio fields: every input split, sent or counted`, () => {
      const rand = seededRandom(SEED + (hostile ? 11 : 10));
      const { device, transport, engine } = oneLeaseRig(true);
      const c = engine.counters.tx;
      let batches = 0;
      for (let round = 0; round < 12; round++) {
        const pool = Array.from({ length: 1000 }, () => superPacket(rand, hostile));
        for (let first = 0; first < pool.length; ) {
          const n = 1 + randomInt(rand, 64);
          batches += device.inject(pool.slice(first, first + n));
          first += n;
        }
        for (const d of transport.sent) {
          assert.ok(d.data.length <= 1472 && d.data.length >= 20, `seed ${SEED}: ${d.data.length} bytes sent`);
          assert.equal(u16(d.data, 2), d.data.length, `seed ${SEED}: sent exactly the IP total length`);
          if (!hostile) {
            assert.ok(headerChecksumOk(d.data) && l4ChecksumOk(d.data), `seed ${SEED}: checksums verify`);
            assert.equal(d.data[8], 63, `seed ${SEED}: TTL-1 once`);
          }
        }
        transport.sent.length = 0;
      }
      assert.equal(c.batches, batches);
      assert.equal(c.outPackets + c.dropped(), c.inPackets, `seed ${SEED}: out + dropped = in`);
      assert.equal(transport.outPackets, c.outPackets, `seed ${SEED}: every segment counted out went out`);
      assert.ok(transport.entries < transport.outPackets, "some segments left as UDP GSO runs");
      assert.ok(c.drops[Drop.GsoUnsplittable] > 0 && c.drops[Drop.Oversize] > 0, "refused and oversize splits seen");
    });

    it(`peers -> flannel0: 6k GRO runs of ${what}, coalesced: packets and bytes conserved`, () => {
      const rand = seededRandom(SEED + (hostile ? 21 : 20));
      const { device, transport, engine } = oneLeaseRig(true);
      const c = engine.counters.rx;
      let segments = 0;
      let bytes = 0;
      for (let round = 0; round < 20; round++) {
        const pool = Array.from({ length: 300 }, () => groRun(rand, hostile));
        for (let first = 0; first < pool.length; ) {
          const n = 1 + randomInt(rand, 64);
          transport.inject(pool.slice(first, first + n));
          first += n;
        }
        device.written.forEach((w, i) => {
          const g = device.writtenGso[i] as number;
          const hdr = l4HeaderEnd(w);
          const n = g === 0 ? 1 : Math.ceil((w.length - hdr) / g);
          segments += n;
          bytes += w.length + (n - 1) * hdr;
          if (g !== 0) {
            // What groMerge leaves for the kernel: whole lengths, the L4
            // checksum seeded with the pseudo-header sum (NEEDS_CSUM).
            const ihl = (w[0] & 15) * 4;
            assert.ok(headerChecksumOk(w), `seed ${SEED}: super-packet header checksum`);
            const field = ihl + (w[9] === 6 ? 16 : 6);
            const seed = onesSum(pseudoHeader(w, w[9] as number, w.length - ihl), 0, 12);
            assert.equal(u16(w, field), seed, `seed ${SEED}: seeded L4 checksum`);
          } else if (!hostile) {
            assert.ok(headerChecksumOk(w) && l4ChecksumOk(w), `seed ${SEED}: forwarded packet intact`);
          }
        });
        device.written.length = 0;
        device.writtenGso.length = 0;
      }
      assert.equal(c.outPackets + c.dropped(), c.inPackets, `seed ${SEED}: out + dropped = in`);
      assert.equal(segments, c.outPackets, `seed ${SEED}: coalescing kept every packet`);
      assert.equal(bytes, c.outBytes, `seed ${SEED}: and every byte`);
      assert.ok(device.outPackets < c.outPackets, "runs were coalesced into super-packets");
    });
  }
});

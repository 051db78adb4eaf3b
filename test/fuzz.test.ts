// Hostile input through the real engine over the fakes: random and mutated
// packets in both directions, at least 10^6 inputs per run. Nothing may throw,
// and every input must be either forwarded or counted under a drop reason.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { type Ipv4Prefix, parseIpv4, parsePrefix } from "../dataplane/addr.js";
import { Engine } from "../dataplane/engine.js";
import { FakeDevice, FakeTransport } from "../dataplane/fake-io.js";
import { LeaseTable } from "../dataplane/leases.js";
import { headerChecksumOk, ipv4Packet } from "./helpers/packets.js";
import { randomBytes, randomInt, seededRandom } from "./helpers/random.js";

const network = parsePrefix("10.244.0.0/16") as Ipv4Prefix;
const PEERS = [parseIpv4("198.18.0.2"), parseIpv4("198.18.0.3")];

function makeRig(capacity: number) {
  const device = new FakeDevice("flannel0", { capacity, record: false });
  const transport = new FakeTransport(8285, { capacity, record: false });
  const engine = new Engine({ device, transport, localAddr: parseIpv4("10.244.1.0"), mtu: 1472 });
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
    for (let round = 0; round < 150; round++) {
      // Batches of every size, from empty-ish to full.
      for (let first = 0; first < pool.length; ) {
        const n = 1 + randomInt(rand, 64);
        device.inject(pool.slice(first, first + n));
        first += n;
      }
      total += pool.length;
      // Refresh part of the pool so later rounds see new inputs (TTL mutates in place too).
      for (let i = 0; i < 256; i++) pool[randomInt(rand, pool.length)] = hostilePacket(rand);
    }
    const c = engine.counters.tx;
    assert.equal(c.inPackets, total);
    assert.ok(total >= 600_000);
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
    for (let round = 0; round < 150; round++) {
      for (let first = 0; first < pool.length; ) {
        const n = 1 + randomInt(rand, 64);
        transport.inject(pool.slice(first, first + n));
        first += n;
      }
      total += pool.length;
      for (let i = 0; i < 256; i++)
        pool[randomInt(rand, pool.length)] = { data: hostilePacket(rand), src: senders[randomInt(rand, 4)] as number };
    }
    const c = engine.counters.rx;
    assert.equal(c.inPackets, total);
    assert.equal(c.outPackets + c.dropped(), c.inPackets);
    assert.equal(device.outPackets, c.outPackets, "every forwarded packet reached flannel0");
    assert.ok(c.drops.every((n) => Number.isFinite(n)));
  });

  it("every packet written into flannel0 or sent to a peer is a valid IPv4 packet with a good header checksum", () => {
    const rand = seededRandom(99);
    const device = new FakeDevice("flannel0", { capacity: 64 });
    const transport = new FakeTransport(8285, { capacity: 64 });
    const engine = new Engine({ device, transport, localAddr: parseIpv4("10.244.1.0"), mtu: 1472 });
    engine.setTable(
      LeaseTable.build(
        network,
        24,
        [{ subnet: parsePrefix("10.244.2.0/24") as Ipv4Prefix, publicIp: PEERS[0] as number }],
        8285,
      ),
    );
    engine.start();
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

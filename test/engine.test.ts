import assert from "node:assert/strict";
import { beforeEach, describe, it } from "node:test";
import { Drop, Icmp } from "../dataplane/counters.js";
import type { Engine } from "../dataplane/engine.js";
import { engineOver, FakeDevice, FakeTransport } from "../dataplane/fake-io.js";
import { LeaseTable } from "../dataplane/leases.js";
import { onesSum } from "../dataplane/wire/checksum.js";
import { type Ipv4Prefix, parseIpv4, parsePrefix } from "../net/addr.js";
import { headerChecksumOk, icmpMessage, ipv4Packet, udpPacket } from "./helpers/packets.js";

const network = parsePrefix("10.244.0.0/16") as Ipv4Prefix;
const H2 = parseIpv4("198.18.0.2");
const H3 = parseIpv4("198.18.0.3");
const STRANGER = parseIpv4("198.18.0.99");
const LOCAL = parseIpv4("10.244.1.0");

function tableOf(...leases: [string, number][]): LeaseTable {
  return LeaseTable.build(
    network,
    24,
    leases.map(([s, ip]) => ({ subnet: parsePrefix(s) as Ipv4Prefix, publicIp: ip })),
    8285,
  );
}

interface Rig {
  device: FakeDevice;
  transport: FakeTransport;
  engine: Engine;
  clock: { t: number };
}

function rig(opts: { capacity?: number; peerCheck?: boolean; strictInnerSource?: boolean; mtu?: number } = {}): Rig {
  const device = new FakeDevice("flannel0", { capacity: opts.capacity ?? 64 });
  const transport = new FakeTransport(8285, { capacity: opts.capacity ?? 64 });
  const clock = { t: 1_000_000 };
  const engine = engineOver(device, transport, {
    localAddr: LOCAL,
    mtu: opts.mtu ?? 1472,
    peerCheck: opts.peerCheck,
    strictInnerSource: opts.strictInnerSource,
    ownSubnet: parsePrefix("10.244.1.0/24") as Ipv4Prefix,
    now: () => clock.t,
  });
  engine.setTable(tableOf(["10.244.2.0/24", H2], ["10.244.3.0/24", H3]));
  engine.start();
  return { device, transport, engine, clock };
}

describe("engine: flannel0 -> peers", () => {
  let r: Rig;
  beforeEach(() => {
    r = rig();
  });

  it("sends each packet to the peer that leases its destination, TTL-1, checksum valid", () => {
    const a = udpPacket("10.244.1.2", "10.244.2.7", 1000, 2000, new Uint8Array(100), 64);
    const b = udpPacket("10.244.1.2", "10.244.3.9", 1000, 2000, new Uint8Array(10), 5);
    r.device.inject([a, b]);
    assert.equal(r.transport.sent.length, 2);
    const [sa, sb] = r.transport.sent;
    assert.equal(sa.addr, H2);
    assert.equal(sa.port, 8285);
    assert.equal(sb.addr, H3);
    assert.equal(sa.data[8], 63);
    assert.equal(sb.data[8], 4);
    assert.ok(headerChecksumOk(sa.data) && headerChecksumOk(sb.data));
    // Only the TTL and checksum changed.
    assert.deepEqual([...sa.data.subarray(12)], [...a.subarray(12)]);
    assert.equal(r.engine.counters.tx.outPackets, 2);
    assert.equal(r.engine.counters.tx.outBytes, a.length + b.length);
  });

  it("sends only the IP total length when the read carried trailing bytes", () => {
    const p = udpPacket("10.244.1.2", "10.244.2.7", 1, 2, new Uint8Array(20));
    const padded = new Uint8Array(p.length + 7);
    padded.set(p);
    r.device.inject([padded]);
    assert.equal(r.transport.sent[0].data.length, p.length);
  });

  it("answers a destination without a lease with ICMP Net Unreachable into flannel0", () => {
    const p = udpPacket("10.244.1.2", "10.244.99.1", 1, 2, new Uint8Array(30));
    r.device.inject([p]);
    assert.equal(r.transport.sent.length, 0);
    assert.equal(r.engine.counters.tx.drops[Drop.NoRoute], 1);
    assert.equal(r.engine.counters.icmpSent[Icmp.NetUnreachable], 1);
    assert.equal(r.device.written.length, 1);
    const m = r.device.written[0];
    assert.deepEqual([m[20], m[21]], [3, 0]);
    assert.deepEqual([...m.subarray(12, 16)], [10, 244, 1, 0], "from flannel0's address");
    assert.deepEqual([...m.subarray(16, 20)], [10, 244, 1, 2], "to the sender");
    assert.equal(m[8], 8);
    assert.deepEqual([...m.subarray(28)], [...p.subarray(0, 28)]);
  });

  it("drops a packet read longer than flannel0's MTU and tells a DF sender the MTU", () => {
    // The kernel never hands the TUN such a packet outside GSO; a hostile
    // writer (or a misconfigured MTU) must still not put it on the underlay.
    const small = rig({ mtu: 1372 });
    const df = ipv4Packet({ src: "10.244.1.2", dst: "10.244.2.7", payload: new Uint8Array(1400), dontFragment: true });
    const noDf = ipv4Packet({ src: "10.244.1.2", dst: "10.244.2.7", payload: new Uint8Array(1400) });
    const fits = ipv4Packet({ src: "10.244.1.2", dst: "10.244.2.7", payload: new Uint8Array(1352) });
    small.device.inject([df, noDf, fits]);
    const c = small.engine.counters.tx;
    assert.equal(c.drops[Drop.Oversize], 2);
    assert.deepEqual(
      small.transport.sent.map((d) => d.data.length),
      [1372],
      "only the packet of exactly the MTU left",
    );
    assert.equal(small.device.written.length, 1, "Fragmentation Needed only for the DF packet");
    const m = small.device.written[0];
    assert.deepEqual([m[20], m[21]], [3, 4]);
    assert.equal((m[26] << 8) | m[27], 1372);
    assert.deepEqual([...m.subarray(16, 20)], [10, 244, 1, 2], "to the sender");
    assert.equal(small.engine.counters.icmpSent[Icmp.FragNeeded], 1);
    assert.equal(c.outPackets + c.dropped(), c.inPackets);
  });

  it("answers TTL 1 with ICMP Time Exceeded and does not forward", () => {
    const p = udpPacket("10.244.1.2", "10.244.2.7", 1, 2, new Uint8Array(30), 1);
    r.device.inject([p]);
    assert.equal(r.transport.sent.length, 0);
    assert.equal(r.engine.counters.tx.drops[Drop.TtlExpired], 1);
    assert.equal(r.engine.counters.icmpSent[Icmp.TimeExceeded], 1);
    const m = r.device.written[0];
    assert.deepEqual([m[20], m[21]], [11, 0]);
    assert.equal(onesSum(m, 20, m.length - 20), 0xffff);
  });

  it("never answers an ICMP error or a later fragment, but does answer an echo request", () => {
    r.device.inject([
      ipv4Packet({ src: "10.244.1.2", dst: "10.244.99.1", protocol: 1, payload: icmpMessage(3, 3) }),
      ipv4Packet({ src: "10.244.1.2", dst: "10.244.99.1", fragmentOffset: 100 }),
      ipv4Packet({ src: "10.244.1.2", dst: "10.244.99.1", protocol: 1, payload: icmpMessage(8, 0) }),
    ]);
    assert.equal(r.engine.counters.tx.drops[Drop.NoRoute], 3);
    assert.equal(r.device.written.length, 1);
  });

  it("rate-limits ICMP errors per source and refills over time", () => {
    const flood = Array.from({ length: 50 }, () => udpPacket("10.244.1.2", "10.244.99.1", 1, 2, new Uint8Array(4)));
    const other = udpPacket("10.244.1.3", "10.244.99.1", 1, 2, new Uint8Array(4));
    r.device.inject([...flood, other]);
    assert.equal(r.engine.counters.tx.drops[Drop.NoRoute], 51);
    assert.equal(r.device.written.length, 11, "burst of 10 for the flooder, 1 for the other source");
    assert.equal(r.engine.counters.icmpRateLimited, 40);
    r.clock.t += 1000;
    r.device.inject(flood);
    assert.equal(r.device.written.length, 21);
  });

  it("caps ICMP errors for all sources together, so a flood from many sources gets no more than the global rate", () => {
    // 1,000 sources, each well under its own rate of 10/s.
    const flood = Array.from({ length: 1000 }, (_, i) =>
      udpPacket(`10.244.1.${(i % 250) + 2}`, `10.244.${99 + Math.floor(i / 250)}.1`, 1, 2, new Uint8Array(4)),
    );
    r.device.inject(flood);
    assert.equal(r.engine.counters.tx.drops[Drop.NoRoute], 1000);
    assert.equal(r.device.written.length, 100, "the global burst");
    r.clock.t += 500;
    r.device.inject(flood);
    assert.equal(r.device.written.length, 150, "half a second refills half the global rate");
  });

  it("never answers a packet from or to a martian address (0/8, loopback, multicast, 240/4, broadcast)", () => {
    const probes = [
      ["10.244.1.2", "127.0.0.1"],
      ["10.244.1.2", "0.1.2.3"],
      ["10.244.1.2", "224.0.0.5"],
      ["10.244.1.2", "240.1.2.3"],
      ["10.244.1.2", "255.255.255.255"],
      ["127.0.0.9", "10.244.99.1"],
      ["0.0.0.0", "10.244.99.1"],
      ["250.0.0.1", "10.244.99.1"],
    ];
    r.device.inject(probes.map(([src, dst]) => udpPacket(src as string, dst as string, 1, 2, new Uint8Array(100))));
    assert.equal(r.engine.counters.tx.drops[Drop.NoRoute], probes.length);
    assert.equal(r.device.written.length, 0);
    // The control: an ordinary unroutable destination is answered.
    r.device.inject([udpPacket("10.244.1.2", "10.244.99.1", 1, 2, new Uint8Array(100))]);
    assert.equal(r.device.written.length, 1);
  });

  it("counts malformed and non-IPv4 packets and forwards the rest of the batch", () => {
    const good = udpPacket("10.244.1.2", "10.244.2.7", 1, 2, new Uint8Array(8));
    const v6 = new Uint8Array(48);
    v6[0] = 0x60;
    const short = good.slice(0, 12);
    const lying = good.slice();
    lying[3] += 50;
    r.device.inject([v6, good, short, lying, new Uint8Array(0), good]);
    const c = r.engine.counters.tx;
    assert.equal(c.drops[Drop.NotIpv4], 1);
    assert.equal(c.drops[Drop.Malformed], 3);
    assert.equal(r.transport.sent.length, 2);
    assert.equal(c.inPackets, 6);
    assert.equal(c.outPackets + c.dropped(), c.inPackets);
  });

  it("takes a new table from the next batch on", () => {
    const p = () => udpPacket("10.244.1.2", "10.244.4.4", 1, 2, new Uint8Array(8));
    r.device.inject([p()]);
    assert.equal(r.transport.sent.length, 0);
    r.engine.setTable(tableOf(["10.244.4.0/24", H3]));
    r.device.inject([p(), p()]);
    assert.equal(r.transport.sent.length, 2);
    assert.equal(r.transport.sent[1].addr, H3);
    r.engine.setTable(tableOf());
    r.device.inject([p()]);
    assert.equal(r.transport.sent.length, 2);
    assert.equal(r.engine.counters.tx.drops[Drop.NoRoute], 2);
  });

  it("holds flannel0 while the socket is full and sends the rest when writable", () => {
    const packets = Array.from({ length: 10 }, (_, i) =>
      udpPacket("10.244.1.2", "10.244.2.7", i, 2, new Uint8Array(8)),
    );
    r.transport.writeBudget = 4;
    r.device.inject(packets);
    assert.equal(r.transport.sent.length, 4);
    assert.ok(r.device.paused, "flannel0 paused while packets wait");
    assert.ok(r.transport.waitingForWritable);
    r.transport.makeWritable(3);
    assert.equal(r.transport.sent.length, 7);
    assert.ok(r.device.paused);
    r.transport.makeWritable();
    assert.equal(r.transport.sent.length, 10);
    assert.equal(r.device.paused, false);
    assert.deepEqual(
      r.transport.sent.map((s) => (s.data[20] << 8) | s.data[21]),
      packets.map((_, i) => i),
      "order kept",
    );
  });

  it("delivers batches no larger than the arena", () => {
    const small = rig({ capacity: 8 });
    const packets = Array.from({ length: 30 }, () => udpPacket("10.244.1.2", "10.244.2.7", 1, 2, new Uint8Array(8)));
    assert.equal(small.device.inject(packets), 4);
    assert.equal(small.engine.counters.tx.batches, 4);
    assert.equal(small.transport.sent.length, 30);
  });
});

describe("engine: peers -> flannel0", () => {
  let r: Rig;
  beforeEach(() => {
    r = rig();
  });
  const fromH2 = (p: Uint8Array) => ({ data: p, src: H2 });

  it("writes packets from a leased peer into flannel0 with TTL-1", () => {
    const p = udpPacket("10.244.2.7", "10.244.1.2", 1, 2, new Uint8Array(50), 63);
    r.transport.inject([fromH2(p)]);
    assert.equal(r.device.written.length, 1);
    assert.equal(r.device.written[0][8], 62);
    assert.ok(headerChecksumOk(r.device.written[0]));
    assert.equal(r.engine.counters.rx.outPackets, 1);
  });

  it("drops datagrams from hosts without a lease", () => {
    r.transport.inject([{ data: udpPacket("10.244.2.7", "10.244.1.2", 1, 2, new Uint8Array(8)), src: STRANGER }]);
    assert.equal(r.device.written.length, 0);
    assert.equal(r.engine.counters.rx.drops[Drop.UnknownSender], 1);
  });

  it("accepts any sender when the peer check is off (NAT'd peers)", () => {
    const open = rig({ peerCheck: false });
    open.transport.inject([{ data: udpPacket("10.244.2.7", "10.244.1.2", 1, 2, new Uint8Array(8)), src: STRANGER }]);
    assert.equal(open.device.written.length, 1);
  });

  it("drops truncated, malformed and non-IPv4 datagrams", () => {
    const big = new Uint8Array(3000);
    big.set(udpPacket("10.244.2.7", "10.244.1.2", 1, 2, new Uint8Array(8)));
    const v6 = new Uint8Array(40);
    v6[0] = 0x60;
    r.transport.inject([fromH2(big), fromH2(v6), fromH2(new Uint8Array(5)), fromH2(new Uint8Array(0))]);
    const c = r.engine.counters.rx;
    assert.equal(c.drops[Drop.Truncated], 1);
    assert.equal(c.drops[Drop.NotIpv4], 2, "IPv6 and a zero-filled datagram");
    assert.equal(c.drops[Drop.Malformed], 1);
    assert.equal(r.device.written.length, 0);
    assert.equal(c.outPackets + c.dropped(), c.inPackets);
  });

  it("drops packets larger than flannel0's MTU and tells a DF sender the MTU", () => {
    const small = rig({ mtu: 1372 });
    const p = ipv4Packet({ src: "10.244.2.7", dst: "10.244.1.2", payload: new Uint8Array(1400), dontFragment: true });
    const noDf = ipv4Packet({ src: "10.244.2.7", dst: "10.244.1.2", payload: new Uint8Array(1400) });
    small.transport.inject([fromH2(p), fromH2(noDf)]);
    assert.equal(small.engine.counters.rx.drops[Drop.Oversize], 2);
    assert.equal(small.device.written.length, 0);
    assert.equal(small.transport.sent.length, 1, "Fragmentation Needed only for the DF packet");
    const m = small.transport.sent[0];
    assert.equal(m.addr, H2, "goes back to the peer that sent it");
    assert.deepEqual([m.data[20], m.data[21]], [3, 4]);
    assert.equal((m.data[26] << 8) | m.data[27], 1372);
    assert.deepEqual([...m.data.subarray(16, 20)], [10, 244, 2, 7]);
    assert.equal(small.engine.counters.icmpSent[Icmp.FragNeeded], 1);
  });

  it("answers a tunnelled packet whose TTL runs out with Time Exceeded to its sender", () => {
    r.transport.inject([fromH2(udpPacket("10.244.2.7", "10.244.1.2", 1, 2, new Uint8Array(64), 1))]);
    assert.equal(r.device.written.length, 0);
    assert.equal(r.engine.counters.rx.drops[Drop.TtlExpired], 1);
    assert.equal(r.transport.sent.length, 1);
    assert.equal(r.transport.sent[0].addr, H2);
    assert.equal(r.transport.sent[0].data[20], 11);
  });

  it("with strict inner source, drops packets a peer sends for another subnet", () => {
    const strict = rig({ strictInnerSource: true });
    strict.transport.inject([
      fromH2(udpPacket("10.244.2.7", "10.244.1.2", 1, 2, new Uint8Array(8))),
      fromH2(udpPacket("10.244.3.7", "10.244.1.2", 1, 2, new Uint8Array(8))),
      fromH2(udpPacket("192.0.2.1", "10.244.1.2", 1, 2, new Uint8Array(8))),
    ]);
    assert.equal(strict.device.written.length, 1);
    assert.equal(strict.engine.counters.rx.drops[Drop.SpoofedSource], 2);
  });

  it("drops tunnelled packets whose inner source is this host's own: its addresses, its lease, loopback", () => {
    r.engine.setLocalAddresses([parseIpv4("198.18.0.1"), parseIpv4("172.17.0.1")]);
    r.transport.inject([
      fromH2(udpPacket("10.244.1.1", "10.244.1.2", 1, 2, new Uint8Array(8))),
      fromH2(udpPacket("10.244.1.0", "10.244.1.2", 1, 2, new Uint8Array(8))),
      fromH2(udpPacket("198.18.0.1", "10.244.1.2", 1, 2, new Uint8Array(8))),
      fromH2(udpPacket("172.17.0.1", "10.244.1.2", 1, 2, new Uint8Array(8))),
      fromH2(udpPacket("127.0.0.1", "10.244.1.2", 1, 2, new Uint8Array(8))),
      fromH2(udpPacket("10.244.2.7", "10.244.1.2", 1, 2, new Uint8Array(8))),
    ]);
    assert.equal(r.device.written.length, 1, "only the peer's own pod gets through");
    assert.deepEqual([...r.device.written[0].subarray(12, 16)], [10, 244, 2, 7]);
    assert.equal(r.engine.counters.rx.drops[Drop.LocalSource], 5);
    const c = r.engine.counters.rx;
    assert.equal(c.outPackets + c.dropped(), c.inPackets);
  });

  it("never sends ICMP toward a peer larger than the packet that triggered it", () => {
    let bytesIn = 0;
    for (const payload of [0, 4, 8, 16, 27, 28, 40, 100, 1000]) {
      const p = udpPacket("10.244.2.7", "10.244.1.2", 1, 2, new Uint8Array(payload), 1);
      bytesIn += p.length;
      const before = r.transport.sent.length;
      r.transport.inject([fromH2(p)]);
      for (const m of r.transport.sent.slice(before)) {
        assert.ok(m.data.length <= p.length, `a ${m.data.length}-byte error for a ${p.length}-byte trigger`);
      }
    }
    const bytesOut = r.transport.sent.reduce((n, m) => n + m.data.length, 0);
    assert.ok(r.transport.sent.length >= 4, "large triggers are still answered");
    assert.ok(bytesOut / bytesIn <= 1, `amplification ${bytesOut / bytesIn}`);
  });

  it("sends ICMP toward a peer to the backend's port, whatever port the datagram claims", () => {
    const p = udpPacket("10.244.2.7", "10.244.1.2", 1, 2, new Uint8Array(100), 1);
    r.transport.inject([{ data: p, src: H2, srcPort: 53 }]);
    assert.equal(r.transport.sent.length, 1);
    assert.equal(r.transport.sent[0].port, 8285);
  });

  it("with the peer check off, still sends ICMP only to hosts that hold a lease", () => {
    const open = rig({ peerCheck: false });
    const p = udpPacket("10.244.2.7", "10.244.1.2", 1, 2, new Uint8Array(100), 1);
    open.transport.inject([{ data: p, src: STRANGER }]);
    assert.equal(open.engine.counters.rx.drops[Drop.TtlExpired], 1);
    assert.equal(open.transport.sent.length, 0, "no reflection toward an address that holds no lease");
    open.transport.inject([fromH2(p)]);
    assert.equal(open.transport.sent.length, 1);
  });

  it("holds the socket while flannel0 is full and writes the rest when writable", () => {
    const packets = Array.from({ length: 6 }, (_, i) =>
      fromH2(udpPacket("10.244.2.7", "10.244.1.2", i, 2, new Uint8Array(8))),
    );
    r.device.writeBudget = 2;
    r.transport.inject(packets);
    assert.equal(r.device.written.length, 2);
    assert.ok(r.transport.paused);
    r.device.makeWritable();
    assert.equal(r.device.written.length, 6);
    assert.equal(r.transport.paused, false);
  });
});

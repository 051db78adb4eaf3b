// A whole weft node without root: lease manager, table and engine assembled by
// control/node.ts over the memory registry, fake devices and transports, and a
// fake underlay between three nodes.

import assert from "node:assert/strict";
import { afterEach, beforeEach, describe, it } from "node:test";
import type { Logger } from "../control/log.js";
import { Node } from "../control/node.js";
import { MemoryRegistry } from "../control/registry/memory.js";
import { Drop } from "../dataplane/counters.js";
import { FakeDevice, FakeTransport } from "../dataplane/fake-io.js";
import { LeaseTable } from "../dataplane/leases.js";
import { plainDataplane } from "../dataplane/plain.js";
import { formatIpv4, formatPrefix, parseIpv4 } from "../net/addr.js";
import { headerChecksumOk, udpPacket } from "./helpers/packets.js";
import { randomInt, seededRandom } from "./helpers/random.js";
import { FakeUnderlay } from "./helpers/underlay.js";

const CONFIG = '{"Network":"10.244.0.0/16","Backend":{"Type":"udp","Port":8285}}';
const HOSTS = ["198.18.0.1", "198.18.0.2", "198.18.0.3"].map(parseIpv4);

interface Member {
  node: Node;
  device: FakeDevice;
  transport: FakeTransport;
  publicIp: number;
  subnet: string;
  lines: { level: string; obj: unknown; msg?: string }[];
}

class Lines implements Logger {
  constructor(readonly lines: { level: string; obj: unknown; msg?: string }[]) {}
  debug(obj: unknown, msg?: string): void {
    this.lines.push({ level: "debug", obj, msg });
  }
  info(obj: unknown, msg?: string): void {
    this.lines.push({ level: "info", obj, msg });
  }
  warn(obj: unknown, msg?: string): void {
    this.lines.push({ level: "warn", obj, msg });
  }
  error(obj: unknown, msg?: string): void {
    this.lines.push({ level: "error", obj, msg });
  }
}

async function until(what: string, check: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setImmediate(r));
  }
}

describe("a node over fakes (control/node.ts)", () => {
  let registry: MemoryRegistry;
  let underlay: FakeUnderlay;
  let members: Member[];
  let fatal: number[];

  async function join(publicIp: number): Promise<Member> {
    const device = new FakeDevice("flannel0");
    const transport = new FakeTransport(8285);
    const lines: Member["lines"] = [];
    const index = members.length;
    const node = new Node({
      registry,
      publicIp,
      log: new Lines(lines),
      manager: { random: () => 0 },
      openDataplane: async () => ({ ...plainDataplane({ device, transport }), mtu: 1472 }),
      onFatal: () => fatal.push(index),
    });
    const { lease } = await node.start();
    underlay.attach(publicIp, transport);
    const member = { node, device, transport, publicIp, subnet: formatPrefix(lease.subnet), lines };
    members.push(member);
    return member;
  }

  beforeEach(async () => {
    registry = new MemoryRegistry();
    registry.setNetworkConfig(CONFIG);
    underlay = new FakeUnderlay();
    members = [];
    fatal = [];
    for (const ip of HOSTS) await join(ip);
    await until("every node knows the two others", () => members.every((m) => m.node.engine?.leaseTable.size === 2));
  });
  afterEach(async () => {
    for (const m of members) m.node.stop();
    await registry.close();
  });

  it("takes one subnet per node and forwards A's packet to C's flannel0 with TTL-2", () => {
    const [a, , c] = members as [Member, Member, Member];
    assert.deepEqual(
      members.map((m) => m.subnet),
      ["10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24"],
    );
    const packet = udpPacket("10.244.1.5", "10.244.3.7", 4000, 5000, new Uint8Array([1, 2, 3, 4, 5]), 64);
    a.device.inject([packet]);
    assert.deepEqual(
      a.transport.sent.map((d) => `${formatIpv4(d.addr)}:${d.port}`),
      ["198.18.0.3:8285"],
    );
    assert.equal(underlay.flush(), 1);
    assert.equal(c.device.written.length, 1);
    const arrived = c.device.written[0] as Uint8Array;
    assert.equal(arrived[8], 62, "one hop of TTL at each end of the tunnel");
    assert.ok(headerChecksumOk(arrived));
    assert.deepEqual(arrived.subarray(28), packet.subarray(28), "payload unchanged");
    assert.equal(members[1]?.device.written.length, 0, "B saw nothing");
  });

  it("logs each peer once, as it is added", () => {
    const [a] = members as [Member];
    const added = a.lines.filter((l) => l.msg === "peer added").map((l) => (l.obj as { lease: string }).lease);
    assert.deepEqual(added, ["10.244.2.0/24 -> 198.18.0.2", "10.244.3.0/24 -> 198.18.0.3"]);
    assert.equal(a.lines.filter((l) => l.msg === "lease renewed").length, 0);
  });

  it("stops forwarding to a lease that was removed, and drops what its host still sends", async () => {
    const [a, b, c] = members as [Member, Member, Member];
    await registry.deleteLease({ base: parseIpv4("10.244.3.0"), len: 24 });
    await until("A and B forget C", () => a.node.engine?.leaseTable.size === 1 && b.node.engine?.leaseTable.size === 1);
    assert.deepEqual(fatal, [2], "C's lease was revoked under it: C stops, flanneld exits");
    assert.ok(
      a.lines.some((l) => l.msg === "peer removed" && (l.obj as { lease: string }).lease.startsWith("10.244.3.0/24")),
    );

    a.device.inject([udpPacket("10.244.1.5", "10.244.3.7", 4000, 5000, new Uint8Array(8), 64)]);
    assert.equal(a.transport.sent.length, 0, "nothing tunnelled toward the removed lease");
    assert.equal(a.node.counters.tx.drops[Drop.NoRoute], 1);

    // C's host keeps sending from its old address: B no longer takes it.
    b.transport.inject([
      { data: udpPacket("10.244.3.7", "10.244.2.5", 5000, 4000, new Uint8Array(8), 64), src: c.publicIp },
    ]);
    assert.equal(b.device.written.length, 0);
    assert.equal(b.node.counters.rx.drops[Drop.UnknownSender], 1);
  });

  it("drops garbage and well-formed packets alike from an address without a lease", () => {
    const [, b] = members as [Member, Member];
    const stranger = parseIpv4("198.18.0.99");
    b.transport.inject([
      { data: new Uint8Array([0xde, 0xad, 0xbe, 0xef, 1, 2, 3]), src: stranger },
      { data: udpPacket("10.244.1.9", "10.244.2.5", 1, 2, new Uint8Array(8), 64), src: stranger },
    ]);
    assert.equal(b.device.written.length, 0);
    assert.equal(b.node.counters.rx.drops[Drop.UnknownSender], 2);
    assert.equal(b.transport.sent.length, 0, "no ICMP error toward a stranger");
  });
});

describe("a node joining a populated cluster", () => {
  const PEERS = 200;
  const peerSubnet = (i: number) => ({ base: parseIpv4("10.244.0.0") + (i + 10) * 256, len: 24 });
  const peerIp = (i: number) => parseIpv4("198.18.1.0") + i;
  let registry: MemoryRegistry;
  let node: Node;
  let lines: { level: string; obj: unknown; msg?: string }[];
  let swaps: number;
  let reported: { seconds: number; initial: boolean }[];

  beforeEach(async () => {
    registry = new MemoryRegistry();
    registry.setNetworkConfig(CONFIG);
    for (let i = 0; i < PEERS; i++) await registry.createLease(peerSubnet(i), peerIp(i), 3600);
    lines = [];
    swaps = 0;
    reported = [];
    node = new Node({
      registry,
      publicIp: HOSTS[0] as number,
      log: new Lines(lines),
      onTableSwap: (seconds, initial) => reported.push({ seconds, initial }),
      manager: { random: () => 0 },
      openDataplane: async () => ({
        ...plainDataplane({
          device: new FakeDevice("flannel0"),
          transport: new FakeTransport(8285),
        }),
        mtu: 1472,
      }),
    });
    await node.start();
    const engine = node.engine;
    assert.ok(engine !== null);
    const setTable = engine.setTable.bind(engine);
    engine.setTable = (table) => {
      swaps++;
      setTable(table);
    };
  });
  afterEach(async () => {
    node.stop();
    await registry.close();
  });

  const settled = async () => {
    for (let i = 0; i < 4; i++) await new Promise((r) => setImmediate(r));
  };
  const owner = (subnetBase: number) => {
    const table = node.engine?.leaseTable;
    const id = table?.lookup(subnetBase + 1) ?? -1;
    return id < 0 ? null : formatIpv4(table?.peerAddr[id] as number);
  };

  it("starts with one table of every peer, one summary line, and each peer at debug level", () => {
    assert.equal(node.engine?.leaseTable.size, PEERS);
    const info = lines.filter((l) => l.level === "info").map((l) => l.msg);
    assert.deepEqual(
      info.filter((m) => m?.includes("peer")),
      [`${PEERS} peers`],
    );
    const debug = lines.filter((l) => l.level === "debug" && l.msg === "peer added");
    assert.equal(debug.length, PEERS);
    assert.deepEqual(debug[0]?.obj, { lease: "10.244.10.0/24 -> 198.18.1.0" });
  });

  it("applies a burst of changes as one table swap, losing none, and logs each change after the start once", async () => {
    const subnet = peerSubnet;
    await registry.deleteLease(subnet(0));
    registry.put("10.244.11.0-24", '{"PublicIP":"198.18.9.1","PublicIPv6":null}', Date.now() + 60_000);
    await registry.createLease({ base: parseIpv4("10.244.250.0"), len: 24 }, parseIpv4("198.18.9.2"), 60);
    await registry.deleteLease(subnet(2));
    await registry.createLease(subnet(2), parseIpv4("198.18.9.3"), 60);
    // A renewal: a new expiry, the same PublicIP, nothing for the table.
    await registry.updateLease({ subnet: subnet(3), publicIp: peerIp(3), expiresAt: 0 }, peerIp(3), 7200);
    await settled();
    assert.equal(swaps, 1);
    assert.equal(owner(subnet(0).base), null);
    assert.equal(owner(subnet(1).base), "198.18.9.1");
    assert.equal(owner(parseIpv4("10.244.250.0")), "198.18.9.2");
    assert.equal(owner(subnet(2).base), "198.18.9.3");
    assert.equal(owner(subnet(3).base), formatIpv4(peerIp(3)));
    assert.equal(node.engine?.leaseTable.size, PEERS);
    const changes = lines
      .filter((l) => l.level === "info" && (l.msg === "peer added" || l.msg === "peer removed"))
      .map((l) => `${l.msg} ${(l.obj as { lease: string }).lease}`)
      .sort();
    assert.deepEqual(changes, [
      "peer added 10.244.11.0/24 -> 198.18.9.1",
      "peer added 10.244.12.0/24 -> 198.18.9.3",
      "peer added 10.244.250.0/24 -> 198.18.9.2",
      "peer removed 10.244.10.0/24 -> 198.18.1.0",
      "peer removed 10.244.11.0/24 -> 198.18.1.1",
      "peer removed 10.244.12.0/24 -> 198.18.1.2",
    ]);
    // Nothing but renewals: no swap at all.
    await registry.updateLease({ subnet: subnet(4), publicIp: peerIp(4), expiresAt: 0 }, peerIp(4), 7200);
    await settled();
    assert.equal(swaps, 1);
  });

  it("reports each table handed over with what making it took: the first build, then the burst's update", async () => {
    assert.deepEqual(
      reported.map((r) => r.initial),
      [true],
    );
    await registry.deleteLease(peerSubnet(0));
    await registry.createLease({ base: parseIpv4("10.244.250.0"), len: 24 }, parseIpv4("198.18.9.2"), 60);
    await settled();
    assert.deepEqual(
      reported.map((r) => r.initial),
      [true, false],
    );
    for (const r of reported) assert.ok(Number.isFinite(r.seconds) && r.seconds >= 0, `seconds ${r.seconds}`);
  });
});

describe("a node at 10,000 peers, incremental against a rebuild", () => {
  it("random bursts of adds, removes and changes: one swap per burst, the table a rebuild of the registry gives", async () => {
    const PEERS = 10_000;
    const seed = 17;
    const rand = seededRandom(seed);
    const network = { base: parseIpv4("10.0.0.0"), len: 8 };
    // Slots 256.. (10.1.0.0/24 up): the node's own lease takes the first free one below.
    const subnetOf = (slot: number) => ({ base: (network.base + (256 + slot) * 256) >>> 0, len: 24 });
    const keyOf = (slot: number) => `${formatIpv4(subnetOf(slot).base)}-24`;
    const value = (ip: number) => `{"PublicIP":"${formatIpv4(ip)}","PublicIPv6":null}`;
    const far = Date.now() + 86_400_000;
    const registry = new MemoryRegistry();
    registry.setNetworkConfig('{"Network":"10.0.0.0/8","Backend":{"Type":"udp","Port":8285}}');
    const owners = new Map<number, number>();
    const pool = Array.from({ length: 3000 }, (_, i) => (parseIpv4("198.19.0.1") + i) >>> 0);
    for (let slot = 0; slot < PEERS; slot++) {
      const ip = pool[randomInt(rand, pool.length)] as number;
      owners.set(slot, ip);
      registry.put(keyOf(slot), value(ip), far);
    }
    let swaps = 0;
    const node = new Node({
      registry,
      publicIp: HOSTS[0] as number,
      manager: { random: () => 0 },
      onTableSwap: () => swaps++,
      openDataplane: async () => ({
        ...plainDataplane({
          device: new FakeDevice("flannel0", { record: false }),
          transport: new FakeTransport(8285, { record: false }),
        }),
        mtu: 1472,
      }),
    });
    try {
      await node.start();
      const engine = node.engine;
      assert.ok(engine !== null);
      const show = (leases: readonly { subnet: { base: number }; publicIp: number }[]) =>
        leases.map((l) => `${formatIpv4(l.subnet.base)} ${formatIpv4(l.publicIp)}`).sort();
      const rebuilt = () =>
        LeaseTable.build(
          network,
          24,
          [...owners].map(([slot, publicIp]) => ({ subnet: subnetOf(slot), publicIp })),
          8285,
        );
      assert.deepEqual(show(engine.leaseTable.leases), show(rebuilt().leases), `seed ${seed}: the first table`);
      const first = swaps;
      for (let burst = 1; burst <= 30; burst++) {
        // Bursts from 1 to 400 writes, some touching one key twice (the last write wins).
        const writes = burst % 5 === 0 ? 200 + randomInt(rand, 200) : 1 + randomInt(rand, 20);
        for (let w = 0; w < writes; w++) {
          const slot = randomInt(rand, PEERS + 2000);
          if (owners.has(slot) && rand() < 0.4) {
            registry.remove(keyOf(slot));
            owners.delete(slot);
          } else {
            const ip = pool[randomInt(rand, pool.length)] as number;
            owners.set(slot, ip);
            registry.put(keyOf(slot), value(ip), far);
          }
        }
        for (let i = 0; i < 4; i++) await new Promise((r) => setImmediate(r));
        assert.ok(swaps <= first + burst, `seed ${seed}, burst ${burst}: at most one swap per burst`);
        const table: LeaseTable = engine.leaseTable;
        const reference = rebuilt();
        assert.deepEqual(show(table.leases), show(reference.leases), `seed ${seed}, burst ${burst}: the leases`);
        for (let k = 0; k < 500; k++) {
          const addr = (subnetOf(randomInt(rand, PEERS + 2000)).base + randomInt(rand, 256)) >>> 0;
          const a = table.lookup(addr);
          const b = reference.lookup(addr);
          assert.equal(
            a < 0 ? -1 : table.peerAddr[a],
            b < 0 ? -1 : reference.peerAddr[b],
            `lookup ${formatIpv4(addr)}`,
          );
          const ip = pool[randomInt(rand, pool.length)] as number;
          assert.equal(table.isPeer(ip), reference.isPeer(ip), `isPeer ${formatIpv4(ip)}`);
        }
      }
      assert.ok(swaps > first, "the bursts reached the table");
    } finally {
      node.stop();
      await registry.close();
    }
  });
});

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { LeaseTable, type PeerEdit, type PeerLease } from "../dataplane/leases.js";
import { type Ipv4Prefix, parsePrefix, prefixContains } from "../net/addr.js";
import { randomInt, seededRandom } from "./helpers/random.js";

/** The obviously-correct reference: scan every lease. */
function slowLookup(leases: readonly PeerLease[], dst: number): number {
  for (let i = 0; i < leases.length; i++) if (prefixContains(leases[i].subnet, dst)) return i;
  return -1;
}

function randomLeases(rand: () => number, network: Ipv4Prefix, subnetLen: number, count: number): PeerLease[] {
  const slots = 2 ** (subnetLen - network.len);
  const chosen = new Set<number>();
  while (chosen.size < Math.min(count, slots)) chosen.add(randomInt(rand, slots));
  return [...chosen].map((slot, i) => ({
    subnet: { base: (network.base + slot * 2 ** (32 - subnetLen)) >>> 0, len: subnetLen },
    publicIp: (0xc6120000 + i + 1) >>> 0,
  }));
}

describe("LeaseTable", () => {
  const shapes: [string, number, number][] = [
    ["10.244.0.0/16", 24, 1],
    ["10.244.0.0/16", 24, 200],
    ["10.0.0.0/8", 24, 4096],
    ["10.0.0.0/8", 24, 65536],
    ["10.244.0.0/16", 30, 3000],
    ["10.244.0.0/26", 28, 3],
    ["0.0.0.0/0", 30, 500], // too wide for an index: exercises the sparse map
  ];
  for (const [net, subnetLen, count] of shapes) {
    it(`matches a linear-scan reference: ${net} /${subnetLen}, ${count} leases`, () => {
      const rand = seededRandom(count * 31 + subnetLen);
      const network = parsePrefix(net) as Ipv4Prefix;
      const leases = randomLeases(rand, network, subnetLen, count);
      const table = LeaseTable.build(network, subnetLen, leases, 8285);
      assert.equal(table.size, leases.length);
      for (let i = 0; i < 20000; i++) {
        // Half the probes inside a leased subnet, half anywhere.
        const dst =
          i % 2 === 0
            ? (leases[randomInt(rand, leases.length)].subnet.base + randomInt(rand, 2 ** (32 - subnetLen))) >>> 0
            : randomInt(rand, 2 ** 32);
        assert.equal(table.lookup(dst), slowLookup(leases, dst), `dst ${dst}`);
      }
      for (const lease of leases) assert.ok(table.isPeer(lease.publicIp));
      assert.equal(table.isPeer(0x7f000001), false);
      const id = table.lookup(leases[0].subnet.base);
      assert.equal(table.peerAddr[id], leases[0].publicIp);
      assert.equal(table.peerPort[id], 8285);
    });
  }

  it("the empty table routes nothing and knows no peer", () => {
    const t = LeaseTable.empty();
    assert.equal(t.lookup(0), -1);
    assert.equal(t.lookup(0x0af40102), -1);
    assert.equal(t.isPeer(0), false);
  });

  it("refuses a lease that is not a SubnetLen subnet of the network", () => {
    const network = parsePrefix("10.244.0.0/16") as Ipv4Prefix;
    assert.throws(
      () => LeaseTable.build(network, 24, [{ subnet: parsePrefix("10.245.1.0/24") as Ipv4Prefix, publicIp: 1 }], 8285),
      /lease 10\.245\.1\.0\/24 is not a \/24 inside 10\.244\.0\.0\/16/,
    );
    assert.throws(
      () => LeaseTable.build(network, 24, [{ subnet: parsePrefix("10.244.1.0/25") as Ipv4Prefix, publicIp: 1 }], 8285),
      /is not a \/24/,
    );
  });
});

/** What a table routes, slot by slot, and which senders it knows: equal for equal tables whatever their ids. */
function routes(
  table: LeaseTable,
  network: Ipv4Prefix,
  subnetLen: number,
  slots: readonly number[],
  senders: readonly number[],
) {
  const out: string[] = [];
  for (const slot of slots) {
    const dst = (network.base + slot * 2 ** (32 - subnetLen) + 1) >>> 0;
    const id = table.lookup(dst);
    out.push(id < 0 ? "-" : `${table.peerAddr[id]}:${table.peerPort[id]}`);
  }
  for (const addr of senders) out.push(table.isPeer(addr) ? "p" : "x");
  return out;
}

describe("LeaseTable.with: edits on a copy equal a full rebuild", () => {
  const shapes: [string, number, number, number][] = [
    // network, SubnetLen, peers kept around, addresses to draw PublicIPs from (fewer than peers: shared ones)
    ["10.0.0.0/8", 24, 10_000, 12_000],
    ["10.0.0.0/8", 24, 10_000, 3_000],
    ["0.0.0.0/0", 30, 2_000, 500], // the sparse map
  ];
  for (const [net, subnetLen, peers, addresses] of shapes) {
    it(`random add/remove/change batches at ${peers} peers: ${net} /${subnetLen}, ${addresses} PublicIPs`, () => {
      const rand = seededRandom(peers + subnetLen + addresses);
      const network = parsePrefix(net) as Ipv4Prefix;
      const slotCount = 2 ** (subnetLen - network.len);
      const subnetOf = (slot: number): Ipv4Prefix => ({
        base: (network.base + slot * 2 ** (32 - subnetLen)) >>> 0,
        len: subnetLen,
      });
      const pool = Array.from({ length: addresses }, (_, i) => (0xc6120000 + i + 1) >>> 0);
      const reference = new Map<number, number>(); // slot -> PublicIP
      // Slots the sequence uses: a fixed universe, so removes and re-adds hit the same subnets.
      const universe = [...new Set(Array.from({ length: peers * 2 }, () => randomInt(rand, slotCount)))];
      const probe = slotCount <= 1 << 16 ? Array.from({ length: slotCount }, (_, i) => i) : universe;
      const senders = [...pool, 0x7f000001];
      let table = LeaseTable.build(network, subnetLen, [], 8285);
      for (let round = 0; round < 40; round++) {
        // The first rounds fill up; later ones churn around `peers`.
        const batch = round < 4 ? Math.ceil(peers / 4) : 1 + randomInt(rand, round % 3 === 0 ? 500 : 20);
        const edits: PeerEdit[] = [];
        for (let k = 0; k < batch; k++) {
          const slot = universe[randomInt(rand, universe.length)] as number;
          const roll = rand();
          const remove = round >= 4 && (roll < 0.4 || reference.size > peers);
          const publicIp = remove ? null : (pool[randomInt(rand, pool.length)] as number);
          edits.push({ subnet: subnetOf(slot), publicIp });
          if (publicIp === null) reference.delete(slot);
          else reference.set(slot, publicIp);
        }
        const before = table;
        const beforeRoutes = round % 10 === 9 ? routes(before, network, subnetLen, probe, senders) : null;
        table = table.with(edits);
        const rebuilt = LeaseTable.build(
          network,
          subnetLen,
          [...reference].map(([slot, publicIp]) => ({ subnet: subnetOf(slot), publicIp })),
          8285,
        );
        assert.equal(table.size, rebuilt.size, `round ${round}`);
        assert.deepEqual(
          routes(table, network, subnetLen, probe, senders),
          routes(rebuilt, network, subnetLen, probe, senders),
          `round ${round}`,
        );
        const listed = (t: LeaseTable) => t.leases.map((l) => `${l.subnet.base}/${l.subnet.len} ${l.publicIp}`).sort();
        assert.deepEqual(listed(table), listed(rebuilt), `round ${round}`);
        if (beforeRoutes !== null) {
          assert.deepEqual(
            routes(before, network, subnetLen, probe, senders),
            beforeRoutes,
            "the old table is untouched",
          );
        }
      }
    });
  }

  it("leaves every earlier table as it was while later ones edit the same pages of index and senders", () => {
    // Slots 0..3 and 1020..1027 straddle the first page boundary of the
    // index; PublicIPs from a small pool keep hitting the same sender pages.
    const network = parsePrefix("10.0.0.0/8") as Ipv4Prefix;
    const slots = [0, 1, 2, 3, 1020, 1021, 1022, 1023, 1024, 1025, 1026, 1027, 65535];
    const subnetOf = (slot: number): Ipv4Prefix => ({ base: (network.base + slot * 256) >>> 0, len: 24 });
    const pool = Array.from({ length: 6 }, (_, i) => (0xc6120000 + i + 1) >>> 0);
    const senders = [...pool, 0x7f000001];
    const rand = seededRandom(99);
    const history: { table: LeaseTable; routes: string[] }[] = [];
    let table = LeaseTable.build(network, 24, [], 8285);
    for (let round = 0; round < 60; round++) {
      const edits: PeerEdit[] = Array.from({ length: 1 + randomInt(rand, 4) }, () => ({
        subnet: subnetOf(slots[randomInt(rand, slots.length)] as number),
        publicIp: rand() < 0.3 ? null : (pool[randomInt(rand, pool.length)] as number),
      }));
      history.push({ table, routes: routes(table, network, 24, slots, senders) });
      table = table.with(edits);
      for (const [i, h] of history.entries()) {
        assert.deepEqual(routes(h.table, network, 24, slots, senders), h.routes, `round ${round}, table ${i}`);
      }
    }
  });

  it("refuses an edit outside the network and leaves the table as it was", () => {
    const network = parsePrefix("10.244.0.0/16") as Ipv4Prefix;
    const table = LeaseTable.build(
      network,
      24,
      [{ subnet: parsePrefix("10.244.1.0/24") as Ipv4Prefix, publicIp: 7 }],
      8285,
    );
    assert.throws(
      () =>
        table.with([
          { subnet: parsePrefix("10.244.2.0/24") as Ipv4Prefix, publicIp: 8 },
          { subnet: parsePrefix("10.245.1.0/24") as Ipv4Prefix, publicIp: 9 },
        ]),
      /lease 10\.245\.1\.0\/24 is not a \/24 inside 10\.244\.0\.0\/16/,
    );
    assert.equal(table.size, 1);
    assert.equal(table.lookup(0x0af40201), -1);
  });
});

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { type Ipv4Prefix, parsePrefix, prefixContains } from "../dataplane/addr.js";
import { LeaseTable, type PeerLease } from "../dataplane/leases.js";
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

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { readCapture } from "../fixtures/pcap.js";
import { COMMITTED_TRACES, generateTrace, MAX_LEASES, Prng, type TraceOptions } from "../fixtures/tracegen.js";

// Checksums recomputed the long way, independent of dataplane/wire/checksum.ts:
// 32-bit accumulate of big-endian words, fold at the end, complement.
function sum16(words: number[]): number {
  let s = 0;
  for (const w of words) s += w;
  while (s > 0xffff) s = (s & 0xffff) + Math.floor(s / 0x10000);
  return s;
}

function wordsOf(b: Uint8Array, from: number, to: number): number[] {
  const out: number[] = [];
  for (let i = from; i < to; i += 2) out.push((b[i] << 8) | (i + 1 < to ? b[i + 1] : 0));
  return out;
}

/** A block with its checksum field in place sums to 0xffff. */
function verifiesTo(words: number[]): boolean {
  return sum16(words) === 0xffff;
}

const u16 = (b: Uint8Array, o: number) => (b[o] << 8) | b[o + 1];
const addr = (b: Uint8Array, o: number) => `${b[o]}.${b[o + 1]}.${b[o + 2]}.${b[o + 3]}`;

function ipToNumber(text: string): number {
  return text.split(".").reduce((n, o) => n * 256 + Number(o), 0);
}

function inSubnet(ip: string, subnet: string): boolean {
  const [base, len] = subnet.split("/");
  const size = 2 ** (32 - Number(len));
  const n = ipToNumber(ip);
  const b = ipToNumber(base);
  return n >= b && n < b + size;
}

function checkPacket(p: Uint8Array, index: number): void {
  const where = `packet ${index}`;
  assert.equal(p[0], 0x45, `${where}: version 4, IHL 5`);
  assert.equal(u16(p, 2), p.length, `${where}: total length`);
  assert.equal(u16(p, 6), 0x4000, `${where}: DF, offset 0`);
  assert.equal(p[8], 64, `${where}: TTL`);
  assert.ok(verifiesTo(wordsOf(p, 0, 20)), `${where}: IPv4 header checksum`);
  assert.ok(inSubnet(addr(p, 12), "10.244.1.0/24"), `${where}: source ${addr(p, 12)}`);
  const proto = p[9];
  const l4len = p.length - 20;
  if (proto === 1) {
    assert.equal(p[20], 8, `${where}: ICMP echo request`);
    assert.equal(p[21], 0);
    assert.ok(verifiesTo(wordsOf(p, 20, p.length)), `${where}: ICMP checksum`);
    return;
  }
  assert.ok(proto === 6 || proto === 17, `${where}: protocol ${proto}`);
  const pseudo = [...wordsOf(p, 12, 20), proto, l4len];
  assert.ok(verifiesTo([...pseudo, ...wordsOf(p, 20, p.length)]), `${where}: ${proto === 6 ? "TCP" : "UDP"} checksum`);
  if (proto === 6) {
    assert.equal(p[32] >> 4, 5, `${where}: TCP data offset`);
  } else {
    assert.equal(u16(p, 24), l4len, `${where}: UDP length`);
    assert.notEqual(u16(p, 26), 0, `${where}: UDP checksum present`);
  }
}

describe("generateTrace", () => {
  const base: TraceOptions = { size: "imix", packets: 600, leases: 37, seed: 42 };

  it("gives identical bytes for the same options", () => {
    const a = generateTrace(base);
    const b = generateTrace(base);
    assert.deepEqual(a.packets, b.packets);
    assert.deepEqual(a.leases, b.leases);
    assert.deepEqual(a.destinations, b.destinations);
  });

  it("gives different bytes for a different seed", () => {
    const a = generateTrace(base);
    const b = generateTrace({ ...base, seed: 43 });
    assert.equal(a.packets.length, b.packets.length);
    const differing = a.packets.filter((p, i) => Buffer.compare(p, b.packets[i]) !== 0).length;
    assert.ok(differing > 590, `${differing} of 600 packets differ`);
  });

  it("seeds PRNG streams that do not start alike for nearby seeds", () => {
    const firsts = new Set([0, 1, 2, 3].map((s) => new Prng(s).next()));
    assert.equal(firsts.size, 4);
  });

  for (const size of [64, 1400, "imix"] as const) {
    it(`size ${size}: every packet is valid IPv4 with correct IP and L4 checksums`, () => {
      const t = generateTrace({ size, packets: 1200, leases: 256, seed: 7 });
      assert.equal(t.packets.length, 1200);
      t.packets.forEach(checkPacket);
      const protos = new Set(t.packets.map((p) => p[9]));
      assert.deepEqual(
        [...protos].sort((x, y) => x - y),
        [1, 6, 17],
        "TCP, UDP and ICMP all present",
      );
    });
  }

  it("makes 64-byte and 1400-byte traces of exactly that size", () => {
    for (const size of [64, 1400] as const) {
      const t = generateTrace({ size, packets: 100, leases: 3, seed: 1 });
      assert.ok(t.packets.every((p) => p.length === size));
    }
  });

  it("mixes IMIX 7×40 : 4×576 : 1×1500 in every run of 12 packets", () => {
    const t = generateTrace({ size: "imix", packets: 1200, leases: 5, seed: 1 });
    for (let i = 0; i < 1200; i += 12) {
      const counts = new Map<number, number>();
      for (const p of t.packets.slice(i, i + 12)) counts.set(p.length, (counts.get(p.length) ?? 0) + 1);
      assert.deepEqual(
        [...counts].sort((a, b) => a[0] - b[0]),
        [
          [40, 7],
          [576, 4],
          [1500, 1],
        ],
      );
    }
    // Interleaved: no run of more than two large-or-medium packets in a row.
    const pattern = t.packets.slice(0, 12).map((p) => (p.length === 40 ? "s" : "L"));
    assert.ok(!pattern.join("").includes("LLL"), pattern.join(""));
  });

  it("increments the IP id from packet to packet", () => {
    const t = generateTrace({ size: 64, packets: 70000, leases: 1, seed: 9 });
    for (let i = 1; i < t.packets.length; i++) {
      assert.equal(u16(t.packets[i], 4), (u16(t.packets[i - 1], 4) + 1) & 0xffff);
    }
  });

  it("spreads destinations over exactly N leases, each once per round of N packets", () => {
    const t = generateTrace({ size: 64, packets: 256 * 4, leases: 256, seed: 5 });
    assert.equal(t.leases.length, 256);
    for (let round = 0; round < 4; round++) {
      const hit = new Set(t.destinations.subarray(round * 256, (round + 1) * 256));
      assert.equal(hit.size, 256, `round ${round}`);
    }
    for (const [i, p] of t.packets.entries()) {
      const lease = t.leases[t.destinations[i]];
      const dst = addr(p, 16);
      assert.ok(inSubnet(dst, lease.subnet), `packet ${i}: ${dst} not in ${lease.subnet}`);
      const host = ipToNumber(dst) - ipToNumber(lease.subnet.split("/")[0]);
      assert.ok(host >= 1 && host <= 254, `packet ${i}: host part ${host}`);
    }
    // Not the same order every round.
    assert.notDeepEqual(t.destinations.subarray(0, 256), t.destinations.subarray(256, 512));
  });

  it("lays leases out flannel-style: the first subnets after the zeroth, never the sender's", () => {
    const small = generateTrace({ size: 64, packets: 1, leases: 3, seed: 1 });
    assert.deepEqual(small.leases, [
      { subnet: "10.244.2.0/24", publicIp: "198.18.0.2" },
      { subnet: "10.244.3.0/24", publicIp: "198.18.0.3" },
      { subnet: "10.244.4.0/24", publicIp: "198.18.0.4" },
    ]);
    const big = generateTrace({ size: 64, packets: 1, leases: 300, seed: 1 });
    assert.equal(big.leases[0].subnet, "10.0.1.0/24");
    assert.equal(big.leases[299].subnet, "10.1.44.0/24");
    const custom = generateTrace({ size: 64, packets: 1, leases: 2, seed: 1, network: "172.16.0.0/12", subnetLen: 20 });
    assert.deepEqual(
      custom.leases.map((l) => l.subnet),
      ["172.16.16.0/20", "172.16.32.0/20"],
    );
  });

  it("handles 65,536 leases: distinct subnets and public IPs inside 198.18.0.0/15", () => {
    const t = generateTrace({ size: 64, packets: 65536, leases: 65536, seed: 11 });
    assert.equal(t.leases.length, 65536);
    assert.equal(new Set(t.leases.map((l) => l.subnet)).size, 65536);
    assert.equal(new Set(t.leases.map((l) => l.publicIp)).size, 65536);
    assert.ok(t.leases.every((l) => inSubnet(l.publicIp, "198.18.0.0/15") && l.publicIp !== "198.18.0.1"));
    assert.ok(t.leases.every((l) => inSubnet(l.subnet.split("/")[0], "10.0.0.0/8")));
    assert.ok(t.leases.every((l) => !inSubnet("10.244.1.1", l.subnet)));
    assert.equal(new Set(t.destinations).size, 65536);
    for (let i = 0; i < t.packets.length; i += 997) checkPacket(t.packets[i], i);
  });

  it("rejects bad options with one sentence naming the field and value", () => {
    const bad: [Partial<TraceOptions>, RegExp][] = [
      [{ size: 65 as never }, /size 65/],
      [{ packets: -1 }, /packets -1/],
      [{ packets: 1.5 }, /packets 1.5/],
      [{ leases: 0 }, /leases 0/],
      [{ leases: MAX_LEASES + 1 }, /leases 131071/],
      [{ seed: 2 ** 32 }, /seed 4294967296/],
      [{ network: "10.244.0.1/16" }, /network "10.244.0.1\/16"/],
      [{ network: "10.244.0.0/16", subnetLen: 16 }, /subnetLen 16/],
      [{ network: "10.244.0.0/16", leases: 255 }, /255 leases of \/24 do not fit/],
    ];
    for (const [opts, pattern] of bad) {
      assert.throws(() => generateTrace({ ...base, ...opts }), pattern);
    }
  });
});

describe("tracegen-cli and the committed traces", () => {
  it("writes a RAW pcap whose packets are the generator's", () => {
    const dir = mkdtempSync(join(tmpdir(), "weft-tracegen-"));
    try {
      const out = join(dir, "t.pcap");
      const leasesOut = join(dir, "leases.json");
      const cli = new URL("../fixtures/tracegen-cli.js", import.meta.url).pathname;
      const args = ["--size", "1400", "--packets", "50", "--leases", "4", "--seed", "3", "--out", out];
      const r = spawnSync(process.execPath, [cli, ...args, "--leases-out", leasesOut], { encoding: "utf8" });
      assert.equal(r.status, 0, r.stderr);
      const cap = readCapture(new Uint8Array(readFileSync(out)));
      assert.equal(cap.sections[0].interfaces[0].linkType, 101);
      const t = generateTrace({ size: 1400, packets: 50, leases: 4, seed: 3 });
      assert.deepEqual(
        cap.records.map((rec) => rec.ipv4),
        t.packets,
      );
      assert.deepEqual(JSON.parse(readFileSync(leasesOut, "utf8")), t.leases);

      const bad = spawnSync(process.execPath, [cli, ...args.slice(0, -2), "--size", "65"], { encoding: "utf8" });
      assert.equal(bad.status, 2);
      assert.match(bad.stderr, /--size "65" is not one of 64, 1400, imix/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  for (const t of COMMITTED_TRACES) {
    it(`fixtures/traces/${t.file} is what the generator makes for its recorded options`, () => {
      const path = new URL(`../../fixtures/traces/${t.file}`, import.meta.url).pathname;
      const cap = readCapture(new Uint8Array(readFileSync(path)));
      const fresh = generateTrace(t);
      assert.equal(cap.records.length, t.packets);
      assert.deepEqual(
        cap.records.map((r) => r.ipv4),
        fresh.packets,
      );
      assert.equal(new Set(fresh.destinations).size, t.leases);
    });
  }
});

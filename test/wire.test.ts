import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { internetChecksum, onesSum, updateChecksum16 } from "../dataplane/wire/checksum.js";
import { buildIcmpError, ICMP_ERROR_MAX, mayAnswerWithError } from "../dataplane/wire/icmp.js";
import { Ipv4Check, Ipv4View } from "../dataplane/wire/ipv4.js";
import { parseIpv4 } from "../net/addr.js";
import { headerChecksumOk, icmpMessage, ipv4Packet } from "./helpers/packets.js";
import { randomBytes, randomInt, seededRandom } from "./helpers/random.js";

describe("Ipv4View.check", () => {
  const view = new Ipv4View();
  const good = ipv4Packet({ src: "10.244.1.2", dst: "10.244.2.2" });

  it("accepts a well-formed packet and reads its fields", () => {
    assert.equal(view.check(good, 0, good.length), Ipv4Check.Ok);
    assert.equal(view.src, parseIpv4("10.244.1.2"));
    assert.equal(view.dst, parseIpv4("10.244.2.2"));
    assert.equal(view.ttl, 64);
    assert.equal(view.totalLength, good.length);
    assert.equal(view.headerLength, 20);
  });

  it("validates at an offset inside a larger arena", () => {
    const arena = new Uint8Array(100);
    arena.set(good, 40);
    assert.equal(view.check(arena, 40, good.length), Ipv4Check.Ok);
    assert.equal(view.dst, parseIpv4("10.244.2.2"));
  });

  it("accepts trailing bytes beyond total length (link padding)", () => {
    const padded = new Uint8Array(good.length + 6);
    padded.set(good);
    assert.equal(view.check(padded, 0, padded.length), Ipv4Check.Ok);
    assert.equal(view.totalLength, good.length);
  });

  const bad: [string, Uint8Array, number, Ipv4Check][] = [
    ["empty", new Uint8Array(0), 0, Ipv4Check.Malformed],
    ["shorter than 20 bytes", good.slice(0, 19), 19, Ipv4Check.Malformed],
    ["version 6", Uint8Array.of(0x60, ...new Uint8Array(39)), 40, Ipv4Check.NotIpv4],
    ["version 0 garbage", new Uint8Array(40), 40, Ipv4Check.NotIpv4],
  ];
  for (const [name, bytes, len, expected] of bad) {
    it(`rejects ${name}`, () => assert.equal(view.check(bytes, 0, len), expected));
  }

  it("rejects IHL < 5", () => {
    const p = good.slice();
    p[0] = 0x44;
    assert.equal(view.check(p, 0, p.length), Ipv4Check.Malformed);
  });

  it("rejects an IHL that reaches past what was read", () => {
    const p = good.slice();
    p[0] = 0x4f; // 60-byte header in a 28-byte packet
    assert.equal(view.check(p, 0, p.length), Ipv4Check.Malformed);
  });

  it("rejects a total length beyond what was read, or below the header", () => {
    const p = good.slice();
    p[3] = p.length + 1;
    assert.equal(view.check(p, 0, p.length), Ipv4Check.Malformed);
    p[2] = 0;
    p[3] = 19;
    assert.equal(view.check(p, 0, p.length), Ipv4Check.Malformed);
  });

  it("never throws on random bytes", () => {
    const rand = seededRandom(7);
    for (let i = 0; i < 20000; i++) {
      const b = randomBytes(rand, randomInt(rand, 80));
      if (rand() < 0.5 && b.length > 0) b[0] = 0x40 | (b[0] & 15);
      const v = view.check(b, 0, b.length);
      if (v === Ipv4Check.Ok) {
        assert.ok(view.headerLength >= 20 && view.totalLength <= b.length && view.totalLength >= view.headerLength);
      }
    }
  });
});

describe("TTL decrement (RFC 1624)", () => {
  it("equals a full checksum recomputation for random headers", () => {
    const rand = seededRandom(1624);
    const view = new Ipv4View();
    for (let i = 0; i < 50000; i++) {
      const optionWords = randomInt(rand, 3);
      const p = ipv4Packet({
        src: randomInt(rand, 2 ** 32),
        dst: randomInt(rand, 2 ** 32),
        ttl: 1 + randomInt(rand, 255),
        protocol: randomInt(rand, 256),
        id: randomInt(rand, 65536),
        options: randomBytes(rand, optionWords * 4),
        payload: randomBytes(rand, randomInt(rand, 16)),
      });
      assert.equal(view.check(p, 0, p.length), Ipv4Check.Ok);
      const ttl = p[8];
      assert.equal(view.decrementTtl(), ttl - 1);
      const incremental = view.checksum;
      p[10] = 0;
      p[11] = 0;
      const full = internetChecksum(p, 0, view.headerLength);
      // Both 0x0000 and 0xffff verify in ones' complement; RFC 1624 eqn. 3 never
      // produces 0x0000 where the full computation gives 0xffff, and vice versa.
      assert.equal(incremental, full, `seed 1624 iteration ${i}`);
    }
  });

  it("handles the 0xffff/0x0000 corner: a header whose checksum field is 0x0000", () => {
    // Search for a header whose correct checksum is 0x0000 before and 0xffff cannot occur.
    const view = new Ipv4View();
    let found = 0;
    for (let id = 0; id < 65536 && found < 5; id++) {
      const p = ipv4Packet({ src: "10.244.1.2", dst: "10.244.2.2", ttl: 2, id });
      if ((p[10] << 8) + p[11] !== 0x0000 && (p[10] << 8) + p[11] !== 0xffff) continue;
      found++;
      view.check(p, 0, p.length);
      view.decrementTtl();
      assert.ok(headerChecksumOk(p), `id ${id}`);
    }
    assert.ok(found > 0, "a corner-case header exists among 65536 ids");
  });

  it("updateChecksum16 matches recomputation for arbitrary words", () => {
    const rand = seededRandom(3);
    for (let i = 0; i < 20000; i++) {
      const data = randomBytes(rand, 20);
      const before = internetChecksum(data, 0, 20);
      const w = randomInt(rand, 10) * 2;
      const oldWord = (data[w] << 8) | data[w + 1];
      const newWord = randomInt(rand, 65536);
      data[w] = newWord >> 8;
      data[w + 1] = newWord & 0xff;
      const after = updateChecksum16(before, oldWord, newWord);
      // Verification, not equality: ones' complement has two zeros.
      const verify = onesSum(data, 0, 20, after);
      assert.equal(verify, 0xffff);
    }
  });

  it("leaves a TTL of 0 alone", () => {
    const p = ipv4Packet({ src: "10.244.1.2", dst: "10.244.2.2", ttl: 0 });
    const view = new Ipv4View();
    view.check(p, 0, p.length);
    assert.equal(view.decrementTtl(), 0);
    assert.equal(p[8], 0);
    assert.ok(headerChecksumOk(p));
  });
});

describe("ICMP errors", () => {
  const view = new Ipv4View();
  const local = parseIpv4("10.244.1.0");

  it("builds Net Unreachable byte for byte: TTL 8, source flannel0, offender header + 8 bytes", () => {
    const payload = Uint8Array.from({ length: 32 }, (_, i) => i);
    const p = ipv4Packet({ src: "10.244.1.2", dst: "10.244.77.5", protocol: 17, payload, id: 0x4242 });
    view.check(p, 0, p.length);
    const out = new Uint8Array(ICMP_ERROR_MAX + 10);
    const n = buildIcmpError(out, 10, 3, 0, 0, view, local);
    assert.equal(n, 20 + 8 + 28);
    const m = out.subarray(10, 10 + n);
    assert.equal(m[0], 0x45);
    assert.equal((m[2] << 8) | m[3], n);
    assert.equal(m[8], 8, "TTL 8");
    assert.equal(m[9], 1, "protocol ICMP");
    assert.deepEqual([...m.subarray(12, 16)], [10, 244, 1, 0]);
    assert.deepEqual([...m.subarray(16, 20)], [10, 244, 1, 2]);
    assert.ok(headerChecksumOk(m));
    assert.equal(m[20], 3);
    assert.equal(m[21], 0);
    assert.deepEqual([...m.subarray(24, 28)], [0, 0, 0, 0]);
    assert.deepEqual([...m.subarray(28)], [...p.subarray(0, 28)]);
    assert.equal(onesSum(m, 20, n - 20), 0xffff, "ICMP checksum verifies");
  });

  it("quotes IP options and carries the next-hop MTU for Fragmentation Needed", () => {
    const p = ipv4Packet({
      src: "10.244.1.2",
      dst: "10.244.2.2",
      options: new Uint8Array(8).fill(1),
      payload: new Uint8Array(100),
    });
    view.check(p, 0, p.length);
    const out = new Uint8Array(ICMP_ERROR_MAX);
    const n = buildIcmpError(out, 0, 3, 4, 1372, view, local);
    assert.equal(n, 20 + 8 + 28 + 8);
    assert.equal((out[26] << 8) | out[27], 1372);
    assert.deepEqual([...out.subarray(28, n)], [...p.subarray(0, 36)]);
    assert.equal(onesSum(out, 20, n - 20), 0xffff);
  });

  it("quotes a short packet whole", () => {
    const p = ipv4Packet({ src: "10.244.1.2", dst: "10.244.2.2", payload: new Uint8Array(3) });
    view.check(p, 0, p.length);
    const out = new Uint8Array(ICMP_ERROR_MAX);
    assert.equal(buildIcmpError(out, 0, 11, 0, 0, view, local), 28 + 23);
  });

  const cases: [string, Uint8Array, boolean][] = [
    ["a UDP packet", ipv4Packet({ src: "10.244.1.2", dst: "10.244.9.9" }), true],
    [
      "an ICMP echo request",
      ipv4Packet({ src: "10.244.1.2", dst: "10.244.9.9", protocol: 1, payload: icmpMessage(8, 0) }),
      true,
    ],
    [
      "an ICMP error",
      ipv4Packet({ src: "10.244.1.2", dst: "10.244.9.9", protocol: 1, payload: icmpMessage(3, 1) }),
      false,
    ],
    [
      "an ICMP time exceeded",
      ipv4Packet({ src: "10.244.1.2", dst: "10.244.9.9", protocol: 1, payload: icmpMessage(11, 0) }),
      false,
    ],
    ["a non-first fragment", ipv4Packet({ src: "10.244.1.2", dst: "10.244.9.9", fragmentOffset: 10 }), false],
    ["a first fragment", ipv4Packet({ src: "10.244.1.2", dst: "10.244.9.9", moreFragments: true }), true],
    ["a multicast destination", ipv4Packet({ src: "10.244.1.2", dst: "224.0.0.5" }), false],
    ["a broadcast destination", ipv4Packet({ src: "10.244.1.2", dst: "255.255.255.255" }), false],
    ["source 0.0.0.0", ipv4Packet({ src: "0.0.0.0", dst: "10.244.9.9" }), false],
  ];
  for (const [name, p, expected] of cases) {
    it(`${expected ? "answers" : "never answers"} ${name}`, () => {
      assert.equal(view.check(p, 0, p.length), Ipv4Check.Ok);
      assert.equal(mayAnswerWithError(view), expected);
    });
  }
});

// The UDP view and the IPv4 view's setters against the slow packet builders
// in helpers/packets.ts: fields read as built, a rewrite leaves checksums that
// verify, and bad lengths are reported, not thrown.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { onesSum } from "../dataplane/wire/checksum.js";
import { IPV4_DST, IPV4_SRC, IPV4_TTL, Ipv4Check, Ipv4View, readAddr } from "../dataplane/wire/ipv4.js";
import { UDP_CHECKSUM, UDP_HEADER, UdpCheck, UdpView } from "../dataplane/wire/udp.js";
import { parseIpv4 } from "../net/addr.js";
import { headerChecksumOk, ipv4Packet, udpPacket } from "./helpers/packets.js";
import { randomBytes, seededRandom } from "./helpers/random.js";

/** True when the UDP checksum of the datagram in p verifies over its pseudo-header. */
function udpChecksumOk(p: Uint8Array, ip: Ipv4View): boolean {
  const l4 = ip.totalLength - ip.headerLength;
  return onesSum(p, ip.headerLength, l4, ip.pseudoHeaderSum(l4)) === 0xffff;
}

describe("UdpView", () => {
  const ip = new Ipv4View();
  const udp = new UdpView();

  it("reads the ports, length and checksum the builder wrote", () => {
    const p = udpPacket("10.244.1.2", "10.244.2.2", 40000, 53, Uint8Array.of(1, 2, 3));
    assert.equal(ip.check(p, 0, p.length), Ipv4Check.Ok);
    assert.equal(udp.check(p, ip.headerLength, ip.totalLength - ip.headerLength), UdpCheck.Ok);
    assert.equal(udp.srcPort, 40000);
    assert.equal(udp.dstPort, 53);
    assert.equal(udp.length, UDP_HEADER + 3);
    assert.equal(udp.checksum, (p[20 + UDP_CHECKSUM] << 8) | p[20 + UDP_CHECKSUM + 1]);
    assert.notEqual(udp.checksum, 0);
    assert.ok(udpChecksumOk(p, ip));
  });

  it("reports a header shorter than 8 bytes or a length field out of range", () => {
    const p = udpPacket("10.0.0.1", "10.0.0.2", 1, 2, new Uint8Array(10));
    assert.equal(udp.check(p, 20, 7), UdpCheck.Malformed, "7 bytes");
    assert.equal(udp.check(p, 20, 17), UdpCheck.Malformed, "length 18 beyond 17 bytes");
    p[24] = 0;
    p[25] = 7;
    assert.equal(udp.check(p, 20, 18), UdpCheck.Malformed, "length 7 below the header");
  });

  it("setters write the fields; updateChecksum makes the datagram verify again", () => {
    const rand = seededRandom(14);
    for (let i = 0; i < 200; i++) {
      const data = randomBytes(rand, i % 40);
      const p = udpPacket("192.0.2.1", "198.51.100.7", 1000 + i, 2000 + i, data);
      ip.check(p, 0, p.length);
      udp.at(p, ip.headerLength);
      udp.srcPort = 5353;
      udp.dstPort = 65535 - i;
      assert.equal(udp.srcPort, 5353);
      assert.equal(udp.dstPort, 65535 - i);
      ip.src = parseIpv4("10.244.1.2");
      ip.dst = parseIpv4("10.244.2.2");
      const l4 = ip.totalLength - ip.headerLength;
      udp.updateChecksum(ip.pseudoHeaderSum(l4), l4);
      assert.ok(udpChecksumOk(p, ip), `datagram ${i}`);
      assert.notEqual(udp.checksum, 0, "a computed 0 is sent as 0xffff");
    }
  });
});

describe("Ipv4View setters", () => {
  it("write TTL and addresses at their named offsets; updateHeaderChecksum makes the header verify", () => {
    const ip = new Ipv4View();
    const p = ipv4Packet({ src: "192.0.2.1", dst: "192.0.2.2", ttl: 3, options: new Uint8Array(8) });
    ip.check(p, 0, p.length);
    ip.ttl = 64;
    ip.src = parseIpv4("10.244.1.2");
    ip.dst = parseIpv4("10.244.2.2");
    assert.equal(p[IPV4_TTL], 64);
    assert.equal(readAddr(p, IPV4_SRC), parseIpv4("10.244.1.2"));
    assert.equal(readAddr(p, IPV4_DST), parseIpv4("10.244.2.2"));
    assert.equal(headerChecksumOk(p), false, "setters leave the checksum to the caller");
    ip.updateHeaderChecksum();
    assert.ok(headerChecksumOk(p), "checksum over the 28-byte header with options");
  });

  it("moreFragments reads the MF flag", () => {
    const ip = new Ipv4View();
    const first = ipv4Packet({ src: "10.0.0.1", dst: "10.0.0.2", moreFragments: true });
    const last = ipv4Packet({ src: "10.0.0.1", dst: "10.0.0.2", fragmentOffset: 3 });
    ip.check(first, 0, first.length);
    assert.equal(ip.moreFragments, true);
    ip.check(last, 0, last.length);
    assert.equal(ip.moreFragments, false);
    assert.equal(ip.fragmentOffset, 3);
  });
});

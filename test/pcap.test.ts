import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  type Capture,
  CaptureFormatError,
  extractIpv4,
  LinkType,
  openCapture,
  readCapture,
  writePcap,
  writePcapng,
} from "../fixtures/pcap.js";

// ---------------------------------------------------------------------------
// Builders: IPv4 packets, link-layer frames and pcapng blocks made by hand, so
// the reader is checked against the specifications rather than its own writer.

function ipv4(len: number, id: number): Uint8Array {
  const p = new Uint8Array(len);
  p[0] = 0x45;
  p[2] = len >> 8;
  p[3] = len & 0xff;
  p[4] = id >> 8;
  p[5] = id & 0xff;
  p[8] = 64;
  p[9] = 17;
  p.set([10, 244, 1, 2, 10, 244, 2, 2], 12);
  for (let i = 20; i < len; i++) p[i] = i & 0xff;
  return p;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

const u16be = (v: number) => new Uint8Array([v >> 8, v & 0xff]);
const MACS = new Uint8Array([2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2]);
const ether = (...rest: Uint8Array[]) => concat(MACS, ...rest);
const vlanTag = (tpid: number, vid: number) => concat(u16be(tpid), u16be(vid));

/** Little or big endian writer for pcapng blocks. */
class Ng {
  constructor(readonly be: boolean) {}
  u16(v: number): Uint8Array {
    const b = new Uint8Array(2);
    new DataView(b.buffer).setUint16(0, v, !this.be);
    return b;
  }
  u32(v: number): Uint8Array {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, v, !this.be);
    return b;
  }
  pad(b: Uint8Array): Uint8Array {
    return concat(b, new Uint8Array((4 - (b.length % 4)) % 4));
  }
  option(code: number, value: Uint8Array): Uint8Array {
    return concat(this.u16(code), this.u16(value.length), this.pad(value));
  }
  options(...opts: Uint8Array[]): Uint8Array {
    return opts.length === 0 ? new Uint8Array(0) : concat(...opts, this.u32(0));
  }
  block(type: number, body: Uint8Array): Uint8Array {
    const len = 12 + body.length;
    return concat(this.u32(type), this.u32(len), body, this.u32(len));
  }
  shb(major = 1, ...opts: Uint8Array[]): Uint8Array {
    const sectionLength = new Uint8Array(8).fill(0xff);
    return this.block(
      0x0a0d0d0a,
      concat(this.u32(0x1a2b3c4d), this.u16(major), this.u16(0), sectionLength, this.options(...opts)),
    );
  }
  idb(linkType: number, snapLen: number, ...opts: Uint8Array[]): Uint8Array {
    return this.block(1, concat(this.u16(linkType), this.u16(0), this.u32(snapLen), this.options(...opts)));
  }
  tsresol(v: number): Uint8Array {
    return this.option(9, new Uint8Array([v]));
  }
  epb(iface: number, ticks: bigint, data: Uint8Array, origLen = data.length): Uint8Array {
    return this.block(
      6,
      concat(
        this.u32(iface),
        this.u32(Number(ticks >> 32n)),
        this.u32(Number(ticks & 0xffffffffn)),
        this.u32(data.length),
        this.u32(origLen),
        this.pad(data),
      ),
    );
  }
  pb(iface: number, ticks: bigint, data: Uint8Array): Uint8Array {
    return this.block(
      2,
      concat(
        this.u16(iface),
        this.u16(0),
        this.u32(Number(ticks >> 32n)),
        this.u32(Number(ticks & 0xffffffffn)),
        this.u32(data.length),
        this.u32(data.length),
        this.pad(data),
      ),
    );
  }
  spb(data: Uint8Array, origLen = data.length): Uint8Array {
    return this.block(3, concat(this.u32(origLen), this.pad(data)));
  }
}

const LE = new Ng(false);
const BE = new Ng(true);

function assertOffsetError(fn: () => unknown, offset: number, pattern?: RegExp): CaptureFormatError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof CaptureFormatError, `expected a CaptureFormatError, got ${String(caught)}`);
  assert.equal(caught.offset, offset, caught.message);
  assert.match(caught.message, new RegExp(`offset ${offset}\\b`));
  if (pattern) assert.match(caught.message, pattern);
  return caught;
}

/** Sub-view check: the reader hands out views into the file, not copies. */
function assertViewOf(view: Uint8Array, file: Uint8Array): void {
  assert.equal(view.buffer, file.buffer);
}

// ---------------------------------------------------------------------------

describe("classic pcap", () => {
  const packets = [
    { ts: 1_700_000_000_123_456_789n, data: ipv4(64, 1) },
    { ts: 1_700_000_001_000_000_001n, data: ipv4(1400, 2) },
    { ts: 0n, data: ipv4(40, 3) },
  ];

  for (const bigEndian of [false, true]) {
    const order = bigEndian ? "big-endian" : "little-endian";

    it(`round-trips microsecond files (${order}), flooring timestamps to the µs`, () => {
      const file = writePcap(packets, { bigEndian });
      const cap = readCapture(file);
      assert.equal(cap.format, "pcap");
      assert.equal(cap.sections.length, 1);
      assert.equal(cap.sections[0].bigEndian, bigEndian);
      assert.equal(cap.sections[0].interfaces[0].linkType, LinkType.RAW);
      assert.equal(cap.sections[0].interfaces[0].snapLen, 262144);
      assert.equal(cap.sections[0].interfaces[0].tsResolution, 6);
      assert.deepEqual(
        cap.records.map((r) => r.ts),
        [1_700_000_000_123_456_000n, 1_700_000_001_000_000_000n, 0n],
      );
      for (const [i, r] of cap.records.entries()) {
        assert.deepEqual(r.data, packets[i].data);
        assert.deepEqual(r.ipv4, packets[i].data);
        assert.equal(r.capturedLength, packets[i].data.length);
        assert.equal(r.originalLength, packets[i].data.length);
        assertViewOf(r.data, file);
      }
      assert.deepEqual(
        cap.records.map((r) => r.offset),
        [24, 24 + 16 + 64, 24 + 16 + 64 + 16 + 1400],
      );
    });

    it(`round-trips nanosecond files (${order}) exactly`, () => {
      const file = writePcap(packets, { bigEndian, nanosecond: true });
      const cap = readCapture(file);
      assert.equal(cap.sections[0].interfaces[0].tsResolution, 9);
      assert.deepEqual(
        cap.records.map((r) => r.ts),
        packets.map((p) => p.ts),
      );
    });
  }

  it("writes the magic and header fields the format defines", () => {
    const us = writePcap([], { linkType: 1, snapLen: 65535 });
    assert.deepEqual([...us.subarray(0, 4)], [0xd4, 0xc3, 0xb2, 0xa1]);
    const ns = writePcap([], { nanosecond: true, bigEndian: true });
    assert.deepEqual([...ns.subarray(0, 4)], [0xa1, 0xb2, 0x3c, 0x4d]);
    const dv = new DataView(us.buffer);
    assert.equal(dv.getUint16(4, true), 2);
    assert.equal(dv.getUint16(6, true), 4);
    assert.equal(dv.getUint32(16, true), 65535);
    assert.equal(dv.getUint32(20, true), 1);
    assert.equal(us.length, 24);
  });

  it("keeps the original length of snapped packets", () => {
    const full = ipv4(1400, 9);
    const file = writePcap([{ data: full.subarray(0, 96), originalLength: 1400 }], { snapLen: 96 });
    const r = readCapture(file).records[0];
    assert.equal(r.capturedLength, 96);
    assert.equal(r.originalLength, 1400);
    assert.equal(r.ipv4?.length, 96);
  });

  it("reads the link type from the low 16 bits, ignoring the FCS flags above", () => {
    const file = writePcap([{ data: ether(u16be(0x0800), ipv4(40, 1)) }], { linkType: 1 });
    new DataView(file.buffer).setUint32(20, (1 << 28) | (1 << 26) | 1, true);
    const cap = readCapture(file);
    assert.equal(cap.sections[0].interfaces[0].linkType, 1);
    assert.deepEqual(cap.records[0].ipv4, ipv4(40, 1));
  });

  it("refuses timestamps the format cannot hold", () => {
    assert.throws(() => writePcap([{ ts: -1n, data: ipv4(20, 0) }]), RangeError);
    assert.throws(() => writePcap([{ ts: 2n ** 32n * 1_000_000_000n, data: ipv4(20, 0) }]), RangeError);
  });

  it("iterates record by record with the cursor", () => {
    const cursor = openCapture(writePcap(packets));
    const ids = [...cursor].map((r) => (r.data[4] << 8) | r.data[5]);
    assert.deepEqual(ids, [1, 2, 3]);
    assert.equal(cursor.next(), null);
  });
});

describe("classic pcap corrupt inputs", () => {
  const good = writePcap([{ data: ipv4(64, 1) }, { data: ipv4(100, 2) }]);

  it("names offset 0 for an empty or tiny file", () => {
    assertOffsetError(() => readCapture(new Uint8Array(0)), 0, /too short/);
    assertOffsetError(() => readCapture(good.subarray(0, 3)), 0, /too short/);
  });

  it("names offset 0 for an unknown magic", () => {
    assertOffsetError(() => readCapture(new Uint8Array(24).fill(7)), 0, /unknown magic 0x07070707/);
  });

  it("names offset 0 for a truncated file header", () => {
    assertOffsetError(() => readCapture(good.subarray(0, 20)), 0, /file header .* truncated \(20 of 24 bytes\)/);
  });

  it("names the version field when the version is not 2", () => {
    const bad = good.slice();
    bad[4] = 3;
    assertOffsetError(() => readCapture(bad), 4, /version 3/);
  });

  it("names the record offset for a truncated record header", () => {
    assertOffsetError(() => readCapture(good.subarray(0, 24 + 16 + 64 + 10)), 24 + 16 + 64, /record header/);
  });

  it("names the record offset for truncated record data", () => {
    assertOffsetError(() => readCapture(good.subarray(0, good.length - 1)), 24 + 16 + 64, /claims 100 captured bytes/);
  });

  it("names the record offset when a captured length runs past the end", () => {
    const bad = good.slice();
    new DataView(bad.buffer).setUint32(24 + 8, 0xffffffff, true);
    assertOffsetError(() => readCapture(bad), 24, /claims 4294967295/);
  });
});

// ---------------------------------------------------------------------------

describe("pcapng", () => {
  const p1 = ipv4(64, 1);
  const p2 = ipv4(100, 2);
  const p3 = ipv4(41, 3); // odd length: exercises block padding
  const p4 = ipv4(1400, 4);

  // Section 0, little-endian: three interfaces with different resolutions, an
  // unknown block, a custom block and a Simple Packet Block.
  // Section 1, big-endian: interfaces start again from 0; an obsolete Packet
  // Block and if_tsoffset.
  const section0 = concat(
    LE.shb(1, LE.option(2, new TextEncoder().encode("hw")), LE.option(1, new TextEncoder().encode("first"))),
    LE.idb(LinkType.RAW, 0, LE.option(2, new TextEncoder().encode("flannel0"))),
    LE.idb(LinkType.ETHERNET, 0, LE.tsresol(9)),
    LE.block(0x0bad, new Uint8Array(12)),
    LE.idb(LinkType.LINUX_SLL2, 128, LE.tsresol(0x8a)),
    LE.epb(0, 1_700_000_000_000_001n, p1),
    LE.epb(1, 1_700_000_000_000_000_007n, ether(u16be(0x0800), p2)),
    LE.block(0x40000bad, new Uint8Array([1, 2, 3, 4])),
    LE.epb(2, 3n * 1024n + 1n, concat(u16be(0x0800), new Uint8Array(18), p3)),
  );
  // An SPB's captured length is its original length cut to the snaplen of interface 0.
  const section0b = LE.spb(p4);
  const section1 = concat(
    BE.shb(1, BE.option(1, new TextEncoder().encode("second"))),
    BE.idb(LinkType.RAW, 0, BE.tsresol(3), BE.option(14, new Uint8Array([0, 0, 0, 0, 0, 0, 0, 10]))),
    BE.epb(0, 5n, p1),
    BE.pb(0, 6n, p2),
    BE.spb(p3.subarray(0, 20), 41),
  );
  const file = concat(section0, section0b, section1);

  it("reads sections of both byte orders, each with its own interfaces", () => {
    const cap = readCapture(file);
    assert.equal(cap.format, "pcapng");
    assert.equal(cap.sections.length, 2);
    const [s0, s1] = cap.sections;
    assert.equal(s0.bigEndian, false);
    assert.equal(s1.bigEndian, true);
    assert.equal(s0.offset, 0);
    assert.equal(s1.offset, section0.length + section0b.length);
    assert.equal(s0.hardware, "hw");
    assert.equal(s0.comment, "first");
    assert.equal(s1.comment, "second");
    assert.deepEqual(
      s0.interfaces.map((i) => [i.linkType, i.snapLen, i.tsResolution, i.name]),
      [
        [101, 0, 6, "flannel0"],
        [1, 0, 9, undefined],
        [276, 128, 0x8a, undefined],
      ],
    );
    assert.deepEqual(
      s1.interfaces.map((i) => [i.linkType, i.tsResolution, i.tsOffsetSeconds]),
      [[101, 3, 10n]],
    );
  });

  it("converts timestamps by if_tsresol: 10^-6 by default, 10^-9, 2^-10, and adds if_tsoffset", () => {
    const cap = readCapture(file);
    assert.deepEqual(
      cap.records.map((r) => r.ts),
      [
        1_700_000_000_000_001_000n, // µs ticks
        1_700_000_000_000_000_007n, // ns ticks
        3_000_976_562n, // 3073 / 1024 s, floored to the ns
        null, // SPBs carry no timestamp
        10_005_000_000n, // 5 ms + 10 s offset
        10_006_000_000n,
        null,
      ],
    );
  });

  it("reads EPB, SPB and obsolete PB records with their interface and link type", () => {
    const cap = readCapture(file);
    assert.deepEqual(
      cap.records.map((r) => [r.section, r.interfaceIndex, r.linkType, r.capturedLength, r.originalLength]),
      [
        [0, 0, 101, 64, 64],
        [0, 1, 1, 114, 114],
        [0, 2, 276, 61, 61],
        [0, 0, 101, 1400, 1400],
        [1, 0, 101, 64, 64],
        [1, 0, 101, 100, 100],
        [1, 0, 101, 20, 41],
      ],
    );
    const ips = cap.records.map((r) => r.ipv4);
    assert.deepEqual(ips, [p1, p2, p3, p4, p1, p2, p3.subarray(0, 20)]);
    for (const r of cap.records) assertViewOf(r.data, file);
  });

  it("cuts an SPB to the interface snaplen", () => {
    const f = concat(LE.shb(), LE.idb(101, 96), LE.spb(p4));
    const r = readCapture(f).records[0];
    assert.equal(r.capturedLength, 96);
    assert.equal(r.originalLength, 1400);
    assert.deepEqual(r.data, p4.subarray(0, 96));
  });

  it("reads a file with sections and no packets", () => {
    const cap = readCapture(concat(LE.shb(), BE.shb(), LE.shb(), LE.idb(1, 0)));
    assert.equal(cap.sections.length, 3);
    assert.deepEqual(
      cap.sections.map((s) => s.interfaces.length),
      [0, 0, 1],
    );
    assert.equal(cap.records.length, 0);
  });

  it("rejects a section of major version 2 by offset, or skips it when asked", () => {
    const f = concat(
      LE.shb(),
      LE.idb(101, 0),
      LE.epb(0, 1n, p1),
      BE.shb(2),
      BE.idb(101, 0),
      BE.epb(0, 2n, p2),
      LE.shb(),
      LE.idb(101, 0),
      LE.epb(0, 3n, p3),
    );
    const badAt = LE.shb().length + LE.idb(101, 0).length + LE.epb(0, 1n, p1).length;
    assertOffsetError(() => readCapture(f), badAt, /version 2\.0/);
    const cap = readCapture(f, { skipUnknownVersions: true });
    assert.deepEqual(
      cap.records.map((r) => [r.section, r.ipv4]),
      [
        [0, p1],
        [1, p3],
      ],
    );
  });

  for (const [name, ng] of [
    ["little", LE],
    ["big", BE],
  ] as const) {
    it(`round-trips its own writer (${name}-endian, ns, µs and 2^-10 resolution)`, () => {
      const packets = [
        { ts: 1_700_000_000_123_456_789n, data: p1 },
        { ts: 5n, data: p3 },
      ];
      for (const [tsResolution, want] of [
        [9, [1_700_000_000_123_456_789n, 5n]],
        [6, [1_700_000_000_123_456_000n, 0n]],
        [0x8a, [1_700_000_000_123_046_875n, 0n]],
      ] as const) {
        const f = writePcapng(packets, { bigEndian: ng.be, tsResolution });
        const cap = readCapture(f);
        assert.equal(cap.sections[0].bigEndian, ng.be);
        assert.equal(cap.sections[0].interfaces[0].tsResolution, tsResolution);
        assert.deepEqual(
          cap.records.map((r) => r.ts),
          want,
        );
        assert.deepEqual(
          cap.records.map((r) => r.ipv4),
          [p1, p3],
        );
      }
    });
  }
});

describe("pcapng corrupt inputs", () => {
  const shb = LE.shb();
  const idb = LE.idb(101, 0);
  const epb = LE.epb(0, 1n, ipv4(64, 1));
  const good = concat(shb, idb, epb);
  const at = shb.length + idb.length; // offset of the EPB
  const withLength = (len: number) => {
    const f = good.slice();
    new DataView(f.buffer).setUint32(at + 4, len, true);
    return f;
  };

  it("names the block when its length is not a multiple of 4", () => {
    assertOffsetError(() => readCapture(withLength(epb.length - 1)), at, /has length \d+ \(not a multiple of 4\)/);
  });

  it("names the block when its length is below 12", () => {
    assertOffsetError(() => readCapture(withLength(8)), at, /less than the minimum 12/);
  });

  it("names the block for a zero length instead of looping on it", () => {
    assertOffsetError(() => readCapture(withLength(0)), at, /length 0/);
  });

  it("names the block when its length runs past the end of the file", () => {
    assertOffsetError(() => readCapture(withLength(epb.length + 4)), at, /only \d+ bytes remain/);
  });

  it("names the block when the trailing length differs from the leading one", () => {
    const f = good.slice();
    new DataView(f.buffer).setUint32(f.length - 4, epb.length + 4, true);
    assertOffsetError(() => readCapture(f), at, /trailing length field says/);
  });

  it("names the block for a truncated file", () => {
    assertOffsetError(() => readCapture(good.subarray(0, good.length - 4)), at, /only \d+ bytes remain/);
    assertOffsetError(() => readCapture(good.subarray(0, at + 6)), at, /truncated \(6 bytes left/);
    assertOffsetError(() => readCapture(shb.subarray(0, 20)), 0, /only 20 bytes remain/);
  });

  it("names the section header for a bad byte-order magic or a short SHB", () => {
    const f = good.slice();
    f[8] = 0;
    assertOffsetError(() => readCapture(f), 0, /byte-order magic/);
    const short = LE.block(0x0a0d0d0a, concat(LE.u32(0x1a2b3c4d), LE.u32(1)));
    assertOffsetError(() => readCapture(short), 0, /less than 28/);
  });

  it("names packet blocks too short for their fixed fields or their captured length", () => {
    const shortEpb = LE.block(6, new Uint8Array(16));
    assertOffsetError(() => readCapture(concat(shb, idb, shortEpb)), at, /enhanced packet block .*\(less than 32\)/);
    const f = good.slice();
    new DataView(f.buffer).setUint32(at + 20, 65, true);
    assertOffsetError(() => readCapture(f), at, /claims 65 captured bytes but has room for 64/);
    assertOffsetError(
      () => readCapture(concat(shb, idb, LE.block(2, new Uint8Array(8)))),
      at,
      /packet block .*\(less than 32\)/,
    );
    assertOffsetError(() => readCapture(concat(shb, idb, LE.block(3, new Uint8Array(0)))), at, /simple packet block/);
    assertOffsetError(() => readCapture(concat(shb, LE.block(1, new Uint8Array(4)))), shb.length, /interface block/);
  });

  it("names packet blocks that refer to an interface the section lacks", () => {
    assertOffsetError(
      () => readCapture(concat(shb, LE.epb(0, 1n, ipv4(20, 0)))),
      shb.length,
      /interface 0 but its section has 0/,
    );
    assertOffsetError(
      () => readCapture(concat(shb, idb, LE.epb(1, 1n, ipv4(20, 0)))),
      at,
      /interface 1 but its section has 1/,
    );
    assertOffsetError(() => readCapture(concat(shb, LE.spb(ipv4(20, 0)))), shb.length, /interface 0/);
    // A new section forgets the previous section's interfaces.
    assertOffsetError(
      () => readCapture(concat(good, shb, LE.epb(0, 1n, ipv4(20, 0)))),
      good.length + shb.length,
      /section has 0/,
    );
  });

  it("names the option whose length runs past its block", () => {
    const opt = concat(LE.u16(2), LE.u16(200), new Uint8Array(4));
    const bad = LE.idb(101, 0, opt);
    assertOffsetError(() => readCapture(concat(shb, bad)), shb.length + 16, /option 2 .* length 200/);
  });
});

describe("link types", () => {
  const ip = ipv4(60, 7);
  const v6 = new Uint8Array(48);
  v6[0] = 0x60;
  const cases: [string, number, Uint8Array, Uint8Array | null][] = [
    ["RAW (101)", 101, ip, ip],
    ["RAW (12)", 12, ip, ip],
    ["RAW (14)", 14, ip, ip],
    ["IPV4 (228)", 228, ip, ip],
    ["RAW carrying IPv6", 101, v6, null],
    ["Ethernet", 1, ether(u16be(0x0800), ip), ip],
    ["Ethernet with one 802.1Q tag", 1, ether(vlanTag(0x8100, 100), u16be(0x0800), ip), ip],
    [
      "Ethernet with stacked 802.1ad + 802.1Q tags",
      1,
      ether(vlanTag(0x88a8, 10), vlanTag(0x8100, 20), u16be(0x0800), ip),
      ip,
    ],
    [
      "Ethernet with three stacked tags (0x9100)",
      1,
      ether(vlanTag(0x9100, 1), vlanTag(0x88a8, 2), vlanTag(0x8100, 3), u16be(0x0800), ip),
      ip,
    ],
    [
      "Ethernet PPPoE session",
      1,
      ether(u16be(0x8864), new Uint8Array([0x11, 0, 0x3b, 0x1a, 0, 62]), u16be(0x0021), ip),
      ip,
    ],
    ["Ethernet carrying IPv6", 1, ether(u16be(0x86dd), v6), null],
    ["Ethernet carrying ARP", 1, ether(u16be(0x0806), new Uint8Array(28)), null],
    ["Ethernet 802.3 length field", 1, ether(u16be(60), ip), null],
    ["Ethernet cut inside its VLAN tags", 1, ether(vlanTag(0x8100, 1), new Uint8Array([0x81])), null],
    ["Ethernet shorter than its header", 1, MACS.subarray(0, 10), null],
    ["NULL, family little-endian", 0, concat(new Uint8Array([2, 0, 0, 0]), ip), ip],
    ["NULL, family big-endian", 0, concat(new Uint8Array([0, 0, 0, 2]), ip), ip],
    ["NULL carrying IPv6 (BSD AF_INET6 = 24)", 0, concat(new Uint8Array([24, 0, 0, 0]), v6), null],
    ["LOOP, network order", 108, concat(new Uint8Array([0, 0, 0, 2]), ip), ip],
    ["LOOP with a host-order family is not IPv4", 108, concat(new Uint8Array([2, 0, 0, 0]), ip), null],
    ["Linux SLL", 113, concat(new Uint8Array([0, 4, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0]), u16be(0x0800), ip), ip],
    [
      "Linux SLL with an 802.1Q tag left in",
      113,
      concat(new Uint8Array(14), vlanTag(0x8100, 5), u16be(0x0800), ip),
      ip,
    ],
    ["Linux SLL carrying IPv6", 113, concat(new Uint8Array(14), u16be(0x86dd), v6), null],
    [
      "Linux SLL2",
      276,
      concat(u16be(0x0800), new Uint8Array([0, 0, 0, 0, 0, 2, 0, 1, 4, 6, 2, 0, 0, 0, 0, 1, 0, 0]), ip),
      ip,
    ],
    ["Linux SLL2 carrying IPv6", 276, concat(u16be(0x86dd), new Uint8Array(18), v6), null],
    ["unknown link type", 147, ip, null],
  ];

  for (const [name, linkType, frame, want] of cases) {
    it(`${name}: ${want === null ? "not IPv4" : "yields the IPv4 packet"}`, () => {
      const got = extractIpv4(linkType, frame);
      assert.deepEqual(got, want);
      if (got !== null) assertViewOf(got, frame);
      // The same through a file, classic and pcapng.
      assert.deepEqual(readCapture(writePcap([{ data: frame }], { linkType })).records[0].ipv4, want);
      assert.deepEqual(readCapture(writePcapng([{ data: frame }], { linkType })).records[0].ipv4, want);
    });
  }

  it("trims Ethernet padding and FCS to the IPv4 total length", () => {
    const small = ipv4(40, 1);
    const frame = concat(ether(u16be(0x0800), small), new Uint8Array(6), new Uint8Array([0xde, 0xad, 0xbe, 0xef]));
    const got = extractIpv4(1, frame);
    assert.deepEqual(got, small);
  });

  it("keeps a snapped IPv4 packet whole when the capture is shorter than its total length", () => {
    const frame = ether(u16be(0x0800), ipv4(1400, 1)).subarray(0, 96);
    assert.equal(extractIpv4(1, frame)?.length, 82);
  });
});

describe("fuzzing", () => {
  // Deterministic so a failure reproduces; each case prints its mutation.
  let state = 0x2545f491;
  const rand = (n: number) => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return Math.floor((state / 4294967296) * n);
  };
  const packets = Array.from({ length: 12 }, (_, i) => ({ ts: BigInt(i) * 1_000_017n, data: ipv4(20 + i * 13, i) }));
  const bases: [string, Uint8Array][] = [
    ["pcap", writePcap(packets)],
    ["pcap-ns-be", writePcap(packets, { nanosecond: true, bigEndian: true, linkType: 1 })],
    ["pcapng", writePcapng(packets)],
    [
      "pcapng-multi",
      concat(
        LE.shb(1, LE.option(1, new Uint8Array([65, 66]))),
        LE.idb(1, 0, LE.tsresol(0x8a)),
        LE.epb(0, 77n, ether(vlanTag(0x8100, 3), u16be(0x0800), ipv4(60, 1))),
        LE.spb(ipv4(30, 2)),
        BE.shb(),
        BE.idb(0, 64),
        BE.block(0x0bad, new Uint8Array(8)),
        BE.pb(0, 5n, concat(new Uint8Array([0, 0, 0, 2]), ipv4(50, 3))),
      ),
    ],
  ];

  for (const [name, base] of bases) {
    it(`${name}: 3000 random truncations and corruptions end in a result or a CaptureFormatError`, () => {
      assert.ok(readCapture(base).records.length > 0);
      for (let i = 0; i < 3000; i++) {
        let f: Uint8Array;
        let what: string;
        const kind = rand(4);
        if (kind === 0) {
          const cut = rand(base.length);
          f = base.subarray(0, cut);
          what = `truncate at ${cut}`;
        } else if (kind === 1) {
          f = base.slice();
          const flips = 1 + rand(8);
          const at: number[] = [];
          for (let k = 0; k < flips; k++) {
            const bit = rand(f.length * 8);
            at.push(bit);
            f[bit >> 3] ^= 1 << (bit & 7);
          }
          what = `flip bits ${at.join(",")}`;
        } else if (kind === 2) {
          // Aimed at length fields: overwrite an aligned word with an extreme value.
          f = base.slice();
          const pos = rand(f.length >> 2) << 2;
          const values = [0, 1, 4, 8, 12, 0x7fffffff, 0xffffffff, 0xfffffffc, rand(4096)];
          const v = values[rand(values.length)];
          new DataView(f.buffer).setUint32(pos, v, rand(2) === 0);
          what = `word at ${pos} = ${v}`;
        } else {
          const cut = rand(base.length);
          f = concat(base.subarray(0, cut), base.subarray(cut + 1 + rand(16)));
          what = `delete bytes from ${cut}`;
        }
        let cap: Capture | undefined;
        try {
          cap = readCapture(f, { skipUnknownVersions: rand(2) === 0 });
        } catch (err) {
          assert.ok(err instanceof CaptureFormatError, `${name}, ${what}: threw ${String(err)}`);
          assert.ok(err.offset >= 0 && err.offset <= f.length, `${name}, ${what}: offset ${err.offset}`);
          assert.match(err.message, /offset \d+/, `${name}, ${what}`);
          continue;
        }
        for (const r of cap.records) {
          assert.ok(
            r.data.byteOffset + r.data.length <= f.byteOffset + f.length,
            `${name}, ${what}: data past the end`,
          );
          assert.equal(r.data.length, r.capturedLength);
        }
      }
    });
  }
});

// ---------------------------------------------------------------------------
// Captures nobody here wrote: gopacket's pcapng conformance suite (made with
// pcapng-test-generator) and the sample pcaps dpkt and gopacket ship, fetched
// from Debian at test time, read and checked against gopacket's expected
// values (transcribed below from pcapgo/ngread_test.go) and against tcpdump.

function run(cmd: string, args: string[], cwd?: string): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(cmd, args, { cwd, encoding: "utf8", timeout: 300_000, maxBuffer: 64 << 20 });
  return { status: r.status, stdout: r.stdout ?? "", stderr: r.stderr ?? String(r.error ?? "") };
}

function fetchDebs(dir: string, names: string[]): void {
  let r = run("apt-get", ["download", ...names], dir);
  if (r.status !== 0) {
    // The package lists may be missing on a fresh machine.
    run("apt-get", ["update"]);
    r = run("apt-get", ["download", ...names], dir);
  }
  if (r.status !== 0)
    throw new Error(`cannot fetch Debian packages ${names.join(", ")} with apt-get download: ${r.stderr.trim()}`);
  for (const deb of readdirSync(dir).filter((f) => f.endsWith(".deb"))) {
    const x = run("dpkg", ["-x", deb, "root"], dir);
    if (x.status !== 0) throw new Error(`dpkg -x ${deb} failed: ${x.stderr.trim()}`);
  }
}

function ensureTcpdump(): void {
  if (run("tcpdump", ["--version"]).status === 0) return;
  run("apt-get", ["install", "-y", "tcpdump"]);
  if (run("tcpdump", ["--version"]).status !== 0)
    throw new Error("tcpdump is not installed and `apt-get install -y tcpdump` did not install it");
}

interface TcpdumpLine {
  usec: bigint;
  ipId: number | null;
  ipLen: number | null;
}

/** What tcpdump -tt -nn -v sees: per packet the µs timestamp and the IPv4 id and total length. */
function tcpdumpRead(file: string): { lines: TcpdumpLine[]; error: string } {
  const r = run("tcpdump", ["-tt", "-nn", "-v", "-r", file]);
  const lines: TcpdumpLine[] = [];
  for (const line of r.stdout.split("\n")) {
    const m = /^(\d+)\.(\d{6}) /.exec(line);
    if (m === null) continue; // -v continuation lines are indented
    const ip = /\bIP \(tos \S+, ttl \d+, id (\d+), .*?, length (\d+)[,)]/.exec(line);
    lines.push({
      usec: BigInt(m[1]) * 1_000_000n + BigInt(m[2]),
      ipId: ip ? Number(ip[1]) : null,
      ipLen: ip ? Number(ip[2]) : null,
    });
  }
  const error = r.stderr
    .split("\n")
    // Informational lines are not read errors (SLL2 files warn that interface
    // indexes cannot be named on this machine).
    .filter((l) => l.trim() !== "" && !l.startsWith("reading from file") && !l.startsWith("Warning:"))
    .join("\n");
  return { lines, error };
}

/** Our records, seen the way tcpdump prints them. */
function asTcpdump(cap: Capture): TcpdumpLine[] {
  return cap.records.map((r) => {
    const ip = r.ipv4 !== null && r.ipv4.length >= 6 ? r.ipv4 : null;
    return {
      usec: (r.ts ?? 0n) / 1000n,
      ipId: ip ? (ip[4] << 8) | ip[5] : null,
      ipLen: ip ? (ip[2] << 8) | ip[3] : null,
    };
  });
}

// gopacket's expectations. Packet: [source index, captured length (null = whole),
// timestamp in ns (null = none, an SPB), interface index]. B is 0x4c39764ca47aa µs.
const B = 0x4c39764ca47aan * 1000n;
const MS = 1_000_000n;
type Expected = [number, number | null, bigint | null, number];
interface ConformanceCase {
  file: string;
  sections: { comment: string; hardware?: string; ifaces: [number, number, string, number?][] }[];
  packets: Expected[];
  /**
   * gopacket drops packets whose interface link type differs from the first
   * interface's (unless asked not to); we return them. This many such packets
   * (NULL link type, ngPacketSource[4]) are in the file on top of `packets`.
   */
  otherLinkType?: number;
  skipUnknownVersions?: boolean;
}

const same = (n: string, ifaces: [number, number, string, number?][]) => [{ comment: n, ifaces }];
const EPB_PAIR_SPB: Expected[] = [
  [0, null, null, 0],
  [1, null, B, 0],
  [2, null, null, 0],
  [3, null, B + 2n * MS, 0],
];

const CONFORMANCE: ConformanceCase[] = [
  {
    file: "test001",
    sections: same("test001", [[1, 0, "silly ethernet interface"]]),
    packets: [
      [0, null, 0n, 0],
      [1, null, 0n, 0],
      [2, null, 0n, 0],
      [3, null, 0n, 0],
    ],
  },
  { file: "test002", sections: same("test002", []), packets: [] },
  { file: "test003", sections: same("test003", [[1, 96, "silly ethernet interface"]]), packets: [] },
  ...["test004", "test005"].map((file) => ({
    file,
    sections: same(file, [
      [1, 96, "eth0"],
      [1, 128, "en1"],
    ]),
    packets: [
      [0, 96, B, 0],
      [1, 128, B + MS, 1],
      [2, 96, B + 2n * MS, 0],
      [3, 128, B + 3n * MS, 1],
    ] as Expected[],
  })),
  {
    // gopacket's WantMixedLinkType variant lists the NULL packet too.
    file: "test006",
    sections: same("test006", [
      [1, 96, "eth0"],
      [0, 0, "en1"],
    ]),
    packets: [
      [0, 96, B, 0],
      [4, null, B + MS, 1],
      [1, 96, B + 2n * MS, 0],
      [2, 96, B + 3n * MS, 0],
      [3, 96, B + 4n * MS, 0],
    ],
  },
  { file: "test007", sections: same("test007", [[1, 96, "eth0"]]), packets: [[0, 96, B, 0]] },
  {
    file: "test008",
    sections: same("test008", [
      [1, 96, "eth-_0 foo", 9],
      [1, 128, "en1", 9],
    ]),
    packets: [
      [0, 96, B / 1000n, 0],
      [1, 128, B / 1000n + 1000n, 1],
      [2, 96, B / 1000n + 2000n, 0],
      [3, 128, B / 1000n + 3000n, 1],
    ],
  },
  {
    file: "test009",
    sections: same("test009", [[1, 0, "eth0"]]),
    packets: [
      [0, null, B, 0],
      [1, null, B + MS, 0],
    ],
  },
  {
    file: "test010",
    sections: same("test010", [[1, 0, "eth0"]]),
    packets: [
      [0, null, null, 0],
      [1, null, null, 0],
      [2, null, null, 0],
      [3, null, null, 0],
    ],
  },
  { file: "test011", sections: same("test011", [[1, 0, "eth0"]]), packets: EPB_PAIR_SPB },
  {
    file: "test012",
    sections: same("test012", [[1, 315, "eth0"]]),
    packets: [
      [0, null, null, 0],
      [1, 315, null, 0],
      [2, null, 0n, 0],
      [3, 315, 0n, 0],
    ],
  },
  { file: "test013", sections: same("test013", [[1, 96, "silly ethernet interface"]]), packets: [] },
  {
    file: "test014",
    sections: same("test014", [
      [1, 96, "eth0"],
      [0, 0, "null1"],
      [1, 128, "silly ethernet interface 2"],
    ]),
    packets: [],
  },
  { file: "test015", sections: same("test015", [[1, 96, "silly ethernet interface"]]), packets: [] },
  { file: "test016", sections: same("test016", [[1, 0, "eth0"]]), packets: EPB_PAIR_SPB },
  { file: "test017", sections: same("test017", []), packets: [] },
  { file: "test018", sections: same("test018", [[1, 0, "eth0"]]), packets: EPB_PAIR_SPB },
  {
    file: "test100",
    sections: same("test100", [
      [1, 0, "eth0"],
      [0, 0, "null1"],
      [1, 128, "wifi2?"],
    ]),
    packets: EPB_PAIR_SPB,
    otherLinkType: 1,
  },
  {
    file: "test101",
    sections: same("test101", [
      [1, 96, "eth0"],
      [0, 0, "null1"],
      [1, 128, "silly ethernet interface 2"],
    ]),
    packets: [
      [0, 96, B, 0],
      [1, 128, B, 2],
      [2, 96, null, 0],
    ],
    otherLinkType: 1,
  },
  {
    file: "test102",
    sections: same("test102", [
      [1, 96, "eth0"],
      [0, 0, "null1"],
      [1, 0, "silly!\r\nethernet interface 2"],
    ]),
    packets: [
      [0, 96, B, 0],
      [1, null, B, 2],
      [2, 96, null, 0],
      [3, 96, B + 2n * MS, 0],
    ],
    otherLinkType: 1,
  },
  {
    file: "test200",
    sections: [
      { comment: "test200", ifaces: [[1, 96, "eth0"]] },
      { comment: "test200", ifaces: [[1, 0, "eth0"]] },
      { comment: "test200", ifaces: [[0, 128, "null1"]] },
    ],
    packets: [],
  },
  {
    file: "test201",
    sections: [
      {
        comment: "test201 SHB-0",
        ifaces: [
          [1, 96, "eth0"],
          [0, 0, "null1"],
        ],
      },
      { comment: "test201 SHB-1", ifaces: [[1, 128, "silly ethernet interface 2"]] },
      {
        comment: "test201 SHB-2",
        ifaces: [
          [1, 96, "eth0"],
          [0, 0, "null1"],
        ],
      },
    ],
    packets: [
      [0, 96, B, 0],
      [1, 128, B, 0],
      [2, 128, null, 0],
    ],
    otherLinkType: 1,
  },
  {
    // Its middle section has the other byte order.
    file: "test202",
    sections: [
      {
        comment: "test202 SHB-0",
        ifaces: [
          [1, 96, "eth0"],
          [0, 0, "null1"],
        ],
      },
      { comment: "test202 SHB-1", ifaces: [[1, 128, "silly ethernet interface 2"]] },
      {
        comment: "test202 SHB-2",
        ifaces: [
          [1, 96, "eth0"],
          [0, 0, "null1"],
        ],
      },
    ],
    packets: [
      [0, 96, B, 0],
      [1, 96, B, 0],
      [0, 128, null, 0],
      [1, 128, B, 0],
      [2, 128, null, 0],
      [3, 128, B, 0],
    ],
    otherLinkType: 2,
  },
  {
    // Its middle section is version 2.0: gopacket's SkipUnknownVersion variant.
    file: "test901",
    skipUnknownVersions: true,
    sections: [
      { comment: "test901 SHB-0", hardware: "my computer", ifaces: [[1, 0, "eth0"]] },
      { comment: "test901 SHB-2", hardware: "my computer", ifaces: [[1, 0, "eth0"]] },
    ],
    packets: [
      [0, null, B, 0],
      [2, null, B, 0],
    ],
  },
  {
    // if_tsresol 0x88: 2^-8 s ticks.
    file: "test902",
    sections: [{ comment: "test902", hardware: "my computer", ifaces: [[1, 0, "eth0", 0x88]] }],
    packets: [[0, null, 1_519_128_000_195_312_500n, 0]],
  },
];

describe("real captures from Debian packages", () => {
  let dir = "";
  let gopacket = "";
  let sources: Uint8Array[] = [];
  let samples: string[] = [];

  before(() => {
    dir = mkdtempSync(join(tmpdir(), "weft-pcap-"));
    fetchDebs(dir, ["golang-github-google-gopacket-dev", "python3-dpkt"]);
    ensureTcpdump();
    gopacket = join(dir, "root/usr/share/gocode/src/github.com/google/gopacket");
    const testGo = readFileSync(join(gopacket, "pcapgo/ngread_test.go"), "utf8");
    sources = [...testGo.matchAll(/ngMustDecode\("([0-9a-f]+)"\)/g)].map(
      (m) => new Uint8Array(Buffer.from(m[1], "hex")),
    );
    const dpktData = join(dir, "root/usr/share/doc/python3-dpkt/examples/data");
    samples = [
      ...readdirSync(dpktData).map((f) => join(dpktData, f)),
      ...readdirSync(join(gopacket, "pcap"))
        .filter((f) => f.endsWith(".pcap"))
        .map((f) => join(gopacket, "pcap", f)),
    ].filter((f) => f.endsWith(".pcap") && statSync(f).isFile());
  });

  after(() => {
    if (dir !== "") rmSync(dir, { recursive: true, force: true });
  });

  it("found the packet sources, the suite and the sample pcaps", () => {
    assert.equal(sources.length, 5, "ngPacketSource in ngread_test.go");
    assert.equal(sources[0].length, 314);
    for (const e of ["le", "be"])
      for (const c of CONFORMANCE) assert.ok(statSync(join(gopacket, "pcapgo/tests", e, `${c.file}.pcapng`)).isFile());
    assert.ok(samples.length >= 8, `sample pcaps: ${samples.join(", ")}`);
  });

  for (const order of ["le", "be"]) {
    for (const c of CONFORMANCE) {
      it(`gopacket ${order}/${c.file}.pcapng: sections, interfaces, packets, lengths and timestamps`, () => {
        const bytes = new Uint8Array(readFileSync(join(gopacket, "pcapgo/tests", order, `${c.file}.pcapng`)));
        const cap = readCapture(bytes, { skipUnknownVersions: c.skipUnknownVersions });
        assert.equal(cap.format, "pcapng");
        assert.deepEqual(
          cap.sections.map((s) => s.comment),
          c.sections.map((s) => s.comment),
        );
        for (const [i, s] of c.sections.entries()) {
          const got = cap.sections[i];
          assert.equal(got.hardware, s.hardware ?? "Apple MBP");
          assert.equal(got.application, "pcap_writer.lua");
          assert.deepEqual(
            got.interfaces.map((f) => [f.linkType, f.snapLen, f.name, f.tsResolution]),
            s.ifaces.map(([lt, snap, name, res]) => [lt, snap, name, res ?? 6]),
          );
        }
        if (c.file === "test202") {
          // One file, sections of both byte orders.
          assert.deepEqual(
            cap.sections.map((s) => s.bigEndian),
            order === "le" ? [false, true, false] : [true, false, true],
          );
        }
        const firstLinkType = cap.sections[0].interfaces[0]?.linkType;
        const kept = c.file === "test006" ? cap.records : cap.records.filter((r) => r.linkType === firstLinkType);
        const others = cap.records.filter((r) => !kept.includes(r));
        assert.deepEqual(
          kept.map((r) => [r.capturedLength, r.originalLength, r.ts, r.interfaceIndex]),
          c.packets.map(([src, cap, ts, iface]) => [cap ?? sources[src].length, sources[src].length, ts, iface]),
        );
        for (const [i, r] of kept.entries()) {
          const [src, capLen] = c.packets[i];
          assert.deepEqual(r.data, sources[src].subarray(0, capLen ?? undefined), `packet ${i} data`);
        }
        assert.equal(others.length, c.otherLinkType ?? 0);
        for (const r of [...others, ...kept.filter((r) => r.linkType === 0)]) {
          assert.equal(r.linkType, 0);
          assert.deepEqual(r.data, sources[4]);
          assert.deepEqual(r.ipv4, sources[4].subarray(4));
        }
        // The Ethernet sources: DHCP over IPv4, so every one yields its IP packet.
        for (const r of kept.filter((r) => r.linkType === 1)) assert.deepEqual(r.ipv4, r.data.subarray(14));
      });
    }

    it(`gopacket ${order}/test901.pcapng by default: reads the first section, then names the version-2 section's offset`, () => {
      const bytes = new Uint8Array(readFileSync(join(gopacket, "pcapgo/tests", order, "test901.pcapng")));
      const cursor = openCapture(bytes);
      const first = cursor.next();
      assert.deepEqual(first?.data, sources[0]);
      const err = assertOffsetError(() => cursor.next(), 0 + findSecondShb(bytes), /version 2\.0/);
      assert.deepEqual([...bytes.subarray(err.offset, err.offset + 4)], [0x0a, 0x0d, 0x0d, 0x0a]);
    });

    it(`gopacket ${order}/test202.pcapng cut anywhere inside its blocks names an offset`, () => {
      const bytes = new Uint8Array(readFileSync(join(gopacket, "pcapgo/tests", order, "test202.pcapng")));
      const ends = blockEnds(bytes);
      assert.equal(ends.length, 28);
      for (let cut = 1; cut < bytes.length; cut += 3) {
        try {
          readCapture(bytes.subarray(0, cut));
          assert.ok(ends.includes(cut), `cut at ${cut} is inside a block but read without error`);
        } catch (err) {
          assert.ok(err instanceof CaptureFormatError, `cut at ${cut}: ${String(err)}`);
          assert.ok(err.offset < cut, `cut at ${cut}: offset ${err.offset}`);
        }
      }
    });
  }

  it("gopacket pcapng files tcpdump can read: same packet count and timestamps", () => {
    let compared = 0;
    for (const order of ["le", "be"]) {
      for (const c of CONFORMANCE) {
        const path = join(gopacket, "pcapgo/tests", order, `${c.file}.pcapng`);
        const td = tcpdumpRead(path);
        // libpcap refuses files whose interfaces differ in link type or snaplen.
        if (td.error !== "") continue;
        const cap = readCapture(new Uint8Array(readFileSync(path)));
        assert.deepEqual(asTcpdump(cap), td.lines, path);
        compared++;
      }
    }
    assert.ok(compared >= 20, `compared ${compared} files`);
  });

  it("sample pcaps from dpkt and gopacket: same records, timestamps, IPv4 ids and lengths as tcpdump", () => {
    const seen: string[] = [];
    for (const path of samples) {
      const bytes = new Uint8Array(readFileSync(path));
      const td = tcpdumpRead(path);
      const got: TcpdumpLine[] = [];
      let error: CaptureFormatError | null = null;
      const cursor = openCapture(bytes);
      try {
        for (const r of cursor) got.push(...asTcpdump({ format: "pcap", sections: [], records: [r] }));
      } catch (err) {
        assert.ok(err instanceof CaptureFormatError, `${path}: ${String(err)}`);
        error = err;
      }
      assert.deepEqual(got, td.lines, path);
      // tcpdump reports a truncated file; so must we, naming where.
      assert.equal(error !== null, td.error !== "", `${path}: ours ${error?.message}, tcpdump ${td.error}`);
      seen.push(`${path.split("/").pop()}:${got.length}${error ? `+error@${error.offset}` : ""}`);
    }
    assert.ok(
      seen.some((s) => s.startsWith("nb6-http.pcap:62")),
      seen.join(" "),
    );
    assert.ok(
      seen.some((s) => s.startsWith("test_loopback.pcap:24")),
      seen.join(" "),
    );
    assert.ok(
      seen.some((s) => s.startsWith("truncated_dns_2.pcap:1+error@")),
      seen.join(" "),
    );
  });

  it("tcpdump decodes the frames our link-type tests build, with the same IPv4 packet inside", () => {
    const ip = ipv4(60, 4242);
    const frames: [number, Uint8Array][] = [
      [1, ether(vlanTag(0x88a8, 10), vlanTag(0x8100, 20), u16be(0x0800), ip)],
      [0, concat(new Uint8Array([2, 0, 0, 0]), ip)],
      [108, concat(new Uint8Array([0, 0, 0, 2]), ip)],
      [113, concat(new Uint8Array([0, 4, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0]), u16be(0x0800), ip)],
      [276, concat(u16be(0x0800), new Uint8Array([0, 0, 0, 0, 0, 2, 0, 1, 4, 6, 2, 0, 0, 0, 0, 1, 0, 0]), ip)],
      [228, ip],
      [101, ip],
    ];
    for (const [linkType, frame] of frames) {
      for (const bytes of [
        writePcap([{ ts: 5_000_000n, data: frame }], { linkType }),
        writePcapng([{ ts: 5_000_000n, data: frame }], { linkType }),
      ]) {
        const path = join(dir, `frame-${linkType}.cap`);
        writeFileSync(path, bytes);
        const td = tcpdumpRead(path);
        assert.equal(td.error, "", `link type ${linkType}`);
        assert.deepEqual(asTcpdump(readCapture(bytes)), td.lines, `link type ${linkType}`);
        assert.deepEqual(td.lines, [{ usec: 5000n, ipId: 4242, ipLen: 60 }], `link type ${linkType}`);
      }
    }
  });
});

/** End offsets of every pcapng block, walked independently of the reader. */
function blockEnds(bytes: Uint8Array): number[] {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const ends: number[] = [];
  let be = false;
  for (let pos = 0; pos < bytes.length; ) {
    if (dv.getUint32(pos, false) === 0x0a0d0d0a) be = bytes[pos + 8] === 0x1a;
    pos += dv.getUint32(pos + 4, !be);
    ends.push(pos);
  }
  return ends;
}

/** Offset of the second Section Header Block, found by walking block lengths. */
function findSecondShb(bytes: Uint8Array): number {
  const be = bytes[8] === 0x1a;
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  let pos = dv.getUint32(4, !be);
  while (dv.getUint32(pos, false) !== 0x0a0d0d0a) pos += dv.getUint32(pos + 4, !be);
  return pos;
}

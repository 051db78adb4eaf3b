// Mutation fuzz of the addon's byte paths, called directly: gsoSplit and
// groMerge on random and mutated packets, and the packet fd's read and write
// of virtio-net headers with hostile fields. More than 10^5 cases per run,
// seeded (WEFT_FUZZ_SEED replays a run; without it every run draws a fresh
// seed, printed in the suite's name). Each case checks what the C++ promises:
// a success is exactly right, a refusal leaves every byte alone, nothing is
// written outside the room it was given, every input is accounted for, and
// nothing throws but a RangeError for arguments outside the arrays. The ASan
// build (test/asan.test.ts) runs this file to catch reads it cannot see.
import assert from "node:assert/strict";
import { describe, it, type TestContext } from "node:test";
import { loadAddon } from "../dataplane/native/index.js";
import { onesSum } from "../dataplane/wire/checksum.js";
import { edgeSize, flow, fuzzSeed, mutate, mutateFlow, noise, packet } from "./helpers/mutate.js";
import { headerChecksumOk } from "./helpers/packets.js";
import { randomInt, seededRandom } from "./helpers/random.js";
import { completeTcpChecksum, l4ChecksumOk, put16, stage, u16 } from "./helpers/segments.js";

const addon = loadAddon();
const SEED = fuzzSeed();
const SPLIT_CASES = 50_000;
const MERGE_CASES = 50_000;
const MERGES_PER_FLOW = 4;
const READ_CASES = 10_000;
const WRITE_CASES = 10_000;
const CANARY = 0xa5;
const GSO_TYPES = [1, 5, 0x81, 0x85, 4, 0];
const VNET_HDR = 10;

/** Whether a and b hold the same bytes (native compare: the fuzz checks a lot of them). */
const same = (a: Uint8Array, b: Uint8Array) => Buffer.compare(a, b) === 0;

/** Whether a and b agree outside [from, to). */
function sameOutside(a: Uint8Array, b: Uint8Array, from: number, to: number): boolean {
  return same(a.subarray(0, from), b.subarray(0, from)) && same(a.subarray(to), b.subarray(to));
}

/** A packet the split may take: mostly its gsoType fits the protocol. */
function gsoTypeFor(rand: () => number, p: Uint8Array): number {
  if (rand() < 0.6 && p.length > 9) return (p[9] === 6 ? 1 : 5) | (rand() < 0.2 ? 0x80 : 0);
  return rand() < 0.9 ? (GSO_TYPES[randomInt(rand, GSO_TYPES.length)] as number) : randomInt(rand, 256);
}

function splitCase(rand: () => number, out: Uint32Array, tally: Record<string, number>): void {
  const base = rand() < 0.1 ? noise(rand, randomInt(rand, 120)) : packet(rand, true);
  const p = rand() < 0.4 ? base : mutate(rand, base);
  const gsoType = gsoTypeFor(rand, p);
  const gsoSize = rand() < 0.6 ? 1 + randomInt(rand, 1500) : edgeSize(rand);
  const off = randomInt(rand, 64);
  const len = p.length;
  const room = len + (rand() < 0.5 ? randomInt(rand, 256) : randomInt(rand, 4 * len + 1));
  const bytes = new Uint8Array(off + room + 32).fill(CANARY);
  bytes.set(p, off);
  if (rand() < 0.02) {
    // Arguments outside the buffer: refused with a RangeError, nothing touched.
    const before = bytes.slice();
    const badRoom = bytes.length - off + 1 + randomInt(rand, 100);
    assert.throws(() => addon.gsoSplit(bytes, off, len, gsoType, gsoSize, badRoom, out), RangeError);
    assert.ok(same(bytes, before));
    tally.badArgs++;
    return;
  }
  const before = bytes.slice();
  if (!addon.gsoSplit(bytes, off, len, gsoType, gsoSize, room, out)) {
    assert.ok(same(bytes, before), "a refused split leaves every byte alone");
    tally.refused++;
    return;
  }
  tally.split++;
  const [n, stride, total] = [out[0] as number, out[1] as number, out[2] as number];
  const ihl = (p[0] & 15) * 4;
  const tcp = (gsoType & 0x7f) === 1;
  const hdr = ihl + (tcp ? (p[ihl + 12] >> 4) * 4 : 8);
  assert.equal(stride, hdr + gsoSize);
  assert.equal(total, len + (n - 1) * hdr);
  assert.ok(n >= 1 && total <= room);
  assert.ok(sameOutside(bytes, before, off, off + room), "nothing written outside the room");
  for (let k = 0; k < n; k++) {
    const segLen = k < n - 1 ? stride : total - k * stride;
    const s = bytes.subarray(off + k * stride, off + k * stride + segLen);
    assert.equal(u16(s, 2), segLen);
    assert.ok(headerChecksumOk(s) && l4ChecksumOk(s), "every segment's checksums verify");
    const from = hdr + k * gsoSize;
    assert.ok(same(s.subarray(hdr), p.subarray(from, from + segLen - hdr)), "payloads in order");
  }
}

/** Packets laid out for groMerge: a run inside the head's slot, or one slot each. */
function layOut(rand: () => number, pkts: Uint8Array[]) {
  const junk = randomInt(rand, 3);
  const all = [...Array.from({ length: junk }, () => noise(rand, randomInt(rand, 80))), ...pkts];
  const offsets = new Uint32Array(all.length);
  const lengths = new Uint32Array(all.length);
  const inSlot = rand() < 0.5;
  const slot = Math.max(...all.map((p) => p.length)) + 64;
  let at = 0;
  let room = 0;
  all.forEach((p, i) => {
    if (i === junk) {
      const run = pkts.reduce((s, q) => s + q.length, 0);
      room = inSlot ? (pkts[0]?.length ?? 0) + randomInt(rand, run + 64) : randomInt(rand, slot + 1);
    }
    offsets[i] = at;
    lengths[i] = p.length;
    at += inSlot && i >= junk ? p.length : slot;
  });
  const headOff = offsets[junk] as number;
  const bytes = new Uint8Array(Math.max(at, headOff + room) + 32).fill(CANARY);
  all.forEach((p, i) => {
    bytes.set(p, offsets[i]);
  });
  return { bytes, offsets, lengths, first: junk, room, headOff };
}

/** A flow, for MERGES_PER_FLOW cases (building packets costs more than merging them). */
function mergeFlow(rand: () => number): { tcp: boolean; pkts: Uint8Array[] } {
  const tcp = rand() < 0.6;
  const size = rand() < 0.8 ? 1 + randomInt(rand, 1460) : 1 + (edgeSize(rand) % 9000);
  return { tcp, pkts: flow(rand, { tcp, count: 1 + randomInt(rand, 8), size }) };
}

/** One groMerge case: the flow with some packets mutated, in a random layout. */
function mergeCase(rand: () => number, tcp: boolean, clean: Uint8Array[], tally: Record<string, number>): void {
  const whole = rand() < 0.15 ? mutateFlow(rand, clean) : clean;
  const pkts = whole.map((p) => (rand() < 0.15 ? mutate(rand, p) : p));
  const { bytes, offsets, lengths, first, room, headOff } = layOut(rand, pkts);
  const before = bytes.slice();
  const lengthsBefore = lengths.slice();
  const r = addon.groMerge(bytes, offsets, lengths, first, pkts.length, room);
  assert.ok(Number.isInteger(r) && r >= 0 && r <= pkts.length);
  if (r < 2) {
    assert.ok(same(bytes, before) && same(new Uint8Array(lengths.buffer), new Uint8Array(lengthsBefore.buffer)));
    tally.unmerged++;
    return;
  }
  tally.merged++;
  tally.mergedPackets += r;
  const head = pkts[0] as Uint8Array;
  const newLen = lengths[first] as number;
  assert.ok(newLen <= Math.min(room, 65535));
  for (let i = 0; i < lengths.length; i++) if (i !== first) assert.equal(lengths[i], lengthsBefore[i]);
  assert.ok(sameOutside(bytes, before, headOff, headOff + room), "nothing written outside the head's room");
  const m = bytes.slice(headOff, headOff + newLen);
  const ihl = (head[0] & 15) * 4;
  const hdr = ihl + (tcp ? (head[ihl + 12] >> 4) * 4 : 8);
  assert.equal(u16(m, 2), newLen);
  assert.ok(headerChecksumOk(m));
  assert.ok(!tcp || hdr - ihl >= 20, "a TCP super-packet has a whole TCP header");
  let at = hdr;
  for (let j = 0; j < r; j++) {
    const q = pkts[j] as Uint8Array;
    assert.ok(j === 0 || l4ChecksumOk(q), "only packets whose checksum verifies go in");
    assert.ok(same(m.subarray(at, at + q.length - hdr), q.subarray(hdr)), "payloads in order");
    at += q.length - hdr;
  }
  assert.equal(at, newLen);
  if (tcp) assert.ok(l4ChecksumOk(completeTcpChecksum(m)), "the seeded TCP checksum completes to a right one");
  else assert.equal(u16(m, ihl + 4), newLen - ihl);
}

/** A virtio-net header with hostile fields (native byte order: little-endian). */
function hostileVnet(rand: () => number, len: number): Uint8Array {
  const h = new Uint8Array(VNET_HDR);
  h[0] = rand() < 0.7 ? 1 : randomInt(rand, 256);
  h[1] =
    rand() < 0.5 ? 0 : rand() < 0.8 ? (GSO_TYPES[randomInt(rand, GSO_TYPES.length)] as number) : randomInt(rand, 256);
  const le16 = (at: number, v: number) => {
    h[at] = v & 255;
    h[at + 1] = (v >> 8) & 255;
  };
  le16(2, edgeSize(rand));
  le16(4, rand() < 0.5 ? 0 : edgeSize(rand));
  le16(6, rand() < 0.5 ? randomInt(rand, len + 4) : edgeSize(rand));
  le16(8, rand() < 0.5 ? ([6, 16, randomInt(rand, 64)][randomInt(rand, 3)] as number) : edgeSize(rand));
  return h;
}

/** What the reader must deliver for one frame [vnet header][packet]: null when it must drop it. */
function expectRead(frame: Uint8Array, slot: number) {
  if (frame.length < VNET_HDR || frame.length - VNET_HDR > slot) return null;
  const p = frame.slice(VNET_HDR);
  const le16 = (at: number) => frame[at] | (frame[at + 1] << 8);
  const type = frame[1] & 0x7f;
  const gsoSize = le16(4);
  if (type !== 0 && gsoSize !== 0) return { p, gsoSize, gsoType: type };
  const start = le16(6);
  const field = start + le16(8);
  if ((frame[0] & 1) !== 0 && field + 2 <= p.length) {
    const c = ~onesSum(p, start, p.length - start) & 0xffff;
    put16(p, field, c === 0 ? 0xffff : c);
  }
  return { p, gsoSize: 0, gsoType: 0 };
}

/** A native packet fd on one end of a socketpair with its own arena; closed after the test. */
function rawFd(t: TestContext, fd: number, slot: number, vnet: boolean) {
  const capacity = 64;
  const arena = {
    bytes: new Uint8Array(capacity * slot),
    lengths: new Uint32Array(capacity),
    gsoSize: new Uint16Array(capacity),
    gsoType: new Uint8Array(capacity),
  };
  const native = new addon.PacketFd(fd, arena.bytes, arena.lengths, slot, capacity, vnet ? arena : undefined);
  t.after(() => native.close());
  return { native, arena, slot };
}

/** Writes frames from `writer` and collects what `reader` delivers, batch by batch. */
async function pipe(
  writer: ReturnType<typeof rawFd>,
  reader: ReturnType<typeof rawFd>,
  frames: Uint8Array[],
  gso: Uint16Array | undefined,
): Promise<{ data: Uint8Array; gsoSize: number; gsoType: number }[]> {
  const got: { data: Uint8Array; gsoSize: number; gsoType: number }[] = [];
  reader.native.start((count) => {
    const a = reader.arena;
    for (let i = 0; i < count; i++) {
      const at = i * reader.slot;
      got.push({
        data: a.bytes.slice(at, at + (a.lengths[i] as number)),
        gsoSize: a.gsoSize[i] as number,
        gsoType: a.gsoType[i] as number,
      });
    }
  });
  const { bytes, offsets, lengths } = stage(frames);
  writer.native.bindWrite(bytes, offsets, lengths, gso);
  const accounted = () => got.length + reader.native.truncatedDrops + writer.native.writeErrors;
  for (let done = 0; done < frames.length; ) {
    // At most a batch in flight: the socket buffer never fills, the reader drains between.
    done += writer.native.write(done, Math.min(64, frames.length - done));
    const deadline = Date.now() + 20_000;
    while (accounted() < done) {
      if (Date.now() > deadline) throw new Error(`${done - accounted()} of ${done} written frames never arrived`);
      await new Promise((resolve) => setImmediate(resolve));
    }
  }
  return got;
}

describe(`native mutation fuzz (WEFT_FUZZ_SEED=${SEED})`, () => {
  it(`gsoSplit: ${SPLIT_CASES} random and mutated super-packets`, (t) => {
    const rand = seededRandom(SEED);
    const out = new Uint32Array(3);
    const tally = { split: 0, refused: 0, badArgs: 0 };
    for (let c = 0; c < SPLIT_CASES; c++) splitCase(rand, out, tally);
    assert.equal(tally.split + tally.refused + tally.badArgs, SPLIT_CASES);
    t.diagnostic(JSON.stringify(tally));
    assert.ok(tally.split > SPLIT_CASES / 10 && tally.refused > SPLIT_CASES / 10, JSON.stringify(tally));
  });

  it(`groMerge: ${MERGE_CASES} cases on flows, some packets mutated, laid out in one slot or many`, (t) => {
    const rand = seededRandom(SEED + 1);
    const tally = { merged: 0, unmerged: 0, mergedPackets: 0 };
    for (let c = 0; c < MERGE_CASES; c += MERGES_PER_FLOW) {
      const { tcp, pkts } = mergeFlow(rand);
      for (let k = 0; k < MERGES_PER_FLOW; k++) mergeCase(rand, tcp, pkts, tally);
    }
    assert.equal(tally.merged + tally.unmerged, MERGE_CASES);
    t.diagnostic(JSON.stringify(tally));
    assert.ok(tally.merged > MERGE_CASES / 10 && tally.unmerged > MERGE_CASES / 10, JSON.stringify(tally));
  });

  it(`packet fd read: ${READ_CASES} frames behind hostile virtio-net headers`, async (t) => {
    const rand = seededRandom(SEED + 2);
    const [a, b] = addon.socketpair();
    const reader = rawFd(t, a, 2048, true);
    const writer = rawFd(t, b, 2048, false);
    const frames = Array.from({ length: READ_CASES }, () => {
      // A few too short for the header or too long for the slot (dropped and
      // counted); never empty (an empty datagram is the peer's close).
      const odd = rand() < 0.05;
      if (odd && rand() < 0.5) return noise(rand, 1 + randomInt(rand, VNET_HDR - 1));
      const p = odd ? noise(rand, 2049 + randomInt(rand, 500)) : mutate(rand, packet(rand));
      const f = new Uint8Array(VNET_HDR + p.length);
      f.set(hostileVnet(rand, p.length), 0);
      f.set(p, VNET_HDR);
      return f;
    });
    const want = frames.map((f) => expectRead(f, 2048));
    const kept = want.filter((w) => w !== null);
    const got = await pipe(writer, reader, frames, undefined);
    assert.equal(writer.native.writeErrors, 0);
    assert.equal(got.length + reader.native.truncatedDrops, READ_CASES, "every frame delivered or counted");
    assert.equal(got.length, kept.length);
    got.forEach((g, i) => {
      const w = kept[i] as { p: Uint8Array; gsoSize: number; gsoType: number };
      assert.equal(g.gsoSize, w.gsoSize, `frame ${i}: gsoSize`);
      assert.equal(g.gsoType, w.gsoType, `frame ${i}: gsoType`);
      assert.ok(same(g.data, w.p), `frame ${i}: bytes (checksum completed where the header asked)`);
    });
  });

  it(`packet fd write: ${WRITE_CASES} mutated packets as super-packets behind virtio-net headers`, async (t) => {
    const rand = seededRandom(SEED + 3);
    const [a, b] = addon.socketpair();
    const writer = rawFd(t, a, 2048, true);
    const reader = rawFd(t, b, 4096, false);
    const packets = Array.from({ length: WRITE_CASES }, () => mutate(rand, packet(rand)));
    const gso = Uint16Array.from(packets, () => (rand() < 0.8 ? edgeSize(rand) : 0));
    const got = await pipe(writer, reader, packets, gso);
    assert.equal(got.length + reader.native.truncatedDrops + writer.native.writeErrors, WRITE_CASES);
    assert.equal(got.length, WRITE_CASES);
    for (const [i, g] of got.entries()) {
      const p = packets[i] as Uint8Array;
      const h = g.data.subarray(0, VNET_HDR);
      assert.ok(same(g.data.subarray(VNET_HDR), p), `packet ${i}: bytes unchanged`);
      const le16 = (at: number) => h[at] | (h[at + 1] << 8);
      const ihl = p.length > 0 ? (p[0] & 15) * 4 : 0;
      const size = gso[i] as number;
      const tcp = size !== 0 && p.length >= 20 && p[9] === 6 && p.length >= ihl + 20;
      const udp = size !== 0 && p.length >= 20 && !tcp && p[9] === 17 && p.length >= ihl + 8;
      assert.equal(h[1], tcp ? 1 : udp ? 5 : 0, `packet ${i}: gso type`);
      if (!tcp && !udp) {
        assert.ok(
          h.every((x) => x === 0),
          `packet ${i}: a plain packet's header is all zeros`,
        );
        continue;
      }
      assert.equal(le16(2), tcp ? ihl + (p[ihl + 12] >> 4) * 4 : ihl + 8);
      assert.deepEqual([h[0], le16(4), le16(6), le16(8)], [1, size, ihl, tcp ? 16 : 6]);
    }
  });
});

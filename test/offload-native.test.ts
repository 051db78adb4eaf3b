// The offload paths of the native addon against the real kernel: virtio-net
// headers on a packet fd, TUN offload negotiation, TSO reads and GSO writes
// on a TUN in a network namespace, UDP GSO/GRO (and the GSO fallback) on
// loopback.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { constants as os } from "node:os";
import { after, before, describe, it, type TestContext } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import { loadAddon } from "../dataplane/native/index.js";
import { TunDevice, UdpTransport } from "../dataplane/native-io.js";
import { Coalescer } from "../dataplane/offload/coalescer.js";
import { createNetns, deleteNetns } from "./helpers/netns.js";
import { hex, l4ChecksumOk, put16, stage, tcpPacket, udpPacketSpec } from "./helpers/segments.js";
import { injectSendErrors } from "./helpers/send-errors.js";

const execFileAsync = promisify(execFile);
const IO_URL = new URL("../dataplane/native-io.js", import.meta.url).href;
const GRO_URL = new URL("../dataplane/offload/coalescer.js", import.meta.url).href;
const NATIVE_URL = new URL("../dataplane/native/index.js", import.meta.url).href;
const LOOPBACK = 0x7f000001;
const TIMEOUT = { timeout: 60_000 };

async function runModule(prefix: string[], code: string): Promise<unknown> {
  const [cmd, ...args] = [...prefix, process.execPath, "--input-type=module", "-e", code];
  const { stdout } = await execFileAsync(cmd as string, args, { timeout: 60_000, killSignal: "SIGKILL" });
  return JSON.parse(stdout);
}

async function until(cond: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error("timed out");
    await sleep(5);
  }
}

describe("virtio-net headers on a packet fd (socketpair)", () => {
  function pair(t: TestContext, writerVnet: boolean) {
    const [a, b] = loadAddon().socketpair();
    const reader = TunDevice.fromFd(a, "vnet-r", { capacity: 8, slotSize: 70000, vnetHdr: true });
    const writer = TunDevice.fromFd(b, "vnet-w", { capacity: 8, slotSize: 70000, vnetHdr: writerVnet });
    t.after(() => {
      reader.close();
      writer.close();
    });
    const got: { data: Uint8Array; gsoSize: number; gsoType: number }[] = [];
    reader.start((count) => {
      for (let i = 0; i < count; i++) {
        const at = i * reader.rx.slotSize;
        got.push({
          data: reader.rx.bytes.slice(at, at + (reader.rx.lengths[i] as number)),
          gsoSize: reader.rx.gsoSize[i] as number,
          gsoType: reader.rx.gsoType[i] as number,
        });
      }
    });
    return { reader, writer, got };
  }

  it("carries the GSO size and type of a super-packet from write to read", TIMEOUT, async (t) => {
    const { writer, got } = pair(t, true);
    const p = tcpPacket({ seq: 1, payload: new Uint8Array(3000).fill(9) });
    const q = tcpPacket({ seq: 9, payload: new Uint8Array(10) });
    const bytes = new Uint8Array(p.length + q.length);
    bytes.set(p);
    bytes.set(q, p.length);
    const n = writer.write(
      bytes,
      Uint32Array.of(0, p.length),
      Uint32Array.of(p.length, q.length),
      0,
      2,
      Uint16Array.of(1000, 0),
    );
    assert.equal(n, 2);
    await until(() => got.length === 2);
    assert.deepEqual(
      got.map((g) => [hex(g.data), g.gsoSize, g.gsoType]),
      [
        [hex(p), 1000, 1],
        [hex(q), 0, 0],
      ],
    );
  });

  it("completes a checksum the sender left partial (NEEDS_CSUM)", TIMEOUT, async (t) => {
    const { writer, got } = pair(t, false);
    const p = tcpPacket({ seq: 77, payload: new Uint8Array(501).fill(3) });
    // What a kernel hands over: the field holds the pseudo-header sum.
    const partial = p.slice();
    const sum = 0x0af4 + 0x0102 + 0x0af4 + 0x0207 + 6 + (p.length - 20);
    put16(partial, 36, (sum & 0xffff) + (sum >>> 16));
    const hdr = new Uint8Array(10);
    hdr[0] = 1; // NEEDS_CSUM
    put16(hdr, 6, 0); // csum_start 20 (little-endian fields)
    hdr[6] = 20;
    hdr[8] = 16; // csum_offset
    const frame = new Uint8Array(10 + partial.length);
    frame.set(hdr);
    frame.set(partial, 10);
    writer.write(frame, Uint32Array.of(0), Uint32Array.of(frame.length), 0, 1);
    await until(() => got.length === 1);
    assert.ok(l4ChecksumOk(got[0]?.data as Uint8Array));
    assert.equal(hex(got[0]?.data as Uint8Array), hex(p));
  });

  it(
    "writes a gathered run as the same super-packet a moved run makes, byte for byte, in order",
    TIMEOUT,
    async (t) => {
      const { writer, got } = pair(t, true);
      // Two flows interleaved by chunks, a short PSH tail, a segment with a bad
      // checksum (ends its run and goes alone) and a lone UDP datagram.
      const pkts: Uint8Array[] = [];
      const seg = (port: number, seq: number, len: number, extra: Partial<Parameters<typeof tcpPacket>[0]> = {}) =>
        tcpPacket({
          srcPort: port,
          seq,
          payload: new Uint8Array(len).map((_, k) => (seq + k) & 255),
          df: true,
          ...extra,
        });
      for (let k = 0; k < 5; k++) pkts.push(seg(1000, 1 + k * 1200, 1200));
      for (let k = 0; k < 3; k++) pkts.push(seg(2000, 7 + k * 1200, 1200));
      pkts.push(seg(1000, 6001, 1200), seg(1000, 7201, 300, { flags: 0x18 }));
      pkts.push(seg(2000, 3607, 1200), seg(2000, 4807, 1200, { checksum: 0x1234 }), seg(2000, 6007, 1200));
      pkts.push(udpPacketSpec({ payload: new Uint8Array(100).fill(5) }));
      // A UDP run last, its head near the end of the buffer.
      for (let k = 0; k < 4; k++) pkts.push(udpPacketSpec({ payload: new Uint8Array(1400).fill(k), df: true }));
      const slot = 65536;
      const layOut = () => {
        // Each packet in its own slot, as the transport's receive arena holds them.
        const bytes = new Uint8Array(slot * pkts.length);
        const offsets = new Uint32Array(pkts.length);
        const lengths = new Uint32Array(pkts.length);
        pkts.forEach((q, k) => {
          bytes.set(q, k * slot);
          offsets[k] = k * slot;
          lengths[k] = q.length;
        });
        return { bytes, offsets, lengths, gso: new Uint16Array(pkts.length) };
      };
      const moved = layOut();
      const n = new Coalescer(true).coalesce(moved.bytes, moved.offsets, moved.lengths, moved.gso, pkts.length, slot);
      const want = Array.from({ length: n }, (_, k) => {
        const at = moved.offsets[k] as number;
        return [hex(moved.bytes.subarray(at, at + (moved.lengths[k] as number))), moved.gso[k]];
      });
      assert.ok(want.filter(([, g]) => g !== 0).length >= 3, "the batch holds runs to gather");

      // Gathered, the packets may lie end to end, a run's head far less than
      // 64 KiB before the end of the buffer: nothing grows.
      const g = { ...stage(pkts), gso: new Uint16Array(pkts.length) };
      const runs = new Uint16Array(pkts.length);
      new Coalescer(true).gather(g.bytes, g.offsets, g.lengths, g.gso, runs, pkts.length);
      assert.equal(writer.write(g.bytes, g.offsets, g.lengths, 0, pkts.length, g.gso, runs), pkts.length);
      await until(() => got.length === n);
      assert.deepEqual(
        got.map((w) => [hex(w.data), w.gsoSize]),
        want,
      );
    },
  );

  it(
    "refuses a run that reaches past the batch or into a packet shorter than its headers, writing nothing",
    TIMEOUT,
    async (t) => {
      const { writer, got } = pair(t, true);
      const a = tcpPacket({ seq: 1, payload: new Uint8Array(100) });
      const bytes = new Uint8Array(3 * 200);
      bytes.set(a, 0);
      bytes.set(a, 200);
      const offsets = Uint32Array.of(0, 200, 400);
      assert.throws(
        () =>
          writer.write(
            bytes,
            offsets,
            Uint32Array.of(a.length, a.length, 0),
            0,
            2,
            Uint16Array.of(100, 0, 0),
            Uint16Array.of(3, 0, 0),
          ),
        /run of entry 0 \(3 packets\)/,
      );
      assert.throws(
        () =>
          writer.write(
            bytes,
            offsets,
            Uint32Array.of(a.length, 30, 0),
            0,
            2,
            Uint16Array.of(100, 0, 0),
            Uint16Array.of(2, 0, 0),
          ),
        /run of entry 0 \(2 packets\)/,
      );
      // Nothing of either went out: the next packet written is the first read.
      const b = tcpPacket({ seq: 2, payload: new Uint8Array(7).fill(1) });
      assert.equal(writer.write(b, Uint32Array.of(0), Uint32Array.of(b.length), 0, 1), 1);
      await until(() => got.length >= 1);
      assert.deepEqual(
        got.map((w) => hex(w.data)),
        [hex(b)],
      );
    },
  );

  it("after many one-packet drains, a burst still arrives whole and in order", TIMEOUT, async (t) => {
    const { writer, got } = pair(t, true);
    const one = (seq: number) => tcpPacket({ seq, payload: new Uint8Array(1000).fill(seq & 255) });
    const send = (packets: Uint8Array[]) => {
      const { bytes, offsets, lengths } = stage(packets);
      assert.equal(writer.write(bytes, offsets, lengths, 0, packets.length), packets.length);
    };
    // Drains of exactly one packet each: the reader then stops after one.
    const want: string[] = [];
    for (let k = 0; k < 20; k++) {
      const q = one(k);
      want.push(hex(q));
      send([q]);
      await until(() => got.length === k + 1);
    }
    for (let round = 0; round < 10; round++) {
      const burst = Array.from({ length: 5 }, (_, k) => one(100 + round * 5 + k));
      want.push(...burst.map(hex));
      send(burst);
      await until(() => got.length === want.length);
    }
    assert.deepEqual(
      got.map((g) => hex(g.data)),
      want,
    );
  });

  it("refuses gsoSize on a packet fd without virtio-net headers", (t) => {
    const [a, b] = loadAddon().socketpair();
    const plain = TunDevice.fromFd(a, "plain");
    t.after(() => {
      plain.close();
      TunDevice.fromFd(b, "other").close();
    });
    assert.throws(
      () => plain.write(new Uint8Array(40), Uint32Array.of(0), Uint32Array.of(40), 0, 1, Uint16Array.of(0)),
      /virtio-net headers/,
    );
  });
});

describe("UDP GSO and GRO on 127.0.0.1", () => {
  function collect(u: UdpTransport) {
    const slots: { data: Uint8Array; segSize: number }[] = [];
    u.start((count) => {
      for (let i = 0; i < count; i++) {
        const at = i * u.rx.slotSize;
        slots.push({
          data: u.rx.bytes.slice(at, at + (u.rx.lengths[i] as number)),
          segSize: u.rx.segSize[i] as number,
        });
      }
    });
    return slots;
  }

  /** The datagrams a list of slots stands for (a GRO slot cut by its segment size). */
  function datagrams(slots: { data: Uint8Array; segSize: number }[]): string[] {
    const out: string[] = [];
    for (const s of slots) {
      const step = s.segSize || s.data.length;
      for (let o = 0; o < s.data.length; o += step) out.push(hex(s.data.subarray(o, o + step)));
    }
    return out;
  }

  function run(count: number, size: number, tail: number) {
    const total = (count - 1) * size + tail;
    const bytes = new Uint8Array(total);
    for (let i = 0; i < total; i++) bytes[i] = (i / size) & 255;
    const expect: string[] = [];
    for (let o = 0; o < total; o += size) expect.push(hex(bytes.subarray(o, Math.min(o + size, total))));
    return { bytes, total, expect };
  }

  it("sends a run as one entry and a GRO socket receives it as one slot with its segment size", TIMEOUT, async (t) => {
    const tx = UdpTransport.bind(LOOPBACK, 0, { offload: true });
    const rx = UdpTransport.bind(LOOPBACK, 0, { offload: true });
    t.after(() => {
      tx.close();
      rx.close();
    });
    assert.equal(tx.gsoMaxSegments, 64);
    assert.equal(rx.gro, true);
    const slots = collect(rx);
    const { bytes, total, expect } = run(10, 100, 50);
    const sent = tx.send(
      bytes,
      Uint32Array.of(0),
      Uint32Array.of(total),
      Uint32Array.of(LOOPBACK),
      Uint16Array.of(rx.localPort),
      0,
      1,
      Uint16Array.of(100),
    );
    assert.equal(sent, 1);
    await until(() => datagrams(slots).length >= 10);
    assert.deepEqual(datagrams(slots), expect);
    assert.ok(slots.length < 10, `GRO kept the run together (${slots.length} slots)`);
    assert.equal(slots[0]?.segSize, 100);
  });

  it(
    "sends a run of datagrams lying apart as one message from its pieces, and apart again when GSO is refused",
    TIMEOUT,
    async (t) => {
      const tx = UdpTransport.bind(LOOPBACK, 0, { offload: true });
      const rx = UdpTransport.bind(LOOPBACK, 0, { offload: true });
      t.after(() => {
        tx.close();
        rx.close();
      });
      const slots = collect(rx);
      // Ten datagrams of 100 bytes (the last 50) stored in reverse, 300 bytes
      // apart: the run is sent in piece order, not arena order.
      const { bytes: data, expect } = run(10, 100, 50);
      const bytes = new Uint8Array(3000);
      const offsets = new Uint32Array(10);
      const lengths = new Uint32Array(10);
      for (let k = 0; k < 10; k++) {
        offsets[k] = (9 - k) * 300;
        lengths[k] = k === 9 ? 50 : 100;
        bytes.set(data.subarray(k * 100, k * 100 + lengths[k]), offsets[k]);
      }
      const pieces = { first: Uint32Array.of(0), count: Uint16Array.of(10), offsets, lengths };
      const send = () =>
        tx.send(
          bytes,
          Uint32Array.of(0),
          Uint32Array.of(950),
          Uint32Array.of(LOOPBACK),
          Uint16Array.of(rx.localPort),
          0,
          1,
          Uint16Array.of(100),
          pieces,
        );
      assert.equal(send(), 1);
      await until(() => datagrams(slots).length >= 10);
      assert.deepEqual(datagrams(slots), expect);
      assert.ok(slots.length < 10, `one GSO message, kept together by GRO (${slots.length} slots)`);
      assert.equal(slots[0]?.segSize, 100);
      injectSendErrors(tx, os.errno.EIO, 1);
      assert.equal(send(), 1);
      await until(() => datagrams(slots).length >= 20);
      assert.deepEqual(datagrams(slots).slice(10), expect);
      assert.equal(tx.gsoFallbacks, 1);
      assert.equal(tx.sendErrors, 0);
      pieces.first[0] = 1;
      assert.throws(send, /pieces of entry 0 lie outside pieces.offsets/);
    },
  );

  it("a socket without GRO receives the datagrams of a run one by one", TIMEOUT, async (t) => {
    const tx = UdpTransport.bind(LOOPBACK, 0, { offload: true });
    const rx = UdpTransport.bind(LOOPBACK, 0);
    t.after(() => {
      tx.close();
      rx.close();
    });
    const slots = collect(rx);
    const { bytes, total, expect } = run(5, 300, 300);
    tx.send(
      bytes,
      Uint32Array.of(0),
      Uint32Array.of(total),
      Uint32Array.of(LOOPBACK),
      Uint16Array.of(rx.localPort),
      0,
      1,
      Uint16Array.of(300),
    );
    await until(() => slots.length >= 5);
    assert.deepEqual(
      slots.map((s) => s.segSize),
      [0, 0, 0, 0, 0],
    );
    assert.deepEqual(datagrams(slots), expect);
  });

  /** Sends one run entry of `r` to port `to` from tx. */
  function sendRun(tx: UdpTransport, r: ReturnType<typeof run>, size: number, to: number): number {
    return tx.send(
      r.bytes,
      Uint32Array.of(0),
      Uint32Array.of(r.total),
      Uint32Array.of(LOOPBACK),
      Uint16Array.of(to),
      0,
      1,
      Uint16Array.of(size),
    );
  }

  it(
    "a run the kernel refuses goes out datagram by datagram, and so do that peer's runs for gsoRetryMs, not others'",
    TIMEOUT,
    async (t) => {
      const tx = UdpTransport.bind(LOOPBACK, 0, { offload: true, gsoRetryMs: 3_600_000 });
      const rxA = UdpTransport.bind(LOOPBACK, 0, { offload: true });
      const rxB = UdpTransport.bind(LOOPBACK, 0, { offload: true });
      t.after(() => {
        tx.close();
        rxA.close();
        rxB.close();
      });
      const slotsA = collect(rxA);
      const slotsB = collect(rxB);
      // More segments than any kernel's UDP_MAX_SEGMENTS: EINVAL.
      const refused = run(300, 10, 10);
      assert.equal(sendRun(tx, refused, 10, rxA.localPort), 1);
      await until(() => datagrams(slotsA).length >= 300);
      assert.deepEqual(datagrams(slotsA), refused.expect);
      assert.equal(tx.gsoFallbacks, 1);
      assert.equal(tx.gsoMaxSegments, 64, "the socket keeps UDP GSO for everyone");
      assert.equal(tx.sendErrors, 0);

      // Another peer's run still leaves as one GSO entry (its receiver's GRO
      // slot says so); A's next run goes out datagram by datagram.
      const small = run(10, 100, 50);
      assert.equal(sendRun(tx, small, 100, rxB.localPort), 1);
      await until(() => datagrams(slotsB).length >= 10);
      assert.deepEqual(datagrams(slotsB), small.expect);
      assert.equal(slotsB[0]?.segSize, 100, "B's run went out as one GSO entry");
      const before = slotsA.length;
      assert.equal(sendRun(tx, small, 100, rxA.localPort), 1);
      await until(() => datagrams(slotsA).length >= 310);
      assert.deepEqual(datagrams(slotsA).slice(300), small.expect);
      assert.ok(
        slotsA.slice(before).every((s) => s.segSize === 0),
        "A's run went out datagram by datagram",
      );
      assert.equal(tx.gsoFallbacks, 1);

      // A later run to A is not consumed (and not a drop) when the kernel is
      // out of memory before its first datagram: it is retried whole.
      const again = run(3, 10, 10);
      injectSendErrors(tx, os.errno.ENOBUFS, 1);
      assert.equal(sendRun(tx, again, 10, rxA.localPort), 0, "nothing consumed");
      assert.equal(tx.sendRetries, 1);
      assert.equal(tx.sendErrors, 0, "not a drop");
      assert.equal(sendRun(tx, again, 10, rxA.localPort), 1, "the retry sends the run");
      await until(() => datagrams(slotsA).length >= 313);
      assert.deepEqual(datagrams(slotsA).slice(310), again.expect);
      assert.equal(tx.sendErrors, 0);
    },
  );

  it("one send of runs to two peers, the first refused, delivers every run to its own peer", TIMEOUT, async (t) => {
    const tx = UdpTransport.bind(LOOPBACK, 0, { offload: true });
    const rxA = UdpTransport.bind(LOOPBACK, 0);
    const rxB = UdpTransport.bind(LOOPBACK, 0);
    t.after(() => {
      tx.close();
      rxA.close();
      rxB.close();
    });
    const slotsA = collect(rxA);
    const slotsB = collect(rxB);
    const refused = run(300, 10, 10);
    const toA = run(4, 10, 10);
    const toB = run(5, 20, 20);
    const bytes = new Uint8Array(refused.total + toA.total + toB.total);
    bytes.set(refused.bytes, 0);
    bytes.set(toA.bytes, refused.total);
    bytes.set(toB.bytes, refused.total + toA.total);
    const sent = tx.send(
      bytes,
      Uint32Array.of(0, refused.total, refused.total + toA.total),
      Uint32Array.of(refused.total, toA.total, toB.total),
      Uint32Array.of(LOOPBACK, LOOPBACK, LOOPBACK),
      Uint16Array.of(rxA.localPort, rxA.localPort, rxB.localPort),
      0,
      3,
      Uint16Array.of(10, 10, 20),
    );
    assert.equal(sent, 3);
    await until(() => slotsA.length >= 304 && slotsB.length >= 5);
    assert.deepEqual(datagrams(slotsA), [...refused.expect, ...toA.expect]);
    assert.deepEqual(datagrams(slotsB), toB.expect);
  });

  it("after gsoRetryMs the peer's runs try UDP GSO again", TIMEOUT, async (t) => {
    const tx = UdpTransport.bind(LOOPBACK, 0, { offload: true, gsoRetryMs: 0 });
    const rx = UdpTransport.bind(LOOPBACK, 0, { offload: true });
    t.after(() => {
      tx.close();
      rx.close();
    });
    const slots = collect(rx);
    assert.equal(sendRun(tx, run(300, 10, 10), 10, rx.localPort), 1);
    await until(() => datagrams(slots).length >= 300);
    assert.equal(tx.gsoFallbacks, 1);
    const before = slots.length;
    const small = run(10, 100, 50);
    assert.equal(sendRun(tx, small, 100, rx.localPort), 1);
    await until(() => datagrams(slots).length >= 310);
    assert.equal(slots[before]?.segSize, 100, "the run went out as one GSO entry again");
    assert.equal(tx.gsoFallbacks, 1);
  });

  it("refuses a gsoRetryMs that is negative, fractional or longer than a day, naming it", () => {
    for (const gsoRetryMs of [-1, 1.5, 86_400_001]) {
      assert.throws(() => UdpTransport.bind(LOOPBACK, 0, { offload: true, gsoRetryMs }), {
        name: "RangeError",
        message: "gsoRetryMs must be an integer in 0..86400000",
      });
    }
  });
});

describe("TUN offloads in a network namespace", () => {
  let ns = "";

  before(async () => {
    ns = await createNetns("gso");
  });

  after(async () => {
    if (ns !== "") await deleteNetns(ns);
  });

  it("keeps the offloads the kernel accepts and drops a flag it refuses", TIMEOUT, async () => {
    const code = `
      import { TunDevice, WANTED_OFFLOADS } from ${JSON.stringify(IO_URL)};
      import { TUN_F } from ${JSON.stringify(NATIVE_URL)};
      const out = {};
      const refused = 1 << 30;
      const t = TunDevice.open("weftoff%d", { vnetHdr: true, offloads: WANTED_OFFLOADS | refused });
      out.gso = t.gso;
      out.refusedKept = (t.offloads & refused) !== 0;
      out.core = (t.offloads & (TUN_F.CSUM | TUN_F.TSO4 | TUN_F.TSO6)) === (TUN_F.CSUM | TUN_F.TSO4 | TUN_F.TSO6);
      out.onlyAsked = (t.offloads & ~WANTED_OFFLOADS) === 0;
      t.close();
      const none = TunDevice.open("weftoff%d", { vnetHdr: true });
      out.none = none.offloads;
      none.close();
      try { TunDevice.open("weftoff%d", { offloads: TUN_F.CSUM }); out.noVnet = "opened"; } catch (e) { out.noVnet = e.message; }
      console.log(JSON.stringify(out));
    `;
    assert.deepEqual(await runModule(["ip", "netns", "exec", ns], code), {
      gso: true,
      refusedKept: false,
      core: true,
      onlyAsked: true,
      none: 0,
      noVnet: "offloads need vnetHdr",
    });
  });

  it(
    "reads TCP super-packets and completed checksums from the kernel, and writes a coalesced one it accepts",
    TIMEOUT,
    async () => {
      // weft plays the peer 10.244.7.7:80 for a kernel TCP socket in the
      // namespace: it answers the SYN, reads the data the socket sends (TSO),
      // and sends three segments back glued into one super-packet.
      const code = `
      import { TunDevice } from ${JSON.stringify(IO_URL)};
      import { Coalescer } from ${JSON.stringify(GRO_URL)};
      import { loadAddon } from ${JSON.stringify(NATIVE_URL)};
      import { execFileSync } from "node:child_process";
      import net from "node:net";
      import dgram from "node:dgram";
      const fail = (e) => { console.log(JSON.stringify({ error: String(e?.stack ?? e) })); process.exit(1); };
      setTimeout(() => fail("timed out"), 30000).unref();
      const ip = (...a) => execFileSync("ip", a);
      function sum(b, from, to, acc) { for (let i = from; i < to; i += 2) acc += (b[i] << 8) | (i + 1 < to ? b[i + 1] : 0); return acc; }
      const fold = (acc) => { while (acc > 0xffff) acc = (acc & 0xffff) + (acc >>> 16); return acc; };
      const l4ok = (p, proto) => { const ihl = (p[0] & 15) * 4, len = (p[2] << 8) | p[3];
        return fold(sum(p, ihl, len, sum(p, 12, 20, proto + len - ihl))) === 0xffff; };
      const PEER = [10, 244, 7, 7], ME = [10, 244, 9, 0];
      function tcp(seq, ack, flags, payload, opts = [], id = 1) {
        const thl = 20 + opts.length, p = new Uint8Array(20 + thl + payload.length), v = new DataView(p.buffer);
        v.setUint8(0, 0x45); v.setUint16(2, p.length); v.setUint16(4, id); v.setUint16(6, 0x4000); v.setUint8(8, 64); v.setUint8(9, 6);
        p.set(PEER, 12); p.set(ME, 16);
        v.setUint16(10, ~fold(sum(p, 0, 20, 0)) & 0xffff);
        v.setUint16(20, 80); v.setUint16(22, clientPort); v.setUint32(24, seq >>> 0); v.setUint32(28, ack >>> 0);
        v.setUint8(32, (thl / 4) << 4); v.setUint8(33, flags); v.setUint16(34, 65535);
        p.set(opts, 40); p.set(payload, 20 + thl);
        v.setUint16(36, ~fold(sum(p, 20, p.length, sum(p, 12, 20, 6 + thl + payload.length))) & 0xffff);
        return p;
      }
      let clientPort = 0;
      try {
        const out = { superPackets: 0, splitOk: true, maxGso: 0 };
        const tun = TunDevice.open("flannel%d", { offload: true, capacity: 16 });
        ip("addr", "add", "10.244.9.0/32", "dev", tun.name);
        ip("link", "set", tun.name, "up");
        ip("route", "add", "10.244.0.0/16", "dev", tun.name);
        const addon = loadAddon();
        const split = new Uint32Array(3);
        let synSeen = null, udpOk = null, dataBytes = 0, clientIsn = 0;
        const send = (p, gso) => tun.write(p, Uint32Array.of(0), Uint32Array.of(p.length), 0, 1, gso === undefined ? undefined : Uint16Array.of(gso));
        const waiters = [];
        const check = () => { for (const w of waiters.splice(0)) w(); };
        const wait = async (cond) => { while (!cond()) await new Promise((r) => waiters.push(r)); };
        tun.start((count) => {
          const { bytes, lengths, slotSize, gsoSize, gsoType } = tun.rx;
          for (let i = 0; i < count; i++) {
            const off = i * slotSize, p = bytes.subarray(off, off + lengths[i]);
            if (p[0] >> 4 !== 4 || p[16] !== 10 || p[18] !== 7) continue;
            if (p[9] === 17) udpOk = l4ok(p, 17);
            if (p[9] !== 6) continue;
            const flags = p[33];
            if (flags & 2) { synSeen = p.slice(); clientPort = (p[20] << 8) | p[21]; clientIsn = new DataView(p.buffer, p.byteOffset).getUint32(24); continue; }
            const len = (p[2] << 8) | p[3];
            if (gsoSize[i] > 0) {
              out.superPackets++;
              out.maxGso = Math.max(out.maxGso, len);
              if (!addon.gsoSplit(bytes, off, len, gsoType[i], gsoSize[i], slotSize, split)) { out.splitOk = false; continue; }
              for (let k = 0; k < split[0]; k++) {
                const s = bytes.subarray(off + k * split[1], off + Math.min((k + 1) * split[1], split[2]));
                if (!l4ok(s, 6)) out.splitOk = false;
                dataBytes += s.length - 40;
              }
            } else {
              if (len > 40 && !l4ok(p, 6)) out.splitOk = false;
              dataBytes += len - 40;
            }
          }
          check();
        });
        const u = dgram.createSocket("udp4");
        u.send(Buffer.alloc(333, 1), 7777, "10.244.7.7");
        const received = [];
        const sock = net.connect({ host: "10.244.7.7", port: 80 });
        sock.on("data", (d) => { received.push(d); check(); });
        sock.on("error", fail);
        await wait(() => synSeen !== null && udpOk !== null);
        out.udpChecksumCompleted = udpOk;
        const ISN = 1000;
        send(tcp(ISN, clientIsn + 1, 0x12, new Uint8Array(0), [2, 4, 5, 0x78]));
        await new Promise((r) => sock.once("connect", r));
        sock.write(Buffer.alloc(200000, 7));
        await wait(() => dataBytes >= 10000);
        out.gotData = dataBytes >= 10000;
        // Three segments from the peer, glued, one write with gsoSize.
        const segs = [0, 1, 2].map((k) => tcp(ISN + 1 + k * 1000, clientIsn + 1, 0x10 | (k === 2 ? 8 : 0), new Uint8Array(1000).fill(65 + k), [], 100 + k));
        const arena = new Uint8Array(65536);
        let at = 0;
        const offsets = new Uint32Array(3), lengths = new Uint32Array(3), gso = new Uint16Array(3);
        segs.forEach((s, k) => { arena.set(s, at); offsets[k] = at; lengths[k] = s.length; at += s.length; });
        out.coalesced = new Coalescer().coalesce(arena, offsets, lengths, gso, 3, 65536);
        out.gso = gso[0];
        out.written = tun.write(arena, offsets, lengths, 0, 1, gso);
        await wait(() => Buffer.concat(received).length >= 3000);
        const all = Buffer.concat(received).toString();
        out.deliveredInOrder = all === "A".repeat(1000) + "B".repeat(1000) + "C".repeat(1000);
        out.writeErrors = tun.writeErrors;
        sock.destroy(); u.close(); tun.close();
        console.log(JSON.stringify(out));
      } catch (e) { fail(e); }
    `;
      const r = (await runModule(["ip", "netns", "exec", ns], code)) as Record<string, unknown>;
      assert.equal(r.error, undefined, String(r.error));
      assert.equal(r.udpChecksumCompleted, true, "UDP checksum completed");
      assert.equal(r.gotData, true);
      assert.ok((r.superPackets as number) > 0, "the kernel handed over TSO super-packets");
      assert.ok((r.maxGso as number) > 1500, "longer than one MTU");
      assert.equal(r.splitOk, true, "every segment carries a valid TCP checksum");
      assert.equal(r.coalesced, 1);
      assert.equal(r.gso, 1000);
      assert.equal(r.written, 1);
      assert.equal(r.deliveredInOrder, true, "the kernel took the super-packet and delivered its bytes in order");
      assert.equal(r.writeErrors, 0);
    },
  );
});

// The addon defends itself against what TypeScript could hand it wrongly:
// packets the engine would never pass to groMerge, a busy-poll window longer
// than the spin may last, and buffers detached (or shrunk) under the raw
// pointers it keeps. Each of these was a hole in the C++ (issue 13).
import assert from "node:assert/strict";
import { describe, it, type TestContext } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { loadAddon, type NativeError, UDP_STATE } from "../dataplane/native/index.js";
import { setBusyPoll, TunDevice, UdpTransport } from "../dataplane/native-io.js";
import { l4Checksum, put16, tcpPacket } from "./helpers/segments.js";

const addon = loadAddon();
const LOOPBACK = 0x7f000001;
const TIMEOUT = { timeout: 30_000 };

/** ES2024's resizable ArrayBuffer (in Node 20; the TypeScript lib here predates it). */
const ResizableArrayBuffer = ArrayBuffer as unknown as new (
  length: number,
  opts: { maxByteLength: number },
) => ArrayBuffer & { resize(length: number): void };

/** Moves the buffer's memory elsewhere: the view `a` now reads as empty. */
function detach(a: ArrayBufferView): void {
  structuredClone(a.buffer, { transfer: [a.buffer as ArrayBuffer] });
}

/** A TCP segment whose data offset says `doff` words, with a TCP checksum that verifies. */
function tcpWithDataOffset(doff: number, seq: number, payload: number): Uint8Array {
  const p = tcpPacket({ seq, payload: new Uint8Array(payload).fill(seq & 255) });
  p[20 + 12] = doff << 4;
  put16(p, 20 + 16, 0);
  put16(p, 20 + 16, l4Checksum(p, 6));
  return p;
}

describe("groMerge checks its own inputs", () => {
  it("merges nothing behind a head whose TCP data offset is below 5", () => {
    for (const doff of [0, 1, 4]) {
      const a = tcpWithDataOffset(doff, 1000, 100);
      const b = tcpWithDataOffset(doff, 1100, 100);
      const bytes = new Uint8Array(a.length + b.length + 4096);
      bytes.set(a, 0);
      bytes.set(b, a.length);
      const before = bytes.slice();
      const lengths = Uint32Array.of(a.length, b.length);
      const merged = addon.groMerge(bytes, Uint32Array.of(0, a.length), lengths, 0, 2, 4096);
      assert.ok(merged < 2, `data offset ${doff}: ${merged} packets merged`);
      assert.equal(lengths[0], a.length);
      assert.deepEqual(bytes, before, `data offset ${doff}: bytes untouched`);
    }
  });

  it("reads nothing past a short follower that ends the buffer (the ASan run checks the reads)", () => {
    for (const doff of [0, 4, 5]) {
      const head = tcpWithDataOffset(doff, 1000, 200);
      // A 20-byte follower: an IP header claiming TCP, nothing after it.
      const tail = head.slice(0, 20);
      put16(tail, 2, 20);
      const bytes = new Uint8Array(head.length + tail.length);
      bytes.set(head, 0);
      bytes.set(tail, head.length);
      const merged = addon.groMerge(
        bytes,
        Uint32Array.of(0, head.length),
        Uint32Array.of(head.length, 20),
        0,
        2,
        head.length,
      );
      assert.ok(merged < 2);
    }
  });
});

describe("busy-poll window", () => {
  it("the addon refuses more than 2000 µs, the spin's cap, with a sentence naming the field", (t) => {
    t.after(() => setBusyPoll(0));
    setBusyPoll(2000);
    for (const us of [2001, 1_000_000]) {
      assert.throws(() => setBusyPoll(us), { name: "RangeError", message: "busyPollUs must be an integer in 0..2000" });
    }
  });
});

describe("detached buffers under the addon's pointers", () => {
  function pair(t: TestContext) {
    const [a, b] = addon.socketpair();
    const reader = TunDevice.fromFd(a, "det-a", { capacity: 4, slotSize: 256 });
    const writer = TunDevice.fromFd(b, "det-b", { capacity: 4, slotSize: 256 });
    t.after(() => {
      reader.close();
      writer.close();
    });
    return { reader, writer };
  }

  it("a write from bound arrays whose buffer was detached throws instead of reading freed memory", TIMEOUT, (t) => {
    const { writer } = pair(t);
    for (const which of ["bytes", "offsets", "lengths"] as const) {
      const arrays = { bytes: new Uint8Array(256), offsets: Uint32Array.of(0), lengths: Uint32Array.of(64) };
      assert.equal(writer.write(arrays.bytes, arrays.offsets, arrays.lengths, 0, 1), 1);
      detach(arrays[which]);
      assert.throws(() => writer.write(arrays.bytes, arrays.offsets, arrays.lengths, 0, 1), {
        code: "ERR_WEFT_DETACHED",
        message: "write: a bound array's buffer was detached or shrunk; the addon no longer uses it",
      });
    }
    // Binding fresh arrays works again.
    const ok = { bytes: new Uint8Array(256), offsets: Uint32Array.of(0), lengths: Uint32Array.of(64) };
    assert.equal(writer.write(ok.bytes, ok.offsets, ok.lengths, 0, 1), 1);
  });

  it("a send from detached bound arrays, or with arena.state detached, throws", TIMEOUT, (t) => {
    const tx = UdpTransport.bind(LOOPBACK, 0);
    t.after(() => tx.close());
    const bytes = new Uint8Array(256);
    const offsets = Uint32Array.of(0);
    const lengths = Uint32Array.of(32);
    const addrs = Uint32Array.of(LOOPBACK);
    const ports = Uint16Array.of(tx.localPort);
    assert.equal(tx.send(bytes, offsets, lengths, addrs, ports, 0, 1), 1);
    detach(addrs);
    assert.throws(() => tx.send(bytes, offsets, lengths, addrs, ports, 0, 1), { code: "ERR_WEFT_DETACHED" });

    const arena = {
      bytes: new Uint8Array(4 * 2048),
      lengths: new Uint32Array(4),
      srcAddr: new Uint32Array(4),
      srcPort: new Uint16Array(4),
      truncated: new Uint8Array(4),
      state: new Uint32Array(UDP_STATE.WORDS),
      slotSize: 2048,
      capacity: 4,
    };
    const raw = new addon.UdpSocket(LOOPBACK, 0, arena, 0);
    t.after(() => raw.close());
    raw.bindSend(bytes, Uint32Array.of(0), lengths, Uint32Array.of(LOOPBACK), Uint16Array.of(raw.localPort));
    assert.equal(raw.send(0, 1), 1);
    detach(arena.state);
    assert.throws(() => raw.send(0, 1), {
      code: "ERR_WEFT_DETACHED",
      message: "send: arena.state's buffer was detached or shrunk; the addon no longer uses it",
    });
  });

  it("a detached or shrunk receive arena stops reading with an error and delivers no batch", TIMEOUT, async (t) => {
    for (const how of ["detach", "shrink"] as const) {
      const { reader, writer } = pair(t);
      const errors: NativeError[] = [];
      let batches = 0;
      if (how === "detach") detach(reader.rx.lengths);
      reader.start(
        () => batches++,
        (err) => errors.push(err),
      );
      const s = { bytes: new Uint8Array(64), offsets: Uint32Array.of(0), lengths: Uint32Array.of(64) };
      if (how === "shrink") {
        // A resizable buffer bound as a packet fd's arena, then shrunk.
        const buffer = new ResizableArrayBuffer(4 * 256, { maxByteLength: 4 * 256 });
        const [a, b] = addon.socketpair();
        const bytes = new Uint8Array(buffer, 0, 4 * 256);
        const raw = new addon.PacketFd(a, bytes, new Uint32Array(4), 256, 4);
        const w = TunDevice.fromFd(b, "det-c", { capacity: 4, slotSize: 256 });
        t.after(() => {
          raw.close();
          w.close();
        });
        raw.start(
          () => batches++,
          (err) => errors.push(err as NativeError),
        );
        buffer.resize(16);
        w.write(s.bytes, s.offsets, s.lengths, 0, 1);
      } else {
        writer.write(s.bytes, s.offsets, s.lengths, 0, 1);
      }
      for (let i = 0; i < 400 && errors.length === 0; i++) await sleep(5);
      assert.equal(batches, 0, how);
      assert.equal(errors.length, 1, how);
      assert.equal(errors[0]?.code, "ERR_WEFT_DETACHED", how);
      assert.equal(
        errors[0]?.message,
        "read: the receive arena's buffer was detached or shrunk; the addon no longer uses it",
      );
    }
  });
});

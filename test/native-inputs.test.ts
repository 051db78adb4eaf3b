// The addon defends itself against what TypeScript could hand it wrongly:
// packets the engine would never pass to groMerge, a busy-poll window longer
// than the spin may last, and buffers detached (or shrunk) under the raw
// pointers it keeps. Each of these was a hole in the C++ (issue 13).
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { setBusyPoll } from "../dataplane/io.js";
import { loadAddon } from "../dataplane/native/index.js";
import { l4Checksum, put16, tcpPacket } from "./helpers/segments.js";

const addon = loadAddon();
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


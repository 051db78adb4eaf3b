// The adaptive busy-poll window (dataplane/native/busy_poll.h) over a fake
// clock: the addon's busyPollTrace runs a fresh policy over a script of wakes
// (a batch arriving through the event loop), run-outs (a spin that found
// nothing) and capped spins, and returns the window chosen at each wake.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { closeSync, readFileSync, readSync, writeFileSync, writeSync } from "node:fs";
import { describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { loadAddon } from "../dataplane/native/index.js";
import { busyPollStats, setBusyPoll, TunDevice, UdpTransport } from "../dataplane/native-io.js";

const US = 1000;
const MS = 1000 * US;
const START = 50 * US;
const MAX = 200 * US;

type Step = ["wake", number] | ["ranOut", number, number] | ["capped", number, number];

function trace(steps: Step[], opts: { adaptive?: boolean; fixedUs?: number; duty?: number } = {}): number[] {
  const flat: number[] = [];
  for (const s of steps) {
    if (s[0] === "wake") flat.push(0, s[1], 0);
    else flat.push(s[0] === "ranOut" ? 1 : 2, s[1], s[2]);
  }
  return loadAddon().busyPollTrace(opts.adaptive ?? true, opts.fixedUs ?? 0, opts.duty ?? 50, flat);
}

/**
 * A conversation: each wake comes `gap` after the previous spin ran out, and
 * each spin runs its whole window (nothing caught). Returns the windows.
 */
function conversation(gaps: number[], opts?: { duty?: number }): number[] {
  const steps: Step[] = [];
  let t = 1 * MS;
  const windows: number[] = [];
  // Replays one step at a time, since each run-out depends on the window chosen.
  for (const gap of gaps) {
    t += gap;
    steps.push(["wake", t]);
    const w = trace(steps, opts).at(-1) as number;
    windows.push(w);
    t += w;
    steps.push(["ranOut", t, w]);
  }
  return windows;
}

describe("adaptive busy-poll window", () => {
  it("never spins while idle: a first packet and packets far apart get no window", () => {
    assert.deepEqual(conversation([0, 150 * MS, 300 * MS, 1000 * MS]), [0, 0, 0, 0]);
  });

  it("starts at 50 µs when a packet comes soon after the last, and doubles up to 200 µs while packets just miss it", () => {
    assert.deepEqual(conversation([0, 60 * US, 30 * US, 30 * US, 30 * US, 30 * US]), [
      0,
      START,
      2 * START,
      MAX,
      MAX,
      MAX,
    ]);
  });

  it("halves after a long wait, down to nothing below 10 µs", () => {
    const w = conversation([0, 10 * US, 10 * US, 10 * US, 1 * MS, 1 * MS, 1 * MS, 1 * MS, 1 * MS, 1 * MS]);
    assert.deepEqual(w, [0, START, 100 * US, MAX, 100 * US, 50 * US, 25 * US, 12.5 * US, 0, 0]);
  });

  it("drops to zero at once after an idle gap of 100 ms", () => {
    const w = conversation([0, 10 * US, 10 * US, 10 * US, 100 * MS]);
    assert.deepEqual(w, [0, START, 100 * US, MAX, 0]);
  });

  it("a spin that caught traffic until its cap keeps the window", () => {
    const steps: Step[] = [
      ["wake", 1 * MS],
      ["ranOut", 1 * MS, 0],
      ["wake", 1 * MS + 20 * US],
      ["capped", 3 * MS, 10 * US],
      ["wake", 50 * MS],
    ];
    assert.deepEqual(trace(steps), [0, START, START]);
  });

  it("the duty cap stops spinning once the period's share is spent, and allows it again in the next period", () => {
    // 10 % of a 100 ms period is 10 ms of waiting: 50 spins of 200 µs.
    const steps: Step[] = [];
    let t = 1 * MS;
    steps.push(["wake", t], ["ranOut", t, 0]);
    const windows: number[] = [];
    for (let i = 0; i < 80; i++) {
      t += 20 * US;
      steps.push(["wake", t]);
      const w = trace(steps, { duty: 10 }).at(-1) as number;
      windows.push(w);
      t += w;
      steps.push(["ranOut", t, w]);
    }
    const waited = windows.reduce((a, b) => a + b, 0);
    assert.ok(waited <= 10 * MS + MAX, `waited ${waited / MS} ms in one period`);
    assert.ok(windows.some((w) => w === 0) && windows.at(-1) === 0, "spinning stopped within the period");
    // The next period: the window comes back.
    t += 100 * MS;
    steps.push(["wake", t]);
    // After a 100 ms gap the window is zero (idle); a quick second packet grows it again.
    steps.push(["ranOut", t, 0], ["wake", t + 20 * US]);
    assert.equal(trace(steps, { duty: 10 }).at(-1), START);
  });

  it("a fixed window (--busy-poll-us) is used as given, adaptive or not, and 0 without adaptation is off", () => {
    const steps: Step[] = [
      ["wake", 1 * MS],
      ["ranOut", 1 * MS + 100 * US, 100 * US],
      ["wake", 900 * MS],
    ];
    assert.deepEqual(trace(steps, { fixedUs: 100 }), [100 * US, 100 * US]);
    assert.deepEqual(trace(steps, { adaptive: false, fixedUs: 100 }), [100 * US, 100 * US]);
    assert.deepEqual(
      trace(
        [
          ["wake", 1 * MS],
          ["ranOut", 1 * MS, 0],
          ["wake", 1 * MS + 10 * US],
        ],
        { adaptive: false },
      ),
      [0, 0],
    );
  });
});

/** Deterministic contents: packet `seq` of `len` bytes, seq in the first four. */
function numbered(seq: number, len: number): Buffer {
  const p = Buffer.alloc(len);
  p.writeUInt32BE(seq, 0);
  for (let k = 4; k < len; k++) p[k] = (seq * 7 + k * 13) & 255;
  return p;
}

/** Every queued record of a non-blocking packet socket fd. */
function readAll(fd: number): Buffer[] {
  const out: Buffer[] = [];
  const buf = Buffer.alloc(2048);
  for (;;) {
    try {
      const n = readSync(fd, buf);
      out.push(Buffer.from(buf.subarray(0, n)));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "EAGAIN") return out;
      throw err;
    }
  }
}

// The follow-up read (busy_poll.h): after a batch wrote to a device, the
// device is read at once, since the pod's reply is made inside the write. Here
// a "pod" end of a socketpair has its replies queued before each write, so
// every follow-up can find them; some requests get no reply (a miss), some
// several (the drain stops early after one small packet, and the rest must
// come through the next loop turn).
describe("follow-up reads after a device write", () => {
  const variants = [
    { busyUs: 0, loopWait: true },
    { busyUs: 50, loopWait: true },
    { busyUs: 0, loopWait: false },
    { busyUs: 50, loopWait: true, ring: true },
  ];
  for (const { busyUs, loopWait, ring = false } of variants) {
    const name = `busy poll ${busyUs} µs${ring ? " on the io_uring ring" : ""}, ${loopWait ? "" : "no "}wait on the loop's epoll set`;
    it(`deliver every reply once and in order, and timers still fire (${name})`, { timeout: 60_000 }, async (t) => {
      const addon = loadAddon();
      assert.equal(setBusyPoll(busyUs, { loopWait, ring }), null);
      let ticks = 0;
      const ticker = setInterval(() => ticks++, 2);
      const [devFd, podFd] = addon.socketpair();
      const [srcFd, feedFd] = addon.socketpair();
      const dev = TunDevice.fromFd(devFd, "dev", { capacity: 16, slotSize: 256 });
      const src = TunDevice.fromFd(srcFd, "src", { capacity: 16, slotSize: 256 });
      t.after(() => {
        clearInterval(ticker);
        setBusyPoll(0);
        dev.close();
        src.close();
        closeSync(podFd);
        closeSync(feedFd);
      });
      const before = addon.busyPollStats();
      const replies: number[] = [];
      const atPod: number[] = [];
      let expected = 0;
      let replySeq = 0;
      dev.start((count) => {
        const { bytes, slotSize } = dev.rx;
        for (let i = 0; i < count; i++)
          replies.push(Buffer.from(bytes.buffer, bytes.byteOffset + i * slotSize).readUInt32BE(0));
      });
      src.start((count) => {
        const { bytes, lengths, slotSize } = src.rx;
        for (let i = 0; i < count; i++) {
          const off = i * slotSize;
          const req = Buffer.from(bytes.subarray(off, off + (lengths[i] as number)));
          const seq = req.readUInt32BE(0);
          for (const p of readAll(podFd)) atPod.push(p.readUInt32BE(0));
          // The pod answers request seq with seq % 4 replies (0..3), queued
          // before the write returns, as a kernel-made reply would be.
          for (let r = 0; r < seq % 4; r++) {
            writeSync(podFd, numbered(replySeq++, 64 + ((seq * 31) % 180)));
            expected++;
          }
          const s = { bytes: new Uint8Array(req), offsets: Uint32Array.of(0), lengths: Uint32Array.of(req.length) };
          assert.equal(dev.write(s.bytes, s.offsets, s.lengths, 0, 1), 1);
        }
      });
      const total = 400;
      for (let seq = 0; seq < total; seq++) {
        writeSync(feedFd, numbered(seq, 80));
        // Mostly one request per wake-up with a quiet spell between, now and
        // then a burst.
        if (seq % 25 !== 0) await sleep(seq % 3 === 0 ? 1 : 0);
      }
      const deadline = Date.now() + 20_000;
      while ((replies.length < expected || atPod.length < total) && Date.now() < deadline) {
        await sleep(5);
        for (const p of readAll(podFd)) atPod.push(p.readUInt32BE(0));
      }
      assert.deepEqual(
        replies,
        Array.from({ length: expected }, (_, i) => i),
      );
      assert.deepEqual(
        atPod,
        Array.from({ length: total }, (_, i) => i),
      );
      const after = addon.busyPollStats();
      assert.ok(after.followUpHits > before.followUpHits, "some follow-up reads found the reply");
      assert.ok(after.followUps > after.followUpHits, "and some found nothing");
      // Replies left queued by a drain that stopped after one small packet
      // (a conversation) are caught by the thread's own sleep on the loop's
      // epoll set, unless a spin got them first or the wait is off.
      if (loopWait && busyUs === 0) assert.ok(after.waitsCaught > before.waitsCaught, "a wait caught a batch");
      if (!loopWait) assert.equal(after.waits, before.waits);
      assert.equal(after.ring, ring);
      if (ring) assert.ok(after.ringArms > before.ringArms, "spins armed io_uring polls");
      assert.ok(ticks > 0, "a 2 ms interval fired during the exchange");
    });
  }
});

// --busy-poll-ring (poll_ring.h): readiness through io_uring polls. An armed
// poll holds its file, so closing a source must cancel it; where io_uring is
// refused the spins keep their epoll set.
describe("a fixed busy-poll window, on epoll and on the io_uring ring", () => {
  for (const ring of [false, true]) {
    it(`catches a datagram queued after the batch, spins its whole window, and closing the socket frees the port${ring ? " (ring)" : ""}`, {
      timeout: 30_000,
    }, async (t) => {
      assert.equal(setBusyPoll(200, { ring }), null);
      t.after(() => setBusyPoll(0));
      const LOOPBACK = 0x7f000001;
      const rx = UdpTransport.bind(LOOPBACK, 0, { capacity: 4 });
      const tx = UdpTransport.bind(LOOPBACK, 0, { capacity: 4 });
      t.after(() => tx.close());
      const port = rx.localPort;
      const payload = new Uint8Array(64);
      const sendOne = () =>
        tx.send(payload, Uint32Array.of(0), Uint32Array.of(64), Uint32Array.of(LOOPBACK), Uint16Array.of(port), 0, 1);
      let got = 0;
      rx.start((count) => {
        // The first batch queues a second datagram (loopback delivers it
        // inside the send): the spin after this batch finds it through the
        // poll it arms, which completes at once on a readable socket.
        if (got === 0) sendOne();
        got += count;
      });
      const before = busyPollStats();
      sendOne();
      for (let i = 0; i < 100 && got < 2; i++) await sleep(10);
      assert.equal(got, 2);
      const after = busyPollStats();
      if (ring) assert.ok(after.ringArms > before.ringArms, "a ring poll was armed");
      assert.ok(after.caught > before.caught, "a spin caught the second datagram");
      // Nothing came after it: the spin waited out its whole 200 µs window.
      assert.ok(after.waitedNs - before.waitedNs >= 200_000, `waited ${after.waitedNs - before.waitedNs} ns`);
      // The spin that ran out left the socket's poll armed; the poll holds the
      // socket's file, so closing must cancel it or the port stays bound.
      rx.close();
      await sleep(10); // the fd itself closes on the next loop turn (uv_close)
      const again = UdpTransport.bind(LOOPBACK, port, { capacity: 4 });
      assert.equal(again.localPort, port);
      again.close();
    });
  }

  it("where io_uring is refused, says why and keeps polling through epoll", { timeout: 30_000 }, () => {
    const sysctl = "/proc/sys/kernel/io_uring_disabled";
    const saved = readFileSync(sysctl, "utf8").trim();
    // A fresh process: this one's spinner already holds a ring.
    const script = `
      const { setBusyPoll, busyPollStats } = await import(${JSON.stringify(new URL("../dataplane/native-io.js", import.meta.url).href)});
      const err = setBusyPoll(50, { ring: true });
      console.log(JSON.stringify({ err, ring: busyPollStats().ring }));`;
    writeFileSync(sysctl, "2");
    let out: string;
    try {
      out = execFileSync(process.execPath, ["--input-type=module", "-e", script], { encoding: "utf8" });
    } finally {
      writeFileSync(sysctl, saved);
    }
    const r = JSON.parse(out) as { err: string | null; ring: boolean };
    assert.equal(r.ring, false);
    assert.match(r.err ?? "", /^io_uring_setup failed: EPERM$/);
  });
});

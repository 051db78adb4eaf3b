// The native addon through its typed wrappers (dataplane/native-io.ts): batching,
// backpressure and lifecycle over a SOCK_SEQPACKET socketpair, UDP batches on
// loopback, a real TUN inside a network namespace, and sd_notify.
import assert from "node:assert/strict";
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { constants as os, tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it, type TestContext } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import { engineOver, FakeDevice } from "../dataplane/fake-io.js";
import { LeaseTable } from "../dataplane/leases.js";
import { loadAddon, type NativeError, UDP_STATE } from "../dataplane/native/index.js";
import { setBusyPoll, TunDevice, UdpTransport } from "../dataplane/native-io.js";
import { type Ipv4Prefix, parsePrefix } from "../net/addr.js";
import { createNetns, deleteNetns, nsExec } from "./helpers/netns.js";
import { udpPacket } from "./helpers/packets.js";
import { stage } from "./helpers/segments.js";
import { injectSendErrors } from "./helpers/send-errors.js";

const execFileAsync = promisify(execFile);
const IO_URL = new URL("../dataplane/native-io.js", import.meta.url).href;
const NATIVE_URL = new URL("../dataplane/native/index.js", import.meta.url).href;
const LOOPBACK = 0x7f000001;
const ENOBUFS = os.errno.ENOBUFS;

/** Deterministic, index-dependent packet contents. */
function packet(i: number, len: number): Uint8Array {
  const p = new Uint8Array(len);
  for (let k = 0; k < len; k++) p[k] = (i * 7 + k * 13 + 1) & 255;
  return p;
}

/** Resolves when `ready()` holds, checked after every notify(). */
class Waiter {
  private waiting: { ready: () => boolean; resolve: () => void }[] = [];

  until(ready: () => boolean): Promise<void> {
    if (ready()) return Promise.resolve();
    return new Promise((resolve) => this.waiting.push({ ready, resolve }));
  }

  notify(): void {
    this.waiting = this.waiting.filter((w) => {
      if (!w.ready()) return true;
      w.resolve();
      return false;
    });
  }
}

/** Records every batch a device delivers (copies, since the arena is reused). */
function collect(dev: TunDevice) {
  const batches: number[] = [];
  const packets: Uint8Array[] = [];
  const waiter = new Waiter();
  dev.start((count) => {
    batches.push(count);
    const { bytes, lengths, slotSize } = dev.rx;
    for (let i = 0; i < count; i++) packets.push(bytes.slice(i * slotSize, i * slotSize + (lengths[i] as number)));
    waiter.notify();
  });
  return { batches, packets, received: (n: number) => waiter.until(() => packets.length >= n) };
}

interface Datagram {
  payload: Uint8Array;
  length: number;
  srcAddr: number;
  srcPort: number;
  truncated: number;
}

function collectDatagrams(t: UdpTransport) {
  const batches: number[] = [];
  const datagrams: Datagram[] = [];
  const waiter = new Waiter();
  t.start((count) => {
    batches.push(count);
    const { bytes, lengths, slotSize, srcAddr, srcPort, truncated } = t.rx;
    for (let i = 0; i < count; i++) {
      const length = lengths[i] as number;
      const start = i * slotSize;
      datagrams.push({
        payload: bytes.slice(start, start + Math.min(length, slotSize)),
        length,
        srcAddr: srcAddr[i] as number,
        srcPort: srcPort[i] as number,
        truncated: truncated[i] as number,
      });
    }
    waiter.notify();
  });
  return { batches, datagrams, received: (n: number) => waiter.until(() => datagrams.length >= n) };
}

function socketpairDevices(t: TestContext, opts: { capacity: number; slotSize: number }) {
  const [a, b] = loadAddon().socketpair();
  const reader = TunDevice.fromFd(a, "pair-a", opts);
  const writer = TunDevice.fromFd(b, "pair-b", opts);
  t.after(() => {
    reader.close();
    writer.close();
  });
  return { reader, writer };
}

function udp(t: TestContext, opts: { capacity?: number; slotSize?: number; bufferBytes?: number } = {}): UdpTransport {
  const u = UdpTransport.bind(LOOPBACK, 0, opts);
  t.after(() => u.close());
  return u;
}

/** Two loopback sockets and three packets staged for sending from one to the other. */
function threeToReceiver(t: TestContext) {
  const sender = udp(t);
  const receiver = udp(t);
  const sent = [packet(0, 10), packet(1, 11), packet(2, 12)];
  return {
    sender,
    receiver,
    got: collectDatagrams(receiver),
    sent,
    s: stage(sent),
    dstAddr: new Uint32Array(3).fill(LOOPBACK),
  };
}

/** Runs an ES module snippet in a fresh node; resolves to its parsed JSON stdout. */
async function runModule(prefix: string[], code: string): Promise<unknown> {
  const [cmd, ...args] = [...prefix, process.execPath, "--input-type=module", "-e", code];
  const { stdout } = await execFileAsync(cmd as string, args, { timeout: 60_000, killSignal: "SIGKILL" });
  return JSON.parse(stdout);
}

const TIMEOUT = { timeout: 60_000 };

describe("packet fd over a SOCK_SEQPACKET socketpair", () => {
  it("delivers queued packets in order, at most capacity per batch, with one call per batch", TIMEOUT, async (t) => {
    const { reader, writer } = socketpairDevices(t, { capacity: 64, slotSize: 256 });
    const sent = Array.from({ length: 200 }, (_, i) => packet(i, i === 0 ? 1 : i === 1 ? 256 : 1 + ((i * 37) % 64)));
    const s = stage(sent);
    assert.equal(writer.write(s.bytes, s.offsets, s.lengths, 0, sent.length), 200, "all 200 fit in the socket buffer");

    const got = collect(reader);
    await got.received(200);
    assert.deepEqual(got.batches, [64, 64, 64, 8]);
    assert.equal(got.packets.length, 200);
    assert.deepEqual(got.packets, sent);
    assert.equal(reader.truncatedDrops, 0);
    assert.equal(writer.writeErrors, 0);
  });

  it("writes from `start`, one packet per write", TIMEOUT, async (t) => {
    const { reader, writer } = socketpairDevices(t, { capacity: 8, slotSize: 64 });
    const sent = Array.from({ length: 6 }, (_, i) => packet(i, 10 + i));
    const s = stage(sent);
    assert.equal(writer.write(s.bytes, s.offsets, s.lengths, 2, 3), 3);
    const got = collect(reader);
    await got.received(3);
    assert.deepEqual(got.packets, sent.slice(2, 5));
  });

  it("returns a short count on EAGAIN and fires onWritable once the reader drains", TIMEOUT, async (t) => {
    const { reader, writer } = socketpairDevices(t, { capacity: 64, slotSize: 256 });
    const total = 3000;
    const sent = Array.from({ length: total }, (_, i) => packet(i, 256));
    const s = stage(sent);
    let written = writer.write(s.bytes, s.offsets, s.lengths, 0, total);
    assert.ok(written > 0 && written < total, `first write is short: ${written} of ${total}`);

    let wakeups = 0;
    const allWritten = new Promise<void>((resolve) => {
      const retry = () => {
        wakeups++;
        written += writer.write(s.bytes, s.offsets, s.lengths, written, total - written);
        if (written < total) writer.onWritable(retry);
        else resolve();
      };
      writer.onWritable(retry);
    });
    const got = collect(reader);
    await allWritten;
    await got.received(total);
    assert.ok(wakeups >= 1);
    assert.ok(got.batches.every((n) => n >= 1 && n <= 64));
    assert.equal(got.packets.length, total);
    assert.deepEqual(got.packets, sent);
    assert.equal(writer.writeErrors, 0);
  });

  it("stops delivering while paused and delivers again after resume", TIMEOUT, async (t) => {
    const { reader, writer } = socketpairDevices(t, { capacity: 16, slotSize: 64 });
    const got = collect(reader);
    reader.pause();
    const sent = Array.from({ length: 10 }, (_, i) => packet(i, 20));
    const s = stage(sent);
    assert.equal(writer.write(s.bytes, s.offsets, s.lengths, 0, 10), 10);
    await sleep(100);
    assert.deepEqual(got.batches, []);
    reader.resume();
    await got.received(10);
    assert.deepEqual(got.packets, sent);
  });

  it(
    "fills every slot of a fresh arena to its last byte, in order (arena pages are mapped on first write)",
    TIMEOUT,
    async (t) => {
      // The arena is not touched at start-up: the kernel's first write into a
      // slot is what maps its pages, so every byte of every slot must arrive.
      const slotSize = 8192;
      const { reader, writer } = socketpairDevices(t, { capacity: 8, slotSize });
      assert.ok(
        reader.rx.bytes.every((b) => b === 0),
        "a fresh arena reads as zeros",
      );
      const sent = Array.from({ length: 16 }, (_, i) => packet(i, slotSize));
      const s = stage(sent);
      const got = collect(reader);
      let written = 0;
      while (written < sent.length) {
        written += writer.write(s.bytes, s.offsets, s.lengths, written, sent.length - written);
        if (written < sent.length) await new Promise<void>((resolve) => writer.onWritable(resolve));
      }
      await got.received(16);
      assert.deepEqual(got.packets, sent);
      assert.ok(
        got.batches.every((n) => n <= 8),
        `batches ${got.batches.join(",")}`,
      );
      assert.equal(reader.truncatedDrops, 0);
    },
  );

  it("drops and counts a packet longer than the slot", TIMEOUT, async (t) => {
    const { reader, writer } = socketpairDevices(t, { capacity: 8, slotSize: 64 });
    const sent = [packet(0, 65), packet(1, 64)];
    const s = stage(sent);
    assert.equal(writer.write(s.bytes, s.offsets, s.lengths, 0, 2), 2);
    const got = collect(reader);
    await got.received(1);
    assert.deepEqual(got.packets, [sent[1]]);
    assert.equal(reader.truncatedDrops, 1);
  });

  it("counts a refused write as a write error and consumes the packet", TIMEOUT, async (t) => {
    const { reader, writer } = socketpairDevices(t, { capacity: 8, slotSize: 64 });
    reader.close();
    await sleep(50); // the fd closes in the poll handle's close callback
    const s = stage([packet(0, 8), packet(1, 8)]);
    assert.equal(writer.write(s.bytes, s.offsets, s.lengths, 0, 2), 2);
    assert.equal(writer.writeErrors, 2); // EPIPE, never SIGPIPE
  });

  it("rejects a batch that reaches outside its arrays", TIMEOUT, (t) => {
    const { writer } = socketpairDevices(t, { capacity: 8, slotSize: 64 });
    const s = stage([packet(0, 8)]);
    assert.throws(() => writer.write(s.bytes, s.offsets, s.lengths, 0, 2), RangeError);
    assert.throws(() => writer.write(s.bytes, s.offsets, Uint32Array.of(9), 0, 1), RangeError);
  });

  it("writes from whichever arrays each call names, reading their contents at the call", TIMEOUT, async (t) => {
    // The addon binds the arrays of a write and reuses them while the next
    // write names the same ones: alternating sets must each be rebound, and
    // a bound set rewritten in place must be read afresh.
    const { reader, writer } = socketpairDevices(t, { capacity: 16, slotSize: 64 });
    const got = collect(reader);
    const a = stage([packet(0, 10), packet(1, 11), packet(2, 12)]);
    const b = stage([packet(3, 13), packet(4, 14)]);
    assert.equal(writer.write(a.bytes, a.offsets, a.lengths, 0, 2), 2);
    assert.equal(writer.write(b.bytes, b.offsets, b.lengths, 0, 2), 2);
    assert.equal(writer.write(a.bytes, a.offsets, a.lengths, 2, 1), 1);
    a.bytes.set(packet(5, 10), 0);
    a.lengths[0] = 7;
    assert.equal(writer.write(a.bytes, a.offsets, a.lengths, 0, 1), 1);
    await got.received(6);
    assert.deepEqual(got.packets, [
      packet(0, 10),
      packet(1, 11),
      packet(3, 13),
      packet(4, 14),
      packet(2, 12),
      packet(5, 10).subarray(0, 7),
    ]);
  });

  it("the addon refuses a write before any arrays were bound, naming the call", TIMEOUT, (t) => {
    const [a, b] = loadAddon().socketpair();
    const arena = { bytes: new Uint8Array(64), lengths: new Uint32Array(1) };
    const fd = new (loadAddon().PacketFd)(a, arena.bytes, arena.lengths, 64, 1);
    const peer = TunDevice.fromFd(b, "pair-b", { capacity: 1, slotSize: 64 });
    t.after(() => {
      fd.close();
      peer.close();
    });
    assert.throws(() => fd.write(0, 0), { message: "write before its arrays were bound" });
    assert.throws(() => fd.bindWrite(arena.bytes, new Uint16Array(1) as never, arena.lengths), {
      name: "TypeError",
      message: "offsets must be a Uint32Array",
    });
    assert.throws(
      () => fd.write(0, 0),
      { message: "write before its arrays were bound" },
      "a refused bind binds nothing",
    );
  });

  it("reports the peer's close as an EOF error and stops reading", TIMEOUT, async (t) => {
    const { reader, writer } = socketpairDevices(t, { capacity: 8, slotSize: 64 });
    const errors: NativeError[] = [];
    const waiter = new Waiter();
    reader.onError((err) => {
      errors.push(err);
      waiter.notify();
    });
    const got = collect(reader);
    const s = stage([packet(0, 5)]);
    writer.write(s.bytes, s.offsets, s.lengths, 0, 1);
    writer.close();
    await waiter.until(() => errors.length > 0);
    assert.deepEqual(got.packets, [packet(0, 5)]);
    assert.equal(errors.length, 1);
    assert.equal(errors[0]?.code, "EOF");
    assert.equal(errors[0]?.syscall, "recv");
    assert.equal(errors[0]?.message, "recv: end of stream");
    await sleep(50);
    assert.equal(errors.length, 1, "no further reads after the error");
  });

  it("close is idempotent, stops callbacks, and later calls throw EBADF", TIMEOUT, async (t) => {
    const { reader, writer } = socketpairDevices(t, { capacity: 8, slotSize: 64 });
    const got = collect(reader);
    reader.close();
    reader.close();
    assert.equal(reader.closed, true);
    const s = stage([packet(0, 5), packet(1, 6)]);
    writer.write(s.bytes, s.offsets, s.lengths, 0, 2);
    await sleep(100);
    assert.deepEqual(got.batches, []);
    const ebadf = { code: "EBADF" };
    assert.throws(() => reader.write(s.bytes, s.offsets, s.lengths, 0, 1), ebadf);
    assert.throws(() => reader.start(() => {}), ebadf);
    assert.throws(() => reader.onWritable(() => {}), ebadf);
    reader.pause();
    reader.resume();
  });

  it("close inside onBatch ends delivery after that batch", TIMEOUT, async (t) => {
    const { reader, writer } = socketpairDevices(t, { capacity: 4, slotSize: 64 });
    const s = stage(Array.from({ length: 10 }, (_, i) => packet(i, 9)));
    assert.equal(writer.write(s.bytes, s.offsets, s.lengths, 0, 10), 10);
    const batches: number[] = [];
    reader.start((count) => {
      batches.push(count);
      reader.close();
    });
    await sleep(100);
    assert.deepEqual(batches, [4]);
  });

  it(
    "runs nextTicks and microtasks after each batch, and a throwing onBatch is an uncaught exception",
    TIMEOUT,
    async () => {
      const code = `
      import { TunDevice } from ${JSON.stringify(IO_URL)};
      import { loadAddon } from ${JSON.stringify(NATIVE_URL)};
      setTimeout(() => { console.log(JSON.stringify({ error: "timed out" })); process.exit(1); }, 20000).unref();
      const [a, b] = loadAddon().socketpair();
      const reader = TunDevice.fromFd(a, "a", { capacity: 4, slotSize: 64 });
      const writer = TunDevice.fromFd(b, "b", { capacity: 4, slotSize: 64 });
      const one = () => writer.write(Uint8Array.of(1, 2, 3), Uint32Array.of(0), Uint32Array.of(3), 0, 1);
      const order = [];
      let batches = 0;
      process.on("uncaughtException", (err) => {
        order.push("uncaught: " + err.message);
        reader.close();
        writer.close();
        console.log(JSON.stringify(order));
      });
      reader.start((count) => {
        order.push("batch " + count);
        if (++batches === 1) {
          process.nextTick(() => order.push("tick"));
          queueMicrotask(() => order.push("microtask"));
          setImmediate(() => { order.push("immediate"); one(); });
          return;
        }
        throw new Error("boom from onBatch");
      });
      one();
    `;
      assert.deepEqual(await runModule([], code), [
        "batch 1",
        "tick",
        "microtask",
        "immediate",
        "batch 1",
        "uncaught: boom from onBatch",
      ]);
    },
  );
});

describe("busy polling", () => {
  /** Order of events when a batch's callback makes the next batch ready at once. */
  async function order(t: TestContext, busyPollUs: number): Promise<string[]> {
    setBusyPoll(busyPollUs);
    t.after(() => setBusyPoll(0));
    const { reader, writer } = socketpairDevices(t, { capacity: 8, slotSize: 64 });
    const marks: string[] = [];
    const s = stage([packet(0, 10), packet(1, 10)]);
    let done: () => void = () => {};
    const finished = new Promise<void>((resolve) => {
      done = resolve;
    });
    let batch = 0;
    reader.start(() => {
      batch++;
      marks.push(`batch ${batch}`);
      if (batch === 1) {
        setImmediate(() => marks.push("immediate"));
        writer.write(s.bytes, s.offsets, s.lengths, 1, 1);
      } else setImmediate(done);
    });
    writer.write(s.bytes, s.offsets, s.lengths, 0, 1);
    await finished;
    await new Promise((resolve) => setImmediate(resolve));
    return marks;
  }

  it("off (the default): the next batch waits for the next turn of the event loop", TIMEOUT, async (t) => {
    assert.deepEqual(await order(t, 0), ["batch 1", "immediate", "batch 2"]);
  });

  it("on: a batch that becomes ready within the window is handled before the loop moves on", TIMEOUT, async (t) => {
    assert.deepEqual(await order(t, 1000), ["batch 1", "batch 2", "immediate"]);
  });

  it("refuses a window longer than the spin's 2 ms cap", (t) => {
    t.after(() => setBusyPoll(0));
    assert.throws(() => setBusyPoll(2001), RangeError);
  });
});

describe("UDP transport on 127.0.0.1", () => {
  it("binds port 0 to a real port and sends a batch with a destination per datagram", TIMEOUT, async (t) => {
    const sender = udp(t);
    const r1 = udp(t);
    const r2 = udp(t);
    assert.ok(sender.localPort > 0 && r1.localPort > 0 && r2.localPort > 0);
    const got1 = collectDatagrams(r1);
    const got2 = collectDatagrams(r2);

    const sent = Array.from({ length: 10 }, (_, i) => packet(i, 100 + i));
    const s = stage(sent);
    const dstAddr = new Uint32Array(10).fill(LOOPBACK);
    const dstPort = Uint16Array.from(sent, (_, i) => (i % 2 === 0 ? r1.localPort : r2.localPort));
    assert.equal(sender.send(s.bytes, s.offsets, s.lengths, dstAddr, dstPort, 0, 10), 10);
    await got1.received(5);
    await got2.received(5);

    const expect = (parity: number) =>
      sent
        .filter((_, i) => i % 2 === parity)
        .map((payload) => ({
          payload,
          length: payload.length,
          srcAddr: LOOPBACK,
          srcPort: sender.localPort,
          truncated: 0,
        }));
    assert.deepEqual(got1.datagrams, expect(0));
    assert.deepEqual(got2.datagrams, expect(1));
    assert.equal(sender.sendErrors, 0);
  });

  it("delivers more datagrams than capacity as several batches of at most capacity, in order", TIMEOUT, async (t) => {
    const sender = udp(t);
    const receiver = udp(t, { capacity: 16 });
    const sent = Array.from({ length: 100 }, (_, i) => packet(i, 1 + i));
    const s = stage(sent);
    const dstAddr = new Uint32Array(100).fill(LOOPBACK);
    const dstPort = new Uint16Array(100).fill(receiver.localPort);
    assert.equal(sender.send(s.bytes, s.offsets, s.lengths, dstAddr, dstPort, 0, 100), 100);
    await sleep(50); // lets loopback delivery finish, so that the first readiness finds a full queue
    const got = collectDatagrams(receiver);
    await got.received(100);
    assert.ok(
      got.batches.every((n) => n >= 1 && n <= 16),
      `batches ${got.batches}`,
    );
    assert.equal(Math.max(...got.batches), 16);
    assert.equal(got.datagrams.length, 100);
    assert.deepEqual(
      got.datagrams.map((d) => d.payload),
      sent,
    );
  });

  it("flags a datagram longer than the slot as truncated and reports its real length", TIMEOUT, async (t) => {
    const sender = udp(t);
    const receiver = udp(t, { slotSize: 512 });
    const got = collectDatagrams(receiver);
    const big = packet(1, 3000);
    const small = packet(2, 512);
    const s = stage([big, small]);
    const dstAddr = Uint32Array.of(LOOPBACK, LOOPBACK);
    const dstPort = Uint16Array.of(receiver.localPort, receiver.localPort);
    assert.equal(sender.send(s.bytes, s.offsets, s.lengths, dstAddr, dstPort, 0, 2), 2);
    await got.received(2);
    assert.equal(got.datagrams[0]?.truncated, 1);
    assert.equal(got.datagrams[0]?.length, 3000);
    assert.deepEqual(got.datagrams[0]?.payload, big.subarray(0, 512));
    assert.equal(got.datagrams[1]?.truncated, 0);
    assert.equal(got.datagrams[1]?.length, 512);
    assert.deepEqual(got.datagrams[1]?.payload, small);
  });

  it("counts a refused datagram as a send error and sends the rest of the batch", TIMEOUT, async (t) => {
    const { sender, receiver, got, sent, s, dstAddr } = threeToReceiver(t);
    const dstPort = Uint16Array.of(receiver.localPort, 0, receiver.localPort); // port 0: EINVAL
    assert.equal(sender.send(s.bytes, s.offsets, s.lengths, dstAddr, dstPort, 0, 3), 3);
    assert.equal(sender.sendErrors, 1);
    await got.received(2);
    assert.deepEqual(
      got.datagrams.map((d) => d.payload),
      [sent[0], sent[2]],
    );
  });

  it("stops short on ENOBUFS and, through the engine, retries after a pause until all is sent", TIMEOUT, async (t) => {
    const { sender, receiver, got, s, dstAddr } = threeToReceiver(t);
    const dstPort = new Uint16Array(3).fill(receiver.localPort);
    injectSendErrors(sender, ENOBUFS, 1);
    assert.equal(sender.send(s.bytes, s.offsets, s.lengths, dstAddr, dstPort, 0, 3), 0, "nothing consumed");
    assert.equal(sender.sendRetries, 1);
    assert.equal(sender.sendErrors, 0, "not a drop");
    assert.equal(sender.send(s.bytes, s.offsets, s.lengths, dstAddr, dstPort, 0, 3), 3, "the retry sends all");
    await got.received(3);

    // Through the engine: flannel0 (a fake) is held while the kernel is out
    // of memory, the send is retried on a timer (not on writability, which
    // would spin), and every packet goes out once memory is back.
    const device = new FakeDevice("flannel0");
    const engine = engineOver(device, sender, { localAddr: 1, mtu: 1472 });
    const pod = parsePrefix("10.244.2.0/24") as Ipv4Prefix;
    engine.setTable(
      LeaseTable.build(
        parsePrefix("10.244.0.0/16") as Ipv4Prefix,
        24,
        [{ subnet: pod, publicIp: LOOPBACK }],
        receiver.localPort,
      ),
    );
    engine.start();
    t.after(() => engine.stop());
    const inner = Array.from({ length: 5 }, (_, k) =>
      udpPacket("10.244.1.2", `10.244.2.${k + 2}`, 1000, 2000, Uint8Array.of(k)),
    );
    injectSendErrors(sender, ENOBUFS, 1_000_000);
    const before = sender.sendRetries;
    device.inject(inner);
    await sleep(200);
    const retries = sender.sendRetries - before;
    assert.ok(retries >= 2, `retried while out of memory (${retries})`);
    assert.ok(retries < 1000, `on a timer, not in a loop (${retries} tries in 200 ms)`);
    assert.equal(got.datagrams.length, 3, "nothing from the engine arrived yet");
    assert.equal(device.paused, true, "flannel0 held meanwhile");
    injectSendErrors(sender, ENOBUFS, 0);
    await got.received(8);
    assert.deepEqual(
      got.datagrams.slice(3).map((d) => d.payload[28]),
      [0, 1, 2, 3, 4],
      "all five, in order",
    );
    assert.equal(device.paused, false, "flannel0 resumed once everything was out");
    assert.equal(sender.sendErrors, 0);
  });

  it("sends from whichever arrays each call names, reading their contents at the call", TIMEOUT, async (t) => {
    const { sender, receiver, got, sent, s, dstAddr } = threeToReceiver(t);
    const dstPort = new Uint16Array(3).fill(receiver.localPort);
    const other = stage([packet(7, 20)]);
    const otherPort = Uint16Array.of(receiver.localPort);
    assert.equal(sender.send(s.bytes, s.offsets, s.lengths, dstAddr, dstPort, 0, 1), 1);
    assert.equal(sender.send(other.bytes, other.offsets, other.lengths, dstAddr, otherPort, 0, 1), 1);
    assert.equal(sender.send(s.bytes, s.offsets, s.lengths, dstAddr, dstPort, 1, 2), 2);
    // Same arrays, new contents and a new destination: sent as they are now.
    const second = udp(t);
    const got2 = collectDatagrams(second);
    dstPort[0] = second.localPort;
    s.bytes.set(packet(8, 10), 0);
    assert.equal(sender.send(s.bytes, s.offsets, s.lengths, dstAddr, dstPort, 0, 1), 1);
    await got.received(4);
    await got2.received(1);
    assert.deepEqual(
      got.datagrams.map((d) => d.payload),
      [sent[0], packet(7, 20), sent[1], sent[2]],
    );
    assert.deepEqual(got2.datagrams[0]?.payload, packet(8, 10));
  });

  it("the addon refuses a send before any arrays were bound, and a state array too short", TIMEOUT, (t) => {
    const arena = {
      bytes: new Uint8Array(64),
      lengths: new Uint32Array(1),
      srcAddr: new Uint32Array(1),
      srcPort: new Uint16Array(1),
      truncated: new Uint8Array(1),
      state: new Uint32Array(UDP_STATE.WORDS),
      slotSize: 64,
      capacity: 1,
    };
    const native = new (loadAddon().UdpSocket)(LOOPBACK, 0, arena, 0);
    t.after(() => native.close());
    assert.throws(() => native.send(0, 0), { message: "send before its arrays were bound" });
    assert.throws(() => new (loadAddon().UdpSocket)(LOOPBACK, 0, { ...arena, state: new Uint32Array(1) }, 0), {
      name: "RangeError",
      message: "arena.state needs 2 entries",
    });
  });

  it("refuses to bind a port in use with EADDRINUSE naming the address", TIMEOUT, (t) => {
    const first = udp(t);
    assert.throws(
      () => UdpTransport.bind(LOOPBACK, first.localPort),
      (err: NativeError) => {
        assert.equal(err.code, "EADDRINUSE");
        assert.equal(err.syscall, "bind");
        assert.equal(err.message, `bind 127.0.0.1:${first.localPort}: EADDRINUSE (Address already in use)`);
        return true;
      },
    );
  });

  it("raises the socket buffers to bufferBytes, past rmem_max/wmem_max (SO_*BUFFORCE as root)", TIMEOUT, (t) => {
    const asked = 8 * 1024 * 1024;
    const u = udp(t, { bufferBytes: asked });
    assert.ok(u.recvBufferSize >= asked, `SO_RCVBUF ${u.recvBufferSize}`);
    assert.ok(u.sendBufferSize >= asked, `SO_SNDBUF ${u.sendBufferSize}`);
  });

  it(
    "fires onWritable on a writable socket; after close, send throws EBADF and localPort stays",
    TIMEOUT,
    async (t) => {
      const u = udp(t);
      await new Promise<void>((resolve) => u.onWritable(resolve));
      const port = u.localPort;
      u.close();
      u.close();
      assert.equal(u.localPort, port);
      const s = stage([packet(0, 4)]);
      assert.throws(() => u.send(s.bytes, s.offsets, s.lengths, Uint32Array.of(LOOPBACK), Uint16Array.of(port), 0, 1), {
        code: "EBADF",
      });
    },
  );
});

describe("TUN device in a network namespace", () => {
  let ns = "";

  before(async () => {
    ns = await createNetns("nt");
  });

  after(async () => {
    if (ns !== "") await deleteNetns(ns);
  });

  it("opens flannel%d as flannel0, reads an outbound packet and writes an inbound one", TIMEOUT, async () => {
    const code = `
      import { TunDevice } from ${JSON.stringify(IO_URL)};
      import { execFileSync } from "node:child_process";
      import dgram from "node:dgram";
      const fail = (e) => { console.log(JSON.stringify({ error: String(e?.stack ?? e) })); process.exit(1); };
      setTimeout(() => fail("timed out"), 30000).unref();
      const ip = (...args) => execFileSync("ip", args);
      const addr = (s) => s.split(".").reduce((n, o) => n * 256 + Number(o), 0);
      const dotted = (b, at) => [b[at], b[at + 1], b[at + 2], b[at + 3]].join(".");
      function sum(b, from, to, acc) {
        for (let i = from; i < to; i += 2) acc += (b[i] << 8) | (i + 1 < to ? b[i + 1] : 0);
        return acc;
      }
      const fold = (acc) => { while (acc > 0xffff) acc = (acc & 0xffff) + (acc >>> 16); return ~acc & 0xffff; };
      function udpPacket(src, dst, sport, dport, payload) {
        const p = new Uint8Array(28 + payload.length);
        const v = new DataView(p.buffer);
        v.setUint8(0, 0x45); v.setUint16(2, p.length); v.setUint8(8, 64); v.setUint8(9, 17);
        v.setUint32(12, src); v.setUint32(16, dst);
        v.setUint16(10, fold(sum(p, 0, 20, 0)));
        v.setUint16(20, sport); v.setUint16(22, dport); v.setUint16(24, 8 + payload.length);
        p.set(payload, 28);
        const pseudo = sum(p, 12, 20, 17 + 8 + payload.length);
        v.setUint16(26, fold(sum(p, 20, p.length, pseudo)) || 0xffff);
        return p;
      }
      try {
        const out = {};
        const tun = TunDevice.open("flannel%d", { capacity: 8 });
        out.name = tun.name;
        const mq = TunDevice.open("weftmq%d", { multiQueue: true });
        out.multiQueueName = mq.name;
        mq.close();
        ip("addr", "add", "10.244.9.0/32", "dev", tun.name);
        ip("link", "set", tun.name, "up");
        ip("route", "add", "10.244.0.0/16", "dev", tun.name);

        const sender = dgram.createSocket("udp4");
        const outbound = await new Promise((resolve) => {
          tun.start((count) => {
            const { bytes, lengths, slotSize } = tun.rx;
            for (let i = 0; i < count; i++) {
              const p = bytes.subarray(i * slotSize, i * slotSize + lengths[i]);
              if (p[0] >> 4 !== 4 || dotted(p, 16) !== "10.244.7.7") continue;
              const ihl = (p[0] & 15) * 4;
              resolve({
                version: p[0] >> 4, src: dotted(p, 12), dst: dotted(p, 16), protocol: p[9],
                dport: (p[ihl + 2] << 8) | p[ihl + 3],
                payload: Buffer.from(p.subarray(ihl + 8)).toString(),
              });
            }
          });
          sender.send("weft-out", 7777, "10.244.7.7");
        });
        out.outbound = outbound;
        sender.close();

        const receiver = dgram.createSocket("udp4");
        await new Promise((resolve) => receiver.bind(0, "10.244.9.0", resolve));
        const inbound = new Promise((resolve) =>
          receiver.once("message", (msg, rinfo) => resolve({ payload: msg.toString(), from: rinfo.address, port: rinfo.port })),
        );
        const pkt = udpPacket(addr("10.244.7.7"), addr("10.244.9.0"), 7777, receiver.address().port, Buffer.from("weft-in"));
        out.written = tun.write(pkt, Uint32Array.of(0), Uint32Array.of(pkt.length), 0, 1);
        out.inbound = await inbound;
        out.writeErrors = tun.writeErrors;
        out.truncatedDrops = tun.truncatedDrops;
        receiver.close();
        tun.close();
        console.log(JSON.stringify(out));
      } catch (e) { fail(e); }
    `;
    const result = await runModule(["ip", "netns", "exec", ns], code);
    assert.deepEqual(result, {
      name: "flannel0",
      multiQueueName: "weftmq0",
      outbound: { version: 4, src: "10.244.9.0", dst: "10.244.7.7", protocol: 17, dport: 7777, payload: "weft-out" },
      written: 1,
      inbound: { payload: "weft-in", from: "10.244.7.7", port: 7777 },
      writeErrors: 0,
      truncatedDrops: 0,
    });
    // The TUN was not persistent: it left with the process that opened it.
    await assert.rejects(nsExec(ns, "ip", ["link", "show", "flannel0"]));
  });

  it("fails to open a TUN without CAP_NET_ADMIN with an ioctl TUNSETIFF EPERM error", TIMEOUT, async () => {
    const code = `
      import { loadAddon } from ${JSON.stringify(NATIVE_URL)};
      try {
        const { name } = loadAddon().openTun("weftperm%d");
        console.log(JSON.stringify({ opened: name }));
      } catch (e) {
        console.log(JSON.stringify({ message: e.message, code: e.code, syscall: e.syscall }));
      }
    `;
    const noNetAdmin = ["ip", "netns", "exec", ns, "setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin"];
    assert.deepEqual(await runModule(noNetAdmin, code), {
      message: "ioctl TUNSETIFF: EPERM (Operation not permitted)",
      code: "EPERM",
      syscall: "ioctl",
    });
  });
});

describe("nf_tables ruleset generation", () => {
  let ns = "";

  before(async () => {
    ns = await createNetns("ng");
  });

  after(async () => {
    if (ns !== "") await deleteNetns(ns);
  });

  /** nftGeneration() read by a process inside the namespace. */
  async function generation(prefix: string[] = []): Promise<number | null> {
    const code = `
      import { nftGeneration } from ${JSON.stringify(IO_URL)};
      console.log(JSON.stringify(nftGeneration()));
    `;
    return (await runModule(["ip", "netns", "exec", ns, ...prefix], code)) as number | null;
  }

  it("stays put while rules are only read and moves when iptables adds a chain or a rule", TIMEOUT, async () => {
    const first = await generation();
    assert.equal(typeof first, "number");
    assert.equal(await generation(), first);
    await nsExec(ns, "iptables", ["-t", "nat", "-S"]);
    await assert.rejects(nsExec(ns, "iptables", ["-t", "nat", "-C", "POSTROUTING", "-j", "RETURN"]));
    assert.equal(await generation(), first, "listing and a failed -C commit nothing");
    await nsExec(ns, "iptables", ["-t", "nat", "-N", "WEFT-GEN"]);
    const second = await generation();
    assert.notEqual(second, first);
    await nsExec(ns, "iptables", ["-t", "nat", "-A", "WEFT-GEN", "-j", "RETURN"]);
    const third = await generation();
    assert.notEqual(third, second);
    assert.equal(await generation(), third);
  });

  it("is null without CAP_NET_ADMIN", TIMEOUT, async () => {
    assert.equal(await generation(["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin"]), null);
  });
});

describe("notify (sd_notify)", () => {
  /** Starts a python3 AF_UNIX datagram receiver (tracked in `children`); resolves, once bound, to its first datagram. */
  async function receiver(address: string, children: ChildProcess[]): Promise<{ message: Promise<string> }> {
    const script = [
      "import socket, sys",
      "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)",
      "a = sys.argv[1]",
      "s.bind('\\0' + a[1:] if a.startswith('@') else a)",
      "print('ready', flush=True)",
      "s.settimeout(30)",
      "print(s.recv(4096).decode(), flush=True)",
    ].join("\n");
    const child = spawn("python3", ["-c", script, address], { stdio: ["ignore", "pipe", "inherit"] });
    children.push(child);
    let out = "";
    const waiter = new Waiter();
    const lines = () => out.split("\n").slice(0, -1);
    let exited = false;
    child.stdout?.on("data", (d: Buffer) => {
      out += d.toString();
      waiter.notify();
    });
    child.on("exit", () => {
      exited = true;
      waiter.notify();
    });
    const line = async (n: number) => {
      await waiter.until(() => exited || lines().length >= n);
      const l = lines();
      if (l.length < n) throw new Error(`receiver exited; output: ${out}`);
      return l[n - 1] as string;
    };
    assert.equal(await line(1), "ready");
    return { message: line(2) };
  }

  it("sends READY=1 to a socket path and to an abstract @name", TIMEOUT, async () => {
    const dir = mkdtempSync(join(tmpdir(), "weft-notify-"));
    const children: ChildProcess[] = [];
    try {
      for (const address of [join(dir, "notify.sock"), `@weft-nt-notify-${process.pid}-${Date.now()}`]) {
        const { message } = await receiver(address, children);
        loadAddon().notify(address, "READY=1");
        assert.equal(await message, "READY=1");
      }
    } finally {
      for (const c of children) if (c.exitCode === null && c.pid !== undefined) process.kill(c.pid, "SIGKILL");
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("throws an error naming sendto, the path and the errno when nobody listens", () => {
    const path = join(tmpdir(), `weft-no-such-socket-${process.pid}`);
    assert.throws(() => loadAddon().notify(path, "READY=1"), {
      code: "ENOENT",
      syscall: "sendto",
      message: `sendto ${path}: ENOENT (No such file or directory)`,
    });
  });
});

// The idle release of the receive arenas (dataplane/arena-release.ts): pages
// given back (mincore says so) only once a source read nothing for a whole
// tick and no write points into its arena, and forwarding intact afterwards.
// Ticks are called by hand; the timers are unref'd and far away.

import assert from "node:assert/strict";
import { describe, it, type TestContext } from "node:test";
import { type ArenaRelease, releaseWhenIdle } from "../dataplane/arena-release.js";
import type { Engine } from "../dataplane/engine.js";
import { engineOver, FakeDevice, FakeTransport } from "../dataplane/fake-io.js";
import { LeaseTable } from "../dataplane/leases.js";
import { arenaResidentBytes, releaseArenaPages, UdpTransport } from "../dataplane/native-io.js";
import { type Ipv4Prefix, parseIpv4, parsePrefix } from "../net/addr.js";
import { udpPacket } from "./helpers/packets.js";

const H2 = parseIpv4("198.18.0.2");
const HOUR = 3_600_000;

interface Rig {
  device: FakeDevice;
  transport: FakeTransport;
  engine: Engine;
  release: ArenaRelease;
  idle: number;
}

/** weftd's shape: offloads on both fakes, the real madvise on their arenas. */
function rig(t: TestContext): Rig {
  const device = new FakeDevice("flannel0", { gso: true });
  const transport = new FakeTransport(8285, { gso: true });
  const engine = engineOver(device, transport, {
    localAddr: parseIpv4("10.244.1.0"),
    mtu: 1472,
    ownSubnet: parsePrefix("10.244.1.0/24") as Ipv4Prefix,
  });
  engine.setTable(
    LeaseTable.build(
      parsePrefix("10.244.0.0/16") as Ipv4Prefix,
      24,
      [{ subnet: parsePrefix("10.244.2.0/24") as Ipv4Prefix, publicIp: H2 }],
      8285,
    ),
  );
  engine.start();
  const r: Rig = {
    device,
    transport,
    engine,
    idle: 0,
    release: releaseWhenIdle(engine, {
      release: (bytes) => void releaseArenaPages(bytes),
      idleMs: HOUR,
      onIdle: () => r.idle++,
    }),
  };
  t.after(() => r.release.stop());
  return r;
}

/** Distinct payloads, so a page read back as zeros would show. */
function payload(i: number, len: number): Uint8Array {
  const p = new Uint8Array(len);
  for (let k = 0; k < len; k++) p[k] = (i * 31 + k * 7 + 1) & 255;
  return p;
}

const toPeer = (i: number) => udpPacket("10.244.1.5", "10.244.2.7", 1000, 2000, payload(i, 1400));
const fromPeer = (i: number) => ({
  data: udpPacket("10.244.2.7", "10.244.1.5", 2000, 1000, payload(i, 1400)),
  src: H2,
});

/** A flood's worth: every slot of both arenas written. */
function flood(r: Rig): void {
  r.device.inject(Array.from({ length: r.device.rx.capacity }, (_, i) => toPeer(i)));
  r.transport.inject(Array.from({ length: r.transport.rx.capacity }, (_, i) => fromPeer(i)));
}

/** The UDP payload of an inner IPv4 packet (no options). */
const innerPayload = (p: Uint8Array) => [...p.subarray(28)];

describe("arena release", () => {
  it("gives back both arenas' pages after a tick with no batch, and only then", (t) => {
    const r = rig(t);
    flood(r);
    const { device, transport } = r.engine.arenas;
    assert.ok(arenaResidentBytes(device) > 0 && arenaResidentBytes(transport) > 0, "the flood made pages resident");
    r.release.tick(); // saw batches since it was made: not idle yet
    assert.deepEqual(r.release.releases, [0, 0]);
    assert.ok(arenaResidentBytes(device) > 0);
    r.release.tick();
    assert.deepEqual(r.release.releases, [1, 1]);
    assert.equal(arenaResidentBytes(device), 0);
    assert.equal(arenaResidentBytes(transport), 0);
    assert.equal(r.idle, 1);
  });

  it("runs no timer before the first batch nor once both are released, until the next batch", (t) => {
    const r = rig(t);
    assert.equal(r.release.watching, false);
    flood(r);
    assert.equal(r.release.watching, true);
    r.release.tick();
    r.release.tick();
    assert.equal(r.release.watching, false);
    r.device.inject([toPeer(1)]);
    assert.equal(r.release.watching, true);
    r.release.tick();
    r.release.tick();
    // Only flannel0 read again; the socket's arena stays released, not advised twice.
    assert.deepEqual(r.release.releases, [2, 1]);
    assert.equal(r.release.watching, false);
  });

  it("forwards every packet intact after a release, in both directions", (t) => {
    const r = rig(t);
    flood(r);
    r.release.tick();
    r.release.tick();
    const sentBefore = r.transport.sent.length;
    const writtenBefore = r.device.written.length;
    flood(r);
    const sent = r.transport.sent.slice(sentBefore);
    const written = r.device.written.slice(writtenBefore);
    assert.equal(sent.length, r.device.rx.capacity);
    for (const [i, d] of sent.entries()) assert.deepEqual(innerPayload(d.data), [...payload(i, 1400)]);
    // Toward flannel0 the 64 datagrams of one flow were coalesced: the payloads end to end.
    const joined = written.flatMap((p) => innerPayload(p));
    const expected = Array.from({ length: r.transport.rx.capacity }, (_, i) => [...payload(i, 1400)]).flat();
    assert.deepEqual(joined, expected);
  });

  it("never releases the socket's arena while a write to flannel0 still points into it", (t) => {
    const r = rig(t);
    r.device.writeBudget = 0; // flannel0's queue is full
    r.transport.inject([fromPeer(1), fromPeer(2)]);
    assert.equal(r.engine.transportArenaInUse, true);
    for (let i = 0; i < 3; i++) r.release.tick();
    assert.deepEqual(r.release.releases, [0, 0], "flannel0's arena was never read into: nothing to give back");
    assert.ok(arenaResidentBytes(r.engine.arenas.transport) > 0);
    assert.equal(r.release.watching, true);
    r.device.makeWritable();
    assert.equal(r.engine.transportArenaInUse, false);
    const joined = r.device.written.flatMap((p) => innerPayload(p));
    assert.deepEqual(joined, [...payload(1, 1400), ...payload(2, 1400)], "written from the bytes as received");
    r.release.tick();
    assert.deepEqual(r.release.releases, [0, 1]);
  });

  it("never releases flannel0's arena while a send to peers still points into it", (t) => {
    const r = rig(t);
    r.transport.writeBudget = 0; // the socket buffer is full
    r.device.inject([toPeer(3)]);
    assert.equal(r.engine.deviceArenaInUse, true);
    for (let i = 0; i < 3; i++) r.release.tick();
    assert.deepEqual(r.release.releases, [0, 0]);
    r.transport.makeWritable();
    assert.deepEqual(innerPayload(r.transport.sent[0]?.data ?? new Uint8Array(0)), [...payload(3, 1400)]);
    r.release.tick();
    assert.deepEqual(r.release.releases, [1, 0]);
  });

  it("refuses a non-positive idle period", () => {
    const engine = { onNextBatch: () => {} } as unknown as Engine;
    assert.throws(
      () =>
        releaseWhenIdle({ ...engine, arenas: { device: new Uint8Array(1), transport: new Uint8Array(1) } } as never, {
          release: () => {},
          idleMs: 0,
        }),
      /idleMs must be positive, got 0/,
    );
  });
});

describe("releaseArenaPages on a native socket's arena", () => {
  it("leaves no page of a 4 MiB arena resident, and the socket receives intact afterwards", async (t) => {
    const LOOPBACK = 0x7f000001;
    const receiver = UdpTransport.bind(LOOPBACK, 0, { capacity: 64, slotSize: 65536 });
    const sender = UdpTransport.bind(LOOPBACK, 0);
    t.after(() => {
      receiver.close();
      sender.close();
    });
    const got: number[][] = [];
    let wake = () => {};
    receiver.start((count) => {
      const { bytes, lengths, slotSize } = receiver.rx;
      for (let i = 0; i < count; i++)
        got.push([...bytes.subarray(i * slotSize, i * slotSize + (lengths[i] as number))]);
      wake();
    });
    const send = async (first: number, n: number) => {
      const bytes = new Uint8Array(n * 9000);
      const offsets = new Uint32Array(n);
      const lengths = new Uint32Array(n);
      const addrs = new Uint32Array(n).fill(LOOPBACK);
      const ports = new Uint16Array(n).fill(receiver.localPort);
      for (let i = 0; i < n; i++) {
        bytes.set(payload(first + i, 9000), i * 9000);
        offsets[i] = i * 9000;
        lengths[i] = 9000;
      }
      const want = got.length + n;
      const arrived = new Promise<void>((resolve) => {
        wake = () => got.length >= want && resolve();
      });
      assert.equal(sender.send(bytes, offsets, lengths, addrs, ports, 0, n), n);
      await arrived;
    };
    await send(0, 32);
    assert.ok(arenaResidentBytes(receiver.rx.bytes) > 0);
    const released = releaseArenaPages(receiver.rx.bytes);
    assert.ok(released >= receiver.rx.bytes.length - 8192, `whole pages inside the arena: ${released}`);
    assert.equal(arenaResidentBytes(receiver.rx.bytes), 0);
    await send(100, 32);
    for (const [i, d] of got.slice(32).entries()) assert.deepEqual(d, [...payload(100 + i, 9000)]);
  });

  it("touches no byte outside the view it is given", () => {
    const all = new Uint8Array(64 * 4096).fill(7);
    const view = all.subarray(4096 + 100, 8 * 4096 + 50);
    releaseArenaPages(view);
    // Pages wholly inside the view read as zeros; the bytes around it are unchanged.
    assert.equal(all[4096 + 99], 7);
    assert.equal(all[4096 + 100], 7, "the view's first partial page is kept");
    assert.equal(all[8 * 4096 + 49], 7, "so is its last");
    assert.equal(all[8 * 4096 + 50], 7);
    assert.ok(
      all.subarray(4096 + 100, 8 * 4096 + 50).some((b) => b === 0),
      "some whole pages were released",
    );
  });
});

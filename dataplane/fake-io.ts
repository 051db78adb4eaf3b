// In-memory Device and Transport (wireguard-go's tuntest/bindtest habit):
// whole-engine tests and `bench replay` run the production engine over these,
// without root, syscalls or timing. inject*() fills the receive arena the way
// the native reader does and delivers batches of at most `capacity`.
// Offloads are modelled the way the kernel behaves: a FakeDevice with `gso`
// takes super-packets (recorded whole, with their gsoSize) and injects them; a
// FakeTransport with `gso` takes runs and records the datagrams the kernel
// would cut them into, and injects GRO runs (segSize) like UDP_GRO delivers.

import { Counters } from "./counters.js";
import { Engine, type EngineOptions } from "./engine.js";
import {
  type BatchHandler,
  type DatagramArena,
  type DeviceArena,
  GRO_SLOT_SIZE,
  MAX_RUN_BYTES,
  type RawDevice,
  type RawTransport,
  type RxArena,
  type SendPieces,
  TSO_SLOT_SIZE,
} from "./io.js";
import { offloadDataplane } from "./offload/index.js";
import { plainDataplane } from "./plain.js";

export interface FakeOptions {
  capacity?: number;
  slotSize?: number;
  /** Keep a copy of everything written/sent (tests); off for benchmarks. */
  record?: boolean;
  /** Offloads on: super-packets (device) or GSO/GRO runs (transport); bigger default slots. */
  gso?: boolean;
  /** Device with gso: also take UDP super-packets (default true, as a TUN with TUN_F_USO4). */
  udpGso?: boolean;
}

/** A packet to inject into a FakeDevice; gsoSize > 0 makes it a super-packet. */
export interface InjectedPacket {
  readonly data: Uint8Array;
  readonly gsoSize?: number;
  /** GSO_TYPE (default TCPV4 when gsoSize is set). */
  readonly gsoType?: number;
}

export interface SentDatagram {
  readonly data: Uint8Array;
  readonly addr: number;
  readonly port: number;
}

export interface InjectedDatagram {
  readonly data: Uint8Array;
  readonly src: number;
  readonly srcPort?: number;
  /** A GRO run: data holds datagrams of this size end to end (last shorter). */
  readonly segSize?: number;
}

/** Shared behaviour: start/pause/resume, a write budget to simulate EAGAIN. */
abstract class FakeEndpoint {
  protected handler: BatchHandler | null = null;
  paused = false;
  closed = false;
  /** Packets the next writes may accept before "EAGAIN"; Infinity = never blocks. */
  writeBudget = Number.POSITIVE_INFINITY;
  /** Packets written/sent so far (also when not recording). */
  outPackets = 0;
  outBytes = 0;
  private writableWaiters: (() => void)[] = [];

  start(onBatch: BatchHandler): void {
    this.handler = onBatch;
  }
  pause(): void {
    this.paused = true;
  }
  resume(): void {
    this.paused = false;
  }
  onWritable(cb: () => void): void {
    this.writableWaiters.push(cb);
  }
  close(): void {
    this.closed = true;
    this.handler = null;
  }

  /** Lifts the write budget and fires the waiting onWritable callbacks. */
  makeWritable(budget = Number.POSITIVE_INFINITY): void {
    this.writeBudget = budget;
    const waiters = this.writableWaiters;
    this.writableWaiters = [];
    for (const cb of waiters) cb();
  }

  get waitingForWritable(): boolean {
    return this.writableWaiters.length > 0;
  }

  /** How many of `count` packets the budget lets through now. */
  protected take(count: number): number {
    const n = Math.min(count, this.writeBudget);
    this.writeBudget -= n;
    return n;
  }

  protected deliver(count: number): void {
    if (this.handler === null) throw new Error("fake endpoint: inject before start()");
    this.handler(count);
  }
}

function arena(capacity: number, slotSize: number): RxArena {
  return { bytes: new Uint8Array(capacity * slotSize), lengths: new Uint32Array(capacity), slotSize, capacity };
}

/** Entry i whole, then the payloads (past the head's IP + TCP/UDP header length) of the k - 1 entries after it. */
function gathered(bytes: Uint8Array, offsets: Uint32Array, lengths: Uint32Array, i: number, k: number): Uint8Array {
  const head = offsets[i] as number;
  const headLen = lengths[i] as number;
  if (k === 1) return bytes.slice(head, head + headLen);
  const ihl = ((bytes[head] as number) & 0x0f) * 4;
  const hdr = ihl + (bytes[head + 9] === 6 ? ((bytes[head + ihl + 12] as number) >> 4) * 4 : 8);
  let total = headLen;
  for (let j = i + 1; j < i + k; j++) total += (lengths[j] as number) - hdr;
  const out = new Uint8Array(total);
  out.set(bytes.subarray(head, head + headLen));
  let at = headLen;
  for (let j = i + 1; j < i + k; j++) {
    const q = offsets[j] as number;
    out.set(bytes.subarray(q + hdr, q + (lengths[j] as number)), at);
    at += (lengths[j] as number) - hdr;
  }
  return out;
}

export class FakeDevice extends FakeEndpoint implements RawDevice {
  readonly name: string;
  readonly rx: DeviceArena;
  readonly gso: boolean;
  readonly udpGso: boolean;
  readonly written: Uint8Array[] = [];
  /** gsoSize of each written packet (0: an ordinary packet), parallel to written. */
  readonly writtenGso: number[] = [];
  writeErrors = 0;
  private readonly record: boolean;

  constructor(name = "flannel0", opts: FakeOptions = {}) {
    super();
    this.name = name;
    this.gso = opts.gso ?? false;
    this.udpGso = this.gso && (opts.udpGso ?? true);
    const base = arena(opts.capacity ?? 64, opts.slotSize ?? (this.gso ? TSO_SLOT_SIZE : 2048));
    this.rx = { ...base, gsoSize: new Uint16Array(base.capacity), gsoType: new Uint8Array(base.capacity) };
    this.record = opts.record ?? true;
  }

  /** Delivers packets as reads from the TUN, in batches of at most capacity. Returns batches delivered. */
  inject(packets: readonly (Uint8Array | InjectedPacket)[]): number {
    let batches = 0;
    for (let first = 0; first < packets.length; first += this.rx.capacity) {
      const n = Math.min(this.rx.capacity, packets.length - first);
      for (let i = 0; i < n; i++) {
        const item = packets[first + i] as Uint8Array | InjectedPacket;
        const p = item instanceof Uint8Array ? item : item.data;
        const gsoSize = item instanceof Uint8Array ? 0 : (item.gsoSize ?? 0);
        if (gsoSize !== 0 && !this.gso) throw new Error("fake device: super-packets need gso");
        const len = Math.min(p.length, this.rx.slotSize);
        this.rx.bytes.set(len === p.length ? p : p.subarray(0, len), i * this.rx.slotSize);
        this.rx.lengths[i] = len;
        this.rx.gsoSize[i] = gsoSize;
        this.rx.gsoType[i] = gsoSize === 0 ? 0 : ((item as InjectedPacket).gsoType ?? 1);
      }
      this.deliver(n);
      batches++;
    }
    return batches;
  }

  write(
    bytes: Uint8Array,
    offsets: Uint32Array,
    lengths: Uint32Array,
    start: number,
    count: number,
    gsoSize?: Uint16Array,
    runs?: Uint16Array,
  ): number {
    if (gsoSize !== undefined && !this.gso) throw new Error("fake device: gsoSize needs gso");
    if (runs !== undefined && gsoSize === undefined) throw new Error("fake device: runs need gsoSize");
    // The budget counts writes: a run is one.
    let i = start;
    while (i < start + count && this.take(1) === 1) {
      const gso = gsoSize === undefined ? 0 : (gsoSize[i] as number);
      const k = runs !== undefined && gso !== 0 && (runs[i] as number) >= 2 ? (runs[i] as number) : 1;
      if (i + k > start + count) throw new Error(`fake device: the run of entry ${i} reaches past the batch`);
      const packet = gathered(bytes, offsets, lengths, i, k);
      if (this.record) {
        this.written.push(packet);
        this.writtenGso.push(gso);
      }
      this.outPackets++;
      this.outBytes += packet.length;
      i += k;
    }
    return i - start;
  }
}

export class FakeTransport extends FakeEndpoint implements RawTransport {
  readonly rx: DatagramArena;
  readonly localPort: number;
  /** Every datagram as the kernel puts it on the wire (runs already cut). */
  readonly sent: SentDatagram[] = [];
  /** send() entries consumed, a run counting once (the syscall-level view). */
  entries = 0;
  sendErrors = 0;
  sendRetries = 0;
  gsoFallbacks = 0;
  gsoMaxSegments: number;
  private readonly record: boolean;

  constructor(localPort = 8285, opts: FakeOptions = {}) {
    super();
    this.localPort = localPort;
    this.gsoMaxSegments = opts.gso ? 64 : 0;
    const base = arena(opts.capacity ?? 64, opts.slotSize ?? (opts.gso ? GRO_SLOT_SIZE : 2048));
    this.rx = {
      ...base,
      srcAddr: new Uint32Array(base.capacity),
      srcPort: new Uint16Array(base.capacity),
      truncated: new Uint8Array(base.capacity),
      segSize: new Uint16Array(base.capacity),
    };
    this.record = opts.record ?? true;
  }

  /** What the kernel refusing UDP GSO looks like from above: no more runs. */
  refuseGso(): void {
    this.gsoMaxSegments = 0;
  }

  /** Delivers datagrams as reads from the socket; longer than a slot = truncated, like MSG_TRUNC. */
  inject(datagrams: readonly InjectedDatagram[]): number {
    let batches = 0;
    const rx = this.rx;
    for (let first = 0; first < datagrams.length; first += rx.capacity) {
      const n = Math.min(rx.capacity, datagrams.length - first);
      for (let i = 0; i < n; i++) {
        const d = datagrams[first + i] as InjectedDatagram;
        const len = Math.min(d.data.length, rx.slotSize);
        rx.bytes.set(len === d.data.length ? d.data : d.data.subarray(0, len), i * rx.slotSize);
        rx.lengths[i] = len;
        rx.truncated[i] = d.data.length > rx.slotSize ? 1 : 0;
        rx.srcAddr[i] = d.src;
        rx.srcPort[i] = d.srcPort ?? 8285;
        rx.segSize[i] = d.segSize ?? 0;
      }
      this.deliver(n);
      batches++;
    }
    return batches;
  }

  send(
    bytes: Uint8Array,
    offsets: Uint32Array,
    lengths: Uint32Array,
    dstAddr: Uint32Array,
    dstPort: Uint16Array,
    start: number,
    count: number,
    segSize?: Uint16Array,
    pieces?: SendPieces,
  ): number {
    const n = this.take(count);
    for (let i = start; i < start + n; i++) {
      const off = offsets[i] as number;
      const len = lengths[i] as number;
      const seg = segSize === undefined ? 0 : (segSize[i] as number);
      const step = seg !== 0 && len > seg ? seg : len;
      if (step !== len && Math.ceil(len / step) > 64) throw new Error(`fake transport: run of ${len / step} > 64`);
      if (step !== len && len > MAX_RUN_BYTES) throw new Error(`fake transport: run of ${len} bytes`);
      this.entries++;
      const k = step !== len && pieces !== undefined ? (pieces.count[i] as number) : 0;
      if (k > 0) {
        this.sendPieces(bytes, pieces as SendPieces, i, k, step, len, dstAddr[i] as number, dstPort[i] as number);
        continue;
      }
      for (let o = off; o < off + len; o += step) {
        const l = Math.min(step, off + len - o);
        if (this.record) {
          this.sent.push({ data: bytes.slice(o, o + l), addr: dstAddr[i] as number, port: dstPort[i] as number });
        }
        this.outPackets++;
        this.outBytes += l;
      }
    }
    return n;
  }

  /** A run sent from pieces: the kernel's rule (all but the last exactly seg) checked. */
  private sendPieces(
    bytes: Uint8Array,
    pieces: SendPieces,
    i: number,
    k: number,
    seg: number,
    len: number,
    addr: number,
    port: number,
  ): void {
    const first = pieces.first[i] as number;
    let total = 0;
    for (let p = first; p < first + k; p++) {
      const o = pieces.offsets[p] as number;
      const l = pieces.lengths[p] as number;
      if (p < first + k - 1 && l !== seg) throw new Error(`fake transport: piece of ${l} bytes in a run of ${seg}`);
      total += l;
      if (this.record) this.sent.push({ data: bytes.slice(o, o + l), addr, port });
      this.outPackets++;
      this.outBytes += l;
    }
    if (total !== len) throw new Error(`fake transport: pieces of ${total} bytes for a run of ${len}`);
  }
}

export interface EngineOverOptions extends Omit<EngineOptions, "device" | "transport"> {
  /** With offloads: coalesce toward the device (default true). */
  readonly coalesce?: boolean;
}

/**
 * The production engine over kernel-shaped endpoints (fakes, or a native one
 * beside a fake), the way weftd assembles it: offload/'s factory when either
 * side has offloads (a gso fake), else the plain one.
 */
export function engineOver(device: RawDevice, transport: RawTransport, opts: EngineOverOptions): Engine {
  const counters = opts.counters ?? new Counters();
  const raw = { device, transport };
  const offload = device.gso || transport.gsoMaxSegments > 0;
  const dp = offload
    ? offloadDataplane(raw, { counters: counters.tx, mtu: opts.mtu, coalesce: opts.coalesce })
    : plainDataplane(raw);
  return new Engine({ ...opts, counters, device: dp.device, transport: dp.transport });
}

// flannel0 with virtio-net headers, in the engine's shape. On read, a TCP/UDP
// super-packet (gsoSize > 0) is split in place into the MTU-sized packets the
// peers expect, each one entry; on write, neighbours of one flow are
// coalesced into super-packets for one write() each.
//
//   slot 0: [super-packet 3×MSS]     split ──► entries [s0][s1][s2]
//   slot 1: [packet]                          entry  [p]
//
// A super-packet that is not valid IPv4 is handed over whole: the engine
// drops it like any malformed packet. One that cannot be split, or whose
// segments exceed the MTU, is a counted drop here; counters count the
// segments, as the wire would carry them.

import { type DirectionCounters, Drop } from "../counters.js";
import {
  type BatchHandler,
  type DatagramArena,
  type Device,
  MAX_RUN_BYTES,
  type RawDevice,
  type RxBatch,
  type TxBatch,
} from "../io.js";
import { Wrapped } from "../plain.js";
import { Ipv4Check, Ipv4View } from "../wire/ipv4.js";
import { Coalescer, GRO_MAX_SEGMENTS } from "./coalescer.js";
import { Splitter } from "./splitter.js";

export interface OffloadDeviceOptions {
  /** The transmit counters: drops of super-packets that cannot go out. */
  readonly counters: DirectionCounters;
  /** flannel0's MTU: segments longer than this are dropped. */
  readonly mtu: number;
  /** Coalesce toward flannel0 (default true); only batches lying in `peerArena` are coalesced. */
  readonly coalesce?: boolean;
  /** The transport's receive arena: coalescing grows a packet up to the end of its slot there. */
  readonly peerArena: DatagramArena;
  /**
   * Write each coalesced run from where its packets lie, one writev of the
   * head and the members' payloads (default true), instead of moving the
   * payloads behind the head first.
   */
  readonly gather?: boolean;
}

export class OffloadDevice extends Wrapped<RawDevice> implements Device {
  readonly rx: RxBatch;
  /** Per slot of the raw arena: one past the last byte the last read left there. */
  private readonly counters: DirectionCounters;
  private readonly mtu: number;
  private readonly splitter = new Splitter();
  private readonly view = new Ipv4View();
  private readonly coalescer: Coalescer | null;
  private readonly peerArena: DatagramArena;
  private handler: BatchHandler = () => {};
  // Coalesced copy of the batch being written: its own arrays, bound once.
  private offsets: Uint32Array;
  private lengths: Uint32Array;
  private gso: Uint16Array;
  // Gathered writes: per staged entry, the packets of the run it starts (0 inside one).
  private runs: Uint16Array | undefined;
  private count = 0;
  private pending = 0;

  constructor(raw: RawDevice, opts: OffloadDeviceOptions) {
    super(raw);
    const a = raw.rx;
    const capacity = a.capacity * GRO_MAX_SEGMENTS;
    this.rx = { bytes: a.bytes, offsets: new Uint32Array(capacity), lengths: new Uint32Array(capacity), capacity };
    this.counters = opts.counters;
    // As the engine: no segment longer than the largest UDP payload.
    this.mtu = Math.min(opts.mtu, MAX_RUN_BYTES);
    this.coalescer = (opts.coalesce ?? true) && raw.gso ? new Coalescer(raw.udpGso) : null;
    this.peerArena = opts.peerArena;
    const staged = opts.peerArena.capacity * GRO_MAX_SEGMENTS;
    this.offsets = new Uint32Array(staged);
    this.lengths = new Uint32Array(staged);
    this.gso = new Uint16Array(staged);
    if (this.coalescer !== null && (opts.gather ?? true)) this.runs = new Uint16Array(staged);
  }

  get name(): string {
    return this.raw.name;
  }

  /** Super-packets built toward flannel0 so far, and the packets that went into them. */
  get coalesced(): { superPackets: number; segments: number } {
    const c = this.coalescer;
    return { superPackets: c?.superPackets ?? 0, segments: c?.mergedSegments ?? 0 };
  }

  override start(onBatch: BatchHandler, onError?: (err: Error) => void): void {
    this.handler = onBatch;
    this.raw.start(this.onRawBatch, onError);
  }

  private readonly onRawBatch = (count: number): void => {
    const a = this.raw.rx;
    const bytes = a.bytes;
    const offsets = this.rx.offsets;
    const lengths = this.rx.lengths;
    let n = 0;
    for (let i = 0; i < count; i++) {
      const off = i * a.slotSize;
      const len = a.lengths[i];
      if (a.gsoSize[i] === 0 || this.view.check(bytes, off, len) !== Ipv4Check.Ok) {
        offsets[n] = off;
        lengths[n] = len;
        n++;
        continue;
      }
      n = this.split(i, off, len, n);
    }
    this.handler(n);
  };

  /** Splits the super-packet of slot i in place; its segments become entries from n on. */
  private split(i: number, off: number, len: number, n: number): number {
    const a = this.raw.rx;
    const c = this.counters;
    const s = this.splitter;
    if (!s.split(a.bytes, off, this.view.totalLength, a.gsoType[i], a.gsoSize[i], a.slotSize)) {
      c.inPackets++;
      c.inBytes += len;
      c.drops[Drop.GsoUnsplittable]++;
      return n;
    }
    const segs = s.segments;
    const stride = s.stride;
    if (stride > this.mtu) {
      c.inPackets += segs;
      c.inBytes += s.total;
      c.drops[Drop.Oversize] += segs;
      return n;
    }
    for (let k = 0; k < segs; k++) {
      this.rx.offsets[n] = off + k * stride;
      this.rx.lengths[n] = k === segs - 1 ? s.total - k * stride : stride;
      n++;
    }
    return n;
  }

  /**
   * Packets lying in the transport's arena are coalesced into a copy of the
   * batch, which is written until done: until then 0 is returned and the
   * caller retries after onWritable. Anything else (ICMP errors) goes as is.
   */
  write(batch: TxBatch, start: number, count: number): number {
    if (this.coalescer === null || batch.bytes !== this.peerArena.bytes) {
      return this.raw.write(batch.bytes, batch.offsets, batch.lengths, start, count);
    }
    if (this.pending === this.count) this.stage(batch, start, count);
    this.pending += this.raw.write(
      batch.bytes,
      this.offsets,
      this.lengths,
      this.pending,
      this.count - this.pending,
      this.gso,
      this.runs,
    );
    return this.pending === this.count ? count : 0;
  }

  private stage(batch: TxBatch, start: number, count: number): void {
    if (count > this.offsets.length) {
      this.offsets = new Uint32Array(count);
      this.lengths = new Uint32Array(count);
      this.gso = new Uint16Array(count);
      if (this.runs !== undefined) this.runs = new Uint16Array(count);
    }
    for (let k = 0; k < count; k++) {
      this.offsets[k] = batch.offsets[start + k];
      this.lengths[k] = batch.lengths[start + k];
      this.gso[k] = 0;
    }
    const coalescer = this.coalescer as Coalescer;
    if (this.runs !== undefined) {
      if (count > 1) coalescer.gather(batch.bytes, this.offsets, this.lengths, this.gso, this.runs, count);
      else this.runs[0] = 0;
      this.count = count;
      this.pending = 0;
      return;
    }
    this.count =
      count > 1
        ? coalescer.coalesce(batch.bytes, this.offsets, this.lengths, this.gso, count, this.peerArena.slotSize)
        : count;
    this.pending = 0;
  }
}

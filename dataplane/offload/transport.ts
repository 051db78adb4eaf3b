// The UDP socket with GRO and GSO, in the engine's shape. On receive, a slot
// holding a GRO run (segSize > 0) is unpacked into one entry per datagram; on
// send, datagrams of one size to one peer leave as one UDP_SEGMENT message.
//
//   engine's entries:  [A 1400][B 1400][A 1400][A 700][A 1400]
//   sent:              [A 1400+1400+700 seg=1400][B 1400][A 1400]
//
// A run grows in place when the next datagram lies right behind it (the
// segments of a split super-packet do), else by copying the datagram behind
// it, which only a run alone in its device slot has room for (slotEnd). Only
// the last datagram of a run may be shorter; a run holds at most
// gsoMaxSegments datagrams and MAX_RUN_BYTES bytes. Per peer the order on
// the wire is the order of the entries.

import type { BatchHandler, DatagramBatch, DatagramTxBatch, RawTransport, RxArena, Transport } from "../io.js";
import { MAX_RUN_BYTES } from "../io.js";
import { Wrapped } from "../plain.js";
import { GRO_MAX_SEGMENTS } from "./coalescer.js";
import { RunIndex } from "./runs.js";

/** The device arena runs are gathered in: its slots and how far each is filled. */
export interface GatherArena extends RxArena {
  readonly slotEnd: Uint32Array;
}

export class OffloadTransport extends Wrapped<RawTransport> implements Transport {
  readonly rx: DatagramBatch & { offsets: Uint32Array; lengths: Uint32Array };
  private handler: BatchHandler = () => {};
  private readonly runs: RunIndex;
  // The runs being sent: their own arrays, bound once.
  private offsets = new Uint32Array(0);
  private lengths = new Uint32Array(0);
  private addrs = new Uint32Array(0);
  private ports = new Uint16Array(0);
  private seg = new Uint16Array(0);
  private count = 0;
  private pending = 0;

  constructor(
    raw: RawTransport,
    private readonly gather: GatherArena,
  ) {
    super(raw);
    const a = raw.rx;
    const capacity = a.capacity * GRO_MAX_SEGMENTS;
    this.rx = {
      bytes: a.bytes,
      offsets: new Uint32Array(capacity),
      lengths: new Uint32Array(capacity),
      srcAddr: new Uint32Array(capacity),
      truncated: new Uint8Array(capacity),
      capacity,
    };
    const staged = gather.capacity * GRO_MAX_SEGMENTS;
    this.resize(staged);
    this.runs = new RunIndex(staged);
  }

  get localPort(): number {
    return this.raw.localPort;
  }

  override start(onBatch: BatchHandler, onError?: (err: Error) => void): void {
    this.handler = onBatch;
    this.raw.start(this.onRawBatch, onError);
  }

  /** Unpacks GRO runs: every datagram one entry, a truncated one too (the engine drops it). */
  private readonly onRawBatch = (count: number): void => {
    const a = this.raw.rx;
    let n = 0;
    for (let i = 0; i < count; i++) {
      const slot = i * a.slotSize;
      const dlen = a.lengths[i];
      const seg = a.truncated[i] !== 0 ? 0 : a.segSize[i];
      const step = seg === 0 ? dlen : seg;
      const segs = seg === 0 ? 1 : Math.ceil(dlen / seg);
      if (n + segs > this.rx.offsets.length) this.grow(n + segs);
      const rx = this.rx;
      for (let k = 0; k < segs; k++) {
        rx.offsets[n] = slot + k * step;
        rx.lengths[n] = k === segs - 1 ? dlen - k * step : step;
        rx.srcAddr[n] = a.srcAddr[i];
        rx.truncated[n] = a.truncated[i];
        n++;
      }
    }
    this.handler(n);
  };

  /** More datagrams than 64 per slot: not what the kernel does, but never overrun. */
  private grow(needed: number): void {
    const rx = this.rx;
    const size = Math.max(needed, rx.offsets.length * 2);
    const offsets = new Uint32Array(size);
    const lengths = new Uint32Array(size);
    const srcAddr = new Uint32Array(size);
    const truncated = new Uint8Array(size);
    offsets.set(rx.offsets);
    lengths.set(rx.lengths);
    srcAddr.set(rx.srcAddr);
    truncated.set(rx.truncated);
    Object.assign(rx, { offsets, lengths, srcAddr, truncated, capacity: size });
  }

  /**
   * Datagrams lying in the device arena are gathered into runs, which are sent
   * until done: until then 0 is returned and the caller retries after
   * onWritable. Anything else (ICMP errors) goes datagram by datagram.
   */
  send(batch: DatagramTxBatch, start: number, count: number): number {
    if (batch.bytes !== this.gather.bytes) {
      return this.raw.send(batch.bytes, batch.offsets, batch.lengths, batch.addrs, batch.ports, start, count);
    }
    if (this.pending === this.count) this.stage(batch, start, count);
    const todo = this.count - this.pending;
    this.pending += this.raw.send(
      batch.bytes,
      this.offsets,
      this.lengths,
      this.addrs,
      this.ports,
      this.pending,
      todo,
      this.seg,
    );
    return this.pending === this.count ? count : 0;
  }

  private stage(batch: DatagramTxBatch, start: number, count: number): void {
    if (count > this.offsets.length) this.resize(count);
    const bytes = batch.bytes;
    const maxRun = this.raw.gsoMaxSegments;
    const slotSize = this.gather.slotSize;
    const slotEnd = this.gather.slotEnd;
    const gathers = slotSize >= MAX_RUN_BYTES;
    const runs = this.runs;
    runs.clear();
    let staged = 0;
    for (let j = start; j < start + count; j++) {
      const off = batch.offsets[j];
      const len = batch.lengths[j];
      const addr = batch.addrs[j];
      const port = batch.ports[j];
      const r = runs.find(addr, port);
      if (r >= 0 && maxRun > 1) {
        const e = runs.entry[r];
        const seg = runs.seg[r];
        const runLen = this.lengths[e];
        const end = this.offsets[e] + runLen;
        if (len <= seg && runs.segments[r] < maxRun && runLen + len <= MAX_RUN_BYTES) {
          let joined = off === end;
          if (!joined && runs.gatherEnd[r] >= end + len) {
            bytes.copyWithin(end, off, off + len);
            joined = true;
          }
          if (joined) {
            this.lengths[e] = runLen + len;
            this.seg[e] = seg;
            runs.segments[r]++;
            // Only the last datagram of a run may be shorter.
            if (len < seg) runs.seg[r] = 0;
            continue;
          }
        }
      }
      this.offsets[staged] = off;
      this.lengths[staged] = len;
      this.addrs[staged] = addr;
      this.ports[staged] = port;
      this.seg[staged] = 0;
      // Room to gather behind this datagram: the rest of its slot, when it is
      // alone there and the slot holds the largest run.
      const slot = Math.floor(off / slotSize);
      const alone = gathers && off === slot * slotSize && slotEnd[slot] === off + len;
      runs.open(addr, port, staged, len, alone ? off + slotSize : 0);
      staged++;
    }
    this.count = staged;
    this.pending = 0;
  }

  private resize(count: number): void {
    this.offsets = new Uint32Array(count);
    this.lengths = new Uint32Array(count);
    this.addrs = new Uint32Array(count);
    this.ports = new Uint16Array(count);
    this.seg = new Uint16Array(count);
  }

  get sendErrors(): number {
    return this.raw.sendErrors;
  }
}

// The UDP socket with GRO and GSO, in the engine's shape. On receive, a slot
// holding a GRO run (segSize > 0) is unpacked into one entry per datagram; on
// send, datagrams of one size to one peer leave as one UDP_SEGMENT message.
//
//   engine's entries:  [A 1400][B 1400][A 1400][A 700][A 1400]
//   sent:              [A 1400+1400+700 seg=1400][B 1400][A 1400]
//
// No byte is moved: a run whose datagrams lie back to back (the segments of
// a split super-packet do) is one span; any other run is sent from pieces,
// one iovec per datagram where it lies in the arena:
//
//   arena:   [A0][B0][A1][B1][A2]      entries  A: A0..A2 (3 pieces)
//   pieces:  [A0 A1 A2][B0 B1]                   B: B0..B1 (2 pieces)
//
// Only the last datagram of a run may be shorter; a run holds at most
// gsoMaxSegments datagrams (≤ 64, far below UIO_MAXIOV) and MAX_RUN_BYTES
// bytes. Per peer the order on the wire is the order of the entries.

import type {
  BatchHandler,
  DatagramBatch,
  DatagramTxBatch,
  RawTransport,
  RxArena,
  SendPieces,
  Transport,
} from "../io.js";
import { MAX_RUN_BYTES } from "../io.js";
import { Wrapped } from "../plain.js";
import { GRO_MAX_SEGMENTS } from "./coalescer.js";
import { RunIndex } from "./runs.js";

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
  // Per staged entry: datagrams in it, whether they lie apart, where its
  // pieces are written next; per datagram: its entry.
  private segs = new Uint16Array(0);
  private apart = new Uint8Array(0);
  private cursor = new Uint32Array(0);
  private member = new Uint32Array(0);
  private pieces: SendPieces = {
    first: new Uint32Array(0),
    count: new Uint16Array(0),
    offsets: new Uint32Array(0),
    lengths: new Uint32Array(0),
  };
  private count = 0;
  private pending = 0;

  constructor(
    raw: RawTransport,
    private readonly gather: RxArena,
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
      this.pieces,
    );
    return this.pending === this.count ? count : 0;
  }

  private stage(batch: DatagramTxBatch, start: number, count: number): void {
    if (count > this.offsets.length) this.resize(count);
    const maxRun = this.raw.gsoMaxSegments;
    const runs = this.runs;
    const { segs, apart, member } = this;
    // Runs gather datagrams lying apart only from a device that reads
    // super-packets (slots of a whole run); from MTU-sized slots each
    // datagram stays its own entry, as before scatter-gather.
    const gathers = this.gather.slotSize >= MAX_RUN_BYTES;
    runs.clear();
    let staged = 0;
    let anyApart = false;
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
        // Back to back so far and this one right behind: still one span.
        const behind = off === this.offsets[e] + runLen && apart[e] === 0;
        if ((behind || gathers) && len <= seg && runs.segments[r] < maxRun && runLen + len <= MAX_RUN_BYTES) {
          if (!behind) {
            apart[e] = 1;
            anyApart = true;
          }
          this.lengths[e] = runLen + len;
          this.seg[e] = seg;
          segs[e]++;
          member[j - start] = e;
          runs.segments[r]++;
          // Only the last datagram of a run may be shorter.
          if (len < seg) runs.seg[r] = 0;
          continue;
        }
      }
      this.offsets[staged] = off;
      this.lengths[staged] = len;
      this.addrs[staged] = addr;
      this.ports[staged] = port;
      this.seg[staged] = 0;
      segs[staged] = 1;
      apart[staged] = 0;
      member[j - start] = staged;
      runs.open(addr, port, staged, len);
      staged++;
    }
    this.count = staged;
    this.pending = 0;
    this.placePieces(batch, start, count, anyApart);
  }

  /** Writes the pieces of the runs whose datagrams lie apart, in entry order. */
  private placePieces(batch: DatagramTxBatch, start: number, count: number, anyApart: boolean): void {
    const { segs, apart, cursor, member } = this;
    const p = this.pieces;
    if (!anyApart) {
      p.count.fill(0, 0, this.count);
      return;
    }
    let next = 0;
    for (let e = 0; e < this.count; e++) {
      const k = apart[e] === 0 ? 0 : segs[e];
      p.first[e] = next;
      p.count[e] = k;
      cursor[e] = next;
      next += k;
    }
    for (let j = 0; j < count; j++) {
      const e = member[j];
      if (apart[e] === 0) continue;
      const q = cursor[e]++;
      p.offsets[q] = batch.offsets[start + j];
      p.lengths[q] = batch.lengths[start + j];
    }
  }

  private resize(count: number): void {
    this.offsets = new Uint32Array(count);
    this.lengths = new Uint32Array(count);
    this.addrs = new Uint32Array(count);
    this.ports = new Uint16Array(count);
    this.seg = new Uint16Array(count);
    this.segs = new Uint16Array(count);
    this.apart = new Uint8Array(count);
    this.cursor = new Uint32Array(count);
    this.member = new Uint32Array(count);
    this.pieces = {
      first: new Uint32Array(count),
      count: new Uint16Array(count),
      offsets: new Uint32Array(count),
      lengths: new Uint32Array(count),
    };
  }

  get sendErrors(): number {
    return this.raw.sendErrors;
  }
}

// Without offloads the kernel's slots already are the engine's entries: one
// packet per slot, at i * slotSize. These adapters give a RawDevice and a
// RawTransport the engine's shape (offsets written once) and pass writes
// straight through; `--no-offload` is this factory, `--offload` offload/'s.

import type {
  BatchHandler,
  DatagramBatch,
  DatagramTxBatch,
  Device,
  RawDevice,
  RawTransport,
  RxArena,
  RxBatch,
  Source,
  Transport,
  TxBatch,
} from "./io.js";

export interface RawDataplane {
  readonly device: RawDevice;
  readonly transport: RawTransport;
}

export interface Dataplane {
  readonly device: Device;
  readonly transport: Transport;
}

/** offsets[i] = i * slotSize: where slot i starts. */
export function slotOffsets(arena: RxArena, capacity = arena.capacity): Uint32Array {
  const offsets = new Uint32Array(capacity);
  for (let i = 0; i < arena.capacity; i++) offsets[i] = i * arena.slotSize;
  return offsets;
}

/** Start, pause, resume, onWritable and close, passed to the wrapped source. */
export abstract class Wrapped<R extends Source> implements Source {
  constructor(readonly raw: R) {}

  start(onBatch: BatchHandler, onError?: (err: Error) => void): void {
    this.raw.start(onBatch, onError);
  }
  pause(): void {
    this.raw.pause();
  }
  resume(): void {
    this.raw.resume();
  }
  onWritable(cb: () => void): void {
    this.raw.onWritable(cb);
  }
  close(): void {
    this.raw.close();
  }
}

export class PlainDevice extends Wrapped<RawDevice> implements Device {
  readonly rx: RxBatch;

  constructor(raw: RawDevice) {
    super(raw);
    const a = raw.rx;
    this.rx = { bytes: a.bytes, offsets: slotOffsets(a), lengths: a.lengths, capacity: a.capacity };
  }

  get name(): string {
    return this.raw.name;
  }

  write(batch: TxBatch, start: number, count: number): number {
    return this.raw.write(batch.bytes, batch.offsets, batch.lengths, start, count);
  }
}

export class PlainTransport extends Wrapped<RawTransport> implements Transport {
  readonly rx: DatagramBatch;

  constructor(raw: RawTransport) {
    super(raw);
    const a = raw.rx;
    this.rx = {
      bytes: a.bytes,
      offsets: slotOffsets(a),
      lengths: a.lengths,
      capacity: a.capacity,
      srcAddr: a.srcAddr,
      truncated: a.truncated,
    };
  }

  get localPort(): number {
    return this.raw.localPort;
  }

  send(batch: DatagramTxBatch, start: number, count: number): number {
    return this.raw.send(batch.bytes, batch.offsets, batch.lengths, batch.addrs, batch.ports, start, count);
  }
}

/** The engine's Device and Transport over the kernel's, offloads off. */
export function plainDataplane(raw: RawDataplane): Dataplane {
  return { device: new PlainDevice(raw.device), transport: new PlainTransport(raw.transport) };
}

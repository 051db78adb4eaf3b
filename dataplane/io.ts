// The two boundaries of the packet path, batch shaped (wireguard-go's tun.Device
// and conn.Bind habit). A Device is the TUN side, a Transport the UDP side.
// Each owns a receive arena that it fills and hands over with ONE callback per
// batch; the callee must finish with the arena before returning (or pause the
// source). Writes take (bytes, offsets, lengths, start, count) and return how
// many packets were consumed: fewer than `count` means the kernel said EAGAIN;
// call onWritable() and retry the rest from the same arrays when it fires.

import {
  loadAddon,
  type NativeError,
  type NativePacketFd,
  type NativeUdpSocket,
  type TunFlags,
} from "./native/index.js";

/** Fixed-slot receive arena: packet i sits at bytes[i * slotSize, + lengths[i]). */
export interface RxArena {
  readonly bytes: Uint8Array;
  readonly lengths: Uint32Array;
  readonly slotSize: number;
  /** Number of slots = the most packets one batch delivers. */
  readonly capacity: number;
}

/** Datagram arena: also records each datagram's sender and truncation. */
export interface DatagramArena extends RxArena {
  /** Sender IPv4 address (host order). */
  readonly srcAddr: Uint32Array;
  readonly srcPort: Uint16Array;
  /** 1 when the datagram was longer than its slot (MSG_TRUNC). */
  readonly truncated: Uint8Array;
}

export type BatchHandler = (count: number) => void;

interface Source {
  /**
   * Starts delivering batches; onBatch runs once per batch, count >= 1. A read
   * error (the device vanished, the socket broke) stops delivery and calls
   * onError once.
   */
  start(onBatch: BatchHandler, onError?: (err: Error) => void): void;
  /** Stops delivering until resume(); used for backpressure. */
  pause(): void;
  resume(): void;
  /** Calls cb once when the fd is writable again (after a short write). */
  onWritable(cb: () => void): void;
  close(): void;
}

export interface Device extends Source {
  readonly name: string;
  readonly rx: RxArena;
  /** One write() per packet, never a multi-packet writev. */
  write(bytes: Uint8Array, offsets: Uint32Array, lengths: Uint32Array, start: number, count: number): number;
  /** Packets the kernel refused with an error other than EAGAIN (counted drops). */
  readonly writeErrors: number;
}

export interface Transport extends Source {
  readonly rx: DatagramArena;
  readonly localPort: number;
  send(
    bytes: Uint8Array,
    offsets: Uint32Array,
    lengths: Uint32Array,
    dstAddr: Uint32Array,
    dstPort: Uint16Array,
    start: number,
    count: number,
  ): number;
  /** Datagrams the kernel refused with an error other than EAGAIN (counted drops). */
  readonly sendErrors: number;
}

// ---- Native-backed implementations (dataplane/native, loaded on first use) ----

/** Called when reading stops on an error (device deleted, peer closed); resume() retries. */
export type ErrorHandler = (err: NativeError) => void;

export interface TunOptions extends TunFlags {
  /** Packets per batch (default 64). */
  capacity?: number;
  /** Bytes per slot (default 2048); longer packets are dropped and counted in truncatedDrops. */
  slotSize?: number;
}

export interface UdpOptions {
  /** Datagrams per batch (default 64). */
  capacity?: number;
  /** Bytes per slot (default 2048); longer datagrams arrive cut, flagged in rx.truncated. */
  slotSize?: number;
  /** SO_RCVBUF and SO_SNDBUF to ask for (default 4 MiB; 0 keeps the kernel's default). */
  bufferBytes?: number;
}

const DEFAULT_CAPACITY = 64;
const DEFAULT_SLOT_SIZE = 2048;
const DEFAULT_BUFFER_BYTES = 4 * 1024 * 1024;

function positiveInt(value: number, field: string): number {
  if (!Number.isInteger(value) || value < 1) throw new RangeError(`${field} must be a positive integer, got ${value}`);
  return value;
}

function makeArena(capacity: number, slotSize: number): RxArena {
  positiveInt(capacity, "capacity");
  positiveInt(slotSize, "slotSize");
  return { bytes: new Uint8Array(capacity * slotSize), lengths: new Uint32Array(capacity), slotSize, capacity };
}

/** Routes a stop-reading error to the handler, or makes it an uncaught exception. */
function reportError(handler: ErrorHandler | null, err: NativeError): void {
  if (handler === null) throw err;
  handler(err);
}

/** A TUN device queue (IFF_TUN|IFF_NO_PI): packets start at the IP header. */
export class TunDevice implements Device {
  private errorHandler: ErrorHandler | null = null;

  private constructor(
    readonly name: string,
    readonly rx: RxArena,
    private readonly native: NativePacketFd,
  ) {}

  /**
   * Opens a TUN queue in this process's network namespace; `template` may hold
   * "%d" ("flannel%d"), `name` is what the kernel chose. Needs CAP_NET_ADMIN.
   */
  static open(template: string, opts: TunOptions = {}): TunDevice {
    const addon = loadAddon();
    const rx = makeArena(opts.capacity ?? DEFAULT_CAPACITY, opts.slotSize ?? DEFAULT_SLOT_SIZE);
    const { fd, name } = addon.openTun(template, {
      vnetHdr: opts.vnetHdr === true,
      multiQueue: opts.multiQueue === true,
    });
    return new TunDevice(name, rx, new addon.PacketFd(fd, rx.bytes, rx.lengths, rx.slotSize, rx.capacity));
  }

  /** Wraps any packet fd (a SOCK_SEQPACKET socket in tests); takes ownership of fd. */
  static fromFd(fd: number, name: string, opts: { capacity?: number; slotSize?: number } = {}): TunDevice {
    const addon = loadAddon();
    const rx = makeArena(opts.capacity ?? DEFAULT_CAPACITY, opts.slotSize ?? DEFAULT_SLOT_SIZE);
    return new TunDevice(name, rx, new addon.PacketFd(fd, rx.bytes, rx.lengths, rx.slotSize, rx.capacity));
  }

  start(onBatch: BatchHandler, onError?: ErrorHandler): void {
    if (onError !== undefined) this.errorHandler = onError;
    this.native.start(onBatch, (err) => reportError(this.errorHandler, err));
  }

  /** Without a handler, a stop-reading error is thrown as an uncaught exception. */
  onError(handler: ErrorHandler): void {
    this.errorHandler = handler;
  }

  pause(): void {
    this.native.pause();
  }

  resume(): void {
    this.native.resume();
  }

  onWritable(cb: () => void): void {
    this.native.onWritable(cb);
  }

  write(bytes: Uint8Array, offsets: Uint32Array, lengths: Uint32Array, start: number, count: number): number {
    return this.native.write(bytes, offsets, lengths, start, count);
  }

  /** Idempotent; afterwards start/onWritable/write throw EBADF. */
  close(): void {
    this.native.close();
  }

  get writeErrors(): number {
    return this.native.writeErrors;
  }

  /** Received packets longer than rx.slotSize, dropped. */
  get truncatedDrops(): number {
    return this.native.truncatedDrops;
  }

  get closed(): boolean {
    return this.native.closed;
  }
}

/** The underlay UDP socket (AF_INET), batched with recvmmsg/sendmmsg. */
export class UdpTransport implements Transport {
  private errorHandler: ErrorHandler | null = null;

  private constructor(
    readonly rx: DatagramArena,
    private readonly native: NativeUdpSocket,
  ) {}

  /** Binds addr:port (host-order IPv4, 0 = any; port 0 = any, see localPort). */
  static bind(addr: number, port: number, opts: UdpOptions = {}): UdpTransport {
    const addon = loadAddon();
    const base = makeArena(opts.capacity ?? DEFAULT_CAPACITY, opts.slotSize ?? DEFAULT_SLOT_SIZE);
    const rx: DatagramArena = {
      ...base,
      srcAddr: new Uint32Array(base.capacity),
      srcPort: new Uint16Array(base.capacity),
      truncated: new Uint8Array(base.capacity),
    };
    const native = new addon.UdpSocket(addr >>> 0, port, rx, opts.bufferBytes ?? DEFAULT_BUFFER_BYTES);
    return new UdpTransport(rx, native);
  }

  start(onBatch: BatchHandler, onError?: ErrorHandler): void {
    if (onError !== undefined) this.errorHandler = onError;
    this.native.start(onBatch, (err) => reportError(this.errorHandler, err));
  }

  /** Without a handler, a stop-reading error is thrown as an uncaught exception. */
  onError(handler: ErrorHandler): void {
    this.errorHandler = handler;
  }

  pause(): void {
    this.native.pause();
  }

  resume(): void {
    this.native.resume();
  }

  onWritable(cb: () => void): void {
    this.native.onWritable(cb);
  }

  send(
    bytes: Uint8Array,
    offsets: Uint32Array,
    lengths: Uint32Array,
    dstAddr: Uint32Array,
    dstPort: Uint16Array,
    start: number,
    count: number,
  ): number {
    return this.native.send(bytes, offsets, lengths, dstAddr, dstPort, start, count);
  }

  /** Idempotent; afterwards start/onWritable/send throw EBADF. */
  close(): void {
    this.native.close();
  }

  get localPort(): number {
    return this.native.localPort;
  }

  get sendErrors(): number {
    return this.native.sendErrors;
  }

  get recvBufferSize(): number {
    return this.native.recvBufferSize;
  }

  get sendBufferSize(): number {
    return this.native.sendBufferSize;
  }

  get closed(): boolean {
    return this.native.closed;
  }
}

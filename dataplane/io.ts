// The two boundaries of the packet path, batch shaped (wireguard-go's tun.Device
// and conn.Bind habit). A Device is the TUN side, a Transport the UDP side.
// Each owns a receive arena that it fills and hands over with ONE callback per
// batch; the callee must finish with the arena before returning (or pause the
// source). Writes take (bytes, offsets, lengths, start, count) and return how
// many packets were consumed: fewer than `count` means the kernel said EAGAIN;
// call onWritable() and retry the rest from the same arrays when it fires.
//
// Offloads (both sides optional, both off when the kernel refuses them): a
// Device may read TCP/UDP super-packets (rx.gsoSize > 0) and take them on
// write (gsoSize argument); a Transport may receive runs of equal-size
// datagrams in one slot (rx.segSize > 0) and send runs as one entry (segSize
// argument, at most gsoMaxSegments datagrams and MAX_RUN_BYTES bytes). A run
// is datagrams laid end to end, all segSize long but the last, which may be
// shorter. On the wire every datagram is still one ordinary IPv4 packet.

import {
  type Addon,
  loadAddon,
  type NativeError,
  type NativePacketFd,
  type NativeSource,
  type NativeUdpSocket,
  TUN_F,
  type TunFlags,
  UDP_STATE,
} from "./native/index.js";

/** Device slot with offloads: a 64 KiB super-packet plus the headers its split adds (64 segments). */
export const TSO_SLOT_SIZE = 72 * 1024;
/** Datagram slot with UDP GRO: the largest UDP payload fits. */
export const GRO_SLOT_SIZE = 64 * 1024;
/** Most bytes one run entry may carry (the largest IPv4 UDP payload). */
export const MAX_RUN_BYTES = 65507;
/** The offloads weft asks a TUN for; the kernel keeps what it knows. */
export const WANTED_OFFLOADS = TUN_F.CSUM | TUN_F.TSO4 | TUN_F.TSO6 | TUN_F.USO4 | TUN_F.USO6;

/** Fixed-slot receive arena: packet i sits at bytes[i * slotSize, + lengths[i]). */
export interface RxArena {
  readonly bytes: Uint8Array;
  readonly lengths: Uint32Array;
  readonly slotSize: number;
  /** Number of slots = the most packets one batch delivers. */
  readonly capacity: number;
}

/** Device arena: also what the virtio-net header said of each packet (zeros without offloads). */
export interface DeviceArena extends RxArena {
  /** Payload bytes per segment of a super-packet; 0 for an ordinary packet. */
  readonly gsoSize: Uint16Array;
  /** GSO_TYPE of a super-packet (TCPV4, UDP_L4, TCPV6). */
  readonly gsoType: Uint8Array;
}

/** Datagram arena: also records each datagram's sender and truncation. */
export interface DatagramArena extends RxArena {
  /** Sender IPv4 address (host order). */
  readonly srcAddr: Uint32Array;
  readonly srcPort: Uint16Array;
  /** 1 when the datagram was longer than its slot (MSG_TRUNC). */
  readonly truncated: Uint8Array;
  /** With GRO: the slot holds a run of datagrams of this size (last shorter); 0 = one datagram. */
  readonly segSize: Uint16Array;
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
  readonly rx: DeviceArena;
  /** Whether write() takes TCP super-packets (gsoSize) and reads may yield them. */
  readonly gso: boolean;
  /** Whether write() also takes UDP super-packets (GSO_UDP_L4; TUN_F_USO4 accepted). */
  readonly udpGso: boolean;
  /**
   * One write() per packet, never a multi-packet writev. With gso, gsoSize[i] > 0
   * marks a TCP (or, with udpGso, UDP) super-packet of segments with that
   * payload size, its L4 checksum seeded with the pseudo-header sum (what
   * groMerge leaves).
   */
  write(
    bytes: Uint8Array,
    offsets: Uint32Array,
    lengths: Uint32Array,
    start: number,
    count: number,
    gsoSize?: Uint16Array,
  ): number;
  /** Packets the kernel refused with an error other than EAGAIN (counted drops). */
  readonly writeErrors: number;
}

export interface Transport extends Source {
  readonly rx: DatagramArena;
  readonly localPort: number;
  /**
   * Datagrams one run entry may carry; 0 = no runs (every entry one datagram).
   * A run the kernel refuses at send time goes out datagram by datagram, and
   * so do that peer's runs for a while (gsoFallbacks counts the refusals).
   */
  readonly gsoMaxSegments: number;
  /** Runs the kernel refused (EINVAL/EIO), each making its peer fall back to datagrams for a while. */
  readonly gsoFallbacks: number;
  /** segSize[i] > 0: entry i is a run of datagrams of that size (see above). */
  send(
    bytes: Uint8Array,
    offsets: Uint32Array,
    lengths: Uint32Array,
    dstAddr: Uint32Array,
    dstPort: Uint16Array,
    start: number,
    count: number,
    segSize?: Uint16Array,
  ): number;
  /** Datagrams the kernel refused with an error other than EAGAIN (counted drops). */
  readonly sendErrors: number;
  /** Sends stopped short for want of kernel memory (ENOBUFS) and retried after a pause. */
  readonly sendRetries: number;
}

// ---- Native-backed implementations (dataplane/native, loaded on first use) ----

export interface BusyPollOptions {
  /** With us = 0: let the adaptive policy choose the window (off when false). */
  readonly adaptive?: boolean;
  /** The share of time adaptive spins may spend waiting, in percent (default 50). */
  readonly dutyPercent?: number;
  /** Sleep on the event loop's epoll set after a one-packet batch (default true; busy_poll.h, Spinner::Wait). */
  readonly loopWait?: boolean;
}

/**
 * Busy polling for every native source of this thread: after a batch, keep
 * polling without sleeping, for `us` µs when us > 0 (at most 2000, or the
 * addon throws a RangeError), else for the adaptive window if asked; off by
 * default.
 */
export function setBusyPoll(us: number, opts: BusyPollOptions = {}): void {
  loadAddon().setBusyPoll(us, opts.adaptive ?? false, opts.dutyPercent ?? DEFAULT_BUSY_POLL_DUTY);
  loadAddon().setLoopWait(opts.loopWait ?? true);
}

export const DEFAULT_BUSY_POLL_DUTY = 50;

/** Spins so far on this thread (for /metrics). */
export function busyPollStats(): ReturnType<Addon["busyPollStats"]> {
  return loadAddon().busyPollStats();
}

/** Called when reading stops on an error (device deleted, peer closed); resume() retries. */
export type ErrorHandler = (err: NativeError) => void;

export interface TunOptions extends TunFlags {
  /** Packets per batch (default 64). */
  capacity?: number;
  /** Bytes per slot (default 2048, TSO_SLOT_SIZE with vnetHdr); longer packets are dropped and counted in truncatedDrops. */
  slotSize?: number;
  /** Virtio-net headers and WANTED_OFFLOADS (what the kernel accepts, see offloads). */
  offload?: boolean;
}

export interface UdpOptions {
  /** Datagrams per batch (default 64). */
  capacity?: number;
  /** Bytes per slot (default 2048); longer datagrams arrive cut, flagged in rx.truncated. */
  slotSize?: number;
  /** SO_RCVBUF and SO_SNDBUF to ask for (default 4 MiB; 0 keeps the kernel's default). */
  bufferBytes?: number;
  /** UDP GRO and GSO where the kernel has them (slotSize then defaults to GRO_SLOT_SIZE). */
  offload?: boolean;
  /**
   * After the kernel refused a run to a peer (a lower path MTU, no checksum
   * offload on its route), that peer's runs go datagram by datagram for this
   * long, then GSO is tried again (default 30000; 0: at once; at most a day).
   */
  gsoRetryMs?: number;
}

const DEFAULT_CAPACITY = 64;
const DEFAULT_SLOT_SIZE = 2048;
const DEFAULT_BUFFER_BYTES = 4 * 1024 * 1024;
/** Pause before retrying a send the kernel refused for want of memory (ENOBUFS). */
const NO_BUFFER_RETRY_MS = 1;

function positiveInt(value: number, field: string): number {
  if (!Number.isInteger(value) || value < 1) throw new RangeError(`${field} must be a positive integer, got ${value}`);
  return value;
}

function makeArena(capacity: number, slotSize: number): RxArena {
  positiveInt(capacity, "capacity");
  positiveInt(slotSize, "slotSize");
  const bytes = new Uint8Array(capacity * slotSize);
  // Touch every page now: a fresh buffer is mapped lazily, so without this
  // the daemon's memory would creep up for minutes as ever larger batches
  // and super-packets reach untouched slots, which looks like a leak.
  for (let i = 0; i < bytes.length; i += 4096) bytes[i] = 1;
  bytes.fill(0);
  return { bytes, lengths: new Uint32Array(capacity), slotSize, capacity };
}

function makeDeviceArena(capacity: number, slotSize: number): DeviceArena {
  const base = makeArena(capacity, slotSize);
  return { ...base, gsoSize: new Uint16Array(base.capacity), gsoType: new Uint8Array(base.capacity) };
}

/** Routes a stop-reading error to the handler, or makes it an uncaught exception. */
function reportError(handler: ErrorHandler | null, err: NativeError): void {
  if (handler === null) throw err;
  handler(err);
}

/** What both native endpoints share: readiness, backpressure, error reporting, close. */
abstract class NativeEndpoint<N extends NativeSource> {
  private errorHandler: ErrorHandler | null = null;

  protected constructor(protected readonly native: N) {}

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

  /** Idempotent; afterwards start, onWritable and write/send throw EBADF. */
  close(): void {
    this.native.close();
  }

  get closed(): boolean {
    return this.native.closed;
  }
}

/**
 * A TUN device queue (IFF_TUN|IFF_NO_PI): packets start at the IP header. With
 * vnetHdr the native layer reads and writes the virtio-net header around them.
 */
export class TunDevice extends NativeEndpoint<NativePacketFd> implements Device {
  private constructor(
    readonly name: string,
    readonly rx: DeviceArena,
    native: NativePacketFd,
    /** Virtio-net headers on: super-packets in both directions. */
    readonly gso: boolean,
    /** TUN_F_* bits the kernel accepted (0 without vnetHdr). */
    readonly offloads: number,
  ) {
    super(native);
    this.udpGso = gso && (offloads & TUN_F.USO4) !== 0;
  }

  readonly udpGso: boolean;

  /**
   * Opens a TUN queue in this process's network namespace; `template` may hold
   * "%d" ("flannel%d"), `name` is what the kernel chose. Needs CAP_NET_ADMIN.
   */
  static open(template: string, opts: TunOptions = {}): TunDevice {
    const addon = loadAddon();
    const vnetHdr = opts.vnetHdr === true || opts.offload === true;
    const rx = makeDeviceArena(
      opts.capacity ?? DEFAULT_CAPACITY,
      opts.slotSize ?? (vnetHdr ? TSO_SLOT_SIZE : DEFAULT_SLOT_SIZE),
    );
    const { fd, name, offloads } = addon.openTun(template, {
      vnetHdr,
      multiQueue: opts.multiQueue === true,
      offloads: opts.offloads ?? (opts.offload === true ? WANTED_OFFLOADS : 0),
    });
    const native = new addon.PacketFd(fd, rx.bytes, rx.lengths, rx.slotSize, rx.capacity, vnetHdr ? rx : undefined);
    return new TunDevice(name, rx, native, vnetHdr, offloads);
  }

  /**
   * Wraps any packet fd (a SOCK_SEQPACKET socket in tests); takes ownership of
   * fd. vnetHdr: each packet travels behind a virtio-net header, as on a TUN.
   */
  static fromFd(
    fd: number,
    name: string,
    opts: { capacity?: number; slotSize?: number; vnetHdr?: boolean } = {},
  ): TunDevice {
    const addon = loadAddon();
    const rx = makeDeviceArena(opts.capacity ?? DEFAULT_CAPACITY, opts.slotSize ?? DEFAULT_SLOT_SIZE);
    const vnetHdr = opts.vnetHdr === true;
    const native = new addon.PacketFd(fd, rx.bytes, rx.lengths, rx.slotSize, rx.capacity, vnetHdr ? rx : undefined);
    return new TunDevice(name, rx, native, vnetHdr, 0);
  }

  // The arrays bound in the addon: a write with the same ones (the engine's
  // staging, batch after batch) passes only start and count.
  private boundBytes: Uint8Array | null = null;
  private boundOffsets: Uint32Array | null = null;
  private boundLengths: Uint32Array | null = null;
  private boundGso: Uint16Array | undefined;

  write(
    bytes: Uint8Array,
    offsets: Uint32Array,
    lengths: Uint32Array,
    start: number,
    count: number,
    gsoSize?: Uint16Array,
  ): number {
    if (
      bytes !== this.boundBytes ||
      offsets !== this.boundOffsets ||
      lengths !== this.boundLengths ||
      gsoSize !== this.boundGso
    ) {
      this.native.bindWrite(bytes, offsets, lengths, gsoSize);
      this.boundBytes = bytes;
      this.boundOffsets = offsets;
      this.boundLengths = lengths;
      this.boundGso = gsoSize;
    }
    return this.native.write(start, count);
  }

  get writeErrors(): number {
    return this.native.writeErrors;
  }

  /** Received packets longer than rx.slotSize, dropped. */
  get truncatedDrops(): number {
    return this.native.truncatedDrops;
  }
}

/** The underlay UDP socket (AF_INET), batched with recvmmsg/sendmmsg (and UDP GSO/GRO with offload). */
export class UdpTransport extends NativeEndpoint<NativeUdpSocket> implements Transport {
  private constructor(
    readonly rx: DatagramArena,
    native: NativeUdpSocket,
    /** The socket's UDP_STATE words, kept current by the addon. */
    private readonly state: Uint32Array,
  ) {
    super(native);
  }

  /** Binds addr:port (host-order IPv4, 0 = any; port 0 = any, see localPort). */
  // "override": a subclass static named bind shadows Function.prototype.bind.
  static override bind(addr: number, port: number, opts: UdpOptions = {}): UdpTransport {
    const addon = loadAddon();
    const offload = opts.offload === true;
    const base = makeArena(
      opts.capacity ?? DEFAULT_CAPACITY,
      opts.slotSize ?? (offload ? GRO_SLOT_SIZE : DEFAULT_SLOT_SIZE),
    );
    const rx: DatagramArena = {
      ...base,
      srcAddr: new Uint32Array(base.capacity),
      srcPort: new Uint16Array(base.capacity),
      truncated: new Uint8Array(base.capacity),
      segSize: new Uint16Array(base.capacity),
    };
    const state = new Uint32Array(UDP_STATE.WORDS);
    const native = new addon.UdpSocket(addr >>> 0, port, { ...rx, state }, opts.bufferBytes ?? DEFAULT_BUFFER_BYTES, {
      offload,
      gsoRetryMs: opts.gsoRetryMs,
    });
    return new UdpTransport(rx, native, state);
  }

  // The arrays bound in the addon: a send with the same ones (the engine's
  // staging, batch after batch) passes only start and count.
  private boundBytes: Uint8Array | null = null;
  private boundOffsets: Uint32Array | null = null;
  private boundLengths: Uint32Array | null = null;
  private boundAddrs: Uint32Array | null = null;
  private boundPorts: Uint16Array | null = null;
  private boundSeg: Uint16Array | undefined;

  send(
    bytes: Uint8Array,
    offsets: Uint32Array,
    lengths: Uint32Array,
    dstAddr: Uint32Array,
    dstPort: Uint16Array,
    start: number,
    count: number,
    segSize?: Uint16Array,
  ): number {
    if (
      bytes !== this.boundBytes ||
      offsets !== this.boundOffsets ||
      lengths !== this.boundLengths ||
      dstAddr !== this.boundAddrs ||
      dstPort !== this.boundPorts ||
      segSize !== this.boundSeg
    ) {
      this.native.bindSend(bytes, offsets, lengths, dstAddr, dstPort, segSize);
      this.boundBytes = bytes;
      this.boundOffsets = offsets;
      this.boundLengths = lengths;
      this.boundAddrs = dstAddr;
      this.boundPorts = dstPort;
      this.boundSeg = segSize;
    }
    return this.native.send(start, count);
  }

  get localPort(): number {
    return this.native.localPort;
  }

  get sendErrors(): number {
    return this.native.sendErrors;
  }

  get sendRetries(): number {
    return this.native.sendRetries;
  }

  get gsoFallbacks(): number {
    return this.native.gsoFallbacks;
  }

  /**
   * After EAGAIN, when the socket is writable. After ENOBUFS the socket may
   * well be writable already (it is the kernel's memory that ran short), so
   * waiting for writability would spin: try again after a pause instead.
   */
  override onWritable(cb: () => void): void {
    if (this.state[UDP_STATE.RETRY_LATER] === 0) {
      this.native.onWritable(cb);
      return;
    }
    setTimeout(() => {
      if (!this.closed) cb();
    }, NO_BUFFER_RETRY_MS);
  }

  /** Tests: the next `count` sendmmsg calls fail with `errno` (e.g. os.constants.errno.ENOBUFS). */
  injectSendErrors(errno: number, count: number): void {
    this.native.injectSendErrors(errno, count);
  }

  get gsoMaxSegments(): number {
    return this.state[UDP_STATE.GSO_SEGMENTS];
  }

  /** Whether UDP GRO is on (rx.segSize may be set). */
  get gro(): boolean {
    return this.native.gro;
  }

  get recvBufferSize(): number {
    return this.native.recvBufferSize;
  }

  get sendBufferSize(): number {
    return this.native.sendBufferSize;
  }
}

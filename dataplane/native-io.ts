// The native Device and Transport (dataplane/native, loaded on first use):
// the TUN queue and the UDP socket behind io.ts's contracts, the arenas they
// fill, busy polling, and the one factory weftd opens its dataplane with.
// Nothing outside dataplane/ reaches the addon; it comes through here.

import { constants as osConstants } from "node:os";
import type { DirectionCounters } from "./counters.js";
import {
  type BatchHandler,
  type DatagramArena,
  type DeviceArena,
  GRO_SLOT_SIZE,
  type RawDevice,
  type RawTransport,
  type RxArena,
  type SendPieces,
  TSO_SLOT_SIZE,
} from "./io.js";
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
import { GRO_MAX_SEGMENTS } from "./offload/coalescer.js";
import { offloadDataplane } from "./offload/index.js";
import { type Dataplane, plainDataplane } from "./plain.js";

/** The offloads weft asks a TUN for; the kernel keeps what it knows. */
export const WANTED_OFFLOADS = TUN_F.CSUM | TUN_F.TSO4 | TUN_F.TSO6 | TUN_F.USO4 | TUN_F.USO6;

export interface BusyPollOptions {
  /** With us = 0: let the adaptive policy choose the window (off when false). */
  readonly adaptive?: boolean;
  /** The share of time adaptive spins may spend waiting, in percent (default 50). */
  readonly dutyPercent?: number;
  /** Sleep on the event loop's epoll set after a one-packet batch (default true; busy_poll.h, Spinner::Wait). */
  readonly loopWait?: boolean;
  /** Watch readiness during spins through io_uring (poll_ring.h) instead of epoll (default false). */
  readonly ring?: boolean;
}

/**
 * Busy polling for every native source of this thread: after a batch, keep
 * polling without sleeping, for `us` µs when us > 0 (at most 2000, or the
 * addon throws a RangeError), else for the adaptive window if asked; off by
 * default.
 */
export function setBusyPoll(us: number, opts: BusyPollOptions = {}): string | null {
  const addon = loadAddon();
  addon.setBusyPoll(us, opts.adaptive ?? false, opts.dutyPercent ?? DEFAULT_BUSY_POLL_DUTY);
  addon.setLoopWait(opts.loopWait ?? true);
  const errno = addon.setBusyPollRing(opts.ring ?? false);
  if (errno === 0) return null;
  const name = Object.entries(osConstants.errno).find(([, n]) => n === errno)?.[0] ?? `errno ${errno}`;
  return `io_uring_setup failed: ${name}`;
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
  // Left untouched on purpose: a fresh zeroed buffer this large is mapped
  // lazily (calloc -> mmap), so a page becomes resident only when the kernel
  // first writes a packet into it. With offloads the arenas reserve 8.5 MiB
  // (64 slots x 64-72 KiB, the largest super-packet in any slot) of which
  // traffic reaches a fraction: resident memory follows the traffic (the
  // deepest batch x the biggest packets seen) up to that cap, and the
  // addresses never change, so nothing the addon holds needs rebinding.
  const bytes = new Uint8Array(capacity * slotSize);
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
export class TunDevice extends NativeEndpoint<NativePacketFd> implements RawDevice {
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
  private boundRuns: Uint16Array | undefined;

  write(
    bytes: Uint8Array,
    offsets: Uint32Array,
    lengths: Uint32Array,
    start: number,
    count: number,
    gsoSize?: Uint16Array,
    runs?: Uint16Array,
  ): number {
    if (
      bytes !== this.boundBytes ||
      offsets !== this.boundOffsets ||
      lengths !== this.boundLengths ||
      gsoSize !== this.boundGso ||
      runs !== this.boundRuns
    ) {
      this.native.bindWrite(bytes, offsets, lengths, gsoSize, runs);
      this.boundBytes = bytes;
      this.boundOffsets = offsets;
      this.boundLengths = lengths;
      this.boundGso = gsoSize;
      this.boundRuns = runs;
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
export class UdpTransport extends NativeEndpoint<NativeUdpSocket> implements RawTransport {
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
  private boundPieces: SendPieces | undefined;

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
    if (
      bytes !== this.boundBytes ||
      offsets !== this.boundOffsets ||
      lengths !== this.boundLengths ||
      dstAddr !== this.boundAddrs ||
      dstPort !== this.boundPorts ||
      segSize !== this.boundSeg ||
      pieces !== this.boundPieces
    ) {
      this.native.bindSend(bytes, offsets, lengths, dstAddr, dstPort, segSize, pieces);
      this.boundPieces = pieces;
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

// ---- Opening weftd's dataplane ----

/** The log calls the factory makes (control/log.ts's Logger fits). */
export interface DataplaneLog {
  info(obj: unknown, msg?: string): void;
}

export interface NativeDataplaneOptions {
  /** TUN name template ("flannel%d"). */
  readonly tunTemplate: string;
  /** Host-order IPv4 address and port the UDP socket binds. */
  readonly bindAddr: number;
  readonly port: number;
  /** --offload: virtio-net headers on flannel0, UDP GSO/GRO on the socket. */
  readonly offload: boolean;
  readonly log: DataplaneLog;
  /**
   * Runs between opening flannel0 and binding the socket (flanneld's order:
   * the interface is addressed and up before the socket exists).
   * `gsoMaxSegments` is the most segments a super-packet toward flannel0 may
   * carry (0 without offloads).
   */
  readonly configureTun: (name: string, gsoMaxSegments: number) => Promise<void>;
  /** The transmit counters: super-packets that cannot be split are counted there. */
  readonly counters: DirectionCounters;
  /** flannel0's MTU. */
  readonly mtu: number;
}

export interface NativeDataplane extends Dataplane {
  /** flannel0 and the socket themselves, for their error counters. */
  readonly tun: TunDevice;
  readonly socket: UdpTransport;
  /** Super-packets coalesced toward flannel0 and the packets in them (zeros without offloads). */
  coalesced(): { superPackets: number; segments: number };
}

/**
 * Opens flannel0 (with offloads when asked), lets the caller configure it,
 * binds the UDP socket, logs which offloads the kernel granted, and gives
 * both the engine's shape: --offload chooses offload/'s factory, else the
 * plain one. On a failure after flannel0 opened, it is closed again.
 */
const NO_COALESCING = { superPackets: 0, segments: 0 };

export async function openNativeDataplane(opts: NativeDataplaneOptions): Promise<NativeDataplane> {
  const { offload, log } = opts;
  const device = TunDevice.open(opts.tunTemplate, { offload });
  try {
    await opts.configureTun(device.name, offload ? GRO_MAX_SEGMENTS : 0);
    const transport = UdpTransport.bind(opts.bindAddr, opts.port, { offload });
    if (offload) {
      const names = Object.entries(TUN_F).flatMap(([k, bit]) => (device.offloads & bit ? [k] : []));
      log.info({ tunOffloads: names, udpGso: transport.gsoMaxSegments > 0, udpGro: transport.gro }, "offloads");
    }
    const raw = { device, transport };
    if (!offload) return { ...plainDataplane(raw), tun: device, socket: transport, coalesced: () => NO_COALESCING };
    const dp = offloadDataplane(raw, { counters: opts.counters, mtu: opts.mtu });
    return { ...dp, tun: device, socket: transport, coalesced: () => dp.device.coalesced };
  } catch (err) {
    device.close();
    throw err;
  }
}

/**
 * Gives the whole pages inside a receive arena back to the kernel
 * (MADV_DONTNEED): they read as zeros until the kernel next writes a packet
 * there. Only while nothing points into it (arena-release.ts). Returns the bytes released.
 */
export function releaseArenaPages(bytes: Uint8Array): number {
  return loadAddon().releasePages(bytes);
}

/** The resident bytes of the whole pages inside an arena (mincore). */
export function arenaResidentBytes(bytes: Uint8Array): number {
  return loadAddon().residentBytes(bytes);
}

/** The sd_notify states weftd reports. */
export type SdNotifyState = "READY=1" | "STOPPING=1";

/**
 * Tells systemd `state` over $NOTIFY_SOCKET. False when there is no socket
 * (not started by systemd with Type=notify); throws when sending fails.
 */
export function sdNotify(state: SdNotifyState): boolean {
  const socket = process.env.NOTIFY_SOCKET;
  if (socket === undefined || socket === "") return false;
  loadAddon().notify(socket, state);
  return true;
}

/**
 * The nf_tables ruleset generation of this network namespace: unchanged
 * means no rule was added, removed or replaced since (iptables-nft included).
 * Null when the kernel has no nf_tables or refuses to say.
 */
export function nftGeneration(): number | null {
  return loadAddon().nftGeneration();
}

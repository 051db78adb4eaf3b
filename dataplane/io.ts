// The boundaries of the packet path, batch shaped (wireguard-go's tun.Device
// and conn.Bind habit). Contracts only: the native implementations are in
// native-io.ts, the in-memory ones in fake-io.ts.
//
//   engine ◄──► Device / Transport             ordinary IPv4 packets, one per entry
//                 │ plain.ts (no offloads)  or  offload/ (split, coalesce, runs)
//   kernel ◄──► RawDevice / RawTransport        slots as the kernel fills them
//
// Each source owns a receive batch that it fills and hands over with ONE
// callback per batch; the callee must finish with it before returning (or
// pause the source). Writes take a batch object and (start, count) and return
// how many entries were consumed: fewer than `count` means the kernel said
// EAGAIN; call onWritable() and retry the rest from the same batch when it
// fires.
//
// The engine sees only Device and Transport: entry i of a receive batch is one
// ordinary IPv4 packet at bytes[offsets[i], + lengths[i]). Whatever the kernel
// hands over in bigger pieces is cut into entries below this line.
//
// RawDevice and RawTransport are the kernel's shape. Offloads (both sides
// optional, both off when the kernel refuses them): a RawDevice may read
// TCP/UDP super-packets (rx.gsoSize > 0) and take them on write (gsoSize
// argument); a RawTransport may receive runs of equal-size datagrams in one
// slot (rx.segSize > 0) and send runs as one entry (segSize argument, at most
// gsoMaxSegments datagrams and MAX_RUN_BYTES bytes). A run is datagrams laid
// end to end, all segSize long but the last, which may be shorter. On the
// wire every datagram is still one ordinary IPv4 packet.

// ---- What the engine sees ----

/** A receive batch: entry i is one packet at bytes[offsets[i], + lengths[i]). */
export interface RxBatch {
  readonly bytes: Uint8Array;
  readonly offsets: Uint32Array;
  readonly lengths: Uint32Array;
  /** The most entries one batch delivers. */
  readonly capacity: number;
}

/** A receive batch of datagrams: also each one's sender and truncation. */
export interface DatagramBatch extends RxBatch {
  /** Sender IPv4 address (host order). */
  readonly srcAddr: Uint32Array;
  /** 1 when the datagram was longer than its slot (MSG_TRUNC): a counted drop. */
  readonly truncated: Uint8Array;
}

/** Packets to write, where they lie; the writer keeps the object and may bind its arrays once. */
export interface TxBatch {
  readonly bytes: Uint8Array;
  offsets: Uint32Array;
  lengths: Uint32Array;
}

/** Datagrams to send: also each one's destination. */
export interface DatagramTxBatch extends TxBatch {
  addrs: Uint32Array;
  ports: Uint16Array;
}

export interface Device extends Source {
  readonly name: string;
  readonly rx: RxBatch;
  /** Writes entries [start, start + count) of `batch`, one packet each. */
  write(batch: TxBatch, start: number, count: number): number;
}

export interface Transport extends Source {
  readonly rx: DatagramBatch;
  readonly localPort: number;
  /** Sends entries [start, start + count) of `batch`, one datagram each. */
  send(batch: DatagramTxBatch, start: number, count: number): number;
}

// ---- What the kernel hands over ----

/** Device slot with offloads: a 64 KiB super-packet plus the headers its split adds (64 segments). */
export const TSO_SLOT_SIZE = 72 * 1024;
/** Datagram slot with UDP GRO: the largest UDP payload fits. */
export const GRO_SLOT_SIZE = 64 * 1024;
/** Most bytes one run entry may carry (the largest IPv4 UDP payload). */
export const MAX_RUN_BYTES = 65507;

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

export interface Source {
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

export interface RawDevice extends Source {
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
   * groMerge leaves). runs (with gsoSize): runs[i] >= 2 makes entries i ..
   * i + runs[i] - 1 one super-packet gathered from where they lie, entry i
   * whole (its headers fixed for the run by groMerge's gather), then each
   * member's payload past its headers; a run is consumed whole or not at all.
   */
  write(
    bytes: Uint8Array,
    offsets: Uint32Array,
    lengths: Uint32Array,
    start: number,
    count: number,
    gsoSize?: Uint16Array,
    runs?: Uint16Array,
  ): number;
  /** Packets the kernel refused with an error other than EAGAIN (counted drops). */
  readonly writeErrors: number;
}

/**
 * Where a run's datagrams lie when not back to back: entry i (count[i] > 0)
 * is the datagrams at offsets/lengths [first[i], first[i] + count[i]), every
 * one but the last exactly segSize[i] long.
 */
export interface SendPieces {
  readonly first: Uint32Array;
  readonly count: Uint16Array;
  readonly offsets: Uint32Array;
  readonly lengths: Uint32Array;
}

export interface RawTransport extends Source {
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
  /**
   * segSize[i] > 0: entry i is a run of datagrams of that size (see above);
   * with pieces, a run whose datagrams do not lie back to back is sent from
   * them, one iovec per datagram (lengths[i] still the run's total).
   */
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
  ): number;
  /** Datagrams the kernel refused with an error other than EAGAIN (counted drops). */
  readonly sendErrors: number;
  /** Sends stopped short for want of kernel memory (ENOBUFS) and retried after a pause. */
  readonly sendRetries: number;
}

// The two boundaries of the packet path, batch shaped (wireguard-go's tun.Device
// and conn.Bind habit). A Device is the TUN side, a Transport the UDP side.
// Each owns a receive arena that it fills and hands over with ONE callback per
// batch; the callee must finish with the arena before returning (or pause the
// source). Writes take (bytes, offsets, lengths, start, count) and return how
// many packets were consumed: fewer than `count` means the kernel said EAGAIN;
// call onWritable() and retry the rest from the same arrays when it fires.

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
  /** Starts delivering batches; handler runs once per batch, count >= 1. */
  start(onBatch: BatchHandler): void;
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

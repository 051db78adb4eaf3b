// The raw surface of weft.node (built by node-gyp from dataplane/native/*.cc at
// `npm ci`). The rest of weft uses the typed wrappers in dataplane/io.ts; this
// module only finds the binary, loads it on first use and declares its types.
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** Errors from the addon name the syscall and errno: "bind 198.18.0.1:8285: EADDRINUSE (...)". */
export interface NativeError extends Error {
  /** errno name ("EPERM"), or "EOF" when a stream socket's peer closed. */
  code: string;
  syscall: string;
  /** Negative errno, as in Node's own system errors; absent for "EOF". */
  errno?: number;
}

/**
 * Readiness over one fd (uv_poll, level-triggered). After close(): start,
 * onWritable, write and send throw EBADF; pause, resume and close are no-ops;
 * getters keep their last values (fd reads -1).
 */
export interface NativeSource {
  /**
   * Each readiness drains up to `capacity` packets into the arena, then calls
   * onBatch(count) once (count >= 1). When reading fails (errno, or "EOF") it
   * stops and onError(err) runs once; resume() restarts it. Without onError
   * the error is thrown as an uncaught exception. Calling start again
   * replaces both handlers.
   */
  start(onBatch: (count: number) => void, onError?: (err: NativeError) => void): void;
  pause(): void;
  /** Also restarts reading after an error. */
  resume(): void;
  /** cb() once, the next time the fd is writable; waiters run in order; close() drops them. */
  onWritable(cb: () => void): void;
  /** Stops polling; the fd is closed when libuv has closed the poll handle. Idempotent. */
  close(): void;
  readonly fd: number;
  readonly closed: boolean;
}

/** A TUN queue or a SOCK_SEQPACKET socket: one read()/write() is one packet. */
export interface NativePacketFd extends NativeSource {
  /**
   * The arrays the following writes read, kept until the next bindWrite (a
   * buffer detached or shrunk: write throws ERR_WEFT_DETACHED). gsoSize (vnet
   * fds only): gsoSize[i] > 0 marks a TCP/UDP super-packet whose L4 checksum
   * holds the pseudo-header sum; the kernel segments it. runs (with gsoSize):
   * runs[i] >= 2 makes entries i .. i + runs[i] - 1 one super-packet written
   * from pieces, entry i whole (headers fixed by groMerge with gather), then
   * each member's payload; the run's entries are consumed together.
   */
  bindWrite(
    bytes: Uint8Array,
    offsets: Uint32Array,
    lengths: Uint32Array,
    gsoSize?: Uint16Array,
    runs?: Uint16Array,
  ): void;
  /** One write() per bound packet (or run) in [start, start + count); returns packets consumed (< count only on EAGAIN). */
  write(start: number, count: number): number;
  /** Packets the kernel refused (errno other than EAGAIN/EINTR); they count as consumed. */
  readonly writeErrors: number;
  /** Received packets longer than slotSize, dropped before delivery. */
  readonly truncatedDrops: number;
}

export interface NativeDatagramArena {
  bytes: Uint8Array;
  lengths: Uint32Array;
  srcAddr: Uint32Array;
  srcPort: Uint16Array;
  truncated: Uint8Array;
  /** GRO segment size per slot (0: one datagram); needed for offload. */
  segSize?: Uint16Array;
  /** Kept current by the socket, read without a call: see UDP_STATE. */
  state: Uint32Array;
  slotSize: number;
  capacity: number;
}

/** Where the UDP socket keeps its state in arena.state. */
export const UDP_STATE = {
  /** Segments one send entry may carry (UDP GSO); 0 when the kernel lacks it. */
  GSO_SEGMENTS: 0,
  /** 1: the last send stopped short for want of kernel memory; writability will not tell when to retry. */
  RETRY_LATER: 1,
  WORDS: 2,
} as const;

/** AF_INET UDP socket with recvmmsg/sendmmsg batches. */
export interface NativeUdpSocket extends NativeSource {
  /**
   * The arrays the following sends read, kept until the next bindSend
   * (detached or shrunk buffers: send throws ERR_WEFT_DETACHED); dstAddr/dstPort
   * in host order.
   */
  bindSend(
    bytes: Uint8Array,
    offsets: Uint32Array,
    lengths: Uint32Array,
    dstAddr: Uint32Array,
    dstPort: Uint16Array,
    segSize?: Uint16Array,
    pieces?: { first: Uint32Array; count: Uint16Array; offsets: Uint32Array; lengths: Uint32Array },
  ): void;
  /**
   * sendmmsg of the bound datagrams in [start, start + count); returns
   * datagrams consumed (< count only on EAGAIN, or ENOBUFS/ENOMEM: then
   * arena.state says retry later).
   */
  send(start: number, count: number): number;
  /** Whether UDP_GRO is on: a slot may hold a run of datagrams (arena.segSize). */
  readonly gro: boolean;
  /** Datagrams the kernel refused (errno other than EAGAIN/EINTR/ENOBUFS/ENOMEM); they count as consumed. */
  readonly sendErrors: number;
  /** Sends stopped short by ENOBUFS/ENOMEM, to be retried after a pause. */
  readonly sendRetries: number;
  /** Runs the kernel refused (EINVAL/EIO); each sent its peer's runs datagram by datagram for gsoRetryMs. */
  readonly gsoFallbacks: number;
  /** Tests: the next `count` sendmmsg calls fail with `errno` without reaching the kernel. */
  injectSendErrors(errno: number, count: number): void;
  readonly localPort: number;
  /** SO_RCVBUF / SO_SNDBUF as the kernel reports them (it doubles what was asked). */
  readonly recvBufferSize: number;
  readonly sendBufferSize: number;
}

export interface TunFlags {
  /** IFF_VNET_HDR: every packet is preceded by a virtio_net_hdr. */
  vnetHdr?: boolean;
  /** IFF_MULTI_QUEUE: open further queues of the same device by name. */
  multiQueue?: boolean;
  /** TUN_F_* bits to ask TUNSETOFFLOAD for (needs vnetHdr); unknown bits are refused, not fatal. */
  offloads?: number;
}

/** TUNSETOFFLOAD bits (linux/if_tun.h). */
export const TUN_F = {
  CSUM: 0x01,
  TSO4: 0x02,
  TSO6: 0x04,
  TSO_ECN: 0x08,
  USO4: 0x20,
  USO6: 0x40,
} as const;

/** VIRTIO_NET_HDR_GSO_* types (gsoType in a device arena). */
export const GSO_TYPE = { NONE: 0, TCPV4: 1, TCPV6: 4, UDP_L4: 5 } as const;

/** Where the virtio-net header fields of reads land (one entry per slot). */
export interface NativeVnetArena {
  gsoSize: Uint16Array;
  gsoType: Uint8Array;
}

export interface Addon {
  /**
   * new PacketFd(fd, bytes, lengths, slotSize, capacity): owns fd from here on,
   * also when the constructor throws. An arena buffer detached or shrunk later
   * stops reading with an ERR_WEFT_DETACHED error.
   */
  PacketFd: new (
    fd: number,
    bytes: Uint8Array,
    lengths: Uint32Array,
    slotSize: number,
    capacity: number,
    vnet?: NativeVnetArena,
  ) => NativePacketFd;
  /** new UdpSocket(bindAddr host order (0 = any), port (0 = any), arena, bufferBytes (0 = kernel default)). */
  UdpSocket: new (
    bindAddr: number,
    port: number,
    arena: NativeDatagramArena,
    bufferBytes: number,
    opts?: { offload?: boolean; gsoRetryMs?: number },
  ) => NativeUdpSocket;
  /** Opens a TUN queue (IFF_TUN|IFF_NO_PI) in the caller's network namespace; name is the kernel's. */
  openTun(template: string, flags?: TunFlags): { fd: number; name: string; offloads: number };
  /** AF_UNIX SOCK_SEQPACKET pair, non-blocking, cloexec (tests of the packet fd). */
  socketpair(): [number, number];
  /**
   * After each batch, poll every started source of this thread without
   * sleeping: for `us` microseconds when us > 0 (at most 2000, the cap on one
   * spin, batches included), else for the adaptive policy's window when
   * `adaptive`, waiting at most `dutyPercent` % of the time (busy_poll.h).
   */
  setBusyPoll(us: number, adaptive: boolean, dutyPercent: number): void;
  /** Whether this thread may sleep on libuv's own epoll set after a one-packet batch (busy_poll.h, Spinner::Wait); on by default. */
  setLoopWait(on: boolean): void;
  /** Whether spins watch readiness through io_uring (busy_poll.h, poll_ring.h); returns 0, or the errno io_uring failed with (spins keep epoll). */
  setBusyPollRing(on: boolean): number;
  /**
   * This thread's spins so far: started, those that caught a batch, time spent waiting, the current window;
   * its own sleeps on libuv's epoll set and those that caught a batch; and the follow-up reads after a device write
   * (busy_poll.h), tried and found a packet.
   */
  busyPollStats(): {
    spins: number;
    caught: number;
    waitedNs: number;
    windowNs: number;
    waits: number;
    waitsCaught: number;
    followUps: number;
    followUpHits: number;
    /** Spins watch readiness through io_uring (setBusyPollRing), and the submissions that armed its polls. */
    ring: boolean;
    ringArms: number;
  };
  /** A fresh adaptive policy run over [kind, nowNs, waitedNs] triples (0 wake, 1 ran out, 2 capped): the window at each wake. */
  busyPollTrace(adaptive: boolean, fixedUs: number, dutyPercent: number, steps: number[]): number[];
  /** sd_notify: one datagram to an AF_UNIX socket path; "@name" is abstract. */
  notify(socketPath: string, message: string): void;
  /**
   * The nf_tables ruleset generation of the caller's network namespace (one
   * NFT_MSG_GETGEN; every ruleset commit, iptables-nft's too, bumps it), or
   * null when it cannot be read (no nf_tables, no CAP_NET_ADMIN).
   */
  nftGeneration(): number | null;
  /**
   * Unmaps the touched pages of this process's read-only, unmodified file mappings (node's executable, libraries);
   * they stay in the page cache and fault back in when used. Returns the bytes that were resident.
   */
  releaseFilePages(): number;
  /**
   * Once a burst of work is over: V8's low-memory notification (compacting full
   * collections) and glibc's malloc_trim(0); true when malloc_trim released memory.
   */
  reduceMemory(): boolean;
  /**
   * MADV_DONTNEED on the whole pages inside bytes (never a byte outside it):
   * they read back as zeros and fault in again when written. Returns the bytes advised.
   */
  releasePages(bytes: Uint8Array): number;
  /** The resident bytes of the whole pages inside bytes (mincore). */
  residentBytes(bytes: Uint8Array): number;
  /**
   * Splits the TSO/USO super-packet at bytes[off, +len) (len = its IP total
   * length) in place into segments of gsoSize payload bytes, end to end, none
   * reaching past off + room. True on success, out = [segments, stride, total].
   */
  gsoSplit(
    bytes: Uint8Array,
    off: number,
    len: number,
    gsoType: number,
    gsoSize: number,
    room: number,
    out: Uint32Array,
  ): boolean;
  /**
   * Appends the TCP or UDP payloads of packets first+1 .. first+count-1 to
   * packet `first` (growing up to room bytes from its offset), stopping before
   * any whose checksum fails (or, for UDP, is absent); fixes the IP header,
   * for TCP takes PSH from the last, for UDP sets the whole length, and seeds
   * the L4 checksum for NEEDS_CSUM. Returns how many went in (< 2: nothing
   * changed); lengths[first] is the new length. With gather nothing moves:
   * only the head's headers change (its IP length counts the run) and
   * lengths[first] stays; the run is then written from pieces (bindWrite's runs).
   */
  groMerge(
    bytes: Uint8Array,
    offsets: Uint32Array,
    lengths: Uint32Array,
    first: number,
    count: number,
    room: number,
    gather?: boolean,
  ): number;
}

const ADDON_PATH = join("build", "Release", "weft.node");

/** The nearest directory above `from` that holds package.json and the built addon. */
function findPackageRoot(from: string): string | null {
  let dir = from;
  for (;;) {
    if (existsSync(join(dir, "package.json")) && existsSync(join(dir, ADDON_PATH))) return dir;
    const parent = dirname(dir);
    if (parent === dir) return null;
    dir = parent;
  }
}

let loaded: Addon | null = null;

/**
 * Loads weft.node once; throws a clear error when it was never built.
 * WEFT_ADDON names another build of it (the sanitizer build the ASan test
 * run uses, see test/helpers/asan.ts).
 */
export function loadAddon(): Addon {
  if (loaded !== null) return loaded;
  const other = process.env.WEFT_ADDON;
  if (other !== undefined && other !== "") {
    if (!existsSync(other)) throw new Error(`WEFT_ADDON names ${other}, which does not exist`);
    loaded = createRequire(import.meta.url)(resolve(other)) as Addon;
    return loaded;
  }
  const here = dirname(fileURLToPath(import.meta.url));
  const root = findPackageRoot(here);
  if (root === null) {
    throw new Error(
      `weft native addon not found: no ${ADDON_PATH} above ${here}; run "npm ci" (or "npm rebuild" after an install without scripts)`,
    );
  }
  loaded = createRequire(import.meta.url)(join(root, ADDON_PATH)) as Addon;
  return loaded;
}

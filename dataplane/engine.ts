// The hot loop, both directions, one batch at a time.
//
//   encapsulate (flannel0 -> peers)
//     Device.rx batch ──► validate IPv4 ──► table.lookup(dst) ──► TTL-1 (RFC 1624)
//                            │ bad: drop        │ none: ICMP Net Unreachable ─┐
//                            ▼                  ▼ TTL 0: ICMP Time Exceeded ──┤
//         super-packet? (TSO) split in place into MTU-sized packets           │
//                            ▼                                                │
//                      stage (offset, length, peer addr, port, run size)      ▼
//                            └──► Transport.send (sendmmsg,          Device.write (into flannel0)
//                                 a split super-packet, or packets of one size to one
//                                 peer gathered into one slot, as UDP GSO runs)
//
//   decapsulate (peers -> flannel0)
//     Transport.rx batch ──► truncated? ──► sender holds a lease? ──► each datagram of the
//        slot (one, or a UDP GRO run) ──► validate IPv4 ──► [inner source in sender's
//        subnet?] ──► fits our MTU? ──► TTL-1 ──► stage
//        ──► [TCP/UDP coalescing, gro.ts] ──► Device.write (one write() per (super-)packet)
//        ICMP errors about tunnelled packets go straight back to the sending peer
//        (a leased one only, at its configured port, never larger than the trigger).
//        Inner sources that are this host's own (its addresses, its lease,
//        loopback) are dropped: flannel0 accepts local sources for weft's ICMP.
//
// Per-byte work (splitting, merging, checksums) happens in place in the
// receive arenas, in the addon; what to split, merge and send where is
// decided here. Counters count the ordinary packets the wire carries: a
// super-packet counts as its segments, bytes as their inner IP bytes.
//
// Packets are never copied between arenas: staging records where each one
// already lies in the receive arena (a run toward a peer gathers its packets
// into its first slot). A short write (EAGAIN, or ENOBUFS: retried after a
// pause) pauses the opposite source until the blocked fd takes more, so an
// arena is never overwritten while packets in it wait. Nothing here awaits,
// allocates per packet or logs.

import type { Ipv4Prefix } from "./addr.js";
import { Counters, Drop, Icmp } from "./counters.js";
import { Coalescer } from "./gro.js";
import { type Device, MAX_RUN_BYTES, type Transport } from "./io.js";
import { LeaseTable } from "./leases.js";
import { PerSourceLimiter, TokenBucket } from "./ratelimit.js";
import { Splitter } from "./tso.js";
import {
  buildIcmpError,
  CODE_FRAG_NEEDED,
  CODE_NET_UNREACH,
  CODE_TTL_EXCEEDED,
  ICMP_DEST_UNREACH,
  ICMP_ERROR_MAX,
  ICMP_TIME_EXCEEDED,
  icmpErrorLength,
  mayAnswerWithError,
} from "./wire/icmp.js";
import { Ipv4Check, Ipv4View } from "./wire/ipv4.js";

/** Staging room per received slot when slots may hold several packets (runs, super-packets). */
const PACKETS_PER_BIG_SLOT = 64;
/** Slots at least this big may hold a UDP GRO run. */
const BIG_SLOT = 16 * 1024;

export interface EngineOptions {
  readonly device: Device;
  readonly transport: Transport;
  /** flannel0's address: the source of every ICMP error weft sends. */
  readonly localAddr: number;
  /** flannel0's MTU (capped at 65,507): larger packets are dropped (from the tunnel: Fragmentation Needed when DF). */
  readonly mtu: number;
  /** Accept datagrams only from a lease's PublicIP (default true; off for NAT'd peers). */
  readonly peerCheck?: boolean;
  /** Drop tunnelled packets whose inner source is outside the sending peer's subnet. */
  readonly strictInnerSource?: boolean;
  readonly counters?: Counters;
  /** This host's lease: tunnelled packets claiming a source inside it are dropped. */
  readonly ownSubnet?: Ipv4Prefix;
  /** ICMP errors per second per source (default 10). */
  readonly icmpRate?: number;
  /** ICMP errors per second for all sources together (default 100). */
  readonly icmpGlobalRate?: number;
  /** Coalesce TCP segments (and UDP datagrams) toward flannel0 when the device takes super-packets (default true). */
  readonly coalesce?: boolean;
  /** Milliseconds clock for the ICMP limiter (tests inject one). */
  readonly now?: () => number;
  /** flannel0 or the socket failed for good (e.g. flannel0 was deleted); forwarding has stopped. */
  readonly onError?: (err: Error, side: "device" | "transport") => void;
}

/** Staged packets of one direction: where each lies and where it goes. */
class Staging {
  offsets: Uint32Array;
  lengths: Uint32Array;
  addrs: Uint32Array;
  ports: Uint16Array;
  /** Toward peers: UDP GSO run segment size (0: one datagram). Toward flannel0: TCP super-packet segment payload. */
  gso: Uint16Array;
  count = 0;
  /** First staged packet not yet accepted by the kernel (after a short write). */
  pending = 0;

  constructor(capacity: number) {
    [this.offsets, this.lengths, this.addrs, this.ports, this.gso] = Staging.carve(capacity);
  }

  /**
   * All five arrays in one ArrayBuffer: before every write/send the addon
   * checks each distinct buffer under its pointers (not detached), one
   * buffer is one check.
   */
  private static carve(size: number): [Uint32Array, Uint32Array, Uint32Array, Uint16Array, Uint16Array] {
    const buf = new ArrayBuffer(size * 16);
    return [
      new Uint32Array(buf, 0, size),
      new Uint32Array(buf, size * 4, size),
      new Uint32Array(buf, size * 8, size),
      new Uint16Array(buf, size * 12, size),
      new Uint16Array(buf, size * 14, size),
    ];
  }

  /**
   * Makes room for `needed` entries. Sized up front for the worst case the
   * kernel produces (64 segments per slot); growing is a rare safety net.
   */
  ensure(needed: number): void {
    if (needed <= this.offsets.length) return;
    const [offsets, lengths, addrs, ports, gso] = Staging.carve(Math.max(needed, this.offsets.length * 2));
    offsets.set(this.offsets);
    lengths.set(this.lengths);
    addrs.set(this.addrs);
    ports.set(this.ports);
    gso.set(this.gso);
    [this.offsets, this.lengths, this.addrs, this.ports, this.gso] = [offsets, lengths, addrs, ports, gso];
  }
}

/** ICMP errors built during one batch, in their own small arena. */
class IcmpOut extends Staging {
  readonly bytes: Uint8Array;

  constructor(capacity: number) {
    super(capacity);
    this.bytes = new Uint8Array(capacity * ICMP_ERROR_MAX);
    for (let i = 0; i < capacity; i++) this.offsets[i] = i * ICMP_ERROR_MAX;
  }
}

export class Engine {
  readonly counters: Counters;
  private table: LeaseTable = LeaseTable.empty();
  private readonly device: Device;
  private readonly transport: Transport;
  private readonly localAddr: number;
  private readonly mtu: number;
  private readonly peerCheck: boolean;
  private readonly strictInnerSource: boolean;
  private readonly coalesce: boolean;
  private readonly now: () => number;
  private readonly limiter: PerSourceLimiter;
  private readonly globalLimiter: TokenBucket;
  private readonly ownBase: number;
  private readonly ownMask: number;
  /** This host's own addresses (setLocalAddresses); checked per tunnelled packet. */
  private localAddrs: ReadonlySet<number> = new Set();
  private readonly view = new Ipv4View();
  private readonly toPeers: Staging;
  private readonly toDevice: Staging;
  private readonly icmpToDevice: IcmpOut;
  private readonly icmpToPeers: IcmpOut;
  private readonly splitter = new Splitter();
  private readonly coalescer: Coalescer;
  /**
   * The open UDP GSO run per lease id toward peers: valid while runStamp[id]
   * equals the batch stamp; runSeg[id] is its segment size (0: closed by a
   * shorter tail or by another entry to that peer), runCount[id] its datagrams.
   */
  private runStamp = new Uint32Array(0);
  private runEntry = new Uint32Array(0);
  private runSeg = new Uint16Array(0);
  private runCount = new Uint16Array(0);
  private stamp = 0;
  private running = false;
  private readonly onError: (err: Error, side: "device" | "transport") => void;

  constructor(opts: EngineOptions) {
    this.onError =
      opts.onError ??
      ((err) => {
        throw err;
      });
    this.device = opts.device;
    this.transport = opts.transport;
    this.localAddr = opts.localAddr;
    // No inner packet longer than the largest UDP payload fits a datagram
    // (an underlay MTU of 65,536, loopback's, would otherwise allow 65,508).
    this.mtu = Math.min(opts.mtu, MAX_RUN_BYTES);
    this.peerCheck = opts.peerCheck ?? true;
    this.strictInnerSource = opts.strictInnerSource ?? false;
    this.coalesce = (opts.coalesce ?? true) && this.device.gso;
    this.coalescer = new Coalescer(this.device.udpGso);
    this.counters = opts.counters ?? new Counters();
    this.now = opts.now ?? Date.now;
    this.limiter = new PerSourceLimiter(opts.icmpRate ?? 10, opts.icmpRate ?? 10);
    const globalRate = opts.icmpGlobalRate ?? 100;
    this.globalLimiter = new TokenBucket(globalRate, globalRate);
    // No lease given: 127/8 stands in, which the loopback check covers anyway.
    const own = opts.ownSubnet ?? { base: 0x7f000000, len: 8 };
    this.ownBase = own.base;
    this.ownMask = own.len === 0 ? 0 : (0xffffffff << (32 - own.len)) >>> 0;
    this.toPeers = new Staging(this.device.rx.capacity * (this.device.gso ? PACKETS_PER_BIG_SLOT : 1));
    this.toDevice = new Staging(
      this.transport.rx.capacity * (this.transport.rx.slotSize >= BIG_SLOT ? PACKETS_PER_BIG_SLOT : 1),
    );
    this.icmpToDevice = new IcmpOut(this.device.rx.capacity);
    this.icmpToPeers = new IcmpOut(this.transport.rx.capacity);
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    this.device.start(this.onDeviceBatch, (err) => this.onError(err, "device"));
    this.transport.start(this.onTransportBatch, (err) => this.onError(err, "transport"));
  }

  stop(): void {
    this.running = false;
    this.device.pause();
    this.transport.pause();
  }

  /** Installs a new lease table; takes effect from the next batch. */
  setTable(table: LeaseTable): void {
    if (table.size > this.runStamp.length) {
      const size = Math.max(table.size, this.runStamp.length * 2);
      this.runStamp = new Uint32Array(size);
      this.runEntry = new Uint32Array(size);
      this.runSeg = new Uint16Array(size);
      this.runCount = new Uint16Array(size);
    }
    this.table = table;
  }

  /** This host's own addresses, all interfaces; replaced whole (the control plane refreshes it). */
  setLocalAddresses(addrs: Iterable<number>): void {
    this.localAddrs = new Set(addrs);
  }

  get leaseTable(): LeaseTable {
    return this.table;
  }

  /** Handles one batch read from flannel0. Public for replay over fakes. */
  readonly onDeviceBatch = (count: number): void => {
    const table = this.table;
    const rx = this.device.rx;
    const bytes = rx.bytes;
    const ip = this.view;
    const c = this.counters.tx;
    const out = this.toPeers;
    const icmp = this.icmpToDevice;
    let staged = 0;
    icmp.count = 0;
    c.batches++;
    // Runs: packets of one size to one peer leave as one UDP GSO entry. They
    // are gathered into the run's first slot, which has room for the largest
    // run (the device slots are super-packet sized when runs are possible).
    const maxRun = rx.slotSize >= MAX_RUN_BYTES ? this.transport.gsoMaxSegments : 0;
    const stamp = this.nextStamp();
    const runStamp = this.runStamp;
    const runEntry = this.runEntry;
    const runSeg = this.runSeg;
    const runCount = this.runCount;
    for (let i = 0; i < count; i++) {
      const off = i * rx.slotSize;
      const len = rx.lengths[i];
      c.inPackets++;
      c.inBytes += len;
      const verdict = ip.check(bytes, off, len);
      if (verdict !== Ipv4Check.Ok) {
        c.drops[verdict === Ipv4Check.NotIpv4 ? Drop.NotIpv4 : Drop.Malformed]++;
        continue;
      }
      const id = table.lookup(ip.dst);
      if (id < 0) {
        c.drops[Drop.NoRoute]++;
        this.answer(icmp, ICMP_DEST_UNREACH, CODE_NET_UNREACH, 0, Icmp.NetUnreachable, -1, 0);
        continue;
      }
      if (ip.ttl <= 1) {
        c.drops[Drop.TtlExpired]++;
        this.answer(icmp, ICMP_TIME_EXCEEDED, CODE_TTL_EXCEEDED, 0, Icmp.TimeExceeded, -1, 0);
        continue;
      }
      ip.decrementTtl();
      const total = ip.totalLength;
      const gsoSize = rx.gsoSize[i];
      if (gsoSize !== 0) {
        staged = this.stageSuperPacket(i, off, len, total, id, staged);
        continue;
      }
      c.outPackets++;
      c.outBytes += total;
      if (maxRun > 1 && runStamp[id] === stamp) {
        const seg = runSeg[id];
        const e = runEntry[id];
        const runLen = out.lengths[e];
        if (total <= seg && runCount[id] < maxRun && runLen + total <= MAX_RUN_BYTES) {
          bytes.copyWithin(out.offsets[e] + runLen, off, off + total);
          out.lengths[e] = runLen + total;
          out.gso[e] = seg;
          runCount[id]++;
          // Only the last datagram of a run may be shorter.
          if (total < seg) runSeg[id] = 0;
          continue;
        }
      }
      out.offsets[staged] = off;
      out.lengths[staged] = total;
      out.addrs[staged] = table.peerAddr[id];
      out.ports[staged] = table.peerPort[id];
      out.gso[staged] = 0;
      runStamp[id] = stamp;
      runEntry[id] = staged;
      runSeg[id] = total;
      runCount[id] = 1;
      staged++;
    }
    if (icmp.count > 0) this.device.write(icmp.bytes, icmp.offsets, icmp.lengths, 0, icmp.count);
    out.count = staged;
    out.pending = 0;
    if (staged > 0) this.sendToPeers();
  };

  /** Handles one batch of datagrams. Public for replay over fakes. */
  readonly onTransportBatch = (count: number): void => {
    const table = this.table;
    const rx = this.transport.rx;
    const bytes = rx.bytes;
    const ip = this.view;
    const c = this.counters.rx;
    const out = this.toDevice;
    const icmp = this.icmpToPeers;
    const peerCheck = this.peerCheck;
    const ownBase = this.ownBase;
    const ownMask = this.ownMask;
    const local = this.localAddrs;
    let staged = 0;
    icmp.count = 0;
    c.batches++;
    for (let i = 0; i < count; i++) {
      const slot = i * rx.slotSize;
      const dlen = rx.lengths[i];
      if (rx.truncated[i] !== 0) {
        c.inPackets++;
        c.inBytes += dlen;
        c.drops[Drop.Truncated]++;
        continue;
      }
      // A UDP GRO slot holds a run of datagrams, each one packet; a
      // zero-length datagram is still one (malformed) packet.
      const seg = rx.segSize[i];
      const step = seg === 0 ? dlen : seg;
      const n = seg === 0 ? 1 : Math.ceil(dlen / seg);
      const sender = rx.srcAddr[i];
      if (peerCheck && !table.isPeer(sender)) {
        c.inPackets += n;
        c.inBytes += dlen;
        c.drops[Drop.UnknownSender] += n;
        continue;
      }
      out.ensure(staged + n);
      for (let k = 0; k < n; k++) {
        const off = slot + k * step;
        const len = k === n - 1 ? dlen - k * step : step;
        c.inPackets++;
        c.inBytes += len;
        const verdict = ip.check(bytes, off, len);
        if (verdict !== Ipv4Check.Ok) {
          c.drops[verdict === Ipv4Check.NotIpv4 ? Drop.NotIpv4 : Drop.Malformed]++;
          continue;
        }
        const src = ip.src;
        if ((src & ownMask) >>> 0 === ownBase || src >>> 24 === 127 || local.has(src)) {
          c.drops[Drop.LocalSource]++;
          continue;
        }
        if (this.strictInnerSource) {
          const owner = table.lookup(ip.src);
          if (owner < 0 || table.peerAddr[owner] !== sender) {
            c.drops[Drop.SpoofedSource]++;
            continue;
          }
        }
        const total = ip.totalLength;
        if (total > this.mtu) {
          c.drops[Drop.Oversize]++;
          if (ip.dontFragment) {
            this.answer(icmp, ICMP_DEST_UNREACH, CODE_FRAG_NEEDED, this.mtu, Icmp.FragNeeded, i, len);
          }
          continue;
        }
        if (ip.ttl <= 1) {
          c.drops[Drop.TtlExpired]++;
          this.answer(icmp, ICMP_TIME_EXCEEDED, CODE_TTL_EXCEEDED, 0, Icmp.TimeExceeded, i, len);
          continue;
        }
        ip.decrementTtl();
        out.offsets[staged] = off;
        out.lengths[staged] = total;
        out.gso[staged] = 0;
        staged++;
        c.outPackets++;
        c.outBytes += total;
      }
    }
    if (staged > 1 && this.coalesce) {
      staged = this.coalescer.coalesce(bytes, out.offsets, out.lengths, out.gso, staged, rx.slotSize);
    }
    out.count = staged;
    out.pending = 0;
    if (staged > 0) this.writeToDevice();
    if (icmp.count > 0) {
      this.transport.send(icmp.bytes, icmp.offsets, icmp.lengths, icmp.addrs, icmp.ports, 0, icmp.count);
    }
  };

  /**
   * Builds an ICMP error about the packet in `this.view` into `icmp`, unless
   * the packet must not be answered or the rate is used up. `datagram` < 0:
   * the error goes into flannel0. Otherwise it goes back through the tunnel to
   * the sender of that datagram, whose inner packet was `triggerLength` long,
   * and only when that cannot be turned into a reflector: the sender holds a
   * lease (also with --no-peer-check), the error goes to the udp backend's
   * port (not the port the datagram claims to come from) and is no larger
   * than what triggered it.
   */
  private answer(
    icmp: IcmpOut,
    type: number,
    code: number,
    extra: number,
    kind: number,
    datagram: number,
    triggerLength: number,
  ): void {
    const ip = this.view;
    if (!mayAnswerWithError(ip)) return;
    let peer = 0;
    if (datagram >= 0) {
      peer = this.transport.rx.srcAddr[datagram] as number;
      if (!this.table.isPeer(peer) || icmpErrorLength(ip) > triggerLength) return;
    }
    // A batch of GRO runs may hold more packets than there are ICMP slots.
    if (icmp.count === icmp.lengths.length) {
      this.counters.icmpRateLimited++;
      return;
    }
    const now = this.now();
    if (!this.limiter.allow(ip.src, now) || !this.globalLimiter.take(now)) {
      this.counters.icmpRateLimited++;
      return;
    }
    const n = icmp.count;
    icmp.lengths[n] = buildIcmpError(icmp.bytes, icmp.offsets[n], type, code, extra, ip, this.localAddr);
    icmp.addrs[n] = peer;
    icmp.ports[n] = this.table.port;
    icmp.count = n + 1;
    this.counters.icmpSent[kind]++;
  }

  /**
   * Splits the super-packet of slot `i` (validated, routed to lease `id`,
   * TTL already decremented: every segment inherits it) in place and stages
   * its segments: as UDP GSO runs when the transport takes them, else one
   * datagram each. Returns the new staged count.
   */
  private stageSuperPacket(i: number, off: number, len: number, total: number, id: number, staged: number): number {
    const rx = this.device.rx;
    const c = this.counters.tx;
    const split = this.splitter;
    if (!split.split(rx.bytes, off, total, rx.gsoType[i], rx.gsoSize[i], rx.slotSize)) {
      c.drops[Drop.GsoUnsplittable]++;
      return staged;
    }
    const segs = split.segments;
    const stride = split.stride;
    const bytesOut = split.total;
    c.inPackets += segs - 1;
    c.inBytes += bytesOut - len;
    if (stride > this.mtu) {
      c.drops[Drop.Oversize] += segs;
      return staged;
    }
    const out = this.toPeers;
    out.ensure(staged + segs);
    // A later packet to this peer must not join a run staged before these segments.
    this.runStamp[id] = 0;
    const addr = this.table.peerAddr[id];
    const port = this.table.peerPort[id];
    const maxRun = this.transport.gsoMaxSegments;
    // stride <= mtu <= MAX_RUN_BYTES: at least one segment per entry.
    const per = maxRun > 1 ? Math.max(1, Math.min(maxRun, Math.floor(MAX_RUN_BYTES / stride))) : 1;
    for (let k = 0; k < segs; k += per) {
      const n = Math.min(per, segs - k);
      out.offsets[staged] = off + k * stride;
      out.lengths[staged] = k + n === segs ? bytesOut - k * stride : n * stride;
      out.addrs[staged] = addr;
      out.ports[staged] = port;
      out.gso[staged] = n > 1 ? stride : 0;
      staged++;
    }
    c.outPackets += segs;
    c.outBytes += bytesOut;
    return staged;
  }

  /** A fresh nonzero stamp per device batch (0 marks "no open run"). */
  private nextStamp(): number {
    if (this.stamp === 0xffffffff) {
      this.stamp = 0;
      this.runStamp.fill(0);
    }
    return ++this.stamp;
  }

  private sendToPeers(): void {
    const s = this.toPeers;
    const bytes = this.device.rx.bytes;
    const todo = s.count - s.pending;
    const sent = this.transport.send(bytes, s.offsets, s.lengths, s.addrs, s.ports, s.pending, todo, s.gso);
    s.pending += sent;
    if (s.pending < s.count) {
      // The socket buffer is full: hold flannel0 until the rest is out.
      this.device.pause();
      this.transport.onWritable(this.onTransportWritable);
    }
  }

  private readonly onTransportWritable = (): void => {
    this.sendToPeers();
    if (this.toPeers.pending === this.toPeers.count && this.running) this.device.resume();
  };

  private writeToDevice(): void {
    const s = this.toDevice;
    const bytes = this.transport.rx.bytes;
    const gso = this.device.gso ? s.gso : undefined;
    const written = this.device.write(bytes, s.offsets, s.lengths, s.pending, s.count - s.pending, gso);
    s.pending += written;
    if (s.pending < s.count) {
      // flannel0's queue is full: hold the socket until the rest is in.
      this.transport.pause();
      this.device.onWritable(this.onDeviceWritable);
    }
  }

  private readonly onDeviceWritable = (): void => {
    this.writeToDevice();
    if (this.toDevice.pending === this.toDevice.count && this.running) this.transport.resume();
  };
}

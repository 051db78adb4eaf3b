// The hot loop, both directions, one batch at a time. Every entry of a batch
// is one ordinary IPv4 packet: whatever the kernel hands over in bigger
// pieces is cut and joined below the Device and Transport, never here.
//
//   encapsulate (flannel0 -> peers)
//     Device.rx batch ──► validate IPv4 ──► table.lookup(dst) ──► TTL-1 (RFC 1624) ──► stage
//                            │ bad: drop        │ none: ICMP Net Unreachable ─┐      │
//                            ▼                  ▼ TTL 0: ICMP Time Exceeded ──┤      ▼
//                                                           Device.write ◄────┘  Transport.send
//
//   decapsulate (peers -> flannel0)
//     Transport.rx batch ──► truncated? ──► sender holds a lease? ──► validate IPv4
//        ──► [inner source in sender's subnet?] ──► fits our MTU? ──► TTL-1 ──► stage
//        ──► Device.write
//        ICMP errors about tunnelled packets go straight back to the sending peer
//        (a leased one only, at its configured port, never larger than the trigger).
//        Inner sources that are this host's own (its addresses, its lease,
//        loopback) are dropped: flannel0 accepts local sources for weft's ICMP.
//
// Packets are never copied: staging records where each one already lies in
// the receive batch. A short write (EAGAIN, or ENOBUFS: retried after a
// pause) pauses the opposite source until the blocked fd takes more, so a
// receive batch is never overwritten while packets in it wait. Nothing here
// awaits, allocates per packet or logs.

import type { Ipv4Prefix } from "../net/addr.js";
import { Counters, Drop, Icmp } from "./counters.js";
import { IcmpOut } from "./icmp-out.js";
import { type Device, MAX_RUN_BYTES, type Transport } from "./io.js";
import { LeaseTable } from "./leases.js";
import { PerSourceLimiter, TokenBucket } from "./ratelimit.js";
import { Staging } from "./staging.js";
import {
  CODE_FRAG_NEEDED,
  CODE_NET_UNREACH,
  CODE_TTL_EXCEEDED,
  ICMP_DEST_UNREACH,
  ICMP_TIME_EXCEEDED,
} from "./wire/icmp.js";
import { Ipv4Check, Ipv4View } from "./wire/ipv4.js";

export interface EngineOptions {
  readonly device: Device;
  readonly transport: Transport;
  /** flannel0's address: the source of every ICMP error weft sends. */
  readonly localAddr: number;
  /** flannel0's MTU (capped at 65,507): larger packets either way are dropped (Fragmentation Needed when DF). */
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
  /** Milliseconds clock for the ICMP limiter (tests inject one). */
  readonly now?: () => number;
  /** flannel0 or the socket failed for good (e.g. flannel0 was deleted); forwarding has stopped. */
  readonly onError?: (err: Error, side: "device" | "transport") => void;
}

export class Engine {
  readonly counters: Counters;
  private table: LeaseTable = LeaseTable.empty();
  private readonly device: Device;
  private readonly transport: Transport;
  private readonly mtu: number;
  private readonly peerCheck: boolean;
  private readonly strictInnerSource: boolean;
  private readonly ownBase: number;
  private readonly ownMask: number;
  /** This host's own addresses (setLocalAddresses); checked per tunnelled packet. */
  private localAddrs: ReadonlySet<number> = new Set();
  private readonly view = new Ipv4View();
  private readonly toPeers: Staging;
  private readonly toDevice: Staging;
  private readonly icmpToDevice: IcmpOut;
  private readonly icmpToPeers: IcmpOut;
  private running = false;
  /** Called once at the next batch (onNextBatch): the idle arena release's alarm. */
  private nextBatch: (() => void) | null = null;
  private readonly onError: (err: Error, side: "device" | "transport") => void;

  constructor(opts: EngineOptions) {
    this.onError =
      opts.onError ??
      ((err) => {
        throw err;
      });
    this.device = opts.device;
    this.transport = opts.transport;
    // No inner packet longer than the largest UDP payload fits a datagram
    // (an underlay MTU of 65,536, loopback's, would otherwise allow 65,508).
    this.mtu = Math.min(opts.mtu, MAX_RUN_BYTES);
    this.peerCheck = opts.peerCheck ?? true;
    this.strictInnerSource = opts.strictInnerSource ?? false;
    this.counters = opts.counters ?? new Counters();
    const rate = opts.icmpRate ?? 10;
    const globalRate = opts.icmpGlobalRate ?? 100;
    const policy = {
      localAddr: opts.localAddr,
      perSource: new PerSourceLimiter(rate, rate),
      global: new TokenBucket(globalRate, globalRate),
      now: opts.now ?? Date.now,
      counters: this.counters,
    };
    // No lease given: 127/8 stands in, which the loopback check covers anyway.
    const own = opts.ownSubnet ?? { base: 0x7f000000, len: 8 };
    this.ownBase = own.base;
    this.ownMask = own.len === 0 ? 0 : (0xffffffff << (32 - own.len)) >>> 0;
    this.toPeers = new Staging(this.device.rx.bytes, this.device.rx.capacity);
    this.toDevice = new Staging(this.transport.rx.bytes, this.transport.rx.capacity);
    this.icmpToDevice = new IcmpOut(this.device.rx.capacity, policy);
    this.icmpToPeers = new IcmpOut(this.transport.rx.capacity, policy);
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
    this.table = table;
  }

  /** This host's own addresses, all interfaces; replaced whole (the control plane refreshes it). */
  setLocalAddresses(addrs: Iterable<number>): void {
    this.localAddrs = new Set(addrs);
  }

  get leaseTable(): LeaseTable {
    return this.table;
  }

  /** The receive arenas: flannel0's (toward peers) and the socket's (toward flannel0). */
  get arenas(): { readonly device: Uint8Array; readonly transport: Uint8Array } {
    return { device: this.device.rx.bytes, transport: this.transport.rx.bytes };
  }

  /** Whether a send toward peers still points into flannel0's arena (short send, waiting for the socket). */
  get deviceArenaInUse(): boolean {
    return this.toPeers.pending < this.toPeers.count;
  }

  /** Whether a write to flannel0 still points into the socket's arena (short write, waiting for flannel0). */
  get transportArenaInUse(): boolean {
    return this.toDevice.pending < this.toDevice.count;
  }

  /** Calls cb once, at the start of the next batch from either source (replaces an earlier cb). */
  onNextBatch(cb: () => void): void {
    this.nextBatch = cb;
  }

  private batchArrived(): void {
    const cb = this.nextBatch;
    this.nextBatch = null;
    cb?.();
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
    if (this.nextBatch !== null) this.batchArrived();
    out.ensure(count);
    for (let i = 0; i < count; i++) {
      const off = rx.offsets[i];
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
        icmp.answer(ip, table, ICMP_DEST_UNREACH, CODE_NET_UNREACH, 0, Icmp.NetUnreachable, -1, 0);
        continue;
      }
      // Only packets up to flannel0's MTU come from it (the device layer cuts
      // the kernel's larger ones to size first); a longer one would leave as
      // an underlay datagram the path fragments or refuses.
      const total = ip.totalLength;
      if (total > this.mtu) {
        c.drops[Drop.Oversize]++;
        if (ip.dontFragment) {
          icmp.answer(ip, table, ICMP_DEST_UNREACH, CODE_FRAG_NEEDED, this.mtu, Icmp.FragNeeded, -1, 0);
        }
        continue;
      }
      if (ip.ttl <= 1) {
        c.drops[Drop.TtlExpired]++;
        icmp.answer(ip, table, ICMP_TIME_EXCEEDED, CODE_TTL_EXCEEDED, 0, Icmp.TimeExceeded, -1, 0);
        continue;
      }
      ip.decrementTtl();
      out.offsets[staged] = off;
      out.lengths[staged] = total;
      out.addrs[staged] = table.peerAddr[id];
      out.ports[staged] = table.peerPort[id];
      staged++;
      c.outPackets++;
      c.outBytes += total;
    }
    if (icmp.count > 0) this.device.write(icmp, 0, icmp.count);
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
    // The datagrams of one unpacked run share a sender: one lookup for them.
    let lastSender = -1;
    let lastIsPeer = false;
    let staged = 0;
    icmp.count = 0;
    c.batches++;
    if (this.nextBatch !== null) this.batchArrived();
    out.ensure(count);
    for (let i = 0; i < count; i++) {
      const off = rx.offsets[i];
      const len = rx.lengths[i];
      c.inPackets++;
      c.inBytes += len;
      if (rx.truncated[i] !== 0) {
        c.drops[Drop.Truncated]++;
        continue;
      }
      const sender = rx.srcAddr[i];
      if (peerCheck) {
        if (sender !== lastSender) {
          lastSender = sender;
          lastIsPeer = table.isPeer(sender);
        }
        if (!lastIsPeer) {
          c.drops[Drop.UnknownSender]++;
          continue;
        }
      }
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
        const owner = table.lookup(src);
        if (owner < 0 || table.peerAddr[owner] !== sender) {
          c.drops[Drop.SpoofedSource]++;
          continue;
        }
      }
      const total = ip.totalLength;
      if (total > this.mtu) {
        c.drops[Drop.Oversize]++;
        if (ip.dontFragment) {
          icmp.answer(ip, table, ICMP_DEST_UNREACH, CODE_FRAG_NEEDED, this.mtu, Icmp.FragNeeded, sender, len);
        }
        continue;
      }
      if (ip.ttl <= 1) {
        c.drops[Drop.TtlExpired]++;
        icmp.answer(ip, table, ICMP_TIME_EXCEEDED, CODE_TTL_EXCEEDED, 0, Icmp.TimeExceeded, sender, len);
        continue;
      }
      ip.decrementTtl();
      out.offsets[staged] = off;
      out.lengths[staged] = total;
      staged++;
      c.outPackets++;
      c.outBytes += total;
    }
    out.count = staged;
    out.pending = 0;
    if (staged > 0) this.writeToDevice();
    if (icmp.count > 0) this.transport.send(icmp, 0, icmp.count);
  };

  private sendToPeers(): void {
    const s = this.toPeers;
    s.pending += this.transport.send(s, s.pending, s.count - s.pending);
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
    s.pending += this.device.write(s, s.pending, s.count - s.pending);
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

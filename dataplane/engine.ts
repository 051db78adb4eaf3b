// The hot loop, both directions, one batch at a time.
//
//   encapsulate (flannel0 -> peers)
//     Device.rx batch ──► validate IPv4 ──► table.lookup(dst) ──► TTL-1 (RFC 1624)
//                            │ bad: drop        │ none: ICMP Net Unreachable ─┐
//                            ▼                  ▼ TTL 0: ICMP Time Exceeded ──┤
//                      stage (offset, length, peer addr, port)                ▼
//                            └──► Transport.send (sendmmsg)          Device.write (into flannel0)
//
//   decapsulate (peers -> flannel0)
//     Transport.rx batch ──► truncated? ──► sender holds a lease? ──► validate IPv4
//        ──► [inner source in sender's subnet?] ──► fits our MTU? ──► TTL-1 ──► stage
//        └──► Device.write (one write() per packet)
//        ICMP errors about tunnelled packets go straight back to the sending peer.
//
// Packets are never copied: staging records where each one already lies in the
// receive arena. A short write (EAGAIN) pauses the opposite source until the
// blocked fd is writable again, so an arena is never overwritten while packets
// in it wait. Nothing here awaits, allocates per packet or logs.

import { Drop, Counters, Icmp } from "./counters.js";
import type { Device, Transport } from "./io.js";
import { LeaseTable } from "./leases.js";
import { PerSourceLimiter } from "./ratelimit.js";
import {
  buildIcmpError,
  CODE_FRAG_NEEDED,
  CODE_NET_UNREACH,
  CODE_TTL_EXCEEDED,
  ICMP_DEST_UNREACH,
  ICMP_ERROR_MAX,
  ICMP_TIME_EXCEEDED,
  mayAnswerWithError,
} from "./wire/icmp.js";
import { Ipv4Check, Ipv4View } from "./wire/ipv4.js";

export interface EngineOptions {
  readonly device: Device;
  readonly transport: Transport;
  /** flannel0's address: the source of every ICMP error weft sends. */
  readonly localAddr: number;
  /** flannel0's MTU: larger packets from the tunnel are dropped (Fragmentation Needed when DF). */
  readonly mtu: number;
  /** Accept datagrams only from a lease's PublicIP (default true; off for NAT'd peers). */
  readonly peerCheck?: boolean;
  /** Drop tunnelled packets whose inner source is outside the sending peer's subnet. */
  readonly strictInnerSource?: boolean;
  readonly counters?: Counters;
  /** ICMP errors per second per source (default 10). */
  readonly icmpRate?: number;
  /** Milliseconds clock for the ICMP limiter (tests inject one). */
  readonly now?: () => number;
  /** flannel0 or the socket failed for good (e.g. flannel0 was deleted); forwarding has stopped. */
  readonly onError?: (err: Error, side: "device" | "transport") => void;
}

/** Staged packets of one direction: where each lies and where it goes. */
class Staging {
  readonly offsets: Uint32Array;
  readonly lengths: Uint32Array;
  readonly addrs: Uint32Array;
  readonly ports: Uint16Array;
  count = 0;
  /** First staged packet not yet accepted by the kernel (after a short write). */
  pending = 0;

  constructor(capacity: number) {
    this.offsets = new Uint32Array(capacity);
    this.lengths = new Uint32Array(capacity);
    this.addrs = new Uint32Array(capacity);
    this.ports = new Uint16Array(capacity);
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
  private readonly now: () => number;
  private readonly limiter: PerSourceLimiter;
  private readonly view = new Ipv4View();
  private readonly toPeers: Staging;
  private readonly toDevice: Staging;
  private readonly icmpToDevice: IcmpOut;
  private readonly icmpToPeers: IcmpOut;
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
    this.mtu = opts.mtu;
    this.peerCheck = opts.peerCheck ?? true;
    this.strictInnerSource = opts.strictInnerSource ?? false;
    this.counters = opts.counters ?? new Counters();
    this.now = opts.now ?? Date.now;
    this.limiter = new PerSourceLimiter(opts.icmpRate ?? 10, opts.icmpRate ?? 10);
    this.toPeers = new Staging(this.device.rx.capacity);
    this.toDevice = new Staging(this.transport.rx.capacity);
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
    this.table = table;
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
        this.answer(icmp, ICMP_DEST_UNREACH, CODE_NET_UNREACH, 0, Icmp.NetUnreachable, 0);
        continue;
      }
      if (ip.ttl <= 1) {
        c.drops[Drop.TtlExpired]++;
        this.answer(icmp, ICMP_TIME_EXCEEDED, CODE_TTL_EXCEEDED, 0, Icmp.TimeExceeded, 0);
        continue;
      }
      ip.decrementTtl();
      const total = ip.totalLength;
      out.offsets[staged] = off;
      out.lengths[staged] = total;
      out.addrs[staged] = table.peerAddr[id];
      out.ports[staged] = table.peerPort[id];
      staged++;
      c.outPackets++;
      c.outBytes += total;
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
    let staged = 0;
    icmp.count = 0;
    c.batches++;
    for (let i = 0; i < count; i++) {
      const off = i * rx.slotSize;
      const len = rx.lengths[i];
      c.inPackets++;
      c.inBytes += len;
      if (rx.truncated[i] !== 0) {
        c.drops[Drop.Truncated]++;
        continue;
      }
      const sender = rx.srcAddr[i];
      if (peerCheck && !table.isPeer(sender)) {
        c.drops[Drop.UnknownSender]++;
        continue;
      }
      const verdict = ip.check(bytes, off, len);
      if (verdict !== Ipv4Check.Ok) {
        c.drops[verdict === Ipv4Check.NotIpv4 ? Drop.NotIpv4 : Drop.Malformed]++;
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
          this.answer(icmp, ICMP_DEST_UNREACH, CODE_FRAG_NEEDED, this.mtu, Icmp.FragNeeded, i);
        }
        continue;
      }
      if (ip.ttl <= 1) {
        c.drops[Drop.TtlExpired]++;
        this.answer(icmp, ICMP_TIME_EXCEEDED, CODE_TTL_EXCEEDED, 0, Icmp.TimeExceeded, i);
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
    if (icmp.count > 0) {
      this.transport.send(icmp.bytes, icmp.offsets, icmp.lengths, icmp.addrs, icmp.ports, 0, icmp.count);
    }
  };

  /**
   * Builds an ICMP error about the packet in `this.view` into `icmp`, unless
   * the packet must not be answered or its source is over its rate. For the
   * tunnel direction, `datagram` names the datagram whose sender gets it.
   */
  private answer(icmp: IcmpOut, type: number, code: number, extra: number, kind: number, datagram: number): void {
    const ip = this.view;
    if (!mayAnswerWithError(ip)) return;
    if (!this.limiter.allow(ip.src, this.now())) {
      this.counters.icmpRateLimited++;
      return;
    }
    const n = icmp.count;
    icmp.lengths[n] = buildIcmpError(icmp.bytes, icmp.offsets[n], type, code, extra, ip, this.localAddr);
    icmp.addrs[n] = this.transport.rx.srcAddr[datagram];
    icmp.ports[n] = this.transport.rx.srcPort[datagram];
    icmp.count = n + 1;
    this.counters.icmpSent[kind]++;
  }

  private sendToPeers(): void {
    const s = this.toPeers;
    const bytes = this.device.rx.bytes;
    const todo = s.count - s.pending;
    const sent = this.transport.send(bytes, s.offsets, s.lengths, s.addrs, s.ports, s.pending, todo);
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
    const written = this.device.write(bytes, s.offsets, s.lengths, s.pending, s.count - s.pending);
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

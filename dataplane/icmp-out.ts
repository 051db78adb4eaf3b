// The ICMP errors the engine answers with during one batch, built in their
// own small arena and sent as one batch of their own, and the limits every
// error passes first: per-source and global token buckets, and no error that
// could be turned into a reflector.

import type { Counters } from "./counters.js";
import type { LeaseTable } from "./leases.js";
import type { PerSourceLimiter, TokenBucket } from "./ratelimit.js";
import { Staging } from "./staging.js";
import { buildIcmpError, ICMP_ERROR_MAX, icmpErrorLength, mayAnswerWithError } from "./wire/icmp.js";
import type { Ipv4View } from "./wire/ipv4.js";

/** What both directions' errors share: the source address, the limits, the counters. */
export interface IcmpPolicy {
  /** flannel0's address: the source of every ICMP error. */
  readonly localAddr: number;
  readonly perSource: PerSourceLimiter;
  readonly global: TokenBucket;
  /** Milliseconds clock for the limiters. */
  readonly now: () => number;
  readonly counters: Counters;
}

export class IcmpOut extends Staging {
  constructor(
    capacity: number,
    private readonly policy: IcmpPolicy,
  ) {
    super(new Uint8Array(capacity * ICMP_ERROR_MAX), capacity);
    for (let i = 0; i < capacity; i++) this.offsets[i] = i * ICMP_ERROR_MAX;
  }

  /**
   * Builds an ICMP error about the packet in `ip`, unless the packet must not
   * be answered or the rate is used up. `sender` < 0: the error goes into
   * flannel0. Otherwise it goes back through the tunnel to `sender`, whose
   * inner packet was `triggerLength` long, and only when that cannot be
   * turned into a reflector: the sender holds a lease (also with
   * --no-peer-check), the error goes to the udp backend's port (not the port
   * the datagram claims to come from) and is no larger than what triggered it.
   */
  answer(
    ip: Ipv4View,
    table: LeaseTable,
    type: number,
    code: number,
    extra: number,
    kind: number,
    sender: number,
    triggerLength: number,
  ): void {
    if (!mayAnswerWithError(ip)) return;
    const p = this.policy;
    if (sender >= 0 && (!table.isPeer(sender) || icmpErrorLength(ip) > triggerLength)) return;
    // A batch of unpacked runs may hold more packets than there are ICMP slots.
    if (this.count === this.lengths.length) {
      p.counters.icmpRateLimited++;
      return;
    }
    const now = p.now();
    if (!p.perSource.allow(ip.src, now) || !p.global.take(now)) {
      p.counters.icmpRateLimited++;
      return;
    }
    const n = this.count;
    this.lengths[n] = buildIcmpError(this.bytes, this.offsets[n], type, code, extra, ip, p.localAddr);
    this.addrs[n] = Math.max(0, sender);
    this.ports[n] = table.port;
    this.count = n + 1;
    p.counters.icmpSent[kind]++;
  }
}

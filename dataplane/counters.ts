// Dataplane counters: plain numbers the hot loop bumps and the metrics
// endpoint reads at scrape time. Nothing here allocates or logs.

/** Why a packet was not forwarded. Index into Counters.drops. */
export const Drop = {
  /** Shorter than its headers claim, or a header that cannot be IPv4. */
  Malformed: 0,
  /** Version is not 4 (IPv6, garbage). */
  NotIpv4: 1,
  /** No lease covers the destination (ICMP Net Unreachable sent, rate permitting). */
  NoRoute: 2,
  /** TTL reached 0 (ICMP Time Exceeded sent, rate permitting). */
  TtlExpired: 3,
  /** Datagram longer than the receive buffer (MSG_TRUNC); flannel would truncate it. */
  Truncated: 4,
  /** Packet larger than the local flannel0 MTU (ICMP Fragmentation Needed if DF). */
  Oversize: 5,
  /** Outer source holds no lease. */
  UnknownSender: 6,
  /** Inner source outside the sending peer's subnet (--strict-inner-source). */
  SpoofedSource: 7,
  /** The kernel refused the UDP send. */
  SendError: 8,
  /** The kernel refused the TUN write. */
  WriteError: 9,
  /** A super-packet from flannel0 that cannot be split into packets (not TCP/UDP, no room). */
  GsoUnsplittable: 10,
  /**
   * Tunnelled packet claiming to come from this host: an address of its own,
   * loopback, or inside its own lease (flannel0 accepts local sources for
   * weft's own ICMP, so the check must happen here).
   */
  LocalSource: 11,
} as const;
export type Drop = (typeof Drop)[keyof typeof Drop];

export const DROP_NAMES = [
  "malformed",
  "not_ipv4",
  "no_route",
  "ttl_expired",
  "truncated",
  "oversize",
  "unknown_sender",
  "spoofed_source",
  "send_error",
  "write_error",
  "gso_unsplittable",
  "local_source",
] as const;

export const Icmp = { NetUnreachable: 0, TimeExceeded: 1, FragNeeded: 2 } as const;
export const ICMP_NAMES = ["net_unreachable", "time_exceeded", "frag_needed"] as const;

/** One direction's figures. "in" counts what was read, "out" what was handed to the kernel. */
export class DirectionCounters {
  inPackets = 0;
  inBytes = 0;
  outPackets = 0;
  outBytes = 0;
  batches = 0;
  readonly drops = new Float64Array(DROP_NAMES.length);

  dropped(): number {
    let n = 0;
    for (let i = 0; i < this.drops.length; i++) n += this.drops[i] as number;
    return n;
  }
}

export class Counters {
  /** TUN -> UDP (encapsulation). */
  readonly tx = new DirectionCounters();
  /** UDP -> TUN (decapsulation). */
  readonly rx = new DirectionCounters();
  readonly icmpSent = new Float64Array(ICMP_NAMES.length);
  /** ICMP errors not sent because their destination, or all destinations together, were over the rate. */
  icmpRateLimited = 0;
}

// The forwarding table: pod subnet -> peer host. flannel's subnets are
// disjoint and all SubnetLen long, so a destination's subnet is an index,
// (dst - networkBase) >>> (32 - SubnetLen), into a typed array of peer ids:
// the cost is the same for 1 or 65,536 leases (flannel's C proxy scans a list).
// A table is immutable; the control plane builds a new one and the engine
// swaps its reference between batches.

import { formatPrefix, type Ipv4Prefix, prefixMask } from "./addr.js";

export interface PeerLease {
  readonly subnet: Ipv4Prefix;
  readonly publicIp: number;
}

/** Above this many index slots (16 MiB of Int32) the table uses a Map instead. */
const MAX_INDEX_SLOTS = 1 << 22;

export class LeaseTable {
  /** Peer address and port per lease id (the value lookup() returns). */
  readonly peerAddr: Uint32Array;
  readonly peerPort: Uint16Array;
  /** The udp backend's port, the same on every node. */
  readonly port: number;
  readonly leases: readonly PeerLease[];
  private readonly base: number;
  private readonly mask: number;
  private readonly shift: number;
  private readonly index: Int32Array | null;
  private readonly sparse: Map<number, number> | null;
  private readonly senders: Set<number>;

  private constructor(network: Ipv4Prefix, subnetLen: number, leases: readonly PeerLease[], port: number) {
    this.base = network.base;
    this.mask = prefixMask(network.len);
    this.shift = 32 - subnetLen;
    this.leases = leases;
    this.port = port;
    this.peerAddr = new Uint32Array(leases.length);
    this.peerPort = new Uint16Array(leases.length).fill(port);
    this.senders = new Set();
    const slots = 2 ** (subnetLen - network.len);
    this.index = slots <= MAX_INDEX_SLOTS ? new Int32Array(slots).fill(-1) : null;
    this.sparse = this.index === null ? new Map() : null;
    for (let id = 0; id < leases.length; id++) {
      const lease = leases[id] as PeerLease;
      if (lease.subnet.len !== subnetLen || (lease.subnet.base & this.mask) >>> 0 !== this.base) {
        throw new Error(`lease ${formatPrefix(lease.subnet)} is not a /${subnetLen} inside ${formatPrefix(network)}`);
      }
      this.peerAddr[id] = lease.publicIp;
      this.senders.add(lease.publicIp);
      const slot = (lease.subnet.base - this.base) >>> this.shift;
      if (this.index !== null) this.index[slot] = id;
      else this.sparse?.set(slot, id);
    }
  }

  /**
   * @param network the flannel Network; every lease must be a SubnetLen subnet of it
   * @param port the udp backend port, the same on every node (flannel does not advertise it)
   */
  static build(network: Ipv4Prefix, subnetLen: number, leases: readonly PeerLease[], port: number): LeaseTable {
    return new LeaseTable(network, subnetLen, leases, port);
  }

  /** A table that routes nothing (before the first lease snapshot). */
  static empty(): LeaseTable {
    return new LeaseTable({ base: 0, len: 32 }, 32, [], 0);
  }

  get size(): number {
    return this.leases.length;
  }

  /** Lease id for a destination address, or -1 when no lease covers it. */
  lookup(dst: number): number {
    if ((dst & this.mask) >>> 0 !== this.base) return -1;
    const slot = (dst - this.base) >>> this.shift;
    if (this.index !== null) return this.index[slot];
    const id = this.sparse?.get(slot);
    return id === undefined ? -1 : id;
  }

  /** Whether `addr` is the PublicIP of some lease (the sender check). */
  isPeer(addr: number): boolean {
    return this.senders.has(addr);
  }
}

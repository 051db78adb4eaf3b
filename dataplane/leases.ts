// The forwarding table: pod subnet -> peer host. flannel's subnets are
// disjoint and all SubnetLen long, so a destination's subnet is an index,
// (dst - networkBase) >>> (32 - SubnetLen), into a typed array of peer ids:
// the cost is the same for 1 or 65,536 leases (flannel's C proxy scans a list).
//
// A table is immutable: the engine swaps its reference between batches. A
// lease change does not rebuild it; with() copies the per-peer arrays (a
// memcpy, 10 bytes per peer) and edits the copy. The slot index and the
// sender set, which grow with the network and with the cluster, are pages
// shared copy-on-write (Pages): a copy is a list of page references, and an
// edit copies only the pages it writes (4 KiB each). So a change costs a few
// microseconds and allocates a few KiB at any size, where copying a /8's
// index of /24 slots whole was 256 KiB per change, and the garbage of
// ten changes a second made the collector stop the forwarding thread:
//
//   slot ──index──► id ──► peerAddr[id], peerPort[id]      (what the engine reads; index: pages[slot >> 10][slot & 1023])
//                   id ──► peerSlot[id]                    (to move or list an id)
//   senders: PublicIP -> leases naming it                  (isPeer, the sender check)
//
// Ids stay dense (0..size-1): a removed id takes the last one's place, so the
// engine's per-id scratch arrays are sized by `size`.

import { formatPrefix, type Ipv4Prefix, prefixMask } from "../net/addr.js";

export interface PeerLease {
  readonly subnet: Ipv4Prefix;
  readonly publicIp: number;
}

/** One edit for with(): the subnet's new owner, or null to remove the lease. */
export interface PeerEdit {
  readonly subnet: Ipv4Prefix;
  readonly publicIp: number | null;
}

/** Above this many index slots (16 MiB of Int32) the table uses a Map instead (edits then copy the Map). */
const MAX_INDEX_SLOTS = 1 << 22;

/** Entries per page of Pages: 1,024 Int32 (4 KiB). */
const PAGE_BITS = 10;
const PAGE_SIZE = 1 << PAGE_BITS;
const PAGE_MASK = PAGE_SIZE - 1;

/**
 * An Int32 array in pages shared copy-on-write: copy() shares every page
 * with the original, and set() on the copy copies a page at its first write
 * there, so the original never changes. A page nobody has written yet may
 * stand for many (filled() shares one page of the fill value across all).
 * Only the copy being edited is written: once a table is built it is read only.
 */
class Pages {
  private constructor(
    /** pages[i >> PAGE_BITS][i & PAGE_MASK]; read directly on the packet path. */
    readonly pages: Int32Array[],
    readonly length: number,
    /** Which pages this copy owns (may write); the others are shared. */
    private readonly owned: Uint8Array,
  ) {}

  static filled(length: number, value: number): Pages {
    const count = Math.max(1, Math.ceil(length / PAGE_SIZE));
    const page = new Int32Array(Math.min(PAGE_SIZE, Math.max(length, 1))).fill(value);
    return new Pages(new Array<Int32Array>(count).fill(page), length, new Uint8Array(count));
  }

  get(i: number): number {
    return (this.pages[i >>> PAGE_BITS] as Int32Array)[i & PAGE_MASK] as number;
  }

  set(i: number, value: number): void {
    const p = i >>> PAGE_BITS;
    let page = this.pages[p] as Int32Array;
    if (this.owned[p] === 0) {
      page = page.slice();
      this.pages[p] = page;
      this.owned[p] = 1;
    }
    page[i & PAGE_MASK] = value;
  }

  /** A copy sharing every page (it owns none until it writes). */
  copy(): Pages {
    return new Pages(this.pages.slice(), this.length, new Uint8Array(this.pages.length));
  }
}

interface Shape {
  readonly network: Ipv4Prefix;
  readonly subnetLen: number;
  readonly port: number;
}

export class LeaseTable {
  /** Peer address and port per lease id (the value lookup() returns). */
  readonly peerAddr: Uint32Array;
  readonly peerPort: Uint16Array;
  /** The udp backend's port, the same on every node. */
  readonly port: number;
  /** Leases in the table; ids are 0..size-1. */
  readonly size: number;
  private readonly shape: Shape;
  private readonly base: number;
  private readonly mask: number;
  private readonly shift: number;
  private readonly peerSlot: Uint32Array;
  private readonly index: Pages | null;
  private readonly sparse: Map<number, number> | null;
  private readonly senders: AddressCounts;

  private constructor(
    shape: Shape,
    size: number,
    arrays: { addr: Uint32Array; port: Uint16Array; slot: Uint32Array },
    index: Pages | null,
    sparse: Map<number, number> | null,
    senders: AddressCounts,
  ) {
    this.shape = shape;
    this.base = shape.network.base;
    this.mask = prefixMask(shape.network.len);
    this.shift = 32 - shape.subnetLen;
    this.port = shape.port;
    this.size = size;
    this.peerAddr = arrays.addr.length === size ? arrays.addr : arrays.addr.subarray(0, size);
    this.peerPort = arrays.port.length === size ? arrays.port : arrays.port.subarray(0, size);
    this.peerSlot = arrays.slot.length === size ? arrays.slot : arrays.slot.subarray(0, size);
    this.index = index;
    this.sparse = sparse;
    this.senders = senders;
  }

  /**
   * The table for `leases`, lease i getting id i.
   * @param network the flannel Network; every lease must be a SubnetLen subnet of it
   * @param port the udp backend port, the same on every node (flannel does not advertise it)
   */
  static build(network: Ipv4Prefix, subnetLen: number, leases: readonly PeerLease[], port: number): LeaseTable {
    const shape = { network, subnetLen, port };
    const slots = 2 ** (subnetLen - network.len);
    const index = slots <= MAX_INDEX_SLOTS ? Pages.filled(slots, -1) : null;
    const empty = new LeaseTable(
      shape,
      0,
      { addr: new Uint32Array(0), port: new Uint16Array(0), slot: new Uint32Array(0) },
      index,
      index === null ? new Map() : null,
      AddressCounts.withRoom(0),
    );
    return empty.edit(leases, false);
  }

  /** A table that routes nothing (before the first lease snapshot). */
  static empty(): LeaseTable {
    return LeaseTable.build({ base: 0, len: 32 }, 32, [], 0);
  }

  /**
   * A new table with `edits` applied in order; this one is left as it was (the
   * engine may be forwarding with it). Throws, changing nothing, when an edit
   * names a subnet that is not a SubnetLen subnet of the network.
   */
  with(edits: readonly PeerEdit[]): LeaseTable {
    return this.edit(edits, true);
  }

  /** with(), or (copy false: build() only, on a table nobody holds yet) in place. */
  private edit(edits: readonly PeerEdit[], copy: boolean): LeaseTable {
    const { network, subnetLen } = this.shape;
    let puts = 0;
    for (const edit of edits) {
      const { subnet } = edit;
      if (subnet.len !== subnetLen || (subnet.base & this.mask) >>> 0 !== this.base) {
        throw new Error(`lease ${formatPrefix(subnet)} is not a /${subnetLen} inside ${formatPrefix(network)}`);
      }
      if (edit.publicIp !== null) puts++;
    }
    const room = this.size + puts;
    const addr = new Uint32Array(room);
    const port = new Uint16Array(room);
    const slotOf = new Uint32Array(room);
    addr.set(this.peerAddr);
    port.set(this.peerPort);
    slotOf.set(this.peerSlot);
    const index = copy && this.index !== null ? this.index.copy() : this.index;
    const sparse = copy && this.sparse !== null ? new Map(this.sparse) : this.sparse;
    const senders = copy ? this.senders.copy(puts) : this.senders.grow(puts);
    const idAt = (slot: number) => (index !== null ? index.get(slot) : (sparse?.get(slot) ?? -1));
    const setSlot = (slot: number, id: number) => {
      if (index !== null) index.set(slot, id);
      else if (id < 0) sparse?.delete(slot);
      else sparse?.set(slot, id);
    };
    let size = this.size;
    for (const { subnet, publicIp } of edits) {
      const slot = (subnet.base - this.base) >>> this.shift;
      const id = idAt(slot);
      if (publicIp === null) {
        if (id < 0) continue;
        senders.remove(addr[id] as number);
        setSlot(slot, -1);
        const last = --size;
        if (id !== last) {
          // The last id fills the hole: ids stay 0..size-1.
          addr[id] = addr[last] as number;
          port[id] = port[last] as number;
          slotOf[id] = slotOf[last] as number;
          setSlot(slotOf[id] as number, id);
        }
      } else if (id >= 0) {
        if (addr[id] === publicIp) continue;
        senders.remove(addr[id] as number);
        senders.add(publicIp);
        addr[id] = publicIp;
      } else {
        const fresh = size++;
        addr[fresh] = publicIp;
        port[fresh] = this.port;
        slotOf[fresh] = slot;
        setSlot(slot, fresh);
        senders.add(publicIp);
      }
    }
    return new LeaseTable(this.shape, size, { addr, port, slot: slotOf }, index, sparse, senders);
  }

  /** The leases in id order (built on demand: for logs and tests, not the packet path). */
  get leases(): PeerLease[] {
    const out: PeerLease[] = [];
    const step = 2 ** this.shift;
    for (let id = 0; id < this.size; id++) {
      const base = (this.base + (this.peerSlot[id] as number) * step) >>> 0;
      out.push({ subnet: { base, len: this.shape.subnetLen }, publicIp: this.peerAddr[id] as number });
    }
    return out;
  }

  /** Lease id for a destination address, or -1 when no lease covers it. */
  lookup(dst: number): number {
    if ((dst & this.mask) >>> 0 !== this.base) return -1;
    const slot = (dst - this.base) >>> this.shift;
    const index = this.index;
    if (index !== null) return (index.pages[slot >>> PAGE_BITS] as Int32Array)[slot & PAGE_MASK] as number;
    const id = this.sparse?.get(slot);
    return id === undefined ? -1 : id;
  }

  /** Whether `addr` is the PublicIP of some lease (the sender check). */
  isPeer(addr: number): boolean {
    return this.senders.has(addr);
  }
}

/**
 * A multiset of addresses in an open-addressing hash table (linear probing)
 * held in copy-on-write Pages, so a table's copy shares them and an edit
 * copies the few pages it writes. Several leases may name one PublicIP: each
 * counts. Keys are stored as Int32 (the address's bits).
 */
class AddressCounts {
  private constructor(
    private keys: Pages,
    private counts: Pages,
    private used: number,
  ) {}

  static withRoom(addresses: number): AddressCounts {
    const capacity = AddressCounts.capacityFor(addresses);
    return new AddressCounts(Pages.filled(capacity, 0), Pages.filled(capacity, 0), 0);
  }

  /** Load stays at most one half: probes stay short. */
  private static capacityFor(addresses: number): number {
    let capacity = 8;
    while (capacity < addresses * 2) capacity *= 2;
    return capacity;
  }

  has(addr: number): boolean {
    const key = addr | 0;
    const mask = this.keys.length - 1;
    const keys = this.keys.pages;
    const counts = this.counts.pages;
    for (let i = AddressCounts.hash(addr, mask); ; i = (i + 1) & mask) {
      const p = i >>> PAGE_BITS;
      const o = i & PAGE_MASK;
      if ((counts[p] as Int32Array)[o] === 0) return false;
      if ((keys[p] as Int32Array)[o] === key) return true;
    }
  }

  /** A copy with room for `more` new addresses, sharing this one's pages when they have the room. */
  copy(more: number): AddressCounts {
    if (AddressCounts.capacityFor(this.used + more) > this.keys.length) return this.rehashed(this.used + more);
    return new AddressCounts(this.keys.copy(), this.counts.copy(), this.used);
  }

  /** This set itself when `more` fit, else a bigger copy (for a set nobody else holds yet). */
  grow(more: number): AddressCounts {
    return AddressCounts.capacityFor(this.used + more) > this.keys.length ? this.rehashed(this.used + more) : this;
  }

  add(addr: number): void {
    const key = addr | 0;
    const mask = this.keys.length - 1;
    let i = AddressCounts.hash(addr, mask);
    while (this.counts.get(i) !== 0 && this.keys.get(i) !== key) i = (i + 1) & mask;
    if (this.counts.get(i) === 0) {
      this.keys.set(i, key);
      this.used++;
    }
    this.counts.set(i, this.counts.get(i) + 1);
  }

  remove(addr: number): void {
    const key = addr | 0;
    const mask = this.keys.length - 1;
    let i = AddressCounts.hash(addr, mask);
    while (this.counts.get(i) !== 0 && this.keys.get(i) !== key) i = (i + 1) & mask;
    if (this.counts.get(i) === 0) return;
    this.counts.set(i, this.counts.get(i) - 1);
    if (this.counts.get(i) !== 0) return;
    this.used--;
    // Backward-shift deletion: entries after the hole that probed past it move
    // into it, so lookups never need tombstones. The entry at j may fill the
    // hole unless its home slot lies cyclically in (hole, j].
    for (let hole = i, j = (i + 1) & mask; this.counts.get(j) !== 0; j = (j + 1) & mask) {
      const home = AddressCounts.hash(this.keys.get(j), mask);
      if (((j - home) & mask) < ((j - hole) & mask)) continue;
      this.keys.set(hole, this.keys.get(j));
      this.counts.set(hole, this.counts.get(j));
      this.counts.set(j, 0);
      hole = j;
    }
  }

  private rehashed(addresses: number): AddressCounts {
    const next = AddressCounts.withRoom(addresses);
    const mask = next.keys.length - 1;
    for (let i = 0; i < this.keys.length; i++) {
      const n = this.counts.get(i);
      if (n === 0) continue;
      const key = this.keys.get(i);
      let k = AddressCounts.hash(key, mask);
      while (next.counts.get(k) !== 0) k = (k + 1) & mask;
      next.keys.set(k, key);
      next.counts.set(k, n);
      next.used++;
    }
    return next;
  }

  /** Mixes all 32 bits: neighbouring addresses (198.18.0.1, .2, …) land far apart. The same for addr and addr | 0. */
  private static hash(addr: number, mask: number): number {
    let h = Math.imul(addr ^ (addr >>> 16), 0x45d9f3b);
    h = Math.imul(h ^ (h >>> 16), 0x45d9f3b);
    return (h ^ (h >>> 16)) & mask;
  }
}

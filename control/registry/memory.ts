// A Registry held in this process's memory: the fake at the registry seam
// (STYLE.md), for lease-manager tests, whole-node tests over fakes and replay.
// It keeps the semantics the file and etcd registries share, so what passes
// here means the same there:
//
//   - keys and values are flannel's ("10.244.68.0-24" -> {"PublicIP":...}),
//     a value that cannot be parsed is skipped and reported, never routed;
//   - createLease is atomic (one winner per subnet), updateLease re-creates a
//     key that expired under it and refuses one another host holds;
//   - a key with a TTL disappears once its expiry has passed (a delete event
//     for watchers); a key without one is a reservation and never expires;
//   - every change bumps a revision; a watch from a recent revision replays
//     the events after it, one from a forgotten revision starts with a full
//     listing (onResync), as etcd does after compaction.
//
// Events reach watchers asynchronously, a burst in one turn delivered
// together, like inotify or an etcd watch response. setReachable(false)
// stands in for a store that went away: calls reject, watches hear it.

import { formatIpv4, formatPrefix, type Ipv4Prefix } from "../../net/addr.js";
import {
  decodeLeaseValue,
  encodeLeaseValue,
  type Lease,
  type LeaseEvent,
  type LeaseListing,
  parseSubnetKey,
  type Registry,
  subnetKey,
  type Watch,
  type WatchHandlers,
} from "./registry.js";

export interface MemoryRegistryOptions {
  /** Clock for expiries, ms since the epoch (tests inject one). Default Date.now. */
  readonly now?: () => number;
  /** Events a watch may resume from; an older revision gets a full listing. Default 1024. */
  readonly keptEvents?: number;
}

/** What a watch hears, in order: lease events, unreadable keys, the store coming and going. */
type WatchItem =
  | LeaseEvent
  | { readonly type: "skipped"; readonly key: string; readonly reason: string }
  | { readonly type: "connection"; readonly connected: boolean };

interface Entry {
  readonly value: string;
  readonly expiresAt: number | null;
}

/** setTimeout fires at once for delays above 2^31-1 ms. */
const LONGEST_TIMER_MS = 2 ** 31 - 1;

export class MemoryRegistry implements Registry {
  readonly description = "memory";
  private config: string | null = null;
  private readonly keys = new Map<string, Entry>();
  private revision = 0;
  /** Recent events with the revision each made, oldest first. */
  private readonly history: { revision: number; event: WatchItem }[] = [];
  private readonly keptEvents: number;
  private readonly now: () => number;
  private readonly watches = new Set<MemoryWatch>();
  private reachable = true;
  private expiryTimer: NodeJS.Timeout | null = null;
  /** No key expires before this (a lower bound: a key removed early may leave it too low, costing one scan). */
  private earliest = Number.POSITIVE_INFINITY;

  constructor(options: MemoryRegistryOptions = {}) {
    this.now = options.now ?? Date.now;
    this.keptEvents = options.keptEvents ?? 1024;
  }

  async getNetworkConfig(): Promise<string | null> {
    this.check();
    return this.config;
  }

  setNetworkConfig(json: string | null): void {
    this.config = json;
  }

  async getLeases(): Promise<LeaseListing> {
    this.check();
    this.expire();
    return this.listing();
  }

  async createLease(subnet: Ipv4Prefix, publicIp: number, ttlSeconds: number): Promise<Lease | null> {
    this.check();
    this.expire();
    const name = subnetKey(subnet);
    if (this.keys.has(name)) return null;
    const expiresAt = Math.round(this.now() + ttlSeconds * 1000);
    this.write(name, { value: encodeLeaseValue(publicIp), expiresAt });
    return { subnet, publicIp, expiresAt };
  }

  async updateLease(lease: Lease, publicIp: number, ttlSeconds: number): Promise<Lease> {
    this.check();
    this.expire();
    const name = subnetKey(lease.subnet);
    const current = this.keys.get(name);
    if (current === undefined) {
      // Expired and removed, or deleted: take it again, atomically like a create.
      const expiresAt = lease.expiresAt === null ? null : Math.round(this.now() + ttlSeconds * 1000);
      this.write(name, { value: encodeLeaseValue(publicIp), expiresAt });
      return { subnet: lease.subnet, publicIp, expiresAt };
    }
    const holder = decodeLeaseValue(current.value);
    if (typeof holder === "string") {
      throw new Error(
        `lease ${formatPrefix(lease.subnet)} cannot be rewritten because its key is unreadable: ${holder}`,
      );
    }
    if (holder !== lease.publicIp) {
      throw new Error(
        `lease ${formatPrefix(lease.subnet)} is held by ${formatIpv4(holder)}, not ${formatIpv4(lease.publicIp)}`,
      );
    }
    // What the store holds decides whether this is a reservation: the caller's copy may be stale.
    const expiresAt = current.expiresAt === null ? null : Math.round(this.now() + ttlSeconds * 1000);
    this.write(name, { value: encodeLeaseValue(publicIp), expiresAt });
    return { subnet: lease.subnet, publicIp, expiresAt };
  }

  async deleteLease(subnet: Ipv4Prefix): Promise<void> {
    this.check();
    this.remove(subnetKey(subnet));
  }

  /** Writes any key and value, as an operator's `etcdctl put` would; no expiry makes a reservation. */
  put(name: string, value: string, expiresAt: number | null = null): void {
    this.write(name, { value, expiresAt });
  }

  /** A reservation: a key without a TTL naming `publicIp`. */
  reserve(subnet: Ipv4Prefix, publicIp: number): void {
    this.write(subnetKey(subnet), { value: encodeLeaseValue(publicIp), expiresAt: null });
  }

  /** Removes a key by name, as `etcdctl del` would. */
  remove(name: string): void {
    const entry = this.keys.get(name);
    if (entry === undefined) return;
    this.keys.delete(name);
    const subnet = parseSubnetKey(name);
    // Watchers never saw an unreadable key as a lease: its removal is no event.
    if (subnet !== null && typeof decodeLeaseValue(entry.value) === "number") this.record({ type: "delete", subnet });
  }

  /**
   * Removes every key whose expiry has passed, telling watchers. Runs before
   * each call and on a timer; walks the keys only once the earliest expiry has passed.
   */
  expire(): void {
    const now = this.now();
    if (now <= this.earliest) return;
    let earliest = Number.POSITIVE_INFINITY;
    for (const [name, entry] of this.keys) {
      if (entry.expiresAt === null) continue;
      if (entry.expiresAt < now) this.remove(name);
      else earliest = Math.min(earliest, entry.expiresAt);
    }
    this.earliest = earliest;
    this.armExpiry();
  }

  /** Makes the store unreachable (calls reject, watches report it) or brings it back (watches resync). */
  setReachable(reachable: boolean): void {
    if (reachable === this.reachable) return;
    this.reachable = reachable;
    for (const watch of this.watches) watch.connection(reachable);
  }

  watchLeases(revision: number, handlers: WatchHandlers): Watch {
    const watch = new MemoryWatch(this, handlers);
    this.watches.add(watch);
    const oldest = this.history[0]?.revision ?? this.revision + 1;
    if (revision + 1 < oldest && revision < this.revision) watch.resync();
    else for (const h of this.history) if (h.revision > revision) watch.queue(h.event);
    watch.connection(this.reachable);
    return {
      close: () => {
        watch.close();
        this.watches.delete(watch);
      },
    };
  }

  async close(): Promise<void> {
    for (const watch of this.watches) watch.close();
    this.watches.clear();
    if (this.expiryTimer !== null) clearTimeout(this.expiryTimer);
    this.expiryTimer = null;
  }

  /** @internal Every live key, sorted by subnet, unreadable ones skipped. */
  listing(): LeaseListing {
    const leases: Lease[] = [];
    const skipped: { key: string; reason: string }[] = [];
    for (const [name, entry] of this.keys) {
      const parsed = parseEntry(name, entry);
      if ("reason" in parsed) skipped.push({ key: keyPath(name), reason: parsed.reason });
      else leases.push(parsed);
    }
    leases.sort((a, b) => a.subnet.base - b.subnet.base || a.subnet.len - b.subnet.len);
    return { leases, revision: this.revision, skipped };
  }

  private check(): void {
    if (!this.reachable) throw new Error("memory registry is unreachable");
  }

  private write(name: string, entry: Entry): void {
    this.keys.set(name, entry);
    const parsed = parseEntry(name, entry);
    this.record("reason" in parsed ? { type: "skipped", ...parsed } : { type: "put", lease: parsed });
    if (entry.expiresAt !== null && entry.expiresAt < this.earliest) {
      this.earliest = entry.expiresAt;
      this.armExpiry();
    }
  }

  private record(event: WatchItem): void {
    this.revision++;
    this.history.push({ revision: this.revision, event });
    if (this.history.length > this.keptEvents) this.history.shift();
    if (this.reachable) for (const watch of this.watches) watch.queue(event);
  }

  /** One timer for the earliest expiry; unref'd so a test's registry never holds the process. */
  private armExpiry(): void {
    if (this.expiryTimer !== null) clearTimeout(this.expiryTimer);
    this.expiryTimer = null;
    if (this.earliest === Number.POSITIVE_INFINITY) return;
    const delay = Math.min(LONGEST_TIMER_MS, Math.max(0, this.earliest + 1 - this.now()));
    this.expiryTimer = setTimeout(() => {
      this.expiryTimer = null;
      this.expire();
      // A capped delay, or a clock that went back: nothing was due yet, wait again.
      if (this.expiryTimer === null) this.armExpiry();
    }, delay);
    this.expiryTimer.unref();
  }
}

/** Delivers queued events in one turn, after the call that made them has returned. */
class MemoryWatch {
  private pending: WatchItem[] = [];
  private soon: NodeJS.Immediate | null = null;
  private connected: boolean | null = null;
  private needsResync = false;
  private closed = false;

  constructor(
    private readonly registry: MemoryRegistry,
    private readonly handlers: WatchHandlers,
  ) {}

  queue(event: WatchItem): void {
    this.pending.push(event);
    this.arm();
  }

  resync(): void {
    this.needsResync = true;
    this.pending = [];
    this.arm();
  }

  /** Connection changes are reported in order with the events; coming back means a full listing. */
  connection(connected: boolean): void {
    if (connected && this.connected === false) this.resync();
    this.connected = connected;
    this.pending.push({ type: "connection", connected });
    this.arm();
  }

  close(): void {
    this.closed = true;
    if (this.soon !== null) clearImmediate(this.soon);
    this.soon = null;
  }

  private arm(): void {
    if (this.soon === null && !this.closed) this.soon = setImmediate(this.flush);
  }

  private readonly flush = (): void => {
    this.soon = null;
    const events = this.pending;
    this.pending = [];
    for (const event of events) {
      if (this.closed) return;
      if (event.type === "put" || event.type === "delete") this.handlers.onEvent(event);
      else if (event.type === "skipped") this.handlers.onSkipped?.(event.key, event.reason);
      else if (!event.connected) this.handlers.onConnection?.(false, new Error("memory registry is unreachable"));
      else {
        this.handlers.onConnection?.(true);
        if (this.needsResync) {
          this.needsResync = false;
          this.handlers.onResync(this.registry.listing());
        }
      }
    }
  };
}

function keyPath(name: string): string {
  return `subnets/${name}`;
}

function parseEntry(name: string, entry: Entry): Lease | { key: string; reason: string } {
  const subnet = parseSubnetKey(name);
  if (subnet === null) return { key: keyPath(name), reason: "the name is not a subnet key like 10.244.68.0-24" };
  const publicIp = decodeLeaseValue(entry.value);
  if (typeof publicIp === "string") return { key: keyPath(name), reason: publicIp };
  return { subnet, publicIp, expiresAt: entry.expiresAt };
}

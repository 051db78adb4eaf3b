// The seam between where leases live (etcd, a directory) and the lease manager
// that acquires, renews and watches them (flannel's subnet.Manager seam). Both
// registries store flannel's exact keys and values; only the store differs.

import { formatIpv4, formatPrefix, type Ipv4Prefix, parseIpv4, parsePrefix } from "../../net/addr.js";

export interface Lease {
  readonly subnet: Ipv4Prefix;
  /** The owner's underlay address (host order). */
  readonly publicIp: number;
  /**
   * Expiry in ms since the epoch; null for a reservation (a key with no TTL),
   * or for another host's lease where finding its expiry costs a call per key
   * (etcd: see `owner` below). Peers' expiries never reach forwarding.
   */
  readonly expiresAt: number | null;
}

export type LeaseEvent =
  | { readonly type: "put"; readonly lease: Lease }
  | { readonly type: "delete"; readonly subnet: Ipv4Prefix };

export interface LeaseListing {
  readonly leases: Lease[];
  /** Store revision the listing was taken at; watches resume after it. */
  readonly revision: number;
  /** Keys under subnets/ that could not be parsed (name and reason), skipped. */
  readonly skipped: { key: string; reason: string }[];
}

export interface WatchHandlers {
  onEvent(event: LeaseEvent): void;
  /** A fresh full listing replaces everything known (after compaction or a reconnect). */
  onResync(listing: LeaseListing): void;
  /** Connection state of the store, for logs, readiness and metrics. */
  onConnection?(connected: boolean, error?: Error): void;
  /** A value under subnets/ that could not be parsed; the event is skipped. */
  onSkipped?(key: string, reason: string): void;
}

export interface Watch {
  close(): void;
}

export interface Registry {
  /** Human name for logs: "etcd https://…" or "dir /var/lib/weft". */
  readonly description: string;
  /** The raw network config JSON, or null while the key is absent. */
  getNetworkConfig(): Promise<string | null>;
  /**
   * Every lease. With `owner` (this host's PublicIP), only leases naming it
   * need their true expiry (ours, for renewal): etcd then skips a TTL call per
   * key, which at 5,000 peers was most of the start-up (etcd removes expired
   * keys itself). Without it, every expiry is looked up.
   */
  getLeases(owner?: number): Promise<LeaseListing>;
  /** Atomically creates the key with a TTL; null when someone else holds it. */
  createLease(subnet: Ipv4Prefix, publicIp: number, ttlSeconds: number): Promise<Lease | null>;
  /**
   * Rewrites our existing key with a fresh TTL (renewal, reuse after restart).
   * A reservation (expiresAt null) is rewritten without a TTL and stays one.
   */
  updateLease(lease: Lease, publicIp: number, ttlSeconds: number): Promise<Lease>;
  deleteLease(subnet: Ipv4Prefix): Promise<void>;
  /** Delivers changes made after `revision`, until closed; `owner` as for getLeases. */
  watchLeases(revision: number, handlers: WatchHandlers, owner?: number): Watch;
  close(): Promise<void>;
}

/** flannel's key name under `<prefix>/subnets/`: "10.244.68.0-24". */
export function subnetKey(subnet: Ipv4Prefix): string {
  return `${formatIpv4(subnet.base)}-${subnet.len}`;
}

export function parseSubnetKey(name: string): Ipv4Prefix | null {
  const dash = name.lastIndexOf("-");
  if (dash < 0) return null;
  return parsePrefix(`${name.slice(0, dash)}/${name.slice(dash + 1)}`, true);
}

/** The value flannel (>= v0.15) writes for a udp lease, byte for byte. */
export function encodeLeaseValue(publicIp: number): string {
  return `{"PublicIP":"${formatIpv4(publicIp)}","PublicIPv6":null}`;
}

/** Reads PublicIP from a lease value; peers' BackendType/BackendData are ignored. */
export function decodeLeaseValue(value: string): number | string {
  let parsed: unknown;
  try {
    parsed = JSON.parse(value);
  } catch {
    return "value is not JSON";
  }
  if (typeof parsed !== "object" || parsed === null) return "value is not a JSON object";
  const ip = (parsed as Record<string, unknown>).PublicIP;
  if (typeof ip !== "string") return "PublicIP is missing";
  const n = parseIpv4(ip);
  return n < 0 ? `PublicIP "${ip}" is not an IPv4 address` : n;
}

export function describeLease(lease: Lease): string {
  return `${formatPrefix(lease.subnet)} -> ${formatIpv4(lease.publicIp)}`;
}

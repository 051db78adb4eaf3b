// Lease logic shared by every registry (flannel's LocalManager): acquire a
// subnet for this host, keep it renewed, and follow everyone else's leases so
// the dataplane always has a current snapshot of who owns which subnet.
//
// Expiries are wall-clock times (ms since the epoch, shared with other hosts
// through the registry) while timers count monotonic time, so a clock jump or
// a suspend would leave the renewal timer aiming at the wrong moment: a
// periodic check compares the two clocks and reschedules from the expiry.

import { formatIpv4, formatPrefix, type Ipv4Prefix, isMartian, prefixContains, prefixSize } from "../net/addr.js";
import { type NetworkConfig, parseNetworkConfig } from "./config.js";
import { type Logger, silentLogger } from "./log.js";
import {
  describeLease,
  type Lease,
  type LeaseListing,
  parseSubnetKey,
  type Registry,
  subnetKey,
  type Watch,
} from "./registry/registry.js";

export type { Logger } from "./log.js";

export const DEFAULT_LEASE_TTL_SECONDS = 86_400;
export const DEFAULT_RENEW_MARGIN_MINUTES = 60;
const ACQUIRE_ATTEMPTS = 10;
/** flannel picks at random among the first 100 free subnets, spreading racing hosts apart. */
const FREE_SUBNET_SAMPLE = 100;
/** setTimeout fires at once for delays above 2^31-1 ms. */
const LONGEST_TIMER_MS = 2 ** 31 - 1;
/** Wall and monotonic clocks drifting apart by more than this between two checks is a jump. */
const CLOCK_JUMP_MS = 5000;

export interface AcquireOptions {
  /** This host's underlay address, as written in PublicIP. */
  readonly publicIp: number;
  /** The lease named by the previous subnet.env, asked for again after a restart. */
  readonly previousSubnet?: Ipv4Prefix | null;
  readonly ttlSeconds?: number;
  /** Picks among free subnets; returns [0, 1) like Math.random. */
  readonly random?: () => number;
  readonly log?: Logger;
}

/** flannel's tryAcquireLease: reuse ours, else the previous subnet, else a free one at random. */
export async function acquireLease(registry: Registry, config: NetworkConfig, options: AcquireOptions): Promise<Lease> {
  return (await acquireListed(registry, config, options)).lease;
}

/**
 * acquireLease, also handing back the listing it decided on, without any
 * lease naming this host (ours is written after it, stale ones of ours were
 * deleted): a watch from its revision delivers those writes and everything
 * else since, so the lease manager starts from it instead of listing again.
 */
async function acquireListed(
  registry: Registry,
  config: NetworkConfig,
  options: AcquireOptions,
): Promise<{ lease: Lease; listing: LeaseListing }> {
  const log = options.log ?? silentLogger;
  const ttlSeconds = options.ttlSeconds ?? DEFAULT_LEASE_TTL_SECONDS;
  const random = options.random ?? Math.random;
  const { publicIp } = options;
  for (let attempt = 1; attempt <= ACQUIRE_ATTEMPTS; attempt++) {
    // Unreadable keys are the manager's to report (once each), not every attempt's.
    const listing = await registry.getLeases(publicIp);
    const ours = listing.leases.filter((lease) => lease.publicIp === publicIp);
    const taken = listing.leases.filter((lease) => lease.publicIp !== publicIp);
    const others = { ...listing, leases: taken };
    const reusable = ours.find((lease) => fitsConfig(config, lease.subnet));
    if (reusable !== undefined) {
      log.info(
        { subnet: formatPrefix(reusable.subnet), publicIp: formatIpv4(publicIp) },
        "found lease for current IP, reusing",
      );
      return { lease: await registry.updateLease(reusable, publicIp, ttlSeconds), listing: others };
    }
    for (const stale of ours) {
      log.info(
        { subnet: formatPrefix(stale.subnet), publicIp: formatIpv4(publicIp) },
        "found lease for current IP but it does not fit the network config, deleting",
      );
      await registry.deleteLease(stale.subnet);
    }

    let subnet: Ipv4Prefix | null = null;
    // The previous subnet gets one try: if its create loses, something holds
    // it (or is about to) and the next attempts pick among the free ones.
    const previous = attempt === 1 ? (options.previousSubnet ?? null) : null;
    if (previous !== null) {
      if (!fitsConfig(config, previous)) {
        log.warn({ subnet: formatPrefix(previous) }, "previous subnet does not fit the network config, ignoring");
      } else if (taken.some((lease) => overlaps(lease.subnet, previous))) {
        log.info({ subnet: formatPrefix(previous) }, "previous subnet is taken by another host");
      } else {
        log.info({ subnet: formatPrefix(previous) }, "found previously leased subnet, reusing");
        subnet = previous;
      }
    }
    if (subnet === null) {
      const free = freeSubnets(config, taken, FREE_SUBNET_SAMPLE);
      if (free.length === 0) {
        throw new Error(
          `out of subnets in ${formatPrefix(config.network)}: every /${config.subnetLen} from ${formatIpv4(config.subnetMin)} to ${formatIpv4(config.subnetMax)} is leased`,
        );
      }
      const pick = Math.min(free.length - 1, Math.floor(random() * free.length));
      subnet = { base: free[pick] as number, len: config.subnetLen };
    }

    const lease = await registry.createLease(subnet, publicIp, ttlSeconds);
    if (lease !== null) {
      log.info({ subnet: formatPrefix(lease.subnet), publicIp: formatIpv4(publicIp) }, "acquired lease");
      return { lease, listing: others };
    }
    log.info({ subnet: formatPrefix(subnet), attempt }, "another host took the subnet first, trying again");
  }
  throw new Error(
    `lease: gave up after ${ACQUIRE_ATTEMPTS} attempts because another host took each chosen subnet first`,
  );
}

/** flannel's isSubnetConfigCompat: within SubnetMin..SubnetMax and exactly SubnetLen long. */
export function fitsConfig(config: NetworkConfig, subnet: Ipv4Prefix): boolean {
  return subnet.len === config.subnetLen && subnet.base >= config.subnetMin && subnet.base <= config.subnetMax;
}

/**
 * Why a peer's lease must not be routed, or null when it may be. flannel's
 * leases are all SubnetLen long inside Network and name another host's
 * unicast address; anything else (a lease left from an earlier Network, a
 * hand-made key) would make the table throw, capture others' traffic or send
 * it back to ourselves.
 */
export function peerLeaseProblem(config: NetworkConfig, lease: Lease, ownPublicIp: number): string | null {
  const { subnet, publicIp } = lease;
  if (!prefixContains(config.network, subnet.base) || subnet.len < config.network.len) {
    return `${formatPrefix(subnet)} is outside Network ${formatPrefix(config.network)}`;
  }
  if (subnet.len !== config.subnetLen) {
    return `${formatPrefix(subnet)} is not a /${config.subnetLen} like every lease of Network ${formatPrefix(config.network)}`;
  }
  if (isMartian(publicIp)) return `PublicIP ${formatIpv4(publicIp)} is not a unicast host address`;
  if (publicIp === ownPublicIp) return `PublicIP ${formatIpv4(publicIp)} is this host's own address`;
  return null;
}

/**
 * Network addresses of up to `limit` SubnetLen subnets, scanning up from
 * SubnetMin, that overlap no lease. A key covering the whole Network (a
 * hand-made "10.244.0.0-16") is never a host's lease and blocks nothing, and
 * keys outside SubnetMin..SubnetMax overlap no candidate; any other key, of
 * whatever length (a lease kept from an older SubnetLen), blocks the subnets
 * it overlaps, since a host may still route it. Sweeps merged
 * lease ranges instead of testing every lease per candidate, so a /8 with
 * 65,536 leases costs one sort.
 */
export function freeSubnets(config: NetworkConfig, leases: readonly Lease[], limit: number): number[] {
  const ranges = leases
    .filter(({ subnet }) => subnet.len > config.network.len)
    .map((lease) => ({ first: lease.subnet.base, last: lease.subnet.base + prefixSize(lease.subnet.len) - 1 }))
    .sort((a, b) => a.first - b.first);
  const size = prefixSize(config.subnetLen);
  const free: number[] = [];
  let r = 0;
  for (let base = config.subnetMin; base <= config.subnetMax && free.length < limit; base += size) {
    const last = base + size - 1;
    while (r < ranges.length && (ranges[r] as { last: number }).last < base) r++;
    const range = ranges[r];
    if (range === undefined || range.first > last) {
      free.push(base);
      continue;
    }
    // Overlap: jump to the first aligned subnet past the lease range.
    let blockedUntil = range.last;
    for (let k = r + 1; k < ranges.length && (ranges[k] as { first: number }).first <= blockedUntil + 1; k++) {
      blockedUntil = Math.max(blockedUntil, (ranges[k] as { last: number }).last);
    }
    base = Math.floor(blockedUntil / size) * size;
  }
  return free;
}

function overlaps(a: Ipv4Prefix, b: Ipv4Prefix): boolean {
  return a.base < b.base + prefixSize(b.len) && b.base < a.base + prefixSize(a.len);
}

function sameSubnet(a: Ipv4Prefix, b: Ipv4Prefix): boolean {
  return a.base === b.base && a.len === b.len;
}

function sameLease(a: Lease | null, b: Lease | null): boolean {
  if (a === null || b === null) return a === b;
  return a.publicIp === b.publicIp && a.expiresAt === b.expiresAt && sameSubnet(a.subnet, b.subnet);
}

/**
 * What `ignored` counts a key under. Registries report an unreadable key by its
 * path ("/var/lib/weft/subnets/10.244.60.0-24", "<prefix>/subnets/...") but its
 * events by subnet: a path ending in a subnet key counts as that key, so once
 * the key reads fine its put (or its delete) replaces the entry instead of
 * leaving a stale one behind until the next resync.
 */
function ignoredName(key: string): string {
  const name = key.slice(key.lastIndexOf("/") + 1);
  return parseSubnetKey(name) === null ? key : name;
}

function hasExpired(lease: Lease, now: number): boolean {
  return lease.expiresAt !== null && lease.expiresAt < now;
}

/** One peer key's change within a batch: added (before null), removed (after null) or rewritten. */
export interface PeerChange {
  readonly key: string;
  readonly before: Lease | null;
  readonly after: Lease | null;
}

export interface PeerBatch {
  /** The first batch after start: every peer known, as one table build. */
  readonly initial: boolean;
  readonly changes: readonly PeerChange[];
}

export interface LeaseManagerOptions {
  readonly registry: Registry;
  readonly publicIp: number;
  readonly previousSubnet?: Ipv4Prefix | null;
  readonly ttlSeconds?: number;
  /** Renew when less than this remains (`--subnet-lease-renew-margin`); must be below the TTL. */
  readonly renewMarginMinutes?: number;
  /** Pause between reads of a missing network config. Default 1000 ms. */
  readonly configRetryMs?: number;
  /** Pause before retrying a failed renewal. Default 5000 ms. */
  readonly renewRetryMs?: number;
  /** Clock for renewal scheduling, ms since the epoch. Default Date.now. */
  readonly now?: () => number;
  /** A clock that never jumps, ms, to tell a wall-clock jump from elapsed time. Default performance.now. */
  readonly monotonicNow?: () => number;
  readonly random?: () => number;
  readonly log?: Logger;
  /**
   * What changed among the peers (never our own lease): the first batch holds
   * every peer, each later one what changed since the batch before. A burst
   * of events within one event-loop turn is one batch, each key once.
   */
  readonly onPeers?: (batch: PeerBatch) => void;
  /** Every peer lease, sorted, after each batch (costs a sort of all peers: for tests and small tools). */
  readonly onLeases?: (leases: readonly Lease[]) => void;
  /** Our own key was deleted or handed to another host; the manager has stopped. */
  readonly onRevoked?: () => void;
  readonly onRenewed?: (lease: Lease) => void;
  readonly onConnection?: (connected: boolean, error?: Error) => void;
  readonly onSkipped?: (key: string, reason: string) => void;
  /**
   * The network config in the registry now names another Network or SubnetLen
   * than the one this host runs on; the manager has stopped. Checked every
   * `checkIntervalMs`.
   */
  readonly onConfigChanged?: (message: string) => void;
  /** How often the network config is re-read and the wall clock checked for jumps. Default 10 s. */
  readonly checkIntervalMs?: number;
}

/**
 * Owns this host's lease for the life of the daemon. `stop()` leaves the key
 * in the registry, as flannel does, so a restart finds and reuses it.
 */
export class LeaseManager {
  private readonly options: LeaseManagerOptions;
  private readonly log: Logger;
  private readonly now: () => number;
  private readonly monotonicNow: () => number;
  private readonly ttlSeconds: number;
  private readonly renewMarginMs: number;
  private ownLease: Lease | null = null;
  /** acquire()'s listing (peers only), until follow() starts from it. */
  private startListing: LeaseListing | null = null;
  private networkConfig: NetworkConfig | null = null;
  private readonly peerLeases = new Map<string, Lease>();
  /** Keys not routed (unreadable, or failing peerLeaseProblem) and why; each is logged once. */
  private ignored = new Map<string, string>();
  private watch: Watch | null = null;
  private renewTimer: NodeJS.Timeout | null = null;
  private checkTimer: NodeJS.Timeout | null = null;
  /** Both clocks at the last check, to measure how far they drifted apart since. */
  private lastWallMs = 0;
  private lastMonotonicMs = 0;
  private renewAt: number | null = null;
  private waitTimer: { timer: NodeJS.Timeout; wake: () => void } | null = null;
  private publishPending = false;
  /** Keys changed since the last batch, with the lease each had then (null: none). */
  private changedSince = new Map<string, Lease | null>();
  private published = false;
  private isConnected = false;
  private stopped = false;
  private revoked = false;
  private recreating = false;
  private renewing = false;

  constructor(options: LeaseManagerOptions) {
    this.options = options;
    this.log = options.log ?? silentLogger;
    this.now = options.now ?? Date.now;
    this.monotonicNow = options.monotonicNow ?? (() => performance.now());
    this.ttlSeconds = options.ttlSeconds ?? DEFAULT_LEASE_TTL_SECONDS;
    const marginMinutes = options.renewMarginMinutes ?? DEFAULT_RENEW_MARGIN_MINUTES;
    // A margin as long as the TTL would renew in a tight loop (flanneld refuses it too).
    if (!(marginMinutes > 0 && marginMinutes * 60 < this.ttlSeconds)) {
      throw new Error(
        `subnet lease renew margin ${marginMinutes} minutes is not between 0 and the lease TTL of ${this.ttlSeconds} s`,
      );
    }
    this.renewMarginMs = marginMinutes * 60_000;
  }

  get lease(): Lease | null {
    return this.ownLease;
  }

  get config(): NetworkConfig | null {
    return this.networkConfig;
  }

  /** Everyone else's leases by key ("10.244.68.0-24"); our own subnet is never here. */
  get peers(): ReadonlyMap<string, Lease> {
    return this.peerLeases;
  }

  /** Keys in the registry that are not routed, for the weft_leases_ignored gauge. */
  get ignoredCount(): number {
    return this.ignored.size;
  }

  get expiresAt(): number | null {
    return this.ownLease?.expiresAt ?? null;
  }

  /** When the next renewal is due (ms since the epoch); null for a reservation or when stopped. */
  get nextRenewalAt(): number | null {
    return this.renewAt;
  }

  get connected(): boolean {
    return this.isConnected;
  }

  /**
   * Waits for the network config, acquires a lease, lists and watches the
   * others. Rejects with the ConfigError of a bad config: that needs an operator.
   */
  async start(): Promise<Lease> {
    await this.acquire();
    return this.follow();
  }

  /** The first half of start(): the network config and our lease, nothing watched yet. */
  async acquire(): Promise<Lease> {
    const { registry } = this.options;
    const config = parseNetworkConfig(await this.waitForConfig());
    this.networkConfig = config;
    this.log.info(
      {
        network: formatPrefix(config.network),
        subnetLen: config.subnetLen,
        subnetMin: formatIpv4(config.subnetMin),
        subnetMax: formatIpv4(config.subnetMax),
        port: config.backend.port,
      },
      "network config",
    );
    const { lease, listing } = await acquireListed(registry, config, {
      publicIp: this.options.publicIp,
      previousSubnet: this.options.previousSubnet ?? null,
      ttlSeconds: this.ttlSeconds,
      random: this.options.random,
      log: this.log,
    });
    this.throwIfStopped();
    this.ownLease = lease;
    this.startListing = listing;
    return lease;
  }

  /**
   * The second half of start(): hands the peers of acquire()'s listing over
   * as the first batch (before this resolves) and watches for changes from
   * that listing's revision, so nothing is listed twice and nothing written
   * since is missed: our own write arrives as an event, and should another
   * host have taken or deleted our key meanwhile, that event revokes it.
   */
  async follow(): Promise<Lease> {
    const { registry } = this.options;
    const lease = this.ownLease;
    const listing = this.startListing;
    if (lease === null || listing === null) throw new Error("lease manager: follow() before acquire()");
    this.startListing = null;
    this.throwIfStopped();
    this.replacePeers(listing);
    this.isConnected = true;
    this.publish();
    // Whatever a registry delivers, nothing thrown here may escape into its
    // timer or stream callback: that would end the process (every node of a
    // cluster at once, for one bad key). The last good table stays in force.
    this.watch = registry.watchLeases(
      listing.revision,
      {
        onEvent: (event) =>
          this.guard("lease event", () => {
            if (event.type === "put") this.onPut(event.lease);
            else this.onDelete(event.subnet);
          }),
        onResync: (fresh) => this.guard("lease listing", () => this.onResync(fresh)),
        onConnection: (connected, error) => this.guard("connection event", () => this.onConnection(connected, error)),
        onSkipped: (key, reason) => this.guard("unreadable lease", () => this.ignore(key, reason)),
      },
      this.options.publicIp,
    );
    this.scheduleRenewal();
    this.lastWallMs = this.now();
    this.lastMonotonicMs = this.monotonicNow();
    this.checkTimer = setInterval(() => {
      this.checkClock();
      void this.checkConfig();
    }, this.options.checkIntervalMs ?? 10_000);
    this.checkTimer.unref();
    return lease;
  }

  /**
   * A renewal timer set for "expiry minus margin" fires too late after the
   * wall clock jumps forward (or the host slept: the monotonic clock stands
   * still in suspend), and too early after it jumps back. Reschedule from the
   * lease's wall-clock expiry; a renewal already due runs at once.
   */
  private checkClock(): void {
    const wall = this.now();
    const monotonic = this.monotonicNow();
    const jumpMs = wall - this.lastWallMs - (monotonic - this.lastMonotonicMs);
    this.lastWallMs = wall;
    this.lastMonotonicMs = monotonic;
    if (Math.abs(jumpMs) <= CLOCK_JUMP_MS || this.stopped) return;
    const seconds = Math.round(jumpMs / 100) / 10;
    this.log.warn({ jumpSeconds: seconds }, `clock jumped by ${seconds} s`);
    // No timer means a renewal or re-creation is in flight; it schedules the next one from the new expiry.
    if (this.renewTimer !== null) this.scheduleRenewal();
  }

  /**
   * flannel reads the config once; weft notices when it changes under a
   * running host, because carrying on would route a network nobody uses.
   * An absent or unreadable config is left alone (a registry hiccup, a
   * half-done edit); only a valid config for another network is fatal.
   */
  private async checkConfig(): Promise<void> {
    const current = this.networkConfig;
    if (current === null || this.stopped) return;
    let next: NetworkConfig;
    try {
      const json = await this.options.registry.getNetworkConfig();
      if (json === null) return;
      next = parseNetworkConfig(json);
    } catch {
      return;
    }
    if (this.stopped) return;
    if (
      next.network.base === current.network.base &&
      next.network.len === current.network.len &&
      next.subnetLen === current.subnetLen
    ) {
      return;
    }
    const message =
      `network config changed from ${formatPrefix(current.network)} (SubnetLen ${current.subnetLen}) ` +
      `to ${formatPrefix(next.network)} (SubnetLen ${next.subnetLen}); restart weftd to join the new network`;
    this.log.error({ from: formatPrefix(current.network), to: formatPrefix(next.network) }, message);
    this.stop();
    this.options.onConfigChanged?.(message);
  }

  /** Stops renewing and watching; the lease stays in the registry for reuse after a restart. */
  stop(): void {
    this.stopped = true;
    if (this.checkTimer !== null) clearInterval(this.checkTimer);
    this.checkTimer = null;
    this.watch?.close();
    this.watch = null;
    if (this.renewTimer !== null) clearTimeout(this.renewTimer);
    this.renewTimer = null;
    this.renewAt = null;
    if (this.waitTimer !== null) {
      clearTimeout(this.waitTimer.timer);
      this.waitTimer.wake();
      this.waitTimer = null;
    }
  }

  private async waitForConfig(): Promise<string> {
    const { registry } = this.options;
    const retryMs = this.options.configRetryMs ?? 1000;
    for (;;) {
      this.throwIfStopped();
      let json: string | null = null;
      try {
        json = await registry.getNetworkConfig();
      } catch (err) {
        this.log.warn({ err, registry: registry.description }, "could not fetch network config, retrying");
      }
      if (json !== null) return json;
      this.throwIfStopped();
      this.log.info(`waiting for network config at ${registry.description}/config`);
      // Deliberately not unref'd: start() is waiting on it and nothing else may hold the process yet.
      await new Promise<void>((resolve) => {
        this.waitTimer = { timer: setTimeout(resolve, retryMs), wake: resolve };
      });
      this.waitTimer = null;
    }
  }

  private throwIfStopped(): void {
    if (this.stopped) throw new Error("lease manager was stopped before it finished starting");
  }

  private onPut(lease: Lease): void {
    const own = this.ownLease;
    if (own !== null && sameSubnet(lease.subnet, own.subnet)) {
      if (lease.publicIp !== own.publicIp) {
        this.revoke(`lease ${formatPrefix(own.subnet)} now names ${formatIpv4(lease.publicIp)}`);
        return;
      }
      this.ownLease = lease;
      // Readable again if it was reported unreadable (a hand edit of our key).
      this.ignored.delete(subnetKey(lease.subnet));
      return;
    }
    const key = subnetKey(lease.subnet);
    const problem = this.problemOf(lease);
    if (problem !== null) {
      this.ignore(key, problem);
      // A key that was routable and no longer is leaves the table.
      this.setPeer(key, null);
      return;
    }
    this.ignored.delete(key);
    this.setPeer(key, lease);
  }

  private problemOf(lease: Lease): string | null {
    const config = this.networkConfig;
    return config === null ? null : peerLeaseProblem(config, lease, this.options.publicIp);
  }

  /** Records a key that is not routed; warns unless `known` already had it for that reason. */
  private ignore(key: string, reason: string, known: ReadonlyMap<string, string> = this.ignored): void {
    const name = ignoredName(key);
    const isNew = known.get(name) !== reason;
    this.ignored.set(name, reason);
    if (!isNew) return;
    this.log.warn({ key, reason }, "ignoring lease");
    this.options.onSkipped?.(key, reason);
  }

  /** Runs a handler of a registry callback; a throw is logged, never propagated. */
  private guard(what: string, handler: () => void): void {
    try {
      handler();
    } catch (err) {
      this.log.error({ err: (err as Error).message }, `${what} not applied, keeping the last good leases`);
    }
  }

  private onDelete(subnet: Ipv4Prefix): void {
    const own = this.ownLease;
    if (own !== null && sameSubnet(subnet, own.subnet)) {
      // The renewal in flight writes the key again (the watch then reports a put).
      if (this.renewing) return;
      // Expired and removed by whoever scanned (a forward clock jump, a long
      // suspend): nobody took it from us, so take it again.
      if (hasExpired(own, this.now())) void this.recreate(own);
      else this.revoke(`lease ${formatPrefix(own.subnet)} was deleted`);
      return;
    }
    this.ignored.delete(subnetKey(subnet));
    this.setPeer(subnetKey(subnet), null);
  }

  private onResync(listing: LeaseListing): void {
    const own = this.ownLease;
    const listed = own === null ? undefined : listing.leases.find((lease) => sameSubnet(lease.subnet, own.subnet));
    if (own !== null && listed !== undefined && listed.publicIp !== own.publicIp) {
      this.revoke(`lease ${formatPrefix(own.subnet)} now names ${formatIpv4(listed.publicIp)}`);
      return;
    }
    if (listed !== undefined) this.ownLease = listed;
    this.replacePeers(listing);
    if (own !== null && listed === undefined) void this.recreate(own);
  }

  /**
   * Our key is gone though nobody deleted it in our sight: it expired and a
   * scan removed it, or the store came back empty (etcd restarted without its
   * data dir, the registry directory was wiped). Take the same subnet again;
   * only if another host got there first is the lease lost.
   */
  private async recreate(own: Lease): Promise<void> {
    if (this.recreating || this.stopped) return;
    this.recreating = true;
    const subnet = formatPrefix(own.subnet);
    const expired = hasExpired(own, this.now());
    if (expired) this.log.warn({ subnet, expiredAt: own.expiresAt }, "lease expired and was removed, re-creating it");
    else this.log.warn({ subnet }, "lease missing after the registry came back, re-creating it");
    try {
      for (let attempt = 1; !this.stopped; attempt++) {
        try {
          const { registry, publicIp } = this.options;
          let lease = await registry.createLease(own.subnet, publicIp, this.ttlSeconds);
          if (lease === null) {
            // A renewal of ours may have won the create; only another host's key is a loss.
            const holder = (await registry.getLeases(publicIp)).leases.find((l) => sameSubnet(l.subnet, own.subnet));
            if (holder !== undefined && holder.publicIp !== publicIp) {
              const when = expired ? "after it expired" : "while the registry was away";
              this.revoke(`lease ${subnet} was taken by ${formatIpv4(holder.publicIp)} ${when}`);
              return;
            }
            // Nobody holds it yet something blocks it (a create in flight elsewhere): try again.
            if (holder === undefined) throw new Error(`lease ${subnet} could not be created though nobody holds it`);
            lease = holder;
          }
          if (this.stopped) return;
          this.ownLease = lease;
          this.log.info({ lease: describeLease(lease) }, "lease re-created");
          this.options.onRenewed?.(lease);
          this.scheduleRenewal();
          return;
        } catch (err) {
          this.log.warn({ err, attempt }, "re-creating the lease failed, retrying");
          await new Promise((resolve) => setTimeout(resolve, this.options.renewRetryMs ?? 5000).unref());
        }
      }
    } finally {
      this.recreating = false;
    }
  }

  private onConnection(connected: boolean, error?: Error): void {
    if (connected !== this.isConnected) {
      if (connected) this.log.info({ registry: this.options.registry.description }, "registry connected");
      else this.log.warn({ registry: this.options.registry.description, err: error }, "registry unreachable");
    }
    this.isConnected = connected;
    this.options.onConnection?.(connected, error);
  }

  /** Records a peer key's new lease (null: gone) and schedules the batch that reports it. */
  private setPeer(key: string, lease: Lease | null): void {
    const before = this.peerLeases.get(key) ?? null;
    if (lease === null && before === null) return;
    if (!this.changedSince.has(key)) this.changedSince.set(key, before);
    if (lease === null) this.peerLeases.delete(key);
    else this.peerLeases.set(key, lease);
    this.schedulePublish();
  }

  /** A full listing replaces the peers; only keys that differ become changes (a resync is not a restart). */
  private replacePeers(listing: LeaseListing): void {
    const own = this.ownLease;
    const before = this.ignored;
    this.ignored = new Map();
    for (const { key, reason } of listing.skipped) this.ignore(key, reason, before);
    const listed = new Map<string, Lease>();
    for (const lease of listing.leases) {
      if (own !== null && sameSubnet(lease.subnet, own.subnet)) continue;
      const key = subnetKey(lease.subnet);
      const problem = this.problemOf(lease);
      if (problem !== null) this.ignore(key, problem, before);
      else listed.set(key, lease);
    }
    for (const key of [...this.peerLeases.keys()]) if (!listed.has(key)) this.setPeer(key, null);
    for (const [key, lease] of listed) {
      if (!sameLease(this.peerLeases.get(key) ?? null, lease)) this.setPeer(key, lease);
    }
  }

  private revoke(why: string): void {
    if (this.revoked || this.stopped) return;
    this.revoked = true;
    this.log.error({ why }, "lease has been revoked");
    this.stop();
    this.options.onRevoked?.();
  }

  /** One batch per event-loop turn, however many events arrived in it. */
  private schedulePublish(): void {
    if (this.publishPending || !this.published) return;
    this.publishPending = true;
    setImmediate(() => {
      this.publishPending = false;
      if (!this.stopped) this.publish();
    });
  }

  /** Hands over what changed since the last batch; a key changed and changed back is no change. */
  private publish(): void {
    const initial = !this.published;
    this.published = true;
    const changes: PeerChange[] = [];
    if (initial) {
      for (const [key, lease] of this.peerLeases) changes.push({ key, before: null, after: lease });
    } else {
      for (const [key, before] of this.changedSince) {
        const after = this.peerLeases.get(key) ?? null;
        if (!sameLease(before, after)) changes.push({ key, before, after });
      }
    }
    this.changedSince = new Map();
    if (!initial && changes.length === 0) return;
    this.guard("lease snapshot", () => this.options.onPeers?.({ initial, changes }));
    if (this.options.onLeases !== undefined) {
      this.guard("lease snapshot", () => {
        const leases = [...this.peerLeases.values()].sort((a, b) => a.subnet.base - b.subnet.base);
        this.options.onLeases?.(leases);
      });
    }
  }

  private scheduleRenewal(delayOverrideMs?: number): void {
    // One renewal timer at a time, whoever schedules (renewal, re-creation, clock check).
    if (this.renewTimer !== null) clearTimeout(this.renewTimer);
    this.renewTimer = null;
    const own = this.ownLease;
    if (this.stopped || own === null || own.expiresAt === null) {
      // Reservations have no TTL and are never renewed.
      this.renewAt = null;
      return;
    }
    const renewAt = delayOverrideMs === undefined ? own.expiresAt - this.renewMarginMs : this.now() + delayOverrideMs;
    const delay = Math.max(0, renewAt - this.now());
    this.renewAt = renewAt;
    // Longer delays than a timer can hold (TTLs above 24 days) are waited out in steps.
    this.renewTimer =
      delay > LONGEST_TIMER_MS
        ? setTimeout(() => this.scheduleRenewal(), LONGEST_TIMER_MS)
        : setTimeout(() => void this.renew(), delay);
    this.renewTimer.unref();
  }

  private async renew(): Promise<void> {
    this.renewTimer = null;
    const own = this.ownLease;
    // A re-creation in flight schedules the next renewal itself.
    if (this.stopped || own === null || this.recreating) return;
    try {
      this.renewing = true;
      const renewed = await this.options.registry
        .updateLease(own, this.options.publicIp, this.ttlSeconds)
        .finally(() => {
          this.renewing = false;
        });
      // Recorded even after stop(): the registry now holds this expiry.
      this.ownLease = renewed;
      if (this.stopped) return;
      this.log.info({ subnet: formatPrefix(renewed.subnet), expiresAt: renewed.expiresAt }, "lease renewed");
      this.scheduleRenewal();
      this.options.onRenewed?.(renewed);
    } catch (err) {
      if (this.stopped) return;
      const retryMs = this.options.renewRetryMs ?? 5000;
      this.log.warn({ err, subnet: formatPrefix(own.subnet), retryMs }, "lease renewal failed, retrying");
      this.scheduleRenewal(retryMs);
    }
  }
}

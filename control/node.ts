// One weft node, assembled in one straight line over any Registry, Device and
// Transport (the OS opens flannel0 and the socket; tests pass fakes):
//
//   registry ──► lease manager ──acquire──► our lease + network config
//                     │                          │
//                     │                 openDataplane(lease)  (flannel0, socket: the caller's)
//                     │                          │
//                     │                      engine (exists before any peer is known)
//                     │                          ▲
//                     └──follow──► peer batches ──► lease table snapshot ──┘ setTable
//
// The port is resolved once (--port, else the config's Backend.Port) and
// serves the socket and every table. Each peer added or removed is logged
// here, once, from the manager's batches; the first batch, however large,
// is one table build and one line.

import { Counters } from "../dataplane/counters.js";
import { Engine } from "../dataplane/engine.js";
import type { Device, Transport } from "../dataplane/io.js";
import { LeaseTable, type PeerEdit, type PeerLease } from "../dataplane/leases.js";
import type { Ipv4Prefix } from "../net/addr.js";
import type { NetworkConfig } from "./config.js";
import { LeaseManager, type LeaseManagerOptions, type PeerBatch } from "./lease-manager.js";
import { type Logger, silentLogger } from "./log.js";
import { describeLease, type Lease, type Registry } from "./registry/registry.js";

/** How often this host's own addresses are re-read for the local-source check. */
const LOCAL_ADDRESS_REFRESH_MS = 10_000;

export interface Dataplane {
  readonly device: Device;
  readonly transport: Transport;
  /** flannel0's MTU: the underlay's minus the outer headers. */
  readonly mtu: number;
}

export interface NodeOptions {
  readonly registry: Registry;
  /** This host's underlay address, as written in PublicIP. */
  readonly publicIp: number;
  readonly previousSubnet?: Ipv4Prefix | null;
  readonly renewMarginMinutes?: number;
  /** `--port`; 0 or absent takes the network config's Backend.Port. */
  readonly port?: number;
  readonly peerCheck?: boolean;
  readonly strictInnerSource?: boolean;
  readonly counters?: Counters;
  readonly log?: Logger;
  /** Opens flannel0 and the socket for our lease; the OS side of it is the caller's. */
  readonly openDataplane: (lease: Lease, config: NetworkConfig, port: number) => Promise<Dataplane>;
  /** This host's own addresses (all interfaces), at start and every refresh; none by default. */
  readonly localAddresses?: (atStart: boolean) => Iterable<number>;
  /** The node cannot go on (lease revoked, network config changed, flannel0 or the socket failed). */
  readonly onFatal?: () => void;
  /**
   * Each time the engine is handed a new table (for weft_table_generation and
   * weft_table_update_*): the seconds spent making it and handing it over, on
   * the thread that forwards packets, and whether it was the first build.
   */
  readonly onTableSwap?: (seconds: number, initial: boolean) => void;
  /** Lease manager settings tests and tools may set (TTL, clocks, timers). */
  readonly manager?: Omit<
    Partial<LeaseManagerOptions>,
    "registry" | "publicIp" | "log" | "onPeers" | "onRevoked" | "onConfigChanged"
  >;
}

export interface Started {
  readonly lease: Lease;
  readonly config: NetworkConfig;
  readonly port: number;
  readonly mtu: number;
}

export class Node {
  readonly manager: LeaseManager;
  readonly counters: Counters;
  private readonly options: NodeOptions;
  private readonly log: Logger;
  private engineRef: Engine | null = null;
  private dataplane: Dataplane | null = null;
  private config: NetworkConfig | null = null;
  private port = 0;
  private addressTimer: NodeJS.Timeout | null = null;
  private stopped = false;

  constructor(options: NodeOptions) {
    this.options = options;
    this.log = options.log ?? silentLogger;
    this.counters = options.counters ?? new Counters();
    this.manager = new LeaseManager({
      ...options.manager,
      registry: options.registry,
      publicIp: options.publicIp,
      previousSubnet: options.previousSubnet ?? null,
      renewMarginMinutes: options.renewMarginMinutes ?? options.manager?.renewMarginMinutes,
      log: this.log,
      onPeers: (batch) => this.onPeers(batch),
      // The manager logs why; flannel exits so that systemd restarts it.
      onRevoked: () => this.fail(),
      onConfigChanged: () => this.fail(),
    });
  }

  get engine(): Engine | null {
    return this.engineRef;
  }

  get device(): Device | null {
    return this.dataplane?.device ?? null;
  }

  get transport(): Transport | null {
    return this.dataplane?.transport ?? null;
  }

  /** Lease, then dataplane, then engine, then the peers: forwarding starts with the first table. */
  async start(): Promise<Started> {
    const lease = await this.manager.acquire();
    const config = this.manager.config as NetworkConfig;
    this.config = config;
    this.port = this.options.port || config.backend.port;
    this.log.info({ lease: describeLease(lease), expiresAt: lease.expiresAt }, "lease acquired");

    const dataplane = await this.options.openDataplane(lease, config, this.port);
    this.dataplane = dataplane;
    if (this.stopped) throw new Error("node was stopped before it finished starting");
    const engine = new Engine({
      device: dataplane.device,
      transport: dataplane.transport,
      localAddr: lease.subnet.base,
      mtu: dataplane.mtu,
      ownSubnet: lease.subnet,
      peerCheck: this.options.peerCheck,
      strictInnerSource: this.options.strictInnerSource,
      counters: this.counters,
      onError: (err, side) => {
        this.log.error({ err: err.message, side }, side === "device" ? "flannel0 failed" : "UDP socket failed");
        this.fail();
      },
    });
    this.engineRef = engine;
    const addresses = this.options.localAddresses;
    if (addresses !== undefined) {
      // Tunnelled packets may not claim this host's addresses as their source;
      // addresses come and go (DHCP, a new bridge), so the set is refreshed.
      engine.setLocalAddresses(addresses(true));
      this.addressTimer = setInterval(() => engine.setLocalAddresses(addresses(false)), LOCAL_ADDRESS_REFRESH_MS);
      this.addressTimer.unref();
    }
    engine.start();
    await this.manager.follow();
    return { lease: this.manager.lease ?? lease, config, port: this.port, mtu: dataplane.mtu };
  }

  /** Stops forwarding and following; flannel0 and the socket close, the lease stays for reuse. */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    if (this.addressTimer !== null) clearInterval(this.addressTimer);
    this.addressTimer = null;
    this.engineRef?.stop();
    this.dataplane?.device.close();
    this.dataplane?.transport.close();
    this.manager.stop();
  }

  private fail(): void {
    if (this.stopped) return;
    this.stop();
    this.options.onFatal?.();
  }

  /**
   * The first batch is one table build and one summary line ("5000 peers";
   * each peer at debug level); later ones edit a copy of the table (its
   * cost follows the batch, not the cluster) and log each peer added or removed.
   */
  private onPeers(batch: PeerBatch): void {
    const engine = this.engineRef;
    const config = this.config;
    if (engine === null || config === null) return;
    const t0 = process.hrtime.bigint();
    const edits: PeerEdit[] = [];
    for (const { before, after } of batch.changes) {
      // A renewal (same PublicIP, new expiry) changes nothing that forwarding uses.
      if (before !== null && after !== null && before.publicIp === after.publicIp) continue;
      if (after !== null) edits.push({ subnet: after.subnet, publicIp: after.publicIp });
      else if (before !== null) edits.push({ subnet: before.subnet, publicIp: null });
    }
    if (!batch.initial && edits.length === 0) return;
    let table: LeaseTable;
    try {
      table = batch.initial
        ? LeaseTable.build(config.network, config.subnetLen, edits as PeerLease[], this.port)
        : engine.leaseTable.with(edits);
    } catch (err) {
      // The manager hands over checked leases only; should one slip through,
      // forwarding goes on with the last good table rather than stopping.
      this.log.error({ err: (err as Error).message }, "lease table not updated, keeping the previous one");
      return;
    }
    engine.setTable(table);
    this.options.onTableSwap?.(Number(process.hrtime.bigint() - t0) / 1e9, batch.initial);
    if (batch.initial) this.log.info({ peers: table.size }, `${table.size} peers`);
    const level = batch.initial ? "debug" : "info";
    for (const { before, after } of batch.changes) {
      if (before !== null && after !== null && before.publicIp === after.publicIp) continue;
      if (before !== null) this.log[level]({ lease: describeLease({ ...before, expiresAt: null }) }, "peer removed");
      if (after !== null) this.log[level]({ lease: describeLease({ ...after, expiresAt: null }) }, "peer added");
    }
  }
}

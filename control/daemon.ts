// weftd: wires the control plane (registry -> lease manager -> lease-table
// snapshots, host setup, subnet.env, iptables, health) to the dataplane
// (flannel0 <-> engine <-> UDP socket). Startup order follows flanneld:
// interface, registry, lease, flannel0, socket, subnet.env, rules, READY=1.

import { pino } from "pino";
import { formatIpv4, formatPrefix, parseIpv4 } from "../dataplane/addr.js";
import { Counters } from "../dataplane/counters.js";
import { Engine } from "../dataplane/engine.js";
import { GRO_MAX_SEGMENTS } from "../dataplane/gro.js";
import { busyPollStats, MAX_RUN_BYTES, setBusyPoll, TunDevice, UdpTransport } from "../dataplane/io.js";
import { LeaseTable } from "../dataplane/leases.js";
import { loadAddon, TUN_F } from "../dataplane/native/index.js";
import type { Options } from "./cli.js";
import type { NetworkConfig } from "./config.js";
import { type HealthServer, startHealthServer } from "./health.js";
import {
  checkPrivileges,
  configureTun,
  type ExternalInterface,
  findExternalInterface,
  linkIsUp,
  localAddresses,
  localAddressesAtStart,
} from "./host.js";
import { ensureChain, forwardChain, masqChain } from "./iptables.js";
import { ensureTunDevice } from "./kube/devtun.js";
import { LeaseManager } from "./lease-manager.js";
import { createMetrics } from "./metrics.js";
import { FileRegistry } from "./registry/file.js";
import type { KubeRegistry } from "./registry/kube.js";
import { describeLease, type Lease, type Registry } from "./registry/registry.js";
import { readSubnetEnv, writeSubnetEnv } from "./subnet-env.js";

export const VERSION = "0.1.0";

/** Bytes of outer IPv4 + UDP header: flannel0's MTU is the underlay's minus this. */
const UDP_OVERHEAD = 28;
/**
 * flannel0's MTU: the underlay's minus the outer headers, and no more than
 * the largest UDP payload (loopback's 65,536 would give 65,508).
 */
export function overlayMtu(underlayMtu: number): number {
  return Math.min(underlayMtu - UDP_OVERHEAD, MAX_RUN_BYTES);
}

/** How often this host's own addresses are re-read for the local-source check. */
const LOCAL_ADDRESS_REFRESH_MS = 10_000;

export type Log = pino.Logger;

export function createLogger(verbosity: number): Log {
  return pino({ base: undefined, level: verbosity > 0 ? "debug" : "info" }, pino.destination(2));
}

async function openRegistry(opts: Options, log: Log): Promise<Registry> {
  if (opts.registryDir !== "") return FileRegistry.open(opts.registryDir);
  // Loaded only in etcd mode: gRPC costs start-up time and resident memory.
  const { EtcdRegistry } = await import("./registry/etcd.js");
  return new EtcdRegistry({
    endpoints: opts.etcdEndpoints,
    prefix: opts.etcdPrefix,
    caFile: opts.etcdCafile || undefined,
    certFile: opts.etcdCertfile || undefined,
    keyFile: opts.etcdKeyfile || undefined,
    username: opts.etcdUsername || undefined,
    password: opts.etcdPassword || undefined,
    log,
  });
}

/** What /readyz reports: each condition flannel's readiness implies. */
interface Readiness {
  lease: boolean;
  tun: boolean;
  rules: boolean;
  subnetEnv: boolean;
}

export class Daemon {
  private readonly opts: Options;
  private readonly log: Log;
  private registry: Registry | null = null;
  /** The registry again in kube mode, for what only Kubernetes has (NetworkUnavailable). */
  private kube: KubeRegistry | null = null;
  /** What start-up waits for (a podCIDR), reported by /readyz. */
  private waitingFor: string | null = null;
  /** Aborts a start-up that is still waiting (stop() during the podCIDR wait). */
  private readonly starting = new AbortController();
  private manager: LeaseManager | null = null;
  private engine: Engine | null = null;
  private device: TunDevice | null = null;
  private transport: UdpTransport | null = null;
  private health: HealthServer | null = null;
  private resyncTimer: NodeJS.Timeout | null = null;
  private addressTimer: NodeJS.Timeout | null = null;
  private readonly counters = new Counters();
  /** Read by /metrics: weft_table_generation, weft_table_swapped_at_seconds. */
  private readonly table = { generation: 0, swappedAt: 0 };
  private readonly ready: Readiness = { lease: false, tun: false, rules: false, subnetEnv: false };
  private exitCode: number | null = null;
  private finished: (code: number) => void = () => {};
  /** Resolves with the exit code when the daemon has stopped. */
  readonly done: Promise<number>;

  constructor(opts: Options, log: Log) {
    this.opts = opts;
    this.log = log;
    this.done = new Promise((resolve) => {
      this.finished = resolve;
    });
  }

  get stopping(): boolean {
    return this.exitCode !== null;
  }

  get isReady(): boolean {
    return this.ready.lease && this.ready.tun && this.ready.rules && this.ready.subnetEnv;
  }

  async start(): Promise<void> {
    const { opts, log } = this;
    checkPrivileges();
    const iface = findExternalInterface(opts.iface, opts.ifaceRegex);
    let publicIp = opts.publicIp === "" ? iface.addr : parseIpv4(opts.publicIp);
    if (publicIp < 0) throw new Error(`--public-ip "${opts.publicIp}" is not an IPv4 address`);
    log.info(
      { iface: iface.name, addr: formatIpv4(iface.addr), mtu: iface.mtu, publicIp: formatIpv4(publicIp) },
      "using interface",
    );
    this.startHealth();

    if (opts.kubeSubnetMgr) {
      // Loaded only in kube mode; its lease is the node's podCIDR, waited for here.
      const { openKubeRegistry } = await import("./kube/open.js");
      this.kube = await openKubeRegistry(opts, log, publicIp, this.starting.signal, (what) => {
        this.waitingFor = what;
      });
      // public-ip-overwrite on the node replaces the interface's address, as in flanneld.
      publicIp = this.kube.publicIp;
      this.registry = this.kube;
    } else this.registry = await openRegistry(opts, log);
    log.info({ registry: this.registry.description }, "registry");
    const previous = await readSubnetEnv(opts.subnetFile);
    const manager = new LeaseManager({
      registry: this.registry,
      publicIp,
      previousSubnet: previous?.subnet ?? null,
      renewMarginMinutes: opts.subnetLeaseRenewMargin,
      log,
      onLeases: (leases) => this.installLeases(leases),
      // The manager logs "lease has been revoked" itself; flannel exits so systemd restarts it.
      onRevoked: () => void this.stop(1),
      onConfigChanged: () => void this.stop(1),
      onRenewed: (lease) => log.info({ lease: describeLease(lease), expiresAt: lease.expiresAt }, "lease renewed"),
      onConnection: (connected, err) =>
        connected ? log.info("registry reconnected") : log.warn({ err: err?.message }, "registry disconnected"),
    });
    this.manager = manager;
    const lease = await manager.start();
    if (this.exitCode !== null) return;
    const config = manager.config as NetworkConfig;
    this.ready.lease = true;
    log.info({ lease: describeLease(lease), expiresAt: lease.expiresAt }, "lease acquired");

    await this.startDataplane(iface, lease, config);
    this.installLeases([...manager.peers.values()]);

    // Rules before subnet.env: the file is what tells the CNI plugin (and
    // anyone waiting on it) that this node can take pods.
    await this.syncRules(config, lease);
    this.ready.rules = true;
    if (opts.ipMasq || opts.iptablesForwardRules) this.scheduleResync(config, lease);

    const mtu = overlayMtu(iface.mtu);
    await writeSubnetEnv(opts.subnetFile, { network: config.network, subnet: lease.subnet, mtu, ipMasq: opts.ipMasq });
    this.ready.subnetEnv = true;
    log.info({ path: opts.subnetFile }, "wrote subnet file");
    this.kube?.markNetworkAvailable();
    this.notifySystemd();
    log.info({ subnet: formatPrefix(lease.subnet), tun: this.device?.name }, "running");
  }

  private async startDataplane(iface: ExternalInterface, lease: Lease, config: NetworkConfig): Promise<void> {
    const mtu = overlayMtu(iface.mtu);
    const port = this.opts.port || config.backend.port;
    const offload = this.opts.offload;
    if (ensureTunDevice()) this.log.info("created /dev/net/tun");
    this.device = TunDevice.open("flannel%d", { offload });
    const capped = await configureTun(this.device.name, lease.subnet, mtu, config.network, {
      gsoMaxSegments: offload ? GRO_MAX_SEGMENTS : 0,
    });
    if (!capped)
      this.log.warn({ tun: this.device.name }, "the kernel refused gso_max_segs: long super-packets may be dropped");
    this.ready.tun = linkIsUp(this.device.name);
    this.transport = UdpTransport.bind(iface.addr, port, { offload });
    if (offload) {
      const names = Object.entries(TUN_F).flatMap(([k, bit]) => ((this.device?.offloads ?? 0) & bit ? [k] : []));
      this.log.info(
        { tunOffloads: names, udpGso: this.transport.gsoMaxSegments > 0, udpGro: this.transport.gro },
        "offloads",
      );
    }
    this.engine = new Engine({
      device: this.device,
      transport: this.transport,
      localAddr: lease.subnet.base,
      mtu,
      ownSubnet: lease.subnet,
      peerCheck: this.opts.peerCheck,
      strictInnerSource: this.opts.strictInnerSource,
      counters: this.counters,
      onError: (err, side) => {
        this.log.error({ err: err.message, side }, side === "device" ? "flannel0 failed" : "UDP socket failed");
        void this.stop(1);
      },
    });
    // Tunnelled packets may not claim this host's addresses as their source;
    // addresses come and go (DHCP, a new bridge), so the set is refreshed.
    const engine = this.engine;
    engine.setLocalAddresses(localAddressesAtStart());
    this.addressTimer = setInterval(() => engine.setLocalAddresses(localAddresses()), LOCAL_ADDRESS_REFRESH_MS);
    this.addressTimer.unref();
    setBusyPoll(this.opts.busyPollUs, {
      adaptive: this.opts.adaptiveBusyPoll,
      dutyPercent: this.opts.busyPollDuty,
      loopWait: this.opts.loopWait,
    });
    this.engine.start();
    this.log.info({ tun: this.device.name, mtu, bind: `${formatIpv4(iface.addr)}:${port}` }, "dataplane up");
  }

  private installLeases(leases: readonly Lease[]): void {
    const config = this.manager?.config;
    if (this.engine === null || config == null) return;
    let table: LeaseTable;
    try {
      table = LeaseTable.build(config.network, config.subnetLen, leases, this.opts.port || config.backend.port);
    } catch (err) {
      // The manager hands over checked leases only; should one slip through,
      // forwarding goes on with the last good table rather than stopping.
      this.log.error({ err: (err as Error).message }, "lease table not updated, keeping the previous one");
      return;
    }
    const before = this.engine.leaseTable;
    this.engine.setTable(table);
    this.table.generation++;
    this.table.swappedAt = Date.now();
    const had = new Set(before.leases.map((l) => `${formatPrefix(l.subnet)} ${l.publicIp}`));
    const has = new Set(leases.map((l) => `${formatPrefix(l.subnet)} ${l.publicIp}`));
    for (const l of leases) {
      if (!had.has(`${formatPrefix(l.subnet)} ${l.publicIp}`))
        this.log.info({ lease: describeLease({ ...l, expiresAt: null }) }, "peer added");
    }
    for (const l of before.leases) {
      if (!has.has(`${formatPrefix(l.subnet)} ${l.publicIp}`))
        this.log.info({ lease: describeLease({ ...l, expiresAt: null }) }, "peer removed");
    }
  }

  /** The next resync starts a full period after the previous one ended: two runs never overlap. */
  private scheduleResync(config: NetworkConfig, lease: Lease): void {
    this.resyncTimer = setTimeout(() => {
      this.syncRules(config, lease)
        .catch((err) => this.log.error({ err: (err as Error).message }, "iptables resync failed"))
        .finally(() => {
          if (this.exitCode === null) this.scheduleResync(config, lease);
        });
    }, this.opts.iptablesResync * 1000);
    this.resyncTimer.unref();
  }

  private async syncRules(config: NetworkConfig, lease: Lease): Promise<void> {
    const chains = [];
    if (this.opts.ipMasq) chains.push(masqChain(config.network, lease.subnet));
    if (this.opts.iptablesForwardRules) chains.push(forwardChain(config.network));
    for (const chain of chains) {
      if (await ensureChain(chain))
        this.log.info({ table: chain.table, chain: chain.chain }, "iptables rules installed");
    }
  }

  private notifySystemd(): void {
    const socket = process.env.NOTIFY_SOCKET;
    if (socket === undefined || socket === "") return;
    try {
      loadAddon().notify(socket, "READY=1");
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, "could not notify systemd");
    }
  }

  private startHealth(): void {
    if (this.opts.healthzPort === 0) return;
    const metrics = createMetrics({
      counters: this.counters,
      leaseCount: () => this.engine?.leaseTable.size ?? 0,
      leaseExpiresAt: () => this.manager?.expiresAt ?? null,
      registryConnected: () => this.manager?.connected ?? false,
      ignoredLeases: () => this.manager?.ignoredCount ?? 0,
      deviceWriteErrors: () => this.device?.writeErrors ?? 0,
      transportSendErrors: () => this.transport?.sendErrors ?? 0,
      transportSendRetries: () => this.transport?.sendRetries ?? 0,
      busyPoll: () => busyPollStats(),
      table: this.table,
      transportGsoFallbacks: () => this.transport?.gsoFallbacks ?? 0,
    });
    this.health = startHealthServer({
      ip: this.opts.healthzIp,
      port: this.opts.healthzPort,
      metrics,
      readiness: {
        conditions: () => ({ ...this.ready, ...(this.waitingFor === null ? {} : { waiting: this.waitingFor }) }),
        ready: () => this.isReady && this.device !== null && linkIsUp(this.device.name),
      },
      onError: (err) => {
        this.log.error({ err: err.message }, `healthz ${this.opts.healthzIp}:${this.opts.healthzPort} failed`);
        void this.stop(1);
      },
    });
  }

  /** Stops everything; flannel0 disappears with its fd, the lease stays for reuse. */
  async stop(code: number): Promise<void> {
    if (this.exitCode !== null) return;
    this.exitCode = code;
    this.starting.abort();
    if (this.resyncTimer) clearTimeout(this.resyncTimer);
    if (this.addressTimer) clearInterval(this.addressTimer);
    this.engine?.stop();
    this.device?.close();
    this.transport?.close();
    this.manager?.stop();
    this.health?.close();
    try {
      await this.registry?.close();
    } catch {
      // Closing a registry that is already gone is not worth a failed exit.
    }
    this.finished(code);
  }
}

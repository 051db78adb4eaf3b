// weftd: the OS side effects around one node (node.ts), in flanneld's
// start-up order: interface, registry, lease, flannel0, socket, iptables
// rules, subnet.env, READY=1; health and signals around them. Everything
// between the registry and the engine is the node's.

import { type ArenaRelease, releaseWhenIdle } from "../dataplane/arena-release.js";
import { Counters } from "../dataplane/counters.js";
import { reduceMemory } from "../dataplane/file-pages.js";
import { MAX_RUN_BYTES } from "../dataplane/io.js";
import {
  busyPollStats,
  type NativeDataplane,
  nftGeneration,
  openNativeDataplane,
  releaseArenaPages,
  sdNotify,
  setBusyPoll,
} from "../dataplane/native-io.js";
import { formatIpv4, formatPrefix, parseIpv4 } from "../net/addr.js";
import type { Options } from "./cli.js";
import type { NetworkConfig } from "./config.js";
import type { HealthServer } from "./health.js";
import {
  checkPrivileges,
  configureTun,
  type ExternalInterface,
  findExternalInterface,
  linkIsUp,
  localAddresses,
  localAddressesAtStart,
} from "./host.js";
import { ChainKeeper, forwardChain, iptablesIsNft, masqChain } from "./iptables.js";
import { ensureTunDevice } from "./kube/devtun.js";
import type { Logger } from "./log.js";
import { countSwap, newTableStats, type TableStats } from "./metrics.js";
import { type Dataplane, Node } from "./node.js";
import { Readiness, startStatusServer } from "./readiness.js";
import { FileRegistry } from "./registry/file.js";
import type { KubeRegistry } from "./registry/kube.js";
import type { Lease, Registry } from "./registry/registry.js";
import { readSubnetEnv, writeSubnetEnv } from "./subnet-env.js";

export const VERSION = "0.1.0";

/**
 * Batches (both ways) since the last reduceMemory after traffic that make it
 * worth another: a flood is thousands, while a ping every few seconds must
 * not turn its full collections into a periodic cost.
 */
const REDUCE_IDLE_MEMORY_BATCHES = 1000;

/** Bytes of outer IPv4 + UDP header: flannel0's MTU is the underlay's minus this. */
const UDP_OVERHEAD = 28;

/**
 * flannel0's MTU: the underlay's minus the outer headers, and no more than
 * the largest UDP payload (loopback's 65,536 would give 65,508).
 */
export function overlayMtu(underlayMtu: number): number {
  return Math.min(underlayMtu - UDP_OVERHEAD, MAX_RUN_BYTES);
}

async function openRegistry(opts: Options, log: Logger): Promise<Registry> {
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

export class Daemon {
  private readonly opts: Options;
  private readonly log: Logger;
  private registry: Registry | null = null;
  /** The registry again in kube mode, for what only Kubernetes has (NetworkUnavailable). */
  private kube: KubeRegistry | null = null;
  /** Aborts a start-up that is still waiting (stop() during the podCIDR wait). */
  private readonly starting = new AbortController();
  private node: Node | null = null;
  private dataplane: NativeDataplane | null = null;
  private health: HealthServer | null = null;
  private resyncTimer: NodeJS.Timeout | null = null;
  /** Gives the receive arenas' pages back once traffic stops. */
  private arenaRelease: ArenaRelease | null = null;
  /** Batches both ways at the last reduceMemory after traffic. */
  private batchesAtReduce = 0;
  /** The --ip-masq and forward chains, once the lease is known. */
  private rules: ChainKeeper | null = null;
  private readonly ready = new Readiness();
  private readonly counters = new Counters();
  /** Read by /metrics: weft_table_generation, weft_table_swapped_at_seconds, weft_table_update_*. */
  private readonly table: TableStats = newTableStats();
  private exitCode: number | null = null;
  private finished: (code: number) => void = () => {};
  /** Resolves with the exit code when the daemon has stopped. */
  readonly done: Promise<number>;

  constructor(opts: Options, log: Logger) {
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
    return this.ready.all;
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
        this.ready.waiting = what;
      });
      // public-ip-overwrite on the node replaces the interface's address, as in flanneld.
      publicIp = this.kube.publicIp;
      this.registry = this.kube;
    } else this.registry = await openRegistry(opts, log);
    log.info({ registry: this.registry.description }, "registry");
    const previous = await readSubnetEnv(opts.subnetFile);
    const node = new Node({
      registry: this.registry,
      publicIp,
      previousSubnet: previous?.subnet ?? null,
      renewMarginMinutes: opts.subnetLeaseRenewMargin,
      port: opts.port,
      peerCheck: opts.peerCheck,
      strictInnerSource: opts.strictInnerSource,
      counters: this.counters,
      log,
      openDataplane: (lease, config, port) => this.openDataplane(iface, lease, config, port),
      localAddresses: (atStart) => (atStart ? localAddressesAtStart() : localAddresses()),
      onFatal: () => void this.stop(1),
      onTableSwap: (seconds, initial) => countSwap(this.table, seconds, initial, Date.now()),
    });
    this.node = node;
    const { lease, config, mtu } = await node.start();
    if (this.exitCode !== null) return;
    if (node.engine !== null) {
      this.arenaRelease = releaseWhenIdle(node.engine, {
        release: (bytes) => void releaseArenaPages(bytes),
        onIdle: () => this.reduceIdleMemory(),
      });
    }

    // Rules before subnet.env: the file is what tells the CNI plugin (and
    // anyone waiting on it) that this node can take pods.
    const chains = [];
    if (opts.ipMasq) chains.push(masqChain(config.network, lease.subnet));
    if (opts.iptablesForwardRules) chains.push(forwardChain(config.network));
    if (chains.length > 0) {
      // Only iptables-nft's rules move the nf_tables generation; with legacy every resync runs iptables.
      const generation = (await iptablesIsNft()) ? nftGeneration : () => null;
      this.rules = new ChainKeeper(chains, generation, (chain) =>
        log.info({ table: chain.table, chain: chain.chain }, "iptables rules installed"),
      );
      await this.rules.sync();
      this.scheduleResync(this.rules);
    }
    this.ready.rules = true;

    await writeSubnetEnv(opts.subnetFile, { network: config.network, subnet: lease.subnet, mtu, ipMasq: opts.ipMasq });
    this.ready.subnetEnv = true;
    log.info({ path: opts.subnetFile }, "wrote subnet file");
    this.kube?.markNetworkAvailable();
    this.notifySystemd();
    log.info({ subnet: formatPrefix(lease.subnet), tun: this.dataplane?.tun.name }, "running");
  }

  /** flannel0 for our lease and the UDP socket: what the node forwards between. */
  private async openDataplane(
    iface: ExternalInterface,
    lease: Lease,
    config: NetworkConfig,
    port: number,
  ): Promise<Dataplane> {
    this.ready.lease = true;
    const mtu = overlayMtu(iface.mtu);
    const offload = this.opts.offload;
    if (ensureTunDevice()) this.log.info("created /dev/net/tun");
    const dataplane = await openNativeDataplane({
      tunTemplate: "flannel%d",
      bindAddr: iface.addr,
      port,
      offload,
      log: this.log,
      configureTun: async (name, gsoMaxSegments) => {
        this.ready.tunName = name;
        const capped = await configureTun(name, lease.subnet, mtu, config.network, { gsoMaxSegments });
        if (!capped) this.log.warn({ tun: name }, "the kernel refused gso_max_segs: long super-packets may be dropped");
        this.ready.tun = linkIsUp(name);
      },
      counters: this.counters.tx,
      mtu,
    });
    this.dataplane = dataplane;
    const ringError = setBusyPoll(this.opts.busyPollUs, {
      adaptive: this.opts.adaptiveBusyPoll,
      dutyPercent: this.opts.busyPollDuty,
      loopWait: this.opts.loopWait,
      ring: this.opts.busyPollRing,
    });
    if (ringError !== null) {
      this.log.warn({ reason: ringError }, "io_uring is not available: busy polling uses epoll (--busy-poll-ring)");
    }
    this.log.info({ tun: dataplane.tun.name, mtu, bind: `${formatIpv4(iface.addr)}:${port}` }, "dataplane up");
    return { device: dataplane.device, transport: dataplane.transport, mtu };
  }

  /**
   * Once traffic has stopped: what it left free in V8's heap and malloc's
   * arenas goes back too (the compacting collections of reduceMemory, tens of
   * ms on this thread), after REDUCE_IDLE_MEMORY_BATCHES batches or more.
   */
  private reduceIdleMemory(): void {
    const batches = this.counters.tx.batches + this.counters.rx.batches;
    if (batches - this.batchesAtReduce < REDUCE_IDLE_MEMORY_BATCHES) return;
    this.batchesAtReduce = batches;
    const now = performance.now();
    try {
      reduceMemory();
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, "could not reduce memory after traffic");
      return;
    }
    this.log.debug({ ms: Math.round(performance.now() - now) }, "reduced memory after traffic");
  }

  /** The next resync starts a full period after the previous one ended: two runs never overlap. */
  private scheduleResync(rules: ChainKeeper): void {
    this.resyncTimer = setTimeout(() => {
      rules
        .sync()
        .catch((err) => this.log.error({ err: (err as Error).message }, "iptables resync failed"))
        .finally(() => {
          if (this.exitCode === null) this.scheduleResync(rules);
        });
    }, this.opts.iptablesResync * 1000);
    this.resyncTimer.unref();
  }

  private notifySystemd(): void {
    try {
      sdNotify("READY=1");
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, "could not notify systemd");
    }
  }

  private startHealth(): void {
    if (this.opts.healthzPort === 0) return;
    const engine = () => this.node?.engine ?? null;
    const manager = () => this.node?.manager ?? null;
    this.health = startStatusServer({
      ip: this.opts.healthzIp,
      port: this.opts.healthzPort,
      readiness: this.ready,
      metrics: {
        counters: this.counters,
        leaseCount: () => engine()?.leaseTable.size ?? 0,
        leaseExpiresAt: () => manager()?.expiresAt ?? null,
        registryConnected: () => manager()?.connected ?? false,
        ignoredLeases: () => manager()?.ignoredCount ?? 0,
        deviceWriteErrors: () => this.dataplane?.tun.writeErrors ?? 0,
        transportSendErrors: () => this.dataplane?.socket.sendErrors ?? 0,
        transportSendRetries: () => this.dataplane?.socket.sendRetries ?? 0,
        busyPoll: () => busyPollStats(),
        table: this.table,
        transportGsoFallbacks: () => this.dataplane?.socket.gsoFallbacks ?? 0,
        deviceTruncatedDrops: () => this.dataplane?.tun.truncatedDrops ?? 0,
        coalesced: () => this.dataplane?.coalesced() ?? { superPackets: 0, segments: 0 },
        iptablesResyncs: () => this.rules?.counts ?? null,
        arenaReleases: () => this.arenaRelease?.releases ?? [],
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
    this.arenaRelease?.stop();
    this.node?.stop();
    // Opened but not yet handed to the node (start-up failed in between): closed here.
    this.dataplane?.tun.close();
    this.dataplane?.socket.close();
    this.health?.close();
    try {
      await this.registry?.close();
    } catch {
      // Closing a registry that is already gone is not worth a failed exit.
    }
    this.finished(code);
  }
}

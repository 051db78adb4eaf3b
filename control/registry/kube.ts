// Leases from Kubernetes Node objects (`--kube-subnet-mgr`), behind the same
// Registry seam as etcd and the file registry, so the lease manager and the
// dataplane run unchanged. The fit is an adapter, because Kubernetes has no
// leases to take:
//
//   Registry call        in kube mode
//   getNetworkConfig     --net-config-path, with SubnetLen set to the podCIDR's length
//                        and SubnetMin to Network (kube-controller-manager may hand
//                        out the zeroth subnet; flannel skips those checks here)
//   getLeases            every node with a podCIDR and flannel's annotations, plus our
//                        own node as a lease with no expiry (never renewed)
//   updateLease          the manager "reuses" our lease: publish the annotations
//                        (one strategic-merge PATCH of nodes/<n>/status, only if they differ)
//   createLease/delete   never called: our lease exists before the manager starts
//   watchLeases          the node informer's events, as puts and deletes of subnets
//
// open() waits, instead of crash-looping like flanneld, until our node has a
// podCIDR, telling readiness what it waits for.

import { readFileSync } from "node:fs";
import { formatIpv4, formatPrefix, type Ipv4Prefix, prefixContains } from "../../net/addr.js";
import { ConfigError, parseNetworkConfig } from "../config.js";
import type { KubeClient } from "../kube/client.js";
import { Informer, type InformerOptions, type KubeObject } from "../kube/informer.js";
import {
  annotationPatch,
  type KubeNode,
  networkAvailablePatch,
  nodeName,
  type PeerNode,
  peerNode,
  podCidr,
  publicIpOverride,
  SLIM_NODE_MEMBERS,
  STRATEGIC_MERGE,
  slimNode,
} from "../kube/node.js";
import type { Logger } from "../lease-manager.js";
import type { Lease, LeaseListing, Registry, Watch, WatchHandlers } from "./registry.js";

export interface KubeRegistryOptions {
  readonly client: KubeClient;
  readonly nodeName: string;
  readonly netConfPath: string;
  /** Normalised (normaliseAnnotationPrefix). */
  readonly annotationPrefix: string;
  /** The chosen interface's address (or --public-ip). */
  readonly localPublicIp: number;
  readonly setNodeNetworkUnavailable: boolean;
  readonly log: Logger;
  /** What open() is waiting for (shown by /readyz), or null once it waits no more. */
  readonly onWaiting?: (what: string | null) => void;
  readonly informer?: Partial<InformerOptions>;
  /** Ends the wait for the podCIDR (weftd stopping); open() then rejects. */
  readonly signal?: AbortSignal;
  readonly now?: () => number;
}

const RETRY_PATCH_MS = 5000;

type PeerEntry = { lease: Lease } | { skip: string } | null;

export class KubeRegistry implements Registry {
  readonly description: string;
  private readonly opts: KubeRegistryOptions;
  private readonly informer: Informer;
  /** Every other Node by name: what its lease is made of (peerNode), not the object. */
  private readonly nodes = new Map<string, PeerNode>();
  /** Our own Node, slimmed (slimNode): its podCIDR and flannel's annotations, which we publish. */
  private ownNode: KubeNode | undefined = undefined;
  private readonly network: Ipv4Prefix;
  private own: Ipv4Prefix | null = null;
  private published = 0;
  private revision = 0;
  private handlers: WatchHandlers | null = null;
  private waiting: string | null = null;
  private ownReady: { resolve: () => void; reject: (err: Error) => void } | null = null;
  private closed = false;
  private patchTimer: NodeJS.Timeout | null = null;

  private constructor(opts: KubeRegistryOptions, network: Ipv4Prefix) {
    this.opts = opts;
    this.network = network;
    this.description = `kubernetes ${opts.client.server} node ${opts.nodeName}`;
    this.informer = new Informer(
      opts.client,
      {
        path: "/api/v1/nodes",
        ...opts.informer,
        keep: (object) => slimNode(object as KubeNode, opts.annotationPrefix),
        pick: SLIM_NODE_MEMBERS,
      },
      {
        onList: (items) => this.onList(items),
        onEvent: (type, object) => this.onEvent(type, object),
        onConnection: (connected, err) => this.handlers?.onConnection?.(connected, err),
      },
    );
  }

  /**
   * Checks the network config, makes one request (so bad credentials or a
   * wrong CA stop weftd with one sentence instead of retrying forever), then
   * lists and watches nodes until ours has a podCIDR.
   */
  static async open(opts: KubeRegistryOptions): Promise<KubeRegistry> {
    const network = parseNetworkConfig(readNetConf(opts.netConfPath)).network;
    const registry = new KubeRegistry(opts, network);
    await registry.firstContact();
    const ready = new Promise<void>((resolve, reject) => {
      registry.ownReady = { resolve, reject };
    });
    const abort = () => registry.ownReady?.reject(new Error("stopped while waiting for the node's podCIDR"));
    opts.signal?.addEventListener("abort", abort);
    registry.informer.start();
    try {
      await ready;
    } catch (err) {
      await registry.close();
      throw err;
    } finally {
      opts.signal?.removeEventListener("abort", abort);
    }
    return registry;
  }

  /** @internal What is kept of Node `name` (tests: only what forwarding needs). */
  heldNode(name: string): KubeNode | PeerNode | undefined {
    return name === this.opts.nodeName ? this.ownNode : this.nodes.get(name);
  }

  /** Address published in public-ip: the node's public-ip-overwrite, else the interface's. */
  get publicIp(): number {
    return this.published;
  }

  /** Lists done (the first and every re-list after 410 Expired). */
  get lists(): number {
    return this.informer.lists;
  }

  async getNetworkConfig(): Promise<string | null> {
    const text = readNetConf(this.opts.netConfPath);
    const own = this.own;
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      return text; // the manager's parser words the error
    }
    if (own === null || typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) return text;
    const fitted: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(parsed)) {
      if (!["subnetlen", "subnetmin", "subnetmax"].includes(k.toLowerCase())) fitted[k] = v;
    }
    fitted.SubnetLen = own.len;
    fitted.SubnetMin = formatIpv4(this.network.base);
    return JSON.stringify(fitted);
  }

  async getLeases(): Promise<LeaseListing> {
    return this.listing();
  }

  async createLease(): Promise<Lease | null> {
    throw new Error("in kube mode the lease is the node's podCIDR; weftd does not create one");
  }

  /** The manager "reuses" our lease; publishing is all there is to do (the address is the registry's own choice). */
  async updateLease(lease: Lease, _publicIp?: number, _ttlSeconds?: number): Promise<Lease> {
    const name = this.opts.nodeName;
    const body = annotationPatch(this.ownNode ?? {}, this.opts.annotationPrefix, this.published);
    if (body !== null) {
      // The answer is the node as patched: a second call before the watch reports it sends nothing.
      const patched = (await this.patchStatus(body)) as KubeNode;
      if (nodeName(patched) === name) this.ownNode = slimNode(patched, this.opts.annotationPrefix);
      this.opts.log.info(
        { node: this.opts.nodeName, publicIp: formatIpv4(this.published) },
        "published the node's annotations",
      );
    }
    return { ...lease, publicIp: this.published, expiresAt: null };
  }

  async deleteLease(): Promise<void> {
    throw new Error("in kube mode the lease is the node's podCIDR; weftd does not delete it");
  }

  watchLeases(revision: number, handlers: WatchHandlers): Watch {
    this.handlers = handlers;
    if (revision !== this.revision) handlers.onResync(this.listing());
    return {
      close: () => {
        if (this.handlers === handlers) this.handlers = null;
      },
    };
  }

  /** NetworkUnavailable=False on our node (--set-node-network-unavailable), retried until it lands. */
  markNetworkAvailable(): void {
    if (!this.opts.setNodeNetworkUnavailable || this.closed) return;
    const now = this.opts.now ?? Date.now;
    this.patchStatus(networkAvailablePatch(now())).then(
      () => this.opts.log.info({ node: this.opts.nodeName }, "set NetworkUnavailable=False"),
      (err: Error) => {
        this.opts.log.warn({ err: err.message }, "could not set NetworkUnavailable=False, retrying");
        this.patchTimer = setTimeout(() => this.markNetworkAvailable(), RETRY_PATCH_MS);
        this.patchTimer.unref();
      },
    );
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.patchTimer !== null) clearTimeout(this.patchTimer);
    this.informer.stop();
    this.opts.client.close();
  }

  private async firstContact(): Promise<void> {
    try {
      await this.opts.client.request("GET", `/api/v1/nodes/${encodeURIComponent(this.opts.nodeName)}`);
    } catch (err) {
      const status = (err as { status?: number }).status ?? 0;
      const reason = (err as { reason?: string }).reason ?? "";
      // 404: the node is not registered yet (waited for below); no answer at all: the informer retries.
      if (status === 404 || (status === 0 && reason !== "TLS")) return;
      throw err;
    }
  }

  private patchStatus(body: string): Promise<unknown> {
    const path = `/api/v1/nodes/${encodeURIComponent(this.opts.nodeName)}/status`;
    return this.opts.client.request("PATCH", path, body, STRATEGIC_MERGE);
  }

  private onList(items: KubeObject[]): void {
    const hadOwn = this.ownNode !== undefined;
    this.nodes.clear();
    this.ownNode = undefined;
    // Already slimmed by the informer (its `keep`), page by page.
    for (const item of items) this.hold(item as KubeNode);
    this.revision++;
    if (this.ownReady !== null) {
      this.checkOwn();
      return;
    }
    this.handlers?.onResync(this.listing());
    if (hadOwn && this.ownNode === undefined && this.own !== null)
      this.handlers?.onEvent({ type: "delete", subnet: this.own });
  }

  private onEvent(type: "ADDED" | "MODIFIED" | "DELETED", object: KubeObject): void {
    const node = object as KubeNode; // slimmed by the informer
    const name = nodeName(node);
    const before = this.nodes.get(name);
    if (type === "DELETED") {
      if (name === this.opts.nodeName) this.ownNode = undefined;
      else this.nodes.delete(name);
    } else this.hold(node);
    this.revision++;
    if (this.ownReady !== null) {
      this.checkOwn();
      return;
    }
    const h = this.handlers;
    if (h === null) return;
    if (name === this.opts.nodeName) {
      if (type === "DELETED" && this.own !== null) h.onEvent({ type: "delete", subnet: this.own });
      return;
    }
    const was = before === undefined ? null : this.peer(before);
    const held = this.nodes.get(name);
    const now = type === "DELETED" || held === undefined ? null : this.peer(held);
    const wasLease = was !== null && "lease" in was ? was.lease : null;
    const nowLease = now !== null && "lease" in now ? now.lease : null;
    if (wasLease !== null && (nowLease === null || formatPrefix(nowLease.subnet) !== formatPrefix(wasLease.subnet)))
      h.onEvent({ type: "delete", subnet: wasLease.subnet });
    if (
      nowLease !== null &&
      (wasLease === null ||
        nowLease.publicIp !== wasLease.publicIp ||
        formatPrefix(nowLease.subnet) !== formatPrefix(wasLease.subnet))
    )
      h.onEvent({ type: "put", lease: nowLease });
    if (now !== null && "skip" in now) h.onSkipped?.(`node/${name}`, now.skip);
  }

  /** While open() waits: is our node there with a usable podCIDR? */
  private checkOwn(): void {
    const name = this.opts.nodeName;
    const node = this.ownNode;
    const cidr = node === undefined ? null : podCidr(node);
    if (node === undefined) {
      this.waitFor(`Node ${name} to be registered`);
      return;
    }
    if (cidr === null) {
      this.waitFor(`spec.podCIDR of Node ${name} to be assigned`);
      return;
    }
    const fail = (message: string) => {
      this.ownReady?.reject(new ConfigError(message));
      this.ownReady = null;
    };
    if (typeof cidr === "string") {
      fail(`Node ${name}: ${cidr}`);
      return;
    }
    if (!prefixContains(this.network, cidr.base) || cidr.len < this.network.len) {
      fail(
        `Node ${name}: spec.podCIDR ${formatPrefix(cidr)} is outside Network ${formatPrefix(this.network)} of ${this.opts.netConfPath}`,
      );
      return;
    }
    const override = publicIpOverride(node, this.opts.annotationPrefix);
    if (typeof override === "string") {
      fail(`Node ${name}: ${override}`);
      return;
    }
    this.own = cidr;
    this.published = override ?? this.opts.localPublicIp;
    if (this.waiting !== null) this.opts.log.info({ podCIDR: formatPrefix(cidr) }, `Node ${name} has its podCIDR`);
    this.waiting = null;
    this.opts.onWaiting?.(null);
    this.ownReady?.resolve();
    this.ownReady = null;
  }

  private waitFor(what: string): void {
    if (this.waiting === what) return;
    this.waiting = what;
    this.opts.log.warn({ node: this.opts.nodeName }, `waiting for ${what}`);
    this.opts.onWaiting?.(`waiting for ${what}`);
  }

  /** Keeps `node`: our own slimmed, any other as a PeerNode. */
  private hold(node: KubeNode): void {
    const name = nodeName(node);
    if (name === this.opts.nodeName) this.ownNode = node;
    else this.nodes.set(name, peerNode(node, this.opts.annotationPrefix));
  }

  private peer(node: PeerNode): PeerEntry {
    const ip = node.publicIp;
    if (ip === null) return null;
    if (typeof ip === "string") return { skip: ip };
    const cidr = node.podCidr;
    if (cidr === null) return null;
    if (typeof cidr === "string") return { skip: cidr };
    if (ip === this.published) return { skip: `public-ip ${formatIpv4(ip)} is this host's own address` };
    return { lease: { subnet: cidr, publicIp: ip, expiresAt: null } };
  }

  private listing(): LeaseListing {
    const leases: Lease[] = [];
    const skipped: { key: string; reason: string }[] = [];
    if (this.ownNode !== undefined && this.own !== null)
      leases.push({ subnet: this.own, publicIp: this.published, expiresAt: null });
    for (const [name, node] of this.nodes) {
      const p = this.peer(node);
      if (p === null) continue;
      if ("skip" in p) skipped.push({ key: `node/${name}`, reason: p.skip });
      else leases.push(p.lease);
    }
    return { leases, revision: this.revision, skipped };
  }
}

function readNetConf(path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch (err) {
    throw new ConfigError(`--net-config-path ${path} cannot be read: ${(err as NodeJS.ErrnoException).code ?? err}`);
  }
}

/** NODE_NAME, else the node of the pod POD_NAMESPACE/POD_NAME, as flanneld finds it. */
export async function resolveNodeName(client: KubeClient, env: NodeJS.ProcessEnv = process.env): Promise<string> {
  if (env.NODE_NAME) return env.NODE_NAME;
  const pod = env.POD_NAME;
  const ns = env.POD_NAMESPACE;
  if (!pod || !ns)
    throw new ConfigError("--kube-subnet-mgr needs NODE_NAME, or POD_NAME and POD_NAMESPACE, to find this node");
  const path = `/api/v1/namespaces/${encodeURIComponent(ns)}/pods/${encodeURIComponent(pod)}`;
  const got = (await client.request("GET", path)) as { spec?: { nodeName?: string } };
  const name = got.spec?.nodeName;
  if (!name) throw new ConfigError(`pod ${ns}/${pod} has no spec.nodeName at ${client.server}${path}`);
  return name;
}

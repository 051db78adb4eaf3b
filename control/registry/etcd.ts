// Leases in etcd v3 with flannel's keys, values and etcd leases, over the etcd3
// package's gRPC clients. Unary calls go through etcd3's connection pool with
// our own fault handling (one try per endpoint, failed endpoints skipped
// briefly when there are several); the watch is our own loop over the raw
// Watch stream (see EtcdLeaseWatch for why).

import { readFileSync } from "node:fs";
import { rootCertificates } from "node:tls";
import { ConsecutiveBreaker, circuitBreaker, handleWhen, noop, retry } from "cockatiel";
import {
  CompareResult,
  CompareTarget,
  Etcd3,
  type IDuplexStream,
  type IKeyValue,
  type IOptions,
  type IWatchRequest,
  type IWatchResponse,
  isRecoverableError,
} from "etcd3";
import type { Ipv4Prefix } from "../../net/addr.js";
import { type Logger, silentLogger } from "../log.js";
import {
  decodeLeaseValue,
  encodeLeaseValue,
  type Lease,
  type LeaseListing,
  parseSubnetKey,
  type Registry,
  subnetKey,
  type Watch,
  type WatchHandlers,
} from "./registry.js";

/** Kept for callers written before control/log.ts: the same type. */
export type RegistryLog = Logger;

export interface EtcdRegistryOptions {
  /** "http://host:port" or "https://host:port"; all of one scheme. */
  endpoints: string[];
  /** flannel's --etcd-prefix; default "/coreos.com/network". */
  prefix?: string;
  caFile?: string;
  certFile?: string;
  keyFile?: string;
  username?: string;
  password?: string;
  log?: Logger;
  /** Deadline of each unary call, connection set-up included; default 5000 ms. */
  callTimeoutMs?: number;
}

export const DEFAULT_ETCD_PREFIX = "/coreos.com/network";
const DEFAULT_CALL_TIMEOUT_MS = 5000;
const WATCH_BACKOFF_MIN_MS = 100;
const WATCH_BACKOFF_MAX_MS = 5000;
/** How long an endpoint that just failed is passed over when there are others. */
const ENDPOINT_SKIP_MS = 2000;
/** Lease TTL lookups in flight at once while listing. */
const TTL_CONCURRENCY = 32;

function prefixRangeEnd(prefix: Buffer): Buffer {
  const end = Buffer.from(prefix);
  for (let i = end.length - 1; i >= 0; i--) {
    if ((end[i] as number) < 0xff) {
      end[i] = (end[i] as number) + 1;
      return end.subarray(0, i + 1);
    }
  }
  return Buffer.from([0]);
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * Turns grpc/etcd error text into the cause a person can act on. grpc-js puts
 * the TLS or socket failure behind "No connection established. Last error:",
 * followed by a timestamp and a "Resolution note" that say nothing useful.
 */
function describeCause(err: unknown, callTimeoutMs: number): string {
  let text = message(err).replace(/^\w+Error: /, "");
  const last = /Last error: (?:Error: )?([\s\S]*)$/.exec(text);
  if (last) text = last[1] as string;
  text = text
    .replace(/\.?\s*Resolution note:[\s\S]*$/, "")
    .replace(/\s*\(\d{4}-\d\d-\d\dT[^)]*\)\s*$/, "")
    .replace(/^\d+ [A-Z_]+: /, "")
    .trim();
  const openssl = /SSL routines:[^:]*:([^:]+):/.exec(text)?.[1];
  if (openssl !== undefined && /alert/.test(openssl)) {
    return `the server rejected the TLS handshake, likely our client certificate (missing or not signed by its CA): ${openssl}`;
  }
  if (openssl !== undefined) return `TLS handshake failed: ${openssl}`;
  if (/unable to (get local issuer|verify)|self[- ]signed|certificate|Hostname\/IP does not match/i.test(text)) {
    return `certificate verify failed: ${text}`;
  }
  if (/circuit breaker is open/.test(text)) return `every endpoint failed within the last ${ENDPOINT_SKIP_MS} ms`;
  if (/ECONNREFUSED/.test(text)) return `connection refused (${text})`;
  if (/^Failed to connect$/.test(text))
    return "no gRPC connection could be set up (an http:// endpoint on a TLS-only etcd fails like this)";
  if (/authentication failed/.test(text)) return `authentication failed: wrong username or password (${text})`;
  if (/Deadline exceeded/i.test(text)) return `no answer within ${callTimeoutMs} ms (${text})`;
  return text;
}

interface ListedKey {
  readonly key: string;
  readonly subnet: Ipv4Prefix;
  readonly publicIp: number;
  readonly etcdLease: string;
}

export class EtcdRegistry implements Registry {
  readonly description: string;
  readonly prefix: string;
  private readonly client: Etcd3;
  private readonly log: Logger;
  private readonly subnetsPrefix: Buffer;
  private readonly callTimeoutMs: number;
  private readonly watches = new Set<EtcdLeaseWatch>();
  private closed = false;

  constructor(options: EtcdRegistryOptions) {
    const endpoints = options.endpoints.map((e) => e.replace(/\/$/, ""));
    if (endpoints.length === 0) throw new Error("etcd endpoints are empty; give at least one http:// or https:// URL");
    for (const endpoint of endpoints) {
      if (!/^https?:\/\/[^/]+$/.test(endpoint)) {
        throw new Error(`etcd endpoint "${endpoint}" is not an http://host:port or https://host:port URL`);
      }
    }
    const secure = endpoints.filter((e) => e.startsWith("https://")).length;
    if (secure !== 0 && secure !== endpoints.length) {
      throw new Error(`etcd endpoints "${endpoints.join(",")}" mix http:// and https://; use one scheme`);
    }
    this.description = `etcd ${endpoints.join(",")}`;
    this.prefix = (options.prefix ?? DEFAULT_ETCD_PREFIX).replace(/\/+$/, "");
    this.subnetsPrefix = Buffer.from(`${this.prefix}/subnets/`);
    this.log = options.log ?? silentLogger;
    const callTimeoutMs = options.callTimeoutMs ?? DEFAULT_CALL_TIMEOUT_MS;
    this.callTimeoutMs = callTimeoutMs;

    const etcdOptions: IOptions = {
      hosts: endpoints,
      // Deadlines cover connection set-up too, so an unreachable or TLS-broken
      // endpoint fails the call instead of queueing it forever. Streams (the
      // watch) have no deadline; EtcdLeaseWatch bounds their set-up itself.
      defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + callTimeoutMs }),
      grpcOptions: {
        // etcd3 recreates a host's channels after a failure; a channel-local
        // subchannel pool makes that a fresh connection rather than one stuck
        // in grpc's own reconnect backoff (up to 120 s), which would stall our
        // watch reconnects.
        "grpc.use_local_subchannel_pool": 1,
        "grpc.initial_reconnect_backoff_ms": WATCH_BACKOFF_MIN_MS,
        "grpc.max_reconnect_backoff_ms": WATCH_BACKOFF_MAX_MS,
        // Detects a silently dead etcd under an idle watch stream. etcd allows
        // pings every 5 s (--grpc-keepalive-min-time) while a stream is open.
        "grpc.keepalive_time_ms": 10_000,
        "grpc.keepalive_timeout_ms": 5000,
        // grpc-js stops at 4 MiB by default; a listing of 65,536 leases is ~7 MiB.
        "grpc.max_receive_message_length": 256 * 1024 * 1024,
      },
      faultHandling: {
        // With one endpoint, no circuit breaker: it would answer "circuit open"
        // instead of the real cause and hold back the watch reconnect. With
        // several, a failed endpoint is skipped for a moment so calls and the
        // watch stream go to a live one instead of a coin toss per attempt.
        host: () =>
          endpoints.length === 1
            ? noop
            : circuitBreaker(handleWhen(isRecoverableError), {
                halfOpenAfter: ENDPOINT_SKIP_MS,
                breaker: new ConsecutiveBreaker(1),
              }),
        // One try per endpoint: a retry moves to the next endpoint. Retried
        // writes are safe here (put and delete are idempotent, createLease
        // recognises its own earlier success, a spare granted lease expires).
        global: retry(handleWhen(isRecoverableError), { maxAttempts: endpoints.length - 1 }),
      },
    };
    if (secure > 0) {
      const ca = options.caFile === undefined ? undefined : readPem("CA", options.caFile);
      const cert = options.certFile === undefined ? undefined : readPem("certificate", options.certFile);
      const key = options.keyFile === undefined ? undefined : readPem("key", options.keyFile);
      if ((cert === undefined) !== (key === undefined)) {
        throw new Error("etcd certFile and keyFile must be given together for client certificate authentication");
      }
      etcdOptions.credentials = {
        rootCertificate: ca ?? Buffer.from(rootCertificates.join("\n")),
        certChain: cert,
        privateKey: key,
      };
    } else if (options.caFile || options.certFile || options.keyFile) {
      this.log.warn({ endpoints }, "etcd TLS files are ignored: the endpoints use http://");
    }
    if (options.username !== undefined || options.password !== undefined) {
      if (!options.username) throw new Error("etcd password was given without a username");
      etcdOptions.auth = { username: options.username, password: options.password ?? "" };
    }
    this.client = new Etcd3(etcdOptions);
  }

  private fail(what: string, err: unknown): Error {
    if (this.closed) return new Error(`${this.description}: ${what} failed: the registry is closed`, { cause: err });
    return new Error(`${this.description}: ${what} failed: ${describeCause(err, this.callTimeoutMs)}`, { cause: err });
  }

  private leaseKey(subnet: Ipv4Prefix): Buffer {
    return Buffer.concat([this.subnetsPrefix, Buffer.from(subnetKey(subnet))]);
  }

  async getNetworkConfig(): Promise<string | null> {
    const key = `${this.prefix}/config`;
    try {
      const res = await this.client.kv.range({ key: Buffer.from(key) });
      const kv = res.kvs[0];
      return kv === undefined ? null : kv.value.toString("utf8");
    } catch (err) {
      throw this.fail(`reading ${key}`, err);
    }
  }

  // subnetOfKey, parseKv and expiryOf are shared with EtcdLeaseWatch below.

  /**
   * The subnet a key under subnets/ names, or why it names none. The prefix
   * is cut in bytes: a prefix with non-ASCII characters is longer in UTF-8
   * than in UTF-16 code units.
   */
  subnetOfKey(key: Buffer): Ipv4Prefix | string {
    const name = key.subarray(this.subnetsPrefix.length).toString("utf8");
    return parseSubnetKey(name) ?? `key name "${name}" is not a subnet like 10.244.68.0-24`;
  }

  /** Reads a lease key's name and value; expiry comes separately. */
  parseKv(kv: IKeyValue): ListedKey | { key: string; reason: string } {
    const key = kv.key.toString("utf8");
    const subnet = this.subnetOfKey(kv.key);
    if (typeof subnet === "string") return { key, reason: subnet };
    const publicIp = decodeLeaseValue(kv.value.toString("utf8"));
    if (typeof publicIp === "string") return { key, reason: publicIp };
    return { key, subnet, publicIp, etcdLease: kv.lease };
  }

  /**
   * Expiry of a key's etcd lease: null for none (a reservation), now for a
   * lease that is already gone (its key's delete event is on its way).
   */
  async expiryOf(etcdLease: string): Promise<number | null> {
    if (etcdLease === "0" || etcdLease === "") return null;
    const res = await this.client.leaseClient.leaseTimeToLive({ ID: etcdLease });
    const ttl = Number(res.TTL);
    return ttl < 0 ? Date.now() : Date.now() + ttl * 1000;
  }

  /** Whether a lease naming `publicIp` needs its TTL looked up (see Registry.getLeases). */
  static wantsExpiry(publicIp: number, owner: number | undefined): boolean {
    return owner === undefined || publicIp === owner;
  }

  async getLeases(owner?: number): Promise<LeaseListing> {
    const what = `listing ${this.subnetsPrefix.toString()}`;
    try {
      const res = await this.client.kv.range({
        key: this.subnetsPrefix,
        range_end: prefixRangeEnd(this.subnetsPrefix),
      });
      const parsed = res.kvs.map((kv) => this.parseKv(kv));
      const ids = [
        ...new Set(
          parsed.flatMap((p) => ("etcdLease" in p && EtcdRegistry.wantsExpiry(p.publicIp, owner) ? [p.etcdLease] : [])),
        ),
      ];
      const expiry = new Map<string, number | null>();
      for (let i = 0; i < ids.length; i += TTL_CONCURRENCY) {
        const batch = ids.slice(i, i + TTL_CONCURRENCY);
        const values = await Promise.all(batch.map((id) => this.expiryOf(id)));
        for (const [j, id] of batch.entries()) expiry.set(id, values[j] ?? null);
      }
      const leases: Lease[] = [];
      const skipped: { key: string; reason: string }[] = [];
      for (const p of parsed) {
        if ("reason" in p) skipped.push(p);
        else leases.push({ subnet: p.subnet, publicIp: p.publicIp, expiresAt: expiry.get(p.etcdLease) ?? null });
      }
      return { leases, revision: Number(res.header.revision), skipped };
    } catch (err) {
      throw this.fail(what, err);
    }
  }

  async createLease(subnet: Ipv4Prefix, publicIp: number, ttlSeconds: number): Promise<Lease | null> {
    const key = this.leaseKey(subnet);
    const what = `creating ${key.toString()}`;
    let leaseId: string;
    let grantedTtl: number;
    try {
      const grant = await this.client.leaseClient.leaseGrant({ TTL: ttlSeconds });
      leaseId = grant.ID;
      grantedTtl = Number(grant.TTL);
    } catch (err) {
      throw this.fail(`${what} (granting a ${ttlSeconds} s etcd lease)`, err);
    }
    const now = Date.now();
    let created: boolean;
    try {
      const res = await this.client.kv.txn({
        compare: [{ key, target: CompareTarget.Version, result: CompareResult.Equal, version: 0 }],
        success: [{ request_put: { key, value: Buffer.from(encodeLeaseValue(publicIp)), lease: leaseId } }],
        // On a retried txn whose first try did land, the key is already ours:
        // reading it back lets us tell that from a real conflict.
        failure: [{ request_range: { key } }],
      });
      created = res.succeeded || res.responses[0]?.response_range?.kvs[0]?.lease === leaseId;
    } catch (err) {
      // Whether or not the put landed, revoking the new lease removes any key on
      // it, so nothing is left half-created.
      await this.revokeQuietly(leaseId, what);
      throw this.fail(what, err);
    }
    if (!created) {
      await this.revokeQuietly(leaseId, what);
      return null;
    }
    return { subnet, publicIp, expiresAt: now + grantedTtl * 1000 };
  }

  private async revokeQuietly(leaseId: string, context: string): Promise<void> {
    try {
      await this.client.leaseClient.leaseRevoke({ ID: leaseId });
    } catch (err) {
      // "lease not found" means it is already gone; anything else leaves an
      // unused lease that etcd expires by itself after its TTL.
      if (!/lease not found/.test(message(err))) {
        this.log.warn({ leaseId, err: message(err) }, `etcd lease could not be revoked after ${context}`);
      }
    }
  }

  async updateLease(lease: Lease, publicIp: number, ttlSeconds: number): Promise<Lease> {
    const key = this.leaseKey(lease.subnet);
    const value = Buffer.from(encodeLeaseValue(publicIp));
    const what = `updating ${key.toString()}`;
    if (lease.expiresAt === null) {
      try {
        await this.client.kv.put({ key, value });
      } catch (err) {
        throw this.fail(what, err);
      }
      return { subnet: lease.subnet, publicIp, expiresAt: null };
    }
    let leaseId: string;
    let grantedTtl: number;
    try {
      const grant = await this.client.leaseClient.leaseGrant({ TTL: ttlSeconds });
      leaseId = grant.ID;
      grantedTtl = Number(grant.TTL);
    } catch (err) {
      throw this.fail(`${what} (granting a ${ttlSeconds} s etcd lease)`, err);
    }
    const now = Date.now();
    let previous: string | undefined;
    try {
      const res = await this.client.kv.put({ key, value, lease: leaseId, prev_kv: true });
      previous = res.prev_kv?.lease;
    } catch (err) {
      // The key may already be on the new lease if the put landed; revoking it
      // then deletes our key, which the caller's retry recreates.
      await this.revokeQuietly(leaseId, what);
      throw this.fail(what, err);
    }
    // The key now hangs on the new lease, so revoking the old one cannot delete
    // it; doing so frees the old lease now instead of in up to a day.
    if (previous !== undefined && previous !== "0" && previous !== "" && previous !== leaseId) {
      await this.revokeQuietly(previous, what);
    }
    return { subnet: lease.subnet, publicIp, expiresAt: now + grantedTtl * 1000 };
  }

  async deleteLease(subnet: Ipv4Prefix): Promise<void> {
    const key = this.leaseKey(subnet);
    try {
      await this.client.kv.deleteRange({ key });
    } catch (err) {
      throw this.fail(`deleting ${key.toString()}`, err);
    }
  }

  watchLeases(revision: number, handlers: WatchHandlers, owner?: number): Watch {
    if (this.closed) throw new Error(`${this.description}: cannot watch leases: the registry is closed`);
    const watch = new EtcdLeaseWatch(this, this.client, this.subnetsPrefix, revision, handlers, this.log, owner, () =>
      this.watches.delete(watch),
    );
    this.watches.add(watch);
    return watch;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const watch of [...this.watches]) watch.close();
    this.client.close();
  }
}

function readPem(what: string, file: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    throw new Error(`etcd TLS ${what} file ${file} cannot be read: ${message(err)}`, { cause: err });
  }
}

/**
 * One prefix watch, kept alive across compaction and disconnects.
 *
 * Why not etcd3's Watcher: on reconnect it resumes from the last header
 * revision with its own backoff (up to 30 s) and never re-lists, and it turns
 * a compaction cancel into an 'error' that leaves the watcher dead. We need
 * flannel's semantics instead: re-list + resync on compaction and on
 * reconnect, a 100 ms → 5 s backoff, and connection state for readiness. So
 * this class owns one raw Watch stream (etcd3's WatchManager is never
 * involved) and nothing else retries it.
 *
 * Every asynchronous step carries the attempt number it started in; a
 * teardown bumps the number, so late callbacks of a dead stream do nothing.
 */
class EtcdLeaseWatch implements Watch {
  private attempt = 0;
  private closed = false;
  private connected = true;
  private backoffMs = WATCH_BACKOFF_MIN_MS;
  private stream: IDuplexStream<IWatchRequest, IWatchResponse> | null = null;
  private createTimer: NodeJS.Timeout | null = null;
  private retryTimer: NodeJS.Timeout | null = null;
  /** Responses are handled one after another: put events may await a TTL lookup. */
  private queue: Promise<void> = Promise.resolve();
  private nextRevision: number;

  constructor(
    private readonly registry: EtcdRegistry,
    private readonly client: Etcd3,
    private readonly prefix: Buffer,
    revision: number,
    private readonly handlers: WatchHandlers,
    private readonly log: Logger,
    private readonly owner: number | undefined,
    private readonly onClosed: () => void,
  ) {
    this.nextRevision = revision + 1;
    void this.open(null);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.teardown();
    if (this.retryTimer !== null) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.onClosed();
  }

  /** Opens a stream watching from nextRevision, or from after `listing`, which is delivered once the watch exists. */
  private async open(listing: LeaseListing | null): Promise<void> {
    const attempt = ++this.attempt;
    if (listing !== null) this.nextRevision = listing.revision + 1;
    let stream: IDuplexStream<IWatchRequest, IWatchResponse>;
    try {
      stream = await this.client.watchClient.watch();
    } catch (err) {
      this.failed(attempt, err);
      return;
    }
    if (attempt !== this.attempt || this.closed) {
      endStream(stream);
      return;
    }
    this.stream = stream;
    stream.on("data", (res) => this.enqueue(attempt, () => this.onResponse(attempt, res, listing)));
    stream.on("error", (err) => this.failed(attempt, err));
    stream.on("end", () => this.failed(attempt, new Error("etcd ended the watch stream")));
    // A stream has no deadline (it lives for days), so its set-up gets one
    // here: an endpoint that never confirms the watch counts as down.
    this.createTimer = setTimeout(
      () => this.failed(attempt, new Error(`etcd did not confirm the watch within ${WATCH_BACKOFF_MAX_MS * 2} ms`)),
      WATCH_BACKOFF_MAX_MS * 2,
    );
    stream.write({
      create_request: {
        key: this.prefix,
        range_end: prefixRangeEnd(this.prefix),
        start_revision: this.nextRevision,
        progress_notify: true,
      },
    });
  }

  private enqueue(attempt: number, step: () => Promise<void> | void): void {
    this.queue = this.queue.then(async () => {
      if (attempt !== this.attempt || this.closed) return;
      try {
        await step();
      } catch (err) {
        this.failed(attempt, err);
      }
    });
  }

  private async onResponse(attempt: number, res: IWatchResponse, listing: LeaseListing | null): Promise<void> {
    if (res.created && this.createTimer !== null) {
      clearTimeout(this.createTimer);
      this.createTimer = null;
    }
    if (res.canceled) {
      this.onCanceled(attempt, res);
      return;
    }
    if (res.created) {
      this.backoffMs = WATCH_BACKOFF_MIN_MS;
      if (listing !== null) this.call("onResync", () => this.handlers.onResync(listing));
      if (!this.connected) {
        this.connected = true;
        this.log.info({ registry: this.registry.description }, "etcd watch reconnected");
        this.call("onConnection", () => this.handlers.onConnection?.(true));
      }
      return;
    }
    if (res.events.length === 0) {
      // A progress notification: nothing under the prefix changed up to here.
      this.nextRevision = Math.max(this.nextRevision, Number(res.header.revision) + 1);
      return;
    }
    for (const event of res.events) {
      const kv = event.kv;
      const revision = Number(kv.mod_revision);
      if (event.type === "Delete") {
        // A delete carries no value; only the key name matters.
        const key = kv.key.toString("utf8");
        const subnet = this.registry.subnetOfKey(kv.key);
        if (typeof subnet === "string") this.call("onSkipped", () => this.handlers.onSkipped?.(key, subnet));
        else this.call("onEvent", () => this.handlers.onEvent({ type: "delete", subnet }));
        this.nextRevision = Math.max(this.nextRevision, revision + 1);
        continue;
      }
      const parsed = this.registry.parseKv(kv);
      if ("reason" in parsed) {
        this.call("onSkipped", () => this.handlers.onSkipped?.(parsed.key, parsed.reason));
      } else {
        // A failed lookup throws into enqueue(), which treats it as a lost
        // connection: the re-list after reconnecting carries this lease. A
        // peer's expiry is not looked up: one call per change, and the events
        // behind it waiting on it, for a figure forwarding never reads.
        let expiresAt: number | null = null;
        if (EtcdRegistry.wantsExpiry(parsed.publicIp, this.owner)) {
          expiresAt = await this.registry.expiryOf(parsed.etcdLease);
          if (attempt !== this.attempt || this.closed) return;
        }
        const lease: Lease = { subnet: parsed.subnet, publicIp: parsed.publicIp, expiresAt };
        this.call("onEvent", () => this.handlers.onEvent({ type: "put", lease }));
      }
      this.nextRevision = Math.max(this.nextRevision, revision + 1);
    }
  }

  private onCanceled(attempt: number, res: IWatchResponse): void {
    const compacted = Number(res.compact_revision);
    if (compacted > 0) {
      // History we still needed is gone: only a fresh listing tells the truth.
      this.log.info(
        { registry: this.registry.description, from: this.nextRevision, compacted },
        "etcd watch fell behind compaction; re-listing leases",
      );
      this.teardown();
      void this.resync();
      return;
    }
    this.failed(attempt, new Error(`etcd cancelled the watch: ${res.cancel_reason || "no reason given"}`));
  }

  /** Re-lists, then watches from the listing's revision (delivered as onResync once watching). */
  private async resync(): Promise<void> {
    const attempt = ++this.attempt;
    let listing: LeaseListing;
    try {
      listing = await this.registry.getLeases(this.owner);
    } catch (err) {
      this.failed(attempt, err);
      return;
    }
    if (attempt !== this.attempt || this.closed) return;
    await this.open(listing);
  }

  /** The current attempt failed: report once per outage, retry with backoff. */
  private failed(attempt: number, err: unknown): void {
    if (attempt !== this.attempt || this.closed) return;
    this.teardown();
    const error = err instanceof Error ? err : new Error(String(err));
    if (this.connected) {
      this.connected = false;
      this.log.warn({ registry: this.registry.description, err: error.message }, "etcd watch disconnected");
      this.call("onConnection", () => this.handlers.onConnection?.(false, error));
    } else {
      this.log.debug({ registry: this.registry.description, err: error.message }, "etcd watch still disconnected");
    }
    const wait = this.backoffMs;
    this.backoffMs = Math.min(this.backoffMs * 2, WATCH_BACKOFF_MAX_MS);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      void this.resync();
    }, wait);
  }

  private teardown(): void {
    this.attempt++;
    if (this.createTimer !== null) clearTimeout(this.createTimer);
    this.createTimer = null;
    if (this.stream !== null) endStream(this.stream);
    this.stream = null;
  }

  /** Handlers belong to the caller; one that throws must not kill the watch. */
  private call(name: string, fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.log.error({ registry: this.registry.description, err: message(err) }, `etcd watch ${name} handler threw`);
    }
  }
}

function endStream(stream: IDuplexStream<IWatchRequest, IWatchResponse>): void {
  // Half-close first: etcd3 resets the whole host's channels when a stream
  // errors while still writable, and our own cancel would look like that.
  try {
    stream.end();
    stream.cancel();
  } catch {
    // already closed
  }
  // The cancel surfaces as a CANCELLED 'error'; the listeners ignore it (stale
  // attempt), but without any listener it would be thrown.
  stream.on("error", () => {});
}

// EtcdRegistry against a real etcd (Debian's etcd-server): flannel's exact keys,
// values and etcd leases, the watch through compaction and restarts, TLS and
// password auth, and lease acquisition by many clients at once.

import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { parseNetworkConfig } from "../control/config.js";
import { acquireLease, LeaseManager } from "../control/lease-manager.js";
import { EtcdRegistry, type EtcdRegistryOptions } from "../control/registry/etcd.js";
import {
  encodeLeaseValue,
  type Lease,
  type LeaseEvent,
  type LeaseListing,
  type Watch,
  type WatchHandlers,
} from "../control/registry/registry.js";
import { formatIpv4, formatPrefix, type Ipv4Prefix, parseIpv4, parsePrefix } from "../net/addr.js";
import { type EtcdServer, makeCerts, startEtcd } from "./helpers/etcd.js";

const DAY = 86_400;
const FLANNEL_PREFIX = "/coreos.com/network";

function prefix(text: string): Ipv4Prefix {
  const p = parsePrefix(text, true);
  assert.ok(p, `bad prefix in test: ${text}`);
  return p;
}

function ip(text: string): number {
  const n = parseIpv4(text);
  assert.ok(n >= 0, `bad IP in test: ${text}`);
  return n;
}

/** "10.244.68.0/24 -> 198.18.0.1", comparable in assertions. */
function show(lease: Lease): string {
  return `${formatPrefix(lease.subnet)} -> ${formatIpv4(lease.publicIp)}`;
}

function showEvent(event: LeaseEvent): string {
  return event.type === "put" ? `put ${show(event.lease)}` : `delete ${formatPrefix(event.subnet)}`;
}

async function waitFor(what: string, check: () => boolean | Promise<boolean>, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Records everything a watch reports, and the lease set it implies. */
class Recorder implements WatchHandlers {
  readonly log: string[] = [];
  readonly events: LeaseEvent[] = [];
  readonly resyncs: LeaseListing[] = [];
  readonly connection: { connected: boolean; error?: Error }[] = [];
  readonly skipped: { key: string; reason: string }[] = [];
  readonly known = new Map<string, Lease>();

  onEvent(event: LeaseEvent): void {
    this.events.push(event);
    this.log.push(showEvent(event));
    if (event.type === "put") this.known.set(formatPrefix(event.lease.subnet), event.lease);
    else this.known.delete(formatPrefix(event.subnet));
  }
  onResync(listing: LeaseListing): void {
    this.resyncs.push(listing);
    this.log.push(`resync ${listing.leases.map(show).sort().join(", ")}`);
    this.known.clear();
    for (const lease of listing.leases) this.known.set(formatPrefix(lease.subnet), lease);
  }
  onConnection(connected: boolean, error?: Error): void {
    this.connection.push({ connected, error });
    this.log.push(connected ? "connected" : "disconnected");
  }
  onSkipped(key: string, reason: string): void {
    this.skipped.push({ key, reason });
    this.log.push(`skipped ${key}`);
  }
  knownSet(): string[] {
    return [...this.known.values()].map(show).sort();
  }
}

/** Registries, watches and servers made by a suite, closed by its after() hook. */
class Resources {
  private readonly registries: EtcdRegistry[] = [];
  private readonly watches: Watch[] = [];
  readonly servers: EtcdServer[] = [];
  readonly dirs: string[] = [];

  registry(options: EtcdRegistryOptions): EtcdRegistry {
    const registry = new EtcdRegistry(options);
    this.registries.push(registry);
    return registry;
  }
  watch(registry: EtcdRegistry, revision: number, handlers: WatchHandlers, owner?: number): Watch {
    const watch = registry.watchLeases(revision, handlers, owner);
    this.watches.push(watch);
    return watch;
  }
  async cleanup(): Promise<void> {
    for (const watch of this.watches.splice(0)) watch.close();
    await Promise.allSettled(this.registries.splice(0).map((r) => r.close()));
    await Promise.allSettled(this.servers.splice(0).map((s) => s.stop()));
    for (const dir of this.dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  }
}

// Raw reads through etcdctl, independent of the code under test.
async function rawValue(server: EtcdServer, key: string, user?: string): Promise<string | null> {
  const out = await server.etcdctl(["get", key, "-w", "fields"], { user });
  if (!/"Count" : [1-9]/.test(out)) return null;
  return (await server.etcdctl(["get", key, "--print-value-only"], { user })).replace(/\n$/, "");
}

/** The etcd lease a key hangs on (0n: none), or null when the key is missing. */
async function rawLeaseOf(server: EtcdServer, key: string, user?: string): Promise<bigint | null> {
  const out = await server.etcdctl(["get", key, "-w", "fields"], { user });
  if (!/"Count" : [1-9]/.test(out)) return null;
  const m = /"Lease" : (\d+)/.exec(out);
  assert.ok(m, `no Lease field for ${key} in: ${out}`);
  return BigInt(m[1] as string);
}

/** Granted and remaining TTL of an etcd lease, or null when it no longer exists. */
async function rawTtl(server: EtcdServer, id: bigint): Promise<{ granted: number; remaining: number } | null> {
  const out = await server.etcdctl(["lease", "timetolive", id.toString(16)]);
  if (/already expired/.test(out)) return null;
  const m = /granted with TTL\((\d+)s\), remaining\((-?\d+)s\)/.exec(out);
  assert.ok(m, `unexpected etcdctl lease timetolive output: ${out}`);
  return { granted: Number(m[1]), remaining: Number(m[2]) };
}

async function rawLeaseIds(server: EtcdServer): Promise<string[]> {
  const out = await server.etcdctl(["lease", "list"]);
  return out.trim().split("\n").slice(1).sort();
}

async function currentRevision(server: EtcdServer): Promise<number> {
  const out = await server.etcdctl(["get", "/", "-w", "fields"]);
  const m = /"Revision" : (\d+)/.exec(out);
  assert.ok(m, `no Revision in: ${out}`);
  return Number(m[1]);
}

let prefixCounter = 0;
/** A fresh --etcd-prefix so tests sharing one etcd never see each other's keys. */
function freshPrefix(): string {
  prefixCounter++;
  return `/weft-test-${process.pid}-${prefixCounter}${FLANNEL_PREFIX}`;
}

describe("EtcdRegistry on a plain etcd", () => {
  const res = new Resources();
  let etcd: EtcdServer;

  before(async () => {
    etcd = await startEtcd();
    res.servers.push(etcd);
  });
  after(() => res.cleanup());

  it("writes flannel's key, value bytes and an 86400 s etcd lease", async () => {
    const registry = res.registry({ endpoints: [etcd.endpoint] });
    assert.equal(registry.description, `etcd ${etcd.endpoint}`);
    const before = Date.now();
    const lease = await registry.createLease(prefix("10.244.68.0/24"), ip("198.18.0.1"), DAY);
    assert.ok(lease);
    assert.equal(show(lease), "10.244.68.0/24 -> 198.18.0.1");
    assert.ok(lease.expiresAt !== null && lease.expiresAt >= before + DAY * 1000 - 2000);
    assert.ok(lease.expiresAt <= Date.now() + DAY * 1000);

    const keys = await etcd.etcdctl(["get", "--prefix", `${FLANNEL_PREFIX}/subnets/`, "--keys-only"]);
    assert.deepEqual(keys.split("\n").filter(Boolean), ["/coreos.com/network/subnets/10.244.68.0-24"]);
    const key = "/coreos.com/network/subnets/10.244.68.0-24";
    assert.equal(await rawValue(etcd, key), '{"PublicIP":"198.18.0.1","PublicIPv6":null}');
    const id = await rawLeaseOf(etcd, key);
    assert.ok(id !== null && id !== 0n, "the key is attached to an etcd lease");
    const ttl = await rawTtl(etcd, id);
    assert.ok(ttl);
    assert.equal(ttl.granted, DAY);
    assert.ok(ttl.remaining > DAY - 60 && ttl.remaining <= DAY);

    const listing = await registry.getLeases();
    assert.deepEqual(listing.leases.map(show), ["10.244.68.0/24 -> 198.18.0.1"]);
    assert.deepEqual(listing.skipped, []);
    assert.equal(listing.revision, await currentRevision(etcd));
    const expiresAt = listing.leases[0]?.expiresAt;
    assert.ok(typeof expiresAt === "number" && Math.abs(expiresAt - (lease.expiresAt as number)) < 5000);
  });

  it("reads the network config at <prefix>/config, null while absent", async () => {
    const p = freshPrefix();
    const registry = res.registry({ endpoints: [etcd.endpoint], prefix: p });
    assert.equal(await registry.getNetworkConfig(), null);
    const config = '{"Network": "10.244.0.0/16", "Backend": {"Type": "udp"}}';
    await etcd.etcdctl(["put", `${p}/config`, config]);
    assert.equal(await registry.getNetworkConfig(), config);
  });

  it("createLease on a taken subnet returns null and leaves no dangling etcd lease", async () => {
    const p = freshPrefix();
    const first = res.registry({ endpoints: [etcd.endpoint], prefix: p });
    const second = res.registry({ endpoints: [etcd.endpoint], prefix: p });
    assert.ok(await first.createLease(prefix("10.244.5.0/24"), ip("198.18.0.5"), DAY));
    const leasesBefore = await rawLeaseIds(etcd);
    assert.equal(await second.createLease(prefix("10.244.5.0/24"), ip("198.18.0.6"), DAY), null);
    assert.deepEqual(await rawLeaseIds(etcd), leasesBefore, "the lease granted for the lost race was revoked");
    assert.equal(await rawValue(etcd, `${p}/subnets/10.244.5.0-24`), encodeLeaseValue(ip("198.18.0.5")));
  });

  it("lists a key without an etcd lease as a reservation, and updateLease keeps it one", async () => {
    const p = freshPrefix();
    const key = `${p}/subnets/10.244.77.0-24`;
    await etcd.etcdctl(["put", key, encodeLeaseValue(ip("198.18.0.77"))]);
    const registry = res.registry({ endpoints: [etcd.endpoint], prefix: p });
    const listing = await registry.getLeases();
    assert.equal(listing.leases.length, 1);
    const reservation = listing.leases[0] as Lease;
    assert.equal(show(reservation), "10.244.77.0/24 -> 198.18.0.77");
    assert.equal(reservation.expiresAt, null);

    const updated = await registry.updateLease(reservation, ip("198.18.0.77"), DAY);
    assert.equal(updated.expiresAt, null);
    assert.equal(await rawLeaseOf(etcd, key), 0n, "still no etcd lease on the key");
    assert.equal(await rawValue(etcd, key), '{"PublicIP":"198.18.0.77","PublicIPv6":null}');
    assert.equal((await registry.getLeases()).leases[0]?.expiresAt, null);
  });

  it("updateLease moves the key to a new etcd lease with a fresh TTL and revokes the old one", async () => {
    const p = freshPrefix();
    const key = `${p}/subnets/10.244.9.0-24`;
    const registry = res.registry({ endpoints: [etcd.endpoint], prefix: p });
    const lease = await registry.createLease(prefix("10.244.9.0/24"), ip("198.18.0.9"), 600);
    assert.ok(lease?.expiresAt);
    const oldId = await rawLeaseOf(etcd, key);
    assert.ok(oldId !== null && oldId !== 0n);
    assert.equal((await rawTtl(etcd, oldId))?.granted, 600);

    const renewed = await registry.updateLease(lease, ip("198.18.0.9"), DAY);
    assert.ok(renewed.expiresAt !== null && renewed.expiresAt > lease.expiresAt + (DAY - 600 - 5) * 1000);
    const newId = await rawLeaseOf(etcd, key);
    assert.ok(newId !== null && newId !== 0n);
    assert.notEqual(newId, oldId, "the key hangs on a new etcd lease");
    const ttl = await rawTtl(etcd, newId);
    assert.equal(ttl?.granted, DAY);
    assert.equal(await rawTtl(etcd, oldId), null, "the old etcd lease is gone");
    assert.equal(await rawValue(etcd, key), '{"PublicIP":"198.18.0.9","PublicIPv6":null}');
  });

  it("deleteLease removes the key", async () => {
    const p = freshPrefix();
    const registry = res.registry({ endpoints: [etcd.endpoint], prefix: p });
    assert.ok(await registry.createLease(prefix("10.244.3.0/24"), ip("198.18.0.3"), DAY));
    await registry.deleteLease(prefix("10.244.3.0/24"));
    assert.equal(await rawValue(etcd, `${p}/subnets/10.244.3.0-24`), null);
    assert.deepEqual((await registry.getLeases()).leases, []);
  });

  it("skips garbage under subnets/ with a reason and still lists the other leases", async () => {
    const p = freshPrefix();
    const registry = res.registry({ endpoints: [etcd.endpoint], prefix: p });
    assert.ok(await registry.createLease(prefix("10.244.1.0/24"), ip("198.18.0.1"), DAY));
    await etcd.etcdctl(["put", `${p}/subnets/10.244.2.0-24`, "not json"]);
    await etcd.etcdctl(["put", `${p}/subnets/10.244.4.0-24`, '{"PublicIP":"300.1.1.1"}']);
    await etcd.etcdctl(["put", `${p}/subnets/garbage`, encodeLeaseValue(ip("198.18.0.2"))]);
    // Peers' extra fields (BackendType/BackendData of other backends) are ignored.
    await etcd.etcdctl([
      "put",
      `${p}/subnets/10.244.6.0-24`,
      '{"PublicIP":"198.18.0.6","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1}}',
    ]);
    const listing = await registry.getLeases();
    assert.deepEqual(listing.leases.map(show).sort(), ["10.244.1.0/24 -> 198.18.0.1", "10.244.6.0/24 -> 198.18.0.6"]);
    const reasons = new Map(listing.skipped.map((s) => [s.key, s.reason]));
    assert.equal(reasons.size, 3);
    assert.match(reasons.get(`${p}/subnets/10.244.2.0-24`) ?? "", /not JSON/);
    assert.match(reasons.get(`${p}/subnets/10.244.4.0-24`) ?? "", /300\.1\.1\.1.*not an IPv4/);
    assert.match(reasons.get(`${p}/subnets/garbage`) ?? "", /"garbage" is not a subnet/);
  });

  it("a prefix with non-ASCII characters names every key correctly, in listings and in the watch", async () => {
    const p = `${freshPrefix()}/réseau-網`;
    const registry = res.registry({ endpoints: [etcd.endpoint], prefix: p });
    const start = await registry.getLeases();
    const rec = new Recorder();
    res.watch(registry, start.revision, rec);
    assert.ok(await registry.createLease(prefix("10.244.31.0/24"), ip("198.18.0.31"), DAY));
    const listing = await registry.getLeases();
    assert.deepEqual(listing.skipped, []);
    assert.deepEqual(listing.leases.map(show), ["10.244.31.0/24 -> 198.18.0.31"]);
    await registry.deleteLease(prefix("10.244.31.0/24"));
    await waitFor("put and delete", () => rec.log.length >= 2);
    assert.deepEqual(rec.log, ["put 10.244.31.0/24 -> 198.18.0.31", "delete 10.244.31.0/24"]);
  });

  it("watch delivers puts and deletes in order, including deletes by others and expiry", async () => {
    const p = freshPrefix();
    const registry = res.registry({ endpoints: [etcd.endpoint], prefix: p });
    const other = res.registry({ endpoints: [etcd.endpoint], prefix: p });
    const start = await registry.getLeases();
    const rec = new Recorder();
    res.watch(registry, start.revision, rec);

    const a = await registry.createLease(prefix("10.244.10.0/24"), ip("198.18.0.10"), DAY);
    assert.ok(a);
    assert.ok(await other.createLease(prefix("10.244.11.0/24"), ip("198.18.0.11"), DAY));
    await registry.updateLease(a, ip("198.18.0.12"), DAY);
    // Someone else deletes a key, another key's etcd lease is revoked by someone
    // else, a garbage value shows up, and a short etcd lease runs out.
    await etcd.etcdctl(["del", `${p}/subnets/10.244.11.0-24`]);
    assert.ok(await other.createLease(prefix("10.244.13.0/24"), ip("198.18.0.13"), DAY));
    const revokeId = await rawLeaseOf(etcd, `${p}/subnets/10.244.13.0-24`);
    assert.ok(revokeId);
    await etcd.etcdctl(["lease", "revoke", revokeId.toString(16)]);
    await etcd.etcdctl(["put", `${p}/subnets/10.244.14.0-24`, "{"]);
    assert.ok(await other.createLease(prefix("10.244.15.0/24"), ip("198.18.0.15"), 1));

    const expected = [
      "put 10.244.10.0/24 -> 198.18.0.10",
      "put 10.244.11.0/24 -> 198.18.0.11",
      "put 10.244.10.0/24 -> 198.18.0.12",
      "delete 10.244.11.0/24",
      "put 10.244.13.0/24 -> 198.18.0.13",
      "delete 10.244.13.0/24",
      `skipped ${p}/subnets/10.244.14.0-24`,
      "put 10.244.15.0/24 -> 198.18.0.15",
      "delete 10.244.15.0/24",
    ];
    // The last delete comes from etcd expiring a 1 s lease (a few seconds at most).
    await waitFor("the expiry delete", () => rec.log.length >= expected.length, 15_000);
    assert.deepEqual(rec.log, expected);
    assert.match(rec.skipped[0]?.reason ?? "", /not JSON/);
    const firstPut = rec.events[0];
    assert.ok(firstPut?.type === "put" && firstPut.lease.expiresAt !== null);
    assert.ok(Math.abs(firstPut.lease.expiresAt - (Date.now() + DAY * 1000)) < 60_000);
  });

  it("a watch handler that throws does not stop the watch", async () => {
    const p = freshPrefix();
    const registry = res.registry({ endpoints: [etcd.endpoint], prefix: p });
    const start = await registry.getLeases();
    const seen: string[] = [];
    res.watch(registry, start.revision, {
      onEvent(event) {
        seen.push(showEvent(event));
        throw new Error("handler bug");
      },
      onResync() {},
    });
    await registry.createLease(prefix("10.244.20.0/24"), ip("198.18.0.20"), DAY);
    await registry.createLease(prefix("10.244.21.0/24"), ip("198.18.0.21"), DAY);
    await waitFor("two events", () => seen.length >= 2);
    assert.deepEqual(seen, ["put 10.244.20.0/24 -> 198.18.0.20", "put 10.244.21.0/24 -> 198.18.0.21"]);
  });

  it("names the endpoint and the cause when etcd refuses connections or never answers", async () => {
    const refused = res.registry({ endpoints: ["http://127.0.0.1:1"] });
    await assert.rejects(
      refused.getLeases(),
      /^Error: etcd http:\/\/127\.0\.0\.1:1: listing .* failed: connection refused/,
    );

    // A listener that accepts and never speaks: the call deadline must end it.
    const accepted: Socket[] = [];
    const silent: Server = createServer((socket) => accepted.push(socket));
    await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
    try {
      const address = silent.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      const mute = res.registry({ endpoints: [`http://127.0.0.1:${port}`], callTimeoutMs: 1000 });
      await assert.rejects(
        mute.getNetworkConfig(),
        new RegExp(`^Error: etcd http://127\\.0\\.0\\.1:${port}: reading .*/config failed: no answer within 1000 ms`),
      );
    } finally {
      for (const socket of accepted) socket.destroy();
      silent.close();
    }
  });

  it("keeps working when one of several endpoints is down", async () => {
    const p = freshPrefix();
    const endpoints = ["http://127.0.0.1:1", etcd.endpoint];
    const registry = res.registry({ endpoints, prefix: p });
    assert.equal(registry.description, `etcd http://127.0.0.1:1,${etcd.endpoint}`);
    // The dead endpoint is picked first about half the time; each call must still succeed.
    for (let i = 0; i < 10; i++) assert.deepEqual((await registry.getLeases()).leases, []);
    const rec = new Recorder();
    res.watch(registry, (await registry.getLeases()).revision, rec);
    assert.ok(await registry.createLease(prefix("10.244.30.0/24"), ip("198.18.0.30"), DAY));
    await waitFor("the put through the live endpoint", () => rec.known.has("10.244.30.0/24"));
    assert.deepEqual(rec.knownSet(), ["10.244.30.0/24 -> 198.18.0.30"]);
  });

  it("with an owner, looks up the TTL of the owner's keys only, in listings and in watch events", async () => {
    // Issue 17: one leaseTimeToLive call per key made start-up at 5,000 peers take 27 s.
    const p = freshPrefix();
    const registry = res.registry({ endpoints: [etcd.endpoint], prefix: p });
    const owner = ip("198.18.0.1");
    assert.ok(await registry.createLease(prefix("10.244.1.0/24"), owner, DAY));
    for (let i = 2; i <= 6; i++)
      assert.ok(await registry.createLease(prefix(`10.244.${i}.0/24`), ip(`198.18.0.${i}`), DAY));
    let lookups = 0;
    const expiryOf = registry.expiryOf.bind(registry);
    registry.expiryOf = (id: string) => {
      lookups++;
      return expiryOf(id);
    };
    const listing = await registry.getLeases(owner);
    assert.equal(lookups, 1, "one TTL call, for the owner's key");
    assert.equal(listing.leases.length, 6);
    for (const lease of listing.leases) {
      if (lease.publicIp === owner)
        assert.ok(lease.expiresAt !== null && lease.expiresAt > Date.now() + (DAY - 60) * 1000);
      else assert.equal(lease.expiresAt, null, `${show(lease)}: a peer's expiry is not looked up`);
    }
    lookups = 0;
    await registry.getLeases();
    assert.equal(lookups, 6, "without an owner every expiry is looked up, as before");

    lookups = 0;
    const rec = new Recorder();
    res.watch(registry, listing.revision, rec, owner);
    await registry.createLease(prefix("10.244.7.0/24"), ip("198.18.0.7"), DAY);
    const renewed = await registry.updateLease(listing.leases.find((l) => l.publicIp === owner) as Lease, owner, DAY);
    await waitFor("both puts", () => rec.events.length >= 2);
    assert.deepEqual(rec.log, ["put 10.244.7.0/24 -> 198.18.0.7", "put 10.244.1.0/24 -> 198.18.0.1"]);
    const [peerPut, ownPut] = rec.events as [LeaseEvent, LeaseEvent];
    assert.equal(peerPut.type === "put" && peerPut.lease.expiresAt, null);
    const ownExpiry = ownPut.type === "put" ? ownPut.lease.expiresAt : null;
    assert.ok(ownExpiry !== null && Math.abs(ownExpiry - (renewed.expiresAt as number)) < 5000);
    assert.equal(lookups, 1, "the watch looked up the owner's renewal only");
  });

  it("rejects malformed endpoints with a sentence naming them", () => {
    assert.throws(
      () => new EtcdRegistry({ endpoints: ["127.0.0.1:2379"] }),
      /endpoint "127\.0\.0\.1:2379" is not an http/,
    );
    assert.throws(
      () => new EtcdRegistry({ endpoints: ["http://127.0.0.1:1", "https://127.0.0.1:2"] }),
      /mix http:\/\/ and https:\/\//,
    );
    assert.throws(() => new EtcdRegistry({ endpoints: [] }), /endpoints are empty/);
  });
});

describe("EtcdRegistry watch through compaction", () => {
  const res = new Resources();
  let etcd: EtcdServer;

  before(async () => {
    etcd = await startEtcd();
    res.servers.push(etcd);
  });
  after(() => res.cleanup());

  it("a watch whose start revision was compacted away resyncs with the full current set", async () => {
    const registry = res.registry({ endpoints: [etcd.endpoint] });
    const writer = res.registry({ endpoints: [etcd.endpoint] });
    assert.ok(await writer.createLease(prefix("10.244.1.0/24"), ip("198.18.0.1"), DAY));
    const stale = await registry.getLeases();
    // History after `stale` that a watcher from there would have to replay.
    assert.ok(await writer.createLease(prefix("10.244.2.0/24"), ip("198.18.0.2"), DAY));
    await writer.deleteLease(prefix("10.244.1.0/24"));
    assert.ok(await writer.createLease(prefix("10.244.3.0/24"), ip("198.18.0.3"), DAY));
    await etcd.etcdctl(["compaction", String(await currentRevision(etcd)), "--physical"]);

    const rec = new Recorder();
    res.watch(registry, stale.revision, rec);
    await waitFor("a resync", () => rec.resyncs.length >= 1);
    assert.deepEqual(rec.knownSet(), ["10.244.2.0/24 -> 198.18.0.2", "10.244.3.0/24 -> 198.18.0.3"]);
    assert.deepEqual(rec.events, [], "no events replayed from compacted history");
    assert.deepEqual(rec.connection, [], "compaction is not a connection loss");

    // The watch goes on from the listing's revision.
    assert.ok(await writer.createLease(prefix("10.244.4.0/24"), ip("198.18.0.4"), DAY));
    await writer.deleteLease(prefix("10.244.2.0/24"));
    await waitFor("events after the resync", () => rec.events.length >= 2);
    assert.deepEqual(rec.log, [
      "resync 10.244.2.0/24 -> 198.18.0.2, 10.244.3.0/24 -> 198.18.0.3",
      "put 10.244.4.0/24 -> 198.18.0.4",
      "delete 10.244.2.0/24",
    ]);
    assert.deepEqual(rec.knownSet(), ["10.244.3.0/24 -> 198.18.0.3", "10.244.4.0/24 -> 198.18.0.4"]);
  });
});

describe("EtcdRegistry watch across an etcd restart", () => {
  const res = new Resources();
  let etcd: EtcdServer;

  before(async () => {
    etcd = await startEtcd();
    res.servers.push(etcd);
  });
  after(() => res.cleanup());

  it("reports the outage, reconnects, and delivers a lease created while it was away", async () => {
    const registry = res.registry({ endpoints: [etcd.endpoint] });
    assert.ok(await registry.createLease(prefix("10.244.1.0/24"), ip("198.18.0.1"), DAY));
    const start = await registry.getLeases();
    const rec = new Recorder();
    for (const lease of start.leases) rec.known.set(formatPrefix(lease.subnet), lease);
    res.watch(registry, start.revision, rec);
    assert.ok(await registry.createLease(prefix("10.244.2.0/24"), ip("198.18.0.2"), DAY));
    await waitFor("the first put", () => rec.events.length >= 1);

    await etcd.halt();
    await waitFor("the watch to report the outage", () => rec.connection.length >= 1);
    assert.equal(rec.connection[0]?.connected, false);
    assert.ok(rec.connection[0]?.error instanceof Error);
    // While etcd is down, calls fail with the endpoint named instead of hanging.
    await assert.rejects(registry.getLeases(), new RegExp(`^Error: etcd ${etcd.endpoint}: listing`));

    await etcd.resume();
    const second = res.registry({ endpoints: [etcd.endpoint] });
    assert.ok(await second.createLease(prefix("10.244.3.0/24"), ip("198.18.0.3"), DAY));
    await waitFor("reconnection", () => rec.connection.some((c) => c.connected), 20_000);
    await waitFor("the lease created during the outage", () => rec.known.has("10.244.3.0/24"), 10_000);
    assert.deepEqual(rec.knownSet(), [
      "10.244.1.0/24 -> 198.18.0.1",
      "10.244.2.0/24 -> 198.18.0.2",
      "10.244.3.0/24 -> 198.18.0.3",
    ]);
    // flannel's order: re-list, resync, then report connected.
    const down = rec.log.indexOf("disconnected");
    const resync = rec.log.findIndex((line, i) => i > down && line.startsWith("resync"));
    const up = rec.log.indexOf("connected");
    assert.ok(down >= 0 && resync > down && up > resync, `order was: ${rec.log.join(" | ")}`);
    assert.equal(rec.connection.filter((c) => !c.connected).length, 1, "one outage reported once");

    // Still watching after the reconnect.
    await second.deleteLease(prefix("10.244.1.0/24"));
    await waitFor("a delete after reconnecting", () => !rec.known.has("10.244.1.0/24"));
  });
});

describe("EtcdRegistry over mutual TLS", () => {
  const res = new Resources();
  let etcd: EtcdServer;
  let certs: ReturnType<typeof makeCerts>;

  before(async () => {
    const dir = mkdtempSync(join(tmpdir(), "weft-certs-"));
    res.dirs.push(dir);
    certs = makeCerts(dir);
    etcd = await startEtcd({ tls: certs, clientCertAuth: true });
    res.servers.push(etcd);
  });
  after(() => res.cleanup());

  it("works with the CA, a client certificate and its key", async () => {
    assert.match(etcd.endpoint, /^https:\/\/127\.0\.0\.1:\d+$/);
    const registry = res.registry({
      endpoints: [etcd.endpoint],
      caFile: certs.caFile,
      certFile: certs.clientCertFile,
      keyFile: certs.clientKeyFile,
    });
    const start = await registry.getLeases();
    const rec = new Recorder();
    res.watch(registry, start.revision, rec);
    assert.ok(await registry.createLease(prefix("10.244.1.0/24"), ip("198.18.0.1"), DAY));
    await waitFor("the put over TLS", () => rec.events.length >= 1);
    assert.deepEqual(rec.log, ["put 10.244.1.0/24 -> 198.18.0.1"]);
    assert.equal(await rawValue(etcd, `${FLANNEL_PREFIX}/subnets/10.244.1.0-24`), encodeLeaseValue(ip("198.18.0.1")));
  });

  it("a wrong CA fails the first call with the endpoint and 'certificate verify failed'", async () => {
    const registry = res.registry({
      endpoints: [etcd.endpoint],
      caFile: certs.otherCaFile,
      certFile: certs.clientCertFile,
      keyFile: certs.clientKeyFile,
    });
    await assert.rejects(registry.getLeases(), (err: Error) => {
      assert.ok(err.message.startsWith(`etcd ${etcd.endpoint}: `), err.message);
      assert.match(err.message, /certificate verify failed/);
      return true;
    });
  });

  it("a missing client certificate fails with the endpoint and the handshake rejection", async () => {
    const registry = res.registry({ endpoints: [etcd.endpoint], caFile: certs.caFile });
    await assert.rejects(registry.getNetworkConfig(), (err: Error) => {
      assert.ok(err.message.startsWith(`etcd ${etcd.endpoint}: `), err.message);
      assert.match(err.message, /rejected the TLS handshake.*client certificate/);
      return true;
    });
  });

  it("an unreadable CA file is a clear error at construction", () => {
    assert.throws(
      () => new EtcdRegistry({ endpoints: [etcd.endpoint], caFile: join(certs.dir, "missing.crt") }),
      /etcd TLS CA file .*missing\.crt cannot be read/,
    );
  });
});

describe("EtcdRegistry with username/password auth", () => {
  const res = new Resources();
  let etcd: EtcdServer;
  const root = "root:rootpw";

  before(async () => {
    etcd = await startEtcd();
    res.servers.push(etcd);
    await etcd.etcdctl(["user", "add", "root", "--new-user-password=rootpw", "--interactive=false"]);
    // A least-privilege user, as flannel deployments use: read-write on the prefix only.
    await etcd.etcdctl(["role", "add", "flannel"]);
    await etcd.etcdctl(["role", "grant-permission", "flannel", "--prefix=true", "readwrite", `${FLANNEL_PREFIX}/`]);
    await etcd.etcdctl(["user", "add", "weft", "--new-user-password=weftpw", "--interactive=false"]);
    await etcd.etcdctl(["user", "grant-role", "weft", "flannel"]);
    await etcd.etcdctl(["auth", "enable"]);
    await etcd.etcdctl(["put", `${FLANNEL_PREFIX}/config`, '{"Network":"10.244.0.0/16"}'], { user: root });
  });
  after(() => res.cleanup());

  it("works with the right password, including leases and the watch", async () => {
    const registry = res.registry({ endpoints: [etcd.endpoint], username: "weft", password: "weftpw" });
    assert.equal(await registry.getNetworkConfig(), '{"Network":"10.244.0.0/16"}');
    const start = await registry.getLeases();
    const rec = new Recorder();
    res.watch(registry, start.revision, rec);
    const lease = await registry.createLease(prefix("10.244.1.0/24"), ip("198.18.0.1"), DAY);
    assert.ok(lease);
    await registry.updateLease(lease, ip("198.18.0.1"), DAY);
    assert.equal(await registry.createLease(prefix("10.244.1.0/24"), ip("198.18.0.2"), DAY), null);
    await registry.deleteLease(prefix("10.244.1.0/24"));
    await waitFor("three events", () => rec.events.length >= 3);
    assert.deepEqual(rec.log, [
      "put 10.244.1.0/24 -> 198.18.0.1",
      "put 10.244.1.0/24 -> 198.18.0.1",
      "delete 10.244.1.0/24",
    ]);
    assert.equal(await rawValue(etcd, `${FLANNEL_PREFIX}/subnets/10.244.1.0-24`, root), null);
  });

  it("a wrong password fails with the endpoint and 'authentication failed'", async () => {
    const registry = res.registry({ endpoints: [etcd.endpoint], username: "weft", password: "nope" });
    await assert.rejects(registry.getNetworkConfig(), (err: Error) => {
      assert.ok(err.message.startsWith(`etcd ${etcd.endpoint}: `), err.message);
      assert.match(err.message, /authentication failed/);
      return true;
    });
  });

  it("no credentials at all fails with the endpoint named", async () => {
    const registry = res.registry({ endpoints: [etcd.endpoint] });
    await assert.rejects(registry.getLeases(), (err: Error) => {
      assert.ok(err.message.startsWith(`etcd ${etcd.endpoint}: listing`), err.message);
      return true;
    });
  });
});

describe("lease acquisition over etcd", () => {
  const res = new Resources();
  let etcd: EtcdServer;

  before(async () => {
    etcd = await startEtcd();
    res.servers.push(etcd);
  });
  after(() => res.cleanup());

  async function networkWith(json: string): Promise<string> {
    const p = freshPrefix();
    await etcd.etcdctl(["put", `${p}/config`, json]);
    return p;
  }

  async function configOf(registry: EtcdRegistry) {
    const json = await registry.getNetworkConfig();
    assert.ok(json !== null);
    return parseNetworkConfig(json);
  }

  it("20 hosts acquiring at once over 20 clients all get distinct subnets", async () => {
    const p = await networkWith('{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}');
    const clients = Array.from({ length: 20 }, () => res.registry({ endpoints: [etcd.endpoint], prefix: p }));
    const config = await configOf(clients[0] as EtcdRegistry);
    // A narrow random pick forces real create conflicts between the racers.
    const leases = await Promise.all(
      clients.map((registry, i) =>
        acquireLease(registry, config, { publicIp: ip(`198.18.1.${i + 1}`), random: () => Math.random() * 0.1 }),
      ),
    );
    const subnets = leases.map((l) => formatPrefix(l.subnet));
    assert.equal(new Set(subnets).size, 20, `duplicates in ${subnets.join(" ")}`);
    const listing = await (clients[0] as EtcdRegistry).getLeases();
    assert.deepEqual(listing.leases.map(show).sort(), leases.map(show).sort());
    for (const [i, lease] of leases.entries()) {
      assert.equal(formatIpv4(lease.publicIp), `198.18.1.${i + 1}`);
      assert.equal(lease.subnet.len, 24);
    }
  });

  it("says 'out of subnets' when a tiny network is full", async () => {
    // A /26 cut into /28s: the zeroth is skipped, three remain.
    const p = await networkWith('{"Network":"10.245.0.0/26","SubnetLen":28}');
    const registry = res.registry({ endpoints: [etcd.endpoint], prefix: p });
    const config = await configOf(registry);
    const got: string[] = [];
    for (let i = 1; i <= 3; i++) {
      got.push(formatPrefix((await acquireLease(registry, config, { publicIp: ip(`198.18.2.${i}`) })).subnet));
    }
    assert.deepEqual(got.sort(), ["10.245.0.16/28", "10.245.0.32/28", "10.245.0.48/28"]);
    await assert.rejects(acquireLease(registry, config, { publicIp: ip("198.18.2.4") }), /out of subnets/);
  });

  it("a restarted host (new client) gets its subnet back by PublicIP, renewed", async () => {
    const p = await networkWith('{"Network":"10.246.0.0/16"}');
    const first = res.registry({ endpoints: [etcd.endpoint], prefix: p });
    const config = await configOf(first);
    const lease = await acquireLease(first, config, { publicIp: ip("198.18.3.1") });
    const key = `${p}/subnets/${formatIpv4(lease.subnet.base)}-24`;
    const firstId = await rawLeaseOf(etcd, key);
    await first.close();

    const again = res.registry({ endpoints: [etcd.endpoint], prefix: p });
    const reused = await acquireLease(again, config, { publicIp: ip("198.18.3.1") });
    assert.equal(formatPrefix(reused.subnet), formatPrefix(lease.subnet));
    const secondId = await rawLeaseOf(etcd, key);
    assert.ok(secondId !== null && secondId !== 0n && secondId !== firstId, "renewed onto a new etcd lease");
    assert.equal((await again.getLeases()).leases.length, 1);
  });

  it("a reservation is reused by the host whose IP it names, and only by it", async () => {
    const p = await networkWith('{"Network":"10.247.0.0/16"}');
    const key = `${p}/subnets/10.247.77.0-24`;
    await etcd.etcdctl(["put", key, encodeLeaseValue(ip("198.18.4.7"))]);
    const registry = res.registry({ endpoints: [etcd.endpoint], prefix: p });
    const config = await configOf(registry);
    const other = await acquireLease(registry, config, {
      publicIp: ip("198.18.4.8"),
      previousSubnet: prefix("10.247.77.0/24"),
    });
    assert.notEqual(formatPrefix(other.subnet), "10.247.77.0/24");
    const owner = await acquireLease(registry, config, { publicIp: ip("198.18.4.7") });
    assert.equal(formatPrefix(owner.subnet), "10.247.77.0/24");
    assert.equal(owner.expiresAt, null);
    assert.equal(await rawLeaseOf(etcd, key), 0n, "still a reservation: no etcd lease");
  });

  it("keys outside the Network, of another length or naming martian PublicIPs are ignored with one warning each; the manager keeps routing the rest", async () => {
    const p = await networkWith('{"Network":"10.249.0.0/16"}');
    // An operator changed the Network while a node was down: its old lease survives.
    await etcd.etcdctl(["put", `${p}/subnets/192.168.7.0-24`, encodeLeaseValue(ip("198.18.6.7"))]);
    await etcd.etcdctl(["put", `${p}/subnets/10.249.0.0-16`, encodeLeaseValue(ip("198.18.6.8"))]);
    const warnings: string[] = [];
    let peers: Lease[] = [];
    const manager = new LeaseManager({
      registry: res.registry({ endpoints: [etcd.endpoint], prefix: p }),
      publicIp: ip("198.18.6.1"),
      log: {
        debug() {},
        info() {},
        warn: (obj, msg) => {
          if (msg === "ignoring lease") warnings.push(String((obj as { key: string }).key));
        },
        error() {},
      },
      onLeases: (leases) => {
        peers = [...leases];
      },
    });
    try {
      const own = await manager.start();
      assert.equal(own.subnet.len, 24, "the covering key did not cause 'out of subnets'");
      await etcd.etcdctl(["put", `${p}/subnets/10.249.8.0-25`, encodeLeaseValue(ip("198.18.6.9"))]);
      await etcd.etcdctl(["put", `${p}/subnets/10.249.9.0-24`, encodeLeaseValue(ip("127.0.0.1"))]);
      await etcd.etcdctl(["put", `${p}/subnets/10.249.10.0-24`, encodeLeaseValue(ip("198.18.6.10"))]);
      await waitFor("the good peer", () => peers.length === 1);
      assert.deepEqual(peers.map(show), ["10.249.10.0/24 -> 198.18.6.10"]);
      assert.deepEqual(warnings.sort(), ["10.249.0.0-16", "10.249.8.0-25", "10.249.9.0-24", "192.168.7.0-24"]);
      assert.equal(manager.ignoredCount, 4);
      // Deleting a bad key forgets it.
      await etcd.etcdctl(["del", `${p}/subnets/10.249.8.0-25`]);
      await waitFor("the deleted key to be forgotten", () => manager.ignoredCount === 3);
    } finally {
      manager.stop();
    }
  });

  it("two lease managers over etcd each see the other's lease", async () => {
    const p = await networkWith('{"Network":"10.248.0.0/16"}');
    const seen: [Lease[], Lease[]] = [[], []];
    const managers = [0, 1].map(
      (i) =>
        new LeaseManager({
          registry: res.registry({ endpoints: [etcd.endpoint], prefix: p }),
          publicIp: ip(`198.18.5.${i + 1}`),
          onLeases: (leases) => {
            seen[i] = [...leases];
          },
        }),
    );
    try {
      const [a, b] = await Promise.all(managers.map((m) => m.start()));
      assert.ok(a && b);
      await waitFor("both managers to see each other", () => seen[0].length === 1 && seen[1].length === 1);
      assert.deepEqual(seen[0].map(show), [show(b)]);
      assert.deepEqual(seen[1].map(show), [show(a)]);
    } finally {
      for (const m of managers) m.stop();
    }
  });
});

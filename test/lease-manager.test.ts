import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { mkdtemp, readdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, test } from "node:test";
import { ConfigError, type NetworkConfig, parseNetworkConfig } from "../control/config.js";
import {
  acquireLease,
  freeSubnets,
  LeaseManager,
  type LeaseManagerOptions,
  type Logger,
  type PeerBatch,
} from "../control/lease-manager.js";
import { FileRegistry } from "../control/registry/file.js";
import { MemoryRegistry } from "../control/registry/memory.js";
import type { Lease, Registry, WatchHandlers } from "../control/registry/registry.js";
import { readSubnetEnv, writeSubnetEnv } from "../control/subnet-env.js";
import { formatIpv4, formatPrefix, type Ipv4Prefix, parseIpv4, parsePrefix, prefixSize } from "../net/addr.js";
import { raceChildren } from "./helpers/children.js";

function ip(text: string): number {
  const n = parseIpv4(text);
  assert.ok(n >= 0, `bad address in test: ${text}`);
  return n;
}

function prefix(text: string): Ipv4Prefix {
  const p = parsePrefix(text, true);
  assert.ok(p, `bad prefix in test: ${text}`);
  return p;
}

const HOST_A = ip("198.18.0.1");
const HOST_B = ip("198.18.0.2");
const HOST_C = ip("198.18.0.3");
const T0 = 1_700_000_000_000;
const HOUR = 3_600_000;
const NETWORK_16 = '{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}';

/** Resolves when `check` holds, re-checked by whoever changes the state; fails after a generous timeout. */
class Condition {
  private waiters: { check: () => boolean; resolve: () => void }[] = [];

  notify(): void {
    this.waiters = this.waiters.filter((w) => {
      if (!w.check()) return true;
      w.resolve();
      return false;
    });
  }

  /** `state` is included in the timeout error, to tell why it never came. */
  async until(
    what: string,
    check: () => boolean,
    state: () => unknown = () => null,
    timeoutMs = 10_000,
  ): Promise<void> {
    if (check()) return;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`timed out waiting for ${what}; state: ${JSON.stringify(state())}`)),
        timeoutMs,
      );
      this.waiters.push({
        check,
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
      });
    });
  }
}

/** A pino-shaped logger that keeps what it was told. */
class RecordingLogger implements Logger {
  readonly lines: { level: string; obj: unknown; msg: string | undefined }[] = [];
  readonly changed = new Condition();
  debug(obj: unknown, msg?: string): void {
    this.record("debug", obj, msg);
  }
  info(obj: unknown, msg?: string): void {
    this.record("info", obj, msg);
  }
  warn(obj: unknown, msg?: string): void {
    this.record("warn", obj, msg);
  }
  error(obj: unknown, msg?: string): void {
    this.record("error", obj, msg);
  }
  messages(): string[] {
    return this.lines.map((line) => line.msg ?? String(line.obj));
  }
  private record(level: string, obj: unknown, msg: string | undefined): void {
    this.lines.push({ level, obj, msg });
    this.changed.notify();
  }
}

/** Everything a LeaseManager reports, for tests to wait on. */
class ManagerRecorder {
  readonly snapshots: (readonly Lease[])[] = [];
  readonly renewed: Lease[] = [];
  readonly skipped: { key: string; reason: string }[] = [];
  readonly connections: boolean[] = [];
  revoked = 0;
  private readonly changed = new Condition();

  async until(what: string, check: () => boolean): Promise<void> {
    await this.changed.until(what, check, () => ({
      snapshots: this.snapshots.map(describeLeases),
      renewed: this.renewed.length,
      skipped: this.skipped,
      connections: this.connections,
      revoked: this.revoked,
    }));
  }

  handlers(): Pick<LeaseManagerOptions, "onLeases" | "onRevoked" | "onRenewed" | "onConnection" | "onSkipped"> {
    return {
      onLeases: (leases) => this.push(() => this.snapshots.push(leases)),
      onRevoked: () => this.push(() => this.revoked++),
      onRenewed: (lease) => this.push(() => this.renewed.push(lease)),
      onConnection: (connected) => this.push(() => this.connections.push(connected)),
      onSkipped: (key, reason) => this.push(() => this.skipped.push({ key, reason })),
    };
  }

  latest(): string[] | undefined {
    const last = this.snapshots.at(-1);
    return last?.map((lease) => `${formatPrefix(lease.subnet)} ${formatIpv4(lease.publicIp)}`);
  }

  private push(record: () => void): void {
    record();
    this.changed.notify();
  }
}

function describeLeases(leases: readonly Lease[]): string[] {
  return leases.map((lease) => `${formatPrefix(lease.subnet)} ${formatIpv4(lease.publicIp)}`);
}

describe("lease manager over the file registry", () => {
  let dir = "";
  let clock = T0;
  const now = () => clock;
  const registries: FileRegistry[] = [];
  const managers: LeaseManager[] = [];

  /** Changes reach watches through inotify; pass a short rescanIntervalMs where an expiry on the fake clock must be noticed. */
  async function openRegistry(options: { rescanIntervalMs?: number; realClock?: boolean } = {}): Promise<FileRegistry> {
    const registry = await FileRegistry.open(dir, {
      rescanIntervalMs: options.rescanIntervalMs ?? HOUR,
      ...(options.realClock ? {} : { now }),
    });
    registries.push(registry);
    return registry;
  }

  /**
   * The registry with a watch that delivers nothing by itself: events come
   * only from the test, through handlers() (null until the manager watches).
   */
  function silentWatch(registry: Registry): { spy: Registry; handlers: () => WatchHandlers | null } {
    let handlers: WatchHandlers | null = null;
    const spy: Registry = Object.create(registry, {
      watchLeases: {
        value: (_revision: number, given: WatchHandlers) => {
          handlers = given;
          return { close() {} };
        },
      },
    });
    return { spy, handlers: () => handlers };
  }

  function manager(options: LeaseManagerOptions): LeaseManager {
    const created = new LeaseManager({ now, ...options });
    managers.push(created);
    return created;
  }

  async function config(json = NETWORK_16): Promise<NetworkConfig> {
    const registry = await openRegistry();
    await registry.setNetworkConfig(json);
    return parseNetworkConfig(json);
  }

  /** Puts a key whole (written aside, then renamed in), so a watch never reads it half-written. */
  async function putKey(name: string, value: string): Promise<void> {
    const aside = join(dir, `${name}.new`);
    await writeFile(aside, value);
    await rename(aside, join(dir, "subnets", name));
  }

  async function subnetFiles(): Promise<string[]> {
    return (await readdir(join(dir, "subnets"))).sort();
  }

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "weft-lease-manager-"));
    clock = T0;
  });
  afterEach(async () => {
    for (const m of managers.splice(0)) m.stop();
    for (const r of registries.splice(0)) await r.close();
    await rm(dir, { recursive: true, force: true });
  });

  describe("acquireLease", () => {
    test("takes a free subnet with flannel's key, value and a 24 h TTL", async () => {
      const cfg = await config();
      const registry = await openRegistry();
      const lease = await acquireLease(registry, cfg, { publicIp: HOST_A, random: () => 0 });
      assert.deepEqual(lease, { subnet: prefix("10.244.1.0/24"), publicIp: HOST_A, expiresAt: T0 + 86_400_000 });
      assert.deepEqual(await subnetFiles(), ["10.244.1.0-24"]);
      assert.equal(
        await readFile(join(dir, "subnets", "10.244.1.0-24"), "utf8"),
        '{"PublicIP":"198.18.0.1","PublicIPv6":null}',
      );
      assert.equal(await readFile(join(dir, "leases", "10.244.1.0-24"), "utf8"), String(T0 + 86_400_000));
    });

    test("picks at random among the first 100 free subnets from SubnetMin, skipping held ones", async () => {
      const cfg = await config();
      const registry = await openRegistry();
      await registry.createLease(prefix("10.244.1.0/24"), HOST_B, 100);
      await writeFile(join(dir, "subnets", "10.244.2.0-24"), '{"PublicIP":"198.18.0.3","PublicIPv6":null}');
      const first = await acquireLease(registry, cfg, { publicIp: HOST_A, random: () => 0 });
      assert.equal(formatPrefix(first.subnet), "10.244.3.0/24");
      // The 100th free subnet is now 10.244.103.0 (1, 2 and 3 are held).
      const last = await acquireLease(registry, cfg, { publicIp: ip("198.18.0.9"), random: () => 0.99999 });
      assert.equal(formatPrefix(last.subnet), "10.244.103.0/24");
    });

    test("reuses a reservation whose PublicIP is ours and keeps it a reservation", async () => {
      const cfg = await config();
      const registry = await openRegistry();
      await writeFile(join(dir, "subnets", "10.244.200.0-24"), '{"PublicIP":"198.18.0.1","PublicIPv6":null}');
      const lease = await acquireLease(registry, cfg, { publicIp: HOST_A, random: () => 0 });
      assert.deepEqual(lease, { subnet: prefix("10.244.200.0/24"), publicIp: HOST_A, expiresAt: null });
      assert.deepEqual(await readdir(join(dir, "leases")), []);
      assert.deepEqual(await subnetFiles(), ["10.244.200.0-24"]);
    });

    test("reuses the subnet from the previous subnet.env when nobody holds it", async () => {
      const cfg = await config();
      const registry = await openRegistry();
      const envPath = join(dir, "run", "subnet.env");
      await writeSubnetEnv(envPath, {
        network: cfg.network,
        subnet: prefix("10.244.77.0/24"),
        mtu: 1472,
        ipMasq: false,
      });
      const previous = (await readSubnetEnv(envPath))?.subnet ?? null;
      const lease = await acquireLease(registry, cfg, { publicIp: HOST_A, previousSubnet: previous, random: () => 0 });
      assert.equal(formatPrefix(lease.subnet), "10.244.77.0/24");
      assert.notEqual(lease.expiresAt, null);
    });

    test("ignores a previous subnet that another host holds or that does not fit the config", async () => {
      const cfg = await config();
      const registry = await openRegistry();
      await registry.createLease(prefix("10.244.77.0/24"), HOST_B, 100);
      const held = await acquireLease(registry, cfg, {
        publicIp: HOST_A,
        previousSubnet: prefix("10.244.77.0/24"),
        random: () => 0,
      });
      assert.equal(formatPrefix(held.subnet), "10.244.1.0/24");
      const misfit = await acquireLease(registry, cfg, {
        publicIp: HOST_C,
        previousSubnet: prefix("10.244.80.0/25"),
        random: () => 0,
      });
      assert.equal(formatPrefix(misfit.subnet), "10.244.2.0/24");
      assert.deepEqual(await subnetFiles(), ["10.244.1.0-24", "10.244.2.0-24", "10.244.77.0-24"]);
    });

    test("deletes our lease when it no longer fits SubnetMin..SubnetMax or SubnetLen, then takes a new one", async () => {
      const cfg = await config('{"Network":"10.244.0.0/16","SubnetMin":"10.244.10.0","SubnetMax":"10.244.20.0"}');
      const registry = await openRegistry();
      await registry.createLease(prefix("10.244.5.0/24"), HOST_A, 100);
      await registry.createLease(prefix("10.244.12.0/25"), HOST_A, 100);
      const lease = await acquireLease(registry, cfg, { publicIp: HOST_A, random: () => 0 });
      assert.equal(formatPrefix(lease.subnet), "10.244.10.0/24");
      assert.deepEqual(await subnetFiles(), ["10.244.10.0-24"]);
      assert.deepEqual(await readdir(join(dir, "leases")), ["10.244.10.0-24"]);
    });

    test("a lease of another length blocks the subnets it overlaps", async () => {
      const cfg = await config();
      const registry = await openRegistry();
      await registry.createLease(prefix("10.244.0.0/22"), HOST_B, 100);
      const lease = await acquireLease(registry, cfg, { publicIp: HOST_A, random: () => 0 });
      assert.equal(formatPrefix(lease.subnet), "10.244.4.0/24");
    });

    test("fails with out of subnets, naming the network, when every subnet is held", async () => {
      const cfg = await config('{"Network":"10.9.9.16/28"}');
      const registry = await openRegistry();
      const taken = [];
      for (const host of [HOST_A, HOST_B, HOST_C])
        taken.push(formatPrefix((await acquireLease(registry, cfg, { publicIp: host })).subnet));
      assert.deepEqual(taken.sort(), ["10.9.9.20/30", "10.9.9.24/30", "10.9.9.28/30"]);
      await assert.rejects(acquireLease(registry, cfg, { publicIp: ip("198.18.0.4") }), {
        message: "out of subnets in 10.9.9.16/28: every /30 from 10.9.9.20 to 10.9.9.28 is leased",
      });
    });

    test("20 hosts racing in one process over separate registry instances get 20 distinct subnets", async () => {
      // 63 subnets for 20 hosts: many pick the same one in the first round.
      const cfg = await config('{"Network":"10.5.0.0/16","SubnetLen":22}');
      const racers = await Promise.all(Array.from({ length: 20 }, () => openRegistry()));
      const leases = await Promise.all(
        racers.map((registry, i) => acquireLease(registry, cfg, { publicIp: HOST_A + i, ttlSeconds: 100 })),
      );
      const subnets = new Set(leases.map((lease) => formatPrefix(lease.subnet)));
      assert.equal(subnets.size, 20);
      const files = await subnetFiles();
      assert.equal(files.length, 20);
      for (const lease of leases) {
        const name = `${formatIpv4(lease.subnet.base)}-${lease.subnet.len}`;
        assert.equal(
          await readFile(join(dir, "subnets", name), "utf8"),
          `{"PublicIP":"${formatIpv4(lease.publicIp)}","PublicIPv6":null}`,
        );
      }
      assert.deepEqual(await readdir(join(dir, "tmp")), []);
    });

    test("20 hosts racing from 4 processes get 20 distinct subnets", async () => {
      await config('{"Network":"10.5.0.0/16","SubnetLen":22}');
      const module = (path: string) => JSON.stringify(new URL(path, import.meta.url).href);
      const script = join(dir, "race-acquire.mjs");
      await writeFile(
        script,
        `import { FileRegistry } from ${module("../control/registry/file.js")};
import { acquireLease } from ${module("../control/lease-manager.js")};
import { parseNetworkConfig } from ${module("../control/config.js")};
const [dir, firstIp, count] = process.argv.slice(2);
const registries = await Promise.all(Array.from({ length: Number(count) }, () => FileRegistry.open(dir)));
const config = parseNetworkConfig(await registries[0].getNetworkConfig());
process.stdout.write("ready\\n");
process.stdin.once("data", async () => {
  const leases = await Promise.all(
    registries.map((registry, i) => acquireLease(registry, config, { publicIp: Number(firstIp) + i, ttlSeconds: 100 })),
  );
  process.stdout.write(JSON.stringify(leases) + "\\n", () => process.exit(0));
});
`,
      );
      const lines = await raceChildren(Array.from({ length: 4 }, (_, i) => [script, dir, String(HOST_A + 5 * i), "5"]));
      const leases = lines.flatMap((line) => JSON.parse(line) as Lease[]);
      assert.equal(leases.length, 20);
      assert.equal(new Set(leases.map((lease) => formatPrefix(lease.subnet))).size, 20);
      assert.equal(new Set(leases.map((lease) => lease.publicIp)).size, 20);
      const files = await subnetFiles();
      assert.equal(files.length, 20);
      for (const lease of leases) {
        assert.equal(
          await readFile(join(dir, "subnets", `${formatIpv4(lease.subnet.base)}-${lease.subnet.len}`), "utf8"),
          `{"PublicIP":"${formatIpv4(lease.publicIp)}","PublicIPv6":null}`,
        );
      }
    });
  });

  describe("hostile keys (issue 13, finding 1)", () => {
    test("a foreign key outside SubnetMin..SubnetMax or covering the Network does not use up the range", async () => {
      const cfg = await config(
        '{"Network":"10.244.0.0/16","SubnetMin":"10.244.5.0","SubnetMax":"10.244.5.0","Backend":{"Type":"udp"}}',
      );
      const registry = await openRegistry();
      // Keys the registry accepts but no host of this Network could hold.
      await writeFile(join(dir, "subnets", "10.244.0.0-16"), '{"PublicIP":"198.18.0.2","PublicIPv6":null}');
      await writeFile(join(dir, "subnets", "10.244.200.0-24"), '{"PublicIP":"198.18.0.3","PublicIPv6":null}');
      await writeFile(join(dir, "subnets", "192.168.7.0-24"), '{"PublicIP":"198.18.0.4","PublicIPv6":null}');
      const lease = await acquireLease(registry, cfg, { publicIp: HOST_A, random: () => 0 });
      assert.equal(formatPrefix(lease.subnet), "10.244.5.0/24");
    });

    test("bad keys never reach a snapshot, each is warned about once, and a throwing consumer keeps the manager alive", async () => {
      await config();
      const other = await openRegistry();
      await writeFile(join(dir, "subnets", "10.244.0.0-16"), '{"PublicIP":"198.18.0.2","PublicIPv6":null}');
      await writeFile(join(dir, "subnets", "10.244.1.0-25"), '{"PublicIP":"198.18.0.3","PublicIPv6":null}');
      await writeFile(join(dir, "subnets", "10.244.61.0-24"), '{"PublicIP":"224.0.0.5","PublicIPv6":null}');
      const log = new RecordingLogger();
      const snapshots: string[][] = [];
      let throwNext = true;
      const changed = new Condition();
      const m = manager({
        registry: await openRegistry({ rescanIntervalMs: 20 }),
        publicIp: HOST_A,
        random: () => 0.5,
        log,
        onLeases: (leases) => {
          snapshots.push(describeLeases(leases));
          changed.notify();
          if (throwNext) {
            throwNext = false;
            throw new Error("consumer failed");
          }
        },
      });
      const own = await m.start();
      assert.equal(own.subnet.len, 24);
      await changed.until("the first snapshot", () => snapshots.length >= 1);
      // Another key naming our own address (at start it would have been our reservation),
      // written whole: a plain writeFile can be read empty between its open and its write,
      // a key that is then rightly warned about as "value is not JSON" too.
      await putKey("10.244.60.0-24", '{"PublicIP":"198.18.0.1","PublicIPv6":null}');
      await other.createLease(prefix("10.244.70.0/24"), HOST_B, 100);
      await changed.until(
        "the peer after the throw",
        () => snapshots.at(-1)?.includes("10.244.70.0/24 198.18.0.2") === true,
      );
      const warnings = () =>
        log.lines.filter((l) => l.msg === "ignoring lease").map((l) => (l.obj as { key: string }).key);
      await log.changed.until(
        "the own-address key ignored",
        () => m.ignoredCount === 4,
        () => ({ ignoredCount: m.ignoredCount, warnings: warnings() }),
      );
      for (const snapshot of snapshots) {
        assert.deepEqual(
          snapshot.filter((l) => !l.startsWith("10.244.70.0/24")),
          [],
          `only the good peer is ever published: ${snapshot}`,
        );
      }
      assert.deepEqual(warnings().sort(), ["10.244.0.0-16", "10.244.1.0-25", "10.244.60.0-24", "10.244.61.0-24"]);
      assert.equal(m.ignoredCount, 4);
      assert.ok(log.messages().includes("lease snapshot not applied, keeping the last good leases"));
    });

    for (const rescanIntervalMs of [HOUR, 20]) {
      test(`a key unreadable for a while counts as ignored only while it is (rescans every ${rescanIntervalMs} ms)`, async () => {
        await config();
        const other = await openRegistry();
        await other.createLease(prefix("10.244.50.0/24"), HOST_B, 100);
        const log = new RecordingLogger();
        const recorder = new ManagerRecorder();
        const m = manager({
          registry: await openRegistry({ rescanIntervalMs }),
          publicIp: HOST_A,
          random: () => 0,
          log,
          ...recorder.handlers(),
        });
        await m.start();
        const count = () => ({ ignoredCount: m.ignoredCount, skipped: recorder.skipped });
        // A routed peer's key half-written, then whole again with the same value.
        await putKey("10.244.50.0-24", '{"PublicIP":"198.18');
        await log.changed.until("the half-written peer", () => m.ignoredCount === 1, count);
        await putKey("10.244.50.0-24", '{"PublicIP":"198.18.0.2","PublicIPv6":null}');
        // Changes arrive in order: once a peer written after the repair is routed, the repair was seen.
        await other.createLease(prefix("10.244.71.0/24"), HOST_C, 100);
        await recorder.until(
          "the peer after the repair",
          () => recorder.latest()?.includes("10.244.71.0/24 198.18.0.3") === true,
        );
        assert.equal(m.ignoredCount, 0, "the repaired key is no longer ignored");
        // A new key that is garbage first, then a lease naming our own address: ignored once, for that.
        await putKey("10.244.60.0-24", "{");
        await log.changed.until("the garbage key", () => m.ignoredCount === 1, count);
        await putKey("10.244.60.0-24", '{"PublicIP":"198.18.0.1","PublicIPv6":null}');
        const ownAddress = () =>
          log.lines.some((l) => /own address/.test(String((l.obj as { reason?: string }).reason)));
        await log.changed.until("the own-address key", ownAddress, count);
        assert.equal(m.ignoredCount, 1);
        // Garbage that goes away is forgotten.
        await putKey("10.244.61.0-24", "{");
        await log.changed.until("the second garbage key", () => m.ignoredCount === 2, count);
        await rm(join(dir, "subnets", "10.244.61.0-24"));
        await other.createLease(prefix("10.244.72.0/24"), HOST_C, 100);
        await recorder.until(
          "the peer after the removal",
          () => recorder.latest()?.includes("10.244.72.0/24 198.18.0.3") === true,
        );
        assert.equal(m.ignoredCount, 1, "the removed garbage is no longer ignored");
        assert.deepEqual(recorder.latest(), [
          "10.244.50.0/24 198.18.0.2",
          "10.244.71.0/24 198.18.0.3",
          "10.244.72.0/24 198.18.0.3",
        ]);
        assert.equal(recorder.revoked, 0);
      });
    }
  });

  describe("freeSubnets", () => {
    test("agrees with a brute-force overlap check on random lease sets", () => {
      const cfg = parseNetworkConfig(
        '{"Network":"10.0.0.0/20","SubnetLen":26,"SubnetMin":"10.0.1.0","SubnetMax":"10.0.14.192"}',
      );
      let seed = 42;
      const random = () => {
        seed = (seed * 1103515245 + 12345) % 2 ** 31;
        return seed / 2 ** 31;
      };
      for (let round = 0; round < 200; round++) {
        const leases: Lease[] = [];
        const count = Math.floor(random() * 40);
        for (let i = 0; i < count; i++) {
          const len = 22 + Math.floor(random() * 9);
          const size = prefixSize(len);
          const base = cfg.network.base + Math.floor((random() * prefixSize(20)) / size) * size;
          leases.push({ subnet: { base, len }, publicIp: HOST_B, expiresAt: null });
        }
        const limit = 1 + Math.floor(random() * 60);
        const expected: number[] = [];
        const size = prefixSize(cfg.subnetLen);
        for (let base = cfg.subnetMin; base <= cfg.subnetMax && expected.length < limit; base += size) {
          const clash = leases.some(
            (l) => l.subnet.base < base + size && base < l.subnet.base + prefixSize(l.subnet.len),
          );
          if (!clash) expected.push(base);
        }
        assert.deepEqual(freeSubnets(cfg, leases, limit), expected, `round ${round}`);
      }
    });
  });

  describe("LeaseManager", () => {
    test("waits for a missing config, naming where it looks, and starts once it is written", async () => {
      const registry = await openRegistry();
      const log = new RecordingLogger();
      const m = manager({ registry, publicIp: HOST_A, configRetryMs: 10, log, random: () => 0 });
      const started = m.start();
      const waiting = `waiting for network config at dir ${dir}/config`;
      await log.changed.until("the waiting log line", () => log.messages().includes(waiting));
      assert.equal(m.lease, null);
      await registry.setNetworkConfig(NETWORK_16);
      const lease = await started;
      assert.equal(formatPrefix(lease.subnet), "10.244.1.0/24");
      assert.equal(m.config?.subnetLen, 24);
      assert.equal(m.lease, lease);
      assert.ok(log.messages().filter((msg) => msg === waiting).length >= 1);
    });

    test("a bad config stops start with the ConfigError", async () => {
      const registry = await openRegistry();
      await registry.setNetworkConfig('{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}');
      const m = manager({ registry, publicIp: HOST_A });
      await assert.rejects(m.start(), (err: unknown) => {
        assert.ok(err instanceof ConfigError);
        assert.equal(
          err.message,
          'network config: Backend.Type "vxlan" is not supported; weft implements only the udp backend',
        );
        return true;
      });
      assert.deepEqual(await subnetFiles(), []);
    });

    test("publishes peers (never itself) and follows puts, deletes and expiries from other instances", async () => {
      await config();
      const other = await openRegistry();
      await other.createLease(prefix("10.244.50.0/24"), HOST_B, 100);
      await other.createLease(prefix("10.244.51.0/24"), HOST_C, 10);
      const recorder = new ManagerRecorder();
      // Rescans every 20 ms: the fake clock jumps past an expiry, which no timer can foresee.
      const m = manager({
        registry: await openRegistry({ rescanIntervalMs: 20 }),
        publicIp: HOST_A,
        random: () => 0,
        ...recorder.handlers(),
      });
      const lease = await m.start();
      assert.equal(formatPrefix(lease.subnet), "10.244.1.0/24");
      await recorder.until("the first snapshot", () => recorder.snapshots.length > 0);
      assert.deepEqual(recorder.latest(), ["10.244.50.0/24 198.18.0.2", "10.244.51.0/24 198.18.0.3"]);
      assert.deepEqual([...m.peers.keys()].sort(), ["10.244.50.0-24", "10.244.51.0-24"]);
      assert.equal(m.connected, true);

      await other.createLease(prefix("10.244.52.0/24"), ip("198.18.0.4"), 100);
      await recorder.until("the new peer", () => recorder.latest()?.includes("10.244.52.0/24 198.18.0.4") === true);

      await other.deleteLease(prefix("10.244.50.0/24"));
      await recorder.until(
        "the deleted peer gone",
        () => recorder.latest()?.includes("10.244.50.0/24 198.18.0.2") === false,
      );

      clock = T0 + 20_000;
      await recorder.until(
        "the expired peer gone",
        () => recorder.latest()?.includes("10.244.51.0/24 198.18.0.3") === false,
      );
      assert.deepEqual(recorder.latest(), ["10.244.52.0/24 198.18.0.4"]);
      assert.ok(recorder.snapshots.every((snapshot) => !describeLeases(snapshot).includes("10.244.1.0/24 198.18.0.1")));
      assert.equal(recorder.revoked, 0);
    });

    test("a burst of changes seen in one rescan is published as one snapshot", async () => {
      await config();
      const recorder = new ManagerRecorder();
      // inotify delivers the burst below in one turn, which is read as one batch.
      const m = manager({
        registry: await openRegistry(),
        publicIp: HOST_A,
        random: () => 0,
        ...recorder.handlers(),
      });
      await m.start();
      await recorder.until(
        "the watch's first scan",
        () => recorder.connections.length > 0 && recorder.snapshots.length > 0,
      );
      const before = recorder.snapshots.length;
      for (let i = 0; i < 5; i++) {
        writeFileSync(join(dir, "subnets", `10.244.${100 + i}.0-24`), `{"PublicIP":"198.18.1.${i}","PublicIPv6":null}`);
      }
      await recorder.until("all five peers", () => (recorder.latest()?.length ?? 0) === 5);
      // Uncoalesced publishes would be queued before this turn ends; let them run first.
      await new Promise((resolve) => setImmediate(resolve));
      assert.equal(recorder.snapshots.length, before + 1);
    });

    test("reuses its lease by PublicIP after a restart, and stop() leaves the lease in place", async () => {
      await config();
      const first = manager({ registry: await openRegistry(), publicIp: HOST_A, random: () => 0.5 });
      const lease = await first.start();
      first.stop();
      assert.deepEqual(await subnetFiles(), [`${formatIpv4(lease.subnet.base)}-24`]);

      clock = T0 + 3_600_000;
      const second = manager({ registry: await openRegistry(), publicIp: HOST_A, random: () => 0 });
      const again = await second.start();
      assert.deepEqual(again.subnet, lease.subnet);
      assert.equal(again.expiresAt, T0 + 3_600_000 + 86_400_000);
      assert.equal(second.expiresAt, again.expiresAt);
      assert.equal(second.nextRenewalAt, T0 + 3_600_000 + 86_400_000 - 3_600_000);
    });

    test("a reused reservation is never scheduled for renewal", async () => {
      await config();
      await writeFile(join(dir, "subnets", "10.244.9.0-24"), '{"PublicIP":"198.18.0.1","PublicIPv6":null}');
      const m = manager({ registry: await openRegistry(), publicIp: HOST_A });
      const lease = await m.start();
      assert.deepEqual(lease, { subnet: prefix("10.244.9.0/24"), publicIp: HOST_A, expiresAt: null });
      assert.equal(m.expiresAt, null);
      assert.equal(m.nextRenewalAt, null);
      assert.deepEqual(await readdir(join(dir, "leases")), []);
    });

    test("renews before expiry, moving the expiry forward each time", async () => {
      await config();
      const registry = await openRegistry({ realClock: true });
      const recorder = new ManagerRecorder();
      // 60 s leases renewed when less than 59.8 s remain: a renewal every ~0.2 s.
      const m = new LeaseManager({
        registry,
        publicIp: HOST_A,
        ttlSeconds: 60,
        renewMarginMinutes: 59.8 / 60,
        ...recorder.handlers(),
      });
      managers.push(m);
      const lease = await m.start();
      assert.ok(lease.expiresAt !== null);
      await recorder.until("two renewals", () => recorder.renewed.length >= 2);
      const [firstRenewal, secondRenewal] = recorder.renewed as [Lease, Lease];
      assert.ok((firstRenewal.expiresAt as number) > lease.expiresAt, "first renewal moved the expiry");
      assert.ok(
        (secondRenewal.expiresAt as number) > (firstRenewal.expiresAt as number),
        "second renewal moved it again",
      );
      m.stop();
      const name = `${formatIpv4(lease.subnet.base)}-24`;
      // A renewal may still be in flight at stop(); what is on disk is at least the second one.
      assert.ok(Number(await readFile(join(dir, "leases", name), "utf8")) >= (secondRenewal.expiresAt as number));
      assert.equal(m.nextRenewalAt, null);
    });

    test("retries a failed renewal", async () => {
      await config();
      const registry = await openRegistry({ realClock: true });
      let failures = 0;
      const flaky: Registry = Object.create(registry, {
        updateLease: {
          value: async (lease: Lease, publicIp: number, ttl: number) => {
            if (failures++ === 0) throw new Error("registry briefly unavailable");
            return registry.updateLease(lease, publicIp, ttl);
          },
        },
      });
      const log = new RecordingLogger();
      const recorder = new ManagerRecorder();
      const m = new LeaseManager({
        registry: flaky,
        publicIp: HOST_A,
        ttlSeconds: 60,
        renewMarginMinutes: 59.9 / 60,
        renewRetryMs: 10,
        log,
        ...recorder.handlers(),
      });
      managers.push(m);
      await m.start();
      await recorder.until("a renewal", () => recorder.renewed.length >= 1);
      assert.ok(failures >= 2);
      assert.ok(log.messages().includes("lease renewal failed, retrying"));
    });

    test("deleting our own unexpired key revokes the lease, as flannel does", async () => {
      await config();
      const log = new RecordingLogger();
      const recorder = new ManagerRecorder();
      const m = manager({ registry: await openRegistry(), publicIp: HOST_A, log, ...recorder.handlers() });
      const lease = await m.start();
      clock = (lease.expiresAt as number) - 1000;
      const other = await openRegistry();
      await other.deleteLease(lease.subnet);
      await recorder.until("revocation", () => recorder.revoked > 0);
      assert.equal(recorder.revoked, 1);
      assert.equal(m.nextRenewalAt, null);
      assert.ok(log.lines.some((line) => line.level === "error" && line.msg === "lease has been revoked"));
      assert.deepEqual(await subnetFiles(), [], "not re-created");
    });

    describe("clock jumps", () => {
      let monotonic = 0;
      beforeEach(() => {
        monotonic = 0;
      });

      /** A manager checking the clocks every 20 ms, and a way to wait for some of those checks to pass. */
      async function jumpWatcher(log: RecordingLogger, recorder: ManagerRecorder, checkIntervalMs = 20) {
        await config();
        const registry = await openRegistry();
        let checks = 0;
        const checked = new Condition();
        // Each periodic check re-reads the config right after comparing the clocks.
        const counting: Registry = Object.create(registry, {
          getNetworkConfig: {
            value: async () => {
              checks++;
              checked.notify();
              return registry.getNetworkConfig();
            },
          },
        });
        const m = manager({
          registry: counting,
          publicIp: HOST_A,
          random: () => 0,
          checkIntervalMs,
          monotonicNow: () => monotonic,
          log,
          ...recorder.handlers(),
        });
        const lease = await m.start();
        const afterChecks = async (n: number) => {
          const target = checks + n;
          await checked.until(`${n} more clock checks`, () => checks >= target);
        };
        return { m, lease, registry, afterChecks };
      }

      const jumpLines = (log: RecordingLogger) =>
        log.lines.filter((line) => line.level === "warn" && line.msg?.startsWith("clock jumped by"));

      test("time passing on both clocks is not a jump", async () => {
        const log = new RecordingLogger();
        const { afterChecks } = await jumpWatcher(log, new ManagerRecorder());
        for (let i = 0; i < 5; i++) {
          clock += 60_000;
          monotonic += 60_000;
          await afterChecks(1);
        }
        assert.deepEqual(jumpLines(log), []);
      });

      test("a forward jump past the renewal point renews at once and is logged once", async () => {
        const log = new RecordingLogger();
        const recorder = new ManagerRecorder();
        const { m, lease, afterChecks } = await jumpWatcher(log, recorder);
        assert.equal(m.nextRenewalAt, (lease.expiresAt as number) - HOUR);
        // 23.5 h on the wall clock, none on the monotonic one: the renewal timer still has 23 h to go.
        clock = T0 + 23.5 * HOUR;
        await recorder.until("the renewal", () => recorder.renewed.length > 0);
        assert.equal(recorder.renewed[0]?.expiresAt, clock + 24 * HOUR);
        assert.equal(await readFile(join(dir, "leases", "10.244.1.0-24"), "utf8"), String(clock + 24 * HOUR));
        await afterChecks(3);
        assert.equal(m.nextRenewalAt, clock + 23 * HOUR);
        assert.deepEqual(
          jumpLines(log).map((line) => line.msg),
          ["clock jumped by 84600 s"],
        );
        assert.equal(recorder.revoked, 0);
      });

      test("a backward jump neither renews nor revokes, and the renewal stays due at expiry minus margin", async () => {
        const log = new RecordingLogger();
        const recorder = new ManagerRecorder();
        const { m, lease, afterChecks } = await jumpWatcher(log, recorder);
        clock = T0 - 2 * HOUR;
        await log.changed.until("the jump", () => jumpLines(log).length > 0);
        await afterChecks(5);
        assert.deepEqual(
          jumpLines(log).map((line) => line.msg),
          ["clock jumped by -7200 s"],
        );
        assert.equal(recorder.renewed.length, 0);
        assert.equal(recorder.revoked, 0);
        assert.equal(m.nextRenewalAt, (lease.expiresAt as number) - HOUR);
        assert.equal(m.lease?.expiresAt, lease.expiresAt);
      });

      test("a lease that expired during a jump and was removed by another instance's scan is re-created on the same subnet", async () => {
        const log = new RecordingLogger();
        const recorder = new ManagerRecorder();
        // Clock checks an hour apart: the re-creation below comes from the delete alone.
        const { m, lease } = await jumpWatcher(log, recorder, HOUR);
        clock = T0 + 25 * HOUR;
        const other = await openRegistry();
        // The scan removes the expired lease; our watch may already be re-creating it meanwhile.
        const seen = (await other.getLeases()).leases;
        assert.ok(
          seen.every((l) => l.expiresAt !== lease.expiresAt),
          "the other instance's scan does not list the expired lease",
        );
        await recorder.until("the re-creation", () => recorder.renewed.length > 0);
        const fresh = await (await openRegistry()).getLeases();
        assert.deepEqual(fresh.leases, [m.lease], "the registry settles on the re-created lease with its expiry");
        assert.deepEqual(m.lease, { subnet: lease.subnet, publicIp: HOST_A, expiresAt: clock + 24 * HOUR });
        assert.deepEqual(await subnetFiles(), ["10.244.1.0-24"]);
        assert.equal(
          await readFile(join(dir, "subnets", "10.244.1.0-24"), "utf8"),
          '{"PublicIP":"198.18.0.1","PublicIPv6":null}',
        );
        assert.equal(m.nextRenewalAt, clock + 23 * HOUR);
        assert.equal(recorder.revoked, 0);
        assert.ok(log.messages().includes("lease expired and was removed, re-creating it"));
      });

      test("a lease that expired and was taken by another host meanwhile is revoked", async () => {
        await config();
        // Events come only from the test, so the other host's create lands before our delete is seen.
        const { spy, handlers } = silentWatch(await openRegistry());
        const log = new RecordingLogger();
        const recorder = new ManagerRecorder();
        const m = manager({ registry: spy, publicIp: HOST_A, random: () => 0, log, ...recorder.handlers() });
        const lease = await m.start();
        clock = T0 + 25 * HOUR;
        const other = await openRegistry();
        await other.getLeases();
        assert.ok(await other.createLease(lease.subnet, HOST_B, 100));
        handlers()?.onEvent({ type: "delete", subnet: lease.subnet });
        await recorder.until("revocation", () => recorder.revoked > 0);
        const revoked = log.lines.find((line) => line.msg === "lease has been revoked");
        assert.deepEqual(revoked?.obj, { why: "lease 10.244.1.0/24 was taken by 198.18.0.2 after it expired" });
        assert.ok(log.messages().includes("lease expired and was removed, re-creating it"));
      });
    });

    test("our key rewritten to name another host revokes the lease", async () => {
      await config();
      const recorder = new ManagerRecorder();
      const m = manager({ registry: await openRegistry(), publicIp: HOST_A, ...recorder.handlers() });
      const lease = await m.start();
      await writeFile(
        join(dir, "subnets", `${formatIpv4(lease.subnet.base)}-24`),
        '{"PublicIP":"198.18.0.2","PublicIPv6":null}',
      );
      await recorder.until("revocation", () => recorder.revoked > 0);
      assert.equal(recorder.revoked, 1);
    });

    test("garbage under subnets/ is reported through onSkipped and logged, and the manager goes on", async () => {
      await config();
      const log = new RecordingLogger();
      const recorder = new ManagerRecorder();
      const m = manager({
        registry: await openRegistry(),
        publicIp: HOST_A,
        random: () => 0,
        log,
        ...recorder.handlers(),
      });
      await m.start();
      await recorder.until("the first snapshot", () => recorder.snapshots.length > 0);
      await writeFile(join(dir, "subnets", "10.244.30.0-24"), "not json at all");
      await recorder.until("the skipped key", () => recorder.skipped.length > 0);
      assert.deepEqual(recorder.skipped, [
        { key: join(dir, "subnets", "10.244.30.0-24"), reason: "value is not JSON" },
      ]);
      assert.ok(log.lines.some((line) => line.level === "warn" && line.msg === "ignoring lease"));
      await (await openRegistry()).createLease(prefix("10.244.31.0/24"), HOST_B, 100);
      await recorder.until("the next peer", () => recorder.latest()?.includes("10.244.31.0/24 198.18.0.2") === true);
      assert.equal(recorder.revoked, 0);
    });

    test("a resync replaces the peer map, and a resync without our lease re-creates it (the store came back empty)", async () => {
      await config();
      const registry = await openRegistry();
      await registry.createLease(prefix("10.244.60.0/24"), HOST_B, 100);
      // Events come only from the test's own onResync calls: a store that
      // lost its data says nothing, it just lists less.
      const { spy, handlers } = silentWatch(registry);
      const recorder = new ManagerRecorder();
      const m = manager({ registry: spy, publicIp: HOST_A, random: () => 0, ...recorder.handlers() });
      const lease = await m.start();
      await recorder.until("the first snapshot", () => recorder.snapshots.length > 0);
      assert.deepEqual(recorder.latest(), ["10.244.60.0/24 198.18.0.2"]);
      const resync = handlers();
      assert.ok(resync !== null);

      const peer = { subnet: prefix("10.244.61.0/24"), publicIp: HOST_C, expiresAt: null };
      resync.onResync({ leases: [lease, peer], revision: 1000, skipped: [] });
      await recorder.until("the resynced snapshot", () => recorder.latest()?.join() === "10.244.61.0/24 198.18.0.3");
      assert.deepEqual([...m.peers.keys()], ["10.244.61.0-24"]);

      // The store lost everything: our key is gone, nobody else holds the subnet.
      await registry.deleteLease(lease.subnet);
      resync.onResync({ leases: [peer], revision: 1001, skipped: [] });
      await recorder.until("re-creation", () => recorder.renewed.length > 0);
      const relisted = (await registry.getLeases()).leases;
      assert.ok(
        relisted.some((l) => l.subnet.base === lease.subnet.base && l.publicIp === HOST_A && l.expiresAt !== null),
      );
      assert.equal(recorder.revoked, 0);
      assert.equal(m.lease?.subnet.base, lease.subnet.base);

      // A resync that shows our subnet held by another host is a revocation.
      resync.onResync({ leases: [{ ...lease, publicIp: HOST_C }, peer], revision: 1002, skipped: [] });
      await recorder.until("revocation", () => recorder.revoked > 0);
      assert.equal(recorder.revoked, 1);
    });

    test("a resync without our lease whose subnet another host took meanwhile revokes it", async () => {
      await config();
      const registry = await openRegistry();
      // Events come only from the test's own onResync calls: a store that
      // lost its data says nothing, it just lists less.
      const { spy, handlers } = silentWatch(registry);
      const recorder = new ManagerRecorder();
      const m = manager({ registry: spy, publicIp: HOST_A, random: () => 0, ...recorder.handlers() });
      const lease = await m.start();
      await registry.deleteLease(lease.subnet);
      await registry.createLease(lease.subnet, HOST_B, 100);
      handlers()?.onResync({ leases: [], revision: 2000, skipped: [] });
      await recorder.until("revocation", () => recorder.revoked > 0);
      assert.equal(recorder.revoked, 1);
    });

    test("a network config changed to another Network stops the manager with a sentence naming both", async () => {
      await config();
      const messages: string[] = [];
      let signal: () => void = () => {};
      const changed = new Promise<void>((resolve) => {
        signal = resolve;
      });
      const m = manager({
        registry: await openRegistry(),
        publicIp: HOST_A,
        checkIntervalMs: 20,
        onConfigChanged: (message) => {
          messages.push(message);
          signal();
        },
      });
      await m.start();
      await config('{"Network":"10.244.0.0/16","Backend":{"Type":"udp","Port":8285}}'); // same network: no change
      await new Promise((r) => setTimeout(r, 100));
      assert.deepEqual(messages, []);
      await config('{"Network":"10.245.0.0/16"}');
      // The manager's timers are unref'd (they must not hold a daemon open): hold the loop here.
      const keepAlive = setInterval(() => {}, 1000);
      await changed;
      clearInterval(keepAlive);
      assert.deepEqual(messages, [
        "network config changed from 10.244.0.0/16 (SubnetLen 24) to 10.245.0.0/16 (SubnetLen 24); restart weftd to join the new network",
      ]);
      assert.equal(m.nextRenewalAt, null, "stopped");
    });

    test("refuses a renew margin as long as the TTL", () => {
      assert.throws(
        () =>
          new LeaseManager({ registry: {} as Registry, publicIp: HOST_A, ttlSeconds: 3600, renewMarginMinutes: 60 }),
        { message: "subnet lease renew margin 60 minutes is not between 0 and the lease TTL of 3600 s" },
      );
    });

    test("stop() during the wait for config ends start with an error", async () => {
      const m = manager({ registry: await openRegistry(), publicIp: HOST_A, configRetryMs: 10 });
      const started = m.start();
      m.stop();
      await assert.rejects(started, { message: "lease manager was stopped before it finished starting" });
      assert.deepEqual(await subnetFiles(), []);
    });
  });
});

describe("lease manager over the memory registry", () => {
  let clock = T0;
  let registry: MemoryRegistry;
  let batches: PeerBatch[];
  let revoked: number;
  const managers: LeaseManager[] = [];
  const describeBatch = (b: PeerBatch) =>
    b.changes.map(({ key, before, after }) => {
      if (after === null) return `- ${key}`;
      return `${before === null ? "+" : "~"} ${key} ${formatIpv4(after.publicIp)}`;
    });

  function manager(over: Registry = registry): LeaseManager {
    const m = new LeaseManager({
      registry: over,
      publicIp: HOST_A,
      random: () => 0,
      now: () => clock,
      onPeers: (batch) => batches.push(batch),
      onRevoked: () => revoked++,
    });
    managers.push(m);
    return m;
  }

  async function settled(): Promise<void> {
    // Registry events reach the manager in one turn, its batch in the next.
    for (let i = 0; i < 3; i++) await new Promise((r) => setImmediate(r));
  }

  beforeEach(() => {
    clock = T0;
    registry = new MemoryRegistry({ now: () => clock });
    registry.setNetworkConfig(NETWORK_16);
    batches = [];
    revoked = 0;
  });
  afterEach(async () => {
    for (const m of managers.splice(0)) m.stop();
    await registry.close();
  });

  test("hands over every peer as the first batch before start() resolves, never itself", async () => {
    await registry.createLease(prefix("10.244.50.0/24"), HOST_B, 100);
    registry.reserve(prefix("10.244.51.0/24"), HOST_C);
    const m = manager();
    const lease = await m.start();
    assert.equal(formatPrefix(lease.subnet), "10.244.1.0/24");
    assert.equal(batches.length, 1);
    assert.equal(batches[0]?.initial, true);
    assert.deepEqual(describeBatch(batches[0] as PeerBatch), [
      "+ 10.244.50.0-24 198.18.0.2",
      "+ 10.244.51.0-24 198.18.0.3",
    ]);
  });

  test("lists once at start and watches from that listing: what changes between acquire() and follow() arrives", async () => {
    let listings = 0;
    const counting: Registry = Object.create(registry, {
      getLeases: {
        value: () => {
          listings++;
          return registry.getLeases();
        },
      },
    });
    await registry.createLease(prefix("10.244.50.0/24"), HOST_B, 100);
    await registry.createLease(prefix("10.244.51.0/24"), HOST_C, 100);
    const m = manager(counting);
    const lease = await m.acquire();
    // Between the listing and the watch (weftd opens its dataplane here): one peer comes, one goes.
    await registry.createLease(prefix("10.244.52.0/24"), HOST_C, 100);
    await registry.deleteLease(prefix("10.244.50.0/24"));
    await m.follow();
    await settled();
    assert.equal(listings, 1, "one listing at start");
    assert.deepEqual(batches.map(describeBatch), [
      ["+ 10.244.50.0-24 198.18.0.2", "+ 10.244.51.0-24 198.18.0.3"],
      ["+ 10.244.52.0-24 198.18.0.3", "- 10.244.50.0-24"],
    ]);
    assert.deepEqual([...m.peers.keys()].sort(), ["10.244.51.0-24", "10.244.52.0-24"]);
    assert.deepEqual(m.lease, lease, "our own write, replayed by the watch, is the lease acquire() returned");
    assert.equal(revoked, 0);
  });

  test("our lease taken by another host between acquire() and follow() is revoked once watching", async () => {
    const m = manager();
    const lease = await m.acquire();
    await registry.deleteLease(lease.subnet);
    assert.ok(await registry.createLease(lease.subnet, HOST_B, 100));
    await m.follow();
    await settled();
    assert.equal(revoked, 1);
    assert.equal(m.nextRenewalAt, null, "stopped");
  });

  test("follows puts, rewrites, deletes and expiries, each as its own batch", async () => {
    await registry.createLease(prefix("10.244.50.0/24"), HOST_B, 100);
    await manager().start();
    await registry.createLease(prefix("10.244.52.0/24"), HOST_C, 10);
    await settled();
    registry.put("10.244.50.0-24", '{"PublicIP":"198.18.0.9","PublicIPv6":null}');
    await settled();
    await registry.deleteLease(prefix("10.244.50.0/24"));
    await settled();
    clock = T0 + 11_000;
    registry.expire();
    await settled();
    assert.deepEqual(
      batches.slice(1).map((b) => [b.initial, ...describeBatch(b)]),
      [
        [false, "+ 10.244.52.0-24 198.18.0.3"],
        [false, "~ 10.244.50.0-24 198.18.0.9"],
        [false, "- 10.244.50.0-24"],
        [false, "- 10.244.52.0-24"],
      ],
    );
  });

  test("a burst within one turn is one batch: each key once, its last state, a change undone is none", async () => {
    await registry.createLease(prefix("10.244.50.0/24"), HOST_B, 100);
    await registry.createLease(prefix("10.244.51.0/24"), HOST_B, 100);
    const m = manager();
    await m.start();
    const before50 = m.peers.get("10.244.50.0-24");
    registry.put("10.244.50.0-24", '{"PublicIP":"198.18.0.9","PublicIPv6":null}');
    registry.put("10.244.50.0-24", JSON.stringify({ PublicIP: "198.18.0.2", PublicIPv6: null }));
    await registry.deleteLease(prefix("10.244.51.0/24"));
    await registry.createLease(prefix("10.244.53.0/24"), HOST_C, 100);
    await registry.deleteLease(prefix("10.244.53.0/24"));
    await registry.createLease(prefix("10.244.54.0/24"), HOST_C, 100);
    registry.put("10.244.54.0-24", '{"PublicIP":"198.18.0.7","PublicIPv6":null}');
    await settled();
    assert.equal(batches.length, 2, "the initial batch and one for the burst");
    const burst = batches[1] as PeerBatch;
    assert.deepEqual(describeBatch(burst).sort(), [
      "+ 10.244.54.0-24 198.18.0.7",
      "- 10.244.51.0-24",
      // Back to its PublicIP but a reservation now (the put carried no TTL): a change of expiry.
      "~ 10.244.50.0-24 198.18.0.2",
    ]);
    assert.equal(burst.changes.find((c) => c.key === "10.244.50.0-24")?.before, before50);
    assert.deepEqual([...m.peers.keys()].sort(), ["10.244.50.0-24", "10.244.54.0-24"]);
  });

  test("a listing after the store came back turns into changes for the keys that differ only", async () => {
    for (let i = 50; i < 60; i++) await registry.createLease(prefix(`10.244.${i}.0/24`), HOST_B, 100);
    const m = manager();
    await m.start();
    registry.setReachable(false);
    await settled();
    assert.equal(m.connected, false);
    registry.put("10.244.50.0-24", '{"PublicIP":"198.18.0.9","PublicIPv6":null}');
    registry.remove("10.244.51.0-24");
    registry.reserve(prefix("10.244.60.0/24"), HOST_C);
    registry.setReachable(true);
    await settled();
    assert.equal(m.connected, true);
    assert.equal(batches.length, 2);
    assert.deepEqual(describeBatch(batches[1] as PeerBatch).sort(), [
      "+ 10.244.60.0-24 198.18.0.3",
      "- 10.244.51.0-24",
      "~ 10.244.50.0-24 198.18.0.9",
    ]);
  });

  test("our own key deleted by someone else revokes the lease", async () => {
    const lease = await manager().start();
    await registry.deleteLease(lease.subnet);
    await settled();
    assert.equal(revoked, 1);
  });
});

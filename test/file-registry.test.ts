import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync, rmSync } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, rename, rm, stat, symlink, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, test } from "node:test";
import { FileRegistry } from "../control/registry/file.js";
import type { LeaseEvent, LeaseListing, WatchHandlers } from "../control/registry/registry.js";
import { formatPrefix, type Ipv4Prefix, parseIpv4, parsePrefix } from "../net/addr.js";
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
const T0 = 1_700_000_000_000;
const HOUR = 3_600_000;

/** Records what a watch reports and lets a test wait for a specific report (failing after a generous timeout). */
class WatchRecorder implements WatchHandlers {
  readonly reports: (
    | { kind: "event"; event: LeaseEvent }
    | { kind: "resync"; listing: LeaseListing }
    | { kind: "connection"; connected: boolean; error?: Error }
    | { kind: "skipped"; key: string; reason: string }
  )[] = [];
  private waiters: { check: () => boolean; resolve: () => void }[] = [];

  onEvent(event: LeaseEvent): void {
    this.push({ kind: "event", event });
  }
  onResync(listing: LeaseListing): void {
    this.push({ kind: "resync", listing });
  }
  onConnection(connected: boolean, error?: Error): void {
    this.push(error === undefined ? { kind: "connection", connected } : { kind: "connection", connected, error });
  }
  onSkipped(key: string, reason: string): void {
    this.push({ kind: "skipped", key, reason });
  }

  events(): LeaseEvent[] {
    return this.reports.flatMap((r) => (r.kind === "event" ? [r.event] : []));
  }

  async waitFor(what: string, check: () => boolean, timeoutMs = 10_000): Promise<void> {
    if (check()) return;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`timed out waiting for ${what}; got ${JSON.stringify(this.reports)}`)),
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

  private push(report: WatchRecorder["reports"][number]): void {
    this.reports.push(report);
    this.waiters = this.waiters.filter((w) => {
      if (!w.check()) return true;
      w.resolve();
      return false;
    });
  }
}

function isPut(event: LeaseEvent, subnet: string, publicIp: number, expiresAt?: number | null): boolean {
  return (
    event.type === "put" &&
    formatPrefix(event.lease.subnet) === subnet &&
    event.lease.publicIp === publicIp &&
    (expiresAt === undefined || event.lease.expiresAt === expiresAt)
  );
}

function isDelete(event: LeaseEvent, subnet: string): boolean {
  return event.type === "delete" && formatPrefix(event.subnet) === subnet;
}

describe("FileRegistry", () => {
  let dir = "";
  let clock = T0;
  const now = () => clock;
  const opened: FileRegistry[] = [];

  async function openRegistry(
    options: {
      rescanIntervalMs?: number;
      orphanGraceMs?: number;
      now?: () => number;
      onRead?: (path: string) => void;
    } = {},
  ): Promise<FileRegistry> {
    const registry = await FileRegistry.open(dir, { now, ...options });
    opened.push(registry);
    return registry;
  }

  /** Watches `registry` from `revision` while `body` runs. */
  async function watching(
    registry: FileRegistry,
    revision: number,
    body: (recorder: WatchRecorder) => Promise<void>,
  ): Promise<void> {
    const recorder = new WatchRecorder();
    const watch = registry.watchLeases(revision, recorder);
    try {
      await body(recorder);
    } finally {
      watch.close();
    }
  }

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "weft-file-registry-"));
    clock = T0;
  });
  afterEach(async () => {
    for (const registry of opened.splice(0)) await registry.close();
    await rm(dir, { recursive: true, force: true });
  });

  test("open creates the etcd-like layout and describes itself by directory", async () => {
    const registry = await openRegistry();
    assert.equal(registry.description, `dir ${dir}`);
    assert.deepEqual((await readdir(dir)).sort(), ["leases", "subnets", "tmp"]);
  });

  test("open refuses a directory it cannot write, in one sentence", async () => {
    await writeFile(join(dir, "plain-file"), "");
    const target = join(dir, "plain-file", "registry");
    await assert.rejects(FileRegistry.open(target), { message: `registry dir ${target} is not writable: ENOTDIR` });
  });

  test("the network config is null until written, then read back verbatim", async () => {
    const registry = await openRegistry();
    assert.equal(await registry.getNetworkConfig(), null);
    await registry.setNetworkConfig('{"Network":"10.244.0.0/16"}');
    assert.equal(await registry.getNetworkConfig(), '{"Network":"10.244.0.0/16"}');
    assert.equal(await readFile(join(dir, "config"), "utf8"), '{"Network":"10.244.0.0/16"}');
  });

  test("createLease writes flannel's key name and value bytes plus the expiry sidecar", async () => {
    const registry = await openRegistry();
    const lease = await registry.createLease(prefix("10.244.68.0/24"), HOST_A, 86400);
    assert.deepEqual(lease, { subnet: prefix("10.244.68.0/24"), publicIp: HOST_A, expiresAt: T0 + 86_400_000 });
    assert.deepEqual(await readdir(join(dir, "subnets")), ["10.244.68.0-24"]);
    assert.equal(
      await readFile(join(dir, "subnets", "10.244.68.0-24"), "utf8"),
      '{"PublicIP":"198.18.0.1","PublicIPv6":null}',
    );
    assert.equal(await readFile(join(dir, "leases", "10.244.68.0-24"), "utf8"), String(T0 + 86_400_000));
    assert.equal((await stat(join(dir, "subnets", "10.244.68.0-24"))).mode & 0o777, 0o644);
    assert.deepEqual(await readdir(join(dir, "tmp")), []);
  });

  test("createLease returns null for a held subnet and leaves the holder's files alone", async () => {
    const registry = await openRegistry();
    await registry.createLease(prefix("10.244.68.0/24"), HOST_A, 100);
    clock += 5000;
    assert.equal(await registry.createLease(prefix("10.244.68.0/24"), HOST_B, 100), null);
    assert.equal(
      await readFile(join(dir, "subnets", "10.244.68.0-24"), "utf8"),
      '{"PublicIP":"198.18.0.1","PublicIPv6":null}',
    );
    assert.equal(await readFile(join(dir, "leases", "10.244.68.0-24"), "utf8"), String(T0 + 100_000));
    assert.deepEqual(await readdir(join(dir, "tmp")), []);
  });

  test("createLease returns null for a reservation and does not give it an expiry", async () => {
    const registry = await openRegistry();
    await writeFile(join(dir, "subnets", "10.244.7.0-24"), '{"PublicIP":"198.18.0.1","PublicIPv6":null}');
    assert.equal(await registry.createLease(prefix("10.244.7.0/24"), HOST_B, 100), null);
    assert.deepEqual(await readdir(join(dir, "leases")), []);
    const listing = await registry.getLeases();
    assert.deepEqual(listing.leases, [{ subnet: prefix("10.244.7.0/24"), publicIp: HOST_A, expiresAt: null }]);
  });

  test("reads only regular files of bounded size, never through a link: a FIFO, /dev/zero and a huge key are skipped, not waited on", {
    timeout: 20_000,
  }, async () => {
    const registry = await openRegistry();
    await registry.createLease(prefix("10.244.1.0/24"), HOST_A, 60);
    const subnets = join(dir, "subnets");
    const outside = join(dir, "..", `weft-outside-${process.pid}.json`);
    await writeFile(outside, '{"PublicIP":"198.18.0.9","PublicIPv6":null}');
    try {
      execFileSync("mkfifo", [join(subnets, "10.244.2.0-24")]);
      await symlink("/dev/zero", join(subnets, "10.244.3.0-24"));
      await symlink(outside, join(subnets, "10.244.4.0-24"));
      await writeFile(join(subnets, "10.244.5.0-24"), `{"PublicIP":"198.18.0.5"${" ".repeat(70_000)}}`);
      await writeFile(join(subnets, "10.244.6.0-24"), '{"PublicIP":"198.18.0.6"}');
      execFileSync("mkfifo", [join(dir, "leases", "10.244.6.0-24")]);
      const listing = await registry.getLeases();
      assert.deepEqual(listing.leases, [{ subnet: prefix("10.244.1.0/24"), publicIp: HOST_A, expiresAt: T0 + 60_000 }]);
      assert.deepEqual(
        listing.skipped.sort((a, b) => a.key.localeCompare(b.key)),
        [
          { key: join(subnets, "10.244.2.0-24"), reason: "the key cannot be read: it is not a regular file" },
          {
            key: join(subnets, "10.244.3.0-24"),
            reason: "the key cannot be read: it is a symbolic link (not followed)",
          },
          {
            key: join(subnets, "10.244.4.0-24"),
            reason: "the key cannot be read: it is a symbolic link (not followed)",
          },
          { key: join(subnets, "10.244.5.0-24"), reason: "the key cannot be read: it is larger than 65536 bytes" },
          {
            key: join(subnets, "10.244.6.0-24"),
            reason: "the expiry in leases/10.244.6.0-24 cannot be read: it is not a regular file",
          },
        ],
      );
      // A FIFO as the config is an error to retry, not a hang.
      await rm(join(dir, "config"), { force: true });
      execFileSync("mkfifo", [join(dir, "config")]);
      await assert.rejects(registry.getNetworkConfig(), /not a regular file/);
    } finally {
      await rm(outside, { force: true });
    }
  });

  test("getLeases lists leases and reservations in subnet order with increasing revisions", async () => {
    const registry = await openRegistry();
    await registry.createLease(prefix("10.244.9.0/24"), HOST_B, 60);
    await writeFile(
      join(dir, "subnets", "10.244.3.0-24"),
      '{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"udp"}',
    );
    const first = await registry.getLeases();
    assert.deepEqual(first.leases, [
      { subnet: prefix("10.244.3.0/24"), publicIp: HOST_A, expiresAt: null },
      { subnet: prefix("10.244.9.0/24"), publicIp: HOST_B, expiresAt: T0 + 60_000 },
    ]);
    assert.deepEqual(first.skipped, []);
    const second = await registry.getLeases();
    assert.ok(second.revision > first.revision, `${second.revision} > ${first.revision}`);
  });

  test("getLeases skips garbage under subnets/ with a reason instead of failing", async () => {
    const registry = await openRegistry();
    await registry.createLease(prefix("10.244.1.0/24"), HOST_A, 60);
    const subnets = join(dir, "subnets");
    await writeFile(join(subnets, "notes.txt"), "hello");
    await writeFile(join(subnets, "10.244.2.0-24"), "{not json");
    await writeFile(join(subnets, "10.244.3.0-24"), '{"PublicIPv6":null}');
    await writeFile(join(subnets, "10.244.4.0-24"), '{"PublicIP":"198.18.0.300"}');
    await writeFile(join(subnets, "10.244.5.0-24"), '{"PublicIP":"198.18.0.5"}');
    await writeFile(join(dir, "leases", "10.244.5.0-24"), "tomorrow");
    await mkdir(join(subnets, "10.244.6.0-24"));
    const listing = await registry.getLeases();
    assert.deepEqual(listing.leases, [{ subnet: prefix("10.244.1.0/24"), publicIp: HOST_A, expiresAt: T0 + 60_000 }]);
    assert.deepEqual(
      listing.skipped.sort((a, b) => a.key.localeCompare(b.key)),
      [
        { key: join(subnets, "10.244.2.0-24"), reason: "value is not JSON" },
        { key: join(subnets, "10.244.3.0-24"), reason: "PublicIP is missing" },
        { key: join(subnets, "10.244.4.0-24"), reason: 'PublicIP "198.18.0.300" is not an IPv4 address' },
        {
          key: join(subnets, "10.244.5.0-24"),
          reason: 'the expiry "tomorrow" in leases/10.244.5.0-24 is not a number of milliseconds',
        },
        { key: join(subnets, "10.244.6.0-24"), reason: "the key cannot be read: it is not a regular file" },
        { key: join(subnets, "notes.txt"), reason: "the name is not a subnet key like 10.244.68.0-24" },
      ],
    );
  });

  test("an expired lease is absent from listings and its files are removed, freeing the subnet", async () => {
    const registry = await openRegistry();
    await registry.createLease(prefix("10.244.68.0/24"), HOST_A, 10);
    clock = T0 + 10_000;
    assert.equal((await registry.getLeases()).leases.length, 1, "a lease is valid up to its expiry");
    clock = T0 + 10_001;
    assert.deepEqual((await registry.getLeases()).leases, []);
    assert.deepEqual(await readdir(join(dir, "subnets")), []);
    assert.deepEqual(await readdir(join(dir, "leases")), []);
    assert.ok(await registry.createLease(prefix("10.244.68.0/24"), HOST_B, 10));
  });

  test("an old sidecar left by a crash does not block its subnet; a fresh one (a create in flight) does", async () => {
    const registry = await openRegistry({ orphanGraceMs: 60_000 });
    const leases = join(dir, "leases");
    await writeFile(join(leases, "10.244.1.0-24"), String(T0 + 3_600_000));
    assert.equal(await registry.createLease(prefix("10.244.1.0/24"), HOST_A, 60), null);
    const old = new Date(Date.now() - 120_000);
    await utimes(join(leases, "10.244.1.0-24"), old, old);
    assert.deepEqual(await registry.createLease(prefix("10.244.1.0/24"), HOST_A, 60), {
      subnet: prefix("10.244.1.0/24"),
      publicIp: HOST_A,
      expiresAt: T0 + 60_000,
    });

    await writeFile(join(leases, "10.244.2.0-24"), String(T0 - 1));
    await writeFile(join(leases, "10.244.3.0-24"), String(T0 + 3_600_000));
    await registry.getLeases();
    assert.deepEqual(
      (await readdir(leases)).sort(),
      ["10.244.1.0-24", "10.244.3.0-24"],
      "expired orphans are swept by scans",
    );
  });

  test("updateLease moves a lease's expiry and rewrites the value", async () => {
    const registry = await openRegistry();
    const lease = await registry.createLease(prefix("10.244.68.0/24"), HOST_A, 100);
    assert.ok(lease);
    clock = T0 + 50_000;
    const renewed = await registry.updateLease(lease, HOST_A, 100);
    assert.deepEqual(renewed, { subnet: prefix("10.244.68.0/24"), publicIp: HOST_A, expiresAt: T0 + 150_000 });
    assert.equal(await readFile(join(dir, "leases", "10.244.68.0-24"), "utf8"), String(T0 + 150_000));
    assert.equal(
      await readFile(join(dir, "subnets", "10.244.68.0-24"), "utf8"),
      '{"PublicIP":"198.18.0.1","PublicIPv6":null}',
    );
    assert.deepEqual(await readdir(join(dir, "tmp")), []);
  });

  test("updateLease keeps a reservation a reservation", async () => {
    const registry = await openRegistry();
    await writeFile(join(dir, "subnets", "10.244.7.0-24"), '{"PublicIP":"198.18.0.1"}');
    const [reservation] = (await registry.getLeases()).leases;
    assert.ok(reservation);
    const updated = await registry.updateLease(reservation, HOST_A, 86400);
    assert.deepEqual(updated, { subnet: prefix("10.244.7.0/24"), publicIp: HOST_A, expiresAt: null });
    assert.deepEqual(await readdir(join(dir, "leases")), []);
    assert.equal(
      await readFile(join(dir, "subnets", "10.244.7.0-24"), "utf8"),
      '{"PublicIP":"198.18.0.1","PublicIPv6":null}',
    );
  });

  test("updateLease refuses a key that now names another host", async () => {
    const registry = await openRegistry();
    const lease = await registry.createLease(prefix("10.244.68.0/24"), HOST_A, 100);
    assert.ok(lease);
    await writeFile(join(dir, "subnets", "10.244.68.0-24"), '{"PublicIP":"198.18.0.2","PublicIPv6":null}');
    await assert.rejects(registry.updateLease(lease, HOST_A, 100), {
      message: "lease 10.244.68.0/24 is held by 198.18.0.2, not 198.18.0.1",
    });
  });

  test("updateLease takes a vanished key again", async () => {
    const registry = await openRegistry();
    const lease = await registry.createLease(prefix("10.244.68.0/24"), HOST_A, 100);
    assert.ok(lease);
    await registry.deleteLease(lease.subnet);
    const again = await registry.updateLease(lease, HOST_A, 100);
    assert.deepEqual(again, { subnet: prefix("10.244.68.0/24"), publicIp: HOST_A, expiresAt: T0 + 100_000 });
    assert.equal(await readFile(join(dir, "leases", "10.244.68.0-24"), "utf8"), String(T0 + 100_000));
  });

  test("deleteLease removes the key and its sidecar, and tolerates an absent key", async () => {
    const registry = await openRegistry();
    await registry.createLease(prefix("10.244.68.0/24"), HOST_A, 100);
    await registry.deleteLease(prefix("10.244.68.0/24"));
    assert.deepEqual(await readdir(join(dir, "subnets")), []);
    assert.deepEqual(await readdir(join(dir, "leases")), []);
    await registry.deleteLease(prefix("10.244.68.0/24"));
  });

  test("of 20 registries racing for one subnet in one process, exactly one wins", async () => {
    const registries = await Promise.all(Array.from({ length: 20 }, () => openRegistry()));
    const results = await Promise.all(
      registries.map((registry, i) => registry.createLease(prefix("10.244.5.0/24"), HOST_A + i, 100)),
    );
    const winners = results.flatMap((lease, i) => (lease === null ? [] : [i]));
    assert.equal(winners.length, 1, `winners: ${winners.join(",")}`);
    const winner = winners[0] as number;
    assert.equal(
      await readFile(join(dir, "subnets", "10.244.5.0-24"), "utf8"),
      `{"PublicIP":"198.18.0.${1 + winner}","PublicIPv6":null}`,
    );
    assert.deepEqual(await readdir(join(dir, "leases")), ["10.244.5.0-24"]);
    assert.deepEqual(await readdir(join(dir, "tmp")), []);
  });

  test("of 6 processes racing for one subnet, exactly one wins", async () => {
    const registryModule = new URL("../control/registry/file.js", import.meta.url).href;
    const script = join(dir, "race-create.mjs");
    await writeFile(
      script,
      `import { FileRegistry } from ${JSON.stringify(registryModule)};
const [dir, publicIp] = process.argv.slice(2);
const registry = await FileRegistry.open(dir);
process.stdout.write("ready\\n");
process.stdin.once("data", async () => {
  const lease = await registry.createLease({ base: 0x0af40500, len: 24 }, Number(publicIp), 100);
  process.stdout.write(JSON.stringify({ won: lease !== null }) + "\\n", () => process.exit(0));
});
`,
    );
    const results = await raceChildren(Array.from({ length: 6 }, (_, i) => [script, dir, String(HOST_A + i)]));
    const winners = results.flatMap((line, i) => ((JSON.parse(line) as { won: boolean }).won ? [i] : []));
    assert.equal(winners.length, 1, `winners: ${winners.join(",")}`);
    assert.equal(
      await readFile(join(dir, "subnets", "10.244.5.0-24"), "utf8"),
      `{"PublicIP":"198.18.0.${1 + (winners[0] as number)}","PublicIPv6":null}`,
    );
    assert.deepEqual(await readdir(join(dir, "tmp")), []);
  });

  describe("watchLeases", () => {
    test("reports another instance's changes made after the listing's revision, before or after the watch started, without waiting for a rescan", async () => {
      // Rescans an hour apart: only the first scan and inotify can report anything here.
      const registry = await openRegistry({ rescanIntervalMs: HOUR });
      const other = await openRegistry();
      await other.createLease(prefix("10.244.1.0/24"), HOST_B, 100);
      const listing = await registry.getLeases();
      await other.createLease(prefix("10.244.2.0/24"), HOST_B, 100);
      await watching(registry, listing.revision, async (recorder) => {
        await recorder.waitFor("put of 10.244.2.0/24", () =>
          recorder.events().some((e) => isPut(e, "10.244.2.0/24", HOST_B)),
        );
        assert.ok(
          !recorder.events().some((e) => isPut(e, "10.244.1.0/24", HOST_B)),
          "unchanged leases are not reported",
        );
        assert.ok(!recorder.reports.some((r) => r.kind === "resync"));

        await other.deleteLease(prefix("10.244.1.0/24"));
        await recorder.waitFor("delete of 10.244.1.0/24", () =>
          recorder.events().some((e) => isDelete(e, "10.244.1.0/24")),
        );

        const [changed] = (await other.getLeases()).leases;
        assert.ok(changed);
        clock += 1000;
        await other.updateLease(changed, HOST_B, 100);
        await recorder.waitFor("put with the renewed expiry", () =>
          recorder.events().some((e) => isPut(e, "10.244.2.0/24", HOST_B, T0 + 101_000)),
        );
      });
    });

    test("an expiry the registry clock jumped past is noticed by the safety rescan and reported as a delete", async () => {
      const registry = await openRegistry({ rescanIntervalMs: 20 });
      await registry.createLease(prefix("10.244.1.0/24"), HOST_B, 10);
      await registry.createLease(prefix("10.244.2.0/24"), HOST_B, 1000);
      const listing = await registry.getLeases();
      await watching(registry, listing.revision, async (recorder) => {
        clock = T0 + 60_000;
        await recorder.waitFor("delete of the expired lease", () =>
          recorder.events().some((e) => isDelete(e, "10.244.1.0/24")),
        );
        assert.deepEqual(await readdir(join(dir, "subnets")), ["10.244.2.0-24"]);
        assert.ok(!recorder.events().some((e) => isDelete(e, "10.244.2.0/24")));
      });
    });

    test("an unknown revision starts with a resync", async () => {
      const registry = await openRegistry();
      await registry.createLease(prefix("10.244.1.0/24"), HOST_B, 100);
      await watching(registry, 0, async (recorder) => {
        await recorder.waitFor("a resync", () => recorder.reports.some((r) => r.kind === "resync"));
        const resync = recorder.reports.find((r) => r.kind === "resync");
        assert.ok(resync?.kind === "resync");
        assert.deepEqual(resync.listing.leases, [
          { subnet: prefix("10.244.1.0/24"), publicIp: HOST_B, expiresAt: T0 + 100_000 },
        ]);
      });
    });

    for (const [how, rescanIntervalMs] of [
      ["full rescans every 20 ms", 20],
      ["inotify alone", HOUR],
    ] as const) {
      test(`a garbage value is reported once through onSkipped, and the watch goes on (${how})`, async () => {
        const registry = await openRegistry({ rescanIntervalMs });
        const listing = await registry.getLeases();
        await watching(registry, listing.revision, async (recorder) => {
          const garbage = join(dir, "subnets", "10.244.8.0-24");
          await writeFile(garbage, "garbage");
          await recorder.waitFor("the skipped key", () => recorder.reports.some((r) => r.kind === "skipped"));
          await registry.createLease(prefix("10.244.9.0/24"), HOST_B, 100);
          await recorder.waitFor("the next put", () =>
            recorder.events().some((e) => isPut(e, "10.244.9.0/24", HOST_B)),
          );
          // The bad file is read again (rewritten, and by any rescans) and still reported only once.
          await writeFile(garbage, "garbage");
          const putsSoFar = recorder.events().length;
          await registry.createLease(prefix("10.244.10.0/24"), HOST_B, 100);
          await recorder.waitFor("another put", () => recorder.events().length > putsSoFar);
          assert.deepEqual(
            recorder.reports.filter((r) => r.kind === "skipped"),
            [{ kind: "skipped", key: garbage, reason: "value is not JSON" }],
          );
        });
      });
    }

    test("a value that turns to garbage keeps its last good lease, and the repaired value is a put", async () => {
      const registry = await openRegistry({ rescanIntervalMs: HOUR });
      await registry.createLease(prefix("10.244.8.0/24"), HOST_B, 100);
      const listing = await registry.getLeases();
      await watching(registry, listing.revision, async (recorder) => {
        const key = join(dir, "subnets", "10.244.8.0-24");
        // Atomic replacements, so each state is seen whole.
        await writeFile(`${key}.new`, "{half-written");
        await rename(`${key}.new`, key);
        await recorder.waitFor("the skipped key", () =>
          recorder.reports.some((r) => r.kind === "skipped" && r.key === key),
        );
        await writeFile(`${key}.new`, '{"PublicIP":"198.18.0.1","PublicIPv6":null}');
        await rename(`${key}.new`, key);
        await recorder.waitFor("the put of the repaired value", () =>
          recorder.events().some((e) => isPut(e, "10.244.8.0/24", HOST_A)),
        );
        assert.ok(!recorder.events().some((e) => isDelete(e, "10.244.8.0/24")), "garbage is not a delete");
      });
    });

    test("an unreadable directory is reported as a lost connection, and changes are caught after it recovers", async () => {
      // The default 30 s safety rescan: noticing the loss and the return must not wait for it.
      const registry = await openRegistry();
      const listing = await registry.getLeases();
      await watching(registry, listing.revision, async (recorder) => {
        await recorder.waitFor("connected", () => recorder.reports.some((r) => r.kind === "connection" && r.connected));
        await rename(join(dir, "subnets"), join(dir, "subnets.away"));
        await recorder.waitFor("disconnected", () =>
          recorder.reports.some((r) => r.kind === "connection" && !r.connected),
        );
        const lost = recorder.reports.find((r) => r.kind === "connection" && !r.connected);
        assert.equal(lost?.kind === "connection" && (lost.error as NodeJS.ErrnoException | undefined)?.code, "ENOENT");
        await writeFile(join(dir, "subnets.away", "10.244.4.0-24"), '{"PublicIP":"198.18.0.2","PublicIPv6":null}');
        await rename(join(dir, "subnets.away"), join(dir, "subnets"));
        await recorder.waitFor("the put after recovery", () =>
          recorder.events().some((e) => isPut(e, "10.244.4.0/24", HOST_B, null)),
        );
        const connections = recorder.reports.flatMap((r) => (r.kind === "connection" ? [r.connected] : []));
        assert.deepEqual(connections, [true, false, true]);
        // inotify is re-attached to the restored directory: a change is seen again.
        await registry.deleteLease(prefix("10.244.4.0/24"));
        await recorder.waitFor("the delete", () => recorder.events().some((e) => isDelete(e, "10.244.4.0/24")));
      });
    });

    test("close stops all reports", async () => {
      const registry = await openRegistry();
      const listing = await registry.getLeases();
      const recorder = new WatchRecorder();
      const watch = registry.watchLeases(listing.revision, recorder);
      await recorder.waitFor("connected", () => recorder.reports.some((r) => r.kind === "connection"));
      watch.close();
      const seen = recorder.reports.length;
      await registry.createLease(prefix("10.244.1.0/24"), HOST_B, 100);
      // A second watch that does see the put proves enough rescans happened for the first one to have seen it.
      const witness = new WatchRecorder();
      const witnessWatch = registry.watchLeases(listing.revision, witness);
      try {
        await witness.waitFor("the put", () => witness.events().some((e) => isPut(e, "10.244.1.0/24", HOST_B)));
        await registry.deleteLease(prefix("10.244.1.0/24"));
        await witness.waitFor("the delete", () => witness.events().some((e) => isDelete(e, "10.244.1.0/24")));
        assert.equal(recorder.reports.length, seen);
      } finally {
        witnessWatch.close();
      }
    });
    test("an idle watch over 40 leases reads no file after its first scan, and a change re-reads only that key", async () => {
      const reads: string[] = [];
      // The default safety rescan (30 s); the wait below is longer than the 1 s rescans this replaced.
      const registry = await openRegistry({ onRead: (path) => reads.push(path) });
      const other = await openRegistry();
      for (let i = 1; i <= 40; i++) await other.createLease(prefix(`10.244.${i}.0/24`), HOST_B, 100);
      const listing = await registry.getLeases();
      await watching(registry, listing.revision, async (recorder) => {
        await recorder.waitFor("connected", () => recorder.reports.some((r) => r.kind === "connection"));
        assert.ok(reads.length >= 80, `the first scan read every key and expiry file (${reads.length} reads)`);
        reads.length = 0;
        await new Promise((resolve) => setTimeout(resolve, 1500));
        assert.deepEqual(reads, [], "nothing is read while nothing changes");

        await other.createLease(prefix("10.244.100.0/24"), HOST_B, 100);
        await recorder.waitFor("the put", () => recorder.events().some((e) => isPut(e, "10.244.100.0/24", HOST_B)));
        const changed = [join(dir, "subnets", "10.244.100.0-24"), join(dir, "leases", "10.244.100.0-24")];
        assert.ok(reads.length > 0);
        assert.deepEqual(
          reads.filter((path) => !changed.includes(path)),
          [],
          "only the new key and its expiry file are read",
        );
        assert.equal(recorder.events().length, 1);
      });
    });

    test("an expiry is noticed by the expiry timer with the safety rescan an hour away", async () => {
      const reads: string[] = [];
      const registry = await openRegistry({
        rescanIntervalMs: HOUR,
        now: Date.now,
        onRead: (path) => reads.push(path),
      });
      await registry.createLease(prefix("10.244.1.0/24"), HOST_B, 0.3);
      await registry.createLease(prefix("10.244.2.0/24"), HOST_B, 1000);
      const listing = await registry.getLeases();
      await watching(registry, listing.revision, async (recorder) => {
        await recorder.waitFor("the delete of the expired lease", () =>
          recorder.events().some((e) => isDelete(e, "10.244.1.0/24")),
        );
        assert.deepEqual(await readdir(join(dir, "subnets")), ["10.244.2.0-24"], "the expired key was removed");
        assert.deepEqual(await readdir(join(dir, "leases")), ["10.244.2.0-24"]);
        assert.equal(recorder.events().length, 1, "the lease that did not expire is not reported");
        const listings = reads.filter((path) => path === join(dir, "subnets")).length;
        assert.equal(listings, 2, "one listing by getLeases, one by the watch's first scan, none since");
      });
    });

    test("a renewal (expiry file, then key) is a put with the new expiry, and so is a rewritten expiry file alone", async () => {
      const registry = await openRegistry({ rescanIntervalMs: HOUR });
      const other = await openRegistry();
      const lease = await other.createLease(prefix("10.244.3.0/24"), HOST_B, 100);
      assert.ok(lease);
      const listing = await registry.getLeases();
      await watching(registry, listing.revision, async (recorder) => {
        await recorder.waitFor("connected", () => recorder.reports.some((r) => r.kind === "connection"));
        clock = T0 + 50_000;
        await other.updateLease(lease, HOST_B, 100);
        await recorder.waitFor("the put with the renewed expiry", () =>
          recorder.events().some((e) => isPut(e, "10.244.3.0/24", HOST_B, T0 + 150_000)),
        );
        const sidecar = join(dir, "leases", "10.244.3.0-24");
        await writeFile(`${sidecar}.new`, String(T0 + 500_000));
        await rename(`${sidecar}.new`, sidecar);
        await recorder.waitFor("the put with the rewritten expiry", () =>
          recorder.events().some((e) => isPut(e, "10.244.3.0/24", HOST_B, T0 + 500_000)),
        );
        assert.ok(!recorder.events().some((e) => e.type === "delete"), "a renewal is never a delete");
        assert.ok(!recorder.reports.some((r) => r.kind === "resync"));
      });
    });

    test("the last good lease of a key turned to garbage ends at its expiry", async () => {
      const registry = await openRegistry({ rescanIntervalMs: HOUR });
      await registry.createLease(prefix("10.244.8.0/24"), HOST_B, 10);
      const listing = await registry.getLeases();
      await watching(registry, listing.revision, async (recorder) => {
        const key = join(dir, "subnets", "10.244.8.0-24");
        const scratch = join(dir, "tmp", "garbage");
        await writeFile(scratch, "{half-written");
        await rename(scratch, key);
        await recorder.waitFor("the skipped key", () =>
          recorder.reports.some((r) => r.kind === "skipped" && r.key === key),
        );
        assert.deepEqual(recorder.events(), [], "garbage alone changes nothing");
        clock = T0 + 20_000;
        await writeFile(scratch, "{still half-written");
        await rename(scratch, key);
        await recorder.waitFor("the delete", () => recorder.events().some((e) => isDelete(e, "10.244.8.0/24")));
      });
    });

    test("a subnets directory deleted and re-created is watched again", async () => {
      const registry = await openRegistry({ rescanIntervalMs: HOUR });
      await registry.createLease(prefix("10.244.1.0/24"), HOST_B, 100);
      const listing = await registry.getLeases();
      await watching(registry, listing.revision, async (recorder) => {
        await recorder.waitFor("connected", () => recorder.reports.some((r) => r.kind === "connection"));
        // In one turn, so the watch finds a directory at the path whenever it looks.
        rmSync(join(dir, "subnets"), { recursive: true });
        mkdirSync(join(dir, "subnets"));
        await recorder.waitFor("the delete of the wiped lease", () =>
          recorder.events().some((e) => isDelete(e, "10.244.1.0/24")),
        );
        await registry.createLease(prefix("10.244.2.0/24"), HOST_A, 100);
        await recorder.waitFor("the put in the new directory", () =>
          recorder.events().some((e) => isPut(e, "10.244.2.0/24", HOST_A)),
        );
      });
    });
  });
});

// The memory registry keeps the semantics of the file registry (and etcd's):
// the same specification runs against both, so a test over the fake means
// what it would over the real store.

import assert from "node:assert/strict";
import { mkdtemp, rename, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, it } from "node:test";
import { FileRegistry } from "../control/registry/file.js";
import { MemoryRegistry } from "../control/registry/memory.js";
import type { Lease, LeaseEvent, LeaseListing, Registry } from "../control/registry/registry.js";
import { formatIpv4, formatPrefix, type Ipv4Prefix, parseIpv4, parsePrefix } from "../net/addr.js";

const T0 = 1_700_000_000_000;
const A = parseIpv4("198.18.0.1");
const B = parseIpv4("198.18.0.2");
const prefix = (text: string) => parsePrefix(text, true) as Ipv4Prefix;
const show = (l: Lease) => `${formatPrefix(l.subnet)} ${formatIpv4(l.publicIp)} ${l.expiresAt ?? "reserved"}`;

interface Store {
  registry: Registry;
  /** Writes a key and value by hand (an operator's etcdctl put, or a file). */
  putRaw(name: string, value: string): Promise<void>;
  done(): Promise<void>;
}

/** What a watch reported, for tests to wait on. */
class Heard {
  readonly lines: string[] = [];
  readonly resyncs: LeaseListing[] = [];
  handlers() {
    return {
      onEvent: (e: LeaseEvent) =>
        this.lines.push(e.type === "put" ? `put ${show(e.lease)}` : `delete ${formatPrefix(e.subnet)}`),
      onResync: (listing: LeaseListing) => this.resyncs.push(listing),
      onSkipped: (key: string, reason: string) => this.lines.push(`skipped ${key.split("/").at(-1)}: ${reason}`),
    };
  }
  async until(what: string, check: () => boolean): Promise<void> {
    const deadline = Date.now() + 5000;
    while (!check()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(this.lines)}`);
      await new Promise((r) => setTimeout(r, 5));
    }
  }
}

const kinds: Record<string, (now: () => number) => Promise<Store>> = {
  memory: async (now) => {
    const registry = new MemoryRegistry({ now });
    return {
      registry,
      putRaw: async (name, value) => registry.put(name, value),
      done: () => registry.close(),
    };
  },
  file: async (now) => {
    const dir = await mkdtemp(join(tmpdir(), "weft-contract-"));
    const registry = await FileRegistry.open(dir, { now, rescanIntervalMs: 3_600_000 });
    return {
      registry,
      // As an operator should (and weftd does): written aside, then renamed into place,
      // so the registry never reads a half-written file (its watch may fire in between).
      putRaw: async (name, value) => {
        const aside = join(dir, `.${name}.tmp`);
        await writeFile(aside, value);
        await rename(aside, join(dir, "subnets", name));
      },
      done: async () => {
        await registry.close();
        await rm(dir, { recursive: true, force: true });
      },
    };
  },
};

for (const [kind, open] of Object.entries(kinds)) {
  describe(`registry semantics: ${kind}`, () => {
    let clock = T0;
    let store: Store;
    let registry: Registry;
    beforeEach(async () => {
      clock = T0;
      store = await open(() => clock);
      registry = store.registry;
    });
    afterEach(() => store.done());

    it("creates atomically: of ten hosts racing for one subnet exactly one wins", async () => {
      const results = await Promise.all(
        Array.from({ length: 10 }, (_, i) => registry.createLease(prefix("10.244.5.0/24"), A + i, 60)),
      );
      const winners = results.filter((r) => r !== null) as Lease[];
      assert.equal(winners.length, 1);
      assert.deepEqual((await registry.getLeases()).leases, winners);
    });

    it("lists a lease until its expiry and not after; rewriting it then takes it again", async () => {
      const lease = (await registry.createLease(prefix("10.244.5.0/24"), A, 60)) as Lease;
      assert.equal(lease.expiresAt, T0 + 60_000);
      clock = T0 + 60_000;
      assert.deepEqual((await registry.getLeases()).leases.map(show), [`10.244.5.0/24 198.18.0.1 ${T0 + 60_000}`]);
      clock = T0 + 60_001;
      assert.deepEqual((await registry.getLeases()).leases, []);
      const again = await registry.updateLease(lease, A, 60);
      assert.deepEqual(again, { subnet: lease.subnet, publicIp: A, expiresAt: T0 + 120_001 });
      assert.equal(await registry.createLease(prefix("10.244.5.0/24"), B, 60), null, "held again");
    });

    it("keeps a reservation (no TTL) forever and a reservation after a rewrite", async () => {
      await store.putRaw("10.244.7.0-24", '{"PublicIP":"198.18.0.1","PublicIPv6":null}');
      clock = T0 + 10 * 365 * 86_400_000;
      const [reserved] = (await registry.getLeases()).leases;
      assert.deepEqual(reserved, { subnet: prefix("10.244.7.0/24"), publicIp: A, expiresAt: null });
      assert.equal(await registry.createLease(prefix("10.244.7.0/24"), B, 60), null);
      const rewritten = await registry.updateLease(reserved as Lease, A, 60);
      assert.equal(rewritten.expiresAt, null);
    });

    it("refuses to rewrite a lease another host holds", async () => {
      const theirs = (await registry.createLease(prefix("10.244.5.0/24"), B, 60)) as Lease;
      await assert.rejects(registry.updateLease({ ...theirs, publicIp: A }, A, 60), {
        message: "lease 10.244.5.0/24 is held by 198.18.0.2, not 198.18.0.1",
      });
    });

    it("lists unreadable keys as skipped, never as leases", async () => {
      await store.putRaw("10.244.8.0-24", "not json");
      await registry.createLease(prefix("10.244.9.0/24"), A, 60);
      const listing = await registry.getLeases();
      assert.deepEqual(listing.leases.map(show), [`10.244.9.0/24 198.18.0.1 ${T0 + 60_000}`]);
      assert.deepEqual(
        listing.skipped.map((s) => [s.key.split("/").at(-1), s.reason]),
        [["10.244.8.0-24", "value is not JSON"]],
      );
    });

    it("watches from a listing: what changed after it, in order, and expiries as deletes", async () => {
      await registry.createLease(prefix("10.244.1.0/24"), A, 60);
      const heard = new Heard();
      const watch = registry.watchLeases((await registry.getLeases()).revision, heard.handlers());
      try {
        await registry.createLease(prefix("10.244.2.0/24"), B, 30);
        await heard.until("the put", () => heard.lines.length >= 1);
        await registry.deleteLease(prefix("10.244.1.0/24"));
        await heard.until("the delete", () => heard.lines.length >= 2);
        await store.putRaw("10.244.3.0-24", "{}");
        await heard.until("the skipped key", () => heard.lines.length >= 3);
        clock = T0 + 31_000;
        await registry.getLeases();
        await heard.until("the expiry", () => heard.lines.length >= 4);
        assert.deepEqual(heard.lines, [
          `put 10.244.2.0/24 198.18.0.2 ${T0 + 30_000}`,
          "delete 10.244.1.0/24",
          "skipped 10.244.3.0-24: PublicIP is missing",
          "delete 10.244.2.0/24",
        ]);
        assert.deepEqual(heard.resyncs, []);
      } finally {
        watch.close();
      }
    });
  });
}

describe("memory registry", () => {
  it("starts a watch from a forgotten revision with a full listing, as etcd after compaction", async () => {
    const registry = new MemoryRegistry({ keptEvents: 2 });
    for (let i = 1; i <= 5; i++) await registry.createLease(prefix(`10.244.${i}.0/24`), A + i, 60);
    const heard = new Heard();
    const watch = registry.watchLeases(1, heard.handlers());
    await heard.until("the resync", () => heard.resyncs.length > 0);
    assert.equal(heard.resyncs[0]?.leases.length, 5);
    assert.deepEqual(heard.lines, [], "no events replayed on top of the listing");
    watch.close();
    await registry.close();
  });

  it("an unreachable store rejects calls, and watches resync when it comes back", async () => {
    const registry = new MemoryRegistry();
    const connections: boolean[] = [];
    const heard = new Heard();
    const watch = registry.watchLeases(0, {
      ...heard.handlers(),
      onConnection: (connected) => connections.push(connected),
    });
    await heard.until("connected", () => connections.length === 1);
    registry.setReachable(false);
    await assert.rejects(registry.getLeases(), { message: "memory registry is unreachable" });
    await heard.until("disconnected", () => connections.length === 2);
    registry.reserve(prefix("10.244.4.0/24"), B);
    registry.setReachable(true);
    await heard.until("the resync", () => heard.resyncs.length === 1);
    assert.deepEqual(connections, [true, false, true]);
    assert.deepEqual(heard.resyncs[0]?.leases.map(show), ["10.244.4.0/24 198.18.0.2 reserved"]);
    assert.deepEqual(heard.lines, [], "changes made while away arrive in the listing only");
    watch.close();
    await registry.close();
  });
});

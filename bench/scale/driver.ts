// The scale bench's hands inside a host namespace (the registry and weftd's
// /metrics are only reachable from there): it seeds the registry with
// made-up peers, and churns leases at a steady rate while it watches the
// forwarding table take each change.
//
//   node driver.js '{"command":"seed", ...}'    → {"seeded":N,"seconds":S}
//   node driver.js '{"command":"churn", ...}'   → {"phase":"baseline"} {"phase":"churn"} {"phase":"done",…}
//
// How a change is seen reaching the table: churn first adds K new peers, then
// removes them, so weft_leases (the table's size) says how many changes are
// in; weft_table_swapped_at_seconds says when the table that showed it went
// in. A change's time is that moment minus the moment its write began. When
// two tables go in between two polls, the later one's time is taken: an
// overestimate of at most one poll interval for the earlier change.

import { Etcd3 } from "etcd3";
import { EtcdRegistry } from "../../control/registry/etcd.js";
import { FileRegistry } from "../../control/registry/file.js";
import type { Registry } from "../../control/registry/registry.js";
import { type KubeSpec, KubeWriter } from "./kube-writer.js";
import { peerPublicIp, peerSubnet } from "./peers.js";

export type RegistrySpec =
  | { kind: "file"; dir: string }
  | { kind: "etcd"; endpoint: string; config: string }
  | KubeSpec;

export interface SeedCommand {
  command: "seed";
  registry: RegistrySpec;
  peers: number;
}

export interface ChurnCommand {
  command: "churn";
  registry: RegistrySpec;
  /** First made-up peer index of the churn (above the seeded ones). */
  firstIndex: number;
  /** Seconds of polling without changes first (the polling's own cost, subtracted by the caller). */
  baselineSeconds: number;
  /** Changes: `changes`/2 adds, then as many removes, `rate` per second. */
  changes: number;
  rate: number;
  pollMs: number;
  metricsPort: number;
}

export interface ChurnResult {
  phase: "done";
  /** ms from the start of each change's write to the table that held it, in change order. */
  latencies_ms: (number | null)[];
  /** Changes never seen in the table within 30 s of the last write. */
  unseen: number;
  /** Seconds from the first write to the last. */
  write_seconds: number;
}

/** Lease TTL of the made-up peers: longer than any run. */
const TTL_SECONDS = 24 * 3600;
const SEED_CONCURRENCY = 16;

/** Adds and removes made-up peers: leases in file and etcd mode, Node objects in kube mode. */
interface Writer {
  add(i: number): Promise<void>;
  remove(i: number): Promise<void>;
  close(): Promise<void> | void;
}

async function openWriter(spec: RegistrySpec): Promise<Writer> {
  if (spec.kind === "kube") return new KubeWriter(spec);
  const registry: Registry =
    spec.kind === "file" ? await FileRegistry.open(spec.dir) : new EtcdRegistry({ endpoints: [spec.endpoint] });
  return {
    async add(i) {
      if ((await registry.createLease(peerSubnet(i), peerPublicIp(i), TTL_SECONDS)) === null)
        throw new Error(`lease ${i} exists already`);
    },
    remove: (i) => registry.deleteLease(peerSubnet(i)),
    close: () => registry.close(),
  };
}

async function seed(c: SeedCommand): Promise<void> {
  const t0 = performance.now();
  if (c.registry.kind === "etcd") {
    const client = new Etcd3({ hosts: c.registry.endpoint });
    await client.put("/coreos.com/network/config").value(c.registry.config);
    client.close();
  }
  const writer = await openWriter(c.registry);
  let next = 0;
  const worker = async () => {
    for (let i = next++; i < c.peers; i = next++) await writer.add(i);
  };
  await Promise.all(Array.from({ length: SEED_CONCURRENCY }, worker));
  await writer.close();
  say({ seeded: c.peers, seconds: (performance.now() - t0) / 1000 });
}

interface TableState {
  leases: number;
  swappedAtMs: number;
}

async function tableState(port: number): Promise<TableState> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const leases = /^weft_leases (\S+)$/m.exec(text)?.[1];
  const at = /^weft_table_swapped_at_seconds (\S+)$/m.exec(text)?.[1];
  if (leases === undefined || at === undefined)
    throw new Error("weftd's /metrics has no weft_leases or weft_table_swapped_at_seconds");
  return { leases: Number(leases), swappedAtMs: Number(at) * 1000 };
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function until(done: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!done() && performance.now() < deadline) await sleep(5);
}

async function churn(c: ChurnCommand): Promise<void> {
  const registry = await openWriter(c.registry);
  const adds = Math.floor(c.changes / 2);
  const start = await tableState(c.metricsPort);
  say({ phase: "baseline" });
  const baselineEnd = performance.now() + c.baselineSeconds * 1000;
  while (performance.now() < baselineEnd) {
    await tableState(c.metricsPort);
    await sleep(c.pollMs);
  }
  say({ phase: "churn" });
  // Change k: an add of peer firstIndex+k (k < adds), else a remove of peer firstIndex+(k-adds).
  const began: number[] = [];
  const latencies: (number | null)[] = new Array(adds * 2).fill(null);
  let seen = 0;
  let writing = true;
  const write = async (k: number) => {
    began[k] = Date.now();
    const i = c.firstIndex + (k < adds ? k : k - adds);
    if (k >= adds) await registry.remove(i);
    else await registry.add(i);
  };
  // Adds at `rate`, then (once the table shows every add, so its size can
  // only fall from there) removes at `rate`.
  const writer = (async () => {
    const t0 = performance.now();
    for (const [from, to] of [
      [0, adds],
      [adds, adds * 2],
    ] as const) {
      if (from > 0) await until(() => seen >= adds, 30_000);
      const p0 = performance.now();
      for (let k = from; k < to; k++) {
        const wait = p0 + ((k - from) * 1000) / c.rate - performance.now();
        if (wait > 0) await sleep(wait);
        await write(k);
      }
    }
    writing = false;
    return (performance.now() - t0) / 1000;
  })();
  let failed: Error | null = null;
  let writeSeconds = 0;
  writer.then(
    (s) => {
      writeSeconds = s;
    },
    (err: Error) => {
      failed = err;
    },
  );
  let deadline = Number.POSITIVE_INFINITY;
  while (seen < adds * 2 && performance.now() < deadline && failed === null) {
    const t = await tableState(c.metricsPort);
    // How many changes the table shows: its size climbs by one per add, then falls by one per remove.
    const shown = seen < adds ? t.leases - start.leases : adds + (start.leases + adds - t.leases);
    while (seen < shown && began[seen] !== undefined) {
      latencies[seen] = Math.max(0, t.swappedAtMs - (began[seen] as number));
      seen++;
    }
    if (!writing && deadline === Number.POSITIVE_INFINITY) deadline = performance.now() + 30_000;
    await sleep(c.pollMs);
  }
  await writer;
  await registry.close();
  const result: ChurnResult = {
    phase: "done",
    latencies_ms: latencies,
    unseen: adds * 2 - seen,
    write_seconds: writeSeconds,
  };
  say(result);
}

function say(obj: object): void {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

async function main(): Promise<void> {
  const c = JSON.parse(process.argv[2] ?? "{}") as SeedCommand | ChurnCommand;
  if (c.command === "seed") await seed(c);
  else if (c.command === "churn") await churn(c);
  else throw new Error(`driver: unknown command ${JSON.stringify((c as { command?: unknown }).command)}`);
}

// Imported by the bench for its types only; runs when started as a script.
if (process.argv[1]?.endsWith("/bench/scale/driver.js")) {
  main().then(
    () => process.exit(0),
    (err: Error) => {
      process.stderr.write(`driver: ${err.message}\n`);
      process.exit(1);
    },
  );
}

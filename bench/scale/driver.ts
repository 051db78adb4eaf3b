// The scale bench's hands inside a host namespace (the registry and weftd's
// /metrics are only reachable from there): it seeds the registry with
// made-up peers, and churns leases at a steady rate while it watches the
// forwarding table take each change.
//
//   node driver.js '{"command":"seed", ...}'    → {"seeded":N,"seconds":S}
//   node driver.js '{"command":"churn", ...}'   → {"phase":"baseline"} {"phase":"churn"} {"phase":"done",…}
//
// How a change is seen reaching the table: weftd logs each peer added or
// removed after the initial sync right after the table holding it went in
// (control/node.ts), with the time in ms; the driver tails weftd's log and
// takes that line's time minus the moment the change's write began. (The
// first version read weft_table_swapped_at_seconds from /metrics, but
// /metrics is rendered at most every 250 ms, so at 10 changes/s a change was
// often credited with the swap of the one after it: ~100 ms at any size.)
// /metrics is still polled at the same pace, so the CPU figures compare.

import { closeSync, openSync, readSync } from "node:fs";
import { Etcd3 } from "etcd3";
import { EtcdRegistry } from "../../control/registry/etcd.js";
import { FileRegistry } from "../../control/registry/file.js";
import type { Registry } from "../../control/registry/registry.js";
import { formatPrefix } from "../../net/addr.js";
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
  /**
   * Whether each look also reads weftd's /metrics (as the CPU-per-change run
   * does, its cost then in the baseline too). The TCP run only tails the log:
   * a change's time comes from weftd's line anyway, and a scrape every
   * pollMs is load a cluster's weftd never sees (Prometheus: every 15 s or so).
   */
  pollMetrics?: boolean;
  /**
   * Say {"phase":"ready"} once loaded and connected, then wait for a line on
   * stdin before starting: the driver's own start-up (node, etcd3/grpc-js:
   * ~0.35 s of CPU) stays out of a window measured from the go.
   */
  waitForGo?: boolean;
  metricsPort: number;
  /** weftd's log (JSON lines), tailed for its "peer added" and "peer removed" lines. */
  logPath: string;
}

export interface ChurnResult {
  phase: "done";
  /** ms from the start of each change's write to the table that held it, in change order. */
  latencies_ms: (number | null)[];
  /** Changes never seen in the table within 30 s of the last write. */
  unseen: number;
  /** Seconds from the first write to the last. */
  write_seconds: number;
  /** The driver's own CPU seconds (user + system) from its start to the end, start-up included. */
  cpu_seconds: number;
  /** weftd's tables made and installed during the churn, their seconds, and its longest since start. */
  table_updates: { count: number; seconds: number; max_seconds: number };
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
  updates: number;
  updateSeconds: number;
  updateMaxSeconds: number;
}

async function tableState(port: number): Promise<TableState> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const leases = /^weft_leases (\S+)$/m.exec(text)?.[1];
  const at = /^weft_table_swapped_at_seconds (\S+)$/m.exec(text)?.[1];
  if (leases === undefined || at === undefined)
    throw new Error("weftd's /metrics has no weft_leases or weft_table_swapped_at_seconds");
  const sample = (name: string) => Number(new RegExp(`^${name} (\\S+)$`, "m").exec(text)?.[1] ?? Number.NaN);
  return {
    leases: Number(leases),
    swappedAtMs: Number(at) * 1000,
    updates: sample("weft_table_updates_total"),
    updateSeconds: sample("weft_table_update_seconds_total"),
    updateMaxSeconds: sample("weft_table_update_max_seconds"),
  };
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function until(done: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!done() && performance.now() < deadline) await sleep(5);
}

/** Reads what was appended to a file since the last call, as whole lines. */
class Tail {
  private offset = 0;
  private partial = "";
  private readonly buffer = Buffer.alloc(1 << 20);
  constructor(private readonly path: string) {}

  lines(): string[] {
    const fd = openSync(this.path, "r");
    let text = "";
    try {
      for (;;) {
        const n = readSync(fd, this.buffer, 0, this.buffer.length, this.offset);
        if (n === 0) break;
        this.offset += n;
        text += this.buffer.toString("utf8", 0, n);
      }
    } finally {
      closeSync(fd);
    }
    const all = (this.partial + text).split("\n");
    this.partial = all.pop() ?? "";
    return all;
  }
}

/** "peer added 10.1.2.0/24" → ms, from weftd's log lines. */
function tableTimes(lines: readonly string[], into: Map<string, number>): void {
  for (const line of lines) {
    if (!line.includes('"msg":"peer ')) continue;
    const o = JSON.parse(line) as { time?: number; msg?: string; lease?: string };
    const subnet = o.lease?.split(" ")[0];
    if (typeof o.time !== "number" || subnet === undefined) continue;
    const key = `${o.msg} ${subnet}`;
    if (!into.has(key)) into.set(key, o.time);
  }
}

/** One line from stdin (the bench's go). */
function stdinLine(): Promise<void> {
  return new Promise((resolve, reject) => {
    let text = "";
    const onData = (d: Buffer) => {
      text += d.toString("utf8");
      if (!text.includes("\n")) return;
      process.stdin.off("data", onData).pause();
      resolve();
    };
    process.stdin.on("data", onData);
    process.stdin.once("end", () => reject(new Error("stdin ended before the go")));
  });
}

async function churn(c: ChurnCommand): Promise<void> {
  const registry = await openWriter(c.registry);
  const adds = Math.floor(c.changes / 2);
  const metrics = c.pollMetrics !== false;
  // Also a check that weftd answers, and (fetch loads lazily) loads the client before any window.
  await tableState(c.metricsPort);
  if (c.waitForGo === true) {
    say({ phase: "ready", cpu_seconds: cpuNow() });
    await stdinLine();
  }
  const tail = new Tail(c.logPath);
  tail.lines(); // what is there before the churn
  const times = new Map<string, number>();
  say({ phase: "baseline", cpu_seconds: cpuNow() });
  const baselineEnd = performance.now() + c.baselineSeconds * 1000;
  while (performance.now() < baselineEnd) {
    if (metrics) await tableState(c.metricsPort);
    await sleep(c.pollMs);
  }
  const before = await tableState(c.metricsPort);
  say({ phase: "churn", cpu_seconds: cpuNow() });
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
    if (metrics) await tableState(c.metricsPort);
    tableTimes(tail.lines(), times);
    // Changes are seen in order: change k is "peer added" (k < adds) or "peer removed" of its subnet.
    for (;;) {
      const k = seen;
      if (k >= adds * 2 || began[k] === undefined) break;
      const i = c.firstIndex + (k < adds ? k : k - adds);
      const at = times.get(`${k < adds ? "peer added" : "peer removed"} ${formatPrefix(peerSubnet(i))}`);
      if (at === undefined) break;
      latencies[k] = Math.max(0, at - (began[k] as number));
      seen++;
    }
    if (!writing && deadline === Number.POSITIVE_INFINITY) deadline = performance.now() + 30_000;
    await sleep(c.pollMs);
  }
  await writer;
  await registry.close();
  const after = await tableState(c.metricsPort);
  const result: ChurnResult = {
    phase: "done",
    latencies_ms: latencies,
    unseen: adds * 2 - seen,
    write_seconds: writeSeconds,
    cpu_seconds: cpuNow(),
    table_updates: {
      count: after.updates - before.updates,
      seconds: after.updateSeconds - before.updateSeconds,
      max_seconds: after.updateMaxSeconds,
    },
  };
  say(result);
}

function cpuNow(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
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

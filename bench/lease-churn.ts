// CPU per lease change against the number of peers, for one node over fakes
// (no root): the file registry in a temporary directory (or the memory one),
// the lease manager, the table and the engine as control/node.ts builds them.
//
//   node dist/bench/lease-churn.js [--peers 40,5000] [--changes 100] [--registry file|memory]
//
// Each change rewrites one peer's key with a new PublicIP and waits until the
// engine holds a table with it; CPU is this process's user+system time over
// all changes, divided by their number. The writer's own cost (one small file
// and a rename) is included and the same at any size. Not `bench scale`: that
// runs weftd itself in namespaces, with etcd and churn at a steady rate.

import { mkdtempSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { Node } from "../control/node.js";
import { FileRegistry } from "../control/registry/file.js";
import { MemoryRegistry } from "../control/registry/memory.js";
import type { Registry } from "../control/registry/registry.js";
import { FakeDevice, FakeTransport } from "../dataplane/fake-io.js";
import type { LeaseTable } from "../dataplane/leases.js";
import { plainDataplane } from "../dataplane/plain.js";
import { formatIpv4, parseIpv4 } from "../net/addr.js";

const CONFIG = '{"Network":"10.0.0.0/8","Backend":{"Type":"udp","Port":8285}}';
const OWN_IP = parseIpv4("198.18.0.1");
const peerIp = (i: number) => (parseIpv4("198.19.0.0") + i) >>> 0;
/** Peer i's subnet: 10.x.y.0/24 from 10.1.0.0 up, leaving 10.0.x for this node. */
const keyOf = (i: number) => `10.${((i + 256) >> 8) & 255}.${(i + 256) & 255}.0-24`;
const leaseValue = (ip: number) => `{"PublicIP":"${formatIpv4(ip)}","PublicIPv6":null}`;

interface Row {
  peers: number;
  registry: string;
  startMs: number;
  startCpuMs: number;
  changes: number;
  cpuPerChangeMs: number;
  wallPerChangeMs: number;
  heapMB: number;
}

function cpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

async function run(peers: number, changes: number, kind: string): Promise<Row> {
  const dir = mkdtempSync(join(tmpdir(), "weft-churn-"));
  let registry: Registry;
  let write: (key: string, value: string) => void;
  if (kind === "memory") {
    const memory = new MemoryRegistry();
    memory.setNetworkConfig(CONFIG);
    const far = Date.now() + 10 * 86_400_000;
    for (let i = 1; i <= peers; i++) memory.put(keyOf(i), leaseValue(peerIp(i)), far);
    write = (key, value) => memory.put(key, value, far);
    registry = memory;
  } else {
    for (const sub of ["subnets", "leases", "tmp"]) await mkdir(join(dir, sub), { recursive: true });
    writeFileSync(join(dir, "config"), CONFIG);
    const far = String(Date.now() + 10 * 86_400_000);
    for (let i = 1; i <= peers; i++) {
      writeFileSync(join(dir, "leases", keyOf(i)), far);
      writeFileSync(join(dir, "subnets", keyOf(i)), leaseValue(peerIp(i)));
    }
    let n = 0;
    write = (key, value) => {
      const temp = join(dir, "tmp", `churn-${n++}`);
      writeFileSync(temp, value);
      renameSync(temp, join(dir, "subnets", key));
    };
    registry = await FileRegistry.open(dir);
  }
  let swapped: ((t: LeaseTable) => void) | null = null;
  // The watch's first full scan reports the connection: churn starts after it, not during it.
  let watching: () => void = () => {};
  const scanned = new Promise<void>((resolve) => {
    watching = resolve;
  });
  const node = new Node({
    registry,
    publicIp: OWN_IP,
    manager: { random: () => 0, onConnection: (connected) => connected && watching() },
    openDataplane: async () => ({
      ...plainDataplane({
        device: new FakeDevice("flannel0", { record: false }),
        transport: new FakeTransport(8285, { record: false }),
      }),
      mtu: 1472,
    }),
  });
  const t0 = performance.now();
  const c0 = cpuMs();
  await node.start();
  const startMs = performance.now() - t0;
  const startCpuMs = cpuMs() - c0;
  const engine = node.engine;
  if (engine === null) throw new Error("no engine after start");
  const setTable = engine.setTable.bind(engine);
  engine.setTable = (table: LeaseTable) => {
    setTable(table);
    swapped?.(table);
  };
  await scanned;
  const c1 = cpuMs();
  const w1 = performance.now();
  for (let k = 0; k < changes; k++) {
    const i = 1 + ((k * 7919) % peers);
    const ip = (parseIpv4("198.18.1.0") + k) >>> 0;
    const subnetBase = parseIpv4(keyOf(i).split("-")[0] as string);
    const reached = new Promise<void>((resolve) => {
      swapped = (table) => {
        const id = table.lookup(subnetBase);
        if (id >= 0 && table.peerAddr[id] === ip) resolve();
      };
    });
    write(keyOf(i), leaseValue(ip));
    await reached;
  }
  const row: Row = {
    peers,
    registry: kind,
    startMs: Math.round(startMs),
    startCpuMs: Math.round(startCpuMs),
    changes,
    cpuPerChangeMs: (cpuMs() - c1) / changes,
    wallPerChangeMs: (performance.now() - w1) / changes,
    heapMB: process.memoryUsage().heapUsed / 2 ** 20,
  };
  node.stop();
  await registry.close();
  rmSync(dir, { recursive: true, force: true });
  return row;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      peers: { type: "string", default: "40,5000" },
      changes: { type: "string", default: "100" },
      registry: { type: "string", default: "file" },
    },
  });
  // The registry's watch and the node's timers do not hold the process (a daemon's must not): this does.
  const keepAlive = setInterval(() => {}, 1000);
  const counts = values.peers.split(",").map(Number);
  const changes = Number(values.changes);
  if (counts.some((n) => !(Number.isInteger(n) && n >= 1 && n <= 60_000))) {
    throw new Error(`--peers "${values.peers}" must be whole numbers from 1 to 60000`);
  }
  if (!(Number.isInteger(changes) && changes >= 1)) throw new Error(`--changes "${values.changes}" must be at least 1`);
  if (values.registry !== "file" && values.registry !== "memory") {
    throw new Error(`--registry "${values.registry}" must be file or memory`);
  }
  // A short run first, so the first size measured does not pay for compiling the code.
  await run(40, 20, values.registry);
  for (const peers of counts) {
    const r = await run(peers, changes, values.registry);
    process.stdout.write(
      `${String(r.peers).padStart(6)} peers (${r.registry}): start ${r.startMs} ms wall, ${r.startCpuMs} ms CPU; ` +
        `per change ${r.cpuPerChangeMs.toFixed(3)} ms CPU, ${r.wallPerChangeMs.toFixed(3)} ms wall; heap ${r.heapMB.toFixed(1)} MB\n`,
    );
  }
  clearInterval(keepAlive);
}

main().catch((err) => {
  process.stderr.write(`lease-churn: ${(err as Error).message}\n`);
  process.exit(1);
});

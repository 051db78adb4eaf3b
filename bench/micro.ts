// `bench micro`: the hot-path pieces one by one with tinybench. Every
// iteration handles one batch of 64 packets (64 B, from the seeded trace
// generator) already in an arena, so the figures are packets/s of that piece
// alone: no arena copy, no syscalls. Where a piece changes the packet (TTL),
// the iteration also restores the three header bytes it changed (TTL and
// checksum) so every iteration does the same work; that restore is included.

import { parseArgs } from "node:util";
import { Bench } from "tinybench";
import { engineOver, FakeDevice, FakeTransport } from "../dataplane/fake-io.js";
import { LeaseTable } from "../dataplane/leases.js";
import { buildIcmpError, CODE_NET_UNREACH, ICMP_DEST_UNREACH, ICMP_ERROR_MAX } from "../dataplane/wire/icmp.js";
import { Ipv4View, readAddr } from "../dataplane/wire/ipv4.js";
import { type Ipv4Prefix, parseIpv4 } from "../net/addr.js";
import { FlannelRouteList, generatedInput, positiveInt, type ReplayInput } from "./replay.js";
import {
  fmtSummary,
  formatTable,
  jsonNumber,
  machineInfo,
  machineLine,
  Progress,
  type Summary,
  summarize,
  writeResult,
} from "./report.js";

const BATCH = 64;
const SLOT = 2048;
const LOCAL = parseIpv4("10.244.1.0");

/** A batch of 64-byte packets over `leases` destinations, laid out in a slot arena like a read. */
interface Fixture {
  input: ReplayInput;
  table: LeaseTable;
  arena: Uint8Array;
  lengths: Uint32Array;
  dsts: Uint32Array;
  /** Each slot's original TTL and checksum bytes, to undo an in-place TTL decrement. */
  saved: Uint8Array;
}

function fixture(leases: number): Fixture {
  const input = generatedInput(64, leases, Math.max(BATCH, leases));
  const table = LeaseTable.build(input.network, input.subnetLen, input.leases, 8285);
  const arena = new Uint8Array(BATCH * SLOT);
  const lengths = new Uint32Array(BATCH);
  const dsts = new Uint32Array(BATCH);
  const saved = new Uint8Array(BATCH * 3);
  // Spread the batch over the trace, so a big lease count really has far-apart destinations.
  const stride = Math.max(1, Math.floor(input.packets.length / BATCH));
  for (let i = 0; i < BATCH; i++) {
    const p = input.packets[i * stride] as Uint8Array;
    arena.set(p, i * SLOT);
    lengths[i] = p.length;
    dsts[i] = readAddr(p, 16);
    saved[i * 3] = p[8] as number;
    saved[i * 3 + 1] = p[10] as number;
    saved[i * 3 + 2] = p[11] as number;
  }
  return { input, table, arena, lengths, dsts, saved };
}

function restoreTtl(bytes: Uint8Array, saved: Uint8Array): void {
  for (let i = 0; i < BATCH; i++) {
    const o = i * SLOT;
    bytes[o + 8] = saved[i * 3] as number;
    bytes[o + 10] = saved[i * 3 + 1] as number;
    bytes[o + 11] = saved[i * 3 + 2] as number;
  }
}

/** Keeps results observable so the JIT cannot drop the work. */
let sink = 0;

interface MicroTask {
  name: string;
  what: string;
  fn: () => void;
}

function tasks(): MicroTask[] {
  const f256 = fixture(256);
  const f64k = fixture(65536);
  const view = new Ipv4View();
  const list: MicroTask[] = [];

  for (const [f, n] of [
    [f256, 256],
    [f64k, 65536],
  ] as const) {
    const table = f.table;
    const dsts = f.dsts;
    list.push({
      name: `lookup: LeaseTable, ${n} leases`,
      what: "index lookup of each packet's destination",
      fn: () => {
        let s = 0;
        for (let i = 0; i < BATCH; i++) s += table.lookup(dsts[i] as number);
        sink += s;
      },
    });
  }
  {
    const routes = new FlannelRouteList(f256.input.leases);
    const dsts = f256.dsts;
    list.push({
      name: "lookup: flannel list, 256 leases",
      what: "flannel's linear scan with swap-to-front (the replay baseline)",
      fn: () => {
        let s = 0;
        for (let i = 0; i < BATCH; i++) s += routes.find(dsts[i] as number);
        sink += s;
      },
    });
  }
  {
    const { arena, lengths } = f256;
    list.push({
      name: "IPv4 validation",
      what: "Ipv4View.check on each packet",
      fn: () => {
        let s = 0;
        for (let i = 0; i < BATCH; i++) s += view.check(arena, i * SLOT, lengths[i] as number);
        sink += s;
      },
    });
  }
  {
    const { arena, lengths, saved } = f256;
    list.push({
      name: "TTL-1 + checksum",
      what: "RFC 1624 incremental update in place (+ restoring 3 bytes per packet)",
      fn: () => {
        let s = 0;
        for (let i = 0; i < BATCH; i++) {
          view.check(arena, i * SLOT, lengths[i] as number);
          s += view.decrementTtl();
        }
        restoreTtl(arena, saved);
        sink += s;
      },
    });
  }
  {
    const { arena, lengths } = f256;
    const out = new Uint8Array(BATCH * ICMP_ERROR_MAX);
    list.push({
      name: "ICMP error build",
      what: "Net Unreachable about each packet (header + 8 bytes quoted, both checksums)",
      fn: () => {
        let s = 0;
        for (let i = 0; i < BATCH; i++) {
          view.check(arena, i * SLOT, lengths[i] as number);
          s += buildIcmpError(out, i * ICMP_ERROR_MAX, ICMP_DEST_UNREACH, CODE_NET_UNREACH, 0, view, LOCAL);
        }
        sink += s;
      },
    });
  }
  {
    const { table, dsts, lengths } = f256;
    const ids = new Int32Array(BATCH);
    for (let i = 0; i < BATCH; i++) ids[i] = table.lookup(dsts[i] as number);
    const offsets = new Uint32Array(BATCH);
    const lens = new Uint32Array(BATCH);
    const addrs = new Uint32Array(BATCH);
    const ports = new Uint16Array(BATCH);
    list.push({
      name: "batch staging",
      what: "offset, length, peer address and port of each packet into the send arrays",
      fn: () => {
        for (let i = 0; i < BATCH; i++) {
          const id = ids[i] as number;
          offsets[i] = i * SLOT;
          lens[i] = lengths[i] as number;
          addrs[i] = table.peerAddr[id] as number;
          ports[i] = table.peerPort[id] as number;
        }
        sink += addrs[BATCH - 1] as number;
      },
    });
  }
  for (const [f, n] of [
    [f256, 256],
    [f64k, 65536],
  ] as const) {
    const device = new FakeDevice("flannel0", { capacity: BATCH, slotSize: SLOT, record: false });
    const transport = new FakeTransport(8285, { capacity: BATCH, slotSize: SLOT, record: false });
    const engine = engineOver(device, transport, { localAddr: LOCAL, mtu: 1472 });
    engine.setTable(f.table);
    engine.start();
    device.rx.bytes.set(f.arena);
    device.rx.lengths.set(f.lengths);
    const bytes = device.rx.bytes;
    const saved = f.saved;
    list.push({
      name: `engine batch flannel0→peers, ${n} leases`,
      what: "Engine.onDeviceBatch: all of the above per packet, one fake send (+ TTL restore)",
      fn: () => {
        engine.onDeviceBatch(BATCH);
        restoreTtl(bytes, saved);
      },
    });
  }
  {
    const f = f256;
    const device = new FakeDevice("flannel0", { capacity: BATCH, slotSize: SLOT, record: false });
    const transport = new FakeTransport(8285, { capacity: BATCH, slotSize: SLOT, record: false });
    const engine = engineOver(device, transport, { localAddr: LOCAL, mtu: 1472 });
    // The receiving side: the packets come from the peer that leases their source.
    const network = f.input.network as Ipv4Prefix;
    const sender = parseIpv4("198.18.0.1");
    engine.setTable(
      LeaseTable.build(
        network,
        f.input.subnetLen,
        [{ subnet: { base: parseIpv4("10.244.1.0"), len: 24 }, publicIp: sender }],
        8285,
      ),
    );
    engine.start();
    transport.rx.bytes.set(f.arena);
    transport.rx.lengths.set(f.lengths);
    transport.rx.srcAddr.fill(sender);
    transport.rx.srcPort.fill(8285);
    const bytes = transport.rx.bytes;
    const saved = f.saved;
    list.push({
      name: "engine batch peers→flannel0",
      what: "Engine.onTransportBatch: sender check, validation, MTU, TTL-1, one fake write (+ TTL restore)",
      fn: () => {
        engine.onTransportBatch(BATCH);
        restoreTtl(bytes, saved);
      },
    });
  }
  return list;
}

/**
 * Batches per tinybench sample. One batch of cheap work takes less than the
 * clock read around it, so each sample times INNER back-to-back batches with
 * hrtime and reports the mean per batch (tinybench's overriddenDuration).
 */
const INNER = 32;

function timed(fn: () => void): () => { overriddenDuration: number; overriddenIterationCost: number } {
  return () => {
    const t0 = process.hrtime.bigint();
    for (let k = 0; k < INNER; k++) fn();
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    // The sample is one batch; the time budget is charged the whole call.
    return { overriddenDuration: ms / INNER, overriddenIterationCost: ms };
  };
}

interface MicroRow {
  name: string;
  what: string;
  /** Packets per second (64 per iteration ÷ median iteration time), per repetition. */
  pps: Summary;
  ns_per_packet: number | null;
  rme_percent: number | null;
}

const USAGE = `usage: npm run bench -- micro [options]
  --reps N       tinybench runs per task (default 3)
  --time MS      time per task per run (default 500)
  --filter TEXT  only tasks whose name contains TEXT
  --quick        1 run, 100 ms
  --out-dir DIR  where the JSON goes (default bench/results)`;

export async function runMicro(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      reps: { type: "string" },
      time: { type: "string" },
      filter: { type: "string" },
      quick: { type: "boolean", default: false },
      "out-dir": { type: "string" },
      help: { type: "boolean", default: false },
    },
  });
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const quick = values.quick === true;
  const reps = positiveInt(values.reps, "--reps", quick ? 1 : 3);
  const time = positiveInt(values.time, "--time", quick ? 100 : 500);
  const all = tasks().filter((t) => values.filter === undefined || t.name.includes(values.filter));
  const machine = machineInfo();
  const perTask = new Map<string, { pps: number[]; rme: number[] }>(all.map((t) => [t.name, { pps: [], rme: [] }]));
  const progress = new Progress(reps);
  for (let r = 0; r < reps; r++) {
    progress.step(`run ${r + 1} of ${reps} (${all.length} tasks × ${time} ms)`);
    const bench = new Bench({ time, warmupTime: Math.min(250, time), throws: true });
    for (const t of all) bench.add(t.name, timed(t.fn), { async: false });
    await bench.run();
    for (const task of bench.tasks) {
      const res = task.result;
      if (res.state !== "completed") throw new Error(`micro: task ${task.name} ended ${res.state}`);
      const entry = perTask.get(task.name);
      if (entry === undefined) continue;
      const ms = res.latency.p50 > 0 ? res.latency.p50 : res.period;
      entry.pps.push((BATCH * 1000) / ms);
      entry.rme.push(res.latency.rme);
    }
  }
  progress.finish();
  const rows: MicroRow[] = all.map((t) => {
    const e = perTask.get(t.name) as { pps: number[]; rme: number[] };
    const pps = summarize(e.pps);
    return {
      name: t.name,
      what: t.what,
      pps,
      ns_per_packet: jsonNumber(1e9 / pps.median, 4),
      rme_percent: jsonNumber(Math.max(...e.rme), 3),
    };
  });
  const out: string[] = [];
  out.push(`bench micro — ${machineLine(machine)}`);
  out.push(
    `tinybench, one batch of ${BATCH} packets of 64 B per iteration (already in the arena: no copy, no syscall); each sample = mean of ${INNER} back-to-back batches timed with hrtime; ${reps} run(s) of ${time} ms per task; Mpps = ${BATCH} ÷ median batch time, median [min–max] over runs`,
  );
  out.push("");
  out.push(
    formatTable(
      ["task", "Mpps", "ns/packet", "what one packet costs"],
      rows.map((r) => [
        r.name,
        fmtSummary(scale(r.pps, 1e-6), 2),
        r.ns_per_packet === null ? "-" : r.ns_per_packet.toFixed(1),
        r.what,
      ]),
    ),
  );
  const path = writeResult(
    "micro",
    {
      kind: "micro",
      machine,
      method: { batch: BATCH, batches_per_sample: INNER, packet_bytes: 64, reps, time_ms: time, unit: "packets/s" },
      results: rows.map((r) => ({
        ...r,
        pps: { median: jsonNumber(r.pps.median), min: jsonNumber(r.pps.min), max: jsonNumber(r.pps.max), n: r.pps.n },
      })),
    },
    { dir: values["out-dir"] },
  );
  out.push("");
  out.push(`JSON: ${path}`);
  process.stdout.write(`${out.join("\n")}\n`);
  if (sink === 0.5) process.stdout.write("\n");
  return 0;
}

function scale(s: Summary, k: number): Summary {
  return { median: s.median * k, min: s.min * k, max: s.max * k, n: s.n };
}

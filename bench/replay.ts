// `bench replay`: traces through the production engine over the in-memory
// fakes, and through flannel's lookup, in the same run (BENCH.md "In-process
// replay").
//
//   trace (generated once, or a pcap) ──► pre-cut into batches of 64 ─┐
//                                                                     ▼ per batch, timed:
//   FakeDevice.inject: copy each packet into the rx arena (the kernel's read)
//     ├─► Engine.onDeviceBatch      validate ─► LeaseTable.lookup ─► TTL-1 ─► stage ─► FakeTransport.send
//     └─► FlannelBaseline.onBatch   validate ─► linear scan, swap to front ─► TTL-1 ─► stage ─► FakeTransport.send
//
// The trace is generated (or read) before the clock starts and never written:
// every batch is copied into the arena afresh, so the in-place TTL decrement of
// one pass never leaks into the next and nothing is allocated while timing.

import { readFileSync } from "node:fs";
import { basename } from "node:path";
import { parseArgs } from "node:util";
import { DirectionCounters, DROP_NAMES, Drop } from "../dataplane/counters.js";
import { engineOver, FakeDevice, FakeTransport } from "../dataplane/fake-io.js";
import { MAX_RUN_BYTES } from "../dataplane/io.js";
import { LeaseTable, type PeerLease } from "../dataplane/leases.js";
import { Ipv4Check, Ipv4View, readAddr } from "../dataplane/wire/ipv4.js";
import { readCapture } from "../fixtures/pcap.js";
import { generateTrace, type TraceLease, type TraceSize } from "../fixtures/tracegen.js";
import { formatPrefix, type Ipv4Prefix, parseIpv4, parsePrefix, prefixContains, prefixMask } from "../net/addr.js";
import {
  fmt,
  fmtRatio,
  fmtSummary,
  formatTable,
  jsonNumber,
  machineInfo,
  machineLine,
  Progress,
  ratio,
  type Summary,
  summarize,
  writeResult,
} from "./report.js";

/** Packets per batch: the native reader's default capacity. */
export const BATCH = 64;
export const UDP_PORT = 8285;
/** flannel0's address on the sending node (source of ICMP errors). */
const LOCAL_ADDR = parseIpv4("10.244.1.0");
/**
 * The engine's MTU here: the largest it takes (a UDP datagram's payload). Traces hold packets above
 * flannel0's 1472 (IMIX's 1500 B, captures of GRO'd traffic), which weftd never
 * reads from flannel0 and would drop as oversize; the replay measures lookup
 * and forwarding, as flannel's lookup beside it does, not that check.
 */
const MTU = MAX_RUN_BYTES;

export interface ReplayInput {
  /** "64 B", "1400 B", "IMIX", or a file name. */
  readonly name: string;
  /** Where the packets came from, for the JSON. */
  readonly source: string;
  readonly packets: readonly Uint8Array[];
  readonly network: Ipv4Prefix;
  readonly subnetLen: number;
  readonly leases: readonly PeerLease[];
}

// ---------------------------------------------------------------------------
// flannel's lookup, as its C proxy does it (backend/udp/proxy_amd64.c,
// find_route): scan the route list in order, test (dst & mask) == net, and
// swap the hit with entry 0 ("packets for same dest tend to come in bursts").

export class FlannelRouteList {
  private readonly nets: Uint32Array;
  private readonly masks: Uint32Array;
  private readonly peers: Uint32Array;

  constructor(leases: readonly PeerLease[]) {
    this.nets = new Uint32Array(leases.length);
    this.masks = new Uint32Array(leases.length);
    this.peers = new Uint32Array(leases.length);
    leases.forEach((l, i) => {
      this.masks[i] = prefixMask(l.subnet.len);
      this.nets[i] = l.subnet.base;
      this.peers[i] = l.publicIp;
    });
  }

  get size(): number {
    return this.nets.length;
  }

  /** The peer address for `dst`, or -1 when no route covers it. Reorders the list. */
  find(dst: number): number {
    const nets = this.nets;
    const masks = this.masks;
    const n = nets.length;
    for (let i = 0; i < n; i++) {
      if ((dst & masks[i]) >>> 0 === nets[i]) {
        if (i !== 0) {
          const net = nets[i];
          const mask = masks[i];
          const peer = this.peers[i];
          nets[i] = nets[0];
          masks[i] = masks[0];
          this.peers[i] = this.peers[0];
          nets[0] = net;
          masks[0] = mask;
          this.peers[0] = peer;
        }
        return this.peers[0];
      }
    }
    return -1;
  }
}

/**
 * The TUN→UDP direction with flannel's lookup and otherwise the engine's work:
 * the same IPv4 validation, TTL-1 with the RFC 1624 checksum update, staging
 * into offset/length/peer arrays and one send per batch. No route and TTL
 * expiry are counted drops; unlike the engine it builds no ICMP errors (the
 * generated traces need none).
 */
export class FlannelBaseline {
  readonly counters = new DirectionCounters();
  private readonly view = new Ipv4View();
  private readonly offsets: Uint32Array;
  private readonly lengths: Uint32Array;
  private readonly addrs: Uint32Array;
  private readonly ports: Uint16Array;

  constructor(
    private readonly device: FakeDevice,
    private readonly transport: FakeTransport,
    private readonly routes: FlannelRouteList,
    private readonly port = UDP_PORT,
  ) {
    const cap = device.rx.capacity;
    this.offsets = new Uint32Array(cap);
    this.lengths = new Uint32Array(cap);
    this.addrs = new Uint32Array(cap);
    this.ports = new Uint16Array(cap);
  }

  readonly onBatch = (count: number): void => {
    const rx = this.device.rx;
    const bytes = rx.bytes;
    const ip = this.view;
    const c = this.counters;
    let staged = 0;
    c.batches++;
    for (let i = 0; i < count; i++) {
      const off = i * rx.slotSize;
      const len = rx.lengths[i] as number;
      c.inPackets++;
      c.inBytes += len;
      const verdict = ip.check(bytes, off, len);
      if (verdict !== Ipv4Check.Ok) {
        c.drops[verdict === Ipv4Check.NotIpv4 ? Drop.NotIpv4 : Drop.Malformed]++;
        continue;
      }
      const peer = this.routes.find(ip.dst);
      if (peer < 0) {
        c.drops[Drop.NoRoute]++;
        continue;
      }
      if (ip.ttl <= 1) {
        c.drops[Drop.TtlExpired]++;
        continue;
      }
      ip.decrementTtl();
      const total = ip.totalLength;
      this.offsets[staged] = off;
      this.lengths[staged] = total;
      this.addrs[staged] = peer;
      this.ports[staged] = this.port;
      staged++;
      c.outPackets++;
      c.outBytes += total;
    }
    if (staged > 0) this.transport.send(bytes, this.offsets, this.lengths, this.addrs, this.ports, 0, staged);
  };
}

// ---------------------------------------------------------------------------
// Rigs: one implementation over its own fake device and transport.

export type Impl = "engine" | "baseline";

export interface Rig {
  readonly impl: Impl;
  readonly device: FakeDevice;
  readonly transport: FakeTransport;
  /** The TUN→UDP direction's counters (read / forwarded / drops per reason). */
  readonly counters: DirectionCounters;
}

export function makeRig(impl: Impl, input: ReplayInput, opts: { record?: boolean } = {}): Rig {
  const record = opts.record ?? false;
  const device = new FakeDevice("flannel0", { capacity: BATCH, record });
  const transport = new FakeTransport(UDP_PORT, { capacity: BATCH, record });
  if (impl === "engine") {
    const engine = engineOver(device, transport, { localAddr: LOCAL_ADDR, mtu: MTU });
    engine.setTable(LeaseTable.build(input.network, input.subnetLen, input.leases, UDP_PORT));
    engine.start();
    return { impl, device, transport, counters: engine.counters.tx };
  }
  const baseline = new FlannelBaseline(device, transport, new FlannelRouteList(input.leases));
  device.start(baseline.onBatch);
  return { impl, device, transport, counters: baseline.counters };
}

/** Cuts the trace into batch-sized arrays once, so the timed loop allocates nothing. */
export function cutBatches(packets: readonly Uint8Array[], size = BATCH): Uint8Array[][] {
  const batches: Uint8Array[][] = [];
  for (let i = 0; i < packets.length; i += size) batches.push(packets.slice(i, i + size));
  return batches;
}

/** One pass over every packet of the trace (tests: exact counts). */
export function replayOnce(rig: Rig, packets: readonly Uint8Array[]): void {
  for (const batch of cutBatches(packets)) rig.device.inject(batch);
}

export interface Measurement {
  packets: number;
  bytes: number;
  /** CPU time (user + sys) this process used meanwhile: the rate's denominator. */
  cpuSeconds: number;
  /** Wall-clock time, for the record. */
  seconds: number;
}

/** Batches between clock reads: keeps the clocks out of the per-batch cost. */
const CHUNK = 16;

function cpuMicros(): number {
  const u = process.cpuUsage();
  return u.user + u.system;
}

/**
 * Runs `step` in chunks until this process has used `budgetMs` of CPU (or
 * ten times that of wall time has passed, on a starved machine). Rates are
 * taken per CPU-second: on a shared machine the process is descheduled for
 * long stretches, and wall time would measure the neighbours.
 */
function timedLoop(budgetMs: number, step: () => void): { cpuSeconds: number; seconds: number } {
  const budgetUs = budgetMs * 1000;
  const wallCap = BigInt(Math.round(budgetMs * 10 * 1e6));
  const c0 = cpuMicros();
  const t0 = process.hrtime.bigint();
  let cpu = 0;
  let wall = 0n;
  do {
    for (let k = 0; k < CHUNK; k++) step();
    cpu = cpuMicros() - c0;
    wall = process.hrtime.bigint() - t0;
  } while (cpu < budgetUs && wall < wallCap);
  return { cpuSeconds: Math.max(cpu, 1) / 1e6, seconds: Number(wall) / 1e9 };
}

/**
 * Replays batches round-robin from `cursor.next` for about `budgetMs` of CPU
 * time and returns what was forwarded (counted by the fake transport).
 */
export function measure(
  rig: Rig,
  batches: readonly Uint8Array[][],
  budgetMs: number,
  cursor: { next: number },
): Measurement {
  const device = rig.device;
  const transport = rig.transport;
  const n = batches.length;
  const packets0 = transport.outPackets;
  const bytes0 = transport.outBytes;
  let b = cursor.next;
  const t = timedLoop(budgetMs, () => {
    device.inject(batches[b] as Uint8Array[]);
    b++;
    if (b === n) b = 0;
  });
  cursor.next = b;
  return { packets: transport.outPackets - packets0, bytes: transport.outBytes - bytes0, ...t };
}

/** The cost of the arena copy alone: inject into a device whose handler does nothing. */
export function measureCopyOnly(batches: readonly Uint8Array[][], budgetMs: number): Measurement {
  const device = new FakeDevice("copy", { capacity: BATCH, record: false });
  let packets = 0;
  let bytes = 0;
  device.start((count) => {
    packets += count;
    for (let i = 0; i < count; i++) bytes += device.rx.lengths[i] as number;
  });
  const n = batches.length;
  let b = 0;
  const t = timedLoop(budgetMs, () => {
    device.inject(batches[b] as Uint8Array[]);
    b++;
    if (b === n) b = 0;
  });
  return { packets, bytes, ...t };
}

/** Drops per reason (only the non-zero ones). */
export function dropsOf(c: DirectionCounters): Record<string, number> {
  const out: Record<string, number> = {};
  for (let i = 0; i < DROP_NAMES.length; i++) {
    const v = c.drops[i] as number;
    if (v > 0) out[DROP_NAMES[i] as string] = v;
  }
  return out;
}

// ---------------------------------------------------------------------------
// Inputs: generated traces and pcap files.

function parseLeases(list: readonly TraceLease[]): PeerLease[] {
  return list.map((l) => {
    const subnet = parsePrefix(l.subnet, true);
    const publicIp = parseIpv4(l.publicIp);
    if (subnet === null || publicIp < 0) throw new Error(`lease ${JSON.stringify(l)} is not {subnet, publicIp}`);
    return { subnet, publicIp };
  });
}

/** The flannel network holding every lease: 10.244.0.0/16 or 10.0.0.0/8 (the generator's), else their common prefix. */
export function networkFor(leases: readonly PeerLease[]): Ipv4Prefix {
  for (const text of ["10.244.0.0/16", "10.0.0.0/8"]) {
    const net = parsePrefix(text, true) as Ipv4Prefix;
    if (leases.every((l) => l.subnet.len > net.len && prefixContains(net, l.subnet.base))) return net;
  }
  let len = Math.min(...leases.map((l) => l.subnet.len)) - 1;
  const first = (leases[0] as PeerLease).subnet.base;
  while (len > 0 && !leases.every((l) => (l.subnet.base & prefixMask(len)) >>> 0 === (first & prefixMask(len)) >>> 0))
    len--;
  return { base: (first & prefixMask(len)) >>> 0, len };
}

const SIZE_NAMES: Record<string, string> = { "64": "64 B", "1400": "1400 B", imix: "IMIX" };

export function generatedInput(size: TraceSize, leases: number, packets: number, seed = 1): ReplayInput {
  const trace = generateTrace({ size, packets, leases, seed });
  const parsed = parseLeases(trace.leases);
  return {
    name: SIZE_NAMES[String(size)] as string,
    source: `generated: size ${size}, ${packets} packets, ${leases} leases, seed ${seed}`,
    packets: trace.packets,
    network: networkFor(parsed),
    subnetLen: (parsed[0] as PeerLease).subnet.len,
    leases: parsed,
  };
}

/**
 * A pcap's IPv4 packets. Leases come from a JSON file ([{subnet, publicIp}],
 * what tracegen-cli --leases-out writes) or, without one, one lease per
 * destination /subnetLen inside `network`; destinations outside it are no-route drops.
 */
export function pcapInput(
  path: string,
  opts: { leasesFile?: string; network?: string; subnetLen?: number },
): ReplayInput {
  const capture = readCapture(readFileSync(path));
  const packets = capture.records.flatMap((r) => (r.ipv4 === null ? [] : [r.ipv4]));
  if (packets.length === 0) throw new Error(`${path}: no IPv4 packets`);
  let leases: PeerLease[];
  let network: Ipv4Prefix;
  let subnetLen: number;
  if (opts.leasesFile !== undefined) {
    leases = parseLeases(JSON.parse(readFileSync(opts.leasesFile, "utf8")) as TraceLease[]);
    if (leases.length === 0) throw new Error(`${opts.leasesFile}: no leases`);
    network = opts.network !== undefined ? mustPrefix(opts.network, "--network") : networkFor(leases);
    subnetLen = (leases[0] as PeerLease).subnet.len;
  } else {
    network = mustPrefix(opts.network ?? "10.244.0.0/16", "--network");
    subnetLen = opts.subnetLen ?? 24;
    if (!(subnetLen > network.len && subnetLen <= 30))
      throw new Error(`--subnet-len ${subnetLen} must be in ${network.len + 1}..30 for ${formatPrefix(network)}`);
    const mask = prefixMask(subnetLen);
    const seen = new Map<number, number>();
    for (const p of packets) {
      if (p.length < 20) continue;
      const dst = readAddr(p, 16);
      if (!prefixContains(network, dst)) continue;
      const base = (dst & mask) >>> 0;
      if (!seen.has(base)) seen.set(base, (parseIpv4("198.18.0.2") + seen.size) >>> 0);
    }
    leases = [...seen].map(([base, publicIp]) => ({ subnet: { base, len: subnetLen }, publicIp }));
  }
  return {
    name: basename(path),
    source: `pcap ${path} (${capture.format}), ${packets.length} IPv4 packets of ${capture.records.length} records`,
    packets,
    network,
    subnetLen,
    leases,
  };
}

function mustPrefix(text: string, flag: string): Ipv4Prefix {
  const p = parsePrefix(text, true);
  if (p === null) throw new Error(`${flag} ${JSON.stringify(text)} is not a network a.b.c.d/len`);
  return p;
}

// ---------------------------------------------------------------------------
// The run.

export interface ImplResult {
  /** Per CPU-second of this process. */
  mpps: Summary;
  gbps_inner: Summary;
  /** Per wall-clock second (lower when the machine is shared). */
  mpps_wall: Summary;
  drops: Record<string, number>;
}

export interface ReplayRow {
  trace: string;
  source: string;
  leases: number;
  packets: number;
  mean_packet_bytes: number;
  engine: ImplResult;
  baseline: ImplResult;
  /** Engine Mpps median ÷ baseline Mpps median. */
  ratio: number | null;
  /** min/max of the per-repetition ratios. */
  ratio_range: [number | null, number | null];
}

export interface ReplayOptions {
  reps: number;
  budgetMs: number;
  warmupMs: number;
}

/** Engine and baseline on one input, repetitions interleaved so drift hits both alike. */
export function benchInput(input: ReplayInput, opts: ReplayOptions): ReplayRow {
  const batches = cutBatches(input.packets);
  const engine = makeRig("engine", input);
  const baseline = makeRig("baseline", input);
  const ce = { next: 0 };
  const cb = { next: 0 };
  measure(engine, batches, opts.warmupMs, ce);
  measure(baseline, batches, opts.warmupMs, cb);
  const e: Measurement[] = [];
  const b: Measurement[] = [];
  for (let r = 0; r < opts.reps; r++) {
    e.push(measure(engine, batches, opts.budgetMs, ce));
    b.push(measure(baseline, batches, opts.budgetMs, cb));
  }
  for (const rig of [engine, baseline]) {
    const c = rig.counters;
    if (c.inPackets !== c.outPackets + c.dropped())
      throw new Error(
        `replay ${input.name}: ${rig.impl} read ${c.inPackets} but forwarded+dropped ${c.outPackets + c.dropped()}`,
      );
  }
  const mpps = (m: Measurement) => m.packets / m.cpuSeconds / 1e6;
  const gbps = (m: Measurement) => (m.bytes * 8) / m.cpuSeconds / 1e9;
  const wallMpps = (m: Measurement) => m.packets / m.seconds / 1e6;
  const perRep = e.map((m, i) => ratio(mpps(m), mpps(b[i] as Measurement)) ?? Number.NaN);
  const rs = summarize(perRep);
  const em = summarize(e.map(mpps));
  const bm = summarize(b.map(mpps));
  let bytes = 0;
  for (const p of input.packets) bytes += p.length;
  return {
    trace: input.name,
    source: input.source,
    leases: input.leases.length,
    packets: input.packets.length,
    mean_packet_bytes: bytes / input.packets.length,
    engine: {
      mpps: em,
      gbps_inner: summarize(e.map(gbps)),
      mpps_wall: summarize(e.map(wallMpps)),
      drops: dropsOf(engine.counters),
    },
    baseline: {
      mpps: bm,
      gbps_inner: summarize(b.map(gbps)),
      mpps_wall: summarize(b.map(wallMpps)),
      drops: dropsOf(baseline.counters),
    },
    ratio: ratio(em.median, bm.median),
    ratio_range: [jsonNumber(rs.min), jsonNumber(rs.max)],
  };
}

const CPU_NOTE =
  "Mpps and Gbit/s are per CPU-second of the benchmark process (process.cpuUsage user+sys, which also charges GC threads), not per wall second";
const COPY_NOTE =
  "each batch is copied from the pristine trace into the device's rx arena before processing (what the kernel's read does), and that copy is inside the timing; the trace is never modified, so TTLs are fresh every pass";
const BASELINE_NOTE =
  "baseline = flannel's udp proxy lookup (proxy_amd64.c find_route: linear scan over the route list, the hit swapped with entry 0) with the engine's validation, TTL-1 + checksum and staging";

function summaryJson(s: Summary): Record<string, number | null> {
  return { median: jsonNumber(s.median), min: jsonNumber(s.min), max: jsonNumber(s.max), n: s.n };
}

function implJson(r: ImplResult) {
  return {
    mpps: summaryJson(r.mpps),
    gbps_inner: summaryJson(r.gbps_inner),
    mpps_wall: summaryJson(r.mpps_wall),
    drops: r.drops,
  };
}

interface Targets {
  mpps64_min: number | null;
  mpps64_ok: boolean | null;
  flatness: Record<string, number | null>;
  flat64_ok: boolean | null;
  ratio_at_4096: Record<string, number | null>;
  ratio4096_ok: boolean | null;
}

function evaluateTargets(rows: readonly ReplayRow[]): Targets {
  const gen = rows.filter((r) => !r.source.startsWith("pcap"));
  const traces = [...new Set(gen.map((r) => r.trace))];
  const flatness: Record<string, number | null> = {};
  const at4096: Record<string, number | null> = {};
  for (const t of traces) {
    const m = gen.filter((r) => r.trace === t).map((r) => r.engine.mpps.median);
    flatness[t] = m.length > 1 ? jsonNumber(1 - Math.min(...m) / Math.max(...m), 3) : null;
    const r = gen.find((x) => x.trace === t && x.leases === 4096);
    at4096[t] = r === undefined ? null : jsonNumber(r.ratio, 3);
  }
  const m64 = gen.filter((r) => r.trace === "64 B").map((r) => r.engine.mpps.median);
  const mpps64 = m64.length > 0 ? Math.min(...m64) : null;
  const flat64 = flatness["64 B"];
  const r4096 = Object.values(at4096).filter((x): x is number => x !== null);
  return {
    mpps64_min: jsonNumber(mpps64, 4),
    mpps64_ok: mpps64 === null ? null : mpps64 >= 5,
    flatness,
    flat64_ok: flat64 === null || flat64 === undefined ? null : flat64 <= 0.1,
    ratio_at_4096: at4096,
    ratio4096_ok: r4096.length === 0 ? null : r4096.every((x) => x >= 10),
  };
}

export function replayTable(rows: readonly ReplayRow[]): string {
  return formatTable(
    [
      "trace",
      "leases",
      "engine Mpps",
      "engine Gbit/s inner",
      "baseline Mpps",
      "baseline Gbit/s inner",
      "engine/baseline",
      "drops",
    ],
    rows.map((r) => [
      r.trace,
      String(r.leases),
      fmtSummary(r.engine.mpps, 3),
      fmtSummary(r.engine.gbps_inner, 2),
      fmtSummary(r.baseline.mpps, 4),
      fmtSummary(r.baseline.gbps_inner, 3),
      `${fmtRatio(r.ratio, 1)}${r.engine.mpps.n > 1 && r.ratio_range[0] !== null && r.ratio_range[1] !== null ? ` [${fmt(r.ratio_range[0], 1)}–${fmt(r.ratio_range[1], 1)}]` : ""}`,
      Object.keys(r.engine.drops).length === 0
        ? "0"
        : Object.entries(r.engine.drops)
            .map(([k, v]) => `${k} ${v}`)
            .join(", "),
    ]),
  );
}

const USAGE = `usage: npm run bench -- replay [trace.pcap …] [options]
  without files: generated traces (64 B, 1400 B, IMIX) over 1, 256, 4096 and 65536 leases
  --reps N            timed repetitions per trace and implementation (default 3)
  --budget-ms MS      time per repetition (default 300)
  --packets N         packets per generated trace (default 65536)
  --sizes LIST        generated sizes, from 64,1400,imix (default all)
  --leases LIST       generated lease counts (default 1,256,4096,65536)
  --leases-file F     leases for the pcap files: JSON [{subnet, publicIp}] (tracegen-cli --leases-out)
  --network CIDR      without --leases-file: the network whose /subnet-len destinations get a lease each (default 10.244.0.0/16)
  --subnet-len N      (default 24)
  --quick             1 repetition, short budgets, small traces (smoke runs)
  --out-dir DIR       where the JSON goes (default bench/results)`;

function intList(text: string, flag: string): number[] {
  const list = text.split(",").map((s) => Number(s.trim()));
  if (list.some((n) => !Number.isInteger(n) || n < 1))
    throw new Error(`${flag} ${JSON.stringify(text)}: expected positive integers, comma-separated`);
  return list;
}

export function positiveInt(text: string | undefined, flag: string, def: number): number {
  if (text === undefined) return def;
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${flag} ${JSON.stringify(text)}: expected a positive integer`);
  return n;
}

export async function runReplay(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      reps: { type: "string" },
      "budget-ms": { type: "string" },
      packets: { type: "string" },
      sizes: { type: "string" },
      leases: { type: "string" },
      "leases-file": { type: "string" },
      network: { type: "string" },
      "subnet-len": { type: "string" },
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
  const budgetMs = positiveInt(values["budget-ms"], "--budget-ms", quick ? 50 : 300);
  const packets = positiveInt(values.packets, "--packets", quick ? 4096 : 65536);
  const leaseCounts = values.leases === undefined ? [1, 256, 4096, 65536] : intList(values.leases, "--leases");
  const sizes: TraceSize[] = (values.sizes ?? "64,1400,imix").split(",").map((s) => {
    const t = s.trim();
    if (t === "64" || t === "1400") return Number(t) as 64 | 1400;
    if (t === "imix") return "imix";
    throw new Error(`--sizes: ${JSON.stringify(t)} is not one of 64, 1400, imix`);
  });
  const opts: ReplayOptions = { reps, budgetMs, warmupMs: Math.max(20, budgetMs / 2) };
  const machine = machineInfo();

  type Job = { label: string; load: () => ReplayInput };
  const jobs: Job[] = [];
  if (positionals.length > 0) {
    const subnetLen =
      values["subnet-len"] === undefined ? undefined : positiveInt(values["subnet-len"], "--subnet-len", 24);
    for (const file of positionals) {
      jobs.push({
        label: file,
        load: () => pcapInput(file, { leasesFile: values["leases-file"], network: values.network, subnetLen }),
      });
    }
  } else {
    for (const size of sizes) {
      for (const n of leaseCounts) {
        jobs.push({
          label: `${SIZE_NAMES[String(size)]} over ${n} leases`,
          load: () => generatedInput(size, n, Math.max(packets, quick ? 0 : n)),
        });
      }
    }
  }

  const progress = new Progress(jobs.length);
  const rows: ReplayRow[] = [];
  const copyOnly: { trace: string; mpps: number | null; gbps_inner: number | null }[] = [];
  for (const job of jobs) {
    progress.step(job.label);
    const input = job.load();
    if (!copyOnly.some((c) => c.trace === input.name)) {
      const m = measureCopyOnly(cutBatches(input.packets), budgetMs);
      copyOnly.push({
        trace: input.name,
        mpps: jsonNumber(m.packets / m.cpuSeconds / 1e6, 4),
        gbps_inner: jsonNumber((m.bytes * 8) / m.cpuSeconds / 1e9, 4),
      });
    }
    rows.push(benchInput(input, opts));
  }
  progress.finish();

  const targets = evaluateTargets(rows);
  const out: string[] = [];
  out.push(`bench replay — ${machineLine(machine)}`);
  out.push(
    `one core, batches of ${BATCH}, ${reps} repetition(s) of ${budgetMs} ms of CPU each, median [min–max]; Gbit/s = inner (IP bytes)`,
  );
  out.push(`note: ${CPU_NOTE}; the machine is shared, wall-clock rates are in the JSON (mpps_wall)`);
  out.push(`note: ${COPY_NOTE}`);
  out.push(`note: ${BASELINE_NOTE}`);
  out.push(
    "mixes: 64 B = every packet 64 B IP; 1400 B = every packet 1400 B IP; IMIX = 7×40 : 4×576 : 1×1500 B (mean 353.8 B); TCP/UDP/ICMP mixed",
  );
  out.push("");
  out.push(replayTable(rows));
  out.push("");
  out.push(
    `arena copy alone (no processing): ${copyOnly.map((c) => `${c.trace} ${fmt(c.mpps, 1)} Mpps`).join(", ")} — the ceiling the copy puts on every row`,
  );
  if (positionals.length === 0) {
    out.push("targets (BENCH.md):");
    out.push(
      `  64 B ≥ 5 Mpps on one core: lowest median ${fmt(targets.mpps64_min, 2)} Mpps → ${targets.mpps64_ok === null ? "not measured" : targets.mpps64_ok ? "met" : "NOT met"}`,
    );
    out.push(
      `  flat within 10 % from 1 to 65,536 leases: spread ${Object.entries(targets.flatness)
        .map(([t, f]) => `${t} ${f === null ? "-" : `${(f * 100).toFixed(1)} %`}`)
        .join(", ")} → 64 B ${targets.flat64_ok === null ? "not measured" : targets.flat64_ok ? "met" : "NOT met"}`,
    );
    out.push(
      `  ≥ 10× the baseline at 4096 leases: ${Object.entries(targets.ratio_at_4096)
        .map(([t, r]) => `${t} ${fmtRatio(r, 1)}`)
        .join(", ")} → ${targets.ratio4096_ok === null ? "not measured" : targets.ratio4096_ok ? "met" : "NOT met"}`,
    );
  }
  const path = writeResult(
    "replay",
    {
      kind: "replay",
      machine,
      method: {
        batch: BATCH,
        reps,
        budget_cpu_ms: budgetMs,
        rate: CPU_NOTE,
        copy: COPY_NOTE,
        baseline: BASELINE_NOTE,
        gbps_layer: "inner",
      },
      results: rows.map((r) => ({
        ...r,
        mean_packet_bytes: jsonNumber(r.mean_packet_bytes, 5),
        engine: implJson(r.engine),
        baseline: implJson(r.baseline),
        ratio: jsonNumber(r.ratio, 4),
      })),
      copy_only: copyOnly,
      targets,
    },
    { dir: values["out-dir"] },
  );
  out.push(`JSON: ${path}`);
  process.stdout.write(`${out.join("\n")}\n`);
  return 0;
}

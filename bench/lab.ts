// `bench lab`: the BENCH.md topology, built from scratch per mode and per
// repetition, in namespaces named wbench-* (nothing in the root namespace):
//
//   wbench-p1 (pod) ─veth─ wbench-h1 ═eth0 198.18.0.1 ══ 198.18.0.2 eth0═ wbench-h2 ─veth─ wbench-p2 (pod)
//
//   direct  routes to the other pod subnet via the underlay (flannel's host-gw): the ceiling
//   vxlan   flannel.1 per host as flannel's vxlan backend wires it: the reference
//   weft    weftd on both hosts (udp backend, file registry), pods in their leases
//
// Per bring-up: TCP single stream (iperf3), UDP 1400 B and 64 B payloads with
// the batching generator (delivered pps at the sink, loss), RTT (ping), and for
// weft the CPU seconds per GB and peak RSS of both daemons. Repetitions
// interleave the modes so drift hits all of them alike; ratios are weft ÷ vxlan.
// `--replay trace.pcap` instead injects a capture from p1 and counts what reaches p2.

import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { parseIpv4 } from "../dataplane/addr.js";
import { internetChecksum, updateChecksum16 } from "../dataplane/wire/checksum.js";
import { readCapture } from "../fixtures/pcap.js";
import { Lab, type LabHost, type LabPod, nsRun, type SubnetEnvFields, sh } from "../lab/topology.js";
import { positiveInt } from "./replay.js";
import {
  type ChartFigure,
  chartSvg,
  fmt,
  fmtRatio,
  fmtRatioRange,
  fmtSummary,
  formatTable,
  jsonNumber,
  type MachineInfo,
  machineInfo,
  machineLine,
  Progress,
  percentile,
  RESULTS_DIR,
  ratio,
  type Summary,
  summarize,
  writeResult,
} from "./report.js";
import { type RecvResult, type SendResult, spawnUdpgen, type UdpgenChild } from "./udpgen.js";

export const PREFIX = "wbench";
const MODES = ["direct", "vxlan", "weft", "flannel"] as const;
export type Mode = (typeof MODES)[number];
/** What runs without --modes; `flannel` (a C proxy built here) is asked for by name. */
const DEFAULT_MODES: readonly Mode[] = ["direct", "vxlan", "weft"];
/** The overlay MTU of the udp backend: 1500 minus the outer IP and UDP headers. */
const UDP_MTU = 1472;
const FLANNEL_PORT = 8285;
const IPERF_PORT = 5201;
const UDP_PORT = 5202;
const METRICS_PORT = 9100;
const NETWORK = "10.244.0.0/16";
const VXLAN_MTU = 1450;

// ---------------------------------------------------------------------------
// Everything we start, so a signal or a failure can take it all down.

const live = { lab: null as Lab | null, children: new Set<ChildProcess>() };

function track(child: ChildProcess): ChildProcess {
  live.children.add(child);
  child.once("exit", () => live.children.delete(child));
  return child;
}

function killChildren(): void {
  for (const c of live.children) {
    if (c.pid !== undefined && c.exitCode === null && c.signalCode === null) {
      try {
        process.kill(c.pid, "SIGKILL");
      } catch {
        // Already gone.
      }
    }
  }
}

/**
 * Our namespaces as the kernel lists them. The run refuses to start while any
 * wbench-* namespace exists, so every one present now was made by this run,
 * also one whose Lab.create was interrupted before it returned.
 */
function ownNamespacesSync(): string[] {
  try {
    return execFileSync("ip", ["netns", "list"], { encoding: "utf8" })
      .split("\n")
      .map((l) => l.split(" ")[0] as string)
      .filter((n) => n.startsWith(`${PREFIX}-`));
  } catch {
    return [];
  }
}

function deleteNamespacesSync(names: readonly string[]): void {
  for (const ns of names) {
    try {
      execFileSync("ip", ["netns", "del", ns], { stdio: "ignore" });
    } catch {
      // Already gone.
    }
  }
}

async function cleanup(): Promise<void> {
  killChildren();
  const lab = live.lab;
  live.lab = null;
  if (lab !== null) await lab.destroy();
  deleteNamespacesSync(ownNamespacesSync());
}

/** Last resort at exit (synchronous): our children, the weftds, the namespaces. */
function exitCleanup(): void {
  killChildren();
  for (const h of live.lab?.hosts ?? []) {
    if (h.weft?.pid !== undefined && h.weft.exitCode === null) {
      try {
        process.kill(h.weft.pid, "SIGKILL");
      } catch {
        // Already gone.
      }
    }
  }
  deleteNamespacesSync(ownNamespacesSync());
}

interface Run {
  stdout: string;
  stderr: string;
  code: number | null;
}

/** Runs a command inside a namespace as a tracked child; SIGKILL by PID after timeoutMs. */
function nsSpawn(ns: string, cmd: string, args: readonly string[], timeoutMs: number): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = track(spawn("ip", ["netns", "exec", ns, cmd, ...args], { stdio: ["ignore", "pipe", "pipe"] }));
    let stdout = "";
    let stderr = "";
    child.stdout?.setEncoding("utf8").on("data", (d: string) => {
      stdout += d;
    });
    child.stderr?.setEncoding("utf8").on("data", (d: string) => {
      if (stderr.length < 8000) stderr += d;
    });
    const timer = setTimeout(() => {
      if (child.pid !== undefined) process.kill(child.pid, "SIGKILL");
    }, timeoutMs);
    child.once("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.once("close", (code) => {
      clearTimeout(timer);
      resolve({ stdout, stderr, code });
    });
  });
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------
// Bringing a mode up.

interface Env {
  mode: Mode;
  lab: Lab;
  h1: LabHost;
  h2: LabHost;
  p1: LabPod;
  p2: LabPod;
  mtu: number;
  /** flannel mode: the C proxy on h1 and on h2. */
  proxies: ChildProcess[];
}

function podEnv(hostIndex: number, mtu: number): SubnetEnvFields {
  return { network: NETWORK, subnet: `10.244.${hostIndex}.1/24`, mtu };
}

async function bringUp(mode: Mode, dir: string, weftdArgs: readonly string[] = []): Promise<Env> {
  const lab = await Lab.create({ prefix: PREFIX, hosts: 2, dir });
  live.lab = lab;
  const [h1, h2] = lab.hosts as [LabHost, LabHost];
  let p1: LabPod;
  let p2: LabPod;
  let mtu: number;
  let proxies: ChildProcess[] = [];
  if (mode === "direct") {
    mtu = 1500;
    p1 = await lab.addPod(h1, podEnv(1, mtu));
    p2 = await lab.addPod(h2, podEnv(2, mtu));
    await inNs("ip", h1, `route add 10.244.2.0/24 via ${h2.underlayIp} dev ${h1.iface}`);
    await inNs("ip", h2, `route add 10.244.1.0/24 via ${h1.underlayIp} dev ${h2.iface}`);
  } else if (mode === "vxlan") {
    mtu = VXLAN_MTU;
    await vxlanWiring(h1, h2);
    p1 = await lab.addPod(h1, podEnv(1, mtu));
    p2 = await lab.addPod(h2, podEnv(2, mtu));
  } else if (mode === "flannel") {
    mtu = UDP_MTU;
    proxies = await flannelWiring(h1, h2, dir);
    p1 = await lab.addPod(h1, podEnv(1, mtu));
    p2 = await lab.addPod(h2, podEnv(2, mtu));
  } else {
    lab.writeRegistryConfig();
    for (const h of [h1, h2])
      lab.startWeft(h, ["--healthz-port", String(METRICS_PORT), "--healthz-ip", "127.0.0.1", ...weftdArgs]);
    const e1 = await lab.waitForSubnetEnv(h1);
    const e2 = await lab.waitForSubnetEnv(h2);
    mtu = e1.mtu;
    p1 = await lab.addPod(h1, e1);
    p2 = await lab.addPod(h2, e2);
  }
  const env = { mode, lab, h1, h2, p1, p2, mtu, proxies };
  await waitReachable(env);
  return env;
}

function vtepMac(h: LabHost): string {
  return `02:77:62:00:00:${h.index.toString(16).padStart(2, "0")}`;
}

/**
 * flannel's vxlan backend, by hand: flannel.1 (VNI 1, port 8472, no learning,
 * MTU 1450) holding the subnet's network address /32; per remote lease a route
 * via that lease's .0 address onlink, a permanent neighbour entry for it and
 * an fdb entry sending its VTEP MAC to the remote underlay address.
 */
async function vxlanWiring(h1: LabHost, h2: LabHost): Promise<void> {
  for (const [h, other] of [
    [h1, h2],
    [h2, h1],
  ] as const) {
    const vxlan = `id 1 local ${h.underlayIp} dev ${h.iface} dstport 8472 nolearning`;
    await inNs("ip", h, `link add flannel.1 address ${vtepMac(h)} type vxlan ${vxlan}`);
    await inNs("ip", h, `link set flannel.1 mtu ${VXLAN_MTU} up`);
    await inNs("ip", h, `addr add 10.244.${h.index}.0/32 dev flannel.1`);
    const gw = `10.244.${other.index}.0`;
    await inNs("ip", h, `route add 10.244.${other.index}.0/24 via ${gw} dev flannel.1 onlink`);
    await inNs("ip", h, `neigh replace ${gw} lladdr ${vtepMac(other)} dev flannel.1 nud permanent`);
    await inNs("bridge", h, `fdb append ${vtepMac(other)} dev flannel.1 dst ${other.underlayIp} self permanent`);
  }
}

/**
 * flannel's udp backend as its own C proxy runs it (bench/flannel-proxy.c,
 * built here with cc): on each host flannel0 and UDP 8285 with a route to the
 * other host's subnet, flannel0 configured as weft configures it (the
 * subnet's network address /32, MTU 1472, one route for the Network).
 */
async function flannelWiring(h1: LabHost, h2: LabHost, dir: string): Promise<ChildProcess[]> {
  const source = fileURLToPath(new URL("../../bench/flannel-proxy.c", import.meta.url));
  const binary = join(dir, "flannel-proxy");
  try {
    execFileSync("cc", ["-O2", "-o", binary, source], { stdio: ["ignore", "ignore", "pipe"] });
  } catch (err) {
    const stderr = String((err as { stderr?: Buffer }).stderr ?? "").trim();
    throw new Error(`flannel mode: cc could not build ${source}: ${stderr || (err as Error).message}`);
  }
  const proxies: ChildProcess[] = [];
  for (const [h, other] of [
    [h1, h2],
    [h2, h1],
  ] as const) {
    const route = `10.244.${other.index}.0/24=${other.underlayIp}`;
    const child = track(
      spawn("ip", ["netns", "exec", h.ns, binary, "flannel0", String(FLANNEL_PORT), route], {
        stdio: ["ignore", "pipe", "pipe"],
      }),
    );
    proxies.push(child);
    await proxyUp(child, h);
    await inNs("ip", h, `addr add 10.244.${h.index}.0/32 dev flannel0`);
    await inNs("ip", h, `link set flannel0 mtu ${UDP_MTU} txqueuelen 1000 up`);
    await inNs("ip", h, `route add ${NETWORK} dev flannel0`);
  }
  return proxies;
}

/** Resolves once the proxy printed "up", rejects with its stderr when it exits first. */
function proxyUp(child: ChildProcess, h: LabHost): Promise<void> {
  return new Promise((resolve, reject) => {
    let stdout = "";
    let stderr = "";
    const timer = setTimeout(() => fail("printed nothing in 10 s"), 10_000);
    const fail = (why: string) => {
      clearTimeout(timer);
      reject(new Error(`flannel proxy on ${h.ns} ${why}: ${stderr.trim()}`));
    };
    child.stderr?.setEncoding("utf8").on("data", (d: string) => {
      stderr += d;
    });
    child.stdout?.setEncoding("utf8").on("data", (d: string) => {
      stdout += d;
      if (/^up /m.test(stdout)) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once("exit", (code) => fail(`exited with ${code}`));
  });
}

/** `ip -n <host ns> <words>` (or bridge): configuration inside the host's namespace only. */
function inNs(tool: "ip" | "bridge", h: LabHost, words: string): Promise<string> {
  return sh(tool, ["-n", h.ns, ...words.split(" ")]);
}

async function waitReachable(env: Env): Promise<void> {
  for (let i = 0; i < 30; i++) {
    const r = await nsSpawn(env.p1.ns, "ping", ["-c", "1", "-W", "1", env.p2.ip], 5000);
    if (r.code === 0) return;
    await sleep(200);
  }
  const logs = env.mode === "weft" ? `\n${env.lab.logTail(env.h1)}\n${env.lab.logTail(env.h2)}` : "";
  throw new Error(`${env.mode}: ${env.p1.ip} cannot reach ${env.p2.ip} after 30 tries${logs}`);
}

// ---------------------------------------------------------------------------
// Reading counters: CPU and memory of the daemons, drops wherever they happen.

const CLK_TCK = (() => {
  try {
    return Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
  } catch {
    return 100;
  }
})();

/** utime + stime of a process, seconds. */
export function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
}

/** Peak resident set (VmHWM), MB (2^20 bytes). */
export function peakRssMb(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = /^VmHWM:\s+(\d+)\s+kB/m.exec(status)?.[1];
  return kb === undefined ? Number.NaN : Number(kb) / 1024;
}

/** The dataplane processes of a mode (none for the kernel's own). */
function daemonPids(env: Env): number[] {
  if (env.mode === "weft") return weftPids(env);
  return env.proxies.map((p) => {
    if (p.pid === undefined || p.exitCode !== null) throw new Error(`${env.mode}: a proxy is not running`);
    return p.pid;
  });
}

function weftPids(env: Env): number[] {
  return [env.h1, env.h2].map((h) => {
    const pid = h.weft?.pid;
    if (pid === undefined || h.weft?.exitCode !== null) throw new Error(`weftd on ${h.ns} is not running`);
    return pid;
  });
}

/** Parses /proc/net/snmp's header/value line pairs into "Proto.Field" → value. */
export function parseSnmp(text: string): Map<string, number> {
  const out = new Map<string, number>();
  const lines = text.trim().split("\n");
  for (let i = 0; i + 1 < lines.length; i += 2) {
    const head = (lines[i] as string).split(/\s+/);
    const vals = (lines[i + 1] as string).split(/\s+/);
    const proto = (head[0] as string).replace(/:$/, "");
    for (let k = 1; k < head.length; k++) out.set(`${proto}.${head[k]}`, Number(vals[k]));
  }
  return out;
}

const SNMP_FIELDS = [
  "Udp.RcvbufErrors",
  "Udp.SndbufErrors",
  "Udp.InErrors",
  "Udp.NoPorts",
  "Ip.InDiscards",
  "Ip.OutDiscards",
];

/** Drop counters of one namespace: UDP/IP from /proc/net/snmp, per-interface rx/tx dropped. */
async function dropSnapshot(ns: string, label: string): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  const snmp = parseSnmp(await nsRun(ns, "cat", ["/proc/net/snmp"]));
  for (const f of SNMP_FIELDS) out.set(`${label} ${f}`, snmp.get(f) ?? 0);
  const links = JSON.parse(await sh("ip", ["-n", ns, "-s", "-j", "link", "show"])) as {
    ifname: string;
    stats64?: { rx: { dropped: number }; tx: { dropped: number } };
  }[];
  for (const l of links) {
    if (l.stats64 === undefined || l.ifname === "lo") continue;
    out.set(`${label} ${l.ifname} rx_dropped`, l.stats64.rx.dropped);
    out.set(`${label} ${l.ifname} tx_dropped`, l.stats64.tx.dropped);
  }
  return out;
}

/** weft's own per-reason drop counters from its /metrics (weft mode only). */
async function weftDropSnapshot(h: LabHost, label: string): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  const text = await nsRun(h.ns, process.execPath, [
    "-e",
    `fetch("http://127.0.0.1:${METRICS_PORT}/metrics").then(r => r.text()).then(t => process.stdout.write(t))`,
  ]);
  for (const line of text.split("\n")) {
    const m = /^weft_drops_total\{direction="(\w+)",reason="(\w+)"\} (\S+)$/.exec(line);
    if (m !== null) out.set(`${label} weft ${m[1]} ${m[2]}`, Number(m[3]));
  }
  return out;
}

async function allDrops(env: Env): Promise<Map<string, number>> {
  const parts = await Promise.all([
    dropSnapshot(env.p1.ns, "p1"),
    dropSnapshot(env.h1.ns, "h1"),
    dropSnapshot(env.h2.ns, "h2"),
    dropSnapshot(env.p2.ns, "p2"),
    ...(env.mode === "weft" ? [weftDropSnapshot(env.h1, "h1"), weftDropSnapshot(env.h2, "h2")] : []),
  ]);
  return new Map(parts.flatMap((m) => [...m]));
}

/** Counters that grew between two snapshots. */
function grew(before: Map<string, number>, after: Map<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of after) {
    const d = v - (before.get(k) ?? 0);
    if (d > 0) out[k] = d;
  }
  return out;
}

// ---------------------------------------------------------------------------
// Workloads.

interface TcpResult {
  gbps: number;
  bytes: number;
  retransmits: number;
  /** weft only: CPU seconds of both daemons per GB (1e9 bytes) received. */
  cpuSPerGb: number | null;
}

async function tcp(env: Env, seconds: number): Promise<TcpResult> {
  const server = track(
    spawn("ip", ["netns", "exec", env.p2.ns, "iperf3", "-s", "-1", "-p", String(IPERF_PORT)], {
      stdio: ["ignore", "ignore", "pipe"],
    }),
  );
  try {
    for (let i = 0; ; i++) {
      const listening = await nsRun(env.p2.ns, "ss", ["-Hltn", `sport = :${IPERF_PORT}`]);
      if (listening.trim() !== "") break;
      if (i >= 50 || server.exitCode !== null) throw new Error(`${env.mode}: iperf3 server did not start`);
      await sleep(100);
    }
    const pids = daemonPids(env);
    const cpu0 = pids.map(cpuSeconds);
    const r = await nsSpawn(
      env.p1.ns,
      "iperf3",
      ["-c", env.p2.ip, "-p", String(IPERF_PORT), "-t", String(seconds), "-J"],
      (seconds + 30) * 1000,
    );
    const cpu1 = pids.map(cpuSeconds);
    let report: {
      end?: { sum_received?: { bits_per_second: number; bytes: number }; sum_sent?: { retransmits?: number } };
      error?: string;
    };
    try {
      report = JSON.parse(r.stdout);
    } catch {
      throw new Error(`${env.mode}: iperf3 client gave no JSON (exit ${r.code}): ${r.stderr.trim()}`);
    }
    const recv = report.end?.sum_received;
    if (recv === undefined) throw new Error(`${env.mode}: iperf3: ${report.error ?? "no sum_received"}`);
    const cpu = cpu1.reduce((a, v, i) => a + v - (cpu0[i] as number), 0);
    return {
      gbps: recv.bits_per_second / 1e9,
      bytes: recv.bytes,
      retransmits: report.end?.sum_sent?.retransmits ?? 0,
      cpuSPerGb: pids.length > 0 && recv.bytes > 0 ? cpu / (recv.bytes / 1e9) : null,
    };
  } finally {
    // -1: the server leaves after its one client; make sure of it.
    for (let i = 0; i < 20 && server.exitCode === null && server.signalCode === null; i++) await sleep(100);
    if (server.exitCode === null && server.signalCode === null && server.pid !== undefined)
      process.kill(server.pid, "SIGKILL");
  }
}

interface UdpResult {
  pps: number;
  lossPercent: number;
  sent: number;
  received: number;
  senderPps: number;
  drops: Record<string, number>;
}

let runCounter = 0;

async function udp(env: Env, payload: number, seconds: number): Promise<UdpResult> {
  const run = ((process.pid << 8) ^ ++runCounter) >>> 0;
  const before = await allDrops(env);
  const recv: UdpgenChild = spawnUdpgen(env.p2.ns, [
    "recv",
    "--port",
    String(UDP_PORT),
    "--size",
    String(payload),
    "--run",
    String(run),
    "--timeout",
    String(seconds + 60),
  ]);
  track(recv.child);
  let send: UdpgenChild | null = null;
  try {
    if ((await recv.ready) < 0) await recv.result; // throws with the receiver's error
    send = spawnUdpgen(env.p1.ns, [
      "send",
      "--dst",
      env.p2.ip,
      "--port",
      String(UDP_PORT),
      "--size",
      String(payload),
      "--duration",
      String(seconds),
      "--run",
      String(run),
    ]);
    track(send.child);
    const s = (await send.result) as SendResult;
    // Let queues drain into the sink before it stops counting.
    await sleep(1000);
    if (recv.child.pid !== undefined) process.kill(recv.child.pid, "SIGTERM");
    const r = (await recv.result) as RecvResult;
    const after = await allDrops(env);
    return {
      pps: r.pps,
      lossPercent: s.sent > 0 ? (100 * (s.sent - r.received)) / s.sent : Number.NaN,
      sent: s.sent,
      received: r.received,
      senderPps: s.pps,
      drops: grew(before, after),
    };
  } finally {
    for (const c of [recv.child, send?.child]) {
      if (c?.pid !== undefined && c.exitCode === null && c.signalCode === null) process.kill(c.pid, "SIGKILL");
    }
  }
}

interface RttResult {
  p50us: number;
  p99us: number;
  samples: number;
  lost: number;
}

/** Per-packet RTTs from ping's "time=… ms" lines. */
export function parsePingTimes(text: string): number[] {
  const out: number[] = [];
  for (const m of text.matchAll(/time=([\d.]+) ms/g)) out.push(Number(m[1]) * 1000);
  return out;
}

/**
 * Seconds of request-response echoes before the measured ones, not counted:
 * after the bulk runs weft's handlers need about half a second of this
 * traffic to settle (JIT, caches); vxlan gets the same.
 */
const RTT_WARMUP_S = 1;

/**
 * Ping RTTs, two ways. "rr" (request-response, BENCH.md's reference figures):
 * `ping -A` sends the next echo as soon as the reply is in, so every hop is
 * busy, as under an RPC load. "sparse": one echo every 10 ms, so every hop
 * starts from sleep (on a VM, an idle vCPU takes tens of µs to wake).
 */
async function rtt(env: Env, count: number, kind: "rr" | "sparse"): Promise<RttResult> {
  const pace = kind === "rr" ? ["-A"] : ["-i", "0.01"];
  if (kind === "rr") {
    await nsSpawn(env.p1.ns, "ping", ["-n", "-q", "-A", "-w", String(RTT_WARMUP_S), env.p2.ip], 30_000);
  }
  const r = await nsSpawn(
    env.p1.ns,
    "ping",
    ["-n", "-c", String(count), ...pace, "-W", "1", env.p2.ip],
    count * 20 + 30_000,
  );
  const times = parsePingTimes(r.stdout);
  if (times.length === 0)
    throw new Error(`${env.mode}: ping got no replies: ${r.stderr.trim() || r.stdout.slice(-300)}`);
  return {
    p50us: percentile(times, 50),
    p99us: percentile(times, 99),
    samples: times.length,
    lost: count - times.length,
  };
}

// ---------------------------------------------------------------------------
// Live replay: a pcap's IPv4 packets from p1 to p2 through the mode's dataplane.

const PROTO_TCP = 6;
const PROTO_UDP = 17;

export interface RewriteStats {
  packets: Uint8Array[];
  /** Captured shorter than their IP total length (snapped): cannot be sent faithfully. */
  snapped: number;
  /** Larger than the pod MTU: the kernel would refuse them (DF) or fragment them. */
  oversize: number;
}

/**
 * Rewrites captured IPv4 packets into the lab: source = p1, destination = p2,
 * TTL 64, IP checksum recomputed. Unfragmented TCP and UDP get their checksum
 * recomputed over the new pseudo-header (a UDP checksum of 0, "none", stays 0);
 * a first fragment's L4 checksum is updated incrementally for the new
 * addresses (RFC 1624); later fragments and other protocols carry no
 * address-dependent checksum we can reach. Snapped and oversize packets are skipped.
 */
export function rewriteForLab(ipv4: readonly Uint8Array[], src: number, dst: number, mtu: number): RewriteStats {
  const packets: Uint8Array[] = [];
  let snapped = 0;
  let oversize = 0;
  for (const p of ipv4) {
    if (p.length < 20) {
      snapped++;
      continue;
    }
    const ihl = (p[0] & 0x0f) * 4;
    const total = (p[2] << 8) | p[3];
    if (ihl < 20 || total < ihl || total > p.length) {
      snapped++;
      continue;
    }
    if (total > mtu) {
      oversize++;
      continue;
    }
    const q = p.slice(0, total);
    const oldSrc = ((q[12] << 24) | (q[13] << 16) | (q[14] << 8) | q[15]) >>> 0;
    const oldDst = ((q[16] << 24) | (q[17] << 16) | (q[18] << 8) | q[19]) >>> 0;
    putAddr(q, 12, src);
    putAddr(q, 16, dst);
    q[8] = 64;
    q[10] = 0;
    q[11] = 0;
    const ipSum = internetChecksum(q, 0, ihl);
    q[10] = ipSum >>> 8;
    q[11] = ipSum & 0xff;
    const proto = q[9];
    const fragOffset = ((q[6] & 0x1f) << 8) | q[7];
    const moreFragments = (q[6] & 0x20) !== 0;
    const l4 = ihl;
    const l4len = total - ihl;
    const csumAt = proto === PROTO_TCP ? l4 + 16 : proto === PROTO_UDP ? l4 + 6 : -1;
    if (csumAt >= 0 && fragOffset === 0 && csumAt + 2 <= total) {
      const old = (q[csumAt] << 8) | q[csumAt + 1];
      if (proto === PROTO_UDP && old === 0) {
        // No checksum: nothing to fix.
      } else if (!moreFragments) {
        q[csumAt] = 0;
        q[csumAt + 1] = 0;
        const pseudo = (src >>> 16) + (src & 0xffff) + (dst >>> 16) + (dst & 0xffff) + proto + l4len;
        let sum = internetChecksum(q, l4, l4len, pseudo);
        if (proto === PROTO_UDP && sum === 0) sum = 0xffff;
        q[csumAt] = sum >>> 8;
        q[csumAt + 1] = sum & 0xff;
      } else {
        let sum = old;
        sum = updateChecksum16(sum, oldSrc >>> 16, src >>> 16);
        sum = updateChecksum16(sum, oldSrc & 0xffff, src & 0xffff);
        sum = updateChecksum16(sum, oldDst >>> 16, dst >>> 16);
        sum = updateChecksum16(sum, oldDst & 0xffff, dst & 0xffff);
        q[csumAt] = sum >>> 8;
        q[csumAt + 1] = sum & 0xff;
      }
    }
    packets.push(q);
  }
  return { packets, snapped, oversize };
}

function putAddr(b: Uint8Array, off: number, a: number): void {
  b[off] = a >>> 24;
  b[off + 1] = (a >>> 16) & 0xff;
  b[off + 2] = (a >>> 8) & 0xff;
  b[off + 3] = a & 0xff;
}

/** [u16 length][packet]… : what the injector reads. */
function packetsFile(packets: readonly Uint8Array[], loops: number): Uint8Array {
  let size = 0;
  for (const p of packets) size += 2 + p.length;
  const out = new Uint8Array(size * loops);
  let o = 0;
  for (let l = 0; l < loops; l++) {
    for (const p of packets) {
      out[o] = p.length >>> 8;
      out[o + 1] = p.length & 0xff;
      out.set(p, o + 2);
      o += 2 + p.length;
    }
  }
  return out;
}

// Node has no raw sockets: python3's socket module does (IPPROTO_RAW implies IP_HDRINCL).
const INJECTOR = `
import json, socket, struct, sys
data = open(sys.argv[1], "rb").read()
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
dst = (sys.argv[2], 0)
off = sent = errors = 0
while off + 2 <= len(data):
    n = struct.unpack_from(">H", data, off)[0]
    off += 2
    try:
        s.sendto(data[off:off + n], dst)
        sent += 1
    except OSError:
        errors += 1
    off += n
print(json.dumps({"sent": sent, "errors": errors}))
`;

interface ReplayLabResult {
  sent: number;
  errors: number;
  arrived: number;
  delivered: number;
  skipped_snapped: number;
  skipped_oversize: number;
  drops: Record<string, number>;
}

async function liveReplay(env: Env, ipv4: readonly Uint8Array[], loops: number): Promise<ReplayLabResult> {
  const rw = rewriteForLab(ipv4, parseIpv4(env.p1.ip), parseIpv4(env.p2.ip), env.mtu);
  if (rw.packets.length === 0)
    throw new Error("replay: no packet of the capture fits the lab (all snapped or over the MTU)");
  const file = join(env.lab.dir, "replay.bin");
  writeFileSync(file, packetsFile(rw.packets, loops));
  const inReceives = async () => parseSnmp(await nsRun(env.p2.ns, "cat", ["/proc/net/snmp"])).get("Ip.InReceives") ?? 0;
  const dropsBefore = await allDrops(env);
  const before = await inReceives();
  const r = await nsSpawn(env.p1.ns, "python3", ["-c", INJECTOR, file, env.p2.ip], 600_000);
  if (r.code !== 0) throw new Error(`replay injector failed (exit ${r.code}): ${r.stderr.trim()}`);
  const { sent, errors } = JSON.parse(r.stdout.trim().split("\n").pop() as string) as { sent: number; errors: number };
  await sleep(1000);
  const arrived = (await inReceives()) - before;
  const drops = grew(dropsBefore, await allDrops(env));
  return {
    sent,
    errors,
    arrived,
    delivered: sent > 0 ? arrived / sent : Number.NaN,
    skipped_snapped: rw.snapped * loops,
    skipped_oversize: rw.oversize * loops,
    drops,
  };
}

// ---------------------------------------------------------------------------
// The run.

export interface RepFigures {
  tcp_gbps: number;
  udp1400_pps: number;
  udp64_pps: number;
  udp1400_loss: number;
  udp64_loss: number;
  rtt_p50_us: number;
  rtt_p99_us: number;
  rtt_sparse_p50_us: number;
  rtt_sparse_p99_us: number;
  cpu_s_per_gb?: number;
  rss_mb?: number;
  rss_mb_each?: number[];
  tcp_retransmits: number;
  udp1400_drops: Record<string, number>;
  udp64_drops: Record<string, number>;
  udp1400_sender_pps: number;
  udp64_sender_pps: number;
  ping_lost: number;
}

const FIGURES = [
  "tcp_gbps",
  "udp1400_pps",
  "udp64_pps",
  "udp1400_loss",
  "udp64_loss",
  "rtt_p50_us",
  "rtt_p99_us",
  "rtt_sparse_p50_us",
  "rtt_sparse_p99_us",
] as const;
/** Figures of the modes whose dataplane is a process (weft, flannel). */
const DAEMON_FIGURES = ["cpu_s_per_gb", "rss_mb"] as const;
type Figure = (typeof FIGURES)[number] | (typeof DAEMON_FIGURES)[number];
const hasDaemon = (mode: Mode) => mode === "weft" || mode === "flannel";

interface LabOptions {
  reps: number;
  tcpSeconds: number;
  udpSeconds: number;
  /** Request-response echoes (after a warm-up). */
  pings: number;
  /** Echoes 10 ms apart. */
  sparsePings: number;
  modes: Mode[];
  /** Extra weftd flags (weft mode). */
  weftdArgs: string[];
}

async function runWorkloads(env: Env, o: LabOptions, progress: Progress, tag: string): Promise<RepFigures> {
  progress.step(`${tag}: TCP ${o.tcpSeconds} s`);
  const t = await tcp(env, o.tcpSeconds);
  progress.step(`${tag}: UDP 1400 B ${o.udpSeconds} s`);
  const u1400 = await udp(env, 1400, o.udpSeconds);
  progress.step(`${tag}: UDP 64 B ${o.udpSeconds} s`);
  const u64 = await udp(env, 64, o.udpSeconds);
  progress.step(`${tag}: RTT ${o.pings} request-response pings`);
  const r = await rtt(env, o.pings, "rr");
  progress.step(`${tag}: RTT ${o.sparsePings} pings 10 ms apart`);
  const sparse = await rtt(env, o.sparsePings, "sparse");
  const fig: RepFigures = {
    tcp_gbps: t.gbps,
    udp1400_pps: u1400.pps,
    udp64_pps: u64.pps,
    udp1400_loss: u1400.lossPercent,
    udp64_loss: u64.lossPercent,
    rtt_p50_us: r.p50us,
    rtt_p99_us: r.p99us,
    rtt_sparse_p50_us: sparse.p50us,
    rtt_sparse_p99_us: sparse.p99us,
    tcp_retransmits: t.retransmits,
    udp1400_drops: u1400.drops,
    udp64_drops: u64.drops,
    udp1400_sender_pps: u1400.senderPps,
    udp64_sender_pps: u64.senderPps,
    ping_lost: r.lost + sparse.lost,
  };
  if (hasDaemon(env.mode)) {
    const rss = daemonPids(env).map(peakRssMb);
    fig.cpu_s_per_gb = t.cpuSPerGb ?? Number.NaN;
    fig.rss_mb = Math.max(...rss);
    fig.rss_mb_each = rss;
  }
  return fig;
}

export interface LabModeJson {
  [key: string]: unknown;
}

/** The lab JSON (shape fixed by issue 4): medians per mode, `<figure>_range` [min, max], ratios weft ÷ vxlan. */
export function labJson(machine: MachineInfo, options: Record<string, unknown>, reps: Map<Mode, RepFigures[]>) {
  const modes: Record<string, LabModeJson> = {};
  const summaries = new Map<Mode, Map<Figure, Summary>>();
  for (const [mode, list] of reps) {
    const m: LabModeJson = {};
    const sums = new Map<Figure, Summary>();
    const figures: readonly Figure[] = hasDaemon(mode) ? [...FIGURES, ...DAEMON_FIGURES] : FIGURES;
    for (const f of figures) {
      const s = summarize(list.map((r) => r[f] ?? Number.NaN));
      sums.set(f, s);
      m[f] = jsonNumber(s.median);
      m[`${f}_range`] = [jsonNumber(s.min), jsonNumber(s.max)];
    }
    m.reps = list.length;
    m.per_rep = list;
    modes[mode] = m;
    summaries.set(mode, sums);
  }
  const med = (mode: Mode, f: Figure) => summaries.get(mode)?.get(f)?.median;
  /** weft ÷ `base`: ratios of the medians, and [min, max] of the per-repetition ratios. */
  const against = (base: Mode) => {
    // Per-repetition ratios: the modes of one repetition ran back to back.
    const pair = (f: Figure) => {
      const w = reps.get("weft") ?? [];
      const b = reps.get(base) ?? [];
      const s = summarize(w.map((x, i) => ratio(x[f], b[i]?.[f]) ?? Number.NaN));
      return [jsonNumber(s.min, 4), jsonNumber(s.max, 4)];
    };
    const keys = [
      ["tcp_gbps", "tcp_gbps"],
      ["udp1400_pps", "udp1400_pps"],
      ["udp64_pps", "udp64_pps"],
      ["rtt_p50", "rtt_p50_us"],
      ["rtt_sparse_p50", "rtt_sparse_p50_us"],
    ] as const;
    const ratios: Record<string, number | null> = {};
    const ranges: Record<string, (number | null)[]> = {};
    for (const [key, f] of keys) {
      ratios[key] = jsonNumber(ratio(med("weft", f), med(base, f)), 4);
      ranges[key] = pair(f);
    }
    return { ratios, ranges };
  };
  const vsVxlan = against("vxlan");
  const vsFlannel = against("flannel");
  return {
    json: {
      kind: "lab",
      machine,
      options,
      units: {
        tcp_gbps: "Gbit/s, iperf3 receiver goodput, single stream",
        udp1400_pps: "datagrams/s delivered to the sink (1400 B UDP payload, 1428 B IP)",
        udp64_pps: "datagrams/s delivered to the sink (64 B UDP payload, 92 B IP)",
        udp1400_loss: "percent of sent datagrams not delivered",
        udp64_loss: "percent",
        rtt_p50_us: "µs, request-response: ping -A (next echo as soon as the reply is in) after a warm-up",
        rtt_p99_us: "µs",
        rtt_sparse_p50_us: "µs, ping -i 0.01 (each echo finds the path idle)",
        rtt_sparse_p99_us: "µs",
        cpu_s_per_gb: "CPU seconds (user+sys) of both weftd (flannel: both proxies) per 1e9 bytes of TCP received",
        rss_mb: "MiB, VmHWM of the larger weftd (flannel: proxy)",
      },
      modes,
      ratios: vsVxlan.ratios,
      ratio_ranges: vsVxlan.ranges,
      /** weft ÷ the flannel-design C proxy (null without a flannel run). */
      ratios_vs_flannel: vsFlannel.ratios,
      ratio_ranges_vs_flannel: vsFlannel.ranges,
    },
    summaries,
  };
}

interface RatioRow {
  label: string;
  ratios: Record<string, number | null>;
  ranges: Record<string, (number | null)[]>;
}

function labTable(summaries: Map<Mode, Map<Figure, Summary>>, ratioRows: readonly RatioRow[]): string {
  const get = (m: Mode, f: Figure) =>
    summaries.get(m)?.get(f) ?? { median: Number.NaN, min: Number.NaN, max: Number.NaN, n: 0 };
  const k = (s: Summary) => ({ ...s, median: s.median / 1000, min: s.min / 1000, max: s.max / 1000 });
  const rows: string[][] = [];
  for (const mode of MODES) {
    if (!summaries.has(mode)) continue;
    rows.push([
      mode,
      fmtSummary(get(mode, "tcp_gbps"), 2),
      fmtSummary(k(get(mode, "udp1400_pps")), 1),
      fmt(get(mode, "udp1400_loss").median, 1),
      fmtSummary(k(get(mode, "udp64_pps")), 1),
      fmt(get(mode, "udp64_loss").median, 1),
      fmtSummary(get(mode, "rtt_p50_us"), 0),
      fmtSummary(get(mode, "rtt_p99_us"), 0),
      fmtSummary(get(mode, "rtt_sparse_p50_us"), 0),
      hasDaemon(mode) ? fmtSummary(get(mode, "cpu_s_per_gb"), 2) : "",
      hasDaemon(mode) ? fmtSummary(get(mode, "rss_mb"), 1) : "",
    ]);
  }
  for (const { label, ratios, ranges } of ratioRows) {
    const r = (key: string) => fmtRatioRange(ratios[key] ?? null, ranges[key]);
    rows.push([
      label,
      r("tcp_gbps"),
      r("udp1400_pps"),
      "",
      r("udp64_pps"),
      "",
      r("rtt_p50"),
      "",
      r("rtt_sparse_p50"),
      "",
      "",
    ]);
  }
  return formatTable(
    [
      "mode",
      "TCP Gbit/s",
      "UDP 1400 B kpps",
      "loss %",
      "UDP 64 B kpps",
      "loss %",
      "RTT p50 µs",
      "RTT p99 µs",
      "RTT 10 ms p50",
      "CPU s/GB",
      "RSS MiB",
    ],
    rows,
  );
}

function targetLines(ratios: Record<string, number | null>, rss: number | undefined): string[] {
  const check = (label: string, r: number | null | undefined, bar: number, goal: number, higher: boolean) => {
    if (r === null || r === undefined) return `  ${label}: not measured`;
    const meets = (x: number) => (higher ? r >= x : r <= x);
    const verdict = meets(goal) ? "goal met" : meets(bar) ? "first bar met, goal not" : "first bar NOT met";
    return `  ${label} ${higher ? "≥" : "≤"} ${bar}× (goal ${goal}×): ${r.toFixed(2)}× → ${verdict}`;
  };
  return [
    "targets (BENCH.md, ratios to kernel vxlan in this run):",
    check("TCP single stream", ratios.tcp_gbps, 0.15, 0.5, true),
    check("UDP 1400 B delivered pps", ratios.udp1400_pps, 0.7, 1.0, true),
    check("UDP 64 B delivered pps", ratios.udp64_pps, 0.8, 1.0, true),
    check("RTT p50 (request-response)", ratios.rtt_p50, 3, 2, false),
    rss === undefined || !Number.isFinite(rss)
      ? "  daemon RSS: not measured"
      : `  daemon RSS under load ≤ 80 MB (goal ≤ 60 MB): ${rss.toFixed(1)} MiB → ${rss <= 60 ? "goal met" : rss <= 80 ? "first bar met, goal not" : "first bar NOT met"} (no soak run here)`,
  ];
}

function dropLines(reps: Map<Mode, RepFigures[]>): string[] {
  const out: string[] = ["where datagrams were dropped (counters that grew, summed over repetitions):"];
  for (const [mode, list] of reps) {
    for (const key of ["udp1400_drops", "udp64_drops"] as const) {
      const sum: Record<string, number> = {};
      for (const r of list) for (const [k, v] of Object.entries(r[key])) sum[k] = (sum[k] ?? 0) + v;
      const text = Object.entries(sum)
        .filter(([k]) => !k.endsWith("Udp.NoPorts"))
        .sort((a, b) => b[1] - a[1])
        .slice(0, 5)
        .map(([k, v]) => `${k} ${v}`)
        .join(", ");
      out.push(`  ${mode} ${key.replace("_drops", "")}: ${text === "" ? "none counted" : text}`);
    }
  }
  return out;
}

function chart(
  summaries: Map<Mode, Map<Figure, Summary>>,
  ratios: Record<string, number | null>,
  machine: MachineInfo,
): string {
  const modes = MODES.filter((m) => summaries.has(m));
  const fig = (title: string, unit: string, f: Figure, key: string, scale = 1, lowerIsBetter = false): ChartFigure => ({
    title,
    unit,
    lowerIsBetter,
    bars: modes.map((mode) => {
      const s = summaries.get(mode)?.get(f) as Summary;
      const r = ratios[key];
      return {
        mode,
        value: { ...s, median: s.median * scale, min: s.min * scale, max: s.max * scale },
        note: mode === "weft" && r !== null && r !== undefined ? `${r.toFixed(2)}× vxlan` : undefined,
      };
    }),
  });
  return chartSvg(
    "weft vs kernel vxlan vs direct routing (bench lab)",
    `median of repetitions, whiskers min–max; ${machineLine(machine)}`,
    [
      fig("TCP single stream", "Gbit/s", "tcp_gbps", "tcp_gbps"),
      fig("UDP 1400 B delivered", "kpps", "udp1400_pps", "udp1400_pps", 1e-3),
      fig("UDP 64 B delivered", "kpps", "udp64_pps", "udp64_pps", 1e-3),
      fig("RTT p50, request-response", "µs", "rtt_p50_us", "rtt_p50", 1, true),
      fig("RTT p50, pings 10 ms apart", "µs", "rtt_sparse_p50_us", "rtt_sparse_p50", 1, true),
    ],
  );
}

/** One bench lab at a time: its cleanup removes every wbench-* namespace. */
const LOCK = "/run/weft-bench-lab.pid";

function takeLock(): void {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      writeFileSync(LOCK, `${process.pid}\n`, { flag: "wx" });
      return;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    }
    const pid = Number(readFileSync(LOCK, "utf8").trim());
    let alive = false;
    try {
      process.kill(pid, 0);
      alive = pid > 0;
    } catch {
      // No such process: the lock is stale.
    }
    if (alive) throw new Error(`another bench lab runs (pid ${pid}, ${LOCK})`);
    rmSync(LOCK, { force: true });
  }
  throw new Error(`cannot take ${LOCK}`);
}

function releaseLock(): void {
  try {
    if (Number(readFileSync(LOCK, "utf8").trim()) === process.pid) rmSync(LOCK, { force: true });
  } catch {
    // Not ours or already gone.
  }
}

async function existingNamespaces(): Promise<string[]> {
  const text = await sh("ip", ["netns", "list"]);
  return text
    .split("\n")
    .map((l) => l.split(" ")[0] as string)
    .filter((n) => n.startsWith(`${PREFIX}-`));
}

/** Removes a lab a killed run left: the processes inside wbench-* namespaces (ours by name), then the namespaces. */
async function cleanupStale(): Promise<string[]> {
  const names = await existingNamespaces();
  for (const ns of names) {
    const pids = (await sh("ip", ["netns", "pids", ns])).split("\n").filter((l) => /^\d+$/.test(l.trim()));
    for (const pid of pids) {
      try {
        process.kill(Number(pid), "SIGKILL");
      } catch {
        // Gone already.
      }
    }
  }
  if (names.length > 0) await sleep(300);
  for (const ns of names) await sh("ip", ["netns", "del", ns]);
  return names;
}

const USAGE = `usage: npm run bench -- lab [options]   (root: builds network namespaces ${PREFIX}-*)
  --modes LIST       from direct,vxlan,weft,flannel (default direct,vxlan,weft); flannel is a C proxy built the way
                     flannel's udp backend is (bench/flannel-proxy.c: one packet per system call), compiled with cc
  --reps N           repetitions, modes interleaved (default 3)
  --duration S       TCP seconds (default 10)
  --udp-duration S   seconds per UDP run (default 5)
  --pings N          request-response pings (ping -A, after 1 s unmeasured) for RTT (default 10000)
  --sparse-pings N   pings 10 ms apart for the idle-path RTT (default 500)
  --quick            1 repetition, TCP 2 s, UDP 1 s, 1000 + 50 pings
  --weftd-args=ARGS  extra weftd flags for the weft mode, space-separated (e.g. --weftd-args="--busy-poll-us=50 --no-offload")
  --replay FILE      instead of the workloads: inject FILE's IPv4 packets from p1 (rewritten to p1→p2), count arrivals at p2
  --replay-loops N   send the capture N times (default 1)
  --hold MODE        bring MODE up alone and keep it until Ctrl-C (for your own measurements), then clean up
  --cleanup          remove ${PREFIX}-* namespaces (and their processes) left by a killed run, then exit
  --out-dir DIR      where JSON and SVG go (default ${RESULTS_DIR})`;

export async function runLab(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      modes: { type: "string" },
      reps: { type: "string" },
      duration: { type: "string" },
      "udp-duration": { type: "string" },
      pings: { type: "string" },
      "sparse-pings": { type: "string" },
      quick: { type: "boolean", default: false },
      "weftd-args": { type: "string" },
      replay: { type: "string" },
      "replay-loops": { type: "string" },
      hold: { type: "string" },
      cleanup: { type: "boolean", default: false },
      "out-dir": { type: "string" },
      help: { type: "boolean", default: false },
    },
  });
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  if (process.getuid?.() !== 0) throw new Error("bench lab needs root (it creates network namespaces)");
  if (values.cleanup) {
    takeLock();
    try {
      const removed = await cleanupStale();
      process.stdout.write(removed.length === 0 ? "nothing to clean up\n" : `removed ${removed.join(", ")}\n`);
    } finally {
      releaseLock();
    }
    return 0;
  }
  const quick = values.quick === true;
  const modes = (values.modes ?? DEFAULT_MODES.join(",")).split(",").map((m) => parseMode(m.trim(), "--modes"));
  const o: LabOptions = {
    reps: positiveInt(values.reps, "--reps", quick ? 1 : 3),
    tcpSeconds: positiveInt(values.duration, "--duration", quick ? 2 : 10),
    udpSeconds: positiveInt(values["udp-duration"], "--udp-duration", quick ? 1 : 5),
    pings: positiveInt(values.pings, "--pings", quick ? 1000 : 10000),
    sparsePings: positiveInt(values["sparse-pings"], "--sparse-pings", quick ? 50 : 500),
    modes,
    weftdArgs: (values["weftd-args"] ?? "").split(" ").filter((a) => a !== ""),
  };
  for (const a of o.weftdArgs) {
    if (!a.startsWith("-")) throw new Error(`--weftd-args: ${JSON.stringify(a)} is not a flag`);
  }
  const holdMode = values.hold === undefined ? undefined : parseMode(values.hold, "--hold");
  const machine = machineInfo();
  takeLock();
  const stale = await existingNamespaces();
  if (stale.length > 0) {
    releaseLock();
    throw new Error(
      `namespaces ${stale.join(", ")} exist: another bench lab is running, or a killed run left them (remove with: npm run bench -- lab --cleanup)`,
    );
  }

  const onSignal = (sig: NodeJS.Signals) => {
    process.stderr.write(`\nbench lab: ${sig}, cleaning up\n`);
    cleanup().finally(() => process.exit(130));
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  process.once("SIGHUP", onSignal);
  process.once("exit", () => {
    exitCleanup();
    releaseLock();
  });

  try {
    if (holdMode !== undefined) return await holdRun(holdMode, o);
    if (values.replay !== undefined)
      return await replayRun(
        values.replay,
        positiveInt(values["replay-loops"], "--replay-loops", 1),
        o,
        machine,
        values["out-dir"],
      );
    return await workloadRun(o, machine, values["out-dir"]);
  } finally {
    await cleanup();
  }
}

/** A mode named on the command line (`flag` names the option in the error). */
export function parseMode(text: string, flag: string): Mode {
  if (!(MODES as readonly string[]).includes(text))
    throw new Error(`${flag}: ${JSON.stringify(text)} is not one of ${MODES.join(", ")}`);
  return text as Mode;
}

/** Brings one mode up and keeps it until a signal (whose handler cleans up). */
async function holdRun(mode: Mode, o: LabOptions): Promise<number> {
  await withMode(
    mode,
    async (env) => {
      const lines = [
        `bench lab: ${mode} is up; Ctrl-C removes it`,
        `  pod p1 ${env.p1.ip} in ${env.p1.ns}   pod p2 ${env.p2.ip} in ${env.p2.ns}   mtu ${env.mtu}`,
        `  hosts ${env.h1.ns} (${env.h1.underlayIp}) and ${env.h2.ns} (${env.h2.underlayIp})`,
        `  e.g. ip netns exec ${env.p1.ns} ping -A -c 10000 ${env.p2.ip}`,
      ];
      if (mode === "weft") lines.push(`  weftd pids ${weftPids(env).join(" ")}`);
      if (mode === "flannel") lines.push(`  proxy pids ${daemonPids(env).join(" ")}`);
      process.stdout.write(`${lines.join("\n")}\n`);
      // Until the signal handler cleans up and exits.
      await new Promise(() => setInterval(() => {}, 60_000));
    },
    o.weftdArgs,
  );
  return 0;
}

async function withMode<T>(mode: Mode, body: (env: Env) => Promise<T>, weftdArgs: readonly string[] = []): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), `weft-bench-${mode}-`));
  const env = await bringUp(mode, dir, weftdArgs);
  try {
    return await body(env);
  } finally {
    await cleanup();
  }
}

async function workloadRun(o: LabOptions, machine: MachineInfo, outDir: string | undefined): Promise<number> {
  const progress = new Progress(o.reps * o.modes.length * 5);
  const reps = new Map<Mode, RepFigures[]>(o.modes.map((m) => [m, []]));
  for (let rep = 1; rep <= o.reps; rep++) {
    for (const mode of o.modes) {
      const tag = `rep ${rep}/${o.reps} ${mode}`;
      progress.step(`${tag}: bring-up`);
      const fig = await withMode(mode, (env) => runWorkloads(env, o, progress, tag), o.weftdArgs);
      reps.get(mode)?.push(fig);
    }
  }
  progress.finish();
  const options = {
    reps: o.reps,
    tcp_seconds: o.tcpSeconds,
    udp_seconds: o.udpSeconds,
    pings: o.pings,
    sparse_pings: o.sparsePings,
    modes: o.modes,
    weftd_args: o.weftdArgs,
    topology: "BENCH.md: p1 ─ h1 ═ underlay veth 198.18.0.0/24 ═ h2 ─ p2, each mode from scratch per repetition",
    pod_mtu: { direct: 1500, vxlan: VXLAN_MTU, weft: "from subnet.env (1472)", flannel: UDP_MTU },
  };
  const { json, summaries } = labJson(machine, options, reps);
  const path = writeResult("lab", json, { dir: outDir });
  const svgPath = path.replace(/\.json$/, ".svg");
  writeFileSync(svgPath, chart(summaries, json.ratios, machine));
  const weftRss = summaries.get("weft")?.get("rss_mb")?.median;
  const out = [
    `bench lab — ${machineLine(machine)}`,
    `${o.reps} repetition(s) per mode, modes interleaved, each brought up from scratch; median [min–max]; weft ÷ vxlan: ratio of the medians [per-repetition ratios, min–max]`,
    `TCP: iperf3 single stream ${o.tcpSeconds} s, receiver goodput. UDP: batching generator (sendmmsg) at max rate ${o.udpSeconds} s, payload 1400 B (1428 B IP) and 64 B (92 B IP), delivered datagrams/s at the sink. RTT: ${o.pings} request-response pings (ping -A, after ${RTT_WARMUP_S} s unmeasured), then ${o.sparsePings} pings 10 ms apart.`,
    "CPU s/GB: user+sys of both weftd (flannel: both proxies) during the TCP run ÷ GB received; RSS: VmHWM of the larger one",
    "",
    labTable(summaries, [
      { label: "weft ÷ vxlan", ratios: json.ratios, ranges: json.ratio_ranges },
      ...(summaries.has("flannel") && summaries.has("weft")
        ? [{ label: "weft ÷ flannel", ratios: json.ratios_vs_flannel, ranges: json.ratio_ranges_vs_flannel }]
        : []),
    ]),
    "",
    ...targetLines(json.ratios, weftRss),
    "",
    ...dropLines(reps),
    "",
    `JSON: ${path}`,
    `SVG:  ${svgPath}`,
  ];
  process.stdout.write(`${out.join("\n")}\n`);
  return 0;
}

async function replayRun(
  file: string,
  loops: number,
  o: LabOptions,
  machine: MachineInfo,
  outDir: string | undefined,
): Promise<number> {
  const capture = readCapture(readFileSync(file));
  const ipv4 = capture.records.flatMap((r) => (r.ipv4 === null ? [] : [r.ipv4]));
  if (ipv4.length === 0) throw new Error(`${file}: no IPv4 packets`);
  const progress = new Progress(o.reps * o.modes.length);
  const results = new Map<Mode, ReplayLabResult[]>(o.modes.map((m) => [m, []]));
  for (let rep = 1; rep <= o.reps; rep++) {
    for (const mode of o.modes) {
      progress.step(`rep ${rep}/${o.reps} ${mode}: replay ${ipv4.length} packets × ${loops}`);
      const r = await withMode(mode, (env) => liveReplay(env, ipv4, loops), o.weftdArgs);
      results.get(mode)?.push(r);
    }
  }
  progress.finish();
  const modes: Record<string, unknown> = {};
  const delivered = new Map<Mode, Summary>();
  for (const [mode, list] of results) {
    const d = summarize(list.map((r) => r.delivered));
    delivered.set(mode, d);
    modes[mode] = {
      delivered: jsonNumber(d.median),
      delivered_range: [jsonNumber(d.min), jsonNumber(d.max)],
      sent: jsonNumber(summarize(list.map((r) => r.sent)).median),
      arrived: jsonNumber(summarize(list.map((r) => r.arrived)).median),
      per_rep: list,
    };
  }
  const ratios = { delivered: jsonNumber(ratio(delivered.get("weft")?.median, delivered.get("vxlan")?.median), 4) };
  const path = writeResult(
    "lab-replay",
    {
      kind: "lab-replay",
      machine,
      capture: { file, format: capture.format, records: capture.records.length, ipv4: ipv4.length, loops },
      method:
        "IPv4 packets rewritten to p1→p2 (TTL 64, IP checksum recomputed, TCP/UDP checksums recomputed; first fragments updated incrementally; snapped and over-MTU packets skipped), sent from p1 with a python3 raw socket (IPPROTO_RAW) as fast as it goes; arrived = growth of p2's Ip.InReceives",
      modes,
      ratios,
    },
    { dir: outDir },
  );
  const percent = (d: Summary): Summary => ({ ...d, median: d.median * 100, min: d.min * 100, max: d.max * 100 });
  const rows = [...results].map(([mode, list]) => {
    const last = list[list.length - 1] as ReplayLabResult;
    return [
      mode,
      String(last.sent),
      String(last.arrived),
      fmtSummary(percent(delivered.get(mode) as Summary), 1),
      String(last.skipped_snapped + last.skipped_oversize),
    ];
  });
  process.stdout.write(
    `${[
      `bench lab --replay ${file} — ${machineLine(machine)}`,
      `${ipv4.length} IPv4 packets (of ${capture.records.length} records) × ${loops}, rewritten to p1→p2, raw socket from p1; arrivals = p2 Ip.InReceives`,
      "",
      formatTable(["mode", "sent (last rep)", "arrived (last rep)", "delivered %", "skipped"], rows),
      "",
      `delivered weft ÷ vxlan: ${fmtRatio(ratios.delivered)}`,
      "where packets were dropped (last repetition, counters that grew):",
      ...[...results].map(([mode, list]) => {
        const d = Object.entries((list[list.length - 1] as ReplayLabResult).drops)
          .filter(([k]) => !k.endsWith("Udp.NoPorts"))
          .sort((a, b) => b[1] - a[1])
          .slice(0, 5)
          .map(([k, v]) => `${k} ${v}`)
          .join(", ");
        return `  ${mode}: ${d === "" ? "none counted" : d}`;
      }),
      `JSON: ${path}`,
    ].join("\n")}\n`,
  );
  return 0;
}

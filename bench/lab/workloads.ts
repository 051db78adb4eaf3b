// The workloads of one bring-up, in order: TCP single stream (iperf3), UDP
// 1400 B and 64 B with the batching generator (delivered pps at the sink,
// loss, where the rest was dropped), RTT request-response and sparse (ping),
// and for the modes with a dataplane process its CPU per GB and memory.

import { execFileSync, spawn } from "node:child_process";
import { availableParallelism } from "node:os";
import { ARENA_IDLE_MS } from "../../dataplane/arena-release.js";
import { cpuSeconds, machineUserSeconds, memoryOf, peakRssMb, userSeconds } from "../../lab/proc.js";
import { nsRun } from "../../lab/topology.js";
import { type Progress, percentile } from "../report.js";
import { type RecvResult, type SendResult, spawnUdpgen, type UdpgenChild } from "../udpgen.js";
import { nsSpawn, sleep, track } from "./children.js";
import { daemonPids, type Env, hasDaemon, type Mode } from "./modes.js";
import { allDrops, grew } from "./probes.js";

const IPERF_PORT = 5201;
const UDP_PORT = 5202;

export interface LabOptions {
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
  /** Seconds of idle CPU measured once per daemon mode (0: not measured). */
  idleSeconds: number;
  /** Pings under strace for syscalls per round trip (0: not measured). */
  stracePings: number;
  /**
   * TCP with each host on a vCPU of its own: p1's iperf3 and h1's daemon on
   * CPU 0, p2's iperf3 and h2's daemon on CPU 1 (HOST_CPUS), every mode alike.
   */
  pinHosts: boolean;
}

/** The vCPUs of h1's side and h2's side when hosts are pinned (LabOptions.pinHosts). */
export const HOST_CPUS = [0, 1] as const;

/** Every thread of `pid` onto `cpus` (taskset's list syntax). */
function pin(pid: number, cpus: string): void {
  execFileSync("taskset", ["-a", "-p", "-c", cpus, String(pid)], { stdio: ["ignore", "ignore", "pipe"] });
}

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
  /** Anonymous resident memory of the larger daemon after the workloads, MiB. */
  anon_mb?: number;
  /** Proportional set size of the larger daemon after the workloads, MiB. */
  pss_mb?: number;
  tcp_retransmits: number;
  /**
   * CPU cores busy in user space during the TCP run outside it: the machine's
   * user time less the daemons' and both iperf3s', per second. What the run
   * itself spends in user space is small (iperf3 copies in the kernel), so
   * this is other sessions' work competing for the same vCPUs.
   */
  tcp_others_cores: number;
  udp1400_drops: Record<string, number>;
  udp64_drops: Record<string, number>;
  udp1400_sender_pps: number;
  udp64_sender_pps: number;
  ping_lost: number;
}

export interface TcpResult {
  gbps: number;
  bytes: number;
  retransmits: number;
  /** Modes with daemons: CPU seconds of both per GB (1e9 bytes) received. */
  cpuSPerGb: number | null;
  /** RepFigures.tcp_others_cores. */
  othersCores: number;
}

/** iperf3 single stream p1 → p2 for `seconds`; with daemons, their CPU per GB. */
export async function tcp(env: Env, seconds: number, pinHosts: boolean): Promise<TcpResult> {
  const [cpu1, cpu2] = HOST_CPUS;
  const on = (cpu: number): string[] => (pinHosts ? ["taskset", "-c", String(cpu)] : []);
  const server = track(
    spawn("ip", ["netns", "exec", env.p2.ns, ...on(cpu2), "iperf3", "-s", "-1", "-p", String(IPERF_PORT)], {
      stdio: ["ignore", "ignore", "pipe"],
    }),
  );
  const pids = daemonPids(env);
  const all = `0-${availableParallelism() - 1}`;
  try {
    if (pinHosts) for (const [i, pid] of pids.entries()) pin(pid, String(i === 0 ? cpu1 : cpu2));
    for (let i = 0; ; i++) {
      const listening = await nsRun(env.p2.ns, "ss", ["-Hltn", `sport = :${IPERF_PORT}`]);
      if (listening.trim() !== "") break;
      if (i >= 50 || server.exitCode !== null) throw new Error(`${env.mode}: iperf3 server did not start`);
      await sleep(100);
    }
    const cpu0 = pids.map(cpuSeconds);
    const user0 = pids.map(userSeconds);
    const machine0 = machineUserSeconds();
    const t0 = performance.now();
    const client = [...on(cpu1), "iperf3", "-c", env.p2.ip, "-p", String(IPERF_PORT), "-t", String(seconds), "-J"];
    const r = await nsSpawn(env.p1.ns, client[0] as string, client.slice(1), (seconds + 30) * 1000);
    const cpuEnd = pids.map(cpuSeconds);
    const user1 = pids.map(userSeconds);
    const machine1 = machineUserSeconds();
    const wall = (performance.now() - t0) / 1000;
    let report: {
      end?: {
        sum_received?: { bits_per_second: number; bytes: number };
        sum_sent?: { retransmits?: number; seconds?: number };
        /** Percent of one CPU over the test: the client (host) and the server (remote). */
        cpu_utilization_percent?: { host_user?: number; remote_user?: number };
      };
      error?: string;
    };
    try {
      report = JSON.parse(r.stdout);
    } catch {
      throw new Error(`${env.mode}: iperf3 client gave no JSON (exit ${r.code}): ${r.stderr.trim()}`);
    }
    const recv = report.end?.sum_received;
    if (recv === undefined) throw new Error(`${env.mode}: iperf3: ${report.error ?? "no sum_received"}`);
    const cpu = cpuEnd.reduce((a, v, i) => a + v - (cpu0[i] as number), 0);
    const daemonsUser = user1.reduce((a, v, i) => a + v - (user0[i] as number), 0);
    const util = report.end?.cpu_utilization_percent;
    const iperfSeconds = report.end?.sum_sent?.seconds ?? seconds;
    const iperfUser = (((util?.host_user ?? 0) + (util?.remote_user ?? 0)) / 100) * iperfSeconds;
    return {
      othersCores: Math.max(0, machine1 - machine0 - daemonsUser - iperfUser) / wall,
      gbps: recv.bits_per_second / 1e9,
      bytes: recv.bytes,
      retransmits: report.end?.sum_sent?.retransmits ?? 0,
      cpuSPerGb: pids.length > 0 && recv.bytes > 0 ? cpu / (recv.bytes / 1e9) : null,
    };
  } finally {
    // The later workloads run unpinned, as before.
    if (pinHosts) for (const pid of pids) pin(pid, all);
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
export const RTT_WARMUP_S = 1;

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

/** The wait before anon_mb and pss_mb are read: past weftd's idle arena release, with a second to spare. */
export const REST_BEFORE_MEMORY_MS = 2 * ARENA_IDLE_MS + 1000;

/** Every workload once on a mode that is up; the figures of one repetition. */
export async function runWorkloads(env: Env, o: LabOptions, progress: Progress, tag: string): Promise<RepFigures> {
  progress.step(`${tag}: TCP ${o.tcpSeconds} s`);
  const t = await tcp(env, o.tcpSeconds, o.pinHosts);
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
    tcp_others_cores: t.othersCores,
    udp1400_drops: u1400.drops,
    udp64_drops: u64.drops,
    udp1400_sender_pps: u1400.senderPps,
    udp64_sender_pps: u64.senderPps,
    ping_lost: r.lost + sparse.lost,
  };
  if (hasDaemon(env.mode)) {
    const pids = daemonPids(env);
    const rss = pids.map(peakRssMb);
    // Memory at rest: weftd gives its receive arenas back 1–2 idle periods
    // after the last packet; sampled at once, a flood's pages would still count.
    progress.step(`${tag}: ${REST_BEFORE_MEMORY_MS / 1000} s at rest, then memory`);
    await sleep(REST_BEFORE_MEMORY_MS);
    const mem = pids.map(memoryOf);
    fig.cpu_s_per_gb = t.cpuSPerGb ?? Number.NaN;
    fig.rss_mb = Math.max(...rss);
    fig.rss_mb_each = rss;
    fig.anon_mb = Math.max(...mem.map((m) => m.anon_mb));
    fig.pss_mb = Math.max(...mem.map((m) => m.pss_mb));
  }
  return fig;
}

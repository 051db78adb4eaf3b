// One scale measurement: a registry holding `peers` made-up peers, then
//
//   1. weftd on h1 alone: start → subnet.env written (ready), its CPU to that
//      moment, memory after a settle, log lines written at start;
//   2. churn at a steady rate (adds, then removes) after an equal window of
//      polling alone: weftd CPU per change (churn minus baseline), and per
//      change the time from its write to the table that held it;
//   3. weftd on h2 too, a pod on each host: TCP p1 → p2 through weft without
//      churn, then with churn at the same rate.
//
// Everything in namespaces <prefix>-h1, -h2, -p1, -p2 (lab/topology.ts); with
// etcd, etcd runs in h1 on the underlay address, reached by both weftds.

import { type ChildProcess, spawn } from "node:child_process";
import { mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { writeSubnetEnv } from "../../control/subnet-env.js";
import { startLabEtcd } from "../../lab/etcd.js";
import { startStandin } from "../../lab/kube/standin.js";
import { CLK_TCK, cpuSeconds, type Memory, memoryOf } from "../../lab/proc.js";
import { Lab, type LabHost } from "../../lab/topology.js";
import { parsePrefix } from "../../net/addr.js";
import { live, sleep, track } from "../lab/children.js";
import { type Env, METRICS_PORT, waitReachable } from "../lab/modes.js";
import { tcp } from "../lab/workloads.js";
import { median, percentile } from "../report.js";
import type { ChurnCommand, ChurnResult, RegistrySpec, SeedCommand } from "./driver.js";
import { HOST_SUBNET_THIRD_OCTET, kubeNode, SCALE_CONFIG, SCALE_NETWORK } from "./peers.js";

export type RegistryKind = "file" | "etcd" | "kube";

export interface ScaleOptions {
  /** Churn: changes per second, and seconds of it (half adds, half removes). */
  rate: number;
  churnSeconds: number;
  settleSeconds: number;
  tcpSeconds: number;
  /** Pairs of TCP runs, without churn then with it; the ratio is the median of the pairs'. */
  tcpReps: number;
  pollMs: number;
  /** Skip the two-host TCP part. */
  noTcp: boolean;
  /**
   * Niceness of the churn writer, etcd and the stand-in API server (0: as
   * weftd). In a cluster they run on other machines; here they share the
   * cores with weftd and iperf3, and niced they take CPU only when those
   * leave some.
   */
  nice?: number;
}

export interface ScalePoint {
  mode: RegistryKind;
  peers: number;
  seed_seconds: number;
  ready_s: number;
  cpu_to_ready_s: number;
  memory_after_start: Memory;
  log_lines_at_start: number;
  changes: number;
  cpu_per_change_ms: number;
  cpu_baseline_pct: number;
  change_to_table_p50_ms: number;
  change_to_table_p99_ms: number;
  change_to_table_max_ms: number;
  changes_unseen: number;
  tcp_gbps: number | null;
  tcp_churn_gbps: number | null;
  tcp_churn_ratio: number | null;
  tcp_churn_changes_seen: number | null;
  /** Each pair of TCP runs, without churn then with it (--tcp-reps). */
  tcp_pairs?: TcpPair[];
  /**
   * weftd's time to make and install a table per update during the churn
   * (mean, µs), and its longest since start (µs): the stall a lease change
   * puts on the thread that forwards packets. Null from a weftd without them.
   */
  table_update_mean_us?: number | null;
  table_update_max_us?: number | null;
  /** CPU of each process during the TCP runs without and with churn, % of one core (null: skipped). */
  tcp_cpu_pct?: { plain: CpuShares | null; churn: CpuShares | null };
}

export interface TcpPair {
  plain_gbps: number;
  churn_gbps: number;
}

/** The median of the pairs' own ratios (churn ÷ plain); null without pairs. */
export function pairRatio(pairs: readonly TcpPair[]): number | null {
  const ratios = pairs.filter((p) => p.plain_gbps > 0).map((p) => p.churn_gbps / p.plain_gbps);
  return ratios.length === 0 ? null : median(ratios);
}

/**
 * One TCP run during churn: the writer starts (node, its registry client, a
 * first look) and connects before the window, and churns from the go; it
 * tails weftd's log without scraping /metrics (ChurnCommand.pollMetrics).
 * `run` is the TCP run.
 */
async function tcpDuringChurn(
  h1: LabHost,
  spec: RegistrySpec,
  firstIndex: number,
  changes: number,
  o: ScaleOptions,
  pids: CpuPids,
  tally: CpuTally,
  run: () => Promise<{ gbps: number }>,
): Promise<{ gbps: number; seen: number; updateMaxUs: number | null }> {
  let writer: ChildProcess | null = null;
  let readyCpu = 0;
  let onReady = () => {};
  const ready = new Promise<void>((resolve) => {
    onReady = resolve;
  });
  const during = driver<ChurnResult>(
    h1.ns,
    {
      command: "churn",
      registry: spec,
      firstIndex,
      baselineSeconds: 0,
      changes,
      rate: o.rate,
      pollMs: Math.max(o.pollMs, TCP_LOOK_MS),
      pollMetrics: false,
      waitForGo: true,
      metricsPort: METRICS_PORT,
      logPath: join(h1.dir, "weftd.log"),
    },
    (line) => {
      const { phase, cpu_seconds } = line as { phase?: string; cpu_seconds?: number };
      if (phase === "ready") {
        readyCpu = cpu_seconds ?? 0;
        onReady();
      }
    },
    o.nice ?? 0,
    (child) => {
      writer = child;
    },
  );
  await Promise.race([ready, during]);
  const go = writer as ChildProcess | null;
  if (go?.pid === undefined) throw new Error("scale driver churn: no process");
  go.stdin?.end("go\n");
  const churned = await tally.window({ ...pids, writer: go.pid }, run);
  const r = await during;
  // The writer is usually gone by the end of the run: its own account from the go.
  if (churned.gone.includes("writer")) tally.add("writer", r.cpu_seconds - readyCpu);
  return {
    gbps: churned.value.gbps,
    seen: r.latencies_ms.length - r.unseen,
    updateMaxUs: Number.isFinite(r.table_updates.max_seconds) ? r.table_updates.max_seconds * 1e6 : null,
  };
}

/** The processes whose CPU is taken around each TCP run (null: none in this run). */
interface CpuPids {
  weftd_h1: number;
  weftd_h2: number;
  /** The churn writer and table poller (driver.ts). */
  writer: number | null;
  /** etcd or the stand-in API server. */
  registry: number | null;
}

/**
 * % of one core per process; `rest`: the machine's busy time minus those
 * (iperf3, the kernel's forwarding, and anything else on the machine, such
 * as other work on a shared host: compare it without and with churn).
 */
export type CpuShares = Record<keyof CpuPids | "rest", number | null>;

/** CPU seconds of a process now, or null when it is absent or gone. */
function cpuOrNull(pid: number | null): number | null {
  if (pid === null) return null;
  try {
    return cpuSeconds(pid);
  } catch {
    return null;
  }
}

/** Busy CPU seconds of the whole machine, all cores (/proc/stat: all but idle and iowait). */
function machineBusySeconds(): number {
  const cpu = readFileSync("/proc/stat", "utf8").split("\n", 1)[0]?.trim().split(/\s+/).slice(1).map(Number) ?? [];
  const total = cpu.slice(0, 8).reduce((a, v) => a + v, 0);
  return (total - (cpu[3] ?? 0) - (cpu[4] ?? 0)) / CLK_TCK;
}

/** CPU seconds per process over one or more windows, and the windows' seconds. */
export class CpuTally {
  private readonly spent = new Map<keyof CpuShares, number | null>();
  private seconds = 0;

  /** Adds CPU seconds to `key`; null (the process was not there) adds nothing, and a key only ever given null stays null. */
  add(key: keyof CpuShares, cpu: number | null): void {
    const had = this.spent.get(key) ?? null;
    this.spent.set(key, cpu === null ? had : (had ?? 0) + cpu);
  }

  /**
   * Runs `work`, adding each process's CPU over it; a process absent at the
   * start counts from 0, one gone by the end adds `gone(key)` (null: nothing).
   */
  async window<T>(
    pids: CpuPids,
    work: () => Promise<T>,
  ): Promise<{ value: T; seconds: number; gone: (keyof CpuPids)[] }> {
    const keys = Object.keys(pids) as (keyof CpuPids)[];
    const before = keys.map((k) => cpuOrNull(pids[k]));
    const busy0 = machineBusySeconds();
    const t0 = performance.now();
    const value = await work();
    const seconds = (performance.now() - t0) / 1000;
    const busy = machineBusySeconds() - busy0;
    let tracked = 0;
    const gone: (keyof CpuPids)[] = [];
    keys.forEach((k, i) => {
      const end = cpuOrNull(pids[k]);
      if (end === null && pids[k] !== null) gone.push(k);
      const cpu = end === null ? null : end - (before[i] ?? 0);
      tracked += cpu ?? 0;
      this.add(k, cpu);
    });
    this.add("rest", Math.max(0, busy - tracked));
    this.seconds += seconds;
    return { value, seconds, gone };
  }

  /** % of one core over all windows. */
  shares(): CpuShares {
    const out = { weftd_h1: null, weftd_h2: null, writer: null, registry: null, rest: null } as CpuShares;
    for (const [k, v] of this.spent) out[k] = v === null || this.seconds === 0 ? null : (100 * v) / this.seconds;
    return out;
  }
}

/** How often the writer looks at weftd's log during the TCP run (ms; --poll-ms when larger). */
const TCP_LOOK_MS = 100;

const DRIVER = new URL("./driver.js", import.meta.url).pathname;

/** Runs the driver in `ns`; `onLine` sees each JSON line as it comes; resolves with the last. */
/** `ip netns exec ns`, under `nice -n N` when N > 0. */
export function inNetns(ns: string, nice = 0): string[] {
  return [...(nice > 0 ? ["nice", "-n", String(nice)] : []), "ip", "netns", "exec", ns];
}

function driver<T>(
  ns: string,
  command: SeedCommand | ChurnCommand,
  onLine: (o: { phase?: string }) => void = () => {},
  nice = 0,
  onChild: (child: ChildProcess) => void = () => {},
) {
  return new Promise<T>((resolve, reject) => {
    const [cmd, ...args] = inNetns(ns, nice) as [string, ...string[]];
    const child = track(
      spawn(cmd, [...args, process.execPath, DRIVER, JSON.stringify(command)], {
        stdio: [command.command === "churn" && command.waitForGo === true ? "pipe" : "ignore", "pipe", "pipe"],
      }),
    );
    onChild(child);
    let buffered = "";
    let last: unknown = null;
    let stderr = "";
    child.stdout?.setEncoding("utf8").on("data", (d: string) => {
      buffered += d;
      for (let nl = buffered.indexOf("\n"); nl >= 0; nl = buffered.indexOf("\n")) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        if (line.trim() === "") continue;
        last = JSON.parse(line);
        onLine(last as { phase?: string });
      }
    });
    child.stderr?.setEncoding("utf8").on("data", (d: string) => {
      if (stderr.length < 8000) stderr += d;
    });
    child.once("error", reject);
    child.once("close", (code) => {
      if (code === 0 && last !== null) resolve(last as T);
      else reject(new Error(`scale driver ${command.command} failed (exit ${code}): ${stderr.trim()}`));
    });
  });
}

/** Writes the subnet.env a previous run would have left, so weftd asks for this lease again. */
async function previousLease(lab: Lab, h: LabHost): Promise<void> {
  const third = HOST_SUBNET_THIRD_OCTET[h.index - 1] as number;
  await writeSubnetEnv(lab.subnetFile(h), {
    network: parsePrefix(SCALE_NETWORK) as NonNullable<ReturnType<typeof parsePrefix>>,
    subnet: parsePrefix(`10.244.${third}.0/24`) as NonNullable<ReturnType<typeof parsePrefix>>,
    mtu: 1472,
    ipMasq: false,
  });
}

/** Starts weftd on `h` and waits for its subnet.env; returns the ms to it and the CPU seconds spent. */
async function startTimed(
  lab: Lab,
  h: LabHost,
  extra: readonly string[],
  env?: Record<string, string>,
): Promise<{ readyMs: number; cpu: number }> {
  const path = lab.subnetFile(h);
  const t0 = Date.now();
  const child = lab.startWeft(h, ["--healthz-port", String(METRICS_PORT), "--healthz-ip", "127.0.0.1", ...extra], {
    env,
  });
  for (;;) {
    const mtime = statSync(path).mtimeMs;
    if (mtime >= t0) {
      const cpu = cpuSeconds(child.pid as number);
      return { readyMs: mtime - t0, cpu };
    }
    if (child.exitCode !== null) throw new Error(`weftd on ${h.ns} exited with ${child.exitCode}: ${lab.logTail(h)}`);
    if (Date.now() - t0 > 120_000) throw new Error(`weftd on ${h.ns} not ready in 120 s: ${lab.logTail(h)}`);
    await sleep(5);
  }
}

function weftPid(h: LabHost): number {
  const pid = h.weft?.pid;
  if (pid === undefined || h.weft?.exitCode !== null) throw new Error(`weftd on ${h.ns} is not running`);
  return pid;
}

interface ChurnFigures {
  result: ChurnResult;
  cpuPerChangeMs: number;
  baselinePct: number;
}

/** Churn with a baseline window before it; CPU of `pid` sampled at each phase line. */
async function churnMeasured(ns: string, pid: number, command: ChurnCommand, nice: number): Promise<ChurnFigures> {
  const marks: { phase: string; cpu: number; t: number }[] = [];
  const result = await driver<ChurnResult>(
    ns,
    command,
    (o) => {
      if (o.phase !== undefined) marks.push({ phase: o.phase, cpu: cpuSeconds(pid), t: performance.now() });
    },
    nice,
  );
  const [b, c, d] = marks as [(typeof marks)[0], (typeof marks)[0], (typeof marks)[0]];
  const baselineRate = (c.cpu - b.cpu) / ((c.t - b.t) / 1000);
  const churnCpu = d.cpu - c.cpu - baselineRate * ((d.t - c.t) / 1000);
  return {
    result,
    cpuPerChangeMs: (1000 * churnCpu) / command.changes,
    baselinePct: 100 * baselineRate,
  };
}

export async function measure(mode: RegistryKind, peers: number, o: ScaleOptions, dir: string): Promise<ScalePoint> {
  const lab = await Lab.create({ prefix: live.prefix, hosts: 2, dir });
  live.lab = lab;
  const [h1, h2] = lab.hosts as [LabHost, LabHost];
  let spec: RegistrySpec;
  let extra: string[] = [];
  /** etcd or the stand-in API server (null in file mode). */
  let serverPid: number | null = null;
  // Kube mode: each weftd is a Node named after its host.
  const nodeEnv = (h: LabHost) => (mode === "kube" ? { NODE_NAME: `h${h.index}` } : undefined);
  if (mode === "kube") {
    const apiDir = join(lab.dir, "api");
    mkdirSync(apiDir, { recursive: true });
    const api = await startStandin({
      dir: apiDir,
      listen: `${h1.underlayIp}:6443`,
      commandPrefix: inNetns(h1.ns, o.nice),
    });
    track(api.child);
    serverPid = api.child.pid ?? null;
    const netConf = join(lab.dir, "net-conf.json");
    writeFileSync(netConf, SCALE_CONFIG);
    for (const h of [h1, h2]) {
      const third = HOST_SUBNET_THIRD_OCTET[h.index - 1] as number;
      await api.putNode(kubeNode(`h${h.index}`, `10.244.${third}.0/24`, null));
    }
    spec = { kind: "kube", url: api.url, adminKubeconfig: api.adminKubeconfig };
    extra = ["--kube-subnet-mgr", "--kubeconfig-file", api.flannelKubeconfig, "--net-config-path", netConf];
  } else if (mode === "etcd") {
    const etcd = await startLabEtcd({ ns: h1.ns, ip: h1.underlayIp, dir: lab.dir, spawned: () => {}, nice: o.nice });
    track(etcd.child);
    serverPid = etcd.child.pid ?? null;
    spec = { kind: "etcd", endpoint: etcd.endpoint, config: SCALE_CONFIG };
    extra = ["--etcd-endpoints", etcd.endpoint];
  } else {
    lab.writeRegistryConfig(SCALE_CONFIG);
    spec = { kind: "file", dir: lab.registryDir };
  }
  const seeded = await driver<{ seconds: number }>(h1.ns, { command: "seed", registry: spec, peers });
  for (const h of [h1, h2]) await previousLease(lab, h);

  // 1. Start-up, weftd alone.
  const start = await startTimed(lab, h1, extra, nodeEnv(h1));
  await sleep(o.settleSeconds * 1000);
  const pid1 = weftPid(h1);
  const memory = memoryOf(pid1);
  const logLines = readFileSync(join(h1.dir, "weftd.log"), "utf8")
    .split("\n")
    .filter((l) => l !== "").length;

  // 2. Churn on h1 alone, after a baseline of polling alone.
  const changes = Math.max(2, Math.round(o.rate * o.churnSeconds));
  const churn = await churnMeasured(
    h1.ns,
    pid1,
    {
      command: "churn",
      registry: spec,
      firstIndex: peers,
      baselineSeconds: o.churnSeconds,
      changes,
      rate: o.rate,
      pollMs: o.pollMs,
      metricsPort: METRICS_PORT,
      logPath: join(h1.dir, "weftd.log"),
    },
    o.nice ?? 0,
  );
  const lat = churn.result.latencies_ms.filter((x): x is number => x !== null);
  const updates = churn.result.table_updates;
  let updateMaxUs = Number.isFinite(updates.max_seconds) ? updates.max_seconds * 1e6 : null;

  // 3. TCP through weft, without and with churn.
  const pairs: TcpPair[] = [];
  let tcpSeen: number | null = null;
  const tcpCpu: { plain: CpuShares | null; churn: CpuShares | null } = { plain: null, churn: null };
  if (!o.noTcp) {
    await startTimed(lab, h2, extra, nodeEnv(h2));
    const e1 = { network: SCALE_NETWORK, subnet: "10.244.1.1/24", mtu: 1472 };
    const e2 = { network: SCALE_NETWORK, subnet: "10.244.2.1/24", mtu: 1472 };
    const p1 = await lab.addPod(h1, e1);
    const p2 = await lab.addPod(h2, e2);
    const env: Env = { mode: "weft", lab, h1, h2, p1, p2, mtu: 1472, proxies: [] };
    await waitReachable(env);
    const pids: CpuPids = { weftd_h1: pid1, weftd_h2: weftPid(h2), writer: null, registry: serverPid };
    const plainCpu = new CpuTally();
    const churnCpu = new CpuTally();
    const tcpChanges = Math.max(2, Math.round(o.rate * o.tcpSeconds));
    // Pairs, each a run without churn and one with it right after: the
    // ratio is taken per pair, so a drift in what else the machine runs
    // weighs on both halves alike.
    for (let rep = 0; rep < o.tcpReps; rep++) {
      const plain = await plainCpu.window({ ...pids, writer: null }, () => tcp(env, o.tcpSeconds, false));
      const churned = await tcpDuringChurn(
        h1,
        spec,
        peers + changes + rep * tcpChanges,
        tcpChanges,
        o,
        pids,
        churnCpu,
        () => tcp(env, o.tcpSeconds, false),
      );
      pairs.push({ plain_gbps: plain.value.gbps, churn_gbps: churned.gbps });
      tcpSeen = (tcpSeen ?? 0) + churned.seen;
      if (churned.updateMaxUs !== null) updateMaxUs = Math.max(updateMaxUs ?? 0, churned.updateMaxUs);
    }
    tcpCpu.plain = plainCpu.shares();
    tcpCpu.churn = churnCpu.shares();
  }
  return {
    mode,
    peers,
    seed_seconds: seeded.seconds,
    ready_s: start.readyMs / 1000,
    cpu_to_ready_s: start.cpu,
    memory_after_start: memory,
    log_lines_at_start: logLines,
    changes,
    cpu_per_change_ms: churn.cpuPerChangeMs,
    cpu_baseline_pct: churn.baselinePct,
    change_to_table_p50_ms: percentile(lat, 50),
    change_to_table_p99_ms: percentile(lat, 99),
    change_to_table_max_ms: Math.max(...lat),
    changes_unseen: churn.result.unseen,
    tcp_gbps: pairs.length === 0 ? null : median(pairs.map((p) => p.plain_gbps)),
    tcp_churn_gbps: pairs.length === 0 ? null : median(pairs.map((p) => p.churn_gbps)),
    tcp_churn_ratio: pairRatio(pairs),
    tcp_pairs: pairs,
    tcp_churn_changes_seen: tcpSeen,
    tcp_cpu_pct: tcpCpu,
    table_update_mean_us:
      updates.count > 0 && Number.isFinite(updates.seconds) ? (updates.seconds / updates.count) * 1e6 : null,
    table_update_max_us: updateMaxUs,
  };
}

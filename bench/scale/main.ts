// `npm run bench -- scale`: what the control plane costs as the cluster
// grows. For each registry mode and peer count, from scratch: start to ready,
// CPU to ready, memory after start, CPU per lease change and the time a
// change takes to reach the forwarding table under steady churn, and TCP
// through weft with and without that churn (run.ts). Table, JSON, and an SVG
// of each cost against peers (chart.ts). Peers are made up (peers.ts) and
// written to the registry by driver.ts from inside the lab.

import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { live } from "../lab/children.js";
import { claimRun, cleanup } from "../lab/cleanup.js";
import { positiveInt } from "../replay.js";
import { fmt, formatTable, machineInfo, machineLine, median, Progress, RESULTS_DIR, writeResult } from "../report.js";
import { scaleChartSvg } from "./chart.js";
import { MAX_PEERS } from "./peers.js";
import { type CpuShares, measure, pairRatio, type RegistryKind, type ScaleOptions, type ScalePoint } from "./run.js";

const DEFAULT_PREFIX = "wscale";

const USAGE = `usage: npm run bench -- scale [options]   (root: builds network namespaces ${DEFAULT_PREFIX}-*, or --prefix P)
  --peers LIST        peer counts (default 100,1000,5000,10000; at most ${MAX_PEERS})
  --modes LIST        registries, from file,etcd,kube (default file,etcd,kube; etcd needs etcd-server and
                      etcd-client; kube runs the stand-in API server of lab/kube/ with 7 kB Node objects)
  --reps N            runs of each point, from scratch; the table and chart show each figure's median (default 3)
  --rate N            lease changes per second during churn (default 10)
  --churn-seconds S   seconds of churn (half adds, half removes), after as many of polling alone (default 10)
  --settle-seconds S  after ready, before memory is read (default 5)
  --tcp-seconds S     TCP through weft without churn, then with it, S seconds each (default 5)
  --tcp-reps N        pairs of those TCP runs per run; the churn ÷ plain ratio is the median of the pairs' over
                      all runs of a point (default 1: with --reps 3, three pairs)
  --no-tcp            skip the second host and the TCP runs
  --nice N            run the churn writer, etcd and the stand-in API server at niceness N (default 0): in a
                      cluster they are other machines; here they share the cores with weftd and iperf3
  --poll-ms N         how often the table is looked at during churn (default 25; its CPU is measured alone and subtracted)
  --prefix P          namespace prefix, [a-z0-9]{1,8} (default ${DEFAULT_PREFIX})
  --out-dir DIR       where JSON and SVG go (default ${RESULTS_DIR})`;

function niceness(text: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 0 || n > 19)
    throw new Error(`--nice: ${JSON.stringify(text)} is not a niceness from 0 to 19`);
  return n;
}

function parseList<T>(text: string, parse: (s: string) => T): T[] {
  return text.split(",").map((s) => parse(s.trim().replace(/_/g, "")));
}

export async function runScale(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      peers: { type: "string" },
      modes: { type: "string" },
      reps: { type: "string" },
      rate: { type: "string" },
      "churn-seconds": { type: "string" },
      "settle-seconds": { type: "string" },
      "tcp-seconds": { type: "string" },
      "tcp-reps": { type: "string" },
      "no-tcp": { type: "boolean", default: false },
      nice: { type: "string" },
      "poll-ms": { type: "string" },
      prefix: { type: "string" },
      "out-dir": { type: "string" },
      help: { type: "boolean", default: false },
    },
  });
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const peers = parseList(values.peers ?? "100,1000,5000,10000", (s) => {
    const n = Number(s);
    if (!Number.isInteger(n) || n < 1 || n > MAX_PEERS)
      throw new Error(`--peers: ${JSON.stringify(s)} is not a count from 1 to ${MAX_PEERS}`);
    return n;
  });
  const modes = parseList(values.modes ?? "file,etcd,kube", (s) => {
    if (s !== "file" && s !== "etcd" && s !== "kube")
      throw new Error(`--modes: ${JSON.stringify(s)} is not one of file, etcd, kube`);
    return s as RegistryKind;
  });
  const reps = positiveInt(values.reps, "--reps", 3);
  const o: ScaleOptions = {
    rate: positiveInt(values.rate, "--rate", 10),
    churnSeconds: positiveInt(values["churn-seconds"], "--churn-seconds", 10),
    settleSeconds: positiveInt(values["settle-seconds"], "--settle-seconds", 5),
    tcpSeconds: positiveInt(values["tcp-seconds"], "--tcp-seconds", 5),
    tcpReps: positiveInt(values["tcp-reps"], "--tcp-reps", 1),
    pollMs: positiveInt(values["poll-ms"], "--poll-ms", 25),
    noTcp: values["no-tcp"] === true,
    nice: values.nice === undefined ? 0 : niceness(values.nice),
  };
  live.prefix = values.prefix ?? DEFAULT_PREFIX;
  if (!/^[a-z0-9]{1,8}$/.test(live.prefix))
    throw new Error(`--prefix: ${JSON.stringify(live.prefix)} must be 1 to 8 of a-z and 0-9`);
  if (process.getuid?.() !== 0) throw new Error("bench scale needs root (it creates network namespaces)");
  const machine = machineInfo();
  await claimRun("bench scale", `npm run bench -- lab --cleanup --prefix ${live.prefix}`);

  const points: ScalePoint[] = [];
  const runs: ScalePoint[] = [];
  const progress = new Progress(modes.length * peers.length * reps);
  try {
    for (const mode of modes) {
      for (const n of peers) {
        const these: ScalePoint[] = [];
        for (let rep = 1; rep <= reps; rep++) {
          progress.step(
            `${mode} registry, ${n.toLocaleString("en")} peers${reps > 1 ? `, run ${rep} of ${reps}` : ""}`,
          );
          const dir = mkdtempSync(join(tmpdir(), `weft-bench-scale-${mode}-`));
          try {
            these.push(await measure(mode, n, o, dir));
          } finally {
            await cleanup();
          }
        }
        runs.push(...these);
        points.push(medianPoint(these));
      }
    }
  } finally {
    progress.finish();
    await cleanup();
  }

  const path = writeResult(
    "scale",
    {
      kind: "scale",
      machine,
      options: {
        peers,
        modes,
        reps,
        rate: o.rate,
        churn_seconds: o.churnSeconds,
        settle_seconds: o.settleSeconds,
        tcp_seconds: o.noTcp ? null : o.tcpSeconds,
        tcp_reps: o.noTcp ? null : o.tcpReps,
        poll_ms: o.pollMs,
        nice: o.nice ?? 0,
        network: "10.0.0.0/8, /24 leases; made-up peers in the registry before weftd starts",
      },
      units: {
        ready_s: "s from spawning weftd to its subnet.env's mtime",
        cpu_to_ready_s: "CPU s (user+sys) of weftd at that moment",
        memory_after_start: "MiB after --settle-seconds",
        anon_bytes_per_peer: "anonymous memory growth from the mode's smallest peer count, per peer added",
        cpu_per_change_ms: "weftd CPU ms per lease change: (churn CPU - polling-alone CPU rate × churn time) ÷ changes",
        change_to_table_ms:
          "ms from the start of a change's write to weftd's log line for it (written right after the table swap)",
        tcp_churn_ratio:
          "iperf3 p1 → p2 through weft during churn ÷ without: the median of tcp_pairs' ratios, each pair a run without churn and one with it right after",
        tcp_cpu_pct:
          "% of one core per process over the TCP runs without and with churn; rest: the machine's busy time minus those (iperf3, kernel forwarding, anything else running)",
      },
      points: points.map((p) => ({ ...p, anon_bytes_per_peer: bytesPerPeer(points, p) })),
      runs,
    },
    { dir: values["out-dir"] },
  );
  const svgPath = path.replace(/\.json$/, ".svg");
  writeFileSync(
    svgPath,
    scaleChartSvg(
      "weft control plane against cluster size (bench scale)",
      `${o.rate} lease changes/s; ${machineLine(machine)}`,
      [
        { title: "CPU per lease change", unit: "ms", value: (p) => p.cpu_per_change_ms },
        { title: "change → table, p99", unit: "ms", value: (p) => p.change_to_table_p99_ms },
        { title: "start to ready", unit: "s", value: (p) => p.ready_s },
        { title: "CPU to ready", unit: "s", value: (p) => p.cpu_to_ready_s },
        { title: "RSS after start", unit: "MiB", value: (p) => p.memory_after_start.rss_mb },
      ],
      points,
    ),
  );
  process.stdout.write(
    `${scaleReport(points, { ...o, reps }, machineLine(machine)).join("\n")}\nJSON: ${path}\nSVG:  ${svgPath}\n`,
  );
  return 0;
}

/**
 * One point from several runs of it: each figure is the median of that
 * figure over the runs (so a row may mix runs, as a table of medians does);
 * a figure missing from any run is missing.
 */
export function medianPoint(runs: readonly ScalePoint[]): ScalePoint {
  const first = runs[0];
  if (first === undefined) throw new Error("medianPoint: no runs");
  const mid = (get: (p: ScalePoint) => number | null): number | null => {
    const xs = runs.map(get);
    return xs.some((x) => x === null) ? null : median(xs as number[]);
  };
  const num = (get: (p: ScalePoint) => number): number => mid(get) as number;
  const pairs = runs.flatMap((p) => p.tcp_pairs ?? []);
  type Memory = ScalePoint["memory_after_start"];
  const memory = Object.fromEntries(
    (Object.keys(first.memory_after_start) as (keyof Memory)[]).map((k) => [k, num((p) => p.memory_after_start[k])]),
  ) as unknown as Memory;
  return {
    mode: first.mode,
    peers: first.peers,
    seed_seconds: num((p) => p.seed_seconds),
    ready_s: num((p) => p.ready_s),
    cpu_to_ready_s: num((p) => p.cpu_to_ready_s),
    memory_after_start: memory,
    log_lines_at_start: num((p) => p.log_lines_at_start),
    changes: num((p) => p.changes),
    cpu_per_change_ms: num((p) => p.cpu_per_change_ms),
    cpu_baseline_pct: num((p) => p.cpu_baseline_pct),
    change_to_table_p50_ms: num((p) => p.change_to_table_p50_ms),
    change_to_table_p99_ms: num((p) => p.change_to_table_p99_ms),
    change_to_table_max_ms: num((p) => p.change_to_table_max_ms),
    changes_unseen: num((p) => p.changes_unseen),
    tcp_gbps: mid((p) => p.tcp_gbps),
    tcp_churn_gbps: mid((p) => p.tcp_churn_gbps),
    // Pairs from every run pooled: the ratio is the median of all their own ratios.
    tcp_churn_ratio: pairs.length > 0 ? pairRatio(pairs) : mid((p) => p.tcp_churn_ratio),
    tcp_churn_changes_seen: mid((p) => p.tcp_churn_changes_seen),
    ...(pairs.length > 0 ? { tcp_pairs: pairs } : {}),
    table_update_mean_us: mid((p) => p.table_update_mean_us ?? null),
    table_update_max_us: mid((p) => p.table_update_max_us ?? null),
    ...(first.tcp_cpu_pct === undefined
      ? {}
      : { tcp_cpu_pct: { plain: medianShares(runs, "plain"), churn: medianShares(runs, "churn") } }),
  };
}

/** Each process's median share over the runs; a process absent from any run is absent. */
function medianShares(runs: readonly ScalePoint[], phase: "plain" | "churn"): CpuShares | null {
  const all = runs.map((r) => r.tcp_cpu_pct?.[phase] ?? null);
  const first = all[0];
  if (first === undefined || first === null || all.some((s) => s === null)) return null;
  const keys = Object.keys(first) as (keyof CpuShares)[];
  return Object.fromEntries(
    keys.map((k) => {
      const xs = all.map((s) => (s as CpuShares)[k]);
      return [k, xs.some((x) => x === null) ? null : median(xs as number[])];
    }),
  ) as CpuShares;
}

/**
 * Anonymous memory per peer: the growth from the mode's smallest peer count
 * to this one, divided by the peers added (null for the smallest). What a
 * peer costs in the registry's cache, the manager and the table together.
 */
export function bytesPerPeer(points: readonly ScalePoint[], p: ScalePoint): number | null {
  const same = points.filter((q) => q.mode === p.mode);
  const least = same.reduce((a, b) => (b.peers < a.peers ? b : a), p);
  if (least.peers >= p.peers) return null;
  return ((p.memory_after_start.anon_mb - least.memory_after_start.anon_mb) * 2 ** 20) / (p.peers - least.peers);
}

export function scaleReport(
  points: readonly ScalePoint[],
  o: ScaleOptions & { reps?: number },
  machine: string,
): string[] {
  const rows = points.map((p) => [
    p.mode,
    p.peers.toLocaleString("en"),
    fmt(p.ready_s, 2),
    fmt(p.cpu_to_ready_s, 2),
    `${fmt(p.memory_after_start.rss_mb, 1)} / ${fmt(p.memory_after_start.anon_mb, 1)}`,
    ((b) => (b === null ? "-" : fmt(b, 0)))(bytesPerPeer(points, p)),
    String(p.log_lines_at_start),
    fmt(p.cpu_per_change_ms, 2),
    `${fmt(p.change_to_table_p50_ms, 0)} / ${fmt(p.change_to_table_p99_ms, 0)}`,
    String(p.changes_unseen),
    p.tcp_gbps === null ? "-" : `${fmt(p.tcp_gbps, 2)} / ${fmt(p.tcp_churn_gbps, 2)}`,
    p.tcp_churn_ratio === null ? "-" : `${fmt(p.tcp_churn_ratio, 2)}×${pairRange(p)}`,
  ]);
  return [
    `bench scale — ${machine}`,
    `${(o.reps ?? 1) > 1 ? `medians of ${o.reps} runs per point; ` : ""}one weftd in a namespace, Network 10.0.0.0/8 with /24 leases, peers in the registry before it starts; churn: ${o.rate} changes/s for ${o.churnSeconds} s (adds, then removes), after ${o.churnSeconds} s of polling alone; TCP ${o.noTcp ? "skipped" : `${o.tcpSeconds} s through weft to a second host, without and with churn, ${o.tcpReps} pair${o.tcpReps === 1 ? "" : "s"} (ratio: median of the pairs')`}${o.nice ? `; churn writer, etcd and API server at nice ${o.nice}, standing in for other machines` : ""}`,
    "",
    formatTable(
      [
        "registry",
        "peers",
        "ready s",
        "CPU to ready s",
        "RSS / anon MiB",
        "anon B/peer",
        "log lines",
        "CPU/change ms",
        "change→table p50/p99 ms",
        "unseen",
        "TCP Gbit/s plain / churn",
        "churn ÷ plain",
      ],
      rows,
    ),
    "",
    ...cpuLines(points),
    ...updateLines(points),
  ];
}

/** " [0.80–1.00]": the pairs' own ratios, lowest to highest, when there are several. */
function pairRange(p: ScalePoint): string {
  const ratios = (p.tcp_pairs ?? []).filter((q) => q.plain_gbps > 0).map((q) => q.churn_gbps / q.plain_gbps);
  if (ratios.length < 2) return "";
  return ` [${fmt(Math.min(...ratios), 2)}–${fmt(Math.max(...ratios), 2)}]`;
}

/** The stall a lease change puts on weftd's forwarding thread, a line per point that has it. */
export function updateLines(points: readonly ScalePoint[]): string[] {
  const lines = points
    .filter((p) => p.table_update_mean_us != null || p.table_update_max_us != null)
    .map(
      (p) =>
        `  ${p.mode} ${p.peers.toLocaleString("en")}: ${p.table_update_mean_us == null ? "-" : fmt(p.table_update_mean_us, 0)} / ${p.table_update_max_us == null ? "-" : fmt(p.table_update_max_us, 0)}`,
    );
  return lines.length === 0
    ? []
    : ["weftd's table update per change on its forwarding thread, mean during churn / longest, µs:", ...lines, ""];
}

const CPU_NAMES: Record<keyof CpuShares, string> = {
  weftd_h1: "weftd h1",
  weftd_h2: "weftd h2",
  writer: "churn writer",
  registry: "registry server",
  rest: "rest of the machine",
};

/** Where the CPU went during the TCP runs, a line per point: "weftd h1 61 → 63" (% of one core, without → with churn). */
export function cpuLines(points: readonly ScalePoint[]): string[] {
  const lines: string[] = [];
  for (const p of points) {
    const cpu = p.tcp_cpu_pct;
    if (cpu === undefined || cpu.plain === null || cpu.churn === null) continue;
    const { plain, churn } = cpu;
    const parts = (Object.keys(CPU_NAMES) as (keyof CpuShares)[])
      .filter((k) => plain[k] !== null || churn[k] !== null)
      .map((k) => {
        const a = plain[k];
        const b = churn[k];
        return `${CPU_NAMES[k]} ${a === null ? "-" : fmt(a, 0)} → ${b === null ? "-" : fmt(b, 0)}`;
      });
    lines.push(`  ${p.mode} ${p.peers.toLocaleString("en")}: ${parts.join(", ")}`);
  }
  return lines.length === 0 ? [] : ["CPU % of a core during TCP, without → with churn:", ...lines, ""];
}

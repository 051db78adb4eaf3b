// The lab's table for people: one row per mode (median [min–max] of the
// repetitions), ratio rows, the BENCH.md targets, and where datagrams were
// dropped.

import { fmt, fmtRatioRange, fmtSummary, formatTable, type Summary } from "../report.js";
import type { Figure, Summaries } from "./figures.js";
import { hasDaemon, MODES, type Mode } from "./modes.js";
import type { RepFigures } from "./workloads.js";

export interface RatioRow {
  label: string;
  ratios: Record<string, number | null>;
  ranges: Record<string, (number | null)[]>;
}

export function labTable(summaries: Summaries, ratioRows: readonly RatioRow[]): string {
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
      hasDaemon(mode) ? fmtSummary(get(mode, "anon_mb"), 1) : "",
      hasDaemon(mode) ? fmtSummary(get(mode, "pss_mb"), 1) : "",
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
      "anon MiB",
      "PSS MiB",
    ],
    rows,
  );
}

export function targetLines(ratios: Record<string, number | null>, rss: number | undefined): string[] {
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

/**
 * TCP of every repetition, weft beside kernel VXLAN: the pairs the per-repetition
 * ratios come from, with what else kept the machine busy during each run.
 */
export function tcpRepLines(reps: Map<Mode, RepFigures[]>): string[] {
  const weft = reps.get("weft");
  const vxlan = reps.get("vxlan");
  if (weft === undefined || vxlan === undefined) return [];
  const out = [
    "TCP per repetition, weft ÷ vxlan (cores busy in user space outside the run, vxlan / weft: other sessions' work):",
  ];
  weft.forEach((w, i) => {
    const v = vxlan[i];
    if (v === undefined) return;
    const f = (x: number) => x.toFixed(2);
    out.push(
      `  rep ${i + 1}: ${f(w.tcp_gbps)} ÷ ${f(v.tcp_gbps)} Gbit/s = ${f(w.tcp_gbps / v.tcp_gbps)}×  (others ${f(v.tcp_others_cores)} / ${f(w.tcp_others_cores)})`,
    );
  });
  return out;
}

export function dropLines(reps: Map<Mode, RepFigures[]>): string[] {
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

// The lab's figures for machines and for the eye: the JSON record (shape fixed
// by issue 4: medians per mode, `<figure>_range` [min, max], ratios weft ÷
// vxlan and weft ÷ flannel) and the SVG chart of the same medians.

import {
  type ChartFigure,
  chartSvg,
  jsonNumber,
  type MachineInfo,
  machineLine,
  ratio,
  type Summary,
  summarize,
} from "../report.js";
import { hasDaemon, MODES, type Mode } from "./modes.js";
import type { RepFigures } from "./workloads.js";

export const FIGURES = [
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
export const DAEMON_FIGURES = ["cpu_s_per_gb", "rss_mb", "anon_mb", "pss_mb"] as const;
export type Figure = (typeof FIGURES)[number] | (typeof DAEMON_FIGURES)[number];
export type Summaries = Map<Mode, Map<Figure, Summary>>;

export interface LabModeJson {
  [key: string]: unknown;
}

/** The lab JSON (shape fixed by issue 4): medians per mode, `<figure>_range` [min, max], ratios weft ÷ vxlan. */
export function labJson(machine: MachineInfo, options: Record<string, unknown>, reps: Map<Mode, RepFigures[]>) {
  const modes: Record<string, LabModeJson> = {};
  const summaries: Summaries = new Map();
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
        anon_mb: "MiB, RssAnon of the larger weftd (flannel: proxy) 11 s after the workloads (at rest)",
        pss_mb: "MiB, Pss (smaps_rollup) of the larger weftd (flannel: proxy) 11 s after the workloads (at rest)",
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

/** What each mode is called in the chart's title. */
const MODE_TITLES: Record<Mode, string> = {
  weft: "weft",
  vxlan: "kernel vxlan",
  direct: "direct routing",
  flannel: "flannel's udp design (C proxy)",
};

/** "weft vs kernel vxlan vs direct routing …": every mode the chart shows, weft first. */
export function chartTitle(modes: readonly Mode[]): string {
  const ordered = (["weft", "vxlan", "direct", "flannel"] as const).filter((m) => modes.includes(m));
  return `${ordered.map((m) => MODE_TITLES[m]).join(" vs ")} (bench lab)`;
}

/** The SVG: one panel per headline figure, one bar per mode, weft's ratio to vxlan under its bar. */
export function chart(summaries: Summaries, ratios: Record<string, number | null>, machine: MachineInfo): string {
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
  return chartSvg(chartTitle(modes), `median of repetitions, whiskers min–max; ${machineLine(machine)}`, [
    fig("TCP single stream", "Gbit/s", "tcp_gbps", "tcp_gbps"),
    fig("UDP 1400 B delivered", "kpps", "udp1400_pps", "udp1400_pps", 1e-3),
    fig("UDP 64 B delivered", "kpps", "udp64_pps", "udp64_pps", 1e-3),
    fig("RTT p50, request-response", "µs", "rtt_p50_us", "rtt_p50", 1, true),
    fig("RTT p50, pings 10 ms apart", "µs", "rtt_sparse_p50_us", "rtt_sparse_p50", 1, true),
  ]);
}

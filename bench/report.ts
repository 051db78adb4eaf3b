// What every benchmark shares: the machine it ran on, median/min/max over
// repetitions, ratios, a table for people, a JSON file for machines
// (bench/results/<kind>-<timestamp>.json), an SVG chart of the lab figures,
// and progress lines (a bar on a TTY, plain lines otherwise).

import { mkdirSync, writeFileSync } from "node:fs";
import { availableParallelism, cpus, release, totalmem } from "node:os";
import { join } from "node:path";

export interface MachineInfo {
  /** `uname -r` (os.release() is the same uname(2) field). */
  readonly kernel: string;
  readonly node: string;
  readonly cores: number;
  readonly cpu: string;
  readonly memory_gb: number;
}

export function machineInfo(): MachineInfo {
  return {
    kernel: release(),
    node: process.version,
    cores: availableParallelism(),
    cpu: cpus()[0]?.model.trim() ?? "unknown",
    memory_gb: Math.round((totalmem() / 2 ** 30) * 10) / 10,
  };
}

/** One line for the top of every table. */
export function machineLine(m: MachineInfo): string {
  return `kernel ${m.kernel}, Node ${m.node}, ${m.cores} cores (${m.cpu}), ${m.memory_gb} GiB`;
}

export interface Summary {
  readonly median: number;
  readonly min: number;
  readonly max: number;
  /** How many repetitions the figure summarises. */
  readonly n: number;
}

/** Median of the finite values (mean of the middle two for an even count); NaN when none. */
export function median(values: readonly number[]): number {
  const v = values.filter(Number.isFinite).sort((a, b) => a - b);
  if (v.length === 0) return Number.NaN;
  const mid = v.length >> 1;
  return v.length % 2 === 1 ? (v[mid] as number) : ((v[mid - 1] as number) + (v[mid] as number)) / 2;
}

/** Median, min and max of the finite values; NaN fields when there are none. */
export function summarize(values: readonly number[]): Summary {
  const v = values.filter(Number.isFinite);
  if (v.length === 0) return { median: Number.NaN, min: Number.NaN, max: Number.NaN, n: 0 };
  return { median: median(v), min: Math.min(...v), max: Math.max(...v), n: v.length };
}

/** a / b, or null when either is not a finite number or b is 0 (JSON has no NaN). */
export function ratio(a: number | null | undefined, b: number | null | undefined): number | null {
  if (a === null || a === undefined || b === null || b === undefined) return null;
  if (!Number.isFinite(a) || !Number.isFinite(b) || b === 0) return null;
  return a / b;
}

/** p-th percentile (0..100) by nearest rank of the finite values; NaN when none. */
export function percentile(values: readonly number[], p: number): number {
  const v = values.filter(Number.isFinite).sort((a, b) => a - b);
  if (v.length === 0) return Number.NaN;
  const rank = Math.ceil((p / 100) * v.length);
  return v[Math.min(v.length, Math.max(1, rank)) - 1] as number;
}

/** Rounds for JSON: finite numbers to `digits` significant digits, the rest to null. */
export function jsonNumber(x: number | null | undefined, digits = 6): number | null {
  if (x === null || x === undefined || !Number.isFinite(x)) return null;
  return Number(x.toPrecision(digits));
}

/** A number for a table cell: fixed decimals, "-" when missing. */
export function fmt(x: number | null | undefined, decimals = 2): string {
  if (x === null || x === undefined || !Number.isFinite(x)) return "-";
  return x.toFixed(decimals);
}

/** "median [min–max]" for a table cell. */
export function fmtSummary(s: Summary, decimals = 2): string {
  if (s.n === 0) return "-";
  if (s.n === 1) return fmt(s.median, decimals);
  return `${fmt(s.median, decimals)} [${fmt(s.min, decimals)}–${fmt(s.max, decimals)}]`;
}

/** "0.42×" for a table cell. */
export function fmtRatio(r: number | null, decimals = 2): string {
  return r === null ? "-" : `${r.toFixed(decimals)}×`;
}

/** "3.21× [2.90–3.50]": the ratio of the medians and the per-repetition range, when there is one. */
export function fmtRatioRange(r: number | null, range: readonly (number | null)[] | undefined, decimals = 2): string {
  const [lo, hi] = range ?? [];
  if (r === null || lo === null || hi === null || lo === undefined || hi === undefined || lo === hi)
    return fmtRatio(r, decimals);
  return `${fmtRatio(r, decimals)} [${lo.toFixed(decimals)}–${hi.toFixed(decimals)}]`;
}

/**
 * A plain-text table: header, a rule, rows. Columns after the first are
 * right-aligned (they hold numbers).
 */
export function formatTable(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const width = header.map((h, c) => Math.max(h.length, ...rows.map((r) => (r[c] ?? "").length)));
  const line = (cells: readonly string[]) =>
    cells
      .map((cell, c) => (c === 0 ? cell.padEnd(width[c] as number) : cell.padStart(width[c] as number)))
      .join("  ")
      .trimEnd();
  const rule = width.map((w) => "-".repeat(w)).join("  ");
  return [line(header), rule, ...rows.map(line)].join("\n");
}

/** 2025-01-31T12-34-56Z: sortable, no colons (fine on every filesystem). */
export function timestamp(date = new Date()): string {
  return date
    .toISOString()
    .replace(/\.\d+Z$/, "Z")
    .replace(/:/g, "-");
}

export const RESULTS_DIR = "bench/results";

/** Writes `data` as <dir>/<kind>-<timestamp>.json and returns the path. */
export function writeResult(kind: string, data: unknown, opts: { dir?: string; date?: Date } = {}): string {
  const dir = opts.dir ?? RESULTS_DIR;
  mkdirSync(dir, { recursive: true });
  const path = join(dir, `${kind}-${timestamp(opts.date)}.json`);
  writeFileSync(path, `${JSON.stringify(data, null, 2)}\n`);
  return path;
}

// ---------------------------------------------------------------------------
// Progress: long runs say where they are. A bar redrawn in place on a TTY,
// one line per step otherwise (CI logs, pipes). Goes to stderr so stdout
// stays the table.

export class Progress {
  private done = 0;
  private readonly started = Date.now();
  private readonly tty: boolean;

  constructor(
    private readonly total: number,
    private readonly out: NodeJS.WriteStream = process.stderr,
  ) {
    this.tty = out.isTTY === true;
  }

  /** Announces the step about to run. */
  step(label: string): void {
    this.done++;
    const n = Math.min(this.done, this.total);
    if (this.tty) {
      const width = 24;
      const filled = Math.round((width * (n - 1)) / Math.max(1, this.total));
      const bar = `${"#".repeat(filled)}${".".repeat(width - filled)}`;
      const secs = Math.round((Date.now() - this.started) / 1000);
      const text = `[${bar}] ${n}/${this.total} ${secs}s ${label}`;
      const cols = this.out.columns ?? 100;
      this.out.write(`\r\x1b[K${text.slice(0, cols - 1)}`);
    } else {
      this.out.write(`[${n}/${this.total}] ${label}\n`);
    }
  }

  /** A line that must stay visible (a warning, a partial result). */
  note(line: string): void {
    this.out.write(this.tty ? `\r\x1b[K${line}\n` : `${line}\n`);
  }

  finish(): void {
    if (this.tty) this.out.write("\r\x1b[K");
  }
}

// ---------------------------------------------------------------------------
// SVG chart of the lab figures: one panel per figure, one bar per mode (the
// median) with a min–max whisker, and weft's ratio to vxlan over its bar.

export interface ChartFigure {
  readonly title: string;
  readonly unit: string;
  /** Lower is better (RTT): said in the panel title. */
  readonly lowerIsBetter?: boolean;
  readonly bars: readonly { mode: string; value: Summary; note?: string }[];
}

const MODE_COLOURS: Record<string, string> = {
  direct: "#7f8c8d",
  vxlan: "#2e86de",
  weft: "#e67e22",
  flannel: "#8e44ad",
};

function esc(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

function short(x: number): string {
  if (!Number.isFinite(x)) return "-";
  if (x >= 100) return x.toFixed(0);
  if (x >= 10) return x.toFixed(1);
  return x.toFixed(2);
}

export function chartSvg(title: string, subtitle: string, figures: readonly ChartFigure[]): string {
  const panelW = 230;
  const panelH = 260;
  const top = 60;
  const plotTop = 40;
  const plotH = 170;
  const width = panelW * figures.length + 20;
  const height = top + panelH + 10;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="11">`,
    `<rect width="${width}" height="${height}" fill="white"/>`,
    `<text x="10" y="22" font-size="15" font-weight="bold">${esc(title)}</text>`,
    `<text x="10" y="42" fill="#555">${esc(subtitle)}</text>`,
  ];
  figures.forEach((fig, f) => {
    const x0 = 10 + f * panelW;
    const y0 = top;
    const maxValue = Math.max(0, ...fig.bars.map((b) => (Number.isFinite(b.value.max) ? b.value.max : 0))) || 1;
    const scale = plotH / (maxValue * 1.1);
    const base = y0 + plotTop + plotH;
    parts.push(
      `<text x="${x0 + panelW / 2}" y="${y0 + 14}" text-anchor="middle" font-weight="bold">${esc(fig.title)}</text>`,
      `<text x="${x0 + panelW / 2}" y="${y0 + 28}" text-anchor="middle" fill="#555">${esc(fig.unit)}${fig.lowerIsBetter ? " (lower is better)" : ""}</text>`,
      `<line x1="${x0 + 10}" y1="${base}" x2="${x0 + panelW - 20}" y2="${base}" stroke="#333"/>`,
    );
    const slot = (panelW - 30) / Math.max(1, fig.bars.length);
    fig.bars.forEach((bar, b) => {
      const bx = x0 + 15 + b * slot + slot * 0.15;
      const bw = slot * 0.7;
      const v = Number.isFinite(bar.value.median) ? bar.value.median : 0;
      const h = v * scale;
      parts.push(
        `<rect x="${bx.toFixed(1)}" y="${(base - h).toFixed(1)}" width="${bw.toFixed(1)}" height="${h.toFixed(1)}" fill="${MODE_COLOURS[bar.mode] ?? "#999"}"/>`,
      );
      if (bar.value.n > 1 && Number.isFinite(bar.value.min)) {
        const cx = bx + bw / 2;
        const yMin = base - bar.value.min * scale;
        const yMax = base - bar.value.max * scale;
        parts.push(
          `<line x1="${cx.toFixed(1)}" y1="${yMin.toFixed(1)}" x2="${cx.toFixed(1)}" y2="${yMax.toFixed(1)}" stroke="#222"/>`,
          `<line x1="${(cx - 5).toFixed(1)}" y1="${yMax.toFixed(1)}" x2="${(cx + 5).toFixed(1)}" y2="${yMax.toFixed(1)}" stroke="#222"/>`,
          `<line x1="${(cx - 5).toFixed(1)}" y1="${yMin.toFixed(1)}" x2="${(cx + 5).toFixed(1)}" y2="${yMin.toFixed(1)}" stroke="#222"/>`,
        );
      }
      const labelY = Math.min(base - h, base - (Number.isFinite(bar.value.max) ? bar.value.max : v) * scale) - 4;
      parts.push(
        `<text x="${(bx + bw / 2).toFixed(1)}" y="${labelY.toFixed(1)}" text-anchor="middle">${esc(short(bar.value.median))}</text>`,
        `<text x="${(bx + bw / 2).toFixed(1)}" y="${base + 14}" text-anchor="middle">${esc(bar.mode)}</text>`,
      );
      if (bar.note !== undefined) {
        parts.push(
          `<text x="${(bx + bw / 2).toFixed(1)}" y="${base + 28}" text-anchor="middle" fill="#b35400">${esc(bar.note)}</text>`,
        );
      }
    });
  });
  parts.push("</svg>");
  return `${parts.join("\n")}\n`;
}

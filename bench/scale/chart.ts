// The scale bench's SVG: one panel per cost, peers on a log axis, one line
// per registry mode, so "does it grow with the cluster?" is the slope.

import type { ScalePoint } from "./run.js";

export interface ScalePanel {
  readonly title: string;
  readonly unit: string;
  readonly value: (p: ScalePoint) => number | null;
}

const COLOURS: Record<string, string> = { file: "#e67e22", etcd: "#2e86de" };

function esc(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

function short(x: number): string {
  if (x >= 100) return x.toFixed(0);
  if (x >= 10) return x.toFixed(1);
  return x.toFixed(2);
}

export function scaleChartSvg(
  title: string,
  subtitle: string,
  panels: readonly ScalePanel[],
  points: readonly ScalePoint[],
): string {
  const panelW = 250;
  const plotW = 190;
  const plotH = 170;
  const top = 60;
  const width = panelW * panels.length + 20;
  const height = top + 260;
  const peers = [...new Set(points.map((p) => p.peers))].sort((a, b) => a - b);
  const modes = [...new Set(points.map((p) => p.mode))];
  const lo = Math.log10(Math.min(...peers));
  const hi = Math.log10(Math.max(...peers));
  const xOf = (n: number) => (hi === lo ? plotW / 2 : ((Math.log10(n) - lo) / (hi - lo)) * plotW);
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="11">`,
    `<rect width="${width}" height="${height}" fill="white"/>`,
    `<text x="10" y="22" font-size="15" font-weight="bold">${esc(title)}</text>`,
    `<text x="10" y="42" fill="#555">${esc(subtitle)}</text>`,
  ];
  panels.forEach((panel, f) => {
    const x0 = 10 + f * panelW + 40;
    const base = top + 40 + plotH;
    const values = points.map(panel.value).filter((v): v is number => v !== null && Number.isFinite(v));
    const max = Math.max(0, ...values) || 1;
    const yOf = (v: number) => base - (v / (max * 1.1)) * plotH;
    parts.push(
      `<text x="${x0 + plotW / 2}" y="${top + 14}" text-anchor="middle" font-weight="bold">${esc(panel.title)}</text>`,
      `<text x="${x0 + plotW / 2}" y="${top + 28}" text-anchor="middle" fill="#555">${esc(panel.unit)}</text>`,
      `<line x1="${x0}" y1="${base}" x2="${x0 + plotW}" y2="${base}" stroke="#333"/>`,
      `<line x1="${x0}" y1="${base}" x2="${x0}" y2="${base - plotH}" stroke="#333"/>`,
      ...peers.map(
        (n) =>
          `<text x="${(x0 + xOf(n)).toFixed(1)}" y="${base + 14}" text-anchor="middle">${n.toLocaleString("en")}</text>`,
      ),
    );
    modes.forEach((mode, m) => {
      const pts = points
        .filter((p) => p.mode === mode)
        .map((p) => [p.peers, panel.value(p)] as const)
        .filter((pv): pv is readonly [number, number] => pv[1] !== null && Number.isFinite(pv[1]))
        .sort((a, b) => a[0] - b[0]);
      const colour = COLOURS[mode] ?? "#999";
      const xy = pts.map(([n, v]) => `${(x0 + xOf(n)).toFixed(1)},${yOf(v).toFixed(1)}`);
      if (xy.length > 1)
        parts.push(`<polyline points="${xy.join(" ")}" fill="none" stroke="${colour}" stroke-width="2"/>`);
      for (const [n, v] of pts) {
        const x = x0 + xOf(n);
        const y = yOf(v);
        parts.push(
          `<circle cx="${x.toFixed(1)}" cy="${y.toFixed(1)}" r="3" fill="${colour}"/>`,
          `<text x="${x.toFixed(1)}" y="${(y - 6).toFixed(1)}" text-anchor="middle" fill="${colour}">${esc(short(v))}</text>`,
        );
      }
      parts.push(`<text x="${x0 + 8}" y="${base + 30 + m * 13}" fill="${colour}">— ${esc(mode)} registry</text>`);
    });
  });
  parts.push("</svg>");
  return `${parts.join("\n")}\n`;
}

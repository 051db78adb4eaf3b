// Reads weftd's /metrics inside a host namespace (weftd listens on 127.0.0.1 there,
// which the root namespace cannot reach) and condenses it to one line per host.

import { type LabHost, nsRun } from "./topology.js";

export const METRICS_PORT = 9103;

/** Prometheus text → series name with labels → value. */
export type Samples = Map<string, number>;

export async function scrape(ns: string, port = METRICS_PORT): Promise<Samples> {
  const text = await nsRun(
    ns,
    process.execPath,
    [
      "-e",
      `fetch("http://127.0.0.1:${port}/metrics").then(r => r.text()).then(t => process.stdout.write(t), e => { process.stderr.write(String(e)); process.exit(1); })`,
    ],
    { timeoutMs: 10_000 },
  );
  const samples: Samples = new Map();
  for (const line of text.split("\n")) {
    const m = /^([a-z_]+(?:\{[^}]*\})?) (\S+)$/.exec(line);
    if (m) samples.set(m[1] as string, Number(m[2]));
  }
  return samples;
}

/** Sum of every series of `name` whose labels include all of `labels` (`k="v"` strings). */
export function sum(samples: Samples, name: string, ...labels: string[]): number {
  let total = 0;
  for (const [series, value] of samples) {
    if (series !== name && !series.startsWith(`${name}{`)) continue;
    if (labels.every((l) => series.includes(l))) total += value;
  }
  return total;
}

function human(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

/** "tx 1234 pkts 1.2 MiB  rx …  drops 0  leases 2", with the drop reasons that are not zero. */
export function formatCounters(samples: Samples): string {
  const dir = (d: string) =>
    `${d} ${sum(samples, "weft_packets_total", `direction="${d}"`, `stage="out"`)} pkts ` +
    human(sum(samples, "weft_bytes_total", `direction="${d}"`, `stage="out"`));
  const drops = [...samples]
    .filter(([series, value]) => series.startsWith("weft_drops_total{") && value > 0)
    .map(([series, value]) => `${/reason="([^"]+)"/.exec(series)?.[1]}=${value}`);
  const dropText = drops.length === 0 ? "drops 0" : `drops ${drops.join(",")}`;
  return `${dir("tx")}  ${dir("rx")}  ${dropText}  peer leases ${sum(samples, "weft_leases")}`;
}

/** Waits until weftd on each of `hosts` has the other hosts' leases in its table (the watches have caught up). */
export async function waitForPeers(
  hosts: readonly LabHost[],
  port = METRICS_PORT,
  timeoutMs = 15_000,
): Promise<Map<LabHost, Samples>> {
  const want = hosts.length - 1;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const samples = await Promise.all(hosts.map((h) => scrape(h.ns, port).catch(() => new Map() as Samples)));
    const behind = hosts.filter((_, i) => sum(samples[i] as Samples, "weft_leases") !== want);
    if (behind.length === 0) return new Map(hosts.map((h, i) => [h, samples[i] as Samples]));
    if (Date.now() > deadline) {
      throw new Error(
        `weftd on ${behind.map((h) => h.ns).join(", ")} did not see ${want} peer leases in ${timeoutMs} ms`,
      );
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

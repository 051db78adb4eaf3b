// Reading counters around a workload: where datagrams were dropped, from the
// kernel's view of each namespace (/proc/net/snmp, per-interface rx/tx
// dropped) and from weft's own per-reason counters (its /metrics, scraped
// with lab/metrics.ts). CPU and memory of the daemons come from lab/proc.ts.

import { scrape } from "../../lab/metrics.js";
import { type LabHost, nsRun, sh } from "../../lab/topology.js";
import { type Env, METRICS_PORT } from "./modes.js";

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

/** /proc/net/snmp of a namespace. */
export async function snmpOf(ns: string): Promise<Map<string, number>> {
  return parseSnmp(await nsRun(ns, "cat", ["/proc/net/snmp"]));
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
  const snmp = await snmpOf(ns);
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
  for (const [series, value] of await scrape(h.ns, METRICS_PORT)) {
    const m = /^weft_drops_total\{direction="(\w+)",reason="(\w+)"\}$/.exec(series);
    if (m !== null) out.set(`${label} weft ${m[1]} ${m[2]}`, value);
  }
  return out;
}

/** Every drop counter of the topology, labelled by namespace (p1, h1, h2, p2). */
export async function allDrops(env: Env): Promise<Map<string, number>> {
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
export function grew(before: Map<string, number>, after: Map<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of after) {
    const d = v - (before.get(k) ?? 0);
    if (d > 0) out[k] = d;
  }
  return out;
}

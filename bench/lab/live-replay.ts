// `bench lab --replay trace.pcap`: a capture's IPv4 packets, rewritten to go
// from pod p1 to pod p2, sent from p1 through the mode's dataplane with a raw
// socket (injector.py beside this file), counting what reaches p2.

import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { internetChecksum, updateChecksum16 } from "../../dataplane/wire/checksum.js";
import { Ipv4Check, Ipv4View, PROTO_TCP, PROTO_UDP } from "../../dataplane/wire/ipv4.js";
import { TCP_CHECKSUM, writeU16 } from "../../dataplane/wire/tcp.js";
import { UDP_CHECKSUM, UdpView } from "../../dataplane/wire/udp.js";
import { readCapture } from "../../fixtures/pcap.js";
import { parseIpv4 } from "../../net/addr.js";
import {
  fmtRatio,
  fmtSummary,
  formatTable,
  jsonNumber,
  type MachineInfo,
  machineLine,
  Progress,
  ratio,
  type Summary,
  summarize,
  writeResult,
} from "../report.js";
import { nsSpawn, sleep } from "./children.js";
import { type Env, type Mode, withMode } from "./modes.js";
import { allDrops, grew, snmpOf } from "./probes.js";
import type { LabOptions } from "./workloads.js";

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
  const ip = new Ipv4View();
  const udp = new UdpView();
  let snapped = 0;
  let oversize = 0;
  for (const p of ipv4) {
    // A capture's IPv4 records have version 4 (fixtures/pcap.ts), so only lengths fail here.
    if (ip.check(p, 0, p.length) !== Ipv4Check.Ok) {
      snapped++;
      continue;
    }
    const total = ip.totalLength;
    if (total > mtu) {
      oversize++;
      continue;
    }
    const q = p.slice(0, total);
    ip.check(q, 0, total);
    const oldSrc = ip.src;
    const oldDst = ip.dst;
    ip.src = src;
    ip.dst = dst;
    ip.ttl = 64;
    ip.updateHeaderChecksum();
    const proto = ip.protocol;
    const l4 = ip.headerLength;
    const l4len = total - l4;
    const csumAt = proto === PROTO_TCP ? l4 + TCP_CHECKSUM : proto === PROTO_UDP ? l4 + UDP_CHECKSUM : -1;
    if (csumAt >= 0 && ip.fragmentOffset === 0 && csumAt + 2 <= total) {
      const old = (q[csumAt] << 8) | q[csumAt + 1];
      if (proto === PROTO_UDP && old === 0) {
        // No checksum: nothing to fix.
      } else if (!ip.moreFragments) {
        const pseudo = ip.pseudoHeaderSum(l4len);
        if (proto === PROTO_UDP) udp.at(q, l4).updateChecksum(pseudo, l4len);
        else {
          writeU16(q, csumAt, 0);
          writeU16(q, csumAt, internetChecksum(q, l4, l4len, pseudo));
        }
      } else {
        let sum = old;
        sum = updateChecksum16(sum, oldSrc >>> 16, src >>> 16);
        sum = updateChecksum16(sum, oldSrc & 0xffff, src & 0xffff);
        sum = updateChecksum16(sum, oldDst >>> 16, dst >>> 16);
        sum = updateChecksum16(sum, oldDst & 0xffff, dst & 0xffff);
        writeU16(q, csumAt, sum);
      }
    }
    packets.push(q);
  }
  return { packets, snapped, oversize };
}

/** [u16 length][packet]… : what the injector reads. */
function packetsFile(packets: readonly Uint8Array[], loops: number): Uint8Array {
  let size = 0;
  for (const p of packets) size += 2 + p.length;
  const out = new Uint8Array(size * loops);
  let o = 0;
  for (let l = 0; l < loops; l++) {
    for (const p of packets) {
      writeU16(out, o, p.length);
      out.set(p, o + 2);
      o += 2 + p.length;
    }
  }
  return out;
}

const INJECTOR = fileURLToPath(new URL("../../../bench/lab/injector.py", import.meta.url));

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
  const inReceives = async () => (await snmpOf(env.p2.ns)).get("Ip.InReceives") ?? 0;
  const dropsBefore = await allDrops(env);
  const before = await inReceives();
  const r = await nsSpawn(env.p1.ns, "python3", [INJECTOR, file, env.p2.ip], 600_000);
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

/** The replay run: every mode per repetition, a table of what arrived, JSON. */
export async function replayRun(
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

// `bench lab`: the BENCH.md topology built from scratch per mode and per
// repetition, in namespaces named <prefix>-* (wbench-* by default; nothing in
// the root namespace). Repetitions interleave the modes so drift hits all of
// them alike; ratios are weft ÷ vxlan (and weft ÷ flannel with that mode).
//
//   main.ts         flags, the lock, the three runs (workloads, --replay, --hold)
//   modes.ts        bringing each mode up (flannel-proxy.c: the flannel mode's C proxy)
//   workloads.ts    TCP, UDP 1400/64 B, RTT, daemon CPU and memory
//   probes.ts       drop counters around a workload
//   live-replay.ts  --replay: a capture through the dataplane (injector.py sends it)
//   figures.ts      JSON and SVG chart;  table.ts: the table for people
//   truth.ts        the machine (hypervisor, syscall cost via syscall-cost.c, halt polling) and
//                   the daemons at rest (idle CPU, memory, syscalls per round trip)
//   children.ts     every process we start;  cleanup.ts: taking it all down

import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { availableParallelism, tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { positiveInt } from "../replay.js";
import { type MachineInfo, machineInfo, machineLine, Progress, RESULTS_DIR, writeResult } from "../report.js";
import { DEFAULT_PREFIX, live } from "./children.js";
import { claimRun, cleanup, cleanupStale, releaseLock, takeLock } from "./cleanup.js";
import { chart, labJson } from "./figures.js";
import { replayRun } from "./live-replay.js";
import {
  DEFAULT_MODES,
  daemonPids,
  hasDaemon,
  type Mode,
  parseMode,
  UDP_MTU,
  VXLAN_MTU,
  weftPids,
  withMode,
} from "./modes.js";
import { dropLines, labTable, targetLines, tcpRepLines } from "./table.js";
import {
  type DaemonTruth,
  daemonTruth,
  daemonTruthLines,
  type MachineTruth,
  machineTruth,
  truthLine,
} from "./truth.js";
import { type LabOptions, type RepFigures, RTT_WARMUP_S, runWorkloads } from "./workloads.js";

const USAGE = `usage: npm run bench -- lab [options]   (root: builds network namespaces wbench-*, or --prefix P: P-*)
  --modes LIST       from direct,vxlan,weft,flannel (default direct,vxlan,weft); flannel is a C proxy built the way
                     flannel's udp backend is (bench/lab/flannel-proxy.c: one packet per system call), compiled with cc
  --reps N           repetitions, modes interleaved (default 3)
  --duration S       TCP seconds (default 10)
  --udp-duration S   seconds per UDP run (default 5)
  --pings N          request-response pings (ping -A, after 1 s unmeasured) for RTT (default 10000)
  --sparse-pings N   pings 10 ms apart for the idle-path RTT (default 500)
  --quick            1 repetition, TCP 2 s, UDP 1 s, 1000 + 50 pings, idle 5 s, 500 pings counted
  --idle-seconds S   after the first repetition's workloads, the daemons' CPU while idle for S s (default 60; 0: skip)
  --strace-pings N   then syscalls per round trip on both daemons during ping -A -c N, counted as they run
                     (perf stat; linux-perf) and then by call under strace -c -f (default 2000; 0: skip)
  --pin-hosts        TCP with each host on a vCPU of its own (p1's iperf3 and h1's daemon on CPU 0, p2's and h2's on
                     CPU 1, every mode alike) instead of wherever the scheduler puts them (docs/latency.md note 9)
  --weftd-args=ARGS  extra weftd flags for the weft mode, space-separated (e.g. --weftd-args="--busy-poll-us=50 --no-offload")
  --replay FILE      instead of the workloads: inject FILE's IPv4 packets from p1 (rewritten to p1→p2), count arrivals at p2
  --replay-loops N   send the capture N times (default 1)
  --hold MODE        bring MODE up alone and keep it until Ctrl-C (for your own measurements), then clean up
  --cleanup          remove the prefix's namespaces (and their processes) left by a killed run, then exit
  --prefix P         namespace prefix, [a-z0-9]{1,8} (default wbench): runs with different prefixes may run side by side
  --out-dir DIR      where JSON and SVG go (default ${RESULTS_DIR})`;

export async function runLab(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      modes: { type: "string" },
      reps: { type: "string" },
      duration: { type: "string" },
      "udp-duration": { type: "string" },
      pings: { type: "string" },
      "sparse-pings": { type: "string" },
      quick: { type: "boolean", default: false },
      "idle-seconds": { type: "string" },
      "strace-pings": { type: "string" },
      "weftd-args": { type: "string" },
      "pin-hosts": { type: "boolean", default: false },
      replay: { type: "string" },
      "replay-loops": { type: "string" },
      hold: { type: "string" },
      cleanup: { type: "boolean", default: false },
      "out-dir": { type: "string" },
      prefix: { type: "string" },
      help: { type: "boolean", default: false },
    },
  });
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  live.prefix = values.prefix ?? DEFAULT_PREFIX;
  if (!/^[a-z0-9]{1,8}$/.test(live.prefix))
    throw new Error(`--prefix: ${JSON.stringify(live.prefix)} must be 1 to 8 of a-z and 0-9`);
  if (process.getuid?.() !== 0) throw new Error("bench lab needs root (it creates network namespaces)");
  if (values.cleanup) {
    takeLock();
    try {
      const removed = await cleanupStale();
      process.stdout.write(removed.length === 0 ? "nothing to clean up\n" : `removed ${removed.join(", ")}\n`);
    } finally {
      releaseLock();
    }
    return 0;
  }
  const quick = values.quick === true;
  const modes = (values.modes ?? DEFAULT_MODES.join(",")).split(",").map((m) => parseMode(m.trim(), "--modes"));
  const o: LabOptions = {
    reps: positiveInt(values.reps, "--reps", quick ? 1 : 3),
    tcpSeconds: positiveInt(values.duration, "--duration", quick ? 2 : 10),
    udpSeconds: positiveInt(values["udp-duration"], "--udp-duration", quick ? 1 : 5),
    pings: positiveInt(values.pings, "--pings", quick ? 1000 : 10000),
    sparsePings: positiveInt(values["sparse-pings"], "--sparse-pings", quick ? 50 : 500),
    idleSeconds: countFlag(values["idle-seconds"], "--idle-seconds", quick ? 5 : 60),
    stracePings: countFlag(values["strace-pings"], "--strace-pings", quick ? 500 : 2000),
    modes,
    weftdArgs: (values["weftd-args"] ?? "").split(" ").filter((a) => a !== ""),
    pinHosts: values["pin-hosts"] === true,
  };
  if (o.pinHosts && availableParallelism() < 2)
    throw new Error(`--pin-hosts: needs 2 CPUs, one per host; this machine has ${availableParallelism()}`);
  for (const a of o.weftdArgs) {
    if (!a.startsWith("-")) throw new Error(`--weftd-args: ${JSON.stringify(a)} is not a flag`);
  }
  const holdMode = values.hold === undefined ? undefined : parseMode(values.hold, "--hold");
  const machine = machineInfo();
  await claimRun(
    "bench lab",
    `npm run bench -- lab --cleanup${live.prefix === DEFAULT_PREFIX ? "" : ` --prefix ${live.prefix}`}`,
  );

  try {
    if (holdMode !== undefined) return await holdRun(holdMode, o);
    if (values.replay !== undefined)
      return await replayRun(
        values.replay,
        positiveInt(values["replay-loops"], "--replay-loops", 1),
        o,
        machine,
        values["out-dir"],
      );
    return await workloadRun(o, machine, values["out-dir"]);
  } finally {
    await cleanup();
  }
}

/** Brings one mode up and keeps it until a signal (whose handler cleans up). */
async function holdRun(mode: Mode, o: LabOptions): Promise<number> {
  await withMode(
    mode,
    async (env) => {
      const lines = [
        `bench lab: ${mode} is up; Ctrl-C removes it`,
        `  pod p1 ${env.p1.ip} in ${env.p1.ns}   pod p2 ${env.p2.ip} in ${env.p2.ns}   mtu ${env.mtu}`,
        `  hosts ${env.h1.ns} (${env.h1.underlayIp}) and ${env.h2.ns} (${env.h2.underlayIp})`,
        `  e.g. ip netns exec ${env.p1.ns} ping -A -c 10000 ${env.p2.ip}`,
      ];
      if (mode === "weft") lines.push(`  weftd pids ${weftPids(env).join(" ")}`);
      if (mode === "flannel") lines.push(`  proxy pids ${daemonPids(env).join(" ")}`);
      process.stdout.write(`${lines.join("\n")}\n`);
      // Until the signal handler cleans up and exits.
      await new Promise(() => setInterval(() => {}, 60_000));
    },
    o.weftdArgs,
  );
  return 0;
}

/** A count that may be 0 (0 turns the measurement off). */
function countFlag(text: string | undefined, flag: string, def: number): number {
  if (text === undefined) return def;
  const n = Number(text);
  if (!Number.isInteger(n) || n < 0) throw new Error(`${flag} ${JSON.stringify(text)}: expected a whole number ≥ 0`);
  return n;
}

async function workloadRun(o: LabOptions, machine: MachineInfo, outDir: string | undefined): Promise<number> {
  const daemonModes = o.modes.filter(hasDaemon);
  // Per repetition and mode: bring-up and five workloads, then the rest before memory is read (daemon modes).
  const progress = new Progress(o.reps * (o.modes.length * 6 + daemonModes.length) + daemonModes.length + 1);
  progress.step("the machine: hypervisor, syscall cost, halt polling");
  const scratch = mkdtempSync(join(tmpdir(), "weft-bench-truth-"));
  let truth: MachineTruth;
  try {
    truth = machineTruth(scratch);
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
  const reps = new Map<Mode, RepFigures[]>(o.modes.map((m) => [m, []]));
  const daemons = new Map<Mode, DaemonTruth>();
  for (let rep = 1; rep <= o.reps; rep++) {
    for (const mode of o.modes) {
      const tag = `rep ${rep}/${o.reps} ${mode}`;
      progress.step(`${tag}: bring-up`);
      const fig = await withMode(
        mode,
        async (env) => {
          const figures = await runWorkloads(env, o, progress, tag);
          if (rep === 1 && hasDaemon(mode)) {
            progress.step(`${tag}: idle ${o.idleSeconds} s, then ${o.stracePings} pings counted`);
            daemons.set(mode, await daemonTruth(env, o));
          }
          return figures;
        },
        o.weftdArgs,
      );
      reps.get(mode)?.push(fig);
    }
  }
  progress.finish();
  const options = {
    reps: o.reps,
    tcp_seconds: o.tcpSeconds,
    udp_seconds: o.udpSeconds,
    pings: o.pings,
    sparse_pings: o.sparsePings,
    idle_seconds: o.idleSeconds,
    strace_pings: o.stracePings,
    modes: o.modes,
    weftd_args: o.weftdArgs,
    pin_hosts: o.pinHosts,
    topology: "BENCH.md: p1 ─ h1 ═ underlay veth 198.18.0.0/24 ═ h2 ─ p2, each mode from scratch per repetition",
    pod_mtu: { direct: 1500, vxlan: VXLAN_MTU, weft: "from subnet.env (1472)", flannel: UDP_MTU },
  };
  const { json, summaries } = labJson(machine, options, reps);
  const record = { ...json, machine_truth: truth, daemons: Object.fromEntries(daemons) };
  const path = writeResult("lab", record, { dir: outDir });
  const svgPath = path.replace(/\.json$/, ".svg");
  writeFileSync(svgPath, chart(summaries, json.ratios, machine));
  const weftRss = summaries.get("weft")?.get("rss_mb")?.median;
  const out = [
    `bench lab — ${machineLine(machine)}`,
    truthLine(truth),
    `${o.reps} repetition(s) per mode, modes interleaved, each brought up from scratch; median [min–max]; weft ÷ vxlan: ratio of the medians [per-repetition ratios, min–max]`,
    `TCP: iperf3 single stream ${o.tcpSeconds} s, receiver goodput${o.pinHosts ? ", each host's iperf3 and daemon on a vCPU of its own" : ""}. UDP: batching generator (sendmmsg) at max rate ${o.udpSeconds} s, payload 1400 B (1428 B IP) and 64 B (92 B IP), delivered datagrams/s at the sink. RTT: ${o.pings} request-response pings (ping -A, after ${RTT_WARMUP_S} s unmeasured), then ${o.sparsePings} pings 10 ms apart.`,
    "CPU s/GB: user+sys of both weftd (flannel: both proxies) during the TCP run ÷ GB received; RSS: VmHWM of the larger one",
    "",
    labTable(summaries, [
      { label: "weft ÷ vxlan", ratios: json.ratios, ranges: json.ratio_ranges },
      ...(summaries.has("flannel") && summaries.has("weft")
        ? [{ label: "weft ÷ flannel", ratios: json.ratios_vs_flannel, ranges: json.ratio_ranges_vs_flannel }]
        : []),
    ]),
    "",
    ...targetLines(json.ratios, weftRss),
    "",
    ...tcpRepLines(reps),
    "",
    ...dropLines(reps),
    "",
    ...(daemons.size > 0
      ? ["the daemons (first repetition, after its workloads):", ...daemonTruthLines(daemons), ""]
      : []),
    `JSON: ${path}`,
    `SVG:  ${svgPath}`,
  ];
  process.stdout.write(`${out.join("\n")}\n`);
  return 0;
}

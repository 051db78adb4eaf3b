// The machine's truth, recorded with every lab run because every latency
// figure depends on it (BENCH.md "Record the machine's truth"):
//
//   machine   the hypervisor, what one trivial system call costs here, the
//             halt-polling settings (how long an idle vCPU spins before it
//             halts, which decides what a wake-up costs)
//   daemons   per mode with a dataplane process: CPU while idle, kernel
//             entries per request-response round trip on both daemons
//             during ping -A (counted as they run, by perf stat on the
//             raw_syscalls tracepoint; then again under strace -c, which
//             names every call but slows each one ~20×, so busy-poll spins
//             show as far fewer steps), memory at rest (RSS, anonymous, PSS)

import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { present } from "../../lab/packages.js";
import { cpuSeconds, cpuSecondsWithChildren, type Memory, memoryOf } from "../../lab/proc.js";
import { fmt, jsonNumber, median } from "../report.js";
import { nsSpawn, sleep, track } from "./children.js";
import { compileBenchC, daemonPids, type Env } from "./modes.js";
import { parsePingTimes } from "./workloads.js";

export interface HaltPolling {
  /** /sys/module/kvm/parameters/halt_poll_ns: the host-side poll (visible when kvm is loaded here). */
  readonly kvm_halt_poll_ns: number | null;
  /** /sys/module/haltpoll/parameters/*: the guest's cpuidle-haltpoll governor settings. */
  readonly guest_haltpoll: Record<string, string> | null;
  readonly cpuidle_driver: string | null;
  readonly cpuidle_governor: string | null;
}

export interface MachineTruth {
  /** "PVM", "KVM", … from the kernel's "Hypervisor detected" line; "none" on bare metal; null when unknown. */
  readonly hypervisor: string | null;
  /** Where the hypervisor name was read. */
  readonly hypervisor_source: string;
  /** CPU ns per getppid(2) through syscall(2), median of 3 runs of 1e6 calls; null without cc. */
  readonly syscall_ns: number | null;
  readonly syscall_ns_wall: number | null;
  readonly halt_polling: HaltPolling;
}

function readText(path: string): string | null {
  try {
    return readFileSync(path, "utf8").trim();
  } catch {
    return null;
  }
}

/** The hypervisor: the kernel's own boot line first, then the cpuid flag, then /sys/hypervisor. */
export function detectHypervisor(dmesg: string | null, cpuinfo: string | null, sysType: string | null) {
  const line = dmesg === null ? undefined : /Hypervisor detected: (.+)$/m.exec(dmesg)?.[1];
  if (line !== undefined) return { hypervisor: line.trim(), hypervisor_source: "dmesg" };
  if (sysType !== null && sysType !== "") return { hypervisor: sysType, hypervisor_source: "/sys/hypervisor/type" };
  const flags = cpuinfo === null ? undefined : /^flags\s*:(.*)$/m.exec(cpuinfo)?.[1];
  if (flags !== undefined) {
    return flags.split(/\s+/).includes("hypervisor")
      ? { hypervisor: "unnamed", hypervisor_source: "cpuinfo hypervisor flag (dmesg unreadable)" }
      : { hypervisor: "none", hypervisor_source: "cpuinfo (no hypervisor flag)" };
  }
  return { hypervisor: null, hypervisor_source: "nothing readable" };
}

function haltPolling(): HaltPolling {
  const dir = "/sys/module/haltpoll/parameters";
  let guest: Record<string, string> | null = null;
  if (existsSync(dir)) {
    guest = {};
    for (const name of [
      "guest_halt_poll_ns",
      "guest_halt_poll_grow",
      "guest_halt_poll_grow_start",
      "guest_halt_poll_shrink",
      "guest_halt_poll_allow_shrink",
    ]) {
      const v = readText(join(dir, name));
      if (v !== null) guest[name] = v;
    }
  }
  const kvm = readText("/sys/module/kvm/parameters/halt_poll_ns");
  const cpuidle = "/sys/devices/system/cpu/cpuidle";
  return {
    kvm_halt_poll_ns: kvm === null ? null : Number(kvm),
    guest_haltpoll: guest,
    cpuidle_driver: readText(join(cpuidle, "current_driver")),
    cpuidle_governor: readText(join(cpuidle, "current_governor")) ?? readText(join(cpuidle, "current_governor_ro")),
  };
}

/** Measures and reads it all; `dir` receives the compiled syscall timer. */
export function machineTruth(dir: string): MachineTruth {
  let dmesg: string | null = null;
  try {
    dmesg = execFileSync("dmesg", [], { encoding: "utf8", maxBuffer: 64 << 20, stdio: ["ignore", "pipe", "ignore"] });
  } catch {
    // Restricted (dmesg_restrict) or missing: the cpuid flag still says whether there is one.
  }
  const hv = detectHypervisor(dmesg, readText("/proc/cpuinfo"), readText("/sys/hypervisor/type"));
  let cpu: number | null = null;
  let wall: number | null = null;
  try {
    const binary = compileBenchC("syscall-cost", dir, "syscall cost");
    const runs = [1, 2, 3].map(() =>
      execFileSync(binary, ["1000000"], { encoding: "utf8" }).trim().split(" ").map(Number),
    );
    wall = median(runs.map((r) => r[0] as number));
    cpu = median(runs.map((r) => r[1] as number));
  } catch {
    // No compiler: the figure is reported as not measured.
  }
  return {
    ...hv,
    syscall_ns: jsonNumber(cpu, 4),
    syscall_ns_wall: jsonNumber(wall, 4),
    halt_polling: haltPolling(),
  };
}

/** One line for the top of the table. */
export function truthLine(t: MachineTruth): string {
  const hp = t.halt_polling;
  const ns = hp.guest_haltpoll?.guest_halt_poll_ns;
  // The module's parameters are there whenever it is built in; they only act when it is the cpuidle driver.
  const guest =
    ns === undefined
      ? "no guest haltpoll"
      : hp.cpuidle_driver === "haltpoll"
        ? `guest haltpoll ${ns} ns`
        : `guest haltpoll inactive (guest_halt_poll_ns ${ns} but cpuidle driver ${hp.cpuidle_driver ?? "?"})`;
  const kvm = hp.kvm_halt_poll_ns === null ? "" : `kvm halt_poll_ns ${hp.kvm_halt_poll_ns}, `;
  const sc = t.syscall_ns === null ? "not measured (no cc)" : `${fmt(t.syscall_ns / 1000, 2)} µs CPU`;
  return `machine: hypervisor ${t.hypervisor ?? "unknown"} (${t.hypervisor_source}); one getppid syscall ${sc}; halt polling: ${kvm}${guest}; cpuidle governor ${hp.cpuidle_governor ?? "?"}`;
}

// ---------------------------------------------------------------------------
// The daemons.

export interface StraceSummary {
  readonly total: number;
  /** Calls per syscall name. */
  readonly calls: Record<string, number>;
}

/** Parses the table `strace -c` prints: per-syscall calls and the total line. */
export function parseStraceSummary(text: string): StraceSummary {
  const calls: Record<string, number> = {};
  let total = Number.NaN;
  for (const line of text.split("\n")) {
    const t = line.trim().split(/\s+/);
    // % time, seconds, usecs/call, calls, [errors], syscall
    if (t.length < 5 || !/^[\d.]+$/.test(t[0] as string) || !/^\d+$/.test(t[3] as string)) continue;
    const name = t[t.length - 1] as string;
    const n = Number(t[3]);
    if (name === "total") total = n;
    else calls[name] = n;
  }
  if (Number.isNaN(total)) total = Object.values(calls).reduce((a, b) => a + b, 0);
  return { total, calls };
}

export interface DaemonTruth {
  readonly idle_seconds: number;
  /** Mean over the daemons, % of one core, their children (iptables-restore) included. */
  readonly idle_cpu_pct: number | null;
  /** The same, the daemons' own threads only. */
  readonly idle_cpu_pct_own: number | null;
  /** Memory of the larger daemon at the end of the idle window. */
  readonly memory_idle: Memory | null;
  readonly strace_pings: number;
  /**
   * System calls of both daemons per request-response round trip as they run
   * (perf stat, tracepoint counters: no stop per call); null when not measured.
   */
  readonly syscalls_per_rt_live: number | null;
  /** The same by call, for the calls a dataplane makes (PERF_CALLS), per round trip. */
  readonly syscalls_per_rt_live_top: Record<string, number>;
  /** System calls of both daemons per request-response round trip under strace -c; null when not measured. */
  readonly syscalls_per_rt: number | null;
  /** The ten most frequent, per round trip. */
  readonly syscalls_per_rt_top: Record<string, number>;
  /** Why a figure is missing. */
  readonly notes: string[];
}

export interface TruthOptions {
  idleSeconds: number;
  stracePings: number;
}

function installed(command: string): boolean {
  return present(command, process.env.PATH ?? "");
}

/** The calls perf counts one by one beside the total: what a dataplane (or flannel's proxy) makes per packet. */
export const PERF_CALLS = [
  "epoll_wait",
  "epoll_pwait",
  "poll",
  "sched_yield",
  "read",
  "write",
  "readv",
  "writev",
  "recvmsg",
  "recvmmsg",
  "sendmsg",
  "sendmmsg",
  "recvfrom",
  "sendto",
  "futex",
] as const;

/**
 * Parses `perf stat -x,` output: event → count. A line is
 * count,unit,event,…; "<not counted>" and "<not supported>" are left out.
 */
export function parsePerfStatCsv(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split("\n")) {
    const f = line.split(",");
    if (f.length < 3 || !/^\d+$/.test((f[0] as string).trim())) continue;
    out.set((f[2] as string).trim(), Number(f[0]));
  }
  return out;
}

/** Runs ping -A -c `pings` from p1 to p2; resolves with the replies. */
async function pingReplies(env: Env, pings: number): Promise<number> {
  const r = await nsSpawn(
    env.p1.ns,
    "ping",
    ["-n", "-c", String(pings), "-A", "-W", "1", env.p2.ip],
    pings * 20 + 30_000,
  );
  return parsePingTimes(r.stdout).length;
}

/** Stops a tracer with SIGINT (it then writes its summary) and waits for it, SIGKILL after 10 s. */
async function stopTracer(child: ChildProcess): Promise<void> {
  const exited = new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once("exit", () => resolve());
  });
  if (child.pid !== undefined) process.kill(child.pid, "SIGINT");
  const timer = setTimeout(() => child.pid !== undefined && process.kill(child.pid, "SIGKILL"), 10_000);
  await exited;
  clearTimeout(timer);
}

/** System calls per round trip as the daemons run: perf stat's tracepoint counters on every thread of `pids`. */
async function liveSyscallsPerRoundTrip(env: Env, pings: number, pids: readonly number[]) {
  const out = join(env.lab.dir, "perf-stat.csv");
  const events = ["raw_syscalls:sys_enter", ...PERF_CALLS.map((c) => `syscalls:sys_enter_${c}`)];
  const child = track(
    spawn("perf", ["stat", "-x", ",", "-o", out, "-e", events.join(","), "-p", pids.join(",")], {
      stdio: ["ignore", "ignore", "pipe"],
    }),
  );
  let stderr = "";
  child.stderr?.setEncoding("utf8").on("data", (d: string) => {
    stderr += d;
  });
  // perf stat says nothing once attached: give it the time it takes here.
  await sleep(500);
  if (child.exitCode !== null) throw new Error(`perf stat exited with ${child.exitCode}: ${stderr.trim()}`);
  let replies = 0;
  try {
    replies = await pingReplies(env, pings);
  } finally {
    await stopTracer(child);
  }
  if (replies === 0) throw new Error(`${env.mode}: no ping replies under perf stat`);
  const counts = parsePerfStatCsv(readFileSync(out, "utf8"));
  const total = counts.get("raw_syscalls:sys_enter");
  if (total === undefined) throw new Error(`perf stat counted no raw_syscalls:sys_enter: ${stderr.trim()}`);
  const top = PERF_CALLS.map((c) => [c, (counts.get(`syscalls:sys_enter_${c}`) ?? 0) / replies] as const)
    .filter(([, v]) => v > 0)
    .sort((a, b) => b[1] - a[1])
    .map(([k, v]) => [k, jsonNumber(v, 4) as number]);
  return { perRt: total / replies, top: Object.fromEntries(top) };
}

/** Attaches strace -c -f to `pids`; resolves once every process reported attached (or after 3 s). */
async function attachStrace(pids: readonly number[], out: string): Promise<ChildProcess> {
  const args = ["-c", "-f", "-o", out, ...pids.flatMap((p) => ["-p", String(p)])];
  const child = track(spawn("strace", args, { stdio: ["ignore", "ignore", "pipe"] }));
  let stderr = "";
  child.stderr?.setEncoding("utf8").on("data", (d: string) => {
    stderr += d;
  });
  const deadline = Date.now() + 3000;
  while (Date.now() < deadline && child.exitCode === null) {
    if (pids.every((p) => stderr.includes(`Process ${p} attached`))) break;
    await sleep(50);
  }
  if (child.exitCode !== null) throw new Error(`strace exited with ${child.exitCode}: ${stderr.trim()}`);
  await sleep(200);
  return child;
}

async function syscallsPerRoundTrip(env: Env, pings: number, pids: readonly number[]) {
  const out = join(env.lab.dir, "strace.txt");
  const strace = await attachStrace(pids, out);
  let replies = 0;
  try {
    replies = await pingReplies(env, pings);
  } finally {
    await stopTracer(strace);
  }
  if (replies === 0) throw new Error(`${env.mode}: no ping replies under strace`);
  const s = parseStraceSummary(readFileSync(out, "utf8"));
  const top = Object.entries(s.calls)
    .sort((a, b) => b[1] - a[1])
    .slice(0, 10)
    .map(([k, v]) => [k, jsonNumber(v / replies, 4) as number]);
  return { perRt: s.total / replies, top: Object.fromEntries(top) };
}

/** Idle CPU, memory at rest and syscalls per round trip of the mode's daemons. */
export async function daemonTruth(env: Env, o: TruthOptions): Promise<DaemonTruth> {
  const pids = daemonPids(env);
  const notes: string[] = [];
  let idle: number | null = null;
  let idleOwn: number | null = null;
  if (o.idleSeconds > 0) {
    // Let the last workload's queues drain and timers settle before the window opens.
    await sleep(2000);
    const all0 = pids.map(cpuSecondsWithChildren);
    const own0 = pids.map(cpuSeconds);
    const t0 = performance.now();
    await sleep(o.idleSeconds * 1000);
    const seconds = (performance.now() - t0) / 1000;
    const all1 = pids.map(cpuSecondsWithChildren);
    const own1 = pids.map(cpuSeconds);
    const pct = (a: number[], b: number[]) =>
      (100 * b.reduce((s, v, i) => s + v - (a[i] as number), 0)) / seconds / pids.length;
    idle = pct(all0, all1);
    idleOwn = pct(own0, own1);
  }
  const mems = pids.map(memoryOf);
  const memory = mems.reduce((a, m) => (m.rss_mb > a.rss_mb ? m : a));
  let perRt: number | null = null;
  let top: Record<string, number> = {};
  let livePerRt: number | null = null;
  let liveTop: Record<string, number> = {};
  if (o.stracePings > 0) {
    if (!installed("perf"))
      notes.push("perf is not installed (apt-get install linux-perf): syscalls per round trip as run not measured");
    else {
      try {
        const r = await liveSyscallsPerRoundTrip(env, o.stracePings, pids);
        livePerRt = r.perRt;
        liveTop = r.top;
      } catch (e) {
        // A kernel without tracepoints or perf_event_paranoid in the way: the strace figure still follows.
        notes.push(
          `perf stat failed (${(e as Error).message.split("\n")[0]}): syscalls per round trip as run not measured`,
        );
      }
    }
    if (!installed("strace"))
      notes.push("strace is not installed (apt-get install strace): syscalls per round trip not measured");
    else {
      const r = await syscallsPerRoundTrip(env, o.stracePings, pids);
      perRt = r.perRt;
      top = r.top;
    }
  }
  return {
    idle_seconds: o.idleSeconds,
    idle_cpu_pct: jsonNumber(idle, 4),
    idle_cpu_pct_own: jsonNumber(idleOwn, 4),
    memory_idle: memory,
    strace_pings: o.stracePings,
    syscalls_per_rt_live: jsonNumber(livePerRt, 4),
    syscalls_per_rt_live_top: liveTop,
    syscalls_per_rt: jsonNumber(perRt, 4),
    syscalls_per_rt_top: top,
    notes,
  };
}

/** One line per daemon mode under the table. */
export function daemonTruthLines(truths: ReadonlyMap<string, DaemonTruth>): string[] {
  const out: string[] = [];
  for (const [mode, t] of truths) {
    const idle =
      t.idle_cpu_pct === null
        ? "idle CPU not measured"
        : `idle ${t.idle_seconds} s: ${fmt(t.idle_cpu_pct, 2)} % of a core per daemon (own threads ${fmt(t.idle_cpu_pct_own, 2)} %, the rest its children)`;
    const m = t.memory_idle;
    const mem =
      m === null ? "" : `; at rest RSS ${fmt(m.rss_mb, 1)} / anon ${fmt(m.anon_mb, 1)} / PSS ${fmt(m.pss_mb, 1)} MiB`;
    const top = (calls: Record<string, number>) =>
      Object.entries(calls)
        .slice(0, 5)
        .map(([k, v]) => `${k} ${fmt(v, 1)}`)
        .join(", ");
    const live =
      t.syscalls_per_rt_live === null
        ? []
        : [
            `  ${mode}: syscalls per ping -A round trip, both daemons, as run (perf stat, ${t.strace_pings} pings): ${fmt(t.syscalls_per_rt_live, 1)} (${top(t.syscalls_per_rt_live_top)})`,
          ];
    const sc =
      t.syscalls_per_rt === null
        ? "syscalls per round trip under strace not measured"
        : `syscalls per ping -A round trip, both daemons, under strace -c -f (each call slowed, so spins are short; ${t.strace_pings} pings): ${fmt(t.syscalls_per_rt, 1)} (${top(t.syscalls_per_rt_top)})`;
    out.push(`  ${mode}: ${idle}${mem}`, ...live, `  ${mode}: ${sc}`, ...t.notes.map((n) => `  ${mode}: ${n}`));
  }
  return out;
}

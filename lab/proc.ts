// What /proc says about a process: state, parent, CPU time and memory. One
// reader for the lab's teardown, the lab bench and the scale bench, so that
// every figure of "CPU" or "RSS" means the same field everywhere.

import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";

/** Clock ticks per second of /proc/<pid>/stat's times (getconf CLK_TCK; 100 on every Linux we know). */
export const CLK_TCK = (() => {
  try {
    return Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
  } catch {
    return 100;
  }
})();

/**
 * The fields of /proc/<pid>/stat after the command name, so fields[0] is
 * field 3 (state) in proc(5)'s numbering; null when the process is gone.
 * The name is skipped by the last ")" because it may hold spaces and parens.
 */
export function statFields(pid: number): string[] | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  } catch {
    return null;
  }
}

/** Alive and not a zombie waiting to be reaped. */
export function alive(pid: number): boolean {
  const f = statFields(pid);
  return f !== null && f[0] !== "Z";
}

/** The parent's PID, or null. */
export function parentPid(pid: number): number | null {
  const f = statFields(pid);
  return f === null ? null : Number(f[1]);
}

/** utime + stime of a process, seconds (fields 14 and 15). Throws when it is gone. */
export function cpuSeconds(pid: number): number {
  const f = statFields(pid);
  if (f === null) throw new Error(`process ${pid} is gone`);
  return (Number(f[11]) + Number(f[12])) / CLK_TCK;
}

/** utime of a process (field 14), seconds; NaN when it is gone. */
export function userSeconds(pid: number): number {
  const f = statFields(pid);
  return f === null ? Number.NaN : Number(f[11]) / CLK_TCK;
}

/** The whole machine's time in user space (user + nice of /proc/stat's cpu line), CPU seconds. */
export function machineUserSeconds(): number {
  const cpu = readFileSync("/proc/stat", "utf8").split("\n", 1)[0]?.trim().split(/\s+/) ?? [];
  return (Number(cpu[1]) + Number(cpu[2])) / CLK_TCK;
}

/** utime + stime of a process and its children that were waited for (fields 14–17), seconds. */
export function cpuSecondsWithChildren(pid: number): number {
  const f = statFields(pid);
  if (f === null) throw new Error(`process ${pid} is gone`);
  return (Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) / CLK_TCK;
}

/** A "Name:   123 kB" field of /proc/<pid>/status or smaps_rollup, MiB; NaN when absent. */
export function kbField(text: string, name: string): number {
  const kb = new RegExp(`^${name}:\\s+(\\d+)\\s+kB`, "m").exec(text)?.[1];
  return kb === undefined ? Number.NaN : Number(kb) / 1024;
}

/** Peak resident set (VmHWM), MiB. */
export function peakRssMb(pid: number): number {
  return kbField(readFileSync(`/proc/${pid}/status`, "utf8"), "VmHWM");
}

export interface Memory {
  /** Resident set now (VmRSS), MiB. */
  readonly rss_mb: number;
  /** Peak resident set (VmHWM), MiB. */
  readonly peak_rss_mb: number;
  /** Anonymous resident memory (RssAnon): the heap and stacks, what the process itself costs. */
  readonly anon_mb: number;
  /** Proportional set size (smaps_rollup Pss): shared pages (the node binary) divided among their users. */
  readonly pss_mb: number;
}

/** Memory of a process now, MiB; Pss is NaN where smaps_rollup is missing (kernels before 4.14). */
export function memoryOf(pid: number): Memory {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  let pss = Number.NaN;
  try {
    pss = kbField(readFileSync(`/proc/${pid}/smaps_rollup`, "utf8"), "Pss");
  } catch {
    // No smaps_rollup here.
  }
  return {
    rss_mb: kbField(status, "VmRSS"),
    peak_rss_mb: kbField(status, "VmHWM"),
    anon_mb: kbField(status, "RssAnon"),
    pss_mb: pss,
  };
}

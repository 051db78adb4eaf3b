// Everything a bench lab run starts, so a signal or a failure can take it all
// down: the Lab of the mode being measured and every child process, each
// tracked from the moment it is spawned. Children are ended by PID only.

import { type ChildProcess, spawn } from "node:child_process";
import type { Lab } from "../../lab/topology.js";

/** Namespace prefix of the default run: wbench-h1, wbench-p1, … */
export const DEFAULT_PREFIX = "wbench";

export const live = {
  /** Names every namespace of this run (--prefix). */
  prefix: DEFAULT_PREFIX,
  lab: null as Lab | null,
  children: new Set<ChildProcess>(),
};

export function track(child: ChildProcess): ChildProcess {
  live.children.add(child);
  child.once("exit", () => live.children.delete(child));
  return child;
}

export function killChildren(): void {
  for (const c of live.children) {
    if (c.pid !== undefined && c.exitCode === null && c.signalCode === null) {
      try {
        process.kill(c.pid, "SIGKILL");
      } catch {
        // Already gone.
      }
    }
  }
}

export interface Run {
  stdout: string;
  stderr: string;
  code: number | null;
}

/** Runs a command inside a namespace as a tracked child; SIGKILL by PID after timeoutMs. */
export function nsSpawn(ns: string, cmd: string, args: readonly string[], timeoutMs: number): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = track(spawn("ip", ["netns", "exec", ns, cmd, ...args], { stdio: ["ignore", "pipe", "pipe"] }));
    let stdout = "";
    let stderr = "";
    child.stdout?.setEncoding("utf8").on("data", (d: string) => {
      stdout += d;
    });
    child.stderr?.setEncoding("utf8").on("data", (d: string) => {
      if (stderr.length < 8000) stderr += d;
    });
    const timer = setTimeout(() => {
      if (child.pid !== undefined) process.kill(child.pid, "SIGKILL");
    }, timeoutMs);
    child.once("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.once("close", (code) => {
      clearTimeout(timer);
      resolve({ stdout, stderr, code });
    });
  });
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

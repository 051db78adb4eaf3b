// The lab's CLI run as a user runs it (a child process), with the test's own
// namespace prefix and state directory, and what it may leave behind: the
// namespaces with that prefix and the live processes naming either.

import { spawnSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";

const CLI = new URL("../../lab/netns.js", import.meta.url).pathname;

/** Alive and not a zombie (a killed daemon of a kept lab waits for init to reap it). */
export function running(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch {
    return false;
  }
}

/** Output lines of a command; none when it cannot run. */
export function lines(cmd: string, args: string[]): string[] {
  return (spawnSync(cmd, args, { encoding: "utf8" }).stdout ?? "").split("\n");
}

export class LabCli {
  constructor(
    readonly prefix: string,
    readonly stateDir: string,
  ) {}

  /** node's arguments for the CLI with `args`, ours appended (for a spawn the test manages). */
  argv(...args: string[]): string[] {
    return [CLI, ...args, "--prefix", this.prefix, "--state-dir", this.stateDir];
  }

  run(...args: string[]): { code: number | null; out: string } {
    const r = spawnSync(process.execPath, this.argv(...args), { encoding: "utf8", timeout: 120_000 });
    return { code: r.status, out: r.stdout + r.stderr };
  }

  namespaces(): string[] {
    return lines("ip", ["netns", "list"])
      .map((l) => l.split(" ")[0] ?? "")
      .filter((n) => n.startsWith(`${this.prefix}-`));
  }

  /** Live processes whose command line names our state directory (weftd, etcd, the API server) or namespaces. */
  processes(): string[] {
    const found: string[] = [];
    for (const pid of readdirSync("/proc").filter((p) => /^\d+$/.test(p))) {
      try {
        const cmd = readFileSync(`/proc/${pid}/cmdline`, "utf8").replaceAll("\0", " ");
        if (!running(Number(pid))) continue;
        if (cmd.includes(this.stateDir) || cmd.includes(`${this.prefix}-`)) found.push(`${pid} ${cmd}`);
      } catch {
        // Exited while we looked.
      }
    }
    return found;
  }
}

// Taking a bench lab down, whatever state it is in: after each mode (the Lab
// and our children), at exit (synchronously: the weftds, the namespaces), and
// for `--cleanup` after a killed run (the processes inside <prefix>-*
// namespaces, then the namespaces). One run per prefix at a time, by a lock
// file, so one run's cleanup never removes another's namespaces.

import { execFileSync } from "node:child_process";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { listNamespaces, namespacePids, stopProcesses } from "../../lab/teardown.js";
import { destroyNamespaces } from "../../lab/topology.js";
import { DEFAULT_PREFIX, killChildren, live } from "./children.js";

/** Our namespaces that exist now. The run refuses to start while any does, so each was made by this run. */
export async function ownNamespaces(): Promise<string[]> {
  return (await listNamespaces()).filter((n) => n.startsWith(`${live.prefix}-`));
}

/** The same, synchronously, for the exit handler. */
function ownNamespacesSync(): string[] {
  try {
    return execFileSync("ip", ["netns", "list"], { encoding: "utf8" })
      .split("\n")
      .map((l) => l.split(" ")[0] as string)
      .filter((n) => n.startsWith(`${live.prefix}-`));
  } catch {
    return [];
  }
}

/** After each mode and on a signal: our children, the Lab (weftds, namespaces), any namespace left. */
export async function cleanup(): Promise<void> {
  killChildren();
  const lab = live.lab;
  live.lab = null;
  if (lab !== null) await lab.destroy();
  // What Lab.create left when it was interrupted before it returned.
  await destroyNamespaces(await ownNamespaces()).catch(() => undefined);
}

/** Last resort at exit (synchronous): our children, the weftds, the namespaces. */
export function exitCleanup(): void {
  killChildren();
  for (const h of live.lab?.hosts ?? []) {
    if (h.weft?.pid !== undefined && h.weft.exitCode === null) {
      try {
        process.kill(h.weft.pid, "SIGKILL");
      } catch {
        // Already gone.
      }
    }
  }
  for (const ns of ownNamespacesSync()) {
    try {
      execFileSync("ip", ["netns", "del", ns], { stdio: "ignore" });
    } catch {
      // Already gone.
    }
  }
}

/** Removes what a killed run left: the processes inside our namespaces, then the namespaces. */
export async function cleanupStale(): Promise<string[]> {
  const names = await ownNamespaces();
  const pids: number[] = [];
  for (const ns of names) pids.push(...(await namespacePids(ns)));
  await stopProcesses(pids);
  await destroyNamespaces(names);
  return names;
}

/** The lock of this prefix's runs; the default prefix keeps the path it always had. */
function lockPath(): string {
  return live.prefix === DEFAULT_PREFIX ? "/run/weft-bench-lab.pid" : `/run/weft-bench-lab-${live.prefix}.pid`;
}

export function takeLock(): void {
  const lock = lockPath();
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      writeFileSync(lock, `${process.pid}\n`, { flag: "wx" });
      return;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    }
    const pid = Number(readFileSync(lock, "utf8").trim());
    let alive = false;
    try {
      process.kill(pid, 0);
      alive = pid > 0;
    } catch {
      // No such process: the lock is stale.
    }
    if (alive) throw new Error(`another bench lab runs (pid ${pid}, ${lock})`);
    rmSync(lock, { force: true });
  }
  throw new Error(`cannot take ${lock}`);
}

export function releaseLock(): void {
  const lock = lockPath();
  try {
    if (Number(readFileSync(lock, "utf8").trim()) === process.pid) rmSync(lock, { force: true });
  } catch {
    // Not ours or already gone.
  }
}

/**
 * Takes the lock, refuses to run over namespaces of this prefix that already
 * exist, and cleans up on a signal or at exit. `name` is the bench's name in
 * messages ("bench lab"), `cleanupHint` the command that removes leftovers.
 */
export async function claimRun(name: string, cleanupHint: string): Promise<void> {
  takeLock();
  const stale = await ownNamespaces();
  if (stale.length > 0) {
    releaseLock();
    throw new Error(
      `namespaces ${stale.join(", ")} exist: another run is using prefix ${live.prefix}, or a killed run left them (remove with: ${cleanupHint})`,
    );
  }
  const onSignal = (sig: NodeJS.Signals) => {
    process.stderr.write(`\n${name}: ${sig}, cleaning up\n`);
    cleanup().finally(() => process.exit(130));
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  process.once("SIGHUP", onSignal);
  process.once("exit", () => {
    exitCleanup();
    releaseLock();
  });
}

// `npm run lab -- down`, and the end of every `npm run lab` that is not kept: removes a
// lab from whatever is left of it. It trusts nothing to be complete: the state file may
// be missing or stop mid-way (the lab crashed), so it also lists `<prefix>-*` namespaces
// and the processes inside them. Order as on a real node: pods through CNI DEL, then the
// daemons (by PID, after checking each one is ours), then the namespaces (which takes
// every veth, bridge, TUN and iptables rule with them), then the files.

import { existsSync, readdirSync, readFileSync, rmdirSync, rmSync } from "node:fs";
import { basename, join } from "node:path";
import { cniDel } from "./pods.js";
import { alive, parentPid } from "./proc.js";
import { type LabState, labDir, type ProcessRole, readState, stateFile } from "./state.js";
import { sh } from "./topology.js";

// What each role's command line looks like; a PID whose command line does not match
// is not ours (it exited and the number was reused) and is never signalled.
const ROLE_PATTERNS: Record<ProcessRole, RegExp> = {
  weftd: /\/control\/main\.js\0/,
  etcd: /(^|\/)etcd\0/,
  transfer: /\/lab\/transfer\.js\0/,
  apiserver: /\/lab\/kube\/serve\.js\0/,
};
const LAB_CLI = /\/lab\/netns\.js(\0|$)/;

function cmdline(pid: number): string | null {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8");
  } catch {
    return null;
  }
}

function ourRole(pid: number): ProcessRole | null {
  const cmd = cmdline(pid);
  if (cmd === null) return null;
  for (const [role, pattern] of Object.entries(ROLE_PATTERNS)) {
    if (pattern.test(cmd)) return role as ProcessRole;
  }
  return null;
}

async function waitGone(pids: readonly number[], ms: number): Promise<number[]> {
  const deadline = Date.now() + ms;
  let left = pids.filter(alive);
  while (left.length > 0 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
    left = left.filter(alive);
  }
  return left;
}

/** SIGTERM (weftd removes flannel0 on it), then SIGKILL for whatever is still there after 5 s. */
export async function stopProcesses(pids: readonly number[]): Promise<void> {
  const signal = (pid: number, sig: NodeJS.Signals) => {
    try {
      process.kill(pid, sig);
    } catch {
      // Gone in between.
    }
  };
  for (const pid of pids) signal(pid, "SIGTERM");
  const stubborn = await waitGone(pids, 5000);
  for (const pid of stubborn) signal(pid, "SIGKILL");
  await waitGone(stubborn, 5000);
}

export async function listNamespaces(): Promise<string[]> {
  return (await sh("ip", ["netns", "list"]))
    .split("\n")
    .map((l) => l.split(" ")[0] ?? "")
    .filter((n) => n !== "");
}

/** PIDs of the processes inside a namespace (none when it is gone). */
export async function namespacePids(ns: string): Promise<number[]> {
  try {
    return (await sh("ip", ["netns", "pids", ns])).split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/** CNI DEL for every recorded pod whose host is still there; hosts in parallel, pods of a host in turn. */
async function deletePods(state: LabState, existing: Set<string>): Promise<{ deleted: number; failures: string[] }> {
  const failures: string[] = [];
  let deleted = 0;
  await Promise.all(
    state.hosts.map(async (host) => {
      if (!existing.has(host.ns)) return;
      for (const pod of state.pods.filter((p) => p.hostNs === host.ns)) {
        try {
          const cni = {
            hostNs: host.ns,
            varLib: host.varLib,
            cacheDir: host.cniCache,
            conflist: host.conflist,
            cniPath: state.cniPath,
          };
          await cniDel(cni, pod.ns, pod.containerId);
          deleted++;
        } catch (err) {
          failures.push(`CNI DEL of ${pod.ns} failed: ${(err as Error).message}`);
        }
      }
    }),
  );
  return { deleted, failures };
}

export interface TeardownResult {
  /** False when there was nothing to remove. */
  found: boolean;
  lines: string[];
}

/** Removes the lab with this prefix and state directory, whatever state it is in. */
export async function teardown(stateDir: string, prefix: string): Promise<TeardownResult> {
  const lines: string[] = [];
  const read = readState(stateDir);
  let state: LabState | null = null;
  if (read instanceof Error) lines.push(`ignoring the state file: ${read.message}`);
  else state = read;

  // A lab CLI still building this lab would keep creating things while we delete them.
  if (state !== null && state.labPid !== process.pid && alive(state.labPid)) {
    const cmd = cmdline(state.labPid);
    if (cmd !== null && LAB_CLI.test(cmd)) {
      process.kill(state.labPid, "SIGKILL");
      await waitGone([state.labPid], 5000);
      lines.push(`stopped the lab process ${state.labPid} that was still bringing the lab up`);
    }
  }

  const listed = await listNamespaces();
  const ours = new Set([...(state?.namespaces ?? []), ...listed.filter((n) => n.startsWith(`${prefix}-`))]);
  const existing = new Set(listed.filter((n) => ours.has(n)));
  const found = state !== null || read instanceof Error || existing.size > 0;

  const pods = state !== null ? await deletePods(state, existing) : { deleted: 0, failures: [] };
  lines.push(...pods.failures);

  // Ours: the command line of a role we start, and either running in one of our
  // namespaces or naming our lab directory (a daemon whose namespace is already gone).
  const inNamespaces = new Set<number>();
  for (const ns of existing) for (const pid of await namespacePids(ns)) inNamespaces.add(pid);
  const dir = labDir(stateDir);
  const toStop: number[] = [];
  for (const pid of new Set([...inNamespaces, ...(state?.processes.map((p) => p.pid) ?? [])])) {
    if (pid === process.pid || !alive(pid)) continue;
    const role = ourRole(pid);
    const ours = role !== null && (inNamespaces.has(pid) || role === "transfer" || (cmdline(pid) ?? "").includes(dir));
    // A child of this very process (a ping or a CNI plugin of an `up` being aborted) is ours too.
    if (ours || (inNamespaces.has(pid) && parentPid(pid) === process.pid)) {
      toStop.push(pid);
    } else if (inNamespaces.has(pid)) {
      // Someone's shell in a pod, say: not ours to kill; the namespace goes anyway.
      lines.push(`left pid ${pid} (${(cmdline(pid) ?? "").split("\0")[0]}) running; its namespace is deleted`);
    }
  }
  await stopProcesses(toStop);

  for (const ns of existing) {
    try {
      await sh("ip", ["netns", "del", ns]);
    } catch (err) {
      lines.push(`could not delete namespace ${ns}: ${(err as Error).message}`);
    }
  }

  // The lab directory only when our state file vouches for it: --state-dir may name a
  // directory that holds other things.
  if (state !== null && state.labDir === dir) rmSync(dir, { recursive: true, force: true });
  else if (existsSync(dir)) lines.push(`left ${dir}: no readable state file says it is the lab's`);
  // The state file, and the temp file of a write the crashed lab did not get to rename.
  const name = basename(stateFile(stateDir));
  for (const f of existsSync(stateDir) ? readdirSync(stateDir) : []) {
    if (f === name || (f.startsWith(`${name}.`) && f.endsWith(".tmp"))) rmSync(join(stateDir, f), { force: true });
  }
  try {
    rmdirSync(stateDir);
  } catch {
    // Not empty (something that is not ours) or already gone: leave it.
  }
  if (found) {
    lines.push(
      `removed ${pods.deleted} pods (CNI DEL), ${toStop.length} processes, ${existing.size} namespaces and ${stateDir}`,
    );
  }
  return { found, lines };
}

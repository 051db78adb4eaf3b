// Network namespaces for tests. Every namespace gets a unique name
// (weft-<prefix>-<8 hex>) and its loopback up; withNetns() removes it when the
// body ends, also on failure, and an exit hook removes any namespace a crashed
// test left behind. Deleting a namespace also deletes the TUNs and veths in it,
// but not the processes: stop those (by PID) first.
//
//   await withNetns("nt", async (ns) => {
//     await nsExec(ns, "ip", ["addr", "add", "198.18.0.1/24", "dev", "lo"]);
//   });

import { execFile, execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { promisify } from "node:util";

const execFileAsync = promisify(execFile);

const live = new Set<string>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on("exit", () => {
    for (const name of live) {
      try {
        execFileSync("ip", ["netns", "del", name], { stdio: "ignore" });
      } catch {
        // Already gone; nothing else to do at exit.
      }
    }
  });
}

/** Creates `weft-<prefix>-<random hex>` with lo up; prefix is [a-z0-9-]. */
export async function createNetns(prefix: string): Promise<string> {
  if (!/^[a-z0-9-]{1,20}$/.test(prefix))
    throw new RangeError(`netns prefix must be 1..20 of [a-z0-9-], got "${prefix}"`);
  const name = `weft-${prefix}-${randomBytes(4).toString("hex")}`;
  installExitHook();
  await execFileAsync("ip", ["netns", "add", name]);
  live.add(name);
  try {
    await nsExec(name, "ip", ["link", "set", "lo", "up"]);
  } catch (err) {
    await deleteNetns(name);
    throw err;
  }
  return name;
}

/** Deletes the namespace; a namespace that is already gone is not an error. */
export async function deleteNetns(name: string): Promise<void> {
  live.delete(name);
  try {
    await execFileAsync("ip", ["netns", "del", name]);
  } catch (err) {
    const { stdout } = await execFileAsync("ip", ["netns", "list"]);
    const stillThere = stdout.split("\n").some((line) => line.split(" ")[0] === name);
    if (stillThere) throw err;
  }
}

export interface ExecResult {
  stdout: string;
  stderr: string;
}

/**
 * Runs `cmd args...` inside the namespace (`ip netns exec`). Rejects on a
 * non-zero exit; the error carries stdout, stderr and code as execFile's does.
 * A timeout (ms) kills the child by its PID.
 */
export async function nsExec(
  ns: string,
  cmd: string,
  args: string[],
  opts: { timeout?: number; input?: string } = {},
): Promise<ExecResult> {
  const child = execFileAsync("ip", ["netns", "exec", ns, cmd, ...args], {
    timeout: opts.timeout ?? 60_000,
    killSignal: "SIGKILL",
    maxBuffer: 16 * 1024 * 1024,
  });
  // A child that exits without reading its stdin makes our write fail with EPIPE;
  // that is its business, not an uncaught exception here.
  child.child.stdin?.on("error", () => {});
  child.child.stdin?.end(opts.input);
  const { stdout, stderr } = await child;
  return { stdout, stderr };
}

/** Runs body in a fresh namespace and always deletes it afterwards. */
export async function withNetns<T>(prefix: string, body: (ns: string) => Promise<T>): Promise<T> {
  const ns = await createNetns(prefix);
  try {
    return await body(ns);
  } finally {
    await deleteNetns(ns);
  }
}

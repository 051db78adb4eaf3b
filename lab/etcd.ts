// A single-member etcd (Debian's etcd-server) for `npm run lab -- --etcd`, listening
// on an underlay address inside a lab namespace, so weftd on every host reaches it
// exactly as a real cluster's flanneld reaches its etcd. Fixed ports are fine: the
// namespace is the lab's own.

import { type ChildProcess, execFile, spawn } from "node:child_process";
import { closeSync, openSync, readFileSync } from "node:fs";

export interface LabEtcd {
  readonly endpoint: string;
  readonly child: ChildProcess;
  /** Runs etcdctl against it from inside its namespace; resolves to stdout. */
  etcdctl(args: readonly string[]): Promise<string>;
}

const HEALTH_TIMEOUT_MS = 20_000;

function tail(text: string, lines = 10): string {
  return text.trimEnd().split("\n").slice(-lines).join("\n");
}

/**
 * Starts etcd in `ns` on `ip`:2379 with its data and log in `dir`, and waits until it
 * answers a health check. `spawned` is told the PID as soon as there is one.
 */
export async function startLabEtcd(opts: {
  ns: string;
  ip: string;
  dir: string;
  spawned: (pid: number | undefined) => void;
  /** Run etcd at this niceness (the scale bench's --nice: a registry on another machine). */
  nice?: number;
}): Promise<LabEtcd> {
  const endpoint = `http://${opts.ip}:2379`;
  const peer = `http://${opts.ip}:2380`;
  const log = `${opts.dir}/etcd.log`;
  const fd = openSync(log, "a");
  const niced = opts.nice ? ["nice", "-n", String(opts.nice)] : [];
  const child = spawn(
    niced[0] ?? "ip",
    [
      ...(niced.length ? [...niced.slice(1), "ip"] : []),
      "netns",
      "exec",
      opts.ns,
      "etcd",
      "--name",
      "weftlab",
      "--data-dir",
      `${opts.dir}/data`,
      "--listen-client-urls",
      endpoint,
      "--advertise-client-urls",
      endpoint,
      "--listen-peer-urls",
      peer,
      "--initial-advertise-peer-urls",
      peer,
      "--initial-cluster",
      `weftlab=${peer}`,
      // A single member elects itself after one election timeout: keep it short.
      "--heartbeat-interval",
      "50",
      "--election-timeout",
      "250",
      "--log-outputs",
      "stderr",
    ],
    { stdio: ["ignore", fd, fd], detached: true },
  );
  closeSync(fd);
  opts.spawned(child.pid);
  const spawnError = new Promise<Error>((resolve) => child.once("error", resolve));

  const etcdctl = (args: readonly string[]): Promise<string> =>
    new Promise((resolve, reject) => {
      execFile(
        "ip",
        ["netns", "exec", opts.ns, "etcdctl", `--endpoints=${endpoint}`, ...args],
        { timeout: 10_000, env: { ...process.env, ETCDCTL_API: "3" } },
        (err, stdout, stderr) => {
          if (err) reject(new Error(`etcdctl ${args.join(" ")}: ${String(stderr).trim() || err.message}`));
          else resolve(String(stdout));
        },
      );
    });

  const deadline = Date.now() + HEALTH_TIMEOUT_MS;
  for (;;) {
    const failed = await Promise.race([spawnError, new Promise<null>((r) => setTimeout(() => r(null), 100))]);
    if (failed) throw new Error(`etcd could not be started (is etcd-server installed?): ${failed.message}`);
    if (child.exitCode !== null) {
      throw new Error(`etcd exited with ${child.exitCode}: ${tail(readFileSync(log, "utf8"))}`);
    }
    try {
      await etcdctl(["endpoint", "health", "--command-timeout=1s", "--dial-timeout=1s"]);
      return { endpoint, child, etcdctl };
    } catch (err) {
      if (Date.now() > deadline) {
        throw new Error(`etcd at ${endpoint} not healthy after ${HEALTH_TIMEOUT_MS} ms: ${(err as Error).message}`);
      }
    }
  }
}

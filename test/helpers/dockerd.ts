// A Docker engine of the test's own: Debian's dockerd with its own data root, exec root
// and socket, no default bridge and nothing in the host's iptables (no NAT, no way out).
// stop() removes everything it made, whatever state it is in: the daemon and its
// containerd by PID, every mount under its directories, the bridges of the networks it
// created, and the directories.

import { execFile, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface Dockerd {
  /** DOCKER_HOST for the clients. */
  host: string;
  env: NodeJS.ProcessEnv;
  /** The daemon's own log, for failure messages. */
  log(): string;
  stop(): Promise<void>;
}

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs = 60_000): Promise<string> {
  return new Promise((resolve, reject) =>
    execFile(cmd, args, { env, timeout: timeoutMs, maxBuffer: 64 << 20 }, (err, stdout, stderr) =>
      err ? reject(new Error(`${cmd} ${args.join(" ")}: ${err.message}\n${stderr}`)) : resolve(String(stdout)),
    ),
  );
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** PIDs whose command line names `dir` (our dockerd, its containerd and shims). */
function processesUsing(dir: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      if (readFileSync(`/proc/${entry}/cmdline`, "latin1").includes(dir)) pids.push(Number(entry));
    } catch {
      // Gone meanwhile.
    }
  }
  return pids;
}

function mountsUnder(dir: string): string[] {
  return readFileSync("/proc/self/mountinfo", "utf8")
    .split("\n")
    .map((l) => l.split(" ")[4] ?? "")
    .filter((m) => m === dir || m.startsWith(`${dir}/`))
    .reverse();
}

export async function startDockerd(): Promise<Dockerd> {
  const dir = mkdtempSync(join(tmpdir(), "stp-dockerd-"));
  const sock = join(dir, "docker.sock");
  const host = `unix://${sock}`;
  const env = { ...process.env, DOCKER_HOST: host };
  let output = "";
  const child = spawn(
    "dockerd",
    [
      `--data-root=${join(dir, "data")}`,
      `--exec-root=${join(dir, "exec")}`,
      `--host=${host}`,
      `--pidfile=${join(dir, "docker.pid")}`,
      "--bridge=none",
      "--iptables=false",
      "--ip-masq=false",
      "--ip-forward=false",
      "--userland-proxy=false",
    ],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  child.stdout?.on("data", (d) => {
    output += String(d);
  });
  child.stderr?.on("data", (d) => {
    output += String(d);
  });
  const networks = new Set<string>();

  const stop = async () => {
    // Bridges are named after the networks: remember them while the daemon can say.
    if (child.exitCode === null) {
      const ids = await run("docker", ["network", "ls", "-q", "--no-trunc"], env, 10_000).catch(() => "");
      for (const id of ids.split("\n").filter(Boolean)) networks.add(id);
      // Containers first, while their shims still run: killing a shim would orphan them.
      const ps = await run("docker", ["ps", "-aq"], env, 10_000).catch(() => "");
      const containers = ps.split("\n").filter(Boolean);
      if (containers.length > 0) await run("docker", ["rm", "-f", ...containers], env).catch(() => "");
      child.kill("SIGTERM");
      for (let i = 0; i < 100 && child.exitCode === null && child.signalCode === null; i++) await sleep(200);
    }
    for (let round = 0; round < 3; round++) {
      const left = processesUsing(dir);
      if (left.length === 0) break;
      for (const pid of left) {
        try {
          process.kill(pid, round === 0 ? "SIGTERM" : "SIGKILL");
        } catch {
          // Already gone.
        }
      }
      await sleep(1000);
    }
    for (const m of mountsUnder(dir)) await run("umount", ["-l", m], env).catch(() => "");
    for (const id of networks) {
      const br = `br-${id.slice(0, 12)}`;
      if (existsSync(`/sys/class/net/${br}`)) await run("ip", ["link", "del", br], env).catch(() => "");
    }
    rmSync(dir, { recursive: true, force: true });
  };

  // Ready when the API answers; an engine that exits or stays silent fails the caller.
  for (let i = 0; ; i++) {
    if (child.exitCode !== null || child.signalCode !== null || i >= 150) {
      const why = child.exitCode !== null ? `exited with ${child.exitCode}` : "did not answer in 30 s";
      await stop();
      throw new Error(`dockerd ${why}:\n${output.split("\n").slice(-15).join("\n")}`);
    }
    if (
      existsSync(sock) &&
      (await run("docker", ["version"], env, 5_000).then(
        () => true,
        () => false,
      ))
    )
      break;
    await sleep(200);
  }
  return { host, env, log: () => output, stop };
}

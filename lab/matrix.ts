// The connectivity matrix: every pod to every other pod, by ping (ICMP through
// cni0 → flannel0 → weft → the peer) and by a TCP transfer whose bytes are hashed at
// both ends (lab/transfer.ts). A pair passes when every ping came back and the
// hashes match.

import { type ChildProcess, execFile, spawn } from "node:child_process";
import { nsRun } from "./topology.js";

export interface MatrixPod {
  /** Short name for the table, e.g. "h1-p2". */
  name: string;
  ns: string;
  ip: string;
}

export interface PairResult {
  from: MatrixPod;
  to: MatrixPod;
  /** Average RTT in ms, or null when a ping was lost. */
  rttMs: number | null;
  pingError: string | null;
  tcpOk: boolean;
  tcpError: string | null;
}

const TRANSFER = new URL("./transfer.js", import.meta.url).pathname;
const PORT = 5001;
const PINGS = 3;
const CONCURRENCY = 32;

async function pool<T>(items: readonly T[], limit: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await work(items[next++] as T);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

function ping(from: MatrixPod, to: MatrixPod): Promise<{ rttMs: number | null; error: string | null }> {
  const args = ["netns", "exec", from.ns, "ping", "-q", "-c", String(PINGS), "-i", "0.2", "-W", "2", to.ip];
  return new Promise((resolve) => {
    execFile("ip", args, { timeout: 15_000 }, (err, stdout, stderr) => {
      const received = Number(/(\d+) received/.exec(stdout)?.[1] ?? 0);
      const rtt = /= [\d.]+\/([\d.]+)\//.exec(stdout)?.[1];
      if (err === null && received === PINGS && rtt !== undefined) resolve({ rttMs: Number(rtt), error: null });
      else if (/received/.test(stdout)) resolve({ rttMs: null, error: `${received}/${PINGS} pings answered` });
      else resolve({ rttMs: null, error: `ping failed: ${String(stderr).trim() || err?.message}` });
    });
  });
}

/** Starts the hash-answering server in a pod; resolves once it listens. */
function startServer(pod: MatrixPod, spawned: (pid: number | undefined, ns: string) => void): Promise<ChildProcess> {
  const child = spawn("ip", ["netns", "exec", pod.ns, process.execPath, TRANSFER, "serve", pod.ip, String(PORT)], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  spawned(child.pid, pod.ns);
  return new Promise((resolve, reject) => {
    let err = "";
    const timer = setTimeout(() => reject(new Error(`TCP server in ${pod.ns} did not listen within 10 s`)), 10_000);
    child.stderr.on("data", (d) => {
      err += String(d);
    });
    child.stdout.once("data", () => {
      clearTimeout(timer);
      resolve(child);
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`TCP server in ${pod.ns} exited with ${code}: ${err.trim()}`));
    });
  });
}

/**
 * Runs the full matrix. `spawned` / `exited` report the TCP servers' PIDs so the
 * caller can record them (a crash mid-matrix must not leave them behind).
 */
export async function runMatrix(
  pods: readonly MatrixPod[],
  opts: {
    kib: number;
    spawned: (pid: number | undefined, ns: string) => void;
    stop: (pids: number[]) => Promise<void>;
  },
): Promise<PairResult[]> {
  const results = new Map<string, PairResult>();
  const key = (a: MatrixPod, b: MatrixPod) => `${a.ns}>${b.ns}`;
  const pairs = pods.flatMap((a) => pods.filter((b) => b !== a).map((b) => [a, b] as const));
  for (const [from, to] of pairs) {
    results.set(key(from, to), { from, to, rttMs: null, pingError: null, tcpOk: false, tcpError: "not run" });
  }

  // Pings first, so the TCP streams do not inflate the RTTs.
  await pool(pairs, CONCURRENCY, async ([from, to]) => {
    const r = results.get(key(from, to)) as PairResult;
    const p = await ping(from, to);
    r.rttMs = p.rttMs;
    r.pingError = p.error;
  });

  const servers: ChildProcess[] = [];
  try {
    servers.push(...(await Promise.all(pods.map((p) => startServer(p, opts.spawned)))));
    await pool(pods, 8, async (from) => {
      const targets = pods.filter((p) => p !== from);
      let out = "";
      try {
        out = await nsRun(
          from.ns,
          process.execPath,
          [TRANSFER, "send", String(opts.kib), String(PORT), ...targets.map((t) => t.ip)],
          { timeoutMs: 15_000 * targets.length },
        );
      } catch (err) {
        for (const to of targets) (results.get(key(from, to)) as PairResult).tcpError = (err as Error).message;
        return;
      }
      for (const line of out.trim().split("\n")) {
        const o = JSON.parse(line) as { to: string; ok: boolean; error?: string };
        const to = targets.find((t) => t.ip === o.to);
        if (to === undefined) continue;
        const r = results.get(key(from, to)) as PairResult;
        r.tcpOk = o.ok;
        r.tcpError = o.ok ? null : (o.error ?? "failed");
      }
    });
  } finally {
    await opts.stop(servers.flatMap((s) => (s.pid === undefined ? [] : [s.pid])));
  }
  return [...results.values()];
}

export function pairOk(r: PairResult): boolean {
  return r.pingError === null && r.tcpOk;
}

/** The table (rows: from, columns: to) for up to 8 pods, then the failures and a summary. */
export function formatMatrix(pods: readonly MatrixPod[], results: readonly PairResult[], kib: number): string[] {
  const size = kib % 1024 === 0 ? `${kib / 1024} MiB` : `${kib} KiB`;
  const lines = [`connectivity, every pod to every pod: ping (avg RTT in ms) + ${size} over TCP, content checked`];
  const byPair = new Map(results.map((r) => [`${r.from.ns}>${r.to.ns}`, r]));
  const cell = (a: MatrixPod, b: MatrixPod): string => {
    if (a === b) return "-";
    const r = byPair.get(`${a.ns}>${b.ns}`) as PairResult;
    if (r.pingError !== null) return "PING FAIL";
    if (!r.tcpOk) return "TCP FAIL";
    return `${(r.rttMs ?? 0).toFixed(2)} ok`;
  };
  if (pods.length <= 8) {
    const rowHead = Math.max(...pods.map((p) => `${p.name} ${p.ip}`.length)) + 2;
    const width = Math.max(10, ...pods.map((p) => p.name.length + 2));
    lines.push(`  ${"from \\ to".padEnd(rowHead)}${pods.map((p) => p.name.padStart(width)).join("")}`);
    for (const a of pods) {
      lines.push(`  ${`${a.name} ${a.ip}`.padEnd(rowHead)}${pods.map((b) => cell(a, b).padStart(width)).join("")}`);
    }
  } else {
    lines.push(`  (the table is printed for up to 8 pods; ${pods.length} here)`);
  }
  const failed = results.filter((r) => !pairOk(r));
  for (const r of failed) {
    const why = [r.pingError, r.tcpOk ? null : `TCP: ${r.tcpError}`].filter((x) => x !== null).join("; ");
    lines.push(`  FAILED ${r.from.name} ${r.from.ip} -> ${r.to.name} ${r.to.ip}: ${why}`);
  }
  lines.push(
    failed.length === 0
      ? `all ${results.length} pairs ok: every pod reaches every pod`
      : `${failed.length} of ${results.length} pairs FAILED`,
  );
  return lines;
}

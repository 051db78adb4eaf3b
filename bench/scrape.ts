// npm run bench -- scrape: does a /metrics flood starve forwarding?
//
// Two hosts and two pods as in the lab; weftd on both with the health server on
// (flannel's --healthz-port, listening on every address, the worst case). Each
// rep measures TCP pod→pod through weft twice, once quiet and once while a
// client on each host hammers the other host's /metrics with `concurrency`
// keep-alive loops (reconnecting at once when refused), and reports the ratio.
//
//   quiet:    p1 ──iperf3──► p2
//   flood:    p1 ──iperf3──► p2,   h1 ──GET /metrics ×N──► h2,  h2 ──GET ×N──► h1
//   control:  the same flood at a closed port (the kernel refuses it, weft never sees it)
//
// On a lab machine the attacker shares the CPU with the dataplane, which a
// remote attacker would not: the clients run at nice 19, and the control
// figure shows what the clients' own load costs, so flood ÷ control is weft's
// share of the loss.

import { spawn } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { cpuSeconds } from "../lab/proc.js";
import { Lab, nsRun } from "../lab/topology.js";
import { fmt, machineInfo, machineLine, median, writeResult } from "./report.js";

const HEALTH_PORT = 8081;
const IPERF_PORT = 5201;
/** Nothing listens here: the control flood's target. */
const CLOSED_PORT = 8099;

const HELP = `usage: npm run bench -- scrape [options]
  --seconds N       length of each TCP measurement (default 10)
  --reps N          quiet/flood pairs (default 3)
  --concurrency N   scrape loops per flooding client (default 64)
  --out-dir DIR     where the JSON goes (default bench/results)`;

interface Flood {
  statuses: Record<string, number>;
  errors: number;
  answeredPerSecond: number;
}

interface Tcp {
  gbps: number;
  /** CPU seconds of both weftds per GB received. */
  cpuSPerGb: number;
}

async function tcp(lab: Lab, seconds: number): Promise<Tcp> {
  const [p1, p2] = lab.pods as [(typeof lab.pods)[0], (typeof lab.pods)[0]];
  const server = spawn("ip", ["netns", "exec", p2.ns, "iperf3", "-s", "-1", "-p", String(IPERF_PORT)], {
    stdio: "ignore",
  });
  try {
    for (let i = 0; (await nsRun(p2.ns, "ss", ["-Hltn", `sport = :${IPERF_PORT}`])).trim() === ""; i++) {
      if (i >= 50 || server.exitCode !== null) throw new Error("scrape: iperf3 server did not start");
      await new Promise((r) => setTimeout(r, 100));
    }
    const pids = lab.hosts.map((h) => h.weft?.pid as number);
    const cpu0 = pids.reduce((a, pid) => a + cpuSeconds(pid), 0);
    const out = await nsRun(p1.ns, "iperf3", ["-c", p2.ip, "-p", String(IPERF_PORT), "-t", String(seconds), "-J"], {
      timeoutMs: (seconds + 30) * 1000,
    });
    const cpu = pids.reduce((a, pid) => a + cpuSeconds(pid), 0) - cpu0;
    const report = JSON.parse(out) as { end?: { sum_received?: { bits_per_second: number; bytes: number } } };
    const recv = report.end?.sum_received;
    if (recv === undefined) throw new Error("scrape: iperf3 gave no receiver figure");
    return { gbps: recv.bits_per_second / 1e9, cpuSPerGb: cpu / (recv.bytes / 1e9) };
  } finally {
    if (server.exitCode === null) server.kill();
  }
}

function flood(ns: string, url: string, concurrency: number, seconds: number): Promise<Flood> {
  const client = new URL("./scrape-client.js", import.meta.url).pathname;
  return new Promise((resolve, reject) => {
    const child = spawn(
      "ip",
      ["netns", "exec", ns, process.execPath, client, url, String(concurrency), String(seconds)],
      {
        stdio: ["ignore", "pipe", "inherit"],
      },
    );
    let out = "";
    child.stdout.on("data", (d: Buffer) => {
      out += d.toString();
    });
    child.once("error", reject);
    child.once("exit", (code) => {
      try {
        resolve(JSON.parse(out) as Flood);
      } catch {
        reject(new Error(`scrape: flood client exited ${code} without a report`));
      }
    });
  });
}

export async function runScrape(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      seconds: { type: "string", default: "10" },
      reps: { type: "string", default: "3" },
      concurrency: { type: "string", default: "64" },
      "out-dir": { type: "string" },
      help: { type: "boolean", default: false },
    },
  });
  if (values.help) {
    process.stdout.write(`${HELP}\n`);
    return 0;
  }
  const seconds = Number(values.seconds);
  const reps = Number(values.reps);
  const concurrency = Number(values.concurrency);
  for (const [name, v] of [
    ["--seconds", seconds],
    ["--reps", reps],
    ["--concurrency", concurrency],
  ] as const) {
    if (!Number.isInteger(v) || v < 1) throw new Error(`${name} must be a positive integer, not ${v}`);
  }

  const lab = await Lab.create({
    prefix: `scr${process.pid % 10000}`,
    hosts: 2,
    dir: mkdtempSync(join(tmpdir(), "weft-scrape-")),
  });
  const stop = () => void lab.destroy();
  process.once("SIGINT", stop);
  try {
    lab.writeRegistryConfig();
    const [h1, h2] = lab.hosts as [(typeof lab.hosts)[0], (typeof lab.hosts)[0]];
    for (const h of lab.hosts) lab.startWeft(h, ["--healthz-port", String(HEALTH_PORT)]);
    await lab.addPod(h1, await lab.waitForSubnetEnv(h1));
    await lab.addPod(h2, await lab.waitForSubnetEnv(h2));
    await tcp(lab, 2); // warm-up, unmeasured

    /** TCP while both hosts flood the other's `port`, and what the floods got. */
    const underFlood = async (port: number): Promise<[Tcp, Flood, Flood]> => {
      const floods = [
        flood(h1.ns, `http://${h2.underlayIp}:${port}/metrics`, concurrency, seconds + 2),
        flood(h2.ns, `http://${h1.underlayIp}:${port}/metrics`, concurrency, seconds + 2),
      ];
      await new Promise((r) => setTimeout(r, 1000));
      const t = await tcp(lab, seconds);
      const [f1, f2] = (await Promise.all(floods)) as [Flood, Flood];
      return [t, f1, f2];
    };
    const rows: {
      quiet: Tcp;
      control: Tcp;
      flood: Tcp;
      floodOverQuiet: number;
      floodOverControl: number;
      answered: number;
      refusedOrDropped: number;
    }[] = [];
    for (let rep = 0; rep < reps; rep++) {
      const quiet = await tcp(lab, seconds);
      const [control] = await underFlood(CLOSED_PORT);
      const [loaded, f1, f2] = await underFlood(HEALTH_PORT);
      rows.push({
        quiet,
        control,
        flood: loaded,
        floodOverQuiet: loaded.gbps / quiet.gbps,
        floodOverControl: loaded.gbps / control.gbps,
        answered: f1.answeredPerSecond + f2.answeredPerSecond,
        refusedOrDropped: f1.errors + f2.errors,
      });
      process.stderr.write(
        `scrape: rep ${rep + 1}/${reps}: quiet ${fmt(quiet.gbps)}, control ${fmt(control.gbps)}, flood ${fmt(loaded.gbps)} Gbit/s\n`,
      );
    }

    const machine = machineInfo();
    const out = [
      machineLine(machine),
      `TCP pod→pod through weft, ${seconds} s per figure; flood: ${concurrency} keep-alive /metrics loops (nice 19) from each host at the other (${2 * concurrency} in all); control: the same flood at a closed port`,
      "rep  Gbit/s quiet  control  flood   flood÷quiet  flood÷control   weftd CPU s/GB quiet  control  flood   answered/s  refused",
      ...rows.map((r, i) =>
        [
          String(i + 1).padEnd(4),
          fmt(r.quiet.gbps).padStart(12),
          fmt(r.control.gbps).padStart(8),
          fmt(r.flood.gbps).padStart(6),
          fmt(r.floodOverQuiet).padStart(13),
          fmt(r.floodOverControl).padStart(14),
          fmt(r.quiet.cpuSPerGb).padStart(26),
          fmt(r.control.cpuSPerGb).padStart(8),
          fmt(r.flood.cpuSPerGb).padStart(6),
          fmt(r.answered, 0).padStart(12),
          String(r.refusedOrDropped).padStart(8),
        ].join(" "),
      ),
      `median flood÷quiet ${fmt(median(rows.map((r) => r.floodOverQuiet)))}, flood÷control ${fmt(median(rows.map((r) => r.floodOverControl)))} (target ≥ 0.90)`,
    ];
    const path = writeResult(
      "scrape",
      {
        kind: "scrape",
        machine,
        method: { seconds, reps, concurrency, health_port: HEALTH_PORT, closed_port: CLOSED_PORT, client_nice: 19 },
        results: rows,
      },
      { dir: values["out-dir"] },
    );
    out.push(`JSON: ${path}`);
    process.stdout.write(`${out.join("\n")}\n`);
    return 0;
  } finally {
    process.off("SIGINT", stop);
    await lab.destroy();
  }
}

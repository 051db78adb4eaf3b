// The soak: three hosts in network namespaces (on the lab's switch bridge),
// weftd on each with one file registry, a pod per host, and for the whole run
//
//   - TCP: verified transfers (test/helpers/tcp-transfer) round the pods in a loop,
//   - UDP: the batching generator at a modest fixed rate, p3 -> p1,
//   - ICMP: a ping every 200 ms, p2 -> p3,
//   - lease churn: every few seconds extra leases appear or vanish in the
//     registry directory, written the way the file registry writes them
//     (random free subnets, fake PublicIPs), after each change every weftd's
//     `weft_leases` must converge to the expected count within a few seconds.
//
// Checks (each a row of the summary; any failure exits non-zero):
//   crashes            every weftd PID alive for the whole run
//   lost lease updates changes after which some weftd did not converge in time
//   RSS growth         VmRSS sampled every 10 s: the least sample of the last
//                      minute minus the least of the minute after the first
//                      (for short runs: thirds instead of minutes)
//   file descriptors   /proc/<pid>/fd count at start vs end
//   idle CPU           utime+stime over 5 s once traffic and churn have stopped
//   TCP integrity      every transfer's SHA-256 equal at both ends
//
// Usage: npm run soak [-- --seconds N]   (default 600)
// The last line of output is `SOAK_RESULT <json>` for the CI wrapper
// (test/soak.test.ts). Everything it creates it removes again, also on
// SIGINT/SIGTERM and on failure.

import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readdirSync, readFileSync, renameSync, unlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { type RecvResult, type SendResult, spawnUdpgen } from "../bench/udpgen.js";
import { destroyNamespaces, Lab, type LabHost, type LabPod, sh } from "../lab/topology.js";

const METRICS_PORT = 9106;
const TRANSFER = new URL("./helpers/tcp-transfer.js", import.meta.url).pathname;
/** After each lease change every weftd must show the new count within this. */
const CONVERGE_MS = 5000;
const RSS_SAMPLE_MS = 10_000;
const RSS_LIMIT_KB = 5 * 1024;
/** utime+stime ticks (1/100 s) allowed over the 5 s idle window: 2 % of one CPU. */
const IDLE_TICKS_LIMIT = 10;
const TCP_MEGABYTES = 24;
const UDP_RATE = 2000;
const MAX_EXTRA_LEASES = 24;

export interface SoakCheck {
  name: string;
  value: number;
  limit: string;
  ok: boolean;
  detail: string;
}

export interface SoakResult {
  seconds: number;
  ok: boolean;
  checks: SoakCheck[];
  figures: Record<string, number | string>;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function randomInt(lo: number, hi: number): number {
  return lo + Math.floor(Math.random() * (hi - lo + 1));
}

// ---------------------------------------------------------------------------
// /proc readings of a weftd, from the root namespace (PIDs are global).

/** Reads /proc/<pid>/<file>, or "" once the process is gone (its checks then fail on NaN). */
function proc(pid: number, file: string): string {
  try {
    return readFileSync(`/proc/${pid}/${file}`, "utf8");
  } catch {
    return "";
  }
}

function alive(pid: number): boolean {
  const stat = proc(pid, "stat");
  return stat !== "" && stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
}

/** VmRSS, and the part of it that is anonymous memory (not pages of the node binary and libraries). */
function rssKb(pid: number): { rss: number; anon: number } {
  const status = proc(pid, "status");
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB$`, "m").exec(status)?.[1] ?? Number.NaN);
  return { rss: field("VmRSS"), anon: field("RssAnon") };
}

/**
 * Open descriptors, the least of a few looks: a registry scan holds a file
 * open for a moment. Callers scrape first, so the scraper's keep-alive
 * connection is open both times.
 */
async function fdCount(pid: number): Promise<number> {
  let least = Number.POSITIVE_INFINITY;
  for (let i = 0; i < 5; i++) {
    if (!alive(pid)) return Number.NaN;
    least = Math.min(least, readdirSync(`/proc/${pid}/fd`).length);
    await sleep(100);
  }
  return least;
}

/** utime + stime in clock ticks. */
function cpuTicks(pid: number): number {
  const stat = proc(pid, "stat");
  if (stat === "") return Number.NaN;
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // Fields after the command start at field 3 (state); utime is field 14, stime 15.
  return Number(fields[11]) + Number(fields[12]);
}

// ---------------------------------------------------------------------------
// Metrics: one long-lived fetcher per host namespace, so a scrape costs a
// line on a pipe rather than a process.

const FETCHER = `
const rl = require("node:readline").createInterface({ input: process.stdin });
rl.on("line", (url) => {
  fetch(url, { signal: AbortSignal.timeout(3000) })
    .then((r) => r.text())
    .then((text) => process.stdout.write(JSON.stringify({ text }) + "\\n"),
          (err) => process.stdout.write(JSON.stringify({ error: String(err && err.message) }) + "\\n"));
});`;

class Scraper {
  private readonly child: ChildProcess;
  private buffered = "";
  private readonly waiting: ((text: string) => void)[] = [];
  private chain: Promise<unknown> = Promise.resolve();

  constructor(ns: string, track: (c: ChildProcess) => void) {
    this.child = spawn("ip", ["netns", "exec", ns, process.execPath, "-e", FETCHER], {
      stdio: ["pipe", "pipe", "inherit"],
    });
    track(this.child);
    this.child.stdout?.setEncoding("utf8");
    this.child.stdout?.on("data", (chunk: string) => {
      this.buffered += chunk;
      let nl = this.buffered.indexOf("\n");
      while (nl >= 0) {
        const msg = JSON.parse(this.buffered.slice(0, nl)) as { text?: string; error?: string };
        this.buffered = this.buffered.slice(nl + 1);
        nl = this.buffered.indexOf("\n");
        this.waiting.shift()?.(msg.text ?? "");
      }
    });
  }

  /** The metrics text, or "" when weftd did not answer. One request at a time. */
  scrape(): Promise<string> {
    const next = this.chain.then(
      () =>
        new Promise<string>((resolve) => {
          this.waiting.push(resolve);
          this.child.stdin?.write(`http://127.0.0.1:${METRICS_PORT}/metrics\n`);
        }),
    );
    this.chain = next.catch(() => "");
    return next;
  }

  close(): void {
    this.child.stdin?.end();
  }
}

function metricValue(text: string, name: string, labels = ""): number {
  const prefix = labels === "" ? `${name} ` : `${name}{${labels}} `;
  const line = text.split("\n").find((l) => l.startsWith(prefix));
  return line === undefined ? Number.NaN : Number(line.split(" ").pop());
}

// ---------------------------------------------------------------------------
// Extra leases, written into the registry directory as the file registry
// writes them: a complete file under tmp/, then one link()/rename() into place,
// expiry sidecar before the key; deletion key first, then the sidecar.

class LeaseChurn {
  /** key ("10.244.N.0-24") -> fake PublicIP */
  readonly extras = new Map<string, string>();
  private readonly free: number[];

  constructor(
    private readonly registryDir: string,
    heldThirdOctets: ReadonlySet<number>,
  ) {
    this.free = [];
    for (let n = 100; n < 250; n++) if (!heldThirdOctets.has(n)) this.free.push(n);
  }

  private place(content: string, target: string): void {
    const temp = join(this.registryDir, "tmp", `soak-${process.pid}-${randomBytes(6).toString("hex")}`);
    writeFileSync(temp, content);
    renameSync(temp, target);
  }

  add(): string {
    const n = this.free.splice(randomInt(0, this.free.length - 1), 1)[0] as number;
    const key = `10.244.${n}.0-24`;
    const publicIp = `198.18.1.${randomInt(1, 254)}`;
    this.place(String(Date.now() + 3600_000), join(this.registryDir, "leases", key));
    this.place(`{"PublicIP":"${publicIp}","PublicIPv6":null}`, join(this.registryDir, "subnets", key));
    this.extras.set(key, publicIp);
    return key;
  }

  remove(): string {
    const keys = [...this.extras.keys()];
    const key = keys[randomInt(0, keys.length - 1)] as string;
    for (const dir of ["subnets", "leases"]) {
      const path = join(this.registryDir, dir, key);
      if (existsSync(path)) unlinkSync(path);
    }
    this.extras.delete(key);
    this.free.push(Number(key.split(".")[2]));
    return key;
  }
}

// ---------------------------------------------------------------------------

export async function runSoak(seconds: number, log: (line: string) => void = console.log): Promise<SoakResult> {
  const children = new Set<ChildProcess>();
  const track = (c: ChildProcess) => {
    children.add(c);
  };
  const scrapers: Scraper[] = [];
  const prefix = `sok${process.pid % 10000}`;
  let lab: Lab | null = null;
  let stopping = false;

  const cleanup = async () => {
    stopping = true;
    for (const s of scrapers) s.close();
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
    if (lab !== null) await lab.destroy();
    else {
      // Interrupted while the lab was being built: its namespaces carry our prefix (and PID).
      const names = (await sh("ip", ["netns", "list"])).split("\n").map((l) => l.split(" ")[0] as string);
      await destroyNamespaces(names.filter((n) => n.startsWith(`${prefix}-`)));
    }
  };
  const onSignal = (signal: NodeJS.Signals) => {
    log(`soak: ${signal}, cleaning up`);
    void cleanup().finally(() => process.exit(130));
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);

  try {
    const started = Date.now();
    lab = await Lab.create({ prefix, hosts: 3, dir: mkdtempSync(join(tmpdir(), "weft-soak-")) });
    lab.writeRegistryConfig();
    for (const h of lab.hosts) lab.startWeft(h, ["--healthz-port", String(METRICS_PORT), "--healthz-ip", "127.0.0.1"]);
    const envs = [];
    for (const h of lab.hosts) envs.push(await lab.waitForSubnetEnv(h));
    const pods: LabPod[] = [];
    for (const [i, h] of lab.hosts.entries()) pods.push(await lab.addPod(h, envs[i] as (typeof envs)[number]));
    const [p1, p2, p3] = pods as [LabPod, LabPod, LabPod];
    const hosts = lab.hosts as LabHost[];
    const pids = hosts.map((h) => h.weft?.pid as number);
    for (const h of hosts) scrapers.push(new Scraper(h.ns, track));
    const churn = new LeaseChurn(lab.registryDir, new Set(envs.map((e) => Number(e.subnet.split(".")[2]))));
    const expectedLeases = () => hosts.length - 1 + churn.extras.size;

    /** Waits until every weftd shows the expected lease count; returns ms taken, or -1 on timeout. */
    const converge = async (): Promise<number> => {
      const t0 = Date.now();
      const want = expectedLeases();
      while (Date.now() - t0 < CONVERGE_MS) {
        const counts = await Promise.all(scrapers.map(async (s) => metricValue(await s.scrape(), "weft_leases")));
        if (counts.every((c) => c === want)) return Date.now() - t0;
        await sleep(100);
      }
      return -1;
    };
    if ((await converge()) < 0) throw new Error("the three weftd never agreed on 2 peer leases");
    log(`soak: lab up in ${((Date.now() - started) / 1000).toFixed(1)} s, ${seconds} s of traffic and lease churn`);

    await Promise.all(scrapers.map((s) => s.scrape()));
    const fdStart = await Promise.all(pids.map(fdCount));
    const t0 = Date.now();
    const deadline = t0 + seconds * 1000;
    const warmupMs = Math.min(60_000, (seconds * 1000) / 3);
    const running = () => !stopping && Date.now() < deadline;

    // Crashes: every weftd alive, checked each second.
    let crashes = 0;
    const dead = new Set<number>();
    const watchdog = setInterval(() => {
      for (const [i, pid] of pids.entries()) {
        if (!dead.has(pid) && (!alive(pid) || hosts[i]?.weft?.exitCode !== null)) {
          dead.add(pid);
          crashes++;
          log(`soak: weftd ${pid} on ${hosts[i]?.ns} is gone: ${lab?.logTail(hosts[i] as LabHost, 5)}`);
        }
      }
    }, 1000);

    const tcp = { transfers: 0, failures: 0, bytes: 0 };
    // RSS every 10 s.
    const rss: { at: number; kb: number[]; anon: number[] }[] = [];
    const sampleRss = () => {
      if (dead.size > 0) return;
      const readings = pids.map(rssKb);
      const sample = { at: Date.now() - t0, kb: readings.map((r) => r.rss), anon: readings.map((r) => r.anon) };
      rss.push(sample);
      if (rss.length % 6 === 1) {
        const mb = (kb: number[]) => kb.map((k) => (k / 1024).toFixed(1)).join(" / ");
        log(
          `soak: ${Math.round(sample.at / 1000)} s: RSS ${mb(sample.kb)} MB (anonymous ${mb(sample.anon)}), ${churn.extras.size} extra leases, ${tcp.transfers} TCP transfers`,
        );
      }
    };
    sampleRss();
    const rssTimer = setInterval(sampleRss, RSS_SAMPLE_MS);

    // TCP: verified transfers round the pods.
    const tcpLoop = (async () => {
      const pairs: [LabPod, LabPod][] = [
        [p1, p2],
        [p2, p3],
        [p3, p1],
      ];
      for (let i = 0; running(); i++) {
        const [a, b] = pairs[i % pairs.length] as [LabPod, LabPod];
        try {
          const r = await transfer(a, b, TCP_MEGABYTES, track);
          tcp.transfers++;
          if (r.ok) tcp.bytes += r.bytes;
          else {
            tcp.failures++;
            log(`soak: transfer ${a.ip} -> ${b.ip} failed: ${r.detail}`);
          }
        } catch (err) {
          if (stopping) break;
          tcp.transfers++;
          tcp.failures++;
          log(`soak: transfer ${a.ip} -> ${b.ip} failed: ${(err as Error).message}`);
        }
        await sleep(250);
      }
    })();

    // UDP: a steady stream p3 -> p1.
    const udpRecv = spawnUdpgen(p1.ns, [
      "recv",
      "--bind",
      p1.ip,
      "--port",
      "5300",
      "--size",
      "256",
      "--run",
      "7",
      "--timeout",
      String(seconds + 60),
    ]);
    track(udpRecv.child);
    await udpRecv.ready;
    const udpSend = spawnUdpgen(p3.ns, [
      "send",
      "--dst",
      p1.ip,
      "--port",
      "5300",
      "--size",
      "256",
      "--run",
      "7",
      "--rate",
      String(UDP_RATE),
      "--duration",
      String(seconds),
    ]);
    track(udpSend.child);

    // ICMP: a ping every 200 ms p2 -> p3.
    const ping = spawn("ip", ["netns", "exec", p2.ns, "ping", "-i", "0.2", "-w", String(seconds), p3.ip], {
      stdio: ["ignore", "pipe", "ignore"],
    });
    track(ping);
    let pingOut = "";
    ping.stdout?.on("data", (d) => {
      pingOut += String(d).slice(-2000);
      pingOut = pingOut.slice(-2000);
    });
    const pingDone = new Promise<void>((r) => ping.once("close", () => r()));

    // Lease churn.
    const leases = { changes: 0, added: 0, removed: 0, lost: 0, slowestMs: 0, totalMs: 0 };
    while (running()) {
      const n = randomInt(1, 3);
      for (let k = 0; k < n; k++) {
        const add = churn.extras.size === 0 || (churn.extras.size < MAX_EXTRA_LEASES && Math.random() < 0.55);
        if (add) {
          churn.add();
          leases.added++;
        } else {
          churn.remove();
          leases.removed++;
        }
      }
      leases.changes++;
      const took = await converge();
      if (took < 0) {
        leases.lost++;
        const counts = await Promise.all(scrapers.map(async (s) => metricValue(await s.scrape(), "weft_leases")));
        log(`soak: lease change ${leases.changes}: expected ${expectedLeases()} everywhere, saw ${counts.join(", ")}`);
      } else {
        leases.slowestMs = Math.max(leases.slowestMs, took);
        leases.totalMs += took;
      }
      await sleep(randomInt(1000, 3000));
    }

    // Traffic stops by itself at the deadline; wait for the stragglers.
    await tcpLoop;
    const sent = (await udpSend.result) as SendResult;
    await sleep(500);
    udpRecv.child.kill("SIGTERM");
    const got = (await udpRecv.result) as RecvResult;
    await pingDone;
    sampleRss();
    clearInterval(rssTimer);
    const finalText = await Promise.all(scrapers.map((s) => s.scrape()));

    // Idle: nothing but the registry's timers (next expiry, 30 s safety rescan) should run now.
    await sleep(2000);
    const idle0 = pids.map(cpuTicks);
    await sleep(5000);
    const idleTicks = pids.map((pid, i) => cpuTicks(pid) - (idle0[i] as number));
    await Promise.all(scrapers.map((s) => s.scrape()));
    const fdEnd = await Promise.all(pids.map(fdCount));
    clearInterval(watchdog);

    // Summary.
    // V8 grows and shrinks its heap in a saw-tooth of several MB between full
    // collections, so each end is the least RSS of a window of samples (the
    // low points after a collection): a leak lifts the low points too.
    const endAt = rss[rss.length - 1]?.at ?? 0;
    const windowMs = warmupMs;
    const least = (from: number, to: number, of: "kb" | "anon" = "kb") => {
      const inWindow = rss.filter((s) => s.at >= from && s.at <= to);
      return pids.map((_, i) => Math.min(...inWindow.map((s) => s[of][i] as number)));
    };
    const rssStart = least(warmupMs, warmupMs + windowMs - 1);
    const rssEnd = least(endAt - windowMs + 1, endAt);
    const anonStart = least(warmupMs, warmupMs + windowMs - 1, "anon");
    const anonEnd = least(endAt - windowMs + 1, endAt, "anon");
    const rssPeak = pids.map((_, i) => Math.max(...rss.map((s) => s.kb[i] as number)));
    const growthKb = pids.map((_, i) => (rssEnd[i] as number) - (rssStart[i] as number));
    const mb = (kb: number[]) => kb.map((k) => (k / 1024).toFixed(1)).join("/");
    const fdDelta = pids.map((_, i) => (fdEnd[i] as number) - (fdStart[i] as number));
    const pingStats = /(\d+) packets transmitted, (\d+) received/.exec(pingOut);
    const pingSent = Number(pingStats?.[1] ?? 0);
    const pingGot = Number(pingStats?.[2] ?? 0);
    const drops: Record<string, number> = {};
    for (const text of finalText) {
      for (const m of text.matchAll(/^weft_drops_total\{direction="(\w+)",reason="(\w+)"\} (\S+)$/gm)) {
        const key = `${m[1]}/${m[2]}`;
        drops[key] = (drops[key] ?? 0) + Number(m[3]);
      }
    }
    const checks: SoakCheck[] = [
      {
        name: "crashes",
        value: crashes,
        limit: "0",
        ok: crashes === 0,
        detail: `weftd PIDs ${pids.join(", ")}`,
      },
      {
        name: "lost lease updates",
        value: leases.lost,
        limit: "0",
        ok: leases.lost === 0 && leases.changes > 0,
        detail: `${leases.changes} changes (${leases.added} added, ${leases.removed} removed), converged in ≤ ${leases.slowestMs} ms, mean ${Math.round(leases.totalMs / Math.max(1, leases.changes - leases.lost))} ms`,
      },
      {
        name: "RSS growth (kB)",
        value: Math.max(...growthKb),
        limit: `< ${RSS_LIMIT_KB}`,
        ok: growthKb.every((g) => g < RSS_LIMIT_KB),
        detail: `per weftd ${growthKb.join(", ")} kB: least RSS of ${Math.round(warmupMs / 1000)}..${Math.round((warmupMs + windowMs) / 1000)} s ${mb(rssStart)} MB, of the last ${Math.round(windowMs / 1000)} s ${mb(rssEnd)} MB`,
      },
      {
        name: "file descriptors delta",
        value: Math.max(...fdDelta.map(Math.abs)),
        limit: "0",
        ok: fdDelta.every((d) => d === 0),
        detail: `start ${fdStart.join(", ")}, end ${fdEnd.join(", ")}`,
      },
      {
        name: "idle CPU ticks over 5 s",
        value: Math.max(...idleTicks),
        limit: `≤ ${IDLE_TICKS_LIMIT}`,
        ok: idleTicks.every((t) => t <= IDLE_TICKS_LIMIT),
        detail: `per weftd ${idleTicks.join(", ")} ticks (1 tick = 10 ms)`,
      },
      {
        name: "TCP transfers corrupted or failed",
        value: tcp.failures,
        limit: "0",
        ok: tcp.failures === 0 && tcp.transfers > 0,
        detail: `${tcp.transfers} transfers of ${TCP_MEGABYTES} MiB, ${(tcp.bytes / 1024 ** 3).toFixed(2)} GiB verified`,
      },
    ];
    const figures: Record<string, number | string> = {
      tcpTransfers: tcp.transfers,
      tcpGiB: Number((tcp.bytes / 1024 ** 3).toFixed(3)),
      udpSent: sent.sent,
      udpReceived: got.received,
      udpLossPercent: Number((100 * (1 - got.received / Math.max(1, sent.sent))).toFixed(3)),
      pingSent,
      pingReceived: pingGot,
      leaseChanges: leases.changes,
      leaseConvergeMaxMs: leases.slowestMs,
      extraLeasesAtEnd: churn.extras.size,
      rssStartMB: mb(rssStart),
      rssEndMB: mb(rssEnd),
      rssPeakMB: mb(rssPeak),
      rssAnonStartMB: mb(anonStart),
      rssAnonEndMB: mb(anonEnd),
      drops: Object.entries(drops)
        .filter(([, v]) => v > 0)
        .map(([k, v]) => `${k}=${v}`)
        .join(" "),
    };
    const result: SoakResult = { seconds, ok: checks.every((c) => c.ok), checks, figures };
    log("");
    log(`soak: ${seconds} s, 3 hosts, ${result.ok ? "PASS" : "FAIL"}`);
    log(
      table(
        ["check", "value", "limit", "ok", "detail"],
        checks.map((c) => [c.name, String(c.value), c.limit, c.ok ? "yes" : "NO", c.detail]),
      ),
    );
    log("");
    log(
      table(
        ["figure", "value"],
        Object.entries(figures).map(([k, v]) => [k, String(v)]),
      ),
    );
    return result;
  } finally {
    await cleanup();
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}

/** One verified TCP transfer a -> b through the tunnel. */
async function transfer(
  a: LabPod,
  b: LabPod,
  megabytes: number,
  track: (c: ChildProcess) => void,
): Promise<{ ok: boolean; bytes: number; detail: string }> {
  const server = spawn("ip", ["netns", "exec", b.ns, process.execPath, TRANSFER, "server", b.ip, "5400"], {
    stdio: ["ignore", "pipe", "ignore"],
  });
  track(server);
  let out = "";
  server.stdout?.on("data", (d) => {
    out += String(d);
  });
  const serverDone = new Promise<void>((r) => server.once("close", () => r()));
  try {
    await new Promise<void>((resolve, reject) => {
      server.stdout?.once("data", () => resolve());
      server.once("exit", (code) => reject(new Error(`server exited ${code}`)));
    });
    const client = spawn(
      "ip",
      ["netns", "exec", a.ns, process.execPath, TRANSFER, "client", b.ip, "5400", String(megabytes)],
      {
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    track(client);
    let cout = "";
    let cerr = "";
    client.stdout?.on("data", (d) => {
      cout += String(d);
    });
    client.stderr?.on("data", (d) => {
      cerr += String(d);
    });
    const timer = setTimeout(() => client.kill("SIGKILL"), 60_000);
    const code = await new Promise<number | null>((r) => client.once("close", (c) => r(c)));
    clearTimeout(timer);
    if (code !== 0) return { ok: false, bytes: 0, detail: `client exited ${code}: ${cerr.trim()}` };
    const serverTimer = setTimeout(() => server.kill("SIGKILL"), 10_000);
    await serverDone;
    clearTimeout(serverTimer);
    const sent = JSON.parse(cout.trim()) as { bytes: number; sha256: string };
    const received = JSON.parse(out.split("\n").find((l) => l.startsWith("{")) ?? "{}") as Partial<typeof sent>;
    const ok = received.bytes === sent.bytes && received.sha256 === sent.sha256;
    return {
      ok,
      bytes: sent.bytes,
      detail: ok ? "" : `sent ${sent.bytes} ${sent.sha256}, got ${received.bytes} ${received.sha256}`,
    };
  } finally {
    if (server.exitCode === null) server.kill("SIGKILL");
  }
}

function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i] as number)).join(" | ")} |`;
  return [line(header), `|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`, ...rows.map(line)].join("\n");
}

async function main(): Promise<number> {
  const { values } = parseArgs({ options: { seconds: { type: "string", default: "600" } } });
  const seconds = Number(values.seconds);
  if (!Number.isInteger(seconds) || seconds < 20 || seconds > 24 * 3600) {
    process.stderr.write(`soak: --seconds ${values.seconds} must be a whole number of seconds between 20 and 86400\n`);
    return 2;
  }
  const result = await runSoak(seconds);
  process.stdout.write(`SOAK_RESULT ${JSON.stringify(result)}\n`);
  return result.ok ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err: Error) => {
    process.stderr.write(`soak: ${err.stack ?? err.message}\n`);
    process.exit(1);
  },
);

// ICMP and MTU: two hosts whose underlay links have different MTUs, joined by
// a router, weftd on both (one file registry shared on this machine).
//
//   p1 ── h1 ──eth0 (MTU 1500)── r ──(MTU 1400) eth0── h2 ── p2
//         198.18.1.1   198.18.1.254 | 198.18.2.254   198.18.2.2
//         flannel0 1472                              flannel0 1372
//
// Path-MTU discovery runs on two layers, and both have to work for a pod on
// h1 to talk to a pod on h2 without black holes:
//
// 1. Underlay. h1's weft sends datagrams of up to 1472 + 28 = 1500 bytes with
//    DF set (a UDP socket's default, IP_PMTUDISC_WANT). r cannot put a 1500-
//    byte packet on its 1400 link, drops it and sends ICMP Fragmentation
//    Needed (MTU 1400) to h1. h1's kernel remembers 1400 for 198.18.2.2 (a
//    route exception) and from then on fragments larger datagrams itself; h2
//    reassembles them before weft reads them. (A UDP GSO run with segments
//    over the path MTU is refused with EINVAL; the addon then sends the run
//    datagram by datagram, which the kernel fragments.)
//
// 2. Overlay. A reassembled datagram on h2 may hold an inner packet longer
//    than h2's flannel0 (1372): weft on h2 drops it (counted `oversize`) and,
//    when the inner packet has DF set, builds ICMP Fragmentation Needed with
//    next-hop MTU 1372, from h2's flannel0 address to the inner source, and
//    sends it back through the tunnel to the peer the datagram came from. weft
//    on h1 decapsulates it like any packet and writes it into flannel0; h1's
//    kernel routes it to p1, whose kernel lowers its path MTU to p2 to 1372:
//    TCP shrinks its segments, ping -M do reports the MTU.
//
// Pods normally never need step 2 for TCP, because each pod's MTU comes from
// its own host's subnet.env and the MSS each side announces already fits the
// smaller end. It matters when an MSS does not tell the truth (a pod with a
// wrong MTU, clamping gone wrong) and for DF traffic that is not TCP.

import assert from "node:assert/strict";
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { spawnUdpgen } from "../bench/udpgen.js";
import { nsRun, readSubnetEnvFile, type SubnetEnvFields, sh } from "../lab/topology.js";

const HERE = new URL(".", import.meta.url).pathname;
/** The launcher users run (node with weftd's settings); NODE picks this node. */
const WEFTD = new URL("../../bin/weftd", import.meta.url).pathname;
const TRANSFER = join(HERE, "helpers", "tcp-transfer.js");
const METRICS_PORT = 9105;
const NETWORK_CONFIG = '{"Network":"10.244.0.0/16","Backend":{"Type":"udp","Port":8285}}';

interface Host {
  readonly name: string;
  readonly ns: string;
  readonly underlayIp: string;
  readonly dir: string;
  weft: ChildProcess | null;
  env: SubnetEnvFields | null;
}

interface Pod {
  readonly ns: string;
  readonly ip: string;
  /** The host side of the pod's veth: the first address of the host's subnet. */
  readonly gateway: string;
}

/** Namespaces and processes this file creates, removed in after() and, as a last resort, at exit. */
const namespaces: string[] = [];
const children = new Set<ChildProcess>();

function removeEverythingNow(): void {
  for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  for (const ns of namespaces.splice(0)) {
    try {
      execFileSync("ip", ["netns", "del", ns], { stdio: "ignore" });
    } catch {
      // Already gone.
    }
  }
}
process.once("exit", removeEverythingNow);

async function addNamespace(name: string): Promise<string> {
  namespaces.push(name);
  await sh("ip", ["netns", "add", name]);
  await sh("ip", ["-n", name, "link", "set", "lo", "up"]);
  return name;
}

async function sysctls(ns: string, settings: Record<string, string>): Promise<void> {
  for (const [key, value] of Object.entries(settings)) await nsRun(ns, "sysctl", ["-qw", `${key}=${value}`]);
}

/** A veth pair between two namespaces, each end with its MTU, address and up. */
async function link(a: string, aName: string, aAddr: string, b: string, bName: string, bAddr: string, mtu: number) {
  await sh("ip", [
    "-n",
    a,
    "link",
    "add",
    aName,
    "mtu",
    String(mtu),
    "type",
    "veth",
    "peer",
    "name",
    bName,
    "netns",
    b,
  ]);
  await sh("ip", ["-n", b, "link", "set", bName, "mtu", String(mtu)]);
  for (const [ns, dev, addr] of [
    [a, aName, aAddr],
    [b, bName, bAddr],
  ] as const) {
    await sh("ip", ["-n", ns, "addr", "add", addr, "dev", dev]);
    await sh("ip", ["-n", ns, "link", "set", dev, "up"]);
  }
}

function startWeft(host: Host, registryDir: string): void {
  const log = openSync(join(host.dir, "weftd.log"), "a");
  const child = spawn(
    "ip",
    [
      "netns",
      "exec",
      host.ns,
      WEFTD,
      "--iface",
      "eth0",
      "--subnet-file",
      join(host.dir, "subnet.env"),
      "--registry-dir",
      registryDir,
      "--healthz-port",
      String(METRICS_PORT),
      "--healthz-ip",
      "127.0.0.1",
    ],
    { stdio: ["ignore", log, log], env: { ...process.env, NODE: process.execPath } },
  );
  closeSync(log);
  children.add(child);
  host.weft = child;
}

function logTail(host: Host): string {
  try {
    return readFileSync(join(host.dir, "weftd.log"), "utf8").trim().split("\n").slice(-10).join("\n");
  } catch {
    return "(no log)";
  }
}

async function waitForSubnetEnv(host: Host): Promise<SubnetEnvFields> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    try {
      return readSubnetEnvFile(join(host.dir, "subnet.env"));
    } catch {
      // Not written yet.
    }
    if (host.weft?.exitCode !== null) throw new Error(`weftd on ${host.name} exited: ${logTail(host)}`);
    if (Date.now() > deadline) throw new Error(`weftd on ${host.name} wrote no subnet.env: ${logTail(host)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** A pod the way the flannel CNI chain wires one: a veth into the host, MTU from subnet.env. */
async function addPod(host: Host, env: SubnetEnvFields, name: string): Promise<Pod> {
  const ns = await addNamespace(name);
  const [gateway, len] = env.subnet.split("/") as [string, string];
  const ip = gateway.replace(/\d+$/, (last) => String(Number(last) + 1));
  await sh("ip", [
    "-n",
    host.ns,
    "link",
    "add",
    "pod",
    "mtu",
    String(env.mtu),
    "type",
    "veth",
    "peer",
    "name",
    "eth0",
    "netns",
    ns,
  ]);
  await sh("ip", ["-n", host.ns, "addr", "add", `${gateway}/${len}`, "dev", "pod"]);
  await sh("ip", ["-n", host.ns, "link", "set", "pod", "up"]);
  await sh("ip", ["-n", ns, "link", "set", "eth0", "mtu", String(env.mtu)]);
  await sh("ip", ["-n", ns, "addr", "add", `${ip}/${len}`, "dev", "eth0"]);
  await sh("ip", ["-n", ns, "link", "set", "eth0", "up"]);
  await sh("ip", ["-n", ns, "route", "add", "default", "via", gateway]);
  return { ns, ip, gateway };
}

async function metrics(host: Host): Promise<string> {
  return nsRun(host.ns, process.execPath, [
    "-e",
    `fetch("http://127.0.0.1:${METRICS_PORT}/metrics").then(r => r.text()).then(t => process.stdout.write(t))`,
  ]);
}

function metricValue(text: string, name: string, labels = ""): number {
  const prefix = labels === "" ? `${name} ` : `${name}{${labels}} `;
  const line = text.split("\n").find((l) => l.startsWith(prefix));
  return line === undefined ? Number.NaN : Number(line.split(" ").pop());
}

/** Runs a command in a namespace and returns its stdout also when it exits non-zero (ping does after errors). */
function nsRunAnyway(ns: string, cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve) => {
    const child = spawn("ip", ["netns", "exec", ns, cmd, ...args], { stdio: ["ignore", "pipe", "pipe"] });
    children.add(child);
    let out = "";
    child.stdout.on("data", (d) => {
      out += String(d);
    });
    child.stderr.on("data", (d) => {
      out += String(d);
    });
    child.once("close", () => resolve(out));
  });
}

/** Streams `megabytes` of random bytes from pod a to pod b over TCP; returns both ends' counts and hashes. */
async function transfer(a: Pod, b: Pod, megabytes: number, port: number) {
  const server = spawn("ip", ["netns", "exec", b.ns, process.execPath, TRANSFER, "server", b.ip, String(port)]);
  children.add(server);
  try {
    let out = "";
    server.stdout.on("data", (d) => {
      out += String(d);
    });
    await new Promise<void>((resolve, reject) => {
      server.stdout.once("data", () => resolve());
      server.once("exit", (code) => reject(new Error(`transfer server exited ${code}`)));
    });
    const started = Date.now();
    const sent = JSON.parse(
      await nsRun(a.ns, process.execPath, [TRANSFER, "client", b.ip, String(port), String(megabytes)], {
        timeoutMs: 120_000,
      }),
    ) as { bytes: number; sha256: string };
    const seconds = (Date.now() - started) / 1000;
    await new Promise<void>((resolve) => (server.exitCode !== null ? resolve() : server.once("exit", () => resolve())));
    const received = JSON.parse(out.split("\n").find((l) => l.startsWith("{")) ?? "{}") as typeof sent;
    return { sent, received, seconds };
  } finally {
    if (server.exitCode === null) server.kill();
  }
}

/** The path MTU a namespace's kernel has learned for `dst` (from `ip route get`), or null. */
async function learnedMtu(ns: string, dst: string): Promise<number | null> {
  const m = /\bmtu (\d+)/.exec(await nsRun(ns, "ip", ["route", "get", dst]));
  return m === null ? null : Number(m[1]);
}

describe("hosts with different underlay MTUs (netns, router between them)", { timeout: 300_000 }, () => {
  const prefix = `pmt${process.pid % 10000}`;
  const dir = mkdtempSync(join(tmpdir(), "weft-pmtu-"));
  const registryDir = join(dir, "registry");
  let h1: Host;
  let h2: Host;
  let p1: Pod;
  let p2: Pod;

  before(async () => {
    const router = await addNamespace(`${prefix}-r`);
    const host = async (name: string, underlayIp: string): Promise<Host> => {
      const ns = await addNamespace(`${prefix}-${name}`);
      const hostDir = join(dir, name);
      mkdirSync(hostDir, { recursive: true });
      return { name, ns, underlayIp, dir: hostDir, weft: null, env: null };
    };
    h1 = await host("h1", "198.18.1.1");
    h2 = await host("h2", "198.18.2.2");
    const forwarding = {
      "net.ipv4.ip_forward": "1",
      "net.ipv4.conf.all.rp_filter": "0",
      "net.ipv4.conf.default.rp_filter": "0",
    };
    for (const ns of [router, h1.ns, h2.ns]) await sysctls(ns, forwarding);
    await link(h1.ns, "eth0", "198.18.1.1/24", router, "eth1", "198.18.1.254/24", 1500);
    await link(h2.ns, "eth0", "198.18.2.2/24", router, "eth2", "198.18.2.254/24", 1400);
    await sh("ip", ["-n", h1.ns, "route", "add", "198.18.2.0/24", "via", "198.18.1.254"]);
    await sh("ip", ["-n", h2.ns, "route", "add", "198.18.1.0/24", "via", "198.18.2.254"]);

    mkdirSync(registryDir, { recursive: true });
    writeFileSync(join(registryDir, "config"), NETWORK_CONFIG);
    startWeft(h1, registryDir);
    startWeft(h2, registryDir);
    h1.env = await waitForSubnetEnv(h1);
    h2.env = await waitForSubnetEnv(h2);
    p1 = await addPod(h1, h1.env, `${prefix}-p1`);
    p2 = await addPod(h2, h2.env, `${prefix}-p2`);
    await nsRun(p1.ns, "ping", ["-c", "2", "-i", "0.2", "-W", "3", p2.ip]);
  });

  after(async () => {
    for (const host of [h1, h2]) {
      const child = host?.weft;
      if (child == null || child.exitCode !== null) continue;
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.kill("SIGTERM");
      await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
    }
    removeEverythingNow();
    rmSync(dir, { recursive: true, force: true });
  });

  it("gives each host's flannel0 its underlay MTU minus 28", () => {
    assert.equal(h1.env?.mtu, 1472);
    assert.equal(h2.env?.mtu, 1372);
  });

  it("carries a bulk TCP transfer intact from the 1500-MTU side to the 1400-MTU side", async (t) => {
    const { sent, received, seconds } = await transfer(p1, p2, 64, 5001);
    assert.equal(sent.bytes, 64 * 1024 * 1024);
    assert.equal(received.bytes, sent.bytes);
    assert.equal(received.sha256, sent.sha256);
    t.diagnostic(`64 MiB h1 -> h2 in ${seconds.toFixed(2)} s`);
  });

  it("carries a bulk TCP transfer intact from the 1400-MTU side to the 1500-MTU side", async (t) => {
    const { sent, received, seconds } = await transfer(p2, p1, 64, 5002);
    assert.equal(sent.bytes, 64 * 1024 * 1024);
    assert.equal(received.bytes, sent.bytes);
    assert.equal(received.sha256, sent.sha256);
    t.diagnostic(`64 MiB h2 -> h1 in ${seconds.toFixed(2)} s`);
  });

  it("answers a DF packet too big for h2's flannel0 with Fragmentation Needed (MTU 1372) through the tunnel, and the pod learns the path MTU", async () => {
    await nsRun(p1.ns, "ip", ["route", "flush", "cache"]);
    await nsRun(h1.ns, "ip", ["route", "flush", "cache"]);
    const before = await metrics(h2);
    // 1444 bytes of ICMP data: a 1472-byte packet, which fits p1, h1 and h1's flannel0 but not h2's.
    const out = await nsRunAnyway(p1.ns, "ping", ["-M", "do", "-s", "1444", "-c", "4", "-i", "0.5", "-W", "1", p2.ip]);
    const flannel0OfH2 = p2.gateway.replace(/\.1$/, ".0");
    assert.match(
      out,
      new RegExp(`From ${flannel0OfH2.replace(/\./g, "\\.")} icmp_seq=\\d+ Frag needed and DF set \\(mtu = 1372\\)`),
    );
    const after = await metrics(h2);
    assert.ok(
      metricValue(after, "weft_icmp_sent_total", 'type="frag_needed"') >
        metricValue(before, "weft_icmp_sent_total", 'type="frag_needed"'),
    );
    assert.equal(await learnedMtu(p1.ns, p2.ip), 1372, "p1's kernel learned the overlay path MTU");
    assert.equal(await learnedMtu(h1.ns, h2.underlayIp), 1400, "h1's kernel learned the underlay path MTU from r");
    // What fits h2's flannel0 exactly goes through with DF.
    const fits = await nsRun(p1.ns, "ping", ["-M", "do", "-s", "1344", "-c", "2", "-i", "0.3", "-W", "3", p2.ip]);
    assert.match(fits, /2 received/);
  });

  it("TCP finds the path MTU through weft when the receiver announces an MSS larger than the path", async (t) => {
    // p2 announces the MSS of a 1472-byte MTU, so p1 sends 1472-byte segments
    // that only Fragmentation Needed from weft on h2 can shrink.
    await nsRun(p2.ns, "ip", ["route", "change", "default", "via", p2.gateway, "dev", "eth0", "advmss", "1432"]);
    await nsRun(p1.ns, "ip", ["route", "flush", "cache"]);
    await nsRun(h1.ns, "ip", ["route", "flush", "cache"]);
    try {
      assert.equal(await learnedMtu(p1.ns, p2.ip), null, "p1 starts without a learned path MTU");
      const before = metricValue(await metrics(h2), "weft_icmp_sent_total", 'type="frag_needed"');
      const { sent, received, seconds } = await transfer(p1, p2, 64, 5003);
      assert.equal(received.bytes, sent.bytes);
      assert.equal(received.sha256, sent.sha256);
      const fragNeeded = metricValue(await metrics(h2), "weft_icmp_sent_total", 'type="frag_needed"') - before;
      assert.ok(fragNeeded >= 1, "weft on h2 sent Fragmentation Needed");
      assert.equal(await learnedMtu(p1.ns, p2.ip), 1372);
      t.diagnostic(
        `64 MiB with an MSS of 1432 announced: ${seconds.toFixed(2)} s, ${fragNeeded} Fragmentation Needed sent by h2`,
      );
    } finally {
      await nsRun(p2.ns, "ip", ["route", "change", "default", "via", p2.gateway, "dev", "eth0"]);
    }
  });

  it("answers a flood of unroutable packets from a pod with a bounded rate of Net Unreachable", async (t) => {
    const held = new Set([h1.env, h2.env].map((e) => Number(e?.subnet.split(".")[2])));
    const unleased = `10.244.${[200, 201, 202].find((n) => !held.has(n))}.9`;
    const before = await metrics(h1);
    // Count what reaches the pod, not what weft says it sent.
    const capture = spawn(
      "ip",
      ["netns", "exec", p1.ns, "tcpdump", "-n", "-l", "-i", "eth0", "icmp[icmptype] == 3 and icmp[icmpcode] == 0"],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    children.add(capture);
    let lines = "";
    capture.stdout.on("data", (d) => {
      lines += String(d);
    });
    await new Promise<void>((resolve, reject) => {
      capture.stderr.on("data", (d) => {
        if (/listening on/.test(String(d))) resolve();
      });
      capture.once("exit", (code) => reject(new Error(`tcpdump exited ${code}`)));
    });
    const flood = spawnUdpgen(p1.ns, ["send", "--dst", unleased, "--port", "9", "--size", "64", "--duration", "2"]);
    children.add(flood.child);
    const sent = (await flood.result) as { sent: number; seconds: number };
    await new Promise((r) => setTimeout(r, 500));
    const stopped = new Promise((resolve) => capture.once("exit", resolve));
    capture.kill("SIGINT");
    await stopped;
    const received = lines.split("\n").filter((l) => /ICMP net 10\.244\.\d+\.9 unreachable/.test(l)).length;
    const after = await metrics(h1);
    const limited =
      metricValue(after, "weft_icmp_rate_limited_total") - metricValue(before, "weft_icmp_rate_limited_total");
    const answered =
      metricValue(after, "weft_icmp_sent_total", 'type="net_unreachable"') -
      metricValue(before, "weft_icmp_sent_total", 'type="net_unreachable"');
    // A token bucket of 10 per second per source with a burst of 10.
    const bound = Math.ceil(10 + 10 * sent.seconds) + 1;
    t.diagnostic(
      `${sent.sent} unroutable datagrams in ${sent.seconds.toFixed(2)} s: ${received} Net Unreachable reached the pod ` +
        `(bound ${bound}), weft sent ${answered} and suppressed ${limited}`,
    );
    assert.ok(received >= 10, "the first ones are answered");
    assert.ok(received <= bound, `${received} Net Unreachable in ${sent.seconds.toFixed(2)} s`);
    assert.ok(limited > 0, "weft_icmp_rate_limited_total grows");
    assert.ok(answered <= bound);
  });
});

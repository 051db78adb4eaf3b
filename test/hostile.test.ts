// Hostile input on the wire: two hosts and two pods in network namespaces,
// weftd on both (file registry), and datagrams crafted by hand and thrown at
// h2's port 8285. A UDP datagram's payload is the inner IPv4 packet (flannel's
// udp backend adds nothing), so ordinary UDP sockets craft any inner packet:
// no raw socket needed. A UDP listener in p2 reports every datagram the
// kernel delivers to it, so "dropped" means both "counted by weft" and "never
// seen by the pod".
//
//   stranger (198.18.3.2, holds no lease) ──x0──┐
//   h1 (198.18.0.1, leased) ──── eth0 ──── h2 (198.18.0.2:8285) ── p2 (listener)
//    └─ p1                                      weftd under test

import assert from "node:assert/strict";
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { spawnUdpgen } from "../bench/udpgen.js";
import { Lab, type LabHost, type LabPod, nsRun, sh } from "../lab/topology.js";
import { ipv4Packet } from "./helpers/packets.js";

const METRICS_PORT = 9104;
const LISTEN_PORT = 7000;
const STRANGER_IP = "198.18.3.2";
const STRANGER_GW = "198.18.3.1";

async function metrics(host: LabHost): Promise<string> {
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

const rxDrops = (text: string, reason: string) =>
  metricValue(text, "weft_drops_total", `direction="rx",reason="${reason}"`);

/** An inner UDP packet whose data starts with `tag`, padded so the IP packet is `total` bytes (UDP checksum 0: none). */
function innerUdp(src: string, dst: string, tag: string, total: number, dontFragment = false): Uint8Array {
  const udp = new Uint8Array(total - 20);
  udp[0] = 0x9c; // source port 40000
  udp[1] = 0x40;
  udp[2] = LISTEN_PORT >> 8;
  udp[3] = LISTEN_PORT & 0xff;
  udp[4] = udp.length >> 8;
  udp[5] = udp.length & 0xff;
  udp.set(new TextEncoder().encode(tag), 8);
  return ipv4Packet({ src, dst, protocol: 17, payload: udp, dontFragment });
}

/** Sends each packet as one datagram from `bind` (inside `ns`) to `dst`:8285. */
async function sendDatagrams(ns: string, bind: string, dst: string, packets: Uint8Array[]): Promise<void> {
  const script = `
    const dgram = require("node:dgram");
    const [bind, dst, ...hex] = process.argv.slice(1);
    const s = dgram.createSocket("udp4");
    s.bind({ address: bind }, () => {
      let i = 0;
      const next = (err) => {
        if (err) { process.stderr.write(err.message + "\\n"); process.exitCode = 1; }
        if (i < hex.length) s.send(Buffer.from(hex[i++], "hex"), 8285, dst, next); else s.close();
      };
      next();
    });`;
  await nsRun(ns, process.execPath, ["-e", script, bind, dst, ...packets.map((p) => Buffer.from(p).toString("hex"))]);
}

interface Delivery {
  len: number;
  from: string;
  tag: string;
}

/** A UDP listener in a pod that reports every datagram delivered to it. */
class PodListener {
  readonly received: Delivery[] = [];
  private readonly child: ChildProcess;
  readonly ready: Promise<void>;

  constructor(pod: LabPod) {
    const script = `
      const s = require("node:dgram").createSocket("udp4");
      s.on("message", (m, r) => process.stdout.write(JSON.stringify({
        len: m.length, from: r.address, tag: m.subarray(0, 24).toString("latin1").replace(/\\0.*$/s, "") }) + "\\n"));
      s.bind(${LISTEN_PORT}, "${pod.ip}", () => process.stdout.write('{"ready":true}\\n'));`;
    this.child = spawn("ip", ["netns", "exec", pod.ns, process.execPath, "-e", script], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    let buffered = "";
    this.ready = new Promise((resolve, reject) => {
      this.child.once("exit", (code) => reject(new Error(`listener exited ${code}`)));
      this.child.stdout?.on("data", (chunk) => {
        buffered += String(chunk);
        let nl = buffered.indexOf("\n");
        while (nl >= 0) {
          const msg = JSON.parse(buffered.slice(0, nl));
          buffered = buffered.slice(nl + 1);
          nl = buffered.indexOf("\n");
          if (msg.ready === true) resolve();
          else this.received.push(msg as Delivery);
        }
      });
    });
  }

  tagged(prefix: string): Delivery[] {
    return this.received.filter((d) => d.tag.startsWith(prefix));
  }

  stop(): void {
    if (this.child.exitCode === null) this.child.kill();
  }
}

/** The host kernel's count of datagrams dropped because a UDP socket's receive buffer was full. */
async function udpReceiveBufferErrors(host: LabHost): Promise<number> {
  const [header, values] = (await nsRun(host.ns, "cat", ["/proc/net/snmp"]))
    .split("\n")
    .filter((l) => l.startsWith("Udp: "))
    .map((l) => l.split(" "));
  return Number(values?.[header?.indexOf("RcvbufErrors") ?? -1]);
}

/** Lets the kernel and both daemons finish with what was just sent. */
const settle = (ms = 500) => new Promise((r) => setTimeout(r, ms));

/** Every child process a test started, killed (by PID) in after() if still running. */
const children = new Set<ChildProcess>();

/** Runs iperf3 from pod a to pod b for `seconds`; returns what the receiver got, bits per second. */
async function iperf(a: LabPod, b: LabPod, seconds: number): Promise<number> {
  const server = spawn("ip", ["netns", "exec", b.ns, "iperf3", "-s", "-1", "--forceflush", "-B", b.ip, "-p", "5201"], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.add(server);
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("iperf3 server did not start in 10 s")), 10_000);
      server.stdout?.on("data", (d) => {
        if (/Server listening/.test(String(d))) {
          clearTimeout(timer);
          resolve();
        }
      });
      server.once("exit", (code) => reject(new Error(`iperf3 server exited ${code}`)));
    });
    const out = await nsRun(a.ns, "iperf3", ["-c", b.ip, "-p", "5201", "-t", String(seconds), "-J"], {
      timeoutMs: (seconds + 30) * 1000,
    });
    return (JSON.parse(out) as { end: { sum_received: { bits_per_second: number } } }).end.sum_received.bits_per_second;
  } finally {
    if (server.exitCode === null) server.kill();
  }
}

describe("hostile datagrams at weft's port (netns)", { timeout: 300_000 }, () => {
  const prefix = `hst${process.pid % 10000}`;
  const strangerNs = `${prefix}-x`;
  let strangerCreated = false;
  let lab: Lab;
  let h1: LabHost;
  let h2: LabHost;
  let p1: LabPod;
  let p2: LabPod;
  let listener: PodListener;
  /** An address in the Network whose /24 no host holds. */
  let unleased: string;

  const deleteStranger = () => {
    if (!strangerCreated) return;
    strangerCreated = false;
    try {
      execFileSync("ip", ["netns", "del", strangerNs], { stdio: "ignore" });
    } catch {
      // Already gone.
    }
  };
  process.once("exit", deleteStranger);

  before(async () => {
    lab = await Lab.create({ prefix, hosts: 2, dir: mkdtempSync(join(tmpdir(), "weft-hostile-")) });
    lab.writeRegistryConfig();
    [h1, h2] = lab.hosts as [LabHost, LabHost];
    for (const h of lab.hosts) lab.startWeft(h, ["--healthz-port", String(METRICS_PORT), "--healthz-ip", "127.0.0.1"]);
    const env1 = await lab.waitForSubnetEnv(h1);
    const env2 = await lab.waitForSubnetEnv(h2);
    p1 = await lab.addPod(h1, env1);
    p2 = await lab.addPod(h2, env2);
    const held = new Set([env1.subnet, env2.subnet].map((s) => Number(s.split(".")[2])));
    const free = [200, 201, 202].find((n) => !held.has(n)) as number;
    unleased = `10.244.${free}.9`;

    // A host that holds no lease, one hop from h2 on a link of its own.
    await sh("ip", ["netns", "add", strangerNs]);
    strangerCreated = true;
    await sh("ip", ["-n", strangerNs, "link", "set", "lo", "up"]);
    await sh("ip", ["-n", h2.ns, "link", "add", "x0", "type", "veth", "peer", "name", "eth0", "netns", strangerNs]);
    await sh("ip", ["-n", h2.ns, "addr", "add", `${STRANGER_GW}/24`, "dev", "x0"]);
    await sh("ip", ["-n", h2.ns, "link", "set", "x0", "up"]);
    await sh("ip", ["-n", strangerNs, "addr", "add", `${STRANGER_IP}/24`, "dev", "eth0"]);
    await sh("ip", ["-n", strangerNs, "link", "set", "eth0", "up"]);
    await sh("ip", ["-n", strangerNs, "route", "add", "default", "via", STRANGER_GW]);

    listener = new PodListener(p2);
    await listener.ready;
    // The path works before anything hostile happens.
    await nsRun(p1.ns, "ping", ["-c", "2", "-i", "0.2", "-W", "3", p2.ip]);
  });

  after(async () => {
    listener?.stop();
    for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    await lab?.destroy();
    deleteStranger();
  });

  it("delivers a well-formed packet from a leased peer to the pod (the control for every test below)", async () => {
    await sendDatagrams(h1.ns, h1.underlayIp, h2.underlayIp, [innerUdp(p1.ip, p2.ip, "control", 100)]);
    await settle();
    assert.deepEqual(listener.tagged("control"), [{ len: 72, from: p1.ip, tag: "control" }]);
  });

  it("drops and counts datagrams from an address that holds no lease; none reaches the pod", async () => {
    const before = rxDrops(await metrics(h2), "unknown_sender");
    const packets = Array.from({ length: 20 }, (_, i) => innerUdp(p1.ip, p2.ip, `stranger-${i}`, 100));
    await sendDatagrams(strangerNs, STRANGER_IP, h2.underlayIp, packets);
    await settle();
    assert.equal(rxDrops(await metrics(h2), "unknown_sender") - before, 20);
    assert.deepEqual(listener.tagged("stranger"), []);
  });

  it("drops and counts packets longer than flannel0's MTU instead of truncating them; none reaches the pod", async () => {
    const env2 = await lab.waitForSubnetEnv(h2);
    assert.equal(env2.mtu, 1472);
    const text = await metrics(h2);
    const before = rxDrops(text, "oversize") + rxDrops(text, "truncated");
    const fragNeededBefore = metricValue(text, "weft_icmp_sent_total", 'type="frag_needed"');
    const oversize = [
      innerUdp(p1.ip, p2.ip, "big-1473-df", 1473, true),
      innerUdp(p1.ip, p2.ip, "big-1600-df", 1600, true),
      innerUdp(p1.ip, p2.ip, "big-1600", 1600),
      innerUdp(p1.ip, p2.ip, "big-9000", 9000),
    ];
    // Exactly the MTU still fits: the limit is flannel0's MTU, not a buffer size.
    const fits = innerUdp(p1.ip, p2.ip, "fits-1472", 1472, true);
    await sendDatagrams(h1.ns, h1.underlayIp, h2.underlayIp, [...oversize, fits]);
    await settle();
    const after = await metrics(h2);
    assert.equal(rxDrops(after, "oversize") + rxDrops(after, "truncated") - before, 4);
    assert.equal(rxDrops(after, "oversize") - rxDrops(text, "oversize"), 4, "a 64 KiB receive slot sees the length");
    assert.equal(
      metricValue(after, "weft_icmp_sent_total", 'type="frag_needed"') - fragNeededBefore,
      2,
      "Fragmentation Needed goes back for the two DF packets",
    );
    assert.deepEqual(listener.tagged("big"), [], "no oversize packet arrives, whole or cut");
    assert.ok(
      listener.received.every((d) => d.len <= 1472 - 28),
      "nothing longer than the MTU allows",
    );
    assert.deepEqual(listener.tagged("fits"), [{ len: 1472 - 28, from: p1.ip, tag: "fits-1472" }]);
  });

  it("a garbage flood from a host without a lease does not starve pod-to-pod TCP", async (t) => {
    // Unloaded runs just before and just after the flood bracket the loaded one,
    // so load from outside the test that comes or goes meanwhile shows up on
    // both sides of the comparison instead of passing for weft's doing.
    const before = await iperf(p1, p2, 8);
    const dropsBefore = rxDrops(await metrics(h2), "unknown_sender");
    const overflowBefore = await udpReceiveBufferErrors(h2);
    // 50,000 garbage datagrams a second (64 bytes, not even IP) from one
    // sendmmsg generator: about what a single 64-byte UDP stream reaches here
    // (BENCH.md). Unbounded, the generator alone takes one of the machine's two
    // cores, and the test would measure CPU sharing rather than weft.
    const flood = spawnUdpgen(strangerNs, [
      "send",
      "--rate",
      "50000",
      "--dst",
      h2.underlayIp,
      "--port",
      "8285",
      "--size",
      "64",
      "--duration",
      "10",
      "--batch",
      "256",
    ]);
    children.add(flood.child);
    let loaded: number;
    try {
      await settle(1000);
      loaded = await iperf(p1, p2, 8);
    } finally {
      // The flood stops by itself after 10 s; waiting for it bounds the test.
      await flood.result.catch(() => null);
    }
    const sent = (await flood.result) as { sent: number; pps: number };
    await settle();
    const dropped = rxDrops(await metrics(h2), "unknown_sender") - dropsBefore;
    const overflowed = (await udpReceiveBufferErrors(h2)) - overflowBefore;
    const after = await iperf(p1, p2, 8);
    const unloaded = (before + after) / 2;
    const ratio = loaded / unloaded;
    const gbits = (bps: number) => (bps / 1e9).toFixed(2);
    t.diagnostic(
      `TCP unloaded ${gbits(before)} Gbit/s before and ${gbits(after)} after, under flood ${gbits(loaded)} Gbit/s: ` +
        `ratio ${ratio.toFixed(2)}; flood ${sent.sent} datagrams at ${Math.round(sent.pps)}/s, ` +
        `${dropped} read and dropped by weft as unknown_sender, ${overflowed} dropped by h2's kernel (socket buffer full)`,
    );
    assert.equal(h2.weft?.exitCode, null, "weftd on h2 survives the flood");
    assert.ok(dropped > 0, "the flood reached weft and was counted");
    assert.ok(ratio >= 0.5, `TCP kept ${(ratio * 100).toFixed(0)} % of its unloaded rate under the flood (≥ 50 %)`);
  });

  it("without --strict-inner-source, a leased peer's packets are delivered whatever their foreign inner source (flannel's behaviour)", async () => {
    const sources = [unleased, "198.51.100.7"];
    const text = await metrics(h2);
    await sendDatagrams(
      h1.ns,
      h1.underlayIp,
      h2.underlayIp,
      sources.map((src, i) => innerUdp(src, p2.ip, `loose-${i}`, 100)),
    );
    await settle();
    assert.deepEqual(
      listener
        .tagged("loose")
        .map((d) => d.from)
        .sort(),
      [...sources].sort(),
    );
    assert.equal(rxDrops(await metrics(h2), "spoofed_source") - rxDrops(text, "spoofed_source"), 0);
  });

  it("a leased peer cannot deliver packets claiming this host's own addresses or lease as their source (flannel0 has accept_local)", async () => {
    const text = await metrics(h2);
    const own = [p2.ip.replace(/\.\d+$/, ".77"), p2.ip.replace(/\.\d+$/, ".1"), h2.underlayIp, "127.0.0.1"];
    await sendDatagrams(h1.ns, h1.underlayIp, h2.underlayIp, [
      ...own.map((src, i) => innerUdp(src, p2.ip, `local-${i}`, 100)),
      innerUdp(p1.ip, p2.ip, "local-control", 100),
    ]);
    await settle();
    assert.deepEqual(listener.tagged("local-"), [{ len: 72, from: p1.ip, tag: "local-control" }]);
    assert.equal(rxDrops(await metrics(h2), "local_source") - rxDrops(text, "local_source"), own.length);
  });

  it("with --strict-inner-source, a leased peer cannot inject packets whose inner source lies outside its subnet", async () => {
    const since = Date.now();
    assert.equal(await lab.stopWeft(h2), 0);
    lab.startWeft(h2, ["--healthz-port", String(METRICS_PORT), "--healthz-ip", "127.0.0.1", "--strict-inner-source"]);
    await lab.waitForSubnetEnv(h2, 20_000, since);
    // Wait until h2 knows h1's lease again (the restarted daemon re-reads the registry).
    for (let i = 0; i < 50 && metricValue(await metrics(h2).catch(() => ""), "weft_leases") !== 1; i++)
      await settle(100);
    // A packet from a pod of h1 still gets through.
    await nsRun(p1.ns, "ping", ["-c", "2", "-i", "0.2", "-W", "3", p2.ip]);
    const sources = [unleased, "198.51.100.7", "192.0.2.33"];
    await sendDatagrams(h1.ns, h1.underlayIp, h2.underlayIp, [
      ...sources.map((src, i) => innerUdp(src, p2.ip, `spoof-${i}`, 100)),
      innerUdp(p1.ip, p2.ip, "own-subnet", 100),
    ]);
    await settle();
    assert.equal(rxDrops(await metrics(h2), "spoofed_source"), 3);
    assert.deepEqual(listener.tagged("spoof"), []);
    assert.deepEqual(listener.tagged("own-subnet"), [{ len: 72, from: p1.ip, tag: "own-subnet" }]);
  });
});

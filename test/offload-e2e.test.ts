// Offloads end to end, two hosts in network namespaces:
// - what weft puts on the underlay with offloads on is still what flannel
//   peers expect: one valid IPv4 packet per datagram, no longer than the MTU
//   (captured with tcpdump inside h1 and checked packet by packet);
// - a node with offloads and a node without them interoperate both ways.

import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { internetChecksum, onesSum } from "../dataplane/wire/checksum.js";
import { LinkType, readCapture } from "../fixtures/pcap.js";
import { Lab, type LabPod, nsRun } from "../lab/topology.js";
import { watchOutput } from "./helpers/children.js";

const HERE = new URL(".", import.meta.url).pathname;
const TRANSFER = join(HERE, "helpers", "tcp-transfer.js");

/** Streams `mb` MiB of random bytes from `client` to `server` over TCP; both ends' SHA-256 must agree. */
async function transfer(server: LabPod, client: LabPod, port: number, mb: number): Promise<void> {
  const proc: ChildProcess = spawn("ip", [
    "netns",
    "exec",
    server.ns,
    process.execPath,
    TRANSFER,
    "server",
    server.ip,
    String(port),
  ]);
  try {
    const serverOut = watchOutput(proc, "transfer server");
    await serverOut.ready;
    const sent = JSON.parse(
      await nsRun(client.ns, process.execPath, [TRANSFER, "client", server.ip, String(port), String(mb)], {
        timeoutMs: 120_000,
      }),
    );
    await serverOut.exited();
    const got = JSON.parse(
      serverOut
        .output()
        .split("\n")
        .find((l) => l.startsWith("{")) ?? "{}",
    );
    assert.equal(sent.bytes, mb * 1024 * 1024);
    assert.equal(got.bytes, sent.bytes, `${client.ip} -> ${server.ip}: byte count`);
    assert.equal(got.sha256, sent.sha256, `${client.ip} -> ${server.ip}: content`);
  } finally {
    if (proc.exitCode === null) proc.kill();
  }
}

/** Sends UDP datagrams of several sizes from a pod (nobody listens: ICMP Port Unreachable comes back too). */
async function udpBurst(from: LabPod, to: LabPod): Promise<void> {
  const code = `
    const s = require("node:dgram").createSocket("udp4");
    const sizes = [1, 64, 500, 1400, 1444, 3000, 9000];
    let n = 0;
    const next = () => { if (n >= 300) return s.close(); const size = sizes[n % sizes.length]; n++; s.send(Buffer.alloc(size, n), 9999, "${to.ip}", next); };
    next();`;
  await nsRun(from.ns, process.execPath, ["-e", code]);
}

/**
 * Sends `count` equal-size datagrams back to back from one pod to another
 * (so weft reads them in batches and sends them as UDP GSO runs) and
 * resolves to the sequence numbers that arrived, in arrival order.
 */
async function udpSameSize(from: LabPod, to: LabPod, port: number, count: number, size: number): Promise<number[]> {
  const recvCode = `
    const s = require("node:dgram").createSocket("udp4");
    const got = [];
    const done = () => { console.log(JSON.stringify(got)); process.exit(0); };
    s.on("message", (m) => { if (m.length === ${size}) got.push(m.readUInt32BE(0)); if (got.length === ${count}) done(); });
    s.bind(${port}, "${to.ip}", () => console.log("ready"));
    setTimeout(done, 10000);`;
  const recv = spawn("ip", ["netns", "exec", to.ns, process.execPath, "-e", recvCode]);
  const receiver = watchOutput(recv, "UDP receiver");
  await receiver.ready;
  // Bursts of 50 (one weft batch, runs inside it), 20 ms apart so that the
  // receiving pod's default socket buffer never overflows.
  const sendCode = `
    const s = require("node:dgram").createSocket("udp4");
    let i = 0;
    const burst = () => {
      let left = Math.min(50, ${count} - i);
      if (left === 0) return s.close();
      for (let k = 0, n = left; k < n; k++, i++) {
        const b = Buffer.alloc(${size}, i & 255);
        b.writeUInt32BE(i, 0);
        s.send(b, ${port}, "${to.ip}", () => { if (--left === 0) setTimeout(burst, 20); });
      }
    };
    burst();`;
  await nsRun(from.ns, process.execPath, ["-e", sendCode]);
  await receiver.exited();
  const line =
    receiver
      .output()
      .split("\n")
      .find((l) => l.startsWith("[")) ?? "[]";
  return JSON.parse(line) as number[];
}

const u16 = (b: Uint8Array, o: number) => (b[o] << 8) | b[o + 1];

interface LinkStats {
  rx: { packets: number };
  tx: { packets: number };
}

async function tunStats(ns: string): Promise<LinkStats> {
  return JSON.parse(await nsRun(ns, "ip", ["-j", "-s", "link", "show", "dev", "flannel0"]))[0].stats64;
}

/** Whether the TCP/UDP/ICMP checksum of a whole (unfragmented) IPv4 packet verifies, summed from scratch. */
function l4ChecksumOk(p: Uint8Array): boolean {
  const ihl = (p[0] & 15) * 4;
  const total = u16(p, 2);
  const l4 = p.subarray(ihl, total);
  if (p[9] === 1) return onesSum(l4, 0, l4.length) === 0xffff;
  if (p[9] === 17 && u16(l4, 6) === 0) return true;
  const pseudo = new Uint8Array(12 + l4.length);
  pseudo.set(p.subarray(12, 20), 0);
  pseudo[9] = p[9];
  pseudo[10] = l4.length >> 8;
  pseudo[11] = l4.length & 0xff;
  pseudo.set(l4, 12);
  return onesSum(pseudo, 0, pseudo.length) === 0xffff;
}

describe("offloads on: the underlay carries only single, valid IPv4 packets (netns capture)", {
  timeout: 300_000,
}, () => {
  let lab: Lab;
  let p1: LabPod;
  let p2: LabPod;
  let mtu = 0;
  const dir = mkdtempSync(join(tmpdir(), "weft-gso-"));

  before(async () => {
    lab = await Lab.create({ prefix: `gso${process.pid % 10000}`, hosts: 2, dir: join(dir, "lab") });
    lab.writeRegistryConfig();
    for (const h of lab.hosts) lab.startWeft(h, ["--offload"]);
    const [h1, h2] = lab.hosts as [(typeof lab.hosts)[0], (typeof lab.hosts)[0]];
    const env1 = await lab.waitForSubnetEnv(h1);
    mtu = env1.mtu;
    p1 = await lab.addPod(h1, env1);
    p2 = await lab.addPod(h2, await lab.waitForSubnetEnv(h2));
    // veths pass UDP GSO super-skbs through whole, and tcpdump would see those
    // rather than the datagrams a wire carries. One segment per skb makes the
    // kernel cut every run before the tap, exactly as for a real NIC.
    for (const h of lab.hosts) await nsRun(h.ns, "ip", ["link", "set", "eth0", "gso_max_segs", "1"]);
  });

  after(async () => {
    await lab?.destroy();
    rmSync(dir, { recursive: true, force: true });
  });

  it("every datagram on port 8285 during TCP both ways, UDP and pings is one valid IPv4 packet within the MTU", async () => {
    const [h1] = lab.hosts as [(typeof lab.hosts)[0]];
    const file = join(dir, "underlay.pcap");
    const dump = spawn("ip", [
      "netns",
      "exec",
      h1.ns,
      "tcpdump",
      "-i",
      "eth0",
      "-U",
      // Without it libpcap hands packets over a ring block at a time and the
      // last block is lost when tcpdump stops.
      "--immediate-mode",
      "-B",
      "32768",
      "-w",
      file,
      "udp",
      "port",
      "8285",
    ]);
    let dumpErr = "";
    try {
      await new Promise<void>((resolve, reject) => {
        dump.stderr?.on("data", (d) => {
          dumpErr += String(d);
          if (/listening on/.test(dumpErr)) resolve();
        });
        dump.once("exit", (code) => reject(new Error(`tcpdump exited ${code}: ${dumpErr}`)));
      });
      // 20 MiB is ~14,800 full segments each way. With offloads weft reads
      // them from flannel0 as super-packets (its TX count on h1) and writes
      // them into flannel0 coalesced (its RX count on h1).
      const s0 = await tunStats(h1.ns);
      await transfer(p2, p1, 5101, 20);
      const s1 = await tunStats(h1.ns);
      await transfer(p1, p2, 5102, 20);
      const s2 = await tunStats(h1.ns);
      const read = s1.tx.packets - s0.tx.packets;
      const written = s2.rx.packets - s1.rx.packets;
      assert.ok(read < 5000, `flannel0 handed weft ${read} packets for 20 MiB: no super-packets?`);
      assert.ok(written < 5000, `weft wrote ${written} packets into flannel0 for 20 MiB: no coalescing?`);
      await udpBurst(p1, p2);
      // Equal sizes back to back: weft sends these as UDP GSO runs.
      const arrived = await udpSameSize(p1, p2, 7001, 300, 120);
      assert.deepEqual(
        [...arrived].sort((a, b) => a - b),
        Array.from({ length: 300 }, (_, i) => i),
        "every same-size datagram arrived once",
      );
      await nsRun(p1.ns, "ping", ["-c", "5", "-i", "0.05", "-W", "2", p2.ip]);
      await nsRun(p2.ns, "ping", ["-c", "3", "-i", "0.05", "-s", "4000", "-W", "2", p1.ip]);
      // Let the last replies reach the tap before tcpdump stops.
      await new Promise((r) => setTimeout(r, 300));
    } finally {
      const exited = new Promise((resolve) => (dump.exitCode !== null ? resolve(null) : dump.once("exit", resolve)));
      dump.kill("SIGINT");
      await exited;
    }
    assert.match(readFileSync(join(h1.dir, "weftd.log"), "utf8"), /"tunOffloads":\["CSUM","TSO4"/);

    const capture = readCapture(readFileSync(file));
    const seen = { total: 0, tcpData: 0, udp: 0, icmp: 0, fragments: 0 };
    for (const [n, r] of capture.records.entries()) {
      assert.equal(r.linkType, LinkType.ETHERNET);
      assert.equal(r.capturedLength, r.originalLength, `record ${n} captured whole`);
      const outer = r.ipv4;
      assert.ok(outer !== null, `record ${n} is IPv4`);
      const oihl = (outer[0] & 15) * 4;
      assert.equal(outer[9], 17, `record ${n} is UDP`);
      assert.equal(u16(outer, 6) & 0x3fff, 0, `record ${n}: the outer datagram is not fragmented`);
      const udp = outer.subarray(oihl);
      assert.ok(u16(udp, 0) === 8285 || u16(udp, 2) === 8285);
      assert.equal(u16(udp, 4), u16(outer, 2) - oihl, `record ${n}: UDP length`);
      const inner = udp.subarray(8, u16(udp, 4));
      // One IPv4 packet, exactly filling the payload, within the overlay MTU.
      assert.equal(inner[0] >> 4, 4, `record ${n}: inner IPv4`);
      const ihl = (inner[0] & 15) * 4;
      assert.ok(ihl >= 20 && ihl <= inner.length, `record ${n}: inner header length`);
      assert.equal(u16(inner, 2), inner.length, `record ${n}: the payload is exactly one packet`);
      assert.ok(inner.length <= mtu, `record ${n}: ${inner.length} bytes > MTU ${mtu}`);
      assert.equal(internetChecksum(inner, 0, ihl), 0, `record ${n}: inner IP header checksum`);
      seen.total++;
      const fragment = (u16(inner, 6) & 0x3fff) !== 0;
      if (fragment) {
        seen.fragments++;
        continue;
      }
      assert.ok(l4ChecksumOk(inner), `record ${n}: inner protocol ${inner[9]} checksum`);
      if (inner[9] === 6 && inner.length > ihl + ((inner[ihl + 12] >> 4) << 2)) seen.tcpData++;
      if (inner[9] === 17) seen.udp++;
      if (inner[9] === 1) seen.icmp++;
    }
    // 40 MiB of TCP is ~29,000 full segments; the capture may miss some under load.
    assert.ok(seen.tcpData > 10_000, `TCP data segments captured: ${JSON.stringify(seen)}`);
    assert.ok(seen.udp > 100, `UDP datagrams: ${JSON.stringify(seen)}`);
    assert.ok(seen.icmp > 10, `ICMP: ${JSON.stringify(seen)}`);
    assert.ok(seen.fragments > 10, `fragments: ${JSON.stringify(seen)}`);
  });
});

describe("a node with offloads and a node without interoperate (netns)", { timeout: 300_000 }, () => {
  let lab: Lab;
  let p1: LabPod;
  let p2: LabPod;
  const dir = mkdtempSync(join(tmpdir(), "weft-gsm-"));

  before(async () => {
    lab = await Lab.create({ prefix: `gsm${process.pid % 10000}`, hosts: 2, dir: join(dir, "lab") });
    lab.writeRegistryConfig();
    const [h1, h2] = lab.hosts as [(typeof lab.hosts)[0], (typeof lab.hosts)[0]];
    lab.startWeft(h1, ["--offload"]);
    lab.startWeft(h2, ["--no-offload"]);
    p1 = await lab.addPod(h1, await lab.waitForSubnetEnv(h1));
    p2 = await lab.addPod(h2, await lab.waitForSubnetEnv(h2));
  });

  after(async () => {
    await lab?.destroy();
    rmSync(dir, { recursive: true, force: true });
  });

  it("pods ping each other both ways", async () => {
    assert.match(await nsRun(p1.ns, "ping", ["-c", "3", "-i", "0.2", "-W", "3", p2.ip]), /3 received/);
    assert.match(await nsRun(p2.ns, "ping", ["-c", "3", "-i", "0.2", "-W", "3", p1.ip]), /3 received/);
  });

  it("carries same-size UDP bursts (UDP GSO runs from the offload node) both ways, every datagram once and in order", async () => {
    const all = Array.from({ length: 300 }, (_, i) => i);
    assert.deepEqual(await udpSameSize(p1, p2, 7002, 300, 200), all, "offload node -> plain node");
    assert.deepEqual(await udpSameSize(p2, p1, 7003, 300, 200), all, "plain node -> offload node");
  });

  it("carries TCP from the offload node to the plain one and back with every byte intact", async () => {
    await transfer(p2, p1, 5201, 50);
    await transfer(p1, p2, 5202, 50);
    const [h1, h2] = lab.hosts as [(typeof lab.hosts)[0], (typeof lab.hosts)[0]];
    assert.match(readFileSync(join(h1.dir, "weftd.log"), "utf8"), /"tunOffloads"/);
    assert.doesNotMatch(readFileSync(join(h2.dir, "weftd.log"), "utf8"), /"tunOffloads"/);
  });
});

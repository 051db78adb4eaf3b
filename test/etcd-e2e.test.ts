// Three hosts in namespaces sharing one real etcd (Debian's etcd-server),
// weftd in its default etcd mode: flannel's keys, a full pod matrix, and
// forwarding that survives etcd going away.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Lab, type LabHost, type LabPod, nsRun, sh } from "../lab/topology.js";
import { type EtcdServer, startEtcd } from "./helpers/etcd.js";

const ETCD_IP = "198.18.0.254";

async function leaseCount(host: LabHost): Promise<number> {
  const text = await nsRun(host.ns, process.execPath, [
    "-e",
    `fetch("http://127.0.0.1:9103/metrics").then(r => r.text()).then(t => process.stdout.write(t))`,
  ]);
  return Number(/^weft_leases (\d+)$/m.exec(text)?.[1] ?? Number.NaN);
}

describe("three hosts with one etcd (netns)", { timeout: 420_000 }, () => {
  let lab: Lab;
  let etcd: EtcdServer;
  const pods: LabPod[] = [];
  const flags = () => ["--etcd-endpoints", etcd.endpoint, "--healthz-port", "9103", "--healthz-ip", "127.0.0.1"];

  before(async () => {
    lab = await Lab.create({
      prefix: `etc${process.pid % 10000}`,
      hosts: 3,
      dir: mkdtempSync(join(tmpdir(), "weft-etcd-e2e-")),
    });
    const sw = lab.namespaces.find((n) => n.endsWith("-sw")) as string;
    await sh("ip", ["-n", sw, "addr", "add", `${ETCD_IP}/24`, "dev", "br0"]);
    etcd = await startEtcd({ listenAddress: ETCD_IP, commandPrefix: ["ip", "netns", "exec", sw] });
    await etcd.etcdctl(["put", "/coreos.com/network/config", '{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}']);
    for (const h of lab.hosts.slice(0, 2)) lab.startWeft(h, flags());
    for (const h of lab.hosts.slice(0, 2)) pods.push(await lab.addPod(h, await lab.waitForSubnetEnv(h)));
  });

  after(async () => {
    await lab?.destroy();
    await etcd?.stop();
  });

  it("writes flannel's exact keys and values", async () => {
    const out = await etcd.etcdctl(["get", "--prefix", "/coreos.com/network/subnets/"]);
    const lines = out.trim().split("\n");
    assert.equal(lines.length, 4);
    for (let i = 0; i < lines.length; i += 2) {
      assert.match(lines[i] as string, /^\/coreos\.com\/network\/subnets\/10\.244\.\d+\.0-24$/);
      assert.match(lines[i + 1] as string, /^\{"PublicIP":"198\.18\.0\.[12]","PublicIPv6":null\}$/);
    }
  });

  it("keeps forwarding while etcd is down for 60 s, and a host that joins meanwhile is reached within 5 s of etcd's return", async () => {
    const [p1, p2] = pods as [LabPod, LabPod];
    const h3 = lab.hosts[2] as LabHost;
    // A steady ping stream across the outage: 70 s at 20 per second.
    const ping = spawn("ip", ["netns", "exec", p1.ns, "ping", "-i", "0.05", "-c", "1400", "-W", "1", p2.ip]);
    let out = "";
    ping.stdout.on("data", (d) => {
      out += String(d);
    });
    const pingDone = new Promise<void>((resolve) => ping.once("exit", () => resolve()));
    try {
      await new Promise((r) => setTimeout(r, 2000));
      await etcd.halt();
      lab.startWeft(h3, flags()); // joins while etcd is away: must wait for it, not die
      await new Promise((r) => setTimeout(r, 60_000));
      assert.equal(h3.weft?.exitCode, null, `weftd on h3 gave up while etcd was down: ${lab.logTail(h3)}`);
      await etcd.resume();
      const back = Date.now();
      pods.push(await lab.addPod(h3, await lab.waitForSubnetEnv(h3, 20_000)));
      let seen = -1;
      while (Date.now() - back < 5000) {
        seen = await leaseCount(lab.hosts[0] as LabHost);
        if (seen === 2) break;
        await new Promise((r) => setTimeout(r, 100));
      }
      assert.equal(seen, 2, "h1 knows h3's lease within 5 s of etcd's return");
      await pingDone;
      const stats = /(\d+) packets transmitted, (\d+) received/.exec(out);
      assert.ok(stats, out.slice(-300));
      assert.equal(stats[2], stats[1], `no ping lost across the outage: ${stats[0]}`);
    } finally {
      if (ping.exitCode === null) ping.kill();
    }
  });

  it("every pod reaches every pod", async () => {
    assert.equal(pods.length, 3);
    for (const a of pods) {
      for (const b of pods) {
        if (a === b) continue;
        const out = await nsRun(a.ns, "ping", ["-c", "2", "-i", "0.2", "-W", "3", b.ip]);
        assert.match(out, /2 received/, `${a.ip} -> ${b.ip}`);
      }
    }
  });

  it("a peer killed with SIGKILL comes back with the same subnet and traffic resumes (time reported, not asserted)", async () => {
    const h3 = lab.hosts[2] as LabHost;
    const p3 = pods[2] as LabPod;
    const before = (await lab.waitForSubnetEnv(h3)).subnet;
    await lab.stopWeft(h3, "SIGKILL");
    const since = Date.now();
    lab.startWeft(h3, flags());
    let resumed = -1;
    while (Date.now() - since < 15_000) {
      try {
        await nsRun((pods[0] as LabPod).ns, "ping", ["-c", "1", "-W", "1", p3.ip]);
        resumed = Date.now() - since;
        break;
      } catch {
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    assert.equal((await lab.waitForSubnetEnv(h3, 5000, since)).subnet, before, "same subnet after the restart");
    // Tests never assert timings: 15 s is a deadline for "it resumes at all".
    assert.ok(resumed >= 0, "traffic did not resume within 15 s of the restart");
    console.log(`# peer restart: traffic resumed ${resumed} ms after weftd was started again`);
  });

  it("etcd restarted with an empty data dir: every host re-creates its lease with the same subnet", async () => {
    const subnets = new Map<string, string>();
    for (const h of lab.hosts)
      subnets.set(h.underlayIp, (await lab.waitForSubnetEnv(h)).subnet.replace(/\.1\/24$/, ".0-24"));
    await etcd.restart({ emptyDataDir: true });
    // The operator puts the network config back; the leases come back by themselves.
    await etcd.etcdctl(["put", "/coreos.com/network/config", '{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}']);
    const deadline = Date.now() + 30_000;
    let found = new Map<string, string>();
    while (Date.now() < deadline) {
      const out = (await etcd.etcdctl(["get", "--prefix", "/coreos.com/network/subnets/"])).trim().split("\n");
      found = new Map();
      for (let i = 0; i + 1 < out.length; i += 2) {
        const ip = /"PublicIP":"([\d.]+)"/.exec(out[i + 1] as string)?.[1];
        if (ip !== undefined) found.set(ip, (out[i] as string).split("/").pop() as string);
      }
      if (found.size === 3) break;
      await new Promise((r) => setTimeout(r, 250));
    }
    assert.deepEqual(found, subnets);
    for (const h of lab.hosts) assert.equal(h.weft?.exitCode, null, `weftd on ${h.ns} still runs`);
    const out = await nsRun((pods[0] as LabPod).ns, "ping", [
      "-c",
      "2",
      "-i",
      "0.2",
      "-W",
      "3",
      (pods[1] as LabPod).ip,
    ]);
    assert.match(out, /2 received/);
  });

  it("flannel0 deleted under a running daemon: a clear error and a non-zero exit, no busy loop", async () => {
    const h3 = lab.hosts[2] as LabHost;
    const child = h3.weft;
    assert.ok(child !== null);
    const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
    await nsRun(h3.ns, "ip", ["link", "del", "flannel0"]);
    const code = await Promise.race([exited, new Promise<string>((r) => setTimeout(() => r("still running"), 10_000))]);
    assert.notEqual(code, 0);
    assert.notEqual(code, "still running");
    assert.match(lab.logTail(h3, 10), /flannel0 failed/);
    h3.weft = null;
  });

  it("a network config changed to another Network stops the daemons with a sentence naming both", async () => {
    const h1 = lab.hosts[0] as LabHost;
    const child = h1.weft;
    assert.ok(child !== null);
    const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
    await etcd.etcdctl(["put", "/coreos.com/network/config", '{"Network":"10.245.0.0/16","Backend":{"Type":"udp"}}']);
    const code = await Promise.race([exited, new Promise<string>((r) => setTimeout(() => r("still running"), 30_000))]);
    assert.notEqual(code, "still running");
    assert.notEqual(code, 0);
    assert.match(
      lab.logTail(h1, 10),
      /network config changed from 10\.244\.0\.0\/16 \(SubnetLen 24\) to 10\.245\.0\.0\/16 \(SubnetLen 24\)/,
    );
    h1.weft = null;
  });
});

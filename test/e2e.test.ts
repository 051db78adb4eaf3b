// Two hosts and two pods in network namespaces, weftd on both (file
// registry), real traffic through flannel0 and the UDP tunnel.

import assert from "node:assert/strict";
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { existsSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Lab, type LabPod, nsRun } from "../lab/topology.js";

const HERE = new URL(".", import.meta.url).pathname;

/** Runs a command in a namespace and returns its stdout even when it exits non-zero (ping does after an error). */
function nsRunAnyway(ns: string, cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve) => {
    execFile("ip", ["netns", "exec", ns, cmd, ...args], { timeout: 30_000 }, (_err, stdout) => resolve(String(stdout)));
  });
}

async function metrics(ns: string, port: number): Promise<string> {
  return nsRun(ns, process.execPath, [
    "-e",
    `fetch("http://127.0.0.1:${port}/metrics").then(r => r.text()).then(t => process.stdout.write(t))`,
  ]);
}

function metricValue(text: string, name: string, labels: string): number {
  const line = text.split("\n").find((l) => l.startsWith(`${name}{${labels}}`));
  return line === undefined ? Number.NaN : Number(line.split(" ").pop());
}

describe("two hosts through weft (netns)", { timeout: 240_000 }, () => {
  let lab: Lab;
  let p1: LabPod;
  let p2: LabPod;

  before(async () => {
    lab = await Lab.create({
      prefix: `e2e${process.pid % 10000}`,
      hosts: 2,
      dir: mkdtempSync(join(tmpdir(), "weft-e2e-")),
    });
    lab.writeRegistryConfig();
    for (const h of lab.hosts) lab.startWeft(h, ["--healthz-port", "9100", "--healthz-ip", "127.0.0.1"]);
    const [h1, h2] = lab.hosts;
    p1 = await lab.addPod(h1, await lab.waitForSubnetEnv(h1));
    p2 = await lab.addPod(h2, await lab.waitForSubnetEnv(h2));
  });

  after(async () => {
    await lab?.destroy();
  });

  it("pods on two hosts ping each other both ways", async () => {
    const there = await nsRun(p1.ns, "ping", ["-c", "3", "-i", "0.2", "-W", "3", p2.ip]);
    assert.match(there, /3 received/);
    const back = await nsRun(p2.ns, "ping", ["-c", "3", "-i", "0.2", "-W", "3", p1.ip]);
    assert.match(back, /3 received/);
  });

  /** MiB from p1 to p2 over TCP; asserts every byte arrived intact. */
  async function transfer(mib: number): Promise<void> {
    const script = join(HERE, "helpers", "tcp-transfer.js");
    const server: ChildProcess = spawn("ip", [
      "netns",
      "exec",
      p2.ns,
      process.execPath,
      script,
      "server",
      p2.ip,
      "5001",
    ]);
    try {
      let out = "";
      server.stdout?.on("data", (d) => {
        out += String(d);
      });
      await new Promise<void>((resolve, reject) => {
        server.stdout?.once("data", () => resolve());
        server.once("exit", (code) => reject(new Error(`server exited ${code}`)));
      });
      const client = JSON.parse(
        await nsRun(p1.ns, process.execPath, [script, "client", p2.ip, "5001", String(mib)], { timeoutMs: 120_000 }),
      );
      await new Promise<void>((resolve) =>
        server.exitCode !== null ? resolve() : server.once("exit", () => resolve()),
      );
      const received = JSON.parse(out.split("\n").filter((l) => l.startsWith("{"))[0] ?? "{}");
      assert.equal(client.bytes, mib * 1024 * 1024);
      assert.equal(received.bytes, client.bytes);
      assert.equal(received.sha256, client.sha256);
    } finally {
      if (server.exitCode === null) server.kill();
    }
  }

  it("carries 100 MB over TCP with every byte intact", async () => {
    await transfer(100);
  });

  it("gives its receive arenas back once idle, and carries traffic intact afterwards", async () => {
    const releases = async () => {
      const all = await Promise.all(lab.hosts.map((h) => metrics(h.ns, 9100)));
      return all.flatMap((t) =>
        ["tx", "rx"].map((d) => metricValue(t, "weft_arena_releases_total", `direction="${d}"`)),
      );
    };
    await transfer(20);
    const before = await releases();
    // Both sides of both daemons read nothing from here on: each is released 5–10 s later.
    let now = before;
    for (let i = 0; i < 60 && now.some((n, k) => !(n > (before[k] as number))); i++) {
      await new Promise((r) => setTimeout(r, 500));
      now = await releases();
    }
    assert.ok(
      now.every((n, k) => n > (before[k] as number)),
      `every arena was released again: ${before} -> ${now}`,
    );
    await transfer(20);
    const out = await nsRun(p2.ns, "ping", ["-c", "3", "-i", "0.2", "-W", "3", p1.ip]);
    assert.match(out, /3 received/);
  });

  it("answers a ping to an unleased subnet with Destination Net Unreachable from flannel0", async () => {
    const flannel0 = p1.ip.replace(/\.\d+$/, ".0");
    const out = await nsRunAnyway(p1.ns, "ping", ["-c", "1", "-W", "2", "10.244.254.9"]);
    assert.match(out, new RegExp(`From ${flannel0.replace(/\./g, "\\.")} .*Destination Net Unreachable`));
  });

  it("answers a ping whose TTL runs out in the tunnel with Time exceeded from flannel0", async () => {
    // TTL 2: the host's kernel forwards it into flannel0 with TTL 1, and weft
    // (not the kernel) must answer, from flannel0's address.
    const flannel0 = p1.ip.replace(/\.\d+$/, ".0");
    const out = await nsRunAnyway(p1.ns, "ping", ["-c", "1", "-t", "2", "-W", "2", p2.ip]);
    assert.match(out, new RegExp(`From ${flannel0.replace(/\./g, "\\.")} .*Time to live exceeded`));
  });

  it("drops and counts datagrams to port 8285 from an address that holds no lease", async () => {
    const [h1, h2] = lab.hosts;
    const before = metricValue(
      await metrics(h2.ns, 9100),
      "weft_drops_total",
      'direction="rx",reason="unknown_sender"',
    );
    assert.equal(before, 0);
    await nsRun(h1.ns, "ip", ["addr", "add", "198.18.0.77/24", "dev", "eth0"]);
    // A valid inner packet for p2, sent from the stranger address.
    const send = `
      const dgram = require("node:dgram");
      const s = dgram.createSocket("udp4");
      const p = Buffer.alloc(28); p[0] = 0x45; p[3] = 28; p[8] = 64; p[9] = 17;
      Buffer.from("${p1.ip}".split(".").map(Number)).copy(p, 12);
      Buffer.from("${p2.ip}".split(".").map(Number)).copy(p, 16);
      s.bind({ address: "198.18.0.77" }, () => {
        let n = 0;
        const next = () => n++ < 5 ? s.send(p, 8285, "198.18.0.2", next) : s.close();
        next();
      });`;
    await nsRun(h1.ns, process.execPath, ["-e", send]);
    await new Promise((r) => setTimeout(r, 300));
    const text = await metrics(h2.ns, 9100);
    assert.equal(metricValue(text, "weft_drops_total", 'direction="rx",reason="unknown_sender"'), 5);
    assert.ok(
      metricValue(text, "weft_packets_total", 'direction="rx",stage="out"') > 0,
      "real traffic was counted too",
    );
  });

  it("a restarted daemon reuses its subnet and traffic flows again", async () => {
    const h2 = lab.hosts[1];
    const subnetBefore = (await lab.waitForSubnetEnv(h2)).subnet;
    const code = await lab.stopWeft(h2);
    assert.equal(code, 0, "SIGTERM is a clean stop");
    assert.equal(existsSync(`/proc/${process.pid}`), true);
    const links = await nsRun(h2.ns, "ip", ["-o", "link", "show"]);
    assert.doesNotMatch(links, /flannel0/, "flannel0 is removed with the daemon");
    const since = Date.now();
    lab.startWeft(h2);
    const env = await lab.waitForSubnetEnv(h2, 20_000, since);
    assert.equal(env.subnet, subnetBefore);
    const out = await nsRun(p1.ns, "ping", ["-c", "3", "-i", "0.3", "-W", "3", p2.ip]);
    assert.match(out, /[1-3] received/);
  });
});

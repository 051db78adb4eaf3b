// weftd as a service: health, readiness, metrics, iptables rules, systemd
// notification, revocation and the start-up errors, on a host namespace with
// the file registry.

import assert from "node:assert/strict";
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, afterEach, before, describe, it } from "node:test";
import { DEFAULT_NETWORK_CONFIG, Lab, type LabHost, nsRun } from "../lab/topology.js";
import { DELETE_MASQ_MARK_RULE } from "./helpers/iptables.js";

const MAIN = new URL("../control/main.js", import.meta.url).pathname;

async function get(ns: string, port: number, path: string): Promise<{ status: number; body: string }> {
  const out = await nsRun(ns, process.execPath, [
    "-e",
    `fetch("http://127.0.0.1:${port}${path}").then(async r => process.stdout.write(JSON.stringify({status: r.status, body: await r.text()})))`,
  ]);
  return JSON.parse(out);
}

async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined) return v;
    } catch {
      // Not there yet.
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function exited(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolve) => child.once("exit", (code) => resolve(code)));
}

/** Runs weftd to completion with a timeout; returns exit code and stderr. */
function runWeftd(ns: string, args: string[], prefix: string[] = []): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      "ip",
      ["netns", "exec", ns, ...prefix, process.execPath, MAIN, ...args],
      { timeout: 20_000, killSignal: "SIGKILL" },
      (err, _o, stderr) =>
        resolve({ code: err ? ((err as { code?: number }).code ?? null) : 0, stderr: String(stderr) }),
    );
  });
}

describe("weftd as a service", { timeout: 180_000 }, () => {
  let lab: Lab;
  let h1: LabHost;

  before(async () => {
    lab = await Lab.create({
      prefix: `dmn${process.pid % 10000}`,
      hosts: 2,
      dir: mkdtempSync(join(tmpdir(), "weft-daemon-")),
    });
    h1 = lab.hosts[0] as LabHost;
  });
  // A failed test must not leave its weftd holding the port for the next one.
  afterEach(async () => {
    if (h1 !== undefined) await lab.stopWeft(h1);
  });
  after(async () => {
    await lab?.destroy();
  });

  it("waits for a missing network config with a log line, /readyz 503 until ready then 200", async () => {
    rmSync(lab.registryDir, { recursive: true, force: true });
    lab.startWeft(h1, ["--healthz-port", "9101", "--healthz-ip", "127.0.0.1"]);
    const health = await until("healthz", () => get(h1.ns, 9101, "/healthz"));
    assert.deepEqual(health, { status: 200, body: "flanneld is running" });
    await until("config wait log", async () =>
      /waiting for network config/.test(lab.logTail(h1, 50)) ? true : undefined,
    );
    const notReady = await get(h1.ns, 9101, "/readyz");
    assert.equal(notReady.status, 503);
    assert.equal(JSON.parse(notReady.body).lease, false);
    lab.writeRegistryConfig();
    const ready = await until("ready", async () => {
      const r = await get(h1.ns, 9101, "/readyz");
      return r.status === 200 ? r : undefined;
    });
    assert.deepEqual(JSON.parse(ready.body), { lease: true, tun: true, rules: true, subnetEnv: true });
    const metrics = await get(h1.ns, 9101, "/metrics");
    assert.match(metrics.body, /^weft_registry_connected 1$/m);
    assert.match(metrics.body, /^weft_packets_total\{direction="tx",stage="in"\} \d+$/m);
    assert.equal(await lab.stopWeft(h1), 0);
  });

  it("installs the --ip-masq and forward chains exactly once, repairs them, and keeps one copy across restarts", async () => {
    lab.writeRegistryConfig();
    const since = Date.now();
    lab.startWeft(h1, ["--ip-masq", "--iptables-resync", "1", "--healthz-port", "9102", "--healthz-ip", "127.0.0.1"]);
    const env = await lab.waitForSubnetEnv(h1, 20_000, since);
    const syncs = async (outcome: string) => {
      const m = new RegExp(`^weft_iptables_syncs_total\\{outcome="${outcome}"\\} (\\d+)$`, "m").exec(
        (await get(h1.ns, 9102, "/metrics")).body,
      );
      return m ? Number(m[1]) : undefined;
    };
    const lease = env.subnet.replace(/\.1\//, ".0/");
    const nat = async () => nsRun(h1.ns, "iptables", ["-t", "nat", "-S"]);
    const expected = [
      '-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN',
      `-A FLANNEL-POSTRTG -s ${lease} -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j RETURN`,
      `-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d ${lease} -m comment --comment "flanneld masq" -j RETURN`,
      `-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d ${lease} -m comment --comment "flanneld masq" -j RETURN`,
      '-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully',
      '-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully',
    ];
    const check = async () => {
      const lines = (await nat()).split("\n");
      assert.deepEqual(
        lines.filter((l) => l.startsWith("-A FLANNEL-POSTRTG")),
        expected,
      );
      assert.deepEqual(
        lines.filter((l) => l.includes("-j FLANNEL-POSTRTG")),
        ['-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG'],
      );
      const filter = (await nsRun(h1.ns, "iptables", ["-S"])).split("\n");
      assert.deepEqual(
        filter.filter((l) => l.includes("FLANNEL-FWD") && l.startsWith("-A")),
        [
          '-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD',
          '-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT',
          '-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT',
        ],
      );
    };
    await check();
    await new Promise((r) => setTimeout(r, 2500)); // two resyncs
    await check();
    // Nothing changed the ruleset since the check after our install: iptables-nft resyncs are skipped.
    await until("a skipped resync", async () => ((await syncs("skipped")) ?? 0) > 0 || undefined, 5000);
    const rewritten = await syncs("rewritten");
    // Someone deletes a rule: the next resync puts it back.
    await nsRun(h1.ns, "iptables", DELETE_MASQ_MARK_RULE);
    await until("repair", async () => ((await nat()).includes("--mark 0x4000/0x4000") ? true : undefined), 5000);
    await check();
    assert.equal(await syncs("rewritten"), (rewritten ?? 0) + 1);
    assert.equal(await lab.stopWeft(h1), 0);
    const again = Date.now();
    lab.startWeft(h1, ["--ip-masq", "--iptables-resync", "1"]);
    await lab.waitForSubnetEnv(h1, 20_000, again);
    await new Promise((r) => setTimeout(r, 1500));
    await check();
    assert.equal(await lab.stopWeft(h1), 0);
  });

  it("sends READY=1 to $NOTIFY_SOCKET once ready", async () => {
    lab.writeRegistryConfig();
    const dir = mkdtempSync(join(tmpdir(), "weft-notify-"));
    const sock = join(dir, "notify.sock");
    const receiver = spawn("python3", [
      "-c",
      `import socket,sys\ns=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)\ns.bind(${JSON.stringify(sock)})\nprint("bound",flush=True)\ns.settimeout(20)\nprint(s.recv(256).decode(),flush=True)`,
    ]);
    try {
      let out = "";
      receiver.stdout.on("data", (d) => {
        out += String(d);
      });
      await until("receiver", async () => (out.includes("bound") ? true : undefined));
      const child = spawn(
        "ip",
        [
          "netns",
          "exec",
          h1.ns,
          process.execPath,
          MAIN,
          "--iface",
          "eth0",
          "--registry-dir",
          lab.registryDir,
          "--subnet-file",
          lab.subnetFile(h1),
        ],
        { env: { ...process.env, NOTIFY_SOCKET: sock }, stdio: "ignore" },
      );
      try {
        await exited(receiver);
        assert.match(out, /READY=1/);
        assert.ok(readFileSync(lab.subnetFile(h1), "utf8").startsWith("FLANNEL_NETWORK=10.244.0.0/16\n"));
      } finally {
        child.kill("SIGTERM");
        await exited(child);
      }
    } finally {
      if (receiver.exitCode === null) receiver.kill();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("exits non-zero with 'lease has been revoked' when its lease is deleted", async () => {
    lab.writeRegistryConfig();
    const since = Date.now();
    const child = lab.startWeft(h1);
    const env = await lab.waitForSubnetEnv(h1, 20_000, since);
    const key = env.subnet.replace(/\.1\/(\d+)$/, ".0-$1");
    unlinkSync(join(lab.registryDir, "subnets", key));
    const code = await exited(child);
    assert.notEqual(code, 0);
    assert.match(lab.logTail(h1, 20), /lease has been revoked/);
    h1.weft = null;
  });

  it("refuses to start without CAP_NET_ADMIN, with one sentence", async () => {
    lab.writeRegistryConfig();
    const r = await runWeftd(
      h1.ns,
      ["--iface", "eth0", "--registry-dir", lab.registryDir],
      ["setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin"],
    );
    assert.equal(r.code, 1);
    assert.match(
      r.stderr,
      /weftd: weftd needs CAP_NET_ADMIN \(run it as root or grant the capability\) to create flannel0\n/,
    );
  });

  it("refuses an unwritable registry directory, with one sentence", async () => {
    const r = await runWeftd(h1.ns, ["--iface", "eth0", "--registry-dir", "/proc/weft-registry"]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /weftd: registry dir \/proc\/weft-registry is not writable/);
  });

  it("refuses a UDP port already in use, naming it", async () => {
    lab.writeRegistryConfig();
    const holder = spawn("ip", [
      "netns",
      "exec",
      h1.ns,
      process.execPath,
      "-e",
      `require("node:dgram").createSocket("udp4").bind(8285, "198.18.0.1", () => console.log("bound"))`,
    ]);
    try {
      await new Promise((r) => holder.stdout.once("data", r));
      const r = await runWeftd(h1.ns, [
        "--iface",
        "eth0",
        "--registry-dir",
        lab.registryDir,
        "--subnet-file",
        lab.subnetFile(h1),
      ]);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /weftd: bind 198\.18\.0\.1:8285: EADDRINUSE/);
      const links = await nsRun(h1.ns, "ip", ["-o", "link", "show"]);
      assert.doesNotMatch(links, /flannel0/, "no flannel0 left behind after a failed start");
    } finally {
      holder.kill();
      await exited(holder);
    }
  });

  it("refuses a network config for another backend or IPv6, naming it", async () => {
    lab.writeRegistryConfig('{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}');
    const r = await runWeftd(h1.ns, ["--iface", "eth0", "--registry-dir", lab.registryDir]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /weft implements only the udp backend/);
    lab.writeRegistryConfig(DEFAULT_NETWORK_CONFIG);
    writeFileSync(join(lab.registryDir, "config"), DEFAULT_NETWORK_CONFIG);
  });
});

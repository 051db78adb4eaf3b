// The compose lab without Docker: `docker-compose config` validates the file, and the
// container entrypoint itself runs on three host namespaces sharing one real etcd on
// the underlay. Each entrypoint gets what a container would give it: its own network
// namespace (the host), its own /var/lib (a temp dir) and its own /run/netns (a
// tmpfs in a private mount namespace), so the pod namespace it makes and the CNI
// plugins' state never reach the machine, and vanish with it.

import assert from "node:assert/strict";
import { type ChildProcess, execFile, spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { Lab, type LabHost, sh } from "../lab/topology.js";
import { type EtcdServer, startEtcd } from "./helpers/etcd.js";

const REPO = fileURLToPath(new URL("../../", import.meta.url));
const COMPOSE_FILE = join(REPO, "lab/compose/docker-compose.yml");
const ENTRYPOINT = join(REPO, "lab/compose/entrypoint.sh");
const ETCD_IP = "198.18.0.254";
const NETWORK_CONFIG = '{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}';

const have = (cmd: string) => spawnSync("sh", ["-c", `command -v ${cmd}`]).status === 0;
const canRun =
  process.getuid?.() === 0 &&
  ["ip", "unshare", "nsenter", "etcd", "etcdctl", "ping", "iptables"].every(have) &&
  existsSync("/usr/lib/cni/bridge");

describe("compose lab", () => {
  it("docker-compose config accepts lab/compose/docker-compose.yml", {
    skip: have("docker-compose") ? false : "docker-compose is not installed",
  }, () => {
    const r = spawnSync("docker-compose", ["-f", COMPOSE_FILE, "config", "--services"], { encoding: "utf8" });
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(r.stdout.trim().split("\n").sort(), ["etcd", "host1", "host2", "host3"]);
  });
});

interface Host {
  lab: LabHost;
  child: ChildProcess;
  out: string;
  podIp: string;
}

async function rootLinks(): Promise<string[]> {
  return (await sh("ip", ["-o", "link", "show"]))
    .split("\n")
    .map((l) => l.split(":")[1]?.trim().split("@")[0] ?? "")
    .filter(Boolean)
    .sort();
}

/** Runs a command in the entrypoint's mount namespace (where its pod namespace is), then in the pod. */
function inPod(host: Host, cmd: string[]): Promise<{ code: number; stdout: string }> {
  return new Promise((resolve) => {
    const args = ["-t", String(host.child.pid), "-m", "ip", "netns", "exec", "pod", ...cmd];
    execFile("nsenter", args, { timeout: 20_000 }, (err, stdout) =>
      resolve({ code: err === null ? 0 : Number((err as { code?: number }).code ?? 1), stdout: String(stdout) }),
    );
  });
}

describe("compose entrypoint.sh on three host namespaces with one etcd", {
  skip: canRun ? false : "needs root, iproute2, util-linux, etcd-server, etcd-client, ping and CNI plugins",
  timeout: 120_000,
}, () => {
  let lab: Lab;
  let etcd: EtcdServer;
  let dir = "";
  const hosts: Host[] = [];
  let linksBefore: string[] = [];

  before(async () => {
    linksBefore = await rootLinks();
    dir = mkdtempSync(join(tmpdir(), "weft-compose-"));
    lab = await Lab.create({ prefix: `wc${randomBytes(2).toString("hex")}`, hosts: 3, dir, bridge: true });
    const sw = lab.switchNs as string;
    await sh("ip", ["-n", sw, "addr", "add", `${ETCD_IP}/24`, "dev", "br0"]);
    etcd = await startEtcd({ listenAddress: ETCD_IP, commandPrefix: ["ip", "netns", "exec", sw] });
    for (const h of lab.hosts) {
      const varLib = join(h.dir, "var-lib");
      mkdirSync(varLib);
      // What a container gives its main process: the host's network namespace, a
      // private /var/lib and /run/netns; then the entrypoint, exactly as the image runs it.
      const child = spawn(
        "ip",
        [
          "netns",
          "exec",
          h.ns,
          "unshare",
          "--mount",
          "--propagation",
          "private",
          "sh",
          "-c",
          'mount --bind "$0" /var/lib && mount -t tmpfs tmpfs /run/netns && exec "$1"',
          varLib,
          ENTRYPOINT,
        ],
        {
          stdio: ["ignore", "pipe", "pipe"],
          env: {
            ...process.env,
            WEFT_DIR: REPO,
            HOSTNAME: `host${h.index}`,
            FLANNELD_ETCD_ENDPOINTS: etcd.endpoint,
            FLANNELD_SUBNET_FILE: join(h.dir, "subnet.env"),
            WEFT_WAIT_SECONDS: "30",
          },
        },
      );
      const host: Host = { lab: h, child, out: "", podIp: "" };
      child.stdout?.on("data", (d) => {
        host.out += String(d);
      });
      child.stderr?.on("data", (d) => {
        host.out += String(d);
      });
      hosts.push(host);
    }
    // Ready lines, or the first entrypoint that exits.
    await Promise.all(
      hosts.map(
        (h) =>
          new Promise<void>((resolve, reject) => {
            const timer = setTimeout(
              () => reject(new Error(`host${h.lab.index} not ready in 60 s:\n${h.out}`)),
              60_000,
            );
            const check = () => {
              const ip = /pod pod is up with (\d+\.\d+\.\d+\.\d+)/.exec(h.out)?.[1];
              if (ip !== undefined && /: ready\n/.test(h.out)) {
                clearTimeout(timer);
                h.podIp = ip;
                resolve();
              }
            };
            h.child.stdout?.on("data", check);
            h.child.once("exit", (code) => {
              clearTimeout(timer);
              reject(new Error(`host${h.lab.index} entrypoint exited with ${code}:\n${h.out}`));
            });
          }),
      ),
    );
  });

  after(async () => {
    // Anything still running in the host namespaces is ours (the entrypoints and their weftd).
    for (const h of hosts) if (h.child.exitCode === null) h.child.kill("SIGKILL");
    for (const h of lab?.hosts ?? []) {
      const pids = (await sh("ip", ["netns", "pids", h.ns]).catch(() => "")).split(/\s+/).filter(Boolean);
      for (const pid of pids) {
        try {
          process.kill(Number(pid), "SIGKILL");
        } catch {
          // Already gone.
        }
      }
    }
    await lab?.destroy();
    await etcd?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("the first host puts the network config, the others find it", async () => {
    assert.equal(
      (await etcd.etcdctl(["get", "--print-value-only", "/coreos.com/network/config"])).trim(),
      NETWORK_CONFIG,
    );
    const putters = hosts.filter((h) => h.out.includes("put the network config"));
    assert.equal(putters.length, 1, hosts.map((h) => h.out).join("\n"));
    assert.equal(hosts.filter((h) => h.out.includes("network config already there")).length, 2);
    const leases = (await etcd.etcdctl(["get", "--prefix", "--keys-only", "/coreos.com/network/subnets/"])).trim();
    assert.equal(leases.split("\n").filter(Boolean).length, 3, leases);
  });

  it("each host's pod got an address in its own lease through the CNI chain", () => {
    for (const h of hosts) {
      const subnet = /FLANNEL_SUBNET=(\d+\.\d+\.\d+)\.1\/24/.exec(h.out)?.[1];
      assert.ok(subnet, h.out);
      assert.ok(h.podIp.startsWith(`${subnet}.`), `${h.podIp} in ${subnet}.0/24`);
    }
  });

  it("every pod pings every other pod across the hosts", async () => {
    for (const a of hosts) {
      for (const b of hosts) {
        if (a === b) continue;
        const r = await inPod(a, ["ping", "-c", "2", "-i", "0.2", "-W", "3", b.podIp]);
        assert.equal(r.code, 0, `host${a.lab.index} pod -> ${b.podIp}: ${r.stdout}`);
      }
    }
  });

  it("SIGTERM removes the pod through CNI DEL, stops weftd and exits 0", async () => {
    for (const h of hosts) {
      const exited = new Promise<number | null>((resolve) => h.child.once("exit", (code) => resolve(code)));
      h.child.kill("SIGTERM");
      assert.equal(await exited, 0, h.out);
      assert.match(h.out, /: stopped\n/);
      assert.equal((await sh("ip", ["netns", "pids", h.lab.ns])).trim(), "", `nothing left running in ${h.lab.ns}`);
      // CNI DEL took the pod's veth off cni0 and released its host-local address.
      const links = await sh("ip", ["-n", h.lab.ns, "-o", "link", "show"]);
      assert.doesNotMatch(links, /veth/);
      assert.equal(existsSync(join(h.lab.dir, "var-lib", "cni", "networks", "cbr0", h.podIp)), false);
    }
    assert.deepEqual(await rootLinks(), linksBefore, "no link appeared in the root namespace");
  });
});

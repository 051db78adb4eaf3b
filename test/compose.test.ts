// The compose lab, twice. First for real: a Docker engine of the test's own
// (helpers/dockerd.ts), the base image made locally from Debian's packages and this
// machine's Node (lab/compose/make-base.sh; no registry is reachable), then
// `docker-compose up --build` of lab/compose/: etcd, three hosts, leases in etcd, pods
// pinging across hosts, and `docker-compose down` plus the engine's removal leaving
// nothing. Then the entrypoint alone on three host namespaces sharing one real etcd on
// the underlay, each with what a container would give it: its own network namespace,
// its own /var/lib (a temp dir) and /run/netns (a tmpfs in a private mount namespace).

import assert from "node:assert/strict";
import { type ChildProcess, execFile, spawn, spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { Lab, type LabHost, sh } from "../lab/topology.js";
import { type Dockerd, startDockerd } from "./helpers/dockerd.js";
import { type EtcdServer, startEtcd } from "./helpers/etcd.js";

const REPO = fileURLToPath(new URL("../../", import.meta.url));
const COMPOSE_FILE = join(REPO, "lab/compose/docker-compose.yml");
const MAKE_BASE = join(REPO, "lab/compose/make-base.sh");
const ENTRYPOINT = join(REPO, "lab/compose/entrypoint.sh");
const ETCD_IP = "198.18.0.254";
const NETWORK_CONFIG = '{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}';
// debootstrap takes minutes: the base's root filesystem is kept here between runs, named
// after what goes into it, and made again when the script or Node changes.
const BASE_CACHE_DIR = "/var/cache/weft-compose";

function exec(cmd: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs: number) {
  return new Promise<{ code: number; out: string }>((resolve) =>
    execFile(cmd, args, { env, cwd: REPO, timeout: timeoutMs, maxBuffer: 64 << 20 }, (err, stdout, stderr) =>
      resolve({ code: err === null ? 0 : Number((err as { code?: number }).code ?? 1), out: `${stdout}${stderr}` }),
    ),
  );
}

describe("compose lab: docker-compose up --build under a Docker engine of its own", { timeout: 1_500_000 }, () => {
  let dockerd: Dockerd | undefined;
  let env: NodeJS.ProcessEnv = {};
  const project = `stp${randomBytes(3).toString("hex")}`;
  const underlay = `198.19.${100 + (randomBytes(1)[0]! % 100)}`;
  const compose = (args: string[], timeoutMs = 120_000) =>
    exec("docker-compose", ["-p", project, "-f", COMPOSE_FILE, ...args], env, timeoutMs);
  let linksBefore: string[] = [];
  const podIps = new Map<string, string>();
  const hosts = ["host1", "host2", "host3"];

  before(async () => {
    linksBefore = await rootLinks();
    dockerd = await startDockerd();
    env = {
      ...dockerd.env,
      WEFT_BASE_IMAGE: "weft-base:local",
      WEFT_ETCD_IMAGE: "weft-base:local",
      WEFT_UNDERLAY: `${underlay}.0/24`,
    };
    const key = createHash("sha256").update(readFileSync(MAKE_BASE)).update(process.version).digest("hex").slice(0, 16);
    const cache = join(BASE_CACHE_DIR, `base-${key}.tar`);
    if (existsSync(BASE_CACHE_DIR)) {
      for (const f of readdirSync(BASE_CACHE_DIR))
        if (f !== `base-${key}.tar`) rmSync(join(BASE_CACHE_DIR, f), { force: true });
    }
    const base = await exec(MAKE_BASE, ["weft-base:local"], { ...env, WEFT_BASE_CACHE: cache }, 900_000);
    assert.equal(base.code, 0, `make-base.sh: ${base.out}`);
    const up = await compose(["up", "--build", "-d"], 900_000);
    assert.equal(up.code, 0, `docker-compose up --build: ${up.out}`);
    for (const h of hosts) {
      let logs = "";
      for (let i = 0; i < 120; i++) {
        logs = (await compose(["logs", "--no-color", h])).out;
        if (/: ready\n/.test(logs)) break;
        await new Promise((r) => setTimeout(r, 1000));
      }
      const ip = /pod pod is up with (\d+\.\d+\.\d+\.\d+)/.exec(logs)?.[1];
      assert.ok(ip !== undefined && /: ready\n/.test(logs), `${h} not ready in 120 s:\n${logs}`);
      podIps.set(h, ip);
    }
  });

  after(async () => {
    if (dockerd !== undefined) {
      await compose(["down", "-v", "--remove-orphans"]).catch(() => undefined);
      await dockerd.stop();
    }
  });

  it("puts one lease per host container into etcd, each with its address on the internal network", async () => {
    const r = await compose(["exec", "-T", "etcd", "etcdctl", "get", "--prefix", "/coreos.com/network/subnets/"]);
    assert.equal(r.code, 0, r.out);
    const publicIps = [...r.out.matchAll(/"PublicIP":"([\d.]+)"/g)].map((m) => m[1] as string);
    assert.equal(publicIps.length, 3, r.out);
    assert.equal(new Set(publicIps).size, 3, r.out);
    for (const ip of publicIps) assert.ok(ip.startsWith(`${underlay}.`), `${ip} in ${underlay}.0/24`);
  });

  it("each host's pod pings the pods of the other hosts", async () => {
    for (const a of hosts) {
      for (const b of hosts) {
        if (a === b) continue;
        const to = podIps.get(b) as string;
        const r = await compose([
          "exec",
          "-T",
          a,
          "ip",
          "netns",
          "exec",
          "pod",
          "ping",
          "-c",
          "2",
          "-i",
          "0.2",
          "-W",
          "3",
          to,
        ]);
        assert.equal(r.code, 0, `${a} pod -> ${b} pod ${to}: ${r.out}`);
      }
    }
  });

  it("docker-compose down, then the engine's removal, leave nothing behind", async () => {
    const down = await compose(["down", "-v", "--remove-orphans"]);
    assert.equal(down.code, 0, down.out);
    const ps = await exec("docker", ["ps", "-aq"], env, 30_000);
    assert.equal(ps.out.trim(), "", "no containers");
    const nets = await exec("docker", ["network", "ls", "--format", "{{.Name}}"], env, 30_000);
    assert.deepEqual(nets.out.trim().split("\n").sort(), ["host", "none"], "only the built-in networks");
    const d = dockerd as Dockerd;
    dockerd = undefined;
    await d.stop();
    assert.deepEqual(await rootLinks(), linksBefore, "no bridge or veth left in the root namespace");
    assert.doesNotMatch(readFileSync("/proc/self/mountinfo", "utf8"), /stp-dockerd-/, "no mount left");
    assert.equal(existsSync(d.host.slice("unix://".length)), false, "the engine's directories are gone");
  });
});

describe("compose lab config", () => {
  it("docker-compose config accepts lab/compose/docker-compose.yml", () => {
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

describe("compose entrypoint.sh on three host namespaces with one etcd", { timeout: 120_000 }, () => {
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

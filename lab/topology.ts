// The lab's hosts and pods, all inside network namespaces it creates (BENCH.md
// topology). Two hosts get a direct underlay veth unless `bridge` is asked for;
// more hosts hang off a bridge in a switch namespace. Underlay 198.18.0.0/24,
// pods from the hosts' leases in 10.244.0.0/16. Nothing is created in the root
// namespace: every veth is born inside its namespaces (`ip -n`), so deleting the
// namespaces removes it. Used by `npm run lab`, the netns end-to-end tests and
// `bench lab`.

import { type ChildProcess, execFile, spawn } from "node:child_process";
import { closeSync, mkdirSync, openSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { subnetEnvValues } from "../control/subnet-env.js";

const execFileAsync = promisify(execFile);

export const UNDERLAY_PREFIX = "198.18.0";
export const DEFAULT_NETWORK_CONFIG = '{"Network":"10.244.0.0/16","Backend":{"Type":"udp","Port":8285}}';

export async function sh(cmd: string, args: readonly string[], opts: { timeoutMs?: number } = {}): Promise<string> {
  try {
    const { stdout } = await execFileAsync(cmd, args as string[], { timeout: opts.timeoutMs ?? 60_000 });
    return stdout;
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`${cmd} ${args.join(" ")}: ${String(e.stderr ?? "").trim() || e.message}`);
  }
}

/** Runs a command inside a namespace. */
export function nsRun(
  ns: string,
  cmd: string,
  args: readonly string[],
  opts: { timeoutMs?: number } = {},
): Promise<string> {
  return sh("ip", ["netns", "exec", ns, cmd, ...args], opts);
}

export interface LabHost {
  readonly index: number;
  readonly ns: string;
  /** Underlay interface name inside the host namespace. */
  readonly iface: string;
  readonly underlayIp: string;
  /** Per-host state: subnet.env, logs. */
  readonly dir: string;
  weft: ChildProcess | null;
}

export interface LabPod {
  readonly host: LabHost;
  readonly ns: string;
  readonly ip: string;
}

export interface LabState {
  readonly prefix: string;
  readonly dir: string;
  readonly namespaces: string[];
  readonly pids: number[];
}

export interface SubnetEnvFields {
  network: string;
  subnet: string;
  mtu: number;
}

export function readSubnetEnvFile(path: string): SubnetEnvFields {
  const values = subnetEnvValues(readFileSync(path, "utf8"));
  const get = (k: string) => values.get(k);
  const network = get("FLANNEL_NETWORK");
  const subnet = get("FLANNEL_SUBNET");
  const mtu = Number(get("FLANNEL_MTU"));
  if (network === undefined || subnet === undefined || !(mtu > 0)) throw new Error(`${path}: incomplete subnet.env`);
  return { network, subnet, mtu };
}

export interface LabOptions {
  prefix: string;
  hosts: number;
  dir: string;
  underlayMtu?: number[];
  /** Put the hosts on the switch namespace's bridge even when there are only two. */
  bridge?: boolean;
  /**
   * Called before each namespace is created, so a caller can record it first: a
   * crash between the record and the creation leaves a name that is not there,
   * never a namespace nobody knows about.
   */
  willCreateNamespace?: (name: string) => void;
}

export class Lab {
  readonly hosts: LabHost[] = [];
  readonly pods: LabPod[] = [];
  readonly namespaces: string[] = [];
  /** The namespace holding the underlay bridge br0, or null for two hosts on one veth. */
  switchNs: string | null = null;
  private readonly prefix: string;
  readonly dir: string;
  readonly registryDir: string;
  private readonly willCreateNamespace: (name: string) => void;
  private destroyed = false;

  private constructor(prefix: string, dir: string, willCreateNamespace: (name: string) => void) {
    this.prefix = prefix;
    this.dir = dir;
    this.registryDir = join(dir, "registry");
    this.willCreateNamespace = willCreateNamespace;
  }

  /**
   * Creates `hosts` host namespaces on an underlay. `prefix` names everything
   * (keep it short: veth names are limited to 15 characters).
   */
  static async create(opts: LabOptions): Promise<Lab> {
    if (!/^[a-z0-9]{1,8}$/.test(opts.prefix)) throw new Error(`lab prefix "${opts.prefix}" must be 1..8 of [a-z0-9]`);
    if (opts.hosts < 2 || opts.hosts > 200) throw new Error(`lab hosts ${opts.hosts} must be between 2 and 200`);
    mkdirSync(opts.dir, { recursive: true });
    const lab = new Lab(opts.prefix, opts.dir, opts.willCreateNamespace ?? (() => {}));
    try {
      await lab.build(opts.hosts, opts.underlayMtu ?? [], opts.bridge ?? false);
    } catch (err) {
      await lab.destroy();
      throw err;
    }
    return lab;
  }

  /** Creates a namespace with lo up; destroy() deletes it. */
  async addNamespace(name: string): Promise<void> {
    this.willCreateNamespace(name);
    await sh("ip", ["netns", "add", name]);
    this.namespaces.push(name);
    await sh("ip", ["-n", name, "link", "set", "lo", "up"]);
  }

  private async build(count: number, mtus: number[], bridge: boolean): Promise<void> {
    for (let i = 1; i <= count; i++) {
      const ns = `${this.prefix}-h${i}`;
      await this.addNamespace(ns);
      const dir = join(this.dir, `h${i}`);
      mkdirSync(dir, { recursive: true });
      this.hosts.push({ index: i, ns, iface: "eth0", underlayIp: `${UNDERLAY_PREFIX}.${i}`, dir, weft: null });
      for (const [key, value] of [
        ["net.ipv4.ip_forward", "1"],
        ["net.ipv4.conf.all.rp_filter", "0"],
        ["net.ipv4.conf.default.rp_filter", "0"],
      ]) {
        await nsRun(ns, "sysctl", ["-qw", `${key}=${value}`]);
      }
    }
    if (count === 2 && !bridge) {
      const [a, b] = this.hosts as [LabHost, LabHost];
      await sh("ip", ["-n", a.ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b.ns]);
    } else {
      const sw = `${this.prefix}-sw`;
      await this.addNamespace(sw);
      this.switchNs = sw;
      await sh("ip", ["-n", sw, "link", "add", "br0", "type", "bridge"]);
      await sh("ip", ["-n", sw, "link", "set", "br0", "up"]);
      for (const h of this.hosts) {
        const port = `h${h.index}`;
        await sh("ip", ["-n", h.ns, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", sw]);
        await sh("ip", ["-n", sw, "link", "set", port, "master", "br0", "up"]);
      }
    }
    for (const h of this.hosts) {
      const mtu = mtus[h.index - 1];
      if (mtu !== undefined) await sh("ip", ["-n", h.ns, "link", "set", "eth0", "mtu", String(mtu)]);
      await sh("ip", ["-n", h.ns, "addr", "add", `${h.underlayIp}/24`, "dev", "eth0"]);
      await sh("ip", ["-n", h.ns, "link", "set", "eth0", "up"]);
    }
  }

  /** Writes the network config into the lab's file registry. */
  writeRegistryConfig(config = DEFAULT_NETWORK_CONFIG): void {
    mkdirSync(this.registryDir, { recursive: true });
    writeFileSync(join(this.registryDir, "config"), config);
  }

  subnetFile(host: LabHost): string {
    return join(host.dir, "subnet.env");
  }

  /**
   * Starts weftd in the host's namespace (file registry by default); extra
   * flags are appended. Its log goes to <host dir>/weftd.log. `detached` gives
   * it its own session, so it outlives a lab that is kept running and is not
   * hit by the terminal's Ctrl-C while the lab tears down in order.
   */
  startWeft(
    host: LabHost,
    extra: readonly string[] = [],
    opts: { detached?: boolean; env?: Record<string, string> } = {},
  ): ChildProcess {
    if (host.weft !== null && host.weft.exitCode === null) throw new Error(`weftd already runs on ${host.ns}`);
    // The launcher users run, so the lab gets weftd's Node settings too.
    const weftd = new URL("../../bin/weftd", import.meta.url).pathname;
    const args = [
      "netns",
      "exec",
      host.ns,
      weftd,
      "--iface",
      host.iface,
      "--subnet-file",
      this.subnetFile(host),
      ...(extra.some((a) => a.includes("etcd-endpoints") || a.includes("kube-subnet-mgr"))
        ? []
        : ["--registry-dir", this.registryDir]),
      ...extra,
    ];
    const log = openSync(join(host.dir, "weftd.log"), "a");
    const child = spawn("ip", args, {
      stdio: ["ignore", log, log],
      detached: opts.detached ?? false,
      env: { ...process.env, NODE: process.execPath, ...opts.env },
    });
    closeSync(log);
    host.weft = child;
    return child;
  }

  /** Waits until weftd on `host` has written a subnet.env newer than `since`. */
  async waitForSubnetEnv(host: LabHost, timeoutMs = 20_000, since = 0): Promise<SubnetEnvFields> {
    const path = this.subnetFile(host);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const { mtimeMs } = statSync(path);
        if (mtimeMs > since) return readSubnetEnvFile(path);
      } catch {
        // Not written yet.
      }
      if (host.weft !== null && host.weft.exitCode !== null) {
        throw new Error(`weftd on ${host.ns} exited with ${host.weft.exitCode}: ${this.logTail(host)}`);
      }
      if (Date.now() > deadline)
        throw new Error(`weftd on ${host.ns} wrote no subnet.env in ${timeoutMs} ms: ${this.logTail(host)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  logTail(host: LabHost, lines = 15): string {
    try {
      return readFileSync(join(host.dir, "weftd.log"), "utf8").trim().split("\n").slice(-lines).join("\n");
    } catch {
      return "(no log)";
    }
  }

  /**
   * A pod by hand (the kernel wiring the flannel CNI chain would do): a veth
   * from the host's namespace into a pod namespace, the host side taking the
   * subnet's first address, the pod the `podIndex`+1-th, MTU from subnet.env.
   */
  async addPod(host: LabHost, env: SubnetEnvFields, podIndex = 1): Promise<LabPod> {
    const ns = `${this.prefix}-p${host.index}${podIndex > 1 ? `-${podIndex}` : ""}`;
    await this.addNamespace(ns);
    const [gw, len] = env.subnet.split("/") as [string, string];
    const octets = gw.split(".").map(Number);
    const podIp = `${octets[0]}.${octets[1]}.${octets[2]}.${(octets[3] as number) + podIndex}`;
    const hostSide = `pod${podIndex}`;
    await sh("ip", [
      "-n",
      host.ns,
      "link",
      "add",
      hostSide,
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
    if (podIndex === 1) await sh("ip", ["-n", host.ns, "addr", "add", `${gw}/${len}`, "dev", hostSide]);
    else await sh("ip", ["-n", host.ns, "route", "replace", `${podIp}/32`, "dev", hostSide]);
    await sh("ip", ["-n", host.ns, "link", "set", hostSide, "up"]);
    await sh("ip", ["-n", ns, "link", "set", "eth0", "mtu", String(env.mtu)]);
    await sh("ip", ["-n", ns, "addr", "add", `${podIp}/${len}`, "dev", "eth0"]);
    await sh("ip", ["-n", ns, "link", "set", "eth0", "up"]);
    await sh("ip", ["-n", ns, "route", "add", "default", "via", gw]);
    const pod = { host, ns, ip: podIp };
    this.pods.push(pod);
    return pod;
  }

  /** Stops weftd on a host with `signal` and waits for it to exit; returns its exit code. */
  async stopWeft(host: LabHost, signal: NodeJS.Signals = "SIGTERM", timeoutMs = 10_000): Promise<number | null> {
    const child = host.weft;
    if (child === null) return null;
    host.weft = null;
    if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
    const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
    child.kill(signal);
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    const code = await exited;
    clearTimeout(timer);
    return code;
  }

  state(): LabState {
    const pids = this.hosts.flatMap((h) => (h.weft?.pid !== undefined && h.weft.exitCode === null ? [h.weft.pid] : []));
    return { prefix: this.prefix, dir: this.dir, namespaces: [...this.namespaces], pids };
  }

  /** Stops every weftd, deletes every namespace (and with them every veth and TUN), removes the lab dir. */
  async destroy(opts: { keepDir?: boolean } = {}): Promise<void> {
    if (this.destroyed) return;
    this.destroyed = true;
    await Promise.all(this.hosts.map((h) => this.stopWeft(h).catch(() => null)));
    await destroyNamespaces(this.namespaces);
    if (!opts.keepDir) rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Deletes namespaces that exist among `names` (missing ones are fine). */
export async function destroyNamespaces(names: readonly string[]): Promise<void> {
  const listed = (await sh("ip", ["netns", "list"])).split("\n").map((l) => l.split(" ")[0]);
  for (const name of names) {
    if (listed.includes(name)) await sh("ip", ["netns", "del", name]);
  }
}

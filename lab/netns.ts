// `npm run lab`: a small cluster in network namespaces, built the way a real one is.
//
//   weftlab-sw   the underlay: bridge br0 (and etcd on 198.18.0.254 with --etcd)
//   weftlab-hN   a host: eth0 198.18.0.N on br0, weftd, cni0, the CNI plugins' iptables rules
//   weftlab-hN-pM  a pod, created by CNI ADD from kube-flannel's conflist in weftlab-hN
//
// then prints the connectivity matrix, the lease table and weft's counters per host.
//
//   npm run lab                         up, show, tear down (3 hosts × 2 pods, file registry)
//   npm run lab -- --etcd               leases in a real etcd in the lab instead
//   npm run lab -- --kube               a Kubernetes cluster: weftd --kube-subnet-mgr (lab/kube-lab.ts)
//   npm run lab -- --hosts 4 --pods 3   bigger
//   npm run lab -- --keep               leave it running; then: npm run lab -- down
//   npm run lab -- down                 remove a kept lab, or whatever a crashed one left
//
// Everything lives in namespaces named <prefix>-* and under the state directory
// (/run/weft-lab); lab/state.ts records it all before it is created.

import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { type LabEtcd, startLabEtcd } from "./etcd.js";
import { KUBE_HEALTHZ_PORT, type KubeLab, kubectlHint, kubectlReport, kubeUp } from "./kube-lab.js";
import { formatMatrix, type MatrixPod, pairOk, runMatrix } from "./matrix.js";
import { formatCounters, METRICS_PORT, type Samples, scrape, waitForPeers } from "./metrics.js";
import { type Job, missingPackages, present } from "./packages.js";
import { cniAdd, defaultCniPath, labConflist, missingCniTools, type PodCni } from "./pods.js";
import {
  DEFAULT_PREFIX,
  defaultStateDir,
  labDir,
  type ProcessRole,
  readState,
  StateJournal,
  stateFile,
} from "./state.js";
import { listNamespaces, stopProcesses, teardown } from "./teardown.js";
import { DEFAULT_NETWORK_CONFIG, Lab, type LabHost, type SubnetEnvFields, sh, UNDERLAY_PREFIX } from "./topology.js";

const ETCD_IP = `${UNDERLAY_PREFIX}.254`;
const ETCD_PREFIX = "/coreos.com/network";

const USAGE = `usage: npm run lab -- [up] [options]      bring a lab up, check it, print it
       npm run lab -- down [--prefix P]    remove it (also what a crashed lab left)

options:
  --hosts N        hosts on the underlay bridge (default 3, 2..50)
  --pods P         pods per host, made by the CNI chain (default 2, 1..50)
  --etcd           leases in a real etcd in the lab (default: the file registry)
  --kube           Kubernetes mode: a stand-in API server, Nodes and podCIDRs, weftd --kube-subnet-mgr
                   (3 hosts or more: one waits for its podCIDR, one joins late)
  --keep           leave the lab running (npm run lab -- down removes it)
  --transfer-kib K TCP bytes per pair in the matrix (default 1024)
  --prefix P       namespace prefix, [a-z0-9]{1,8} (default ${DEFAULT_PREFIX})
  --state-dir D    state and lab files (default /run/weft-lab, or /run/weft-lab-P)`;

// Set on SIGINT/SIGTERM: the build still in flight must neither create nor print anything more.
let aborting = false;

function say(line = ""): void {
  if (!aborting) process.stdout.write(`${line}\n`);
}

interface UpOptions {
  hosts: number;
  pods: number;
  etcd: boolean;
  kube: boolean;
  keep: boolean;
  kib: number;
  prefix: string;
  stateDir: string;
}

/** The command that removes this lab, with the options that name it. */
function downCommand(o: UpOptions): string {
  const prefix = o.prefix === DEFAULT_PREFIX ? "" : ` --prefix ${o.prefix}`;
  const dir = o.stateDir === defaultStateDir(o.prefix) ? "" : ` --state-dir ${o.stateDir}`;
  return `npm run lab -- down${prefix}${dir}`;
}

/** Why `up` must not start, or null. Refuses rather than touching a lab that exists. */
async function existingLab(o: UpOptions): Promise<string | null> {
  const state = readState(o.stateDir);
  const down = downCommand(o);
  if (state instanceof Error) return `a lab state file exists but is unreadable (${state.message}); ${down} removes it`;
  if (state !== null) {
    const alive = existsSync(`/proc/${state.labPid}`);
    if (state.phase === "up") {
      const hosts = state.hosts.map((h) => h.ns).join(", ");
      return `a lab is already running (hosts ${hosts}, ${state.pods.length} pods; state in ${stateFile(o.stateDir)}); leave it, or remove it with: ${down}`;
    }
    if (alive) return `a lab is being brought up right now by pid ${state.labPid}; wait for it, or: ${down}`;
    return `a lab that did not finish starting is left over (its pid ${state.labPid} is gone); remove it with: ${down}`;
  }
  const leftovers = (await listNamespaces()).filter((n) => n.startsWith(`${o.prefix}-`));
  if (leftovers.length > 0)
    return `namespaces ${leftovers.join(", ")} are left over from a lab; remove them with: ${down}`;
  return null;
}

function preflight(o: UpOptions): string | null {
  if (process.getuid?.() !== 0) return "the lab needs root (network namespaces, veths, iptables): run it as root";
  const missing = missingPackages(labJob(o), process.env.PATH ?? "");
  if (missing.length > 0) {
    const names = missing.map((p) => p.name).join(" ");
    return `${missing.map((p) => p.probe).join(", ")} not installed (apt-get install ${names})`;
  }
  if (!present("unshare", process.env.PATH ?? "")) return "unshare is not installed (apt-get install util-linux)";
  if (!existsSync("/dev/net/tun")) return "/dev/net/tun is missing: weftd needs TUN devices";
  return missingCniTools(defaultCniPath());
}

async function leaseTable(lab: Lab, etcd: LabEtcd | null): Promise<string[]> {
  const hostOf = (ip: string) => lab.hosts.find((h) => h.underlayIp === ip)?.ns ?? "?";
  const rows: [string, string][] = [];
  if (etcd !== null) {
    const out = (await etcd.etcdctl(["get", "--prefix", `${ETCD_PREFIX}/subnets/`])).trim().split("\n");
    for (let i = 0; i + 1 < out.length; i += 2) rows.push([out[i] as string, out[i + 1] as string]);
  } else {
    const dir = join(lab.registryDir, "subnets");
    for (const key of readdirSync(dir).sort()) rows.push([key, readFileSync(join(dir, key), "utf8")]);
  }
  const where =
    etcd !== null
      ? `etcd at ${etcd.endpoint}, keys ${ETCD_PREFIX}/subnets/*`
      : `file registry, ${join(lab.registryDir, "subnets")}/*`;
  const lines = [`lease table (${where}):`];
  const hostIndex = (value: string) => lab.hosts.findIndex((h) => value.includes(`"${h.underlayIp}"`));
  rows.sort((a, b) => hostIndex(a[1]) - hostIndex(b[1]));
  for (const [key, value] of rows) {
    const subnet = (key.split("/").pop() ?? key).replace("-", "/");
    const publicIp = (JSON.parse(value) as { PublicIP?: string }).PublicIP ?? "?";
    lines.push(`  ${subnet.padEnd(16)} PublicIP ${publicIp.padEnd(14)} ${hostOf(publicIp)}   ${value.trim()}`);
  }
  return lines;
}

/**
 * `npm run lab` installed the plain lab's packages; --etcd and --kube need more,
 * installed here by the same setup step (lab/packages.ts is the one list).
 */
function labJob(o: UpOptions): Job {
  return o.kube ? "lab-kube" : o.etcd ? "lab-etcd" : "lab";
}

function setupExtras(o: UpOptions): boolean {
  const job = labJob(o);
  if (job === "lab") return true;
  const setup = join(dirname(fileURLToPath(import.meta.url)), "setup.js");
  return spawnSync(process.execPath, [setup, job], { stdio: "inherit" }).status === 0;
}

async function up(o: UpOptions): Promise<number> {
  const started = Date.now();
  if (!setupExtras(o)) return 1;
  const problem = preflight(o) ?? (await existingLab(o));
  if (problem !== null) {
    say(`lab: ${problem}`);
    return 1;
  }
  const cniPath = defaultCniPath();
  let journal: StateJournal;
  try {
    journal = StateJournal.create({
      version: 1,
      prefix: o.prefix,
      stateDir: o.stateDir,
      labDir: labDir(o.stateDir),
      labPid: process.pid,
      phase: "starting",
      registry: o.kube ? "kube" : o.etcd ? "etcd" : "file",
      etcdEndpoint: null,
      cniPath,
      namespaces: [],
      processes: [],
      hosts: [],
      pods: [],
    });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    say(`lab: another lab started in ${o.stateDir} at the same moment; leave it, or remove it with: ${downCommand(o)}`);
    return 1;
  }

  // Ctrl-C or a kill: stop creating things, then remove what exists. Twice, because a
  // command already running when the signal came may finish creating its namespace.
  const abort = (signal: NodeJS.Signals) => {
    if (aborting) return;
    aborting = true;
    process.stdout.write(`\nlab: ${signal}, removing the lab\n`);
    journal.close();
    teardown(o.stateDir, o.prefix)
      .then((r) => {
        for (const line of r.lines) process.stdout.write(`lab: ${line}\n`);
        return new Promise((resolve) => setTimeout(resolve, 300));
      })
      .then(() => teardown(o.stateDir, o.prefix))
      .finally(() => process.exit(130));
  };
  process.on("SIGINT", abort);
  process.on("SIGTERM", abort);

  let failed = false;
  let broughtUp = false;
  try {
    const lab = await Lab.create({
      prefix: o.prefix,
      hosts: o.hosts,
      dir: journal.state.labDir,
      bridge: true,
      willCreateNamespace: (name) => journal.namespace(name),
    });
    // The kube-flannel conflist, plus subnetFile on the flannel entry: lab hosts share
    // one filesystem, so each host's plugin is pointed at its own subnet.env.
    const hostFiles = lab.hosts.map((h) => ({
      ns: h.ns,
      underlayIp: h.underlayIp,
      subnetFile: lab.subnetFile(h),
      varLib: join(h.dir, "var-lib"),
      cniCache: join(h.dir, "cni-cache"),
      conflist: labConflist(lab.subnetFile(h)),
    }));
    for (const h of hostFiles) mkdirSync(h.varLib, { recursive: true });
    journal.update((s) => {
      s.hosts = hostFiles;
    });
    const sw = lab.switchNs as string;
    const metricsPort = o.kube ? KUBE_HEALTHZ_PORT : METRICS_PORT;

    let etcd: LabEtcd | null = null;
    const weftFlags = ["--ip-masq", "--healthz-ip", "127.0.0.1", "--healthz-port", String(METRICS_PORT)];
    if (o.etcd) {
      await sh("ip", ["-n", sw, "addr", "add", `${ETCD_IP}/24`, "dev", "br0"]);
      const dir = join(lab.dir, "etcd");
      mkdirSync(dir, { recursive: true });
      etcd = await startLabEtcd({ ns: sw, ip: ETCD_IP, dir, spawned: (pid) => journal.process(pid, "etcd", sw) });
      await etcd.etcdctl(["put", `${ETCD_PREFIX}/config`, DEFAULT_NETWORK_CONFIG]);
      journal.update((s) => {
        s.etcdEndpoint = etcd?.endpoint ?? null;
      });
      weftFlags.push("--etcd-endpoints", etcd.endpoint, "--etcd-prefix", ETCD_PREFIX);
    } else if (!o.kube) {
      lab.writeRegistryConfig(DEFAULT_NETWORK_CONFIG);
    }
    const where = o.kube
      ? "Nodes' podCIDRs and annotations (Kubernetes mode)"
      : etcd !== null
        ? `etcd at ${etcd.endpoint}`
        : `the file registry ${lab.registryDir}`;
    say(
      `lab: ${o.hosts} hosts on bridge br0 in ${sw} (underlay ${UNDERLAY_PREFIX}.0/24), ${o.pods} pods each; leases in ${where}`,
    );
    if (!o.kube) say(`network config: ${DEFAULT_NETWORK_CONFIG}`);

    const pods: (MatrixPod & { host: LabHost })[] = [];
    const makePods = async (host: LabHost): Promise<MatrixPod[]> => {
      const files = hostFiles[host.index - 1] as (typeof hostFiles)[number];
      const cni: PodCni = {
        hostNs: host.ns,
        varLib: files.varLib,
        cacheDir: files.cniCache,
        conflist: files.conflist,
        cniPath,
      };
      const made: MatrixPod[] = [];
      for (let j = 1; j <= o.pods; j++) {
        const ns = `${host.ns}-p${j}`;
        journal.update((s) => s.pods.push({ ns, hostNs: host.ns, containerId: ns, ip: null }));
        await lab.addNamespace(ns);
        const ip = await cniAdd(cni, ns, ns);
        journal.update((s) => {
          const pod = s.pods.find((p) => p.ns === ns);
          if (pod) pod.ip = ip;
        });
        const pod = { name: ns.slice(o.prefix.length + 1), ns, ip, host };
        pods.push(pod);
        made.push(pod);
      }
      return made;
    };
    let kube: KubeLab | null = null;
    let envs: SubnetEnvFields[];
    if (o.kube) {
      const spawned = (pid: number | undefined, role: ProcessRole, ns: string) => journal.process(pid, role, ns);
      kube = await kubeUp({ lab, prefix: o.prefix, say, spawned, makePods });
      envs = kube.envs;
    } else {
      for (const h of lab.hosts) {
        const child = lab.startWeft(h, weftFlags, { detached: true });
        journal.process(child.pid, "weftd", h.ns);
      }
      envs = await Promise.all(lab.hosts.map((h) => lab.waitForSubnetEnv(h)));
      await Promise.all(lab.hosts.map(makePods));
    }
    pods.sort((a, b) => a.ns.localeCompare(b.ns, "en", { numeric: true }));
    journal.update((s) => {
      s.phase = "up";
    });
    broughtUp = true;

    say("hosts:");
    lab.hosts.forEach((h, i) => {
      const env = envs[i];
      const mine = pods.filter((p) => p.host === h).map((p) => `${p.name} ${p.ip}`);
      say(
        `  ${h.ns.padEnd(12)} eth0 ${h.underlayIp.padEnd(12)} lease ${env?.subnet} mtu ${env?.mtu}  pods: ${mine.join(", ")}`,
      );
    });
    say(`pods made by CNI ADD with ${JSON.stringify(hostFiles[0]?.conflist)} (subnetFile per host)`);
    await waitForPeers(lab.hosts, metricsPort);
    for (const line of kube !== null ? await kubectlReport(kube) : await leaseTable(lab, etcd)) say(line);

    const results = await runMatrix(pods, {
      kib: o.kib,
      spawned: (pid, ns) => journal.process(pid, "transfer", ns),
      stop: async (pids) => {
        await stopProcesses(pids);
        for (const pid of pids) journal.forgetProcess(pid);
      },
    });
    for (const line of formatMatrix(pods, results, o.kib)) say(line);
    failed = !results.every(pairOk);

    say("weft counters per host (/metrics):");
    const counters = await Promise.all(lab.hosts.map((h) => scrape(h.ns, metricsPort)));
    for (const [i, h] of lab.hosts.entries()) say(`  ${h.ns.padEnd(12)} ${formatCounters(counters[i] as Samples)}`);
    // The point of weft: none of this used the kernel's VXLAN; say so with evidence.
    const vxlan = await Promise.all(
      lab.hosts.map((h) => sh("ip", ["-n", h.ns, "-o", "link", "show", "type", "vxlan"])),
    );
    say(
      vxlan.every((v) => v.trim() === "")
        ? "kernel VXLAN devices on the hosts: none (the overlay is flannel0, a TUN device, and UDP 8285)"
        : `kernel VXLAN devices found: ${vxlan.join(" ").trim()}`,
    );
    say(`up and checked in ${((Date.now() - started) / 1000).toFixed(1)} s`);
    say("next: npm run bench -- lab   (weft against kernel vxlan and direct routing, on its own 2-host topology)");
    if (failed) {
      for (const h of lab.hosts) say(`--- ${h.ns} weftd log (${join(h.dir, "weftd.log")}) ---\n${lab.logTail(h)}`);
    }
  } catch (err) {
    // The signal handler tears down and exits; returning would exit first.
    if (aborting) return new Promise<number>(() => {});
    failed = true;
    say(`lab failed: ${(err as Error).message}`);
    const logs = journal.state.hosts.map((h) => join(h.subnetFile, "..", "weftd.log")).filter((f) => existsSync(f));
    for (const log of logs)
      say(`--- ${log} ---\n${readFileSync(log, "utf8").trim().split("\n").slice(-10).join("\n")}`);
  }
  if (aborting) return new Promise<number>(() => {});

  if (o.keep && broughtUp) {
    const first = journal.state.pods[0]?.ns;
    const down = downCommand(o);
    say(`left running. enter a pod: ip netns exec ${first} bash   weftd logs: ${journal.state.labDir}/h*/weftd.log`);
    if (o.kube) say(`kubectl: ${kubectlHint(journal.state.labDir, o.prefix)}`);
    say(`remove it with: ${down}`);
    return failed ? 1 : 0;
  }
  journal.close();
  const removed = await teardown(o.stateDir, o.prefix);
  for (const line of removed.lines) say(`lab: ${line}`);
  return failed ? 1 : 0;
}

async function main(): Promise<number> {
  let parsed: ReturnType<typeof parse>;
  try {
    parsed = parse();
  } catch (err) {
    say(`lab: ${(err as Error).message}\n${USAGE}`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.help) {
    say(USAGE);
    return 0;
  }
  const command = positionals[0] ?? "up";
  const prefix = values.prefix ?? DEFAULT_PREFIX;
  if (!/^[a-z0-9]{1,8}$/.test(prefix)) {
    say(`lab: --prefix "${prefix}" must be 1 to 8 of [a-z0-9]`);
    return 2;
  }
  const stateDir = values["state-dir"] ?? defaultStateDir(prefix);
  if (command === "down") {
    if (process.getuid?.() !== 0) {
      say("lab: removing the lab needs root: run it as root");
      return 1;
    }
    const r = await teardown(stateDir, prefix);
    if (!r.found) say(`lab: no lab to remove (no ${stateFile(stateDir)}, no ${prefix}-* namespaces)`);
    for (const line of r.lines) say(`lab: ${line}`);
    return 0;
  }
  if (command !== "up" || positionals.length > 1) {
    say(`lab: unknown command "${positionals.join(" ")}" (use up or down)\n${USAGE}`);
    return 2;
  }
  const int = (name: string, text: string | undefined, def: number, min: number, max: number): number => {
    const n = text === undefined ? def : Number(text);
    if (!Number.isInteger(n) || n < min || n > max)
      throw new Error(`--${name} ${text}: must be an integer from ${min} to ${max}`);
    return n;
  };
  let o: UpOptions;
  try {
    o = {
      hosts: int("hosts", values.hosts, 3, 2, 50),
      pods: int("pods", values.pods, 2, 1, 50),
      kib: int("transfer-kib", values["transfer-kib"], 1024, 1, 1024 * 1024),
      etcd: values.etcd ?? false,
      kube: values.kube ?? false,
      keep: values.keep ?? false,
      prefix,
      stateDir,
    };
  } catch (err) {
    say(`lab: ${(err as Error).message}`);
    return 2;
  }
  if (o.kube && o.etcd) {
    say("lab: --kube and --etcd exclude each other: in Kubernetes mode the leases are the Nodes' podCIDRs");
    return 2;
  }
  if (o.kube && o.hosts < 3) {
    say(`lab: --kube needs --hosts 3 or more (one host waits for its podCIDR, one joins late), not ${o.hosts}`);
    return 2;
  }
  return up(o);
}

function parse() {
  return parseArgs({
    options: {
      keep: { type: "boolean" },
      etcd: { type: "boolean" },
      kube: { type: "boolean" },
      help: { type: "boolean", short: "h" },
      hosts: { type: "string" },
      pods: { type: "string" },
      "transfer-kib": { type: "string" },
      prefix: { type: "string" },
      "state-dir": { type: "string" },
    },
    allowPositionals: true,
  });
}

main().then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`lab: ${(err as Error).message}\n`);
    process.exit(1);
  },
);

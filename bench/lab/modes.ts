// Bringing a mode up on the BENCH.md topology, from scratch each time:
//
//   <prefix>-p1 (pod) ─veth─ <prefix>-h1 ═eth0 198.18.0.1 ══ 198.18.0.2 eth0═ <prefix>-h2 ─veth─ <prefix>-p2 (pod)
//
//   direct   routes to the other pod subnet via the underlay (flannel's host-gw): the ceiling
//   vxlan    flannel.1 per host as flannel's vxlan backend wires it: the reference
//   weft     weftd on both hosts (udp backend, file registry), pods in their leases
//   flannel  flannel's udp dataplane design as a C proxy (flannel-proxy.c beside this file)
//
// The namespaces, veths and pods come from lab/topology.ts; this file adds
// only what differs per mode.

import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Lab, type LabHost, type LabPod, type SubnetEnvFields, sh } from "../../lab/topology.js";
import { live, nsSpawn, sleep, track } from "./children.js";
import { cleanup } from "./cleanup.js";

export const MODES = ["direct", "vxlan", "weft", "flannel"] as const;
export type Mode = (typeof MODES)[number];
/** What runs without --modes; `flannel` (a C proxy built here) is asked for by name. */
export const DEFAULT_MODES: readonly Mode[] = ["direct", "vxlan", "weft"];
/** The overlay MTU of the udp backend: 1500 minus the outer IP and UDP headers. */
export const UDP_MTU = 1472;
export const VXLAN_MTU = 1450;
const FLANNEL_PORT = 8285;
/** weftd's /metrics inside each host namespace (127.0.0.1 there). */
export const METRICS_PORT = 9100;
const NETWORK = "10.244.0.0/16";

/** Modes whose dataplane is a process of ours (CPU, memory and syscalls are measured for them). */
export const hasDaemon = (mode: Mode) => mode === "weft" || mode === "flannel";

/** A mode named on the command line (`flag` names the option in the error). */
export function parseMode(text: string, flag: string): Mode {
  if (!(MODES as readonly string[]).includes(text))
    throw new Error(`${flag}: ${JSON.stringify(text)} is not one of ${MODES.join(", ")}`);
  return text as Mode;
}

export interface Env {
  mode: Mode;
  lab: Lab;
  h1: LabHost;
  h2: LabHost;
  p1: LabPod;
  p2: LabPod;
  mtu: number;
  /** flannel mode: the C proxy on h1 and on h2. */
  proxies: ChildProcess[];
}

function podEnv(hostIndex: number, mtu: number): SubnetEnvFields {
  return { network: NETWORK, subnet: `10.244.${hostIndex}.1/24`, mtu };
}

async function bringUp(mode: Mode, dir: string, weftdArgs: readonly string[] = []): Promise<Env> {
  const lab = await Lab.create({ prefix: live.prefix, hosts: 2, dir });
  live.lab = lab;
  const [h1, h2] = lab.hosts as [LabHost, LabHost];
  let p1: LabPod;
  let p2: LabPod;
  let mtu: number;
  let proxies: ChildProcess[] = [];
  if (mode === "direct") {
    mtu = 1500;
    p1 = await lab.addPod(h1, podEnv(1, mtu));
    p2 = await lab.addPod(h2, podEnv(2, mtu));
    await inNs("ip", h1, `route add 10.244.2.0/24 via ${h2.underlayIp} dev ${h1.iface}`);
    await inNs("ip", h2, `route add 10.244.1.0/24 via ${h1.underlayIp} dev ${h2.iface}`);
  } else if (mode === "vxlan") {
    mtu = VXLAN_MTU;
    await vxlanWiring(h1, h2);
    p1 = await lab.addPod(h1, podEnv(1, mtu));
    p2 = await lab.addPod(h2, podEnv(2, mtu));
  } else if (mode === "flannel") {
    mtu = UDP_MTU;
    proxies = await flannelWiring(h1, h2, dir);
    p1 = await lab.addPod(h1, podEnv(1, mtu));
    p2 = await lab.addPod(h2, podEnv(2, mtu));
  } else {
    lab.writeRegistryConfig();
    for (const h of [h1, h2])
      lab.startWeft(h, ["--healthz-port", String(METRICS_PORT), "--healthz-ip", "127.0.0.1", ...weftdArgs]);
    const e1 = await lab.waitForSubnetEnv(h1);
    const e2 = await lab.waitForSubnetEnv(h2);
    mtu = e1.mtu;
    p1 = await lab.addPod(h1, e1);
    p2 = await lab.addPod(h2, e2);
  }
  const env = { mode, lab, h1, h2, p1, p2, mtu, proxies };
  await waitReachable(env);
  return env;
}

/** Brings `mode` up in a fresh directory, runs `body`, and takes everything down again. */
export async function withMode<T>(
  mode: Mode,
  body: (env: Env) => Promise<T>,
  weftdArgs: readonly string[] = [],
): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), `weft-bench-${mode}-`));
  const env = await bringUp(mode, dir, weftdArgs);
  try {
    return await body(env);
  } finally {
    await cleanup();
  }
}

function vtepMac(h: LabHost): string {
  return `02:77:62:00:00:${h.index.toString(16).padStart(2, "0")}`;
}

/**
 * flannel's vxlan backend, by hand: flannel.1 (VNI 1, port 8472, no learning,
 * MTU 1450) holding the subnet's network address /32; per remote lease a route
 * via that lease's .0 address onlink, a permanent neighbour entry for it and
 * an fdb entry sending its VTEP MAC to the remote underlay address.
 */
async function vxlanWiring(h1: LabHost, h2: LabHost): Promise<void> {
  for (const [h, other] of [
    [h1, h2],
    [h2, h1],
  ] as const) {
    const vxlan = `id 1 local ${h.underlayIp} dev ${h.iface} dstport 8472 nolearning`;
    await inNs("ip", h, `link add flannel.1 address ${vtepMac(h)} type vxlan ${vxlan}`);
    await inNs("ip", h, `link set flannel.1 mtu ${VXLAN_MTU} up`);
    await inNs("ip", h, `addr add 10.244.${h.index}.0/32 dev flannel.1`);
    const gw = `10.244.${other.index}.0`;
    await inNs("ip", h, `route add 10.244.${other.index}.0/24 via ${gw} dev flannel.1 onlink`);
    await inNs("ip", h, `neigh replace ${gw} lladdr ${vtepMac(other)} dev flannel.1 nud permanent`);
    await inNs("bridge", h, `fdb append ${vtepMac(other)} dev flannel.1 dst ${other.underlayIp} self permanent`);
  }
}

/** Compiles a C file of the bench (beside this file in the source tree) into `dir`; throws with cc's message. */
export function compileBenchC(name: string, dir: string, why: string): string {
  const source = fileURLToPath(new URL(`../../../bench/lab/${name}.c`, import.meta.url));
  const binary = join(dir, name);
  try {
    execFileSync("cc", ["-O2", "-o", binary, source], { stdio: ["ignore", "ignore", "pipe"] });
  } catch (err) {
    const stderr = String((err as { stderr?: Buffer }).stderr ?? "").trim();
    throw new Error(`${why}: cc could not build ${source}: ${stderr || (err as Error).message}`);
  }
  return binary;
}

/**
 * flannel's udp backend as its own C proxy runs it (flannel-proxy.c, built
 * here with cc): on each host flannel0 and UDP 8285 with a route to the
 * other host's subnet, flannel0 configured as weft configures it (the
 * subnet's network address /32, MTU 1472, one route for the Network).
 */
async function flannelWiring(h1: LabHost, h2: LabHost, dir: string): Promise<ChildProcess[]> {
  const binary = compileBenchC("flannel-proxy", dir, "flannel mode");
  const proxies: ChildProcess[] = [];
  for (const [h, other] of [
    [h1, h2],
    [h2, h1],
  ] as const) {
    const route = `10.244.${other.index}.0/24=${other.underlayIp}`;
    const child = track(
      spawn("ip", ["netns", "exec", h.ns, binary, "flannel0", String(FLANNEL_PORT), route], {
        stdio: ["ignore", "pipe", "pipe"],
      }),
    );
    proxies.push(child);
    await proxyUp(child, h);
    await inNs("ip", h, `addr add 10.244.${h.index}.0/32 dev flannel0`);
    await inNs("ip", h, `link set flannel0 mtu ${UDP_MTU} txqueuelen 1000 up`);
    await inNs("ip", h, `route add ${NETWORK} dev flannel0`);
  }
  return proxies;
}

/** Resolves once the proxy printed "up", rejects with its stderr when it exits first. */
function proxyUp(child: ChildProcess, h: LabHost): Promise<void> {
  return new Promise((resolve, reject) => {
    let stdout = "";
    let stderr = "";
    const timer = setTimeout(() => fail("printed nothing in 10 s"), 10_000);
    const fail = (why: string) => {
      clearTimeout(timer);
      reject(new Error(`flannel proxy on ${h.ns} ${why}: ${stderr.trim()}`));
    };
    child.stderr?.setEncoding("utf8").on("data", (d: string) => {
      stderr += d;
    });
    child.stdout?.setEncoding("utf8").on("data", (d: string) => {
      stdout += d;
      if (/^up /m.test(stdout)) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once("exit", (code) => fail(`exited with ${code}`));
  });
}

/** `ip -n <host ns> <words>` (or bridge): configuration inside the host's namespace only. */
function inNs(tool: "ip" | "bridge", h: LabHost, words: string): Promise<string> {
  return sh(tool, ["-n", h.ns, ...words.split(" ")]);
}

export async function waitReachable(env: Env): Promise<void> {
  for (let i = 0; i < 30; i++) {
    const r = await nsSpawn(env.p1.ns, "ping", ["-c", "1", "-W", "1", env.p2.ip], 5000);
    if (r.code === 0) return;
    await sleep(200);
  }
  const logs = env.mode === "weft" ? `\n${env.lab.logTail(env.h1)}\n${env.lab.logTail(env.h2)}` : "";
  throw new Error(`${env.mode}: ${env.p1.ip} cannot reach ${env.p2.ip} after 30 tries${logs}`);
}

/** The dataplane processes of a mode (none for the kernel's own). */
export function daemonPids(env: Env): number[] {
  if (env.mode === "weft") return weftPids(env);
  return env.proxies.map((p) => {
    if (p.pid === undefined || p.exitCode !== null) throw new Error(`${env.mode}: a proxy is not running`);
    return p.pid;
  });
}

export function weftPids(env: Env): number[] {
  return [env.h1, env.h2].map((h) => {
    const pid = h.weft?.pid;
    if (pid === undefined || h.weft?.exitCode !== null) throw new Error(`weftd on ${h.ns} is not running`);
    return pid;
  });
}

// `npm run lab -- --kube`: the lab's hosts as the nodes of a Kubernetes cluster, weftd
// on each as kube-weft.yml runs it, against the stand-in API server on the underlay:
//
//   <prefix>-api   the stand-in kube-apiserver (lab/kube/), eth0 198.18.0.254 on br0,
//                  HTTPS :6443 with a CA made now; flannel.kubeconfig (flannel's
//                  service-account token) for weftd, admin.kubeconfig for kubectl
//
// The steps show what kube mode adds to the file and etcd labs, with N hosts:
//
//   1. kubelet registers Nodes 1..N-1; the node controller gives 1..N-2 their podCIDRs
//   2. weftd starts on hosts 1..N-1; host N-1 has no podCIDR yet and waits (/readyz 503
//      naming the field) where flanneld would exit and crash-loop
//   3. the controller assigns host N-1's podCIDR; the same weftd joins, no restart
//   4. pods on hosts 1..N-1 through the CNI chain; forwarding between them checked
//   5. host N joins late: its Node registered and assigned, weftd started, pods made
//
// netns.ts then runs the matrix over every pod and prints kubectlReport().

import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { NodeController } from "./kube/node-controller.js";
import { type Standin, startStandin } from "./kube/standin.js";
import type { MatrixPod } from "./matrix.js";
import { waitForPeers } from "./metrics.js";
import type { ProcessRole } from "./state.js";
import { type Lab, type LabHost, nsRun, type SubnetEnvFields, sh, UNDERLAY_PREFIX } from "./topology.js";

export const API_IP = `${UNDERLAY_PREFIX}.254`;
export const KUBE_HEALTHZ_PORT = 8081;
/** kube-weft.yml's net-conf.json. */
export const KUBE_NET_CONF = '{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}';
/** kube-weft.yml's container args; the lab adds the kubeconfig and the net-conf path. */
export const KUBE_WEFT_ARGS = ["--ip-masq", "--kube-subnet-mgr", `--healthz-port=${KUBE_HEALTHZ_PORT}`] as const;

export interface KubeLabOptions {
  lab: Lab;
  prefix: string;
  say: (line?: string) => void;
  spawned: (pid: number | undefined, role: ProcessRole, ns: string) => void;
  /** Makes a host's pods through the CNI chain. */
  makePods: (host: LabHost) => Promise<MatrixPod[]>;
}

export interface KubeLab {
  readonly apiNs: string;
  readonly api: Standin;
  /** subnet.env of each host, in lab.hosts' order. */
  readonly envs: SubnetEnvFields[];
  /** kubectl with the admin kubeconfig, inside the API server's namespace. */
  kubectl(args: readonly string[]): Promise<string>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls `check` until it returns a value; throws naming `what` after `ms`. */
async function until<T>(what: string, check: () => Promise<T | null>, ms = 20_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v !== null) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(150);
  }
}

/** GET /readyz of the host's weftd; status 0 when nothing answers yet. */
async function readyz(host: LabHost): Promise<{ status: number; body: string }> {
  const out = await nsRun(host.ns, process.execPath, [
    "-e",
    `fetch("http://127.0.0.1:${KUBE_HEALTHZ_PORT}/readyz").then(async r => process.stdout.write(JSON.stringify({status: r.status, body: await r.text()})), () => process.stdout.write('{"status":0,"body":""}'))`,
  ]);
  return JSON.parse(out);
}

/** The API server in its own namespace on the underlay bridge, as a control-plane machine. */
async function startApiServer(o: KubeLabOptions): Promise<{ apiNs: string; api: Standin }> {
  const sw = o.lab.switchNs as string;
  const apiNs = `${o.prefix}-api`;
  await o.lab.addNamespace(apiNs);
  await sh("ip", ["-n", apiNs, "link", "add", "eth0", "type", "veth", "peer", "name", "api", "netns", sw]);
  await sh("ip", ["-n", sw, "link", "set", "api", "master", "br0", "up"]);
  await sh("ip", ["-n", apiNs, "addr", "add", `${API_IP}/24`, "dev", "eth0"]);
  await sh("ip", ["-n", apiNs, "link", "set", "eth0", "up"]);
  const dir = join(o.lab.dir, "kube");
  mkdirSync(dir, { recursive: true });
  // Detached, like weftd: a kept lab's API server outlives this process and the terminal's Ctrl-C.
  const api = await startStandin({
    dir,
    listen: `${API_IP}:6443`,
    commandPrefix: ["ip", "netns", "exec", apiNs],
    detached: true,
  });
  o.spawned(api.child.pid, "apiserver", apiNs);
  return { apiNs, api };
}

export async function kubeUp(o: KubeLabOptions): Promise<KubeLab> {
  const { lab, say } = o;
  const { apiNs, api } = await startApiServer(o);
  const netConf = join(api.dir, "net-conf.json");
  writeFileSync(netConf, KUBE_NET_CONF);
  say(`stand-in API server ${api.url} in ${apiNs} (HTTPS, CA made now: ${api.caFile})`);
  say(`  kubeconfig for weftd: ${api.flannelKubeconfig} (flannel's service-account token)`);
  say(`  kubeconfig for you:   ${api.adminKubeconfig} (admin client certificate)`);
  say(`network config (net-conf.json): ${KUBE_NET_CONF}`);

  const flags = [...KUBE_WEFT_ARGS, "--kubeconfig-file", api.flannelKubeconfig, "--net-config-path", netConf];
  const start = (h: LabHost) => {
    const child = lab.startWeft(h, flags, { detached: true, env: { NODE_NAME: h.ns } });
    o.spawned(child.pid, "weftd", h.ns);
  };
  const controller = new NodeController(api);
  const late = lab.hosts.at(-1) as LabHost;
  const early = lab.hosts.slice(0, -1);
  const waiting = early.at(-1) as LabHost;
  const ready = early.slice(0, -1);
  const envs = new Map<LabHost, SubnetEnvFields>();

  for (const h of early) await controller.register(h.ns, h.underlayIp);
  say(`kubelet: registered Nodes ${early.map((h) => h.ns).join(", ")} (InternalIP = each host's eth0)`);
  await controller.sync();
  for (const h of ready) say(`node controller: ${h.ns} podCIDR ${await controller.assign(h.ns)}`);
  say(`weftd on ${early.map((h) => h.ns).join(", ")}: ${flags.join(" ")}  (env NODE_NAME=<host>)`);
  for (const h of early) start(h);
  for (const h of ready) envs.set(h, await lab.waitForSubnetEnv(h));

  const wait = await until(`weftd on ${waiting.ns} to report its wait on /readyz`, async () => {
    if (waiting.weft?.exitCode != null)
      throw new Error(`weftd on ${waiting.ns} exited with ${waiting.weft.exitCode}: ${lab.logTail(waiting)}`);
    const r = await readyz(waiting);
    return r.status === 503 && r.body.includes("podCIDR") ? r : null;
  });
  say(`${waiting.ns} has no podCIDR yet; weftd waits (flanneld would exit): /readyz ${wait.status} ${wait.body}`);
  const pid = waiting.weft?.pid;
  const assigned = Date.now();
  say(`node controller: ${waiting.ns} podCIDR ${await controller.assign(waiting.ns)}`);
  envs.set(waiting, await lab.waitForSubnetEnv(waiting));
  await until(`${waiting.ns}'s /readyz 200`, async () => ((await readyz(waiting)).status === 200 ? true : null));
  const same = waiting.weft?.pid === pid && waiting.weft?.exitCode === null;
  say(
    `${waiting.ns} joined ${Date.now() - assigned} ms after the assignment, ${same ? `same weftd (pid ${pid}), no restart` : "AFTER A RESTART"}: ` +
      `lease ${envs.get(waiting)?.subnet}, /readyz 200`,
  );

  const pods = await Promise.all(early.map((h) => o.makePods(h)));
  await waitForPeers(early, KUBE_HEALTHZ_PORT);
  const [from, to] = [pods[0]?.[0], pods.at(-1)?.[0]] as [MatrixPod, MatrixPod];
  await until(`a ping from ${from.name} to ${to.name}`, async () =>
    nsRun(from.ns, "ping", ["-c", "1", "-W", "1", to.ip]).then(
      () => true,
      () => null,
    ),
  );
  say(`forwarding: ${early.length} hosts up, ${from.name} ${from.ip} -> ${to.name} ${to.ip} answers`);

  await controller.register(late.ns, late.underlayIp);
  const lateCidr = await controller.assign(late.ns);
  const joining = Date.now();
  start(late);
  envs.set(late, await lab.waitForSubnetEnv(late));
  await o.makePods(late);
  say(
    `late host ${late.ns}: kubelet registered its Node, node controller podCIDR ${lateCidr}, weftd started; ` +
      `lease ${envs.get(late)?.subnet} and pods ${Date.now() - joining} ms later`,
  );

  const kubectl = (args: readonly string[]) =>
    nsRun(apiNs, "kubectl", [
      "--kubeconfig",
      api.adminKubeconfig,
      "--cache-dir",
      join(api.dir, "kubectl-cache"),
      ...args,
    ]);
  return { apiNs, api, envs: lab.hosts.map((h) => envs.get(h) as SubnetEnvFields), kubectl };
}

const P = "flannel\\.alpha\\.coreos\\.com";
const COLUMNS = [
  "NAME:.metadata.name",
  "PODCIDR:.spec.podCIDR",
  `PUBLIC-IP:.metadata.annotations.${P}/public-ip`,
  `KUBE-SUBNET-MANAGER:.metadata.annotations.${P}/kube-subnet-manager`,
  `BACKEND-DATA:.metadata.annotations.${P}/backend-data`,
  'NETWORK-UNAVAILABLE:.status.conditions[?(@.type=="NetworkUnavailable")].status',
  'REASON:.status.conditions[?(@.type=="NetworkUnavailable")].reason',
].join(",");

/** What kubectl shows of the Nodes once every weftd has set NetworkUnavailable=False. */
export async function kubectlReport(k: KubeLab): Promise<string[]> {
  await until("NetworkUnavailable=False on every Node", async () => {
    const nodes = (await k.api.request("GET", "/api/v1/nodes")).body.items ?? [];
    const set = nodes.filter((n: { status?: { conditions?: { type: string; status: string }[] } }) =>
      n.status?.conditions?.some((c) => c.type === "NetworkUnavailable" && c.status === "False"),
    );
    return set.length === nodes.length ? true : null;
  });
  const lines = [`kubectl (KUBECONFIG=${k.api.adminKubeconfig}, run in ${k.apiNs}):`];
  const first = (await k.kubectl(["get", "nodes", "-o", "name"])).trim().split("\n")[0] ?? "";
  for (const args of [
    ["get", "nodes", "-o", "wide"],
    ["get", "nodes", "-o", `custom-columns=${COLUMNS}`],
    ["get", first, "-o", "jsonpath={.metadata.annotations}"],
  ]) {
    lines.push(`$ kubectl ${args.map((a) => (/[[\]()?@="]/.test(a) ? `'${a}'` : a)).join(" ")}`);
    lines.push(
      ...(await k.kubectl(args))
        .trimEnd()
        .split("\n")
        .map((l) => `  ${l}`),
    );
  }
  return lines;
}

/** How to run kubectl against a kept lab (the API server is reachable only from the lab's namespaces). */
export function kubectlHint(labDir: string, prefix: string): string {
  const dir = join(labDir, "kube");
  // KUBECACHEDIR keeps kubectl's discovery cache in the lab's directory, which down removes.
  return `export KUBECONFIG=${join(dir, "admin.kubeconfig")} KUBECACHEDIR=${join(dir, "kubectl-cache")}; ip netns exec ${prefix}-api kubectl get nodes -o wide`;
}

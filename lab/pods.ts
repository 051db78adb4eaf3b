// Pods the way kubelet makes them: a network namespace, then the CNI network list
// from kube-flannel.yml run against it (flannel → bridge + host-local, then portmap).
// The plugins run inside the host's namespace, so cni0, the veths and the iptables
// rules land there, and each run gets the host's own /var/lib (a lab directory bound
// over it in a private mount namespace), so host-local's leases and flannel's saved
// delegate configs never touch the real machine's /var/lib.

import { existsSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { type CniResult, runConflist } from "../cni/chain.js";

/** kube-flannel.yml's cni-conf.json, verbatim. */
export const KUBE_FLANNEL_CONFLIST = {
  name: "cbr0",
  cniVersion: "0.3.1",
  plugins: [
    { type: "flannel", delegate: { hairpinMode: true, isDefaultGateway: true } },
    { type: "portmap", capabilities: { portMappings: true } },
  ],
} as const;

export const SYSTEM_CNI_DIR = "/usr/lib/cni";

/** The repo's cni/ directory, where the `flannel` plugin shim lives. */
export const REPO_CNI_DIR = fileURLToPath(new URL("../../cni/", import.meta.url));

/** Our flannel first, then Debian's containernetworking-plugins, as the README tells users to set CNI_PATH. */
export function defaultCniPath(): string[] {
  return [REPO_CNI_DIR.replace(/\/$/, ""), SYSTEM_CNI_DIR];
}

/**
 * The kube-flannel conflist with one field added: `subnetFile` on the flannel entry.
 * A real node has one subnet.env at flannel's default path; lab hosts share one
 * filesystem, so each host's plugin must be told where its own file is.
 */
export function labConflist(subnetFile: string): object {
  const list = structuredClone(KUBE_FLANNEL_CONFLIST) as unknown as { plugins: Record<string, unknown>[] };
  Object.assign(list.plugins[0] as object, { subnetFile });
  return list;
}

/** What is missing for CNI pods on this machine, or null. */
export function missingCniTools(cniPath: readonly string[]): string | null {
  for (const plugin of ["bridge", "host-local", "portmap"]) {
    if (!cniPath.some((d) => existsSync(join(d, plugin)))) {
      return `CNI plugin ${plugin} not found in ${cniPath.join(":")} (apt-get install containernetworking-plugins)`;
    }
  }
  if (!existsSync(new URL("../cni/main.js", import.meta.url))) return "dist/cni/main.js is missing (npm run build)";
  return null;
}

export interface PodCni {
  /** The host's namespace, where the plugins run; null runs them in ours (a container is the host). */
  hostNs: string | null;
  /** Bound over /var/lib for the plugins; null runs them with the real /var/lib (inside a container). */
  varLib: string | null;
  /** libcni's result cache. */
  cacheDir: string;
  conflist: object;
  cniPath: string[];
}

/** Runs each plugin in the host namespace, with the host's /var/lib when one is given. */
function wrapper(cni: PodCni): string[] | undefined {
  if (cni.hostNs === null) {
    if (cni.varLib !== null) throw new Error("a private /var/lib for the CNI plugins needs a host namespace");
    return undefined;
  }
  if (cni.varLib === null) return ["ip", "netns", "exec", cni.hostNs];
  return [
    "unshare",
    "--mount",
    "--propagation",
    "private",
    "sh",
    "-c",
    'mount --bind "$0" /var/lib && ns="$1" && shift && exec ip netns exec "$ns" "$@"',
    cni.varLib,
    cni.hostNs,
  ];
}

function options(cni: PodCni, podNs: string, containerId: string) {
  return {
    containerId,
    netns: `/var/run/netns/${podNs}`,
    ifName: "eth0",
    cniPath: cni.cniPath,
    cacheDir: cni.cacheDir,
    wrapper: wrapper(cni),
  };
}

/** CNI ADD for an existing pod namespace; returns the pod's IPv4 address (without prefix length). */
export async function cniAdd(cni: PodCni, podNs: string, containerId: string): Promise<string> {
  const result = (await runConflist(cni.conflist, "ADD", options(cni, podNs, containerId))) as CniResult;
  const ips = result.ips as { address?: string }[] | undefined;
  const address = ips?.find((ip) => /^\d+\.\d+\.\d+\.\d+\//.test(ip.address ?? ""))?.address;
  if (address === undefined)
    throw new Error(`CNI ADD for ${podNs} returned no IPv4 address: ${JSON.stringify(result)}`);
  return address.split("/")[0] as string;
}

/** CNI DEL; idempotent, as the spec requires of every plugin. */
export async function cniDel(cni: PodCni, podNs: string, containerId: string): Promise<void> {
  await runConflist(cni.conflist, "DEL", options(cni, podNs, containerId));
}

// The two things a real cluster does to a Node before flannel can use it, as one lab
// step against the stand-in API server:
//
//   kubelet            registers its Node (POST /api/v1/nodes, InternalIP and a Ready
//                      condition in the status it creates it with)
//   kube-controller-   --allocate-node-cidrs --cluster-cidr=10.244.0.0/16
//   manager            --node-cidr-mask-size=24: the range allocator gives each Node
//                      the next free /24 by a strategic-merge PATCH of spec.podCIDR(s)
//
// The allocator works as its cidrset does: podCIDRs the Nodes already hold are marked
// used first, then each allocation takes the first free /24 at or after the one after
// the last it gave, so the first Node gets 10.244.0.0/24 (kubeadm's control plane does)
// and the rest follow in the order they are assigned. The lab decides when each Node is
// assigned, which is how it shows a weftd waiting for its podCIDR.

import { readFileSync } from "node:fs";
import { release } from "node:os";
import type { Standin } from "./standin.js";

export const CLUSTER_CIDR = "10.244.0.0/16";
export const NODE_CIDR_MASK = 24;

function toInt(ip: string): number {
  return ip.split(".").reduce((n, o) => n * 256 + Number(o), 0);
}

function toIp(n: number): string {
  return [24, 16, 8, 0].map((s) => Math.floor(n / 2 ** s) % 256).join(".");
}

function osImage(): string {
  try {
    return /^PRETTY_NAME="?([^"\n]*)"?$/m.exec(readFileSync("/etc/os-release", "utf8"))?.[1] ?? "Linux";
  } catch {
    return "Linux";
  }
}

/** The Node kubelet creates when it first starts on a host with this name and address. */
export function kubeletNode(name: string, internalIp: string): object {
  const now = new Date().toISOString().replace(/\.\d+Z$/, "Z");
  return {
    apiVersion: "v1",
    kind: "Node",
    metadata: {
      name,
      labels: { "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": process.arch },
    },
    spec: {},
    status: {
      addresses: [
        { type: "InternalIP", address: internalIp },
        { type: "Hostname", address: name },
      ],
      conditions: [
        {
          type: "Ready",
          status: "True",
          reason: "KubeletReady",
          message: "kubelet is posting ready status",
          lastHeartbeatTime: now,
          lastTransitionTime: now,
        },
      ],
      // Not a kubelet and no container runtime: the lab says so where kubectl shows them.
      nodeInfo: {
        kubeletVersion: "weft-lab",
        osImage: osImage(),
        kernelVersion: release(),
        containerRuntimeVersion: "netns",
        operatingSystem: "linux",
        architecture: process.arch,
      },
    },
  };
}

export class NodeController {
  private readonly base: number;
  private readonly count: number;
  private readonly size: number;
  private readonly used = new Set<number>();
  private next = 0;

  constructor(
    private readonly api: Standin,
    clusterCidr = CLUSTER_CIDR,
    private readonly mask = NODE_CIDR_MASK,
  ) {
    const [ip, len] = clusterCidr.split("/") as [string, string];
    this.base = toInt(ip);
    this.size = 2 ** (32 - mask);
    this.count = 2 ** (mask - Number(len));
  }

  /** kubelet's registration of a host's Node. */
  async register(name: string, internalIp: string): Promise<void> {
    const r = await this.api.request("POST", "/api/v1/nodes", kubeletNode(name, internalIp));
    if (r.status !== 201) throw new Error(`registering Node ${name}: HTTP ${r.status} ${JSON.stringify(r.body)}`);
  }

  /** Marks the podCIDRs Nodes already hold, as the allocator does when it starts. */
  async sync(): Promise<void> {
    const r = await this.api.request("GET", "/api/v1/nodes");
    for (const node of r.body.items ?? []) {
      const cidr: string | undefined = node.spec?.podCIDR;
      if (cidr !== undefined) this.used.add((toInt(cidr.split("/")[0] as string) - this.base) / this.size);
    }
  }

  /** Gives Node `name` the next free podCIDR; returns it. */
  async assign(name: string): Promise<string> {
    let i = this.next;
    for (let tried = 0; this.used.has(i); tried++, i = (i + 1) % this.count) {
      if (tried >= this.count) throw new Error(`no free /${this.mask} left in the cluster CIDR for Node ${name}`);
    }
    const cidr = `${toIp(this.base + i * this.size)}/${this.mask}`;
    const patch = { spec: { podCIDR: cidr, podCIDRs: [cidr] } };
    const r = await this.api.request("PATCH", `/api/v1/nodes/${name}`, patch, "application/strategic-merge-patch+json");
    if (r.status !== 200)
      throw new Error(`assigning ${cidr} to Node ${name}: HTTP ${r.status} ${JSON.stringify(r.body)}`);
    this.used.add(i);
    this.next = (i + 1) % this.count;
    return cidr;
  }
}

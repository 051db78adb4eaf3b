// The scale bench's cluster on paper: Network 10.0.0.0/8 with /24 leases,
// the two real hosts in 10.244.1.0/24 and 10.244.2.0/24 (the lab's pod
// range), and as many made-up peers as asked for elsewhere in 10/8, each with
// its own underlay address in 198.19.0.0/16 (inside the lab's 198.18.0.0/15,
// and never on any interface: nothing is ever sent to a made-up peer).

import type { Ipv4Prefix } from "../../net/addr.js";

export const SCALE_NETWORK = "10.0.0.0/8";
export const SCALE_CONFIG = `{"Network":"${SCALE_NETWORK}","SubnetLen":24,"Backend":{"Type":"udp","Port":8285}}`;
/** The real hosts' leases: the pods and their traffic stay in 10.244.0.0/16. */
export const HOST_SUBNET_THIRD_OCTET = [1, 2] as const;
/** Made-up peers per second octet (10.X.*.0/24), and how many there can be. */
const PER_OCTET = 256;
const SECOND_OCTETS = [...Array(255).keys()].map((i) => i + 1).filter((o) => o !== 244);
export const MAX_PEERS = SECOND_OCTETS.length * PER_OCTET;

/** The lease of made-up peer `i`: 10.X.Y.0/24, never in 10.244/16. */
export function peerSubnet(i: number): Ipv4Prefix {
  if (!Number.isInteger(i) || i < 0 || i >= MAX_PEERS)
    throw new Error(`peer index ${i} is outside 0..${MAX_PEERS - 1}`);
  const second = SECOND_OCTETS[Math.floor(i / PER_OCTET)] as number;
  const third = i % PER_OCTET;
  return { base: ((10 << 24) | (second << 16) | (third << 8)) >>> 0, len: 24 };
}

/** The underlay address of made-up peer `i`: 198.19.A.B with B in 1..250 (no .0, no .255). */
export function peerPublicIp(i: number): number {
  const a = Math.floor(i / 250);
  const b = (i % 250) + 1;
  if (a > 255) throw new Error(`peer index ${i} has no underlay address in 198.19.0.0/16`);
  return ((198 << 24) | (19 << 16) | (a << 8) | b) >>> 0;
}

/** The annotation prefix flanneld and weftd use by default. */
const P = "flannel.alpha.coreos.com/";

/**
 * A Node object as a real cluster's nodes carry them (about 6 kB as JSON):
 * labels, annotations, conditions, addresses, capacity, nodeInfo and a list
 * of cached images, of which forwarding needs three fields. `podCidr` and
 * `publicIp` are flannel's; a node without `publicIp` carries no flannel
 * annotations (its weftd has not published yet).
 */
export function kubeNode(name: string, podCidr: string, publicIp: string | null): object {
  const t = "2026-12-01T00:00:00Z";
  const annotations: Record<string, string> = {
    "node.alpha.kubernetes.io/ttl": "0",
    "volumes.kubernetes.io/controller-managed-attach-detach": "true",
    "kubeadm.alpha.kubernetes.io/cri-socket": "unix:///var/run/containerd/containerd.sock",
  };
  if (publicIp !== null) {
    Object.assign(annotations, {
      [`${P}backend-data`]: "null",
      [`${P}backend-type`]: "",
      [`${P}kube-subnet-manager`]: "true",
      [`${P}public-ip`]: publicIp,
    });
  }
  const condition = (type: string, status: string, reason: string, message: string) => ({
    type,
    status,
    lastHeartbeatTime: t,
    lastTransitionTime: t,
    reason,
    message,
  });
  const images = Array.from({ length: 24 }, (_, k) => ({
    names: [
      `registry.example.com/team-${k}/service-${k}@sha256:${String(k).padStart(2, "0").repeat(32)}`,
      `registry.example.com/team-${k}/service-${k}:v1.${k}.0`,
    ],
    sizeBytes: 10_000_000 + k * 1_234_567,
  }));
  return {
    apiVersion: "v1",
    kind: "Node",
    metadata: {
      name,
      labels: {
        "beta.kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "node.kubernetes.io/instance-type": "m5.xlarge",
        "topology.kubernetes.io/region": "eu-west-1",
        "topology.kubernetes.io/zone": "eu-west-1b",
      },
      annotations,
    },
    spec: { podCIDR: podCidr, podCIDRs: [podCidr], providerID: `aws:///eu-west-1b/i-${name}` },
    status: {
      capacity: { cpu: "4", "ephemeral-storage": "104845292Ki", memory: "16133600Ki", pods: "110" },
      allocatable: { cpu: "4", "ephemeral-storage": "96625420948", memory: "16031200Ki", pods: "110" },
      conditions: [
        condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
        condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
      ],
      addresses: [
        { type: "InternalIP", address: publicIp ?? "192.0.2.1" },
        { type: "Hostname", address: name },
      ],
      daemonEndpoints: { kubeletEndpoint: { Port: 10250 } },
      nodeInfo: {
        architecture: "amd64",
        bootID: `${name}-boot`,
        containerRuntimeVersion: "containerd://1.7.22",
        kernelVersion: "6.1.0-25-cloud-amd64",
        kubeProxyVersion: "v1.31.1",
        kubeletVersion: "v1.31.1",
        machineID: `${name}-machine`,
        operatingSystem: "linux",
        osImage: "Debian GNU/Linux 12 (bookworm)",
        systemUUID: `${name}-uuid`,
      },
      images,
    },
  };
}

/** Made-up peer `i` as a Node: "peer-<i>" with its subnet and underlay address. */
export function peerNode(i: number): object {
  const s = peerSubnet(i);
  const ip = peerPublicIp(i);
  const dotted = (n: number) => [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join(".");
  return kubeNode(`peer-${i}`, `${dotted(s.base)}/${s.len}`, dotted(ip));
}

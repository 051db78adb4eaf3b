// What weftd reads from and writes to a Node object, byte for byte as
// flanneld (COMPAT.md, "Kubernetes subnet manager"): the annotation prefix,
// the podCIDR, the peer annotations, and the two status PATCH bodies.

import { formatIpv4, type Ipv4Prefix, parseIpv4, parsePrefix } from "../../net/addr.js";

export const DEFAULT_ANNOTATION_PREFIX = "flannel.alpha.coreos.com";

/**
 * flannel's normalisation: at most one "/"; none → append "/"; then, unless
 * it ends in "/" or "-", append "-". Returns null when there is more than one "/".
 */
export function normaliseAnnotationPrefix(prefix: string): string | null {
  const slashes = prefix.split("/").length - 1;
  if (slashes > 1) return null;
  let p = slashes === 0 ? `${prefix}/` : prefix;
  if (!p.endsWith("/") && !p.endsWith("-")) p = `${p}-`;
  return p;
}

export type KubeNode = {
  metadata?: { name?: string; annotations?: Record<string, string>; resourceVersion?: string };
  spec?: { podCIDR?: string; podCIDRs?: string[] };
};

/** The annotations (after the prefix) weftd reads or writes: all a Node's forwarding needs, with its podCIDRs. */
const KEPT_ANNOTATIONS = [
  "backend-data",
  "backend-type",
  "kube-subnet-manager",
  "public-ip",
  "public-ip-overwrite",
  "node-public-ip",
];

/** The members of a Node that slimNode reads; a listing parses only these. */
export const SLIM_NODE_MEMBERS: readonly string[] = ["metadata", "spec"];

/**
 * What weftd keeps of a Node: its name, podCIDR(s) and flannel's annotations
 * under `prefix`; a real Node is several kB (labels, conditions, images),
 * this a few hundred bytes. Every reader in this file works on either.
 */
export function slimNode(node: KubeNode, prefix: string): KubeNode {
  const from = node.metadata?.annotations ?? {};
  const annotations: Record<string, string> = {};
  for (const name of KEPT_ANNOTATIONS) {
    const value = from[`${prefix}${name}`];
    if (typeof value === "string") annotations[`${prefix}${name}`] = value;
  }
  const spec: NonNullable<KubeNode["spec"]> = {};
  if (typeof node.spec?.podCIDR === "string") spec.podCIDR = node.spec.podCIDR;
  // map() makes an array of the exact length (filter() grows its result as
  // push does, room for 17: ~130 bytes more per peer), and podCIDRs[0] is
  // podCIDR's string, not a second copy.
  if (Array.isArray(node.spec?.podCIDRs))
    spec.podCIDRs = node.spec.podCIDRs
      .filter((c) => typeof c === "string")
      .map((c) => (c === spec.podCIDR ? spec.podCIDR : c));
  return { metadata: { name: nodeName(node), annotations }, spec };
}

/**
 * What weftd keeps of a peer's Node: its name and the two things its lease
 * is made of, parsed once (a string says why it is unusable, null that it
 * has none). ~130 bytes of heap a peer, where a slim Node took ~375.
 */
export interface PeerNode {
  readonly name: string;
  readonly publicIp: number | null | string;
  readonly podCidr: Ipv4Prefix | null | string;
}

export function peerNode(node: KubeNode, prefix: string): PeerNode {
  return { name: nodeName(node), publicIp: peerPublicIp(node, prefix), podCidr: podCidr(node) };
}

export function nodeName(node: KubeNode): string {
  return node.metadata?.name ?? "";
}

/** The node's first IPv4 podCIDR (spec.podCIDRs, else spec.podCIDR); null while unassigned; a string says why not. */
export function podCidr(node: KubeNode): Ipv4Prefix | null | string {
  const cidrs = node.spec?.podCIDRs?.length ? node.spec.podCIDRs : node.spec?.podCIDR ? [node.spec.podCIDR] : [];
  if (cidrs.length === 0) return null;
  for (const c of cidrs) {
    if (c.includes(":")) continue;
    const p = parsePrefix(c, true);
    if (p !== null) return p;
    return `podCIDR "${c}" is not an IPv4 CIDR`;
  }
  return `podCIDRs ${JSON.stringify(cidrs)} hold no IPv4 CIDR`;
}

/** A peer's public IP if it runs a kube subnet manager (flanneld or weftd); null if it does not; a string says why it is unusable. */
export function peerPublicIp(node: KubeNode, prefix: string): number | null | string {
  const a = node.metadata?.annotations ?? {};
  if (a[`${prefix}kube-subnet-manager`] !== "true") return null;
  const ip = a[`${prefix}public-ip`];
  if (ip === undefined) return `annotation ${prefix}public-ip is missing`;
  const n = parseIpv4(ip);
  return n < 0 ? `annotation ${prefix}public-ip "${ip}" is not an IPv4 address` : n;
}

/** The user's override of the address to publish, as flannel reads it: public-ip-overwrite, then node-public-ip. */
export function publicIpOverride(node: KubeNode, prefix: string): number | null | string {
  const a = node.metadata?.annotations ?? {};
  for (const key of [`${prefix}public-ip-overwrite`, `${prefix}node-public-ip`]) {
    const value = a[key];
    if (value === undefined || value === "") continue;
    const n = parseIpv4(value);
    return n < 0 ? `annotation ${key} "${value}" is not an IPv4 address` : n;
  }
  return null;
}

/** flanneld's annotations for the udp backend, in Go's (sorted) key order. */
function annotations(prefix: string, publicIp: number): [string, string][] {
  return [
    [`${prefix}backend-data`, "null"],
    [`${prefix}backend-type`, ""],
    [`${prefix}kube-subnet-manager`, "true"],
    [`${prefix}public-ip`, formatIpv4(publicIp)],
  ];
}

/** The annotation PATCH body, or null when the node already carries every value. */
export function annotationPatch(node: KubeNode, prefix: string, publicIp: number): string | null {
  const current = node.metadata?.annotations ?? {};
  const wanted = annotations(prefix, publicIp);
  if (wanted.every(([k, v]) => current[k] === v)) return null;
  const body = wanted.map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`).join(",");
  return `{"metadata":{"annotations":{${body}}}}`;
}

/** Go's time.Time JSON at second precision, as metav1.Time marshals. */
function rfc3339(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z");
}

export function networkAvailablePatch(nowMs: number): string {
  const t = rfc3339(nowMs);
  return (
    `{"status":{"conditions":[{"type":"NetworkUnavailable","status":"False",` +
    `"lastHeartbeatTime":"${t}","lastTransitionTime":"${t}",` +
    `"reason":"FlannelIsUp","message":"Flannel is running on this node"}]}}`
  );
}

export const STRATEGIC_MERGE = "application/strategic-merge-patch+json";

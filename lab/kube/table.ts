// Server-side printing of Nodes (`kubectl get nodes [-o wide]` asks for a
// meta.k8s.io Table), with kube-apiserver's columns.

import type { JsonObject } from "./store.js";

const COLUMNS = [
  ["Name", "string", 0, "name"],
  ["Status", "string", 0, ""],
  ["Roles", "string", 0, ""],
  ["Age", "string", 0, ""],
  ["Version", "string", 0, ""],
  ["Internal-IP", "string", 1, ""],
  ["External-IP", "string", 1, ""],
  ["OS-Image", "string", 1, ""],
  ["Kernel-Version", "string", 1, ""],
  ["Container-Runtime", "string", 1, ""],
] as const;

function age(created: unknown): string {
  const ms = Date.now() - Date.parse(String(created));
  if (!(ms >= 0)) return "<unknown>";
  const s = Math.floor(ms / 1000);
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m`;
  return `${Math.floor(s / 3600)}h`;
}

function nodeRow(node: JsonObject): unknown[] {
  const meta = (node.metadata ?? {}) as JsonObject;
  const status = (node.status ?? {}) as JsonObject;
  const conditions = (Array.isArray(status.conditions) ? status.conditions : []) as JsonObject[];
  const ready = conditions.find((c) => c.type === "Ready");
  const state = ready === undefined ? "Unknown" : ready.status === "True" ? "Ready" : "NotReady";
  const labels = (meta.labels ?? {}) as Record<string, string>;
  const roles = Object.keys(labels)
    .filter((l) => l.startsWith("node-role.kubernetes.io/"))
    .map((l) => l.slice("node-role.kubernetes.io/".length));
  const addresses = (Array.isArray(status.addresses) ? status.addresses : []) as JsonObject[];
  const address = (type: string) => String(addresses.find((a) => a.type === type)?.address ?? "<none>");
  const info = (status.nodeInfo ?? {}) as Record<string, string>;
  return [
    meta.name,
    state,
    roles.length > 0 ? roles.join(",") : "<none>",
    age(meta.creationTimestamp),
    info.kubeletVersion ?? "",
    address("InternalIP"),
    address("ExternalIP"),
    info.osImage ?? "<unknown>",
    info.kernelVersion ?? "<unknown>",
    info.containerRuntimeVersion ?? "<unknown>",
  ];
}

export function nodeTable(nodes: JsonObject[], resourceVersion: string): JsonObject {
  return {
    kind: "Table",
    apiVersion: "meta.k8s.io/v1",
    metadata: { resourceVersion },
    columnDefinitions: COLUMNS.map(([name, type, priority, format]) => ({
      name,
      type,
      format,
      description: "",
      priority,
    })),
    rows: nodes.map((node) => ({
      cells: nodeRow(node),
      object: { kind: "PartialObjectMetadata", apiVersion: "meta.k8s.io/v1", metadata: node.metadata },
    })),
  };
}

/** kubectl's get asks for `application/json;as=Table;...` first. */
export function wantsTable(accept: string | undefined): boolean {
  return accept?.split(",")[0]?.includes("as=Table") ?? false;
}

// What the stand-in tells clients about itself: /version and the legacy
// discovery documents (/api, /apis, /api/v1, /apis/<group>/<version>) kubectl
// reads before it does anything. Only Node and Pod are served; the other kinds
// are advertised so that `kubectl apply --dry-run=client` can map the kinds of
// kube-weft.yml to resources (a GET of any of them answers 404, so the dry run
// reports "created").

const RESOURCE_VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"];

interface ResourceEntry {
  name: string;
  kind: string;
  namespaced: boolean;
  shortNames?: string[];
}

function resourceList(groupVersion: string, resources: ResourceEntry[]) {
  return {
    kind: "APIResourceList",
    apiVersion: "v1",
    groupVersion,
    resources: resources.map((r) => ({
      name: r.name,
      singularName: r.name.includes("/") ? "" : r.kind.toLowerCase(),
      namespaced: r.namespaced,
      kind: r.kind,
      verbs: r.name.includes("/") ? ["get", "patch", "update"] : RESOURCE_VERBS,
      ...(r.shortNames === undefined ? {} : { shortNames: r.shortNames }),
    })),
  };
}

const GROUPS: Record<string, ResourceEntry[]> = {
  v1: [
    { name: "nodes", kind: "Node", namespaced: false, shortNames: ["no"] },
    { name: "nodes/status", kind: "Node", namespaced: false },
    { name: "pods", kind: "Pod", namespaced: true, shortNames: ["po"] },
    { name: "namespaces", kind: "Namespace", namespaced: false, shortNames: ["ns"] },
    { name: "configmaps", kind: "ConfigMap", namespaced: true, shortNames: ["cm"] },
    { name: "serviceaccounts", kind: "ServiceAccount", namespaced: true, shortNames: ["sa"] },
  ],
  "apps/v1": [{ name: "daemonsets", kind: "DaemonSet", namespaced: true, shortNames: ["ds"] }],
  "rbac.authorization.k8s.io/v1": [
    { name: "clusterroles", kind: "ClusterRole", namespaced: false },
    { name: "clusterrolebindings", kind: "ClusterRoleBinding", namespaced: false },
  ],
};

export const SERVER_VERSION = {
  major: "1",
  minor: "32",
  gitVersion: "v1.32.0+weft-standin",
  gitCommit: "0000000000000000000000000000000000000000",
  gitTreeState: "clean",
  buildDate: "2026-01-01T00:00:00Z",
  goVersion: "none (a Node.js stand-in)",
  compiler: "none",
  platform: "linux/amd64",
};

/** The discovery document at `path`, or undefined when it is not one. */
export function discovery(path: string, serverAddress: string): unknown {
  if (path === "/version") return SERVER_VERSION;
  if (path === "/api") {
    return {
      kind: "APIVersions",
      versions: ["v1"],
      serverAddressByClientCIDRs: [{ clientCIDR: "0.0.0.0/0", serverAddress }],
    };
  }
  if (path === "/apis") {
    return {
      kind: "APIGroupList",
      apiVersion: "v1",
      groups: Object.keys(GROUPS)
        .filter((gv) => gv.includes("/"))
        .map((gv) => {
          const [group, version] = gv.split("/") as [string, string];
          const v = { groupVersion: gv, version };
          return { name: group, versions: [v], preferredVersion: v };
        }),
    };
  }
  const gv = path === "/api/v1" ? "v1" : /^\/apis\/([^/]+\/[^/]+)$/.exec(path)?.[1];
  const resources = gv === undefined ? undefined : GROUPS[gv];
  return resources === undefined ? undefined : resourceList(gv as string, resources);
}

// deploy/kube-weft.yml and deploy/Dockerfile, checked offline: kubectl parses
// the manifest (a client-side dry run against the stand-in API server), and
// it carries kube-flannel.yml's RBAC, mounts and arguments, which weftd's own
// parsers accept. The image itself cannot be built here (no Docker engine).
// Also /dev/net/tun creation, which the manifest relies on as a fallback.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { parseAllDocuments } from "yaml";
import { parseOptions } from "../control/cli.js";
import { parseNetworkConfig } from "../control/config.js";
import { ensureTunDevice } from "../control/kube/devtun.js";
import { KubeApiServer } from "../lab/kube/apiserver.js";
import { createPki, kubeconfig } from "../lab/kube/pki.js";

const execFileAsync = promisify(execFile);
const ROOT = new URL("../../", import.meta.url).pathname;
const MANIFEST = join(ROOT, "deploy", "kube-weft.yml");
// biome-ignore lint/suspicious/noExplicitAny: manifest documents are asserted on loosely
type Doc = any;

const KUBE_FLANNEL_CONFLIST = {
  name: "cbr0",
  cniVersion: "0.3.1",
  plugins: [
    { type: "flannel", delegate: { hairpinMode: true, isDefaultGateway: true } },
    { type: "portmap", capabilities: { portMappings: true } },
  ],
};

describe("deploy/kube-weft.yml and deploy/Dockerfile", () => {
  let docs: Doc[];
  let dir: string;
  const kind = (k: string) => docs.find((d) => d.kind === k);

  before(() => {
    docs = parseAllDocuments(readFileSync(MANIFEST, "utf8")).map((d) => d.toJS());
    dir = mkdtempSync(join(tmpdir(), "weft-kube-deploy-"));
  });

  after(() => rmSync(dir, { recursive: true, force: true }));

  it("kubectl apply --dry-run=client parses every object", async () => {
    const pki = createPki(join(dir, "pki"));
    const s = pki.issue("server", "kube-apiserver", ["127.0.0.1"]);
    const admin = pki.issue("admin", "admin");
    const server = new KubeApiServer({ tls: { key: s.key, cert: s.cert, ca: pki.ca }, users: { admin: "admin" } });
    await server.start();
    try {
      const config = join(dir, "admin.kubeconfig");
      writeFileSync(config, kubeconfig({ server: server.url, ca: pki.ca, user: admin }));
      const { stdout } = await execFileAsync("kubectl", [
        "--kubeconfig",
        config,
        "--cache-dir",
        join(dir, "kubectl-cache"),
        "apply",
        "--dry-run=client",
        "--validate=false",
        "-o",
        "yaml",
        "-f",
        MANIFEST,
      ]);
      const items = (parseAllDocuments(stdout)[0] as Doc).toJS().items as Doc[];
      assert.deepEqual(
        items.map((i) => i.kind),
        ["Namespace", "ClusterRole", "ClusterRoleBinding", "ServiceAccount", "ConfigMap", "DaemonSet"],
      );
    } finally {
      await server.stop();
    }
  });

  it("grants exactly kube-flannel's RBAC to the flannel service account in kube-flannel", () => {
    assert.equal(kind("Namespace").metadata.name, "kube-flannel");
    assert.deepEqual(
      kind("ClusterRole").rules.map((r: Doc) => [r.apiGroups, r.resources, r.verbs]),
      [
        [[""], ["pods"], ["get"]],
        [[""], ["nodes"], ["get", "list", "watch"]],
        [[""], ["nodes/status"], ["patch"]],
      ],
    );
    const binding = kind("ClusterRoleBinding");
    assert.deepEqual(binding.roleRef, { apiGroup: "rbac.authorization.k8s.io", kind: "ClusterRole", name: "flannel" });
    assert.deepEqual(binding.subjects, [{ kind: "ServiceAccount", name: "flannel", namespace: "kube-flannel" }]);
    assert.equal(kind("ServiceAccount").metadata.namespace, "kube-flannel");
  });

  it("ships net-conf.json with the udp backend and kube-flannel's unchanged cni-conf.json", () => {
    const data = kind("ConfigMap").data;
    const config = parseNetworkConfig(data["net-conf.json"]);
    assert.equal(config.backend.type, "udp");
    assert.deepEqual(JSON.parse(data["cni-conf.json"]), KUBE_FLANNEL_CONFLIST);
  });

  it("runs weftd with flanneld's kube arguments, hostNetwork, NET_ADMIN + NET_RAW, the mounts and probes", () => {
    const ds = kind("DaemonSet");
    const pod = ds.spec.template.spec;
    assert.equal(pod.hostNetwork, true);
    assert.equal(pod.serviceAccountName, "flannel");
    const [c] = pod.containers as Doc[];
    const opts = parseOptions(c.args, {});
    assert.deepEqual([opts.ipMasq, opts.kubeSubnetMgr, opts.healthzPort], [true, true, 8081]);
    assert.equal(opts.netConfigPath, "/etc/kube-flannel/net-conf.json", "the ConfigMap's mount is the default path");
    assert.notEqual(c.securityContext.privileged, true);
    for (const cap of ["NET_ADMIN", "NET_RAW"]) assert.ok(c.securityContext.capabilities.add.includes(cap), cap);
    assert.deepEqual(
      c.env.map((e: Doc) => [e.name, e.valueFrom.fieldRef.fieldPath]),
      [
        ["POD_NAME", "metadata.name"],
        ["POD_NAMESPACE", "metadata.namespace"],
      ],
    );
    const volumes = new Map(pod.volumes.map((v: Doc) => [v.name, v]));
    const mounts = new Map(c.volumeMounts.map((m: Doc) => [m.mountPath, volumes.get(m.name)]));
    assert.equal((mounts.get("/run/flannel") as Doc).hostPath.path, "/run/flannel");
    assert.equal((mounts.get("/etc/kube-flannel/") as Doc).configMap.name, "kube-flannel-cfg");
    assert.deepEqual((mounts.get("/run/xtables.lock") as Doc).hostPath, {
      path: "/run/xtables.lock",
      type: "FileOrCreate",
    });
    assert.deepEqual((mounts.get("/dev/net/tun") as Doc).hostPath, { path: "/dev/net/tun", type: "CharDevice" });
    assert.deepEqual([c.livenessProbe.httpGet.path, c.livenessProbe.httpGet.port], ["/healthz", 8081]);
    assert.deepEqual([c.readinessProbe.httpGet.path, c.readinessProbe.httpGet.port], ["/readyz", 8081]);
    const copies = pod.initContainers.map((i: Doc) => [i.image.split(":")[0], i.command, i.args]);
    assert.deepEqual(copies, [
      ["ghcr.io/flannel-io/flannel-cni-plugin", ["cp"], ["-f", "/flannel", "/opt/cni/bin/flannel"]],
      ["weft", ["cp"], ["-f", "/etc/kube-flannel/cni-conf.json", "/etc/cni/net.d/10-flannel.conflist"]],
    ]);
  });

  it("the Dockerfile builds from Node 20 slim, omits dev dependencies, adds iproute2 and iptables, copies what exists", () => {
    const text = readFileSync(join(ROOT, "deploy", "Dockerfile"), "utf8");
    const froms = [...text.matchAll(/^FROM (\S+)/gm)].map((m) => m[1]);
    assert.deepEqual(froms, ["node:20-bookworm-slim", "node:20-bookworm-slim"]);
    assert.match(text, /npm prune --omit=dev/);
    assert.match(text, /apt-get install -y --no-install-recommends iproute2 iptables\b/);
    assert.match(text, /^ENTRYPOINT \["\/opt\/weft\/bin\/weftd"\]$/m);
    for (const m of text.matchAll(/^COPY (?!--from)(.+) \S+$/gm))
      for (const src of (m[1] as string).split(" ")) assert.ok(existsSync(join(ROOT, src)), `COPY source ${src}`);
  });

  it("creates a missing /dev/net/tun as character device 10,200, and says why when it cannot", () => {
    mkdirSync(join(dir, "dev"));
    const path = join(dir, "dev", "net", "tun");
    assert.equal(ensureTunDevice(path), true);
    const st = statSync(path);
    assert.ok(st.isCharacterDevice());
    assert.deepEqual([Math.floor(st.rdev / 256), st.rdev % 256], [10, 200]);
    assert.equal(ensureTunDevice(path), false, "an existing node is left alone");
    assert.throws(
      () => ensureTunDevice("/proc/weft-no-such/tun"),
      /^Error: \/proc\/weft-no-such\/tun is missing and weftd cannot create it \(.+\); mount the host's \/dev\/net\/tun/,
    );
  });
});

// `npm run lab -- --kube` as a user runs it, kept so the test can look at it from
// outside: a full matrix, a host that waits for its podCIDR (/readyz 503) and then
// joins without a restart, a host that joins after the others forward, the Nodes'
// flannel annotations and NetworkUnavailable=False read back with kubectl, and then
// `down` leaving nothing. Its own prefix and state directory, so it never meets a
// lab the user runs.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import type { LoggedRequest } from "../lab/kube/apiserver.js";
import { LabCli } from "./helpers/lab-cli.js";

const prefix = `wk${randomBytes(2).toString("hex")}`;
const stateDir = join(tmpdir(), `weft-kube-lab-test-${prefix}`);
const cli = new LabCli(prefix, stateDir);
const lab = (...args: string[]) => cli.run(...args);
const namespaces = () => cli.namespaces();
const ourProcesses = () => cli.processes();
const [h1, h2, h3] = [1, 2, 3].map((i) => `${prefix}-h${i}`) as [string, string, string];
const P = "flannel.alpha.coreos.com/";

/** The index of the first output line matching `re` (the order of the lab's steps). */
function lineOf(out: string, re: RegExp): number {
  const i = out.split("\n").findIndex((l) => re.test(l));
  assert.notEqual(i, -1, `no line matching ${re} in:\n${out}`);
  return i;
}

describe("npm run lab -- --kube", { timeout: 150_000 }, () => {
  let out = "";

  after(() => {
    if (namespaces().length > 0 || existsSync(stateDir)) lab("down");
  });

  it("--kube --keep: full matrix, a host waiting for its podCIDR, a late host, kubectl output", () => {
    const r = lab("up", "--kube", "--keep", "--pods", "1", "--transfer-kib", "64");
    out = r.out;
    assert.equal(r.code, 0, out);
    assert.match(out, /all 6 pairs ok: every pod reaches every pod/, out);
    assert.doesNotMatch(out, /FAIL/, out);
    assert.match(out, /stand-in API server https:\/\/198\.18\.0\.254:6443 in \S+-api \(HTTPS/);
    assert.match(out, /--ip-masq --kube-subnet-mgr --healthz-port=8081 --kubeconfig-file \S+flannel\.kubeconfig/);

    // h2 waits with /readyz 503 naming the field, then joins once the controller assigns.
    const waits = lineOf(
      out,
      new RegExp(
        `^${h2} has no podCIDR yet; weftd waits .*/readyz 503 .*"waiting":"waiting for spec\\.podCIDR of Node ${h2} to be assigned"`,
      ),
    );
    const assigned = lineOf(out, new RegExp(`^node controller: ${h2} podCIDR 10\\.244\\.1\\.0/24$`));
    const joined = lineOf(
      out,
      new RegExp(`^${h2} joined \\d+ ms after the assignment, same weftd \\(pid \\d+\\), no restart`),
    );
    assert.ok(waits < assigned && assigned < joined, out);
    // h3 joins after h1 and h2 forward.
    const forwarding = lineOf(out, /^forwarding: 2 hosts up, h1-p1 \S+ -> h2-p1 \S+ answers$/);
    const late = lineOf(out, new RegExp(`^late host ${h3}: .*podCIDR 10\\.244\\.2\\.0/24, weftd started`));
    assert.ok(forwarding < late, out);
    assert.match(out, new RegExp(`^  ${h3} +tx \\d+ pkts .* peer leases 2$`, "m"));
    assert.match(out, /^\$ kubectl get nodes -o wide$/m);
    assert.match(out, new RegExp(`^  ${h3} +Ready +<none> +\\S+ +weft-lab +198\\.18\\.0\\.3 `, "m"));
    assert.match(out, new RegExp(`kubectl: export KUBECONFIG=${stateDir}/lab/kube/admin\\.kubeconfig`));
  });

  it("the API server's request log shows the wait and the late join in that order", () => {
    const log = readFileSync(join(stateDir, "lab", "kube", "requests.jsonl"), "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as LoggedRequest);
    const first = (pred: (r: LoggedRequest) => boolean, what: string) => {
      const i = log.findIndex(pred);
      assert.notEqual(i, -1, `no request: ${what}`);
      return i;
    };
    const isFlannel = (r: LoggedRequest) => r.user === "system:serviceaccount:kube-flannel:flannel";
    const h2Get = first((r) => isFlannel(r) && r.method === "GET" && r.url === `/api/v1/nodes/${h2}`, "h2 GET");
    const h2Assign = first(
      (r) =>
        r.user === "admin" && r.method === "PATCH" && r.url === `/api/v1/nodes/${h2}` && r.body.includes("podCIDR"),
      "h2 assignment",
    );
    const h2Publish = first((r) => isFlannel(r) && r.url === `/api/v1/nodes/${h2}/status`, "h2 annotations");
    assert.ok(h2Get < h2Assign && h2Assign < h2Publish, "h2's weftd ran before its podCIDR and published after");
    assert.equal(
      log[h2Assign]?.body,
      `{"spec":{"podCIDR":"10.244.1.0/24","podCIDRs":["10.244.1.0/24"]}}`,
      "the range allocator's strategic-merge patch",
    );
    assert.equal(log[h2Assign]?.contentType, "application/strategic-merge-patch+json");
    const othersUp = Math.max(
      ...[h1, h2].map((h) =>
        first((r) => isFlannel(r) && r.url === `/api/v1/nodes/${h}/status` && r.body.includes("NetworkUnavailable"), h),
      ),
    );
    const h3Created = first((r) => r.method === "POST" && r.body.includes(`"name":"${h3}"`), "h3 registered");
    const h3Get = first((r) => isFlannel(r) && r.url === `/api/v1/nodes/${h3}`, "h3 GET");
    assert.ok(othersUp < h3Created && h3Created < h3Get, "h3 registered and its weftd started after h1 and h2 were up");
    assert.equal(
      log.filter((r) => isFlannel(r) && r.method !== "GET" && !r.url.endsWith("/status")).length,
      0,
      "weftd writes only /status",
    );
    const h2Log = readFileSync(join(stateDir, "lab", "h2", "weftd.log"), "utf8");
    assert.equal(h2Log.match(/waiting for spec\.podCIDR of Node/g)?.length, 1, "logged once");
  });

  it("kubectl with the lab's kubeconfig reads back every Node's flannel annotations and NetworkUnavailable=False", () => {
    const kubeconfig = /export KUBECONFIG=(\S+)/.exec(out)?.[1] as string;
    const r = spawnSync("ip", ["netns", "exec", `${prefix}-api`, "kubectl", "get", "nodes", "-o", "json"], {
      encoding: "utf8",
      env: { ...process.env, KUBECONFIG: kubeconfig, KUBECACHEDIR: join(stateDir, "lab", "kube", "kubectl-cache") },
    });
    assert.equal(r.status, 0, r.stderr);
    const nodes = JSON.parse(r.stdout).items as {
      metadata: { name: string; annotations: Record<string, string> };
      spec: { podCIDR: string };
      status: { conditions: { type: string; status: string; reason: string }[] };
    }[];
    assert.deepEqual(
      nodes.map((n) => [n.metadata.name, n.spec.podCIDR]).sort(),
      [
        [h1, "10.244.0.0/24"],
        [h2, "10.244.1.0/24"],
        [h3, "10.244.2.0/24"],
      ],
      "podCIDRs in the order the controller assigned them",
    );
    for (const n of nodes) {
      const i = n.metadata.name.slice(-1);
      assert.deepEqual(n.metadata.annotations, {
        [`${P}backend-data`]: "null",
        [`${P}backend-type`]: "",
        [`${P}kube-subnet-manager`]: "true",
        [`${P}public-ip`]: `198.18.0.${i}`,
      });
      const cond = n.status.conditions.find((c) => c.type === "NetworkUnavailable");
      assert.deepEqual([cond?.status, cond?.reason], ["False", "FlannelIsUp"], n.metadata.name);
    }
  });

  it("down removes the API server, weftd, pods, namespaces and files", () => {
    const r = lab("down");
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /removed 3 pods \(CNI DEL\), 4 processes, 8 namespaces/);
    assert.deepEqual(namespaces(), [], "no lab namespace left");
    assert.deepEqual(ourProcesses(), [], "no lab process left");
    assert.equal(existsSync(stateDir), false, `${stateDir} removed`);
  });
});

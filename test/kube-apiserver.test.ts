// The stand-in API server (lab/kube) against a real client, kubectl, and the
// semantics weftd relies on: one resourceVersion, ordered watch events,
// bookmarks, timeouts, 410 after compaction, both patch flavours, RBAC as
// kube-flannel.yml grants it, Status objects, tokens.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { request } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { FLANNEL_USER, KubeApiServer } from "../lab/kube/apiserver.js";
import { createPki, kubeconfig, type Pki } from "../lab/kube/pki.js";

const execFileAsync = promisify(execFile);

interface Reply {
  status: number;
  // biome-ignore lint/suspicious/noExplicitAny: API documents are asserted on loosely, field by field
  body: any;
  text: string;
}

describe("stand-in API server", () => {
  let dir: string;
  let pki: Pki;
  let server: KubeApiServer;
  let admin: { key: string; cert: string };
  let adminConfig: string;

  const call = (
    method: string,
    path: string,
    opts: { body?: unknown; type?: string; token?: string; asAdmin?: boolean } = {},
  ) =>
    new Promise<Reply>((resolve, reject) => {
      const asAdmin = opts.asAdmin ?? opts.token === undefined;
      const text = opts.body === undefined ? undefined : JSON.stringify(opts.body);
      const req = request(
        new URL(path, server.url),
        {
          method,
          ca: pki.ca,
          ...(asAdmin ? admin : {}),
          headers: {
            ...(opts.token === undefined ? {} : { authorization: `Bearer ${opts.token}` }),
            ...(text === undefined ? {} : { "content-type": opts.type ?? "application/json" }),
          },
        },
        (res) => {
          let out = "";
          res.setEncoding("utf8");
          res.on("data", (c: string) => {
            out += c;
          });
          res.on("end", () => {
            let body: unknown = out;
            try {
              body = JSON.parse(out);
            } catch {}
            resolve({ status: res.statusCode ?? 0, body, text: out });
          });
        },
      );
      req.once("error", reject);
      req.end(text);
    });

  /** Reads a watch stream until it ends; returns its events. */
  const watchAll = async (query: string, token?: string) => {
    const r = await call("GET", `/api/v1/nodes?watch=true&${query}`, { token });
    return (
      r.text
        .split("\n")
        .filter(Boolean)
        // biome-ignore lint/suspicious/noExplicitAny: watch events are asserted on loosely
        .map((l) => JSON.parse(l) as { type: string; object: any })
    );
  };

  const kubectl = async (args: string[], config = adminConfig) => {
    const { stdout } = await execFileAsync("kubectl", [
      "--kubeconfig",
      config,
      // kubectl's discovery cache stays in this test's directory, not in ~/.kube.
      "--cache-dir",
      join(dir, "kubectl-cache"),
      ...args,
    ]);
    return stdout;
  };

  const node = (name: string, podCIDR?: string) => ({
    metadata: { name },
    spec: podCIDR === undefined ? {} : { podCIDR, podCIDRs: [podCIDR] },
    status: {
      conditions: [
        { type: "Ready", status: "True" },
        { type: "MemoryPressure", status: "False" },
      ],
      addresses: [{ type: "InternalIP", address: "198.18.0.1" }],
    },
  });

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "weft-kube-api-"));
    pki = createPki(join(dir, "pki"));
    const s = pki.issue("server", "kube-apiserver", ["127.0.0.1"]);
    admin = pki.issue("admin", "admin");
    server = new KubeApiServer({
      tls: { key: s.key, cert: s.cert, ca: pki.ca },
      tokens: { "flannel-token-1": FLANNEL_USER },
      users: { admin: "admin", [FLANNEL_USER]: "flannel" },
      bookmarkMs: 200,
    });
    await server.start();
    adminConfig = join(dir, "admin.kubeconfig");
    writeFileSync(adminConfig, kubeconfig({ server: server.url, ca: pki.ca, user: admin }));
    writeFileSync(
      join(dir, "flannel.kubeconfig"),
      kubeconfig({ server: server.url, ca: pki.ca, user: { token: "flannel-token-1" } }),
    );
    for (const n of [node("a", "10.244.1.0/24"), node("b", "10.244.2.0/24")])
      assert.equal((await call("POST", "/api/v1/nodes", { body: n })).status, 201);
  });

  after(async () => {
    await server?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("kubectl lists nodes wide and prints one as YAML", async () => {
    const wide = await kubectl(["get", "nodes", "-o", "wide"]);
    assert.match(wide, /^NAME\s+STATUS\s+ROLES\s+AGE\s+VERSION\s+INTERNAL-IP/);
    assert.match(wide, /\na\s+Ready\s+<none>\s+\S+\s+198\.18\.0\.1/);
    const yaml = await kubectl(["get", "node", "a", "-o", "yaml"]);
    assert.match(yaml, /^kind: Node$/m);
    assert.match(yaml, /podCIDR: 10\.244\.1\.0\/24/);
  });

  it("kubectl annotate sends a JSON merge patch; patch --subresource=status merges conditions by type", async () => {
    await kubectl(["annotate", "node", "a", "example.com/x=1"]);
    await kubectl([
      "patch",
      "node",
      "a",
      "--subresource=status",
      "-p",
      '{"status":{"conditions":[{"type":"NetworkUnavailable","status":"False"}]},"spec":{"podCIDR":"10.9.9.0/24"}}',
    ]);
    const got = (await call("GET", "/api/v1/nodes/a")).body;
    assert.equal(got.metadata.annotations["example.com/x"], "1");
    assert.deepEqual(
      got.status.conditions.map((c: { type: string }) => c.type),
      ["Ready", "MemoryPressure", "NetworkUnavailable"],
    );
    assert.equal(got.spec.podCIDR, "10.244.1.0/24", "spec is ignored on /status");
    const log = server.requests.filter((r) => r.method === "PATCH");
    assert.equal(log.at(-2)?.contentType, "application/merge-patch+json");
    assert.equal(log.at(-1)?.contentType, "application/strategic-merge-patch+json");
    assert.match(log.at(-1)?.url ?? "", /^\/api\/v1\/nodes\/a\/status/);
  });

  it("a JSON merge patch replaces lists and null deletes a key", async () => {
    await call("PATCH", "/api/v1/nodes/b/status", {
      type: "application/merge-patch+json",
      body: {
        metadata: { annotations: { k: "v", gone: "x" } },
        status: { conditions: [{ type: "Ready", status: "False" }] },
      },
    });
    const r = await call("PATCH", "/api/v1/nodes/b/status", {
      type: "application/merge-patch+json",
      body: { metadata: { annotations: { gone: null } } },
    });
    assert.deepEqual(r.body.metadata.annotations, { k: "v" });
    assert.deepEqual(r.body.status.conditions, [{ type: "Ready", status: "False" }]);
  });

  it("unknown patch types get 415, a missing node a 404 Status, a bad token 401", async () => {
    const r415 = await call("PATCH", "/api/v1/nodes/a", { type: "application/json-patch+json", body: [] });
    assert.equal(r415.status, 415);
    assert.equal(r415.body.reason, "UnsupportedMediaType");
    const r404 = await call("GET", "/api/v1/nodes/nope");
    assert.deepEqual(
      [r404.status, r404.body.kind, r404.body.reason, r404.body.message],
      [404, "Status", "NotFound", 'nodes "nope" not found'],
    );
    const r401 = await call("GET", "/api/v1/nodes", { token: "wrong" });
    assert.equal(r401.status, 401);
  });

  it("flannel's service account may patch nodes/status but not the node, and tokens rotate", async () => {
    const token = "flannel-token-1";
    const body = { metadata: { annotations: { x: "y" } } };
    const type = "application/strategic-merge-patch+json";
    assert.equal((await call("PATCH", "/api/v1/nodes/a/status", { token, type, body })).status, 200);
    const denied = await call("PATCH", "/api/v1/nodes/a", { token, type, body });
    assert.equal(denied.status, 403);
    assert.match(denied.body.message, /cannot patch resource "nodes" in API group ""/);
    assert.equal((await call("PUT", "/api/v1/nodes/a", { token, body: node("a") })).status, 403);
    server.setTokens({ "flannel-token-2": FLANNEL_USER });
    assert.equal((await call("GET", "/api/v1/nodes", { token })).status, 401);
    assert.equal((await call("GET", "/api/v1/nodes", { token: "flannel-token-2" })).status, 200);
    server.setTokens({ "flannel-token-1": FLANNEL_USER });
  });

  it("podCIDR may be set once, never changed", async () => {
    await call("POST", "/api/v1/nodes", { body: node("c") });
    const type = "application/strategic-merge-patch+json";
    const set = await call("PATCH", "/api/v1/nodes/c", { type, body: { spec: { podCIDR: "10.244.3.0/24" } } });
    assert.equal(set.status, 200);
    const change = await call("PATCH", "/api/v1/nodes/c", { type, body: { spec: { podCIDR: "10.244.4.0/24" } } });
    assert.equal(change.status, 422);
    assert.equal((await call("DELETE", "/api/v1/nodes/c")).status, 200);
  });

  it("a watch replays events after a resourceVersion in order, bookmarks, and closes at timeoutSeconds", async () => {
    const list = (await call("GET", "/api/v1/nodes?limit=500&resourceVersion=0")).body;
    assert.equal(list.kind, "NodeList");
    const rv = list.metadata.resourceVersion;
    await call("POST", "/api/v1/nodes", { body: node("d", "10.244.5.0/24") });
    await call("PATCH", "/api/v1/nodes/d/status", {
      type: "application/merge-patch+json",
      body: { metadata: { annotations: { p: "1" } } },
    });
    await call("DELETE", "/api/v1/nodes/d");
    const events = await watchAll(`resourceVersion=${rv}&allowWatchBookmarks=true&timeoutSeconds=1`);
    const real = events.filter((e) => e.type !== "BOOKMARK");
    assert.deepEqual(
      real.map((e) => `${e.type} ${e.object.metadata.name}`),
      ["ADDED d", "MODIFIED d", "DELETED d"],
    );
    const rvs = real.map((e) => Number(e.object.metadata.resourceVersion));
    assert.deepEqual(
      rvs,
      [...rvs].sort((x, y) => x - y),
    );
    assert.ok(
      events.some((e) => e.type === "BOOKMARK"),
      "a bookmark within 1 s at 200 ms intervals",
    );
    const bookmark = events.find((e) => e.type === "BOOKMARK");
    assert.equal(bookmark?.object.metadata.resourceVersion, String(rvs.at(-1)));
  });

  it("after compaction an old resourceVersion gets a 410 Expired ERROR event, and open watches get one too", async () => {
    const rv = (await call("GET", "/api/v1/nodes")).body.metadata.resourceVersion;
    const open = watchAll(`resourceVersion=${rv}&timeoutSeconds=30`);
    await new Promise((r) => setTimeout(r, 200));
    server.expireWatches();
    const mid = await open;
    assert.equal(mid.at(-1)?.type, "ERROR");
    assert.equal(mid.at(-1)?.object.code, 410);
    assert.equal(mid.at(-1)?.object.reason, "Expired");
    const old = await watchAll(`resourceVersion=${Number(rv) - 1}&timeoutSeconds=1`);
    assert.deepEqual(
      old.map((e) => [e.type, e.object.code]),
      [["ERROR", 410]],
    );
  });

  it("sendInitialEvents is refused with a Status, so clients list first", async () => {
    const r = await call("GET", "/api/v1/nodes?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan");
    assert.equal(r.status, 422);
    assert.equal(r.body.kind, "Status");
  });

  it("serves a pod's spec.nodeName to flannel's service account", async () => {
    await call("POST", "/api/v1/namespaces/kube-flannel/pods", {
      body: { metadata: { name: "kube-weft-ds-x" }, spec: { nodeName: "a" } },
    });
    const r = await call("GET", "/api/v1/namespaces/kube-flannel/pods/kube-weft-ds-x", { token: "flannel-token-1" });
    assert.equal(r.body.spec.nodeName, "a");
    assert.equal(r.body.metadata.namespace, "kube-flannel");
  });

  it("stops and starts again on the same address, keeping its objects", async () => {
    const url = server.url;
    await server.stop();
    await assert.rejects(call("GET", "/api/v1/nodes"));
    await server.start();
    assert.equal(server.url, url);
    assert.match(await kubectl(["get", "nodes"]), /\nb\s/);
  });
});

// weftd's Kubernetes side against the stand-in API server, in one process:
// credentials (in-cluster with a rotating token, kubeconfig with client
// certificates or a token file, --kube-api-url), errors that name the URL,
// the annotation prefix, and the registry's requests byte for byte.

import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, beforeEach, describe, it } from "node:test";
import { peerNode } from "../bench/scale/peers.js";
import { parseOptions, UsageError } from "../control/cli.js";
import { KubeClient } from "../control/kube/client.js";
import { type KubeCredentials, loadCredentials } from "../control/kube/credentials.js";
import { Informer, type KubeObject, ListPageReader, parseListPage } from "../control/kube/informer.js";
import { normaliseAnnotationPrefix } from "../control/kube/node.js";
import { KubeRegistry, resolveNodeName } from "../control/registry/kube.js";
import type { LeaseEvent, LeaseListing } from "../control/registry/registry.js";
import { FLANNEL_USER, KubeApiServer } from "../lab/kube/apiserver.js";
import { createPki, kubeconfig, type Pki } from "../lab/kube/pki.js";
import { formatIpv4, formatPrefix, parseIpv4, parsePrefix } from "../net/addr.js";

const NET_CONF = '{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}';
const P = "flannel.alpha.coreos.com/";

const quiet = { debug() {}, info() {}, warn() {}, error() {} };

describe("kube mode against the stand-in API server", () => {
  let dir: string;
  let pki: Pki;
  let server: KubeApiServer;
  let saDir: string;
  let netConf: string;
  let clock = 0;
  const clients: KubeClient[] = [];

  const tokenCreds = (token = "flannel-1"): KubeCredentials => ({
    server: server.url,
    ca: pki.ca,
    token: () => token,
    source: "test",
  });
  const client = (creds: KubeCredentials = tokenCreds()) => {
    const c = new KubeClient(creds);
    clients.push(c);
    return c;
  };
  const admin = () => server.store;
  const node = (name: string, podCIDR?: string, annotations?: Record<string, string>) => ({
    metadata: { name, ...(annotations ? { annotations } : {}) },
    spec: podCIDR ? { podCIDR, podCIDRs: [podCIDR] } : {},
    status: { conditions: [{ type: "Ready", status: "True" }] },
  });
  const peerAnnotations = (ip: string) => ({
    [`${P}backend-data`]: "null",
    [`${P}backend-type`]: "",
    [`${P}kube-subnet-manager`]: "true",
    [`${P}public-ip`]: ip,
  });
  const until = async (what: string, check: () => boolean, ms = 10_000) => {
    const deadline = Date.now() + ms;
    while (!check()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "weft-kube-reg-"));
    pki = createPki(join(dir, "pki"));
    const s = pki.issue("server", "kube-apiserver", ["127.0.0.1"]);
    server = new KubeApiServer({
      tls: { key: s.key, cert: s.cert, ca: pki.ca },
      tokens: { "flannel-1": FLANNEL_USER },
      users: { admin: "admin", [FLANNEL_USER]: "flannel" },
      bookmarkMs: 100,
    });
    await server.start();
    saDir = join(dir, "sa");
    mkdirSync(saDir);
    writeFileSync(join(saDir, "token"), "flannel-1\n");
    writeFileSync(join(saDir, "ca.crt"), pki.ca);
    netConf = join(dir, "net-conf.json");
    writeFileSync(netConf, NET_CONF);
  });

  beforeEach(() => {
    server.setTokens({ "flannel-1": FLANNEL_USER });
    for (const n of admin().list("nodes")) admin().delete("nodes", String((n.metadata as { name: string }).name));
    server.requests.length = 0;
  });

  after(async () => {
    for (const c of clients) c.close();
    await server?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("normalises --kube-annotation-prefix as flannel does", () => {
    const table: [string, string | null][] = [
      ["flannel.alpha.coreos.com", "flannel.alpha.coreos.com/"],
      ["example.com", "example.com/"],
      ["example.com/", "example.com/"],
      ["example.com/weft", "example.com/weft-"],
      ["example.com/weft-", "example.com/weft-"],
      ["a/b/c", null],
    ];
    for (const [input, want] of table) assert.equal(normaliseAnnotationPrefix(input), want, input);
    assert.throws(
      () => parseOptions(["--kube-annotation-prefix", "a/b/c"], {}),
      (e) => e instanceof UsageError && /--kube-annotation-prefix: "a\/b\/c" has more than one "\/"/.test(e.message),
    );
  });

  it("in-cluster credentials: the service account's CA and token, re-read a minute later after rotation", async () => {
    const env = { KUBERNETES_SERVICE_HOST: "127.0.0.1", KUBERNETES_SERVICE_PORT: new URL(server.url).port };
    const creds = await loadCredentials({ env, serviceAccountDir: saDir, now: () => clock });
    assert.equal(creds.server, server.url);
    const c = client(creds);
    await c.request("GET", "/api/v1/nodes");
    writeFileSync(join(saDir, "token"), "flannel-2\n");
    server.setTokens({ "flannel-2": FLANNEL_USER });
    await assert.rejects(c.request("GET", "/api/v1/nodes"), /Unauthorized \(HTTP 401/);
    clock += 60_000;
    await c.request("GET", "/api/v1/nodes");
    assert.deepEqual(
      server.requests.map((r) => [r.status, r.user]),
      [
        [200, FLANNEL_USER],
        [401, null],
        [200, FLANNEL_USER],
      ],
    );
    writeFileSync(join(saDir, "token"), "flannel-1\n");
  });

  it("--kube-api-url alone: outside a pod no credentials; inside one the service account's", async () => {
    const bare = await loadCredentials({ apiUrl: server.url, serviceAccountDir: join(dir, "none"), env: {} });
    assert.equal(bare.token(), undefined);
    const inPod = await loadCredentials({ apiUrl: server.url, serviceAccountDir: saDir, env: {} });
    assert.equal(inPod.token(), "flannel-1");
    await client(inPod).request("GET", "/api/v1/nodes");
    await assert.rejects(
      loadCredentials({ apiUrl: "ftp://x", env: {} }),
      /--kube-api-url "ftp:\/\/x" is not an http\(s\):\/\/ URL/,
    );
  });

  it("kubeconfig with client certificate files, and with a token file", async () => {
    pki.issue("weftd", "admin");
    const file = join(pki.dir, "certs.kubeconfig");
    writeFileSync(
      file,
      [
        "apiVersion: v1",
        `clusters: [{name: c, cluster: {server: ${server.url}, certificate-authority: ca.crt}}]`,
        "users: [{name: u, user: {client-certificate: weftd.crt, client-key: weftd.key}}]",
        "contexts: [{name: x, context: {cluster: c, user: u}}]",
        "current-context: x",
      ].join("\n"),
    );
    await client(await loadCredentials({ kubeconfigFile: file })).request("GET", "/api/v1/nodes");
    const tokenFile = join(dir, "kc-token");
    writeFileSync(tokenFile, "flannel-1");
    const file2 = join(dir, "token.kubeconfig");
    writeFileSync(
      file2,
      kubeconfig({ server: server.url, ca: pki.ca, user: { token: "unused" } }).replace(
        "    token: unused",
        `    tokenFile: ${tokenFile}`,
      ),
    );
    await client(await loadCredentials({ kubeconfigFile: file2 })).request("GET", "/api/v1/nodes");
    assert.deepEqual(
      server.requests.map((r) => r.user),
      ["admin", FLANNEL_USER],
    );
  });

  it("a wrong CA and a wrong token each give one sentence naming the URL", async () => {
    const other = createPki(join(dir, "other"), "someone-else");
    const wrongCa = client({ ...tokenCreds(), ca: other.ca });
    await assert.rejects(
      wrongCa.request("GET", "/api/v1/nodes/n1"),
      (e: Error) =>
        e.message.startsWith(`GET ${server.url}/api/v1/nodes/n1: the server's TLS certificate is not trusted`) &&
        !e.message.includes("\n"),
    );
    await assert.rejects(
      client(tokenCreds("wrong")).request("GET", "/api/v1/nodes/n1"),
      (e: Error) => e.message === `GET ${server.url}/api/v1/nodes/n1: Unauthorized (HTTP 401 Unauthorized)`,
    );
  });

  it("finds the node through POD_NAME/POD_NAMESPACE", async () => {
    admin().create("pods", "kube-flannel/kube-weft-ds-abc", {
      metadata: { name: "kube-weft-ds-abc", namespace: "kube-flannel" },
      spec: { nodeName: "n7" },
    });
    const c = client();
    assert.equal(await resolveNodeName(c, { POD_NAME: "kube-weft-ds-abc", POD_NAMESPACE: "kube-flannel" }), "n7");
    assert.equal(await resolveNodeName(c, { NODE_NAME: "n8" }), "n8");
    await assert.rejects(resolveNodeName(c, {}), /needs NODE_NAME, or POD_NAME and POD_NAMESPACE/);
  });

  const open = (extra: Partial<Parameters<typeof KubeRegistry.open>[0]> = {}) =>
    KubeRegistry.open({
      client: client(),
      nodeName: "n1",
      netConfPath: netConf,
      annotationPrefix: P,
      localPublicIp: parseIpv4("198.18.0.1"),
      setNodeNetworkUnavailable: true,
      log: quiet,
      informer: { minBackoffMs: 20, maxBackoffMs: 200 },
      now: () => Date.parse("2026-12-01T10:00:00Z"),
      ...extra,
    });

  it("waits for the podCIDR, then publishes exactly flannel's two status PATCHes and nothing else", async () => {
    admin().create("nodes", "n1", node("n1"));
    const waits: (string | null)[] = [];
    let opened: KubeRegistry | null = null;
    const pending = open({ onWaiting: (w) => waits.push(w) }).then((r) => {
      opened = r;
      return r;
    });
    await until("the wait to be reported", () => waits.length > 0);
    assert.deepEqual(waits, ["waiting for spec.podCIDR of Node n1 to be assigned"]);
    assert.equal(opened, null);
    admin().replace("nodes", "n1", node("n1", "10.244.0.0/24"));
    const registry = await pending;
    try {
      assert.deepEqual(waits, ["waiting for spec.podCIDR of Node n1 to be assigned", null]);
      const config = JSON.parse((await registry.getNetworkConfig()) as string);
      assert.deepEqual([config.SubnetLen, config.SubnetMin], [24, "10.244.0.0"]);
      const listing = await registry.getLeases();
      const own = listing.leases.find((l) => formatPrefix(l.subnet) === "10.244.0.0/24");
      assert.ok(own);
      await registry.updateLease(own, own.publicIp, 0);
      await registry.updateLease(own, own.publicIp, 0); // nothing differs now: no second PATCH
      registry.markNetworkAvailable();
      await until("the condition PATCH", () => server.requests.filter((r) => r.method === "PATCH").length === 2);
      const patches = server.requests.filter((r) => r.method === "PATCH");
      assert.deepEqual(
        patches.map((r) => [r.url, r.contentType, r.body, r.status]),
        [
          [
            "/api/v1/nodes/n1/status",
            "application/strategic-merge-patch+json",
            '{"metadata":{"annotations":{"flannel.alpha.coreos.com/backend-data":"null","flannel.alpha.coreos.com/backend-type":"","flannel.alpha.coreos.com/kube-subnet-manager":"true","flannel.alpha.coreos.com/public-ip":"198.18.0.1"}}}',
            200,
          ],
          [
            "/api/v1/nodes/n1/status",
            "application/strategic-merge-patch+json",
            '{"status":{"conditions":[{"type":"NetworkUnavailable","status":"False","lastHeartbeatTime":"2026-12-01T10:00:00Z","lastTransitionTime":"2026-12-01T10:00:00Z","reason":"FlannelIsUp","message":"Flannel is running on this node"}]}}',
            200,
          ],
        ],
      );
      assert.ok(
        server.requests.every((r) => r.method === "GET" || r.url.startsWith("/api/v1/nodes/n1/status")),
        "only GETs and PATCHes of nodes/n1/status",
      );
      const stored = admin().get("nodes", "n1") as { status: { conditions: { type: string }[] } };
      assert.deepEqual(
        stored.status.conditions.map((c) => c.type),
        ["Ready", "NetworkUnavailable"],
      );
    } finally {
      await registry.close();
    }
  });

  it("publishes public-ip-overwrite instead of the interface's address", async () => {
    admin().create("nodes", "n1", node("n1", "10.244.3.0/24", { [`${P}public-ip-overwrite`]: "198.18.0.77" }));
    const registry = await open();
    try {
      assert.equal(formatIpv4(registry.publicIp), "198.18.0.77");
      const own = (await registry.getLeases()).leases[0];
      assert.ok(own);
      await registry.updateLease(own, own.publicIp, 0);
      const patch = server.requests.find((r) => r.method === "PATCH");
      assert.match(patch?.body ?? "", /"flannel\.alpha\.coreos\.com\/public-ip":"198\.18\.0\.77"/);
    } finally {
      await registry.close();
    }
  });

  it("keeps of each Node only its name, podCIDRs and flannel's annotations, from the list and from watch events", async () => {
    // A real Node is several kB (labels, conditions, images); issue 17 asks for what forwarding needs only.
    const fat = (name: string, cidr: string, ip: string) => ({
      ...node(name, cidr, {
        ...peerAnnotations(ip),
        "node.alpha.kubernetes.io/ttl": "0",
        "other.example.com/public-ip": "192.0.2.9",
      }),
      metadata: {
        name,
        labels: { "kubernetes.io/hostname": name, "topology.kubernetes.io/zone": "eu-west-1b" },
        annotations: { ...peerAnnotations(ip), "node.alpha.kubernetes.io/ttl": "0" },
      },
      status: {
        conditions: [
          { type: "Ready", status: "True", reason: "KubeletReady", message: "kubelet is posting ready status" },
        ],
        images: [{ names: ["registry.example.com/app@sha256:00"], sizeBytes: 123456789 }],
        nodeInfo: { kubeletVersion: "v1.31.1", osImage: "Debian GNU/Linux 12 (bookworm)" },
      },
    });
    // A peer: its name and what its lease is made of, parsed.
    const slim = (name: string, cidr: string, ip: string) => ({
      name,
      publicIp: parseIpv4(ip),
      podCidr: parsePrefix(cidr),
    });
    admin().create("nodes", "n1", node("n1", "10.244.1.0/24"));
    admin().create("nodes", "n2", fat("n2", "10.244.2.0/24", "198.18.0.2"));
    const registry = await open();
    try {
      assert.deepEqual(registry.heldNode("n2"), slim("n2", "10.244.2.0/24", "198.18.0.2"));
      // Our own Node: slimmed, with the annotations we publish.
      assert.deepEqual(registry.heldNode("n1"), {
        metadata: { name: "n1", annotations: {} },
        spec: { podCIDR: "10.244.1.0/24", podCIDRs: ["10.244.1.0/24"] },
      });
      const events: LeaseEvent[] = [];
      registry.watchLeases((await registry.getLeases()).revision, {
        onEvent: (e) => events.push(e),
        onResync: () => {},
      });
      admin().create("nodes", "n3", fat("n3", "10.244.3.0/24", "198.18.0.3"));
      await until("n3's put", () => events.length === 1);
      assert.deepEqual(registry.heldNode("n3"), slim("n3", "10.244.3.0/24", "198.18.0.3"));
      const leases = (await registry.getLeases()).leases.map(
        (l) => `${formatPrefix(l.subnet)} ${formatIpv4(l.publicIp)}`,
      );
      assert.deepEqual(leases.sort(), [
        "10.244.1.0/24 198.18.0.1",
        "10.244.2.0/24 198.18.0.2",
        "10.244.3.0/24 198.18.0.3",
      ]);
    } finally {
      await registry.close();
    }
  });

  it("a podCIDR outside Network is one sentence", async () => {
    admin().create("nodes", "n1", node("n1", "10.99.1.0/24"));
    await assert.rejects(
      open(),
      (e: Error) => e.message === `Node n1: spec.podCIDR 10.99.1.0/24 is outside Network 10.244.0.0/16 of ${netConf}`,
    );
  });

  it("peers follow the watch through 410 re-lists and an outage, with no duplicates", async () => {
    admin().create("nodes", "n1", node("n1", "10.244.1.0/24"));
    admin().create("nodes", "n2", node("n2", "10.244.2.0/24", peerAnnotations("198.18.0.2")));
    admin().create("nodes", "plain", node("plain", "10.244.9.0/24")); // no flannel annotations: not a peer
    const registry = await open();
    const events: string[] = [];
    let resyncs: LeaseListing[] = [];
    const connections: boolean[] = [];
    const describe = (e: LeaseEvent) =>
      e.type === "put"
        ? `put ${formatPrefix(e.lease.subnet)} ${formatIpv4(e.lease.publicIp)}`
        : `delete ${formatPrefix(e.subnet)}`;
    const first = await registry.getLeases();
    assert.deepEqual(first.leases.map((l) => formatPrefix(l.subnet)).sort(), ["10.244.1.0/24", "10.244.2.0/24"]);
    const watch = registry.watchLeases(first.revision, {
      onEvent: (e) => events.push(describe(e)),
      onResync: (l) => resyncs.push(l),
      onConnection: (c) => connections.push(c),
    });
    try {
      admin().create("nodes", "n3", node("n3", "10.244.3.0/24", peerAnnotations("198.18.0.3")));
      admin().replace("nodes", "n2", node("n2", "10.244.2.0/24", peerAnnotations("198.18.0.22")));
      admin().delete("nodes", "n3");
      await until("three events", () => events.length === 3);
      assert.deepEqual(events, [
        "put 10.244.3.0/24 198.18.0.3",
        "put 10.244.2.0/24 198.18.0.22",
        "delete 10.244.3.0/24",
      ]);

      const listsBefore = registry.lists;
      server.expireWatches();
      await until("a re-list", () => resyncs.length === 1);
      assert.equal(registry.lists, listsBefore + 1);
      const subnets = (resyncs[0] as LeaseListing).leases.map((l) => formatPrefix(l.subnet)).sort();
      assert.deepEqual(subnets, ["10.244.1.0/24", "10.244.2.0/24"], "each peer once");

      await server.stop();
      await until("the outage to be noticed", () => connections.includes(false));
      admin().create("nodes", "n4", node("n4", "10.244.4.0/24", peerAnnotations("198.18.0.4")));
      await server.start();
      await until("the node added during the outage", () => events.includes("put 10.244.4.0/24 198.18.0.4"));
      assert.equal(connections.at(-1), true);
      resyncs = [];
    } finally {
      watch.close();
      await registry.close();
    }
  });
});

describe("a list page parsed item by item (parseListPage)", () => {
  const pages = [
    {
      kind: "NodeList",
      apiVersion: "v1",
      metadata: { resourceVersion: "12", continue: "5" },
      items: [peerNode(0), peerNode(1)],
    },
    // Brackets, braces, quotes and backslashes inside strings; a nested "items" key; an empty item.
    { items: [{ a: 'x"}]{[', b: ["\\", '\\"'], items: [{ x: 1 }] }, {}], metadata: { resourceVersion: "1" } },
    { metadata: { resourceVersion: "1", items: [1] }, items: [] },
    // Not an array of objects, or no items: parsed whole, the same answer.
    { items: [1, null], metadata: {} },
    { kind: "items", metadata: { resourceVersion: "3" } },
  ];
  it("hands over exactly the items and the metadata JSON.parse finds, compact or indented", () => {
    for (const page of pages) {
      for (const text of [JSON.stringify(page), JSON.stringify(page, null, 2)]) {
        const items: unknown[] = [];
        const rest = parseListPage(text, (item) => items.push(item));
        const whole = JSON.parse(text) as { items?: unknown[]; metadata?: unknown };
        assert.deepEqual(items, whole.items ?? []);
        assert.deepEqual(rest.metadata, whole.metadata);
      }
    }
  });
  it("with pick, hands over each item's picked members only, and the same metadata", () => {
    const pick = ["metadata", "b", "items"];
    const picked = (item: unknown) =>
      item !== null && typeof item === "object"
        ? Object.fromEntries(Object.entries(item).filter(([k]) => pick.includes(k)))
        : item;
    for (const page of pages) {
      for (const text of [JSON.stringify(page), JSON.stringify(page, null, 2)]) {
        const items: unknown[] = [];
        const rest = parseListPage(text, (item) => items.push(item), pick);
        const whole = JSON.parse(text) as { items?: unknown[]; metadata?: unknown };
        assert.deepEqual(items, (whole.items ?? []).map(picked));
        assert.deepEqual(rest.metadata, whole.metadata);
      }
    }
  });
  it("read in chunks of any size (a chunk may end inside a string, a key or a UTF-8 character), gives the same", () => {
    const page = { ...pages[0], items: [...(pages[0]?.items ?? []), { metadata: { name: 'nœud-é\\"' }, status: {} }] };
    const text = Buffer.from(JSON.stringify(page));
    for (const pick of [undefined, ["metadata"]]) {
      const whole: unknown[] = [];
      const expected = parseListPage(text.toString(), (item) => whole.push(item), pick);
      for (const size of [1, 2, 3, 7, 64, 1000]) {
        const items: unknown[] = [];
        const reader = new ListPageReader((item) => items.push(item), pick);
        for (let at = 0; at < text.length; at += size) reader.write(text.subarray(at, at + size));
        assert.deepEqual(reader.end(), expected);
        assert.deepEqual(items, whole);
      }
    }
  });
  it("hands the members before items to onHead once, before the first item, in chunks of any size", () => {
    for (const page of pages) {
      const text = Buffer.from(JSON.stringify(page));
      const whole = JSON.parse(text.toString()) as Record<string, unknown>;
      const before = Object.keys(whole).slice(0, Object.keys(whole).indexOf("items"));
      for (const size of [1, 5, 1000]) {
        const seen: string[] = [];
        let head: unknown;
        const reader = new ListPageReader(
          () => seen.push("item"),
          undefined,
          (h) => {
            seen.push("head");
            head = h;
          },
        );
        for (let at = 0; at < text.length; at += size) reader.write(text.subarray(at, at + size));
        reader.end();
        if (!Array.isArray(whole.items) || !("items" in whole)) continue;
        assert.equal(seen.filter((s) => s === "head").length, 1);
        assert.equal(seen[0], "head");
        assert.deepEqual(head, { ...Object.fromEntries(before.map((k) => [k, whole[k]])), items: [] });
      }
    }
  });
  it("throws on an answer that is not JSON, cut short or not", () => {
    assert.throws(() => parseListPage('{"items":[{"a":1},]}', () => {}));
    assert.throws(() => parseListPage('{"items":[,{"a":1}]}', () => {}));
    assert.throws(() => parseListPage('{"items":[{"a":1}', () => {}, ["a"]));
    assert.throws(() => parseListPage('{"items":[{"a":1},{"a":}]}', () => {}, ["a"]));
    assert.throws(() => parseListPage('{"items":[{"a":1}', () => {}));
    assert.throws(() => parseListPage('{"items":[{"a":1},{"b":}]}', () => {}));
    assert.throws(() => parseListPage("<html>", () => {}));
  });
});

describe("a paged list (Informer.list)", () => {
  /** A NodeList page as a server writes it: kind, apiVersion, metadata, then items. */
  const head = (metadata: object) =>
    `{"kind":"NodeList","apiVersion":"v1","metadata":${JSON.stringify(metadata)},"items":[`;
  const item = (i: number) => JSON.stringify({ metadata: { name: `n${i}` }, spec: {}, status: { x: i } });
  const serve = async (handle: (url: URL, res: ServerResponse, requested: string[]) => void) => {
    const requested: string[] = [];
    const server = createServer((req, res) => {
      const url = new URL(req.url ?? "/", "http://x");
      requested.push(`${url.pathname}${url.search}`);
      handle(url, res, requested);
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const client = new KubeClient({
      server: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
      token: () => undefined,
      source: "test",
    });
    const informer = new Informer(client, { path: "/api/v1/nodes", pick: ["metadata"] }, { onList() {}, onEvent() {} });
    const close = () => {
      client.close();
      server.closeAllConnections();
      server.close();
    };
    return { informer, requested, close };
  };

  it("asks for page n+1 once page n's metadata is read, before its items, and keeps the server's order", {
    timeout: 10_000,
  }, async () => {
    // Page 1 sends its metadata, then holds its items until page 2 is asked for:
    // a client that waits for the end of each page before the next never finishes.
    const held: (() => void)[] = [];
    const { informer, requested, close } = await serve((url, res, requested) => {
      const from = Number(url.searchParams.get("continue") ?? 0);
      const last = from + 500 >= 1201;
      const ids = Array.from({ length: Math.min(500, 1201 - from) }, (_, k) => from + k);
      res.writeHead(200, { "content-type": "application/json" });
      res.write(head(last ? { resourceVersion: "9" } : { resourceVersion: "9", continue: String(from + 500) }));
      const rest = () => res.end(`${ids.map(item).join(",")}]}`);
      if (from === 0) held.push(rest);
      else rest();
      if (requested.length === 2) for (const r of held) r();
    });
    try {
      const listing = await informer.list("0");
      assert.deepEqual(requested, [
        "/api/v1/nodes?limit=500&resourceVersion=0",
        "/api/v1/nodes?limit=500&continue=500",
        "/api/v1/nodes?limit=500&continue=1000",
      ]);
      assert.equal(listing.resourceVersion, "9");
      assert.deepEqual(
        listing.items.map((o) => (o.metadata as { name: string }).name),
        Array.from({ length: 1201 }, (_, i) => `n${i}`),
      );
      assert.deepEqual(listing.items[7], { metadata: { name: "n7" } } as KubeObject);
    } finally {
      close();
    }
  });

  it("a page ahead that fails fails the list once the page before it is read", async () => {
    const { informer, close } = await serve((url, res) => {
      if (url.searchParams.get("continue") !== null) {
        res.writeHead(410, { "content-type": "application/json" });
        res.end(
          '{"kind":"Status","status":"Failure","reason":"Expired","message":"continue token expired","code":410}',
        );
        return;
      }
      res.writeHead(200, { "content-type": "application/json" });
      res.write(head({ resourceVersion: "9", continue: "500" }));
      setTimeout(() => res.end(`${item(0)}]}`), 50);
    });
    try {
      await assert.rejects(informer.list("0"), (e: Error & { status?: number }) => e.status === 410);
    } finally {
      close();
    }
  });
});

// Three hosts in namespaces, weftd on each with --kube-subnet-mgr against the
// stand-in API server on the underlay (198.18.0.254:6443, HTTPS, flannel's
// service-account token): the requests weftd sends, the podCIDR wait, peers
// following the watch, 410 re-lists, an API server outage with a steady ping,
// and peers deleted while a weftd was down.
//
// The outage lasts WEFT_KUBE_OUTAGE_S seconds (default 60, the figure);
// set it lower to shorten a local run.

import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, describe, it } from "node:test";
import { type Standin, startStandin } from "../lab/kube/standin.js";
import { Lab, type LabHost, type LabPod, nsRun, sh } from "../lab/topology.js";
import { steadyPing } from "./helpers/ping.js";

const API_IP = "198.18.0.254";
const OUTAGE_S = Number(process.env.WEFT_KUBE_OUTAGE_S ?? 60);
const P = "flannel.alpha.coreos.com/";
const HEALTH_PORT = "9104";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function health(host: LabHost, path: string): Promise<{ status: number; body: string }> {
  const out = await nsRun(host.ns, process.execPath, [
    "-e",
    `fetch("http://127.0.0.1:${HEALTH_PORT}${path}").then(async r => process.stdout.write(JSON.stringify({status: r.status, body: await r.text()})), () => process.stdout.write('{"status":0,"body":""}'))`,
  ]);
  return JSON.parse(out);
}

async function leaseCount(host: LabHost): Promise<number> {
  const { body } = await health(host, "/metrics");
  return Number(/^weft_leases (\d+)$/m.exec(body)?.[1] ?? Number.NaN);
}

function node(name: string, podCIDR?: string, annotations?: Record<string, string>, ip?: string) {
  return {
    metadata: { name, ...(annotations ? { annotations } : {}) },
    spec: podCIDR ? { podCIDR, podCIDRs: [podCIDR] } : {},
    status: {
      conditions: [{ type: "Ready", status: "True" }],
      ...(ip ? { addresses: [{ type: "InternalIP", address: ip }] } : {}),
    },
  };
}

/** A node some other flanneld runs on (it is not in the lab): only its annotations matter. */
function ghost(name: string, podCIDR: string, publicIp: string) {
  return node(name, podCIDR, {
    [`${P}backend-data`]: "null",
    [`${P}backend-type`]: "",
    [`${P}kube-subnet-manager`]: "true",
    [`${P}public-ip`]: publicIp,
  });
}

describe("three hosts in kube mode against the stand-in API server (netns)", { timeout: 300_000 }, () => {
  let lab: Lab;
  let api: Standin;
  const pods: LabPod[] = [];
  const netConf = () => join(lab.dir, "net-conf.json");
  const flags = () => [
    "--kube-subnet-mgr",
    "--kubeconfig-file",
    api.flannelKubeconfig,
    "--net-config-path",
    netConf(),
    "--healthz-port",
    HEALTH_PORT,
    "--healthz-ip",
    "127.0.0.1",
  ];
  const start = (h: LabHost, name = `h${h.index}`) => lab.startWeft(h, flags(), { env: { NODE_NAME: name } });
  const until = async (what: string, check: () => Promise<boolean>, ms = 15_000) => {
    const deadline = Date.now() + ms;
    while (!(await check())) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await sleep(100);
    }
  };
  /** weftd's log lines on `h` written at or after `since` (ms). */
  const logSince = (h: LabHost, since: number) =>
    lab
      .logTail(h, 500)
      .split("\n")
      .filter((l) => Number(/"time":(\d+)/.exec(l)?.[1] ?? 0) >= since)
      .join("\n");
  const allCounts = () => Promise.all(lab.hosts.map((h) => leaseCount(h)));

  before(async () => {
    lab = await Lab.create({
      prefix: `kub${process.pid % 10000}`,
      hosts: 3,
      dir: mkdtempSync(join(tmpdir(), "weft-kube-e2e-")),
    });
    const sw = lab.switchNs as string;
    await sh("ip", ["-n", sw, "addr", "add", `${API_IP}/24`, "dev", "br0"]);
    const apiDir = join(lab.dir, "api");
    await sh("mkdir", ["-p", apiDir]);
    api = await startStandin({
      dir: apiDir,
      listen: `${API_IP}:6443`,
      commandPrefix: ["ip", "netns", "exec", sw],
      bookmarkMs: 2000,
    });
    writeFileSync(netConf(), '{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}');
    await api.putNode(node("h1", "10.244.1.0/24", undefined, "198.18.0.1"));
    await api.putNode(node("h2", "10.244.2.0/24", undefined, "198.18.0.2"));
    await api.putNode(node("h3", undefined, undefined, "198.18.0.3"));
    for (const h of lab.hosts) start(h);
    for (const h of lab.hosts.slice(0, 2)) pods.push(await lab.addPod(h, await lab.waitForSubnetEnv(h)));
  });

  after(async () => {
    await lab?.destroy();
    await api?.kill();
  });

  it("a host whose podCIDR is unassigned waits with /readyz 503 naming it, then joins when it is assigned", async () => {
    const h3 = lab.hosts[2] as LabHost;
    await until("h3's health server", async () => (await health(h3, "/readyz")).status !== 0);
    const waiting = await health(h3, "/readyz");
    assert.equal(waiting.status, 503);
    assert.match(waiting.body, /waiting for spec\.podCIDR of Node h3 to be assigned/);
    assert.equal(h3.weft?.exitCode, null, "still running, not crash-looping");
    const r = await api.request(
      "PATCH",
      "/api/v1/nodes/h3",
      { spec: { podCIDR: "10.244.3.0/24", podCIDRs: ["10.244.3.0/24"] } },
      "application/strategic-merge-patch+json",
    );
    assert.equal(r.status, 200);
    const env = await lab.waitForSubnetEnv(h3);
    assert.equal(env.subnet, "10.244.3.1/24");
    pods.push(await lab.addPod(h3, env));
    await until("h3 ready", async () => (await health(h3, "/readyz")).status === 200);
  });

  it("sends flannel's two status PATCHes, byte for byte, and never writes the Node itself", async () => {
    await until(
      "three NetworkUnavailable patches",
      async () =>
        api.requests().filter((r) => r.method === "PATCH" && r.body.includes("NetworkUnavailable")).length === 3,
    );
    const writes = api.requests().filter((r) => r.method !== "GET" && r.user !== "admin");
    for (const h of lab.hosts) {
      const mine = writes.filter((r) => r.url === `/api/v1/nodes/h${h.index}/status`);
      assert.equal(mine.length, 2, `two PATCHes for h${h.index}`);
      for (const r of mine) {
        assert.equal(r.method, "PATCH");
        assert.equal(r.contentType, "application/strategic-merge-patch+json");
        assert.equal(r.status, 200);
      }
      assert.equal(
        mine[0]?.body,
        `{"metadata":{"annotations":{"${P}backend-data":"null","${P}backend-type":"","${P}kube-subnet-manager":"true","${P}public-ip":"${h.underlayIp}"}}}`,
      );
      assert.match(
        mine[1]?.body ?? "",
        /^\{"status":\{"conditions":\[\{"type":"NetworkUnavailable","status":"False","lastHeartbeatTime":"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)","lastTransitionTime":"\1","reason":"FlannelIsUp","message":"Flannel is running on this node"\}\]\}\}$/,
      );
    }
    assert.equal(writes.length, 6, "no other write: no PATCH or PUT of /nodes/<node>");
  });

  it("kubectl shows every node's annotations and NetworkUnavailable=False", async () => {
    const out = await nsRun(lab.switchNs as string, "kubectl", [
      "--kubeconfig",
      api.adminKubeconfig,
      // kubectl's discovery cache stays beside the kubeconfig, not in ~/.kube.
      "--cache-dir",
      join(dirname(api.adminKubeconfig), "kubectl-cache"),
      "get",
      "nodes",
      "-o",
      'custom-columns=NAME:.metadata.name,PODCIDR:.spec.podCIDR,PUBLIC-IP:.metadata.annotations.flannel\\.alpha\\.coreos\\.com/public-ip,NETWORK-UNAVAILABLE:.status.conditions[?(@.type=="NetworkUnavailable")].status',
    ]);
    for (const h of lab.hosts)
      assert.match(
        out,
        new RegExp(
          `^h${h.index}\\s+10\\.244\\.${h.index}\\.0/24\\s+${h.underlayIp.replace(/\./g, "\\.")}\\s+False$`,
          "m",
        ),
      );
  });

  it("every pod reaches every pod", async () => {
    for (const a of pods)
      for (const b of pods) {
        if (a === b) continue;
        const out = await nsRun(a.ns, "ping", ["-c", "2", "-i", "0.2", "-W", "3", b.ip]);
        assert.match(out, /2 received/, `${a.ip} -> ${b.ip}`);
      }
  });

  it("a node added, changed and deleted reaches every host's table", async () => {
    await api.putNode(ghost("g1", "10.244.9.0/24", "198.18.0.9"));
    await until("g1 on every host", async () => (await allCounts()).every((n) => n === 3));
    await api.putNode(ghost("g1", "10.244.9.0/24", "198.18.0.19"));
    await until("g1's new address on every host", async () =>
      lab.hosts.every((h) => lab.logTail(h, 40).includes("10.244.9.0/24 -> 198.18.0.19")),
    );
    await api.deleteNode("g1");
    await until("g1 gone everywhere", async () => (await allCounts()).every((n) => n === 2));
  });

  it("a 410 mid-stream re-lists without losing or duplicating peers", async () => {
    const before = api.requests().filter((r) => /^\/api\/v1\/nodes\?limit=500/.test(r.url)).length;
    const since = Date.now();
    await api.expire();
    await until(
      "every host to list again",
      async () => api.requests().filter((r) => /^\/api\/v1\/nodes\?limit=500/.test(r.url)).length >= before + 3,
    );
    assert.deepEqual(await allCounts(), [2, 2, 2]);
    for (const h of lab.hosts) assert.doesNotMatch(logSince(h, since), /peer (removed|added)/);
  });

  it(`API server stopped for ${OUTAGE_S} s: no ping lost between existing nodes; a node added meanwhile is routed within 5 s of its return`, async () => {
    const [p1, p2] = pods as [LabPod, LabPod];
    const ping = steadyPing(p1.ns, p2.ip, OUTAGE_S + 6);
    try {
      await sleep(2000);
      await api.stop();
      await sleep(OUTAGE_S * 500);
      await api.putNode(ghost("g2", "10.244.10.0/24", "198.18.0.10"));
      await sleep(OUTAGE_S * 500);
      for (const h of lab.hosts) assert.equal(h.weft?.exitCode, null, `weftd on ${h.ns} runs through the outage`);
      await api.start();
      const back = Date.now();
      let seen: number[] = [];
      while (Date.now() - back < 5000) {
        seen = await allCounts();
        if (seen.every((n) => n === 3)) break;
        await sleep(100);
      }
      assert.deepEqual(seen, [3, 3, 3], "g2 known everywhere within 5 s of the API server's return");
      const { sent, received, summary } = await ping.result();
      assert.equal(received, sent, `no ping lost across the outage: ${summary}`);
    } finally {
      ping.stop();
    }
  });

  it("a peer deleted while a weftd was down is not routed after its restart", async () => {
    const h2 = lab.hosts[1] as LabHost;
    await lab.stopWeft(h2);
    await api.deleteNode("g2");
    const since = Date.now();
    start(h2);
    await lab.waitForSubnetEnv(h2, 20_000, since);
    await until("h2's table", async () => (await leaseCount(h2)) === 2);
    assert.doesNotMatch(logSince(h2, since), /10\.244\.10\.0\/24/);
    assert.deepEqual(await allCounts(), [2, 2, 2]);
  });

  it("a podCIDR outside Network: one sentence and exit 1", async () => {
    const h3 = lab.hosts[2] as LabHost;
    await api.putNode(node("bad", "10.99.0.0/24"));
    const saved = h3.weft;
    h3.weft = null;
    const child = lab.startWeft(h3, [...flags(), "--subnet-file", join(lab.dir, "bad.env"), "--healthz-port", "0"], {
      env: { NODE_NAME: "bad" },
    });
    const code = await new Promise<number | null>((resolve) => child.once("exit", (c) => resolve(c)));
    h3.weft = saved;
    assert.equal(code, 1);
    assert.match(
      lab.logTail(h3, 5),
      /weftd: Node bad: spec\.podCIDR 10\.99\.0\.0\/24 is outside Network 10\.244\.0\.0\/16 of \S+net-conf\.json\n?/,
    );
  });
});

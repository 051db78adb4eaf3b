// `npm run lab` as a user runs it: the CLI as a child process, with its own namespace
// prefix and state directory so it never meets a lab the user has running. Up gives
// a full matrix with pods made by the CNI chain; down leaves nothing behind, also
// when the lab itself was killed mid-way.

import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { LabCli, lines, running } from "./helpers/lab-cli.js";

const prefix = `wl${randomBytes(2).toString("hex")}`;
const stateDir = join(tmpdir(), `weft-lab-test-${prefix}`);
const cli = new LabCli(prefix, stateDir);
const lab = (...args: string[]) => cli.run(...args);
const namespaces = () => cli.namespaces();
const ourProcesses = () => cli.processes();
let rulesBefore: string[] = [];

function rootLinks(): string[] {
  return lines("ip", ["-o", "link", "show"])
    .map((l) => l.split(":")[1]?.trim().split("@")[0] ?? "")
    .filter(Boolean)
    .sort();
}

/** Root-namespace rules the CNI plugins or weftd would add if they ran in the wrong place. */
function rootRules(): string[] {
  return lines("iptables-save", []).filter((l) => /CNI-|FLANNEL|10\.244\./.test(l));
}

function assertNothingLeft(linksBefore: string[]): void {
  assert.deepEqual(rootRules(), rulesBefore, "no iptables rule left in the root namespace");
  assert.deepEqual(namespaces(), [], "no lab namespace left");
  assert.equal(
    existsSync(stateDir),
    false,
    `${stateDir} removed (left: ${existsSync(stateDir) && readdirSync(stateDir)})`,
  );
  assert.deepEqual(ourProcesses(), [], "no lab process left");
  assert.deepEqual(rootLinks(), linksBefore, "no link left in (or added to) the root namespace");
}

function assertFullMatrix(out: string, pairs: number): void {
  assert.match(out, new RegExp(`all ${pairs} pairs ok: every pod reaches every pod`), out);
  assert.doesNotMatch(out, /FAIL/, out);
}

describe("npm run lab", { timeout: 170_000 }, () => {
  const linksBefore = rootLinks();
  rulesBefore = rootRules();
  const varLibCniExisted = existsSync("/var/lib/cni");

  after(() => {
    // Whatever a failed test left: the CLI's own down is the cleanup.
    if (namespaces().length > 0 || existsSync(stateDir)) lab("down");
  });

  it("up with 3 hosts × 2 pods (CNI chain) gives a full matrix, a lease table and counters; --keep leaves it running", () => {
    const r = lab("up", "--keep", "--hosts", "3", "--pods", "2");
    assert.equal(r.code, 0, r.out);
    assertFullMatrix(r.out, 30);
    for (const h of [1, 2, 3]) {
      assert.match(r.out, new RegExp(`pods: h${h}-p1 10\\.244\\.\\d+\\.\\d+, h${h}-p2 10\\.244\\.\\d+\\.\\d+`));
      assert.match(r.out, new RegExp(`${prefix}-h${h} +tx \\d+ pkts .* peer leases 2`));
    }
    assert.match(r.out, /lease table \(file registry/);
    assert.equal((r.out.match(/PublicIP 198\.18\.0\.[123] /g) ?? []).length, 3);
    assert.match(r.out, /npm run bench -- lab/);

    const state = JSON.parse(readFileSync(join(stateDir, "state.json"), "utf8"));
    assert.equal(state.phase, "up");
    assert.equal(state.pods.length, 6);
    assert.equal(namespaces().length, 1 + 3 + 6, namespaces().join(" "));
    const weftd = state.processes.filter((p: { role: string }) => p.role === "weftd");
    assert.equal(weftd.length, 3);
    for (const p of weftd) assert.ok(running(p.pid), `weftd ${p.pid} runs`);
    // The pods are the CNI chain's: cni0 on the host, eth0 with the flannel MTU in the pod.
    const hostLinks = spawnSync("ip", ["-n", `${prefix}-h1`, "-o", "link", "show", "cni0"], { encoding: "utf8" });
    assert.equal(hostLinks.status, 0, "cni0 on h1");
    const podLink = spawnSync("ip", ["-n", `${prefix}-h1-p1`, "-o", "link", "show", "eth0"], { encoding: "utf8" });
    assert.match(podLink.stdout, /mtu 1472 /);
  });

  it("a second up refuses and leaves the running lab alone", () => {
    const state = readFileSync(join(stateDir, "state.json"), "utf8");
    const r = lab("up");
    assert.equal(r.code, 1, r.out);
    assert.match(r.out, /a lab is already running .*remove it with: npm run lab -- down --prefix/);
    assert.equal(readFileSync(join(stateDir, "state.json"), "utf8"), state);
    for (const p of JSON.parse(state).processes)
      assert.ok(existsSync(`/proc/${p.pid}`), `${p.role} ${p.pid} still runs`);
  });

  it("down removes pods (CNI DEL), weftd, namespaces and files", () => {
    const pids = JSON.parse(readFileSync(join(stateDir, "state.json"), "utf8")).processes.map(
      (p: { pid: number }) => p.pid,
    );
    const r = lab("down");
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /removed 6 pods \(CNI DEL\), 3 processes, 10 namespaces/);
    for (const pid of pids) assert.equal(running(pid), false, `pid ${pid} gone`);
    assertNothingLeft(linksBefore);
    assert.equal(existsSync("/var/lib/cni"), varLibCniExisted, "the machine's /var/lib/cni untouched");
    assert.match(lab("down").out, /no lab to remove/);
  });

  it("--etcd: leases in a real etcd in the lab, the same full matrix, nothing left afterwards", () => {
    const r = lab("up", "--etcd");
    assert.equal(r.code, 0, r.out);
    assertFullMatrix(r.out, 30);
    assert.match(r.out, /lease table \(etcd at http:\/\/198\.18\.0\.254:2379, keys \/coreos\.com\/network\/subnets/);
    assert.equal((r.out.match(/PublicIP 198\.18\.0\.[123] /g) ?? []).length, 3);
    assert.match(r.out, /removed 6 pods \(CNI DEL\), 4 processes, 10 namespaces/);
    assertNothingLeft(linksBefore);
  });

  it("down cleans up after the lab was killed with SIGKILL mid-way", async () => {
    const child = spawn(process.execPath, cli.argv("up", "--keep"), { stdio: "ignore" });
    // Kill it once it is making pods: weftd runs, some namespaces and CNI state exist.
    const deadline = Date.now() + 60_000;
    for (;;) {
      try {
        const s = JSON.parse(readFileSync(join(stateDir, "state.json"), "utf8"));
        if (s.pods.length >= 2) break;
      } catch {
        // Not written yet, or being renamed.
      }
      assert.ok(Date.now() < deadline, "the lab reached pod creation within 60 s");
      await new Promise((r) => setTimeout(r, 20));
    }
    child.kill("SIGKILL");
    await new Promise((r) => child.once("exit", r));
    assert.ok(namespaces().length > 0 && ourProcesses().length > 0, "the crash left a lab behind");

    const again = lab("up");
    assert.equal(again.code, 1, again.out);
    assert.match(again.out, /did not finish starting .* remove it with/);

    const r = lab("down");
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /removed \d+ pods \(CNI DEL\), 3 processes, \d+ namespaces/);
    assertNothingLeft(linksBefore);
  });

  it("down finds leftover namespaces even without a state file", () => {
    const ns = `${prefix}-h9`;
    assert.equal(spawnSync("ip", ["netns", "add", ns]).status, 0);
    const refused = lab("up");
    assert.equal(refused.code, 1, refused.out);
    assert.match(refused.out, new RegExp(`namespaces ${ns} are left over`));
    const r = lab("down");
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /1 namespaces/);
    assertNothingLeft(linksBefore);
  });
});

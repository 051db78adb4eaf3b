// lab/setup.ts as a newcomer meets it, without touching the machine's packages: the
// script runs with a PATH of its own, where chosen commands are missing and apt-get is
// a stand-in that records its arguments and "installs" by adding the missing commands.
// The non-root case runs the script as user nobody for real.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import {
  chmodSync,
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { JOBS, type Job, missingPackages, present } from "../lab/packages.js";

const DIST_LAB = fileURLToPath(new URL("../lab/", import.meta.url));
const REAL_PATH = process.env.PATH ?? "";
const dirs: string[] = [];

/** Where the machine's own PATH has a command. */
const real = (cmd: string) =>
  REAL_PATH.split(":")
    .map((d) => join(d, cmd))
    .find((p) => present(p, ""));

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
  /** One line per apt-get call: its arguments. */
  apt: string[];
}

/**
 * A PATH directory holding every command the job probes for except `hide`, plus a
 * fake apt-get (unless `apt` is false) that logs its calls and, on install, links in
 * the hidden commands (or not, with `aptInstalls: false`, or fails with `aptFails`).
 */
function fakeMachine(
  job: Job,
  hide: string[],
  opts: { apt?: boolean; aptInstalls?: boolean; aptFails?: boolean } = {},
) {
  const dir = mkdtempSync(join(tmpdir(), "stp-setup-"));
  dirs.push(dir);
  chmodSync(dir, 0o755); // user nobody looks through it in the non-root case
  const bin = join(dir, "bin");
  mkdirSync(bin);
  const links: string[] = [];
  for (const p of JOBS[job]) {
    if (p.probe.startsWith("/")) continue;
    const target = real(p.probe) ?? "/bin/true";
    if (hide.includes(p.probe)) links.push(`/bin/ln -sf ${target} ${join(bin, p.probe)}`);
    else symlinkSync(target, join(bin, p.probe));
  }
  const log = join(dir, "apt.log");
  writeFileSync(log, "");
  if (opts.apt !== false) {
    const script = [
      "#!/bin/sh",
      `echo "$*" >> ${log}`,
      opts.aptFails ? 'case "$1" in install) echo "E: Unable to locate package nothing-here" >&2; exit 100;; esac' : "",
      opts.aptInstalls === false ? "" : `case "$1" in install) ${links.join("; ") || ":"};; esac`,
      "exit 0",
    ].join("\n");
    writeFileSync(join(bin, "apt-get"), `${script}\n`);
    chmodSync(join(bin, "apt-get"), 0o755);
  }
  return { dir, bin, log };
}

function runSetup(job: string, bin: string, log: string, asNobody = false): Run {
  // The script and its one import, copied where user nobody can read them.
  const code = mkdtempSync(join(tmpdir(), "stp-setup-js-"));
  dirs.push(code);
  chmodSync(code, 0o755);
  for (const f of ["setup.js", "packages.js"]) copyFileSync(join(DIST_LAB, f), join(code, f));
  writeFileSync(join(code, "package.json"), '{"type":"module"}\n');
  const node = [process.execPath, join(code, "setup.js"), job];
  const cmd = asNobody
    ? [real("setpriv") ?? "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", ...node]
    : node;
  const r = spawnSync(cmd[0] as string, cmd.slice(1), { encoding: "utf8", env: { ...process.env, PATH: bin } });
  const apt = readFileSync(log, "utf8").split("\n").filter(Boolean);
  return { code: r.status, stdout: r.stdout, stderr: r.stderr, apt };
}

after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe("setup: the Debian packages each job uses", () => {
  it("lab, test and bench each list the lab's four packages; test and bench add their own", () => {
    const names = (job: Job) => JOBS[job].map((p) => p.name);
    for (const job of ["lab", "lab-etcd", "lab-kube", "test", "bench"] as const) {
      for (const p of ["iproute2", "iptables", "iputils-ping", "containernetworking-plugins"]) {
        assert.ok(names(job).includes(p), `${job} lists ${p}`);
      }
    }
    for (const p of ["etcd-server", "etcd-client", "iperf3", "tcpdump", "openssl", "docker-compose", "docker.io"]) {
      assert.ok(names("test").includes(p), `test lists ${p}`);
    }
    assert.ok(names("bench").includes("gcc") && names("bench").includes("iperf3"));
    // The scale bench runs etcd (checked with etcdctl) and the stand-in API server (openssl certificates).
    for (const p of ["etcd-server", "etcd-client", "openssl"])
      assert.ok(names("bench").includes(p), `bench lists ${p}`);
    // The lab's --etcd and --kube variants add only what those modes run.
    assert.deepEqual(names("lab-etcd").slice(4), ["etcd-server", "etcd-client"]);
    assert.deepEqual(names("lab-kube").slice(4), ["openssl", "kubernetes-client"]);
    assert.deepEqual(
      missingPackages("lab", ""),
      JOBS.lab.filter((p) => !p.probe.startsWith("/")),
    );
  });

  it("with everything there it prints nothing and never calls apt-get", () => {
    const m = fakeMachine("test", []);
    const r = runSetup("test", m.bin, m.log);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout + r.stderr, "");
    assert.deepEqual(r.apt, []);
  });

  it("as root it says in one line what it installs and why, runs apt-get update once, then installs", () => {
    const m = fakeMachine("test", ["iperf3", "tcpdump"]);
    const r = runSetup("test", m.bin, m.log);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, "");
    const lines = r.stdout.split("\n").filter(Boolean);
    assert.equal(lines.length, 1, r.stdout);
    assert.match(
      lines[0] as string,
      /^setup: installing iperf3 tcpdump with apt-get for npm test \(iperf3: .+; tcpdump: .+\)$/,
    );
    assert.deepEqual(r.apt, ["update -qq", "install -y -qq --no-install-recommends iperf3 tcpdump"]);
  });

  it("never installs kubernetes-client where a kubectl exists, and installs it where none does", () => {
    const withKubectl = fakeMachine("test", ["etcd"]);
    const a = runSetup("test", withKubectl.bin, withKubectl.log);
    assert.equal(a.code, 0, a.stderr);
    assert.doesNotMatch(a.apt.join("\n"), /kubernetes-client/);
    const without = fakeMachine("test", ["kubectl"]);
    const b = runSetup("test", without.bin, without.log);
    assert.equal(b.code, 0, b.stderr);
    assert.deepEqual(b.apt, ["update -qq", "install -y -qq --no-install-recommends kubernetes-client"]);
  });

  it("each job asks only for its own packages", () => {
    const m = fakeMachine("bench", ["cc", "iperf3"]);
    const r = runSetup("bench", m.bin, m.log);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.apt, ["update -qq", "install -y -qq --no-install-recommends iperf3 gcc"]);
    const lab = fakeMachine("lab", ["iptables"]);
    const l = runSetup("lab", lab.bin, lab.log);
    assert.match(l.stdout, /for npm run lab/);
    assert.deepEqual(l.apt, ["update -qq", "install -y -qq --no-install-recommends iptables"]);
  });

  it("not root: one sentence naming the packages and the command, exit 1, no apt-get", () => {
    const m = fakeMachine("lab", ["iptables", "ping"]);
    const r = runSetup("lab", m.bin, m.log, true);
    assert.equal(r.code, 1);
    assert.equal(r.stdout, "");
    assert.equal(
      r.stderr,
      "setup: npm run lab needs the Debian packages iptables iputils-ping, which are missing; install them as root with: apt-get update && apt-get install --no-install-recommends iptables iputils-ping\n",
    );
    assert.deepEqual(r.apt, []);
  });

  it("no apt-get: one sentence naming the packages, exit 1", () => {
    const m = fakeMachine("test", ["tcpdump"], { apt: false });
    const r = runSetup("test", m.bin, m.log);
    assert.equal(r.code, 1);
    assert.match(
      r.stderr,
      /^setup: npm test needs tcpdump \(Debian's package names\), and this machine has no apt-get/,
    );
  });

  it("fails with apt-get's own words when the install fails, or when the command is still missing after it", () => {
    const broken = fakeMachine("lab", ["ping"], { aptFails: true });
    const a = runSetup("lab", broken.bin, broken.log);
    assert.equal(a.code, 1);
    assert.match(a.stderr, /apt-get install .*iputils-ping failed \(exit 100\):\n {2}E: Unable to locate package/);
    const noop = fakeMachine("lab", ["ping"], { aptInstalls: false });
    const b = runSetup("lab", noop.bin, noop.log);
    assert.equal(b.code, 1);
    assert.match(b.stderr, /ping \(iputils-ping\) is still missing/);
  });

  it("refuses an unknown job", () => {
    const m = fakeMachine("lab", []);
    const r = runSetup("deploy", m.bin, m.log);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /usage: setup\.js lab\|lab-etcd\|lab-kube\|test\|bench \(got "deploy"\)/);
  });
});

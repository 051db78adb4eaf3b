// The flannel CNI plugin, end to end: the compiled plugin is run through its `cni/flannel`
// shim, first against a fake delegate that records what it is given, then with Debian's
// real bridge/host-local/portmap inside network namespaces this test creates. The "node"
// is a namespace too, and each plugin also gets a private /var/lib, so host-local's
// leases and flannel's default dataDir never land on the real host.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { CniError, runConflist } from "../cni/chain.js";
import { goJson, parseSubnetEnv } from "../cni/flannel.js";

const repo = fileURLToPath(new URL("../../", import.meta.url));
const repoCni = join(repo, "cni");
const shim = join(repoCni, "flannel");
const systemCni = "/usr/lib/cni";

const SUBNET_ENV =
  "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.68.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n";

// kube-flannel.yml's cni-conf.json, verbatim.
const KUBE_FLANNEL = {
  name: "cbr0",
  cniVersion: "0.3.1",
  plugins: [
    { type: "flannel", delegate: { hairpinMode: true, isDefaultGateway: true } },
    { type: "portmap", capabilities: { portMappings: true } },
  ],
};

// What flannel-io/cni-plugin saves for KUBE_FLANNEL and SUBNET_ENV: Go's json.Marshal of
// its delegate map (sorted keys), subnet masked by net.ParseCIDR, ipMasq = !false.
const KUBE_FLANNEL_DELEGATE =
  '{"cniVersion":"0.3.1","hairpinMode":true,"ipMasq":true,' +
  '"ipam":{"ranges":[[{"subnet":"10.244.68.0/24"}]],"routes":[{"dst":"10.244.0.0/16"}],"type":"host-local"},' +
  '"isDefaultGateway":true,"isGateway":true,"mtu":1472,"name":"cbr0","type":"bridge"}';

function sh(argv: string[], input?: string): string {
  const r = spawnSync(argv[0] as string, argv.slice(1), { input, encoding: "utf8" });
  if (r.status !== 0) throw new Error(`${argv.join(" ")} failed (${r.status}): ${r.stderr}`);
  return r.stdout;
}

interface ShimRun {
  status: number | null;
  stdout: string;
  json: Record<string, unknown> | null;
}

/** Runs the plugin binary as a runtime would. */
function runShim(env: Record<string, string>, stdin: string): ShimRun {
  const r = spawnSync(shim, [], { input: stdin, encoding: "utf8", env: { ...process.env, ...env } });
  let json: Record<string, unknown> | null = null;
  try {
    json = JSON.parse(r.stdout);
  } catch {
    json = null;
  }
  return { status: r.status, stdout: r.stdout, json };
}

/** Links, routes and iptables rules this suite could leave behind if something escaped. */
function rootFingerprint(): string[] {
  const links = sh(["ip", "-o", "link", "show"])
    .split("\n")
    .map((l) => l.split(":")[1]?.trim().split("@")[0] ?? "")
    .filter((n) => n === "cni0" || n.startsWith("veth"));
  const routes = sh(["ip", "route", "show"])
    .split("\n")
    .filter((l) => l.includes("10.244."));
  const rules = spawnSync("iptables-save", [], { encoding: "utf8" })
    .stdout.split("\n")
    .filter((l) => /CNI-|10\.244\./.test(l));
  return [...links.map((l) => `link ${l}`), ...routes.map((r) => `route ${r}`), ...rules.map((r) => `rule ${r}`)];
}

// Needs root, iproute2, unshare and containernetworking-plugins: the test
// runner's setup step installs them; missing ones fail the tests loudly.
describe("flannel CNI plugin", () => {
  const tag = randomBytes(3).toString("hex");
  const hostNs = `weft-cni-${tag}-h`;
  const podNs = `weft-cni-${tag}-p`;
  let dir = "";
  let subnetFile = "";
  let fakeBin = "";
  let fakeLog = "";
  let varLib = "";
  let rootBefore: string[] = [];
  let varLibCniExisted = false;

  // Each plugin runs in the node namespace with its own /var/lib bound to a temp dir.
  const wrapper = () => [
    "unshare",
    "--mount",
    "--propagation",
    "private",
    "sh",
    "-c",
    'mount --bind "$0" /var/lib && ns="$1" && shift && exec ip netns exec "$ns" "$@"',
    varLib,
    hostNs,
  ];
  const inHost = (...argv: string[]) => sh(["ip", "netns", "exec", hostNs, ...argv]);
  const inPod = (...argv: string[]) => sh(["ip", "netns", "exec", podNs, ...argv]);

  const pluginEnv = (extra: Record<string, string> = {}) => ({
    CNI_CONTAINERID: "c0ffee",
    CNI_NETNS: "/var/run/netns/none",
    CNI_IFNAME: "eth0",
    CNI_PATH: `${fakeBin}:${systemCni}`,
    FAKE_LOG: fakeLog,
    ...extra,
  });
  const conf = (extra: Record<string, unknown> = {}) =>
    JSON.stringify({
      cniVersion: "0.3.1",
      name: "cbr0",
      type: "flannel",
      subnetFile,
      dataDir: join(dir, "data"),
      ...extra,
    });

  before(async () => {
    rootBefore = rootFingerprint();
    varLibCniExisted = existsSync("/var/lib/cni");
    dir = await mkdtemp(join(tmpdir(), "weft-cni-"));
    subnetFile = join(dir, "subnet.env");
    await writeFile(subnetFile, SUBNET_ENV);
    varLib = join(dir, "var-lib");
    await mkdir(varLib);
    fakeLog = join(dir, "fake-log");
    await mkdir(fakeLog);
    // A delegate that records its config and environment, then succeeds or fails on demand.
    fakeBin = join(dir, "fake-bin");
    await mkdir(fakeBin);
    const fake = [
      "#!/bin/sh",
      'cat > "$FAKE_LOG/$CNI_COMMAND.conf"',
      'env | grep "^CNI_" | sort > "$FAKE_LOG/$CNI_COMMAND.env"',
      'if [ -n "$FAKE_FAIL" ]; then echo \'{"code":42,"msg":"fake failure","details":"asked to"}\'; exit 1; fi',
      'if [ "$CNI_COMMAND" = ADD ]; then echo \'{"cniVersion":"0.3.1","ips":[{"version":"4","address":"10.244.68.9/24"}]}\'; fi',
      "",
    ].join("\n");
    for (const name of ["bridge", "macvlan"]) {
      await writeFile(join(fakeBin, name), fake);
      await chmod(join(fakeBin, name), 0o755);
    }
    sh(["ip", "netns", "add", hostNs]);
    sh(["ip", "netns", "add", podNs]);
    inHost("ip", "link", "set", "lo", "up");
    inPod("ip", "link", "set", "lo", "up");
  });

  after(async () => {
    for (const ns of [podNs, hostNs]) spawnSync("ip", ["netns", "del", ns]);
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test("VERSION prints the supported spec versions", () => {
    const r = runShim({ CNI_COMMAND: "VERSION" }, "");
    assert.equal(r.status, 0);
    assert.equal(r.stdout, '{"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0"]}\n');
  });

  test("stdin that is not JSON is a decoding error (code 6) on stdout", () => {
    const r = runShim({ ...pluginEnv(), CNI_COMMAND: "ADD" }, "{not json");
    assert.equal(r.status, 1);
    assert.equal(r.json?.code, 6);
    assert.equal(typeof r.json?.cniVersion, "string");
    assert.match(String(r.json?.msg), /not valid JSON/);
  });

  test("a missing env variable is code 4 naming it", () => {
    const r = runShim({ ...pluginEnv({ CNI_NETNS: "" }), CNI_COMMAND: "ADD" }, conf());
    assert.equal(r.status, 1);
    assert.equal(r.json?.code, 4);
    assert.match(String(r.json?.msg), /CNI_NETNS/);
  });

  test("a missing subnet.env is 'try again later' (code 11) naming the file", async () => {
    const missing = join(dir, "nowhere", "subnet.env");
    const r = runShim({ ...pluginEnv(), CNI_COMMAND: "ADD" }, conf({ subnetFile: missing }));
    assert.equal(r.status, 1);
    assert.equal(r.json?.cniVersion, "0.3.1");
    assert.equal(r.json?.code, 11);
    assert.ok(String(r.json?.msg).includes(missing), String(r.json?.msg));
    assert.equal(existsSync(join(dir, "data")), false, "nothing saved before subnet.env was read");
  });

  test("renders the kube-flannel delegate byte for byte as flannel saves it, 0600 in a 0700 dir", async () => {
    const r = runShim(
      { ...pluginEnv(), CNI_COMMAND: "ADD" },
      conf({ delegate: { hairpinMode: true, isDefaultGateway: true } }),
    );
    assert.equal(r.status, 0, r.stdout);
    const saved = join(dir, "data", "c0ffee");
    assert.equal(await readFile(saved, "utf8"), KUBE_FLANNEL_DELEGATE);
    assert.equal((await stat(saved)).mode & 0o777, 0o600);
    assert.equal((await stat(join(dir, "data"))).mode & 0o777, 0o700);
    // The delegate got exactly those bytes, the caller's CNI_* and ADD; its result is ours.
    assert.equal(await readFile(join(fakeLog, "ADD.conf"), "utf8"), KUBE_FLANNEL_DELEGATE);
    const env = await readFile(join(fakeLog, "ADD.env"), "utf8");
    for (const line of [
      "CNI_COMMAND=ADD",
      "CNI_CONTAINERID=c0ffee",
      "CNI_IFNAME=eth0",
      "CNI_NETNS=/var/run/netns/none",
    ]) {
      assert.ok(env.includes(`${line}\n`), `${line} in ${env}`);
    }
    assert.deepEqual(r.json, { cniVersion: "0.3.1", ips: [{ version: "4", address: "10.244.68.9/24" }] });
  });

  test("FLANNEL_IPMASQ=true turns the bridge's ipMasq off; delegate fields win over every default", async () => {
    const masq = join(dir, "masq.env");
    await writeFile(masq, SUBNET_ENV.replace("FLANNEL_IPMASQ=false", "FLANNEL_IPMASQ=true"));
    let r = runShim({ ...pluginEnv({ CNI_CONTAINERID: "m1" }), CNI_COMMAND: "ADD" }, conf({ subnetFile: masq }));
    assert.equal(r.status, 0, r.stdout);
    assert.equal(
      await readFile(join(dir, "data", "m1"), "utf8"),
      '{"cniVersion":"0.3.1","ipMasq":false,' +
        '"ipam":{"ranges":[[{"subnet":"10.244.68.0/24"}]],"routes":[{"dst":"10.244.0.0/16"}],"type":"host-local"},' +
        '"isGateway":true,"mtu":1472,"name":"cbr0","type":"bridge"}',
    );
    const delegate = { type: "bridge", bridge: "cni9", mtu: 1400, ipMasq: true, isGateway: false, hairpinMode: true };
    r = runShim({ ...pluginEnv({ CNI_CONTAINERID: "m2" }), CNI_COMMAND: "ADD" }, conf({ subnetFile: masq, delegate }));
    assert.equal(r.status, 0, r.stdout);
    assert.equal(
      await readFile(join(dir, "data", "m2"), "utf8"),
      '{"bridge":"cni9","cniVersion":"0.3.1","hairpinMode":true,"ipMasq":true,' +
        '"ipam":{"ranges":[[{"subnet":"10.244.68.0/24"}]],"routes":[{"dst":"10.244.0.0/16"}],"type":"host-local"},' +
        '"isGateway":false,"mtu":1400,"name":"cbr0","type":"bridge"}',
    );
  });

  test("a non-bridge delegate gets no isGateway; the conf's ipam and runtimeConfig are merged as flannel does", async () => {
    const extra = {
      cniVersion: "1.0.0",
      delegate: { type: "macvlan", master: "eth0" },
      ipam: { dataDir: "/run/x", routes: [{ dst: "192.168.0.0/16", gw: "10.244.68.254" }] },
      runtimeConfig: { portMappings: [] },
    };
    const r = runShim({ ...pluginEnv({ CNI_CONTAINERID: "mv" }), CNI_COMMAND: "ADD" }, conf(extra));
    assert.equal(r.status, 0, r.stdout);
    assert.equal(
      await readFile(join(dir, "data", "mv"), "utf8"),
      '{"cniVersion":"1.0.0","ipMasq":true,' +
        '"ipam":{"dataDir":"/run/x","ranges":[[{"subnet":"10.244.68.0/24"}]],' +
        '"routes":[{"dst":"192.168.0.0/16","gw":"10.244.68.254"},{"dst":"10.244.0.0/16"}],"type":"host-local"},' +
        '"master":"eth0","mtu":1472,"name":"cbr0","runtimeConfig":{"portMappings":[]},"type":"macvlan"}',
    );
  });

  test("a delegate that sets name or ipam is an invalid config (code 7) naming the field", () => {
    for (const field of ["name", "ipam"]) {
      const r = runShim({ ...pluginEnv(), CNI_COMMAND: "ADD" }, conf({ delegate: { [field]: "x" } }));
      assert.equal(r.status, 1);
      assert.equal(r.json?.code, 7);
      assert.match(String(r.json?.msg), new RegExp(`delegate\\.${field}`));
    }
  });

  test("a failing delegate's error passes through unchanged and the saved config stays for DEL", async () => {
    const r = runShim({ ...pluginEnv({ CNI_CONTAINERID: "bad", FAKE_FAIL: "1" }), CNI_COMMAND: "ADD" }, conf());
    assert.equal(r.status, 1);
    assert.deepEqual(r.json, { cniVersion: "0.3.1", code: 42, msg: "fake failure", details: "asked to" });
    assert.ok(existsSync(join(dir, "data", "bad")));
  });

  test("DEL hands the saved config to the delegate, keeps it when that fails, removes it when it succeeds", async () => {
    const saved = join(dir, "data", "bad");
    const bytes = await readFile(saved, "utf8");
    let r = runShim({ ...pluginEnv({ CNI_CONTAINERID: "bad", FAKE_FAIL: "1" }), CNI_COMMAND: "DEL" }, conf());
    assert.equal(r.json?.code, 42);
    assert.ok(existsSync(saved), "kept for the runtime's retry");
    r = runShim({ ...pluginEnv({ CNI_CONTAINERID: "bad" }), CNI_COMMAND: "DEL" }, conf());
    assert.equal(r.status, 0, r.stdout);
    assert.equal(r.stdout, "");
    assert.equal(await readFile(join(fakeLog, "DEL.conf"), "utf8"), bytes);
    assert.equal(existsSync(saved), false);
    r = runShim({ ...pluginEnv({ CNI_CONTAINERID: "bad" }), CNI_COMMAND: "DEL" }, conf());
    assert.equal(r.status, 0, r.stdout);
    assert.equal(r.stdout, "");
  });

  test("ADD with a delegate that cannot be found saves nothing; DEL of a config whose delegate vanished still cleans up", async () => {
    const missing = runShim(
      { ...pluginEnv({ CNI_CONTAINERID: "nodelegate" }), CNI_COMMAND: "ADD" },
      conf({ delegate: { type: "no-such-plugin" } }),
    );
    assert.equal(missing.status, 1);
    assert.match(String(missing.json?.msg), /failed to find plugin "no-such-plugin"/);
    assert.equal(existsSync(join(dir, "data", "nodelegate")), false, "no file left for a DEL that could never succeed");

    // A delegate that ran at ADD and was uninstalled before DEL.
    const r = runShim(
      { ...pluginEnv({ CNI_CONTAINERID: "orphan" }), CNI_COMMAND: "ADD" },
      conf({ delegate: { type: "macvlan" } }),
    );
    assert.equal(r.status, 0, r.stdout);
    const saved = join(dir, "data", "orphan");
    assert.ok(existsSync(saved));
    const del = runShim(
      { ...pluginEnv({ CNI_CONTAINERID: "orphan" }), CNI_PATH: join(dir, "empty-cni-path"), CNI_COMMAND: "DEL" },
      conf(),
    );
    assert.equal(del.status, 0, del.stdout);
    assert.equal(existsSync(saved), false);
  });

  test("subnet.env parsing tolerates hand edits and names what is missing", () => {
    const text =
      '# written by hand\r\n FLANNEL_NETWORK = 10.244.0.0/16,10.245.0.0/16,10.244.0.0/16\r\n\r\nOTHER=1\nFLANNEL_SUBNET="10.244.68.1/24"\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false';
    assert.deepEqual(parseSubnetEnv(text, "f"), {
      networks: ["10.244.0.0/16", "10.245.0.0/16"],
      subnet: "10.244.68.0/24",
      mtu: 1472,
      ipMasq: false,
    });
    assert.throws(
      () => parseSubnetEnv("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.68.1/24\n", "/run/flannel/subnet.env"),
      (e: unknown) =>
        e instanceof CniError &&
        e.code === 100 &&
        e.msg === "/run/flannel/subnet.env is missing FLANNEL_MTU, FLANNEL_IPMASQ",
    );
    assert.throws(() => parseSubnetEnv(SUBNET_ENV.replace("1472", "big"), "f"), /FLANNEL_MTU "big"/);
  });

  test("serialises like Go's encoding/json: sorted map keys, struct order, HTML-safe escapes", () => {
    assert.equal(
      goJson({
        b: 1,
        a: "<&>\u2028\n\b",
        B: [true, null],
        nested: new Map<string, unknown>([
          ["z", 1],
          ["a", -0],
        ]),
      }),
      '{"B":[true,null],"a":"\\u003c\\u0026\\u003e\\u2028\\n\\b","b":1,"nested":{"z":1,"a":-0}}',
    );
  });

  test("the kube-flannel conflist gives a pod an address in FLANNEL_SUBNET, the MTU and a default route via the bridge", async () => {
    // Only subnetFile is added; dataDir stays flannel's default (inside the private /var/lib).
    const list = structuredClone(KUBE_FLANNEL);
    Object.assign(list.plugins[0] as object, { subnetFile });
    const opts = {
      containerId: `pod-${tag}`,
      netns: `/var/run/netns/${podNs}`,
      ifName: "eth0",
      cniPath: [repoCni, systemCni],
      cacheDir: join(dir, "cache"),
      wrapper: wrapper(),
      // As kubelet passes a hostPort: portmap gets it through runtimeConfig.
      capabilityArgs: { portMappings: [{ hostPort: 18080, containerPort: 80, protocol: "tcp" }] },
    };
    const result = (await runConflist(list, "ADD", opts)) as { ips: { address: string; gateway?: string }[] };
    const address = result.ips[0]?.address ?? "";
    assert.match(address, /^10\.244\.68\.\d+\/24$/);

    const saved = join(varLib, "cni", "flannel", opts.containerId);
    assert.equal(await readFile(saved, "utf8"), KUBE_FLANNEL_DELEGATE);
    assert.deepEqual(
      await readdir(join(varLib, "cni", "networks", "cbr0")).then((f) => f.includes(address.split("/")[0] as string)),
      true,
    );

    const eth0 = inPod("ip", "-o", "-4", "addr", "show", "dev", "eth0");
    assert.ok(eth0.includes(`inet ${address}`), eth0);
    assert.match(inPod("ip", "-o", "link", "show", "dev", "eth0"), /mtu 1472 /);
    assert.match(inPod("ip", "route", "show", "default"), /^default via 10\.244\.68\.1 dev eth0/);
    assert.match(inPod("ip", "route", "show", "10.244.0.0/16"), /10\.244\.0\.0\/16 via 10\.244\.68\.1 dev eth0/);
    assert.match(inHost("ip", "-o", "-4", "addr", "show", "dev", "cni0"), /inet 10\.244\.68\.1\/24/);
    assert.ok(reachable(podNs, "10.244.68.1"), "the pod reaches its gateway on the bridge");
    assert.match(
      inHost("iptables-save", "-t", "nat"),
      new RegExp(`--dport 18080 -j DNAT --to-destination ${address.split("/")[0]}:80`),
    );

    await runConflist(list, "DEL", opts);
    assert.equal(existsSync(saved), false, "saved delegate config removed");
    assert.doesNotMatch(inHost("iptables-save", "-t", "nat"), /--dport 18080/);
    assert.equal(spawnSync("ip", ["netns", "exec", podNs, "ip", "link", "show", "eth0"]).status, 1, "eth0 gone");
    await runConflist(list, "DEL", opts);
  });

  test("CHECK passes for the same list at 1.0.0; at 0.3.1 the runtime refuses it as libcni does", async () => {
    const list = structuredClone(KUBE_FLANNEL);
    list.cniVersion = "1.0.0";
    Object.assign(list.plugins[0] as object, { subnetFile });
    // Default capabilityArgs: containerd's empty portMappings. (portmap v1.1.1's CHECK with
    // a mapping wants ip6tables rules an IPv4 pod never gets, containernetworking/plugins#819.)
    const opts = {
      containerId: `chk-${tag}`,
      netns: `/var/run/netns/${podNs}`,
      ifName: "eth0",
      cniPath: [repoCni, systemCni],
      cacheDir: join(dir, "cache"),
      wrapper: wrapper(),
    };
    await runConflist(list, "ADD", opts);
    assert.equal(await runConflist(list, "CHECK", opts), null);
    await assert.rejects(
      runConflist({ ...list, cniVersion: "0.3.1" }, "CHECK", opts),
      /configuration version "0.3.1" does not support the CHECK command/,
    );
    await runConflist(list, "DEL", opts);
    await runConflist(list, "DEL", opts);
    // After DEL flannel has no saved config, so the container is unknown to it.
    await assert.rejects(runConflist(list, "CHECK", opts), (e: unknown) => e instanceof CniError && e.code === 3);
  });

  test("the plugin refuses CHECK for a config older than 0.4.0 (code 1)", () => {
    const r = runShim({ ...pluginEnv(), CNI_COMMAND: "CHECK" }, conf());
    assert.equal(r.status, 1);
    assert.equal(r.json?.code, 1);
  });

  test("nothing was added to the root namespace or the host's /var/lib/cni", () => {
    assert.deepEqual(rootFingerprint(), rootBefore);
    assert.equal(existsSync("/var/lib/cni"), varLibCniExisted);
  });
});

/** ICMP echo when ping exists; otherwise a TCP SYN answered by RST proves the round trip. */
function reachable(ns: string, ip: string): boolean {
  if (spawnSync("sh", ["-c", "command -v ping"]).status === 0) {
    return spawnSync("ip", ["netns", "exec", ns, "ping", "-c", "1", "-W", "2", ip]).status === 0;
  }
  const probe = `const s=require("net").connect(9,${JSON.stringify(ip)});s.on("connect",()=>process.exit(0));s.on("error",(e)=>process.exit(e.code==="ECONNREFUSED"?0:1));setTimeout(()=>process.exit(2),3000);`;
  return spawnSync("ip", ["netns", "exec", ns, process.execPath, "-e", probe]).status === 0;
}

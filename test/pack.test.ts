// weft installed the way a daemon is: `npm pack`, then `npm install -g` of the tarball
// into a temporary prefix, as the README's "Run it on your hosts" does into /opt/weft.
// The install needs the npm registry for the runtime dependencies and builds the addon
// with the machine's compiler; nothing of the repo checkout is used after `npm pack`.

import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { accessSync, constants, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";

const REPO = fileURLToPath(new URL("../../", import.meta.url));
const pkg = JSON.parse(readFileSync(join(REPO, "package.json"), "utf8")) as {
  version: string;
  devDependencies: Record<string, string>;
};

describe("the packed tarball installed into a temporary prefix", { timeout: 300_000 }, () => {
  let dir = "";
  let prefix = "";
  let tarball = "";
  let files: string[] = [];
  let installLog = "";
  const installed = () => join(prefix, "lib", "node_modules", "weft");
  // The prefix's bin first, and run from elsewhere, so nothing resolves to the checkout.
  const run = (cmd: string, args: string[]) =>
    spawnSync(join(prefix, "bin", cmd), args, {
      cwd: dir,
      encoding: "utf8",
      env: { ...process.env, PATH: `${join(prefix, "bin")}:${process.env.PATH}` },
    });

  before(() => {
    dir = mkdtempSync(join(tmpdir(), "stp-pack-"));
    prefix = join(dir, "opt-weft");
    // dist/ is current (npm test builds first), so prepack's build is skipped here.
    const name = execFileSync("npm", ["pack", "--ignore-scripts", "--silent", "--pack-destination", dir], {
      cwd: REPO,
      encoding: "utf8",
    }).trim();
    tarball = join(dir, name);
    files = execFileSync("tar", ["tzf", tarball], { encoding: "utf8" }).trim().split("\n").sort();
    const r = spawnSync(
      "npm",
      ["install", "-g", "--prefix", prefix, "--allow-scripts=weft", "--no-audit", "--no-fund", tarball],
      { cwd: dir, encoding: "utf8" },
    );
    installLog = `${r.stdout}${r.stderr}`;
    assert.equal(r.status, 0, installLog);
  });

  after(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("ships the daemon, the CNI plugin and the addon's sources; no tests, benches, fixtures or TypeScript", () => {
    for (const f of ["bin/weftd", "bin/weft-docker-opts", "cni/flannel", "dist/control/main.js", "binding.gyp"]) {
      assert.ok(files.includes(`package/${f}`), `${f} in ${files.join(" ")}`);
    }
    assert.ok(files.some((f) => f.startsWith("package/dataplane/native/") && f.endsWith(".cc")));
    const stray = files.filter((f) =>
      /^package\/(test|bench|fixtures|lab|dist\/(test|bench|fixtures|lab))\/|\.ts$|\.map$/.test(f),
    );
    assert.deepEqual(stray, []);
  });

  it("built the addon at install time, with no dev dependencies installed", () => {
    assert.ok(existsSync(join(installed(), "build", "Release", "weft.node")), installLog);
    // @types/node is left out: protobufjs (under etcd3) depends on it at run time.
    for (const dev of Object.keys(pkg.devDependencies).filter((d) => d !== "@types/node")) {
      assert.ok(!existsSync(join(installed(), "node_modules", dev)), `dev dependency ${dev} was installed`);
    }
  });

  it("weftd --version and --help run from the prefix", () => {
    const v = run("weftd", ["--version"]);
    assert.equal(v.status, 0, v.stderr);
    assert.match(v.stdout, new RegExp(`^weftd v${pkg.version.replaceAll(".", "\\.")} `));
    const h = run("weftd", ["--help"]);
    assert.equal(h.status, 0, h.stderr);
    assert.match(h.stdout, /^Usage: weftd \[flags\]/);
    assert.match(h.stdout, /--etcd-endpoints/);
  });

  it("the installed copy loads its own addon", () => {
    const index = join(installed(), "dist", "dataplane", "native", "index.js");
    const r = spawnSync(
      process.execPath,
      [
        "--input-type=module",
        "-e",
        `const m = await import(${JSON.stringify(index)}); console.log(typeof m.loadAddon());`,
      ],
      { cwd: dir, encoding: "utf8" },
    );
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim(), "object");
  });

  it("every /opt/weft path in docs/weftd.service exists in a prefix install and is executable", () => {
    const unit = readFileSync(join(REPO, "docs", "weftd.service"), "utf8");
    const paths = [...unit.matchAll(/\/opt\/weft(\/\S+)/g)].map((m) => m[1] as string);
    assert.deepEqual(paths.sort(), ["/bin/weft-docker-opts", "/bin/weftd"]);
    for (const p of paths) accessSync(join(prefix, p), constants.X_OK);
  });

  it("weft-docker-opts turns subnet.env into dockerd's options, as mk-docker-opts.sh does", () => {
    const env = join(dir, "subnet.env");
    const weftLines =
      "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";
    writeFileSync(env, weftLines);
    const out = join(dir, "docker");
    const a = run("weft-docker-opts", ["-f", env, "-k", "DOCKER_NETWORK_OPTIONS", "-d", out]);
    assert.equal(a.status, 0, a.stderr);
    assert.equal(
      readFileSync(out, "utf8"),
      'DOCKER_OPT_BIP="--bip=10.244.7.1/24"\nDOCKER_OPT_IPMASQ="--ip-masq=false"\nDOCKER_OPT_MTU="--mtu=1472"\n' +
        'DOCKER_NETWORK_OPTIONS=" --bip=10.244.7.1/24 --ip-masq=false --mtu=1472"\n',
    );
    // -m: Docker keeps masquerading; -c: the combined variable only.
    assert.equal(run("weft-docker-opts", ["-f", env, "-d", out, "-c", "-m"]).status, 0);
    assert.equal(readFileSync(out, "utf8"), 'DOCKER_OPTS=" --bip=10.244.7.1/24 --mtu=1472"\n');
    // The seeds' unit writes into subnet.env itself: weftd's lines stay for the CNI plugin.
    assert.equal(run("weft-docker-opts", ["-f", env, "-d", env, "-c"]).status, 0);
    assert.equal(
      readFileSync(env, "utf8"),
      `${weftLines}DOCKER_OPTS=" --bip=10.244.7.1/24 --ip-masq=false --mtu=1472"\n`,
    );
    assert.equal(run("weft-docker-opts", ["-f", env, "-d", env, "-c"]).status, 0, "running it twice changes nothing");
    assert.equal(
      readFileSync(env, "utf8"),
      `${weftLines}DOCKER_OPTS=" --bip=10.244.7.1/24 --ip-masq=false --mtu=1472"\n`,
    );
    // weftd not masquerading: Docker does.
    writeFileSync(env, weftLines.replace("IPMASQ=true", "IPMASQ=false"));
    assert.equal(run("weft-docker-opts", ["-f", env, "-d", out, "-c"]).status, 0);
    assert.equal(readFileSync(out, "utf8"), 'DOCKER_OPTS=" --bip=10.244.7.1/24 --ip-masq=true --mtu=1472"\n');
    const missing = run("weft-docker-opts", ["-f", join(dir, "nope.env")]);
    assert.equal(missing.status, 1);
    assert.match(missing.stderr, /^weft-docker-opts: cannot read .*nope\.env \(is weftd running\?/);
  });
});

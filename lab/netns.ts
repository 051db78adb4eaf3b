// `npm run lab`: hosts and pods in network namespaces, weftd on every host,
// pods pinging each other through the tunnel.
//
//   npm run lab                   up, show, test, tear down
//   npm run lab -- --keep         leave it running (then: npm run lab -- down)
//   npm run lab -- --hosts 3      more hosts (on an underlay bridge)
//   npm run lab -- down           remove a kept lab

import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { destroyNamespaces, Lab, type LabPod, nsRun } from "./topology.js";

const STATE_FILE = "/run/weft-lab/state.json";
const LAB_DIR = "/run/weft-lab";
const PREFIX = "weftlab";

function say(line: string): void {
  process.stdout.write(`${line}\n`);
}

/** Kills a process we started, by PID, after checking it still is weftd. */
function killWeftd(pid: number): void {
  try {
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, "utf8");
    if (!cmdline.includes("control/main.js")) return;
    process.kill(pid, "SIGTERM");
  } catch {
    // Already gone.
  }
}

async function down(): Promise<void> {
  if (!existsSync(STATE_FILE)) {
    say("no lab is running (no state file)");
    return;
  }
  const state = JSON.parse(readFileSync(STATE_FILE, "utf8")) as { namespaces: string[]; pids: number[] };
  for (const pid of state.pids) killWeftd(pid);
  await new Promise((r) => setTimeout(r, 500));
  await destroyNamespaces(state.namespaces);
  rmSync(LAB_DIR, { recursive: true, force: true });
  say(`removed ${state.namespaces.length} namespaces and ${state.pids.length} weftd processes`);
}

async function ping(from: LabPod, to: LabPod): Promise<string> {
  const out = await nsRun(from.ns, "ping", ["-c", "3", "-i", "0.2", "-W", "2", to.ip]);
  return /rtt min\/avg\/max\/mdev = ([\d.]+)\/([\d.]+)/.exec(out)?.[2] ?? "?";
}

async function up(hosts: number, keep: boolean): Promise<number> {
  if (existsSync(STATE_FILE)) {
    say(`a lab is already running (${STATE_FILE}); remove it first: npm run lab -- down`);
    return 1;
  }
  const lab = await Lab.create({ prefix: PREFIX, hosts, dir: LAB_DIR });
  let failed = false;
  try {
    lab.writeRegistryConfig();
    say(`lab: ${hosts} hosts in namespaces ${lab.hosts.map((h) => h.ns).join(", ")}; underlay 198.18.0.0/24`);
    say(`registry: file registry in ${lab.registryDir} (config ${readFileSync(`${lab.registryDir}/config`, "utf8")})`);
    for (const h of lab.hosts) lab.startWeft(h);
    for (const h of lab.hosts) {
      const env = await lab.waitForSubnetEnv(h);
      const pod = await lab.addPod(h, env);
      say(`  ${h.ns}  underlay ${h.underlayIp}  lease ${env.subnet}  mtu ${env.mtu}  pod ${pod.ns} ${pod.ip}`);
    }
    writeFileSync(STATE_FILE, JSON.stringify(lab.state()));
    say("lease table (file registry):");
    for (const key of readdirSync(`${lab.registryDir}/subnets`).sort()) {
      say(`  ${key}  ${readFileSync(`${lab.registryDir}/subnets/${key}`, "utf8")}`);
    }
    say("pod to pod through weft:");
    for (const a of lab.pods) {
      for (const b of lab.pods) {
        if (a === b) continue;
        try {
          say(`  ${a.ip} -> ${b.ip}  ok, rtt avg ${await ping(a, b)} ms`);
        } catch (err) {
          failed = true;
          say(`  ${a.ip} -> ${b.ip}  FAILED: ${(err as Error).message.split("\n")[0]}`);
        }
      }
    }
    say(failed ? "some pods cannot reach each other" : "all pods reach all pods");
    say("next: npm run bench -- lab   (weft against kernel vxlan on the same topology)");
  } catch (err) {
    failed = true;
    say(`lab failed: ${(err as Error).message}`);
    for (const h of lab.hosts) say(`--- ${h.ns} weftd log ---\n${lab.logTail(h)}`);
  }
  if (keep && !failed) {
    say(`left running; enter a pod with: ip netns exec ${lab.pods[0]?.ns} bash ; remove with: npm run lab -- down`);
    for (const h of lab.hosts) h.weft?.unref();
    return 0;
  }
  await lab.destroy();
  rmSync(STATE_FILE, { force: true });
  say("lab removed");
  return failed ? 1 : 0;
}

async function main(): Promise<number> {
  const { values, positionals } = parseArgs({
    options: { keep: { type: "boolean", default: false }, hosts: { type: "string", default: "2" } },
    allowPositionals: true,
  });
  if (positionals[0] === "down") {
    await down();
    return 0;
  }
  if (positionals.length > 0 && positionals[0] !== "up") {
    say(`unknown command "${positionals[0]}" (use up or down)`);
    return 2;
  }
  const hosts = Number(values.hosts);
  if (!Number.isInteger(hosts) || hosts < 2 || hosts > 50) {
    say(`--hosts ${values.hosts}: must be an integer from 2 to 50`);
    return 2;
  }
  return up(hosts, values.keep ?? false);
}

main().then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`lab: ${(err as Error).message}\n`);
    process.exit(1);
  },
);

// `node dist/lab/setup.js lab|lab-etcd|lab-kube|test|bench`: makes sure the Debian packages that job uses
// are installed (the list is in lab/packages.ts). The npm scripts run it first, so the
// README's two commands work on a machine that has only Node and a compiler.
//
//   everything there     prints nothing, exits 0
//   root, apt-get found  one line saying what it installs and why, then
//                        apt-get update (once) and apt-get install; exits 0 when the
//                        packages then work, 1 otherwise
//   otherwise            one sentence naming the packages and the command; exits 1

import { spawnSync } from "node:child_process";
import { isJob, JOBS, type Job, missingPackages, type Package, present } from "./packages.js";

const WHO: Record<Job, string> = {
  lab: "npm run lab",
  "lab-etcd": "npm run lab -- --etcd",
  "lab-kube": "npm run lab -- --kube",
  test: "npm test",
  bench: "npm run bench",
};
const INSTALL_FLAGS = ["install", "-y", "-qq", "--no-install-recommends"];

function fail(line: string): number {
  process.stderr.write(`setup: ${line}\n`);
  return 1;
}

/** apt-get with its output kept for the error message; it says nothing when it works. */
function aptGet(args: string[]): string | null {
  const r = spawnSync("apt-get", args, {
    encoding: "utf8",
    env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  if (r.status === 0) return null;
  const out = `${r.stdout ?? ""}${r.stderr ?? ""}`.trim().split("\n").slice(-5).join("\n  ");
  return `apt-get ${args.join(" ")} failed (${r.error?.message ?? `exit ${r.status}`}):\n  ${out}`;
}

function names(packages: Package[]): string {
  return packages.map((p) => p.name).join(" ");
}

function main(argv: string[]): number {
  const job = argv[0] ?? "";
  if (argv.length !== 1 || !isJob(job))
    return fail(`usage: setup.js ${Object.keys(JOBS).join("|")} (got "${argv.join(" ")}")`);
  const path = process.env.PATH ?? "";
  const missing = missingPackages(job, path);
  if (missing.length === 0) return 0;

  const command = `apt-get update && apt-get install --no-install-recommends ${names(missing)}`;
  if (process.getuid?.() !== 0) {
    return fail(
      `${WHO[job]} needs the Debian packages ${names(missing)}, which are missing; install them as root with: ${command}`,
    );
  }
  if (!present("apt-get", path)) {
    return fail(
      `${WHO[job]} needs ${names(missing)} (Debian's package names), and this machine has no apt-get: install them with its package manager`,
    );
  }

  const why = missing.map((p) => `${p.name}: ${p.why}`).join("; ");
  process.stdout.write(`setup: installing ${names(missing)} with apt-get for ${WHO[job]} (${why})\n`);
  const err = aptGet(["update", "-qq"]) ?? aptGet([...INSTALL_FLAGS, ...missing.map((p) => p.name)]);
  if (err !== null) return fail(err);
  const still = missingPackages(job, path);
  if (still.length > 0) {
    return fail(
      `apt-get installed ${names(missing)} but ${still.map((p) => `${p.probe} (${p.name})`).join(", ")} is still missing`,
    );
  }
  return 0;
}

process.exitCode = main(process.argv.slice(2));

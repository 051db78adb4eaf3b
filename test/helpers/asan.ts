// The addon built with AddressSanitizer and UBSan, and test files run
// against it. Node itself is not instrumented, so the ASan runtime has to be
// loaded first (LD_PRELOAD); the tests pick the build up through WEFT_ADDON.
//
//   binding.gyp ──► build/asan/binding.gyp (same sources, -fsanitize=address,undefined)
//                        └─ node-gyp ──► build/asan/build/Release/weft.node
//   node --test <files>   LD_PRELOAD=libasan.so  WEFT_ADDON=<that .node>
//        any report (heap overflow, use after free, UB) ends the process
//        with SANITIZER_EXIT and fails the run
//
// Leak checking is off: Node keeps memory until exit on purpose.

import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, realpathSync, writeFileSync } from "node:fs";
import { delimiter, dirname, join } from "node:path";

const ROOT = new URL("../../../", import.meta.url).pathname;
const DIR = join(ROOT, "build", "asan");
export const ASAN_ADDON = join(DIR, "build", "Release", "weft.node");
/** The exit code of a process a sanitizer stopped. */
export const SANITIZER_EXIT = 86;
/** Lines that only a sanitizer report contains. */
export const REPORT = /ERROR: AddressSanitizer|runtime error:|ERROR: UndefinedBehaviorSanitizer/;

const SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize=vptr", "-fno-sanitize-recover=all"];

/** node-gyp as npm ships it (on PATH only inside npm scripts). */
function nodeGyp(): string {
  const fromNpm = process.env.npm_config_node_gyp;
  if (fromNpm !== undefined && existsSync(fromNpm)) return fromNpm;
  for (const dir of (process.env.PATH ?? "").split(delimiter)) {
    const npm = join(dir, "npm");
    if (!existsSync(npm)) continue;
    const gyp = join(dirname(realpathSync(npm)), "..", "node_modules", "node-gyp", "bin", "node-gyp.js");
    if (existsSync(gyp)) return gyp;
  }
  throw new Error("node-gyp not found: run this from npm (npm run test:asan) or put npm on PATH");
}

/**
 * The Node headers the regular build (npm ci) used, so that this build needs
 * neither npm's configuration nor a download.
 */
function nodeDir(): string[] {
  const config = join(ROOT, "build", "config.gypi");
  if (!existsSync(config)) return [];
  const m = /"nodedir": "([^"]+)"/.exec(readFileSync(config, "utf8"));
  return m === null ? [] : [`--nodedir=${m[1]}`];
}

/** The C++ compiler node-gyp uses, asked where its ASan runtime lies. */
export function asanRuntime(): string {
  const cxx = process.env.CXX ?? "g++";
  const path = execFileSync(cxx, ["-print-file-name=libasan.so"], { encoding: "utf8" }).trim();
  if (!path.startsWith("/") || !existsSync(path)) throw new Error(`${cxx} knows no libasan.so (got "${path}")`);
  return path;
}

/**
 * Builds (or brings up to date: make only recompiles what changed) the
 * sanitizer build of the addon from the project's binding.gyp.
 */
export function buildAsanAddon(): string {
  const binding = JSON.parse(readFileSync(join(ROOT, "binding.gyp"), "utf8")) as {
    targets: { sources: string[]; cflags?: string[]; ldflags?: string[]; [k: string]: unknown }[];
  };
  for (const t of binding.targets) {
    t.sources = t.sources.map((s) => join("..", "..", s));
    // -O1 and frame pointers: reports with usable stacks, at a fraction of -O0's slowness.
    t.cflags = [
      ...(t.cflags ?? []).filter((f) => !f.startsWith("-O")),
      "-O1",
      "-g",
      "-fno-omit-frame-pointer",
      ...SANITIZE,
    ];
    t.ldflags = [...(t.ldflags ?? []), ...SANITIZE];
  }
  mkdirSync(DIR, { recursive: true });
  const gypFile = join(DIR, "binding.gyp");
  const text = `${JSON.stringify(binding, null, 2)}\n`;
  const changed = !existsSync(gypFile) || readFileSync(gypFile, "utf8") !== text;
  if (changed) writeFileSync(gypFile, text);
  const gyp = nodeGyp();
  const run = (args: string[]) =>
    execFileSync(process.execPath, [gyp, ...args], { cwd: DIR, stdio: ["ignore", "pipe", "pipe"] });
  if (changed || !existsSync(join(DIR, "build", "Makefile"))) run(["configure", ...nodeDir()]);
  run(["build", "--jobs", "max"]);
  return ASAN_ADDON;
}

/** The environment that runs Node with the ASan runtime and the sanitizer build. */
export function asanEnv(): NodeJS.ProcessEnv {
  // Inside a test file node's runner marks the environment (NODE_TEST_CONTEXT):
  // a `node --test` that inherits it runs nothing of its own.
  const { NODE_TEST_CONTEXT: _, ...env } = process.env;
  return {
    ...env,
    LD_PRELOAD: asanRuntime(),
    ASAN_OPTIONS: `detect_leaks=0:halt_on_error=1:exitcode=${SANITIZER_EXIT}`,
    UBSAN_OPTIONS: `print_stacktrace=1:halt_on_error=1:exitcode=${SANITIZER_EXIT}`,
    WEFT_ADDON: ASAN_ADDON,
  };
}

/** Runs the compiled test files (dist/test/<name>.test.js) under the sanitizers; resolves to exit code and output. */
export function runUnderAsan(names: readonly string[], echo = false): Promise<{ status: number; output: string }> {
  const files = names.map((n) => join(ROOT, "dist", "test", `${n}.test.js`));
  const child = spawn(process.execPath, ["--test", "--test-concurrency=1", ...files], {
    env: asanEnv(),
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  const take = (chunk: Buffer) => {
    output += chunk.toString();
    if (echo) process.stdout.write(chunk);
  };
  child.stdout.on("data", take);
  child.stderr.on("data", take);
  return new Promise((resolve, reject) => {
    child.on("error", reject);
    child.on("close", (code, signal) => resolve({ status: code ?? (signal === null ? 1 : 128), output }));
  });
}

/** The native and fuzz tests: everything that drives the addon's C++. */
export const ASAN_SUITES = [
  "native-inputs",
  "native-fuzz",
  "fuzz",
  "offload",
  "offload-native",
  "native",
  "arena-release",
] as const;

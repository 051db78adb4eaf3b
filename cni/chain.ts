// Runs CNI plugins the way libcni (kubelet, containerd, cri-o) does, so the lab and the
// tests drive the flannel plugin through the same steps a real node would:
//
//   ADD    plugin[0] … plugin[n-1]   each gets name, cniVersion, prevResult (previous
//                                    plugin's result), runtimeConfig (capabilities);
//                                    the last result is cached for CHECK and DEL
//   CHECK  plugin[0] … plugin[n-1]   prevResult = the cached ADD result (spec ≥ 0.4.0)
//   DEL    plugin[n-1] … plugin[0]   prevResult = the cached ADD result (spec ≥ 0.4.0)
//
// The primitives underneath (finding a plugin in CNI_PATH, executing it and turning its
// output into a result or a CniError) are shared with the flannel meta-plugin, which
// delegates to bridge exactly like libcni's invoke package.

import { spawn } from "node:child_process";
import { statSync } from "node:fs";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";

/** The CNI spec's well-known error codes. */
export const ErrCode = {
  IncompatibleVersion: 1,
  UnsupportedField: 2,
  UnknownContainer: 3,
  InvalidEnvironment: 4,
  IoFailure: 5,
  DecodingFailure: 6,
  InvalidNetworkConfig: 7,
  TryAgainLater: 11,
  /** Plugin-specific (100+): subnet.env exists but cannot be used. */
  BadSubnetEnv: 100,
  /** libcni's code for errors that have no better one. */
  Internal: 999,
} as const;

/** Versions a result or config may carry, oldest first; used for ordering checks. */
const KNOWN_VERSIONS = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/** True when `version` is a known CNI version at least as new as `min`. */
export function versionAtLeast(version: string, min: string): boolean {
  const v = KNOWN_VERSIONS.indexOf(version);
  const m = KNOWN_VERSIONS.indexOf(min);
  return v >= 0 && m >= 0 && v >= m;
}

/** A CNI error: what a plugin prints on stdout when it fails. */
export class CniError extends Error {
  constructor(
    readonly code: number,
    readonly msg: string,
    readonly details = "",
    /** The plugin type that produced it, when it came from an executed plugin. */
    readonly plugin?: string,
  ) {
    super(details ? `${msg}; ${details}` : msg);
    this.name = "CniError";
  }

  /** The spec's error object; details omitted when empty, as libcni does. */
  toResult(cniVersion: string): Record<string, unknown> {
    const out: Record<string, unknown> = { cniVersion, code: this.code, msg: this.msg };
    if (this.details) out.details = this.details;
    return out;
  }
}

export type CniResult = Record<string, unknown>;

/**
 * Finds plugin `type` in the CNI_PATH directories, first match wins (libcni FindInPath).
 * A name with a slash is refused so a config cannot point outside CNI_PATH.
 */
export function findPlugin(type: string, cniPath: readonly string[]): string {
  const found = locatePlugin(type, cniPath);
  if (found === null) {
    throw new CniError(
      ErrCode.Internal,
      `failed to find plugin ${JSON.stringify(type)} in path [${cniPath.join(" ")}]`,
    );
  }
  return found;
}

/** findPlugin, but null when no directory has it (a bad type name still throws). */
export function locatePlugin(type: string, cniPath: readonly string[]): string | null {
  if (type === "") throw new CniError(ErrCode.InvalidNetworkConfig, "plugin type is empty");
  if (type.includes("/")) {
    throw new CniError(ErrCode.InvalidNetworkConfig, `plugin type ${JSON.stringify(type)} must not contain "/"`);
  }
  for (const dir of cniPath) {
    if (dir === "") continue;
    const candidate = join(dir, type);
    try {
      if (statSync(candidate).isFile()) return candidate;
    } catch {
      // Not in this directory; keep looking.
    }
  }
  return null;
}

/** How to execute one plugin. */
export interface ExecRequest {
  /** Absolute path of the plugin binary. */
  path: string;
  /** The plugin type, for error messages. */
  type: string;
  /** The config bytes written to the plugin's stdin. */
  stdin: string | Uint8Array;
  /** The complete environment, CNI_* included. */
  env: NodeJS.ProcessEnv;
  /** A command the plugin runs under, e.g. ["ip", "netns", "exec", "node1"]. */
  wrapper?: readonly string[];
}

/**
 * Executes a plugin and returns its stdout. A non-zero exit becomes a CniError carrying
 * the plugin's own code, msg and details (libcni's pluginErr), so callers can pass it on.
 */
export function execPlugin(req: ExecRequest): Promise<string> {
  const argv = [...(req.wrapper ?? []), req.path];
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0] as string, argv.slice(1), { env: req.env, stdio: ["pipe", "pipe", "pipe"] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (b: Buffer) => out.push(b));
    child.stderr.on("data", (b: Buffer) => err.push(b));
    // A plugin that exits without reading its config closes the pipe; that is its
    // business, its exit status tells the story.
    child.stdin.on("error", () => {});
    child.on("error", (e) => {
      reject(
        new CniError(ErrCode.Internal, `cannot execute plugin ${req.type} at ${argv[0]}: ${e.message}`, "", req.type),
      );
    });
    child.on("close", (status, signal) => {
      const stdout = Buffer.concat(out).toString("utf8");
      if (status === 0) {
        resolve(stdout);
        return;
      }
      const stderr = Buffer.concat(err).toString("utf8").trim();
      reject(pluginError(req.type, stdout, stderr, signal ? `signal ${signal}` : `exit status ${status}`));
    });
    child.stdin.end(req.stdin);
  });
}

function pluginError(type: string, stdout: string, stderr: string, how: string): CniError {
  if (stdout.trim() === "") {
    const msg = stderr
      ? `plugin ${type} failed (${how}): ${stderr}`
      : `plugin ${type} failed with no error message (${how})`;
    return new CniError(ErrCode.Internal, msg, "", type);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(stdout);
  } catch {
    return new CniError(
      ErrCode.Internal,
      `plugin ${type} failed (${how}) and its error output is not JSON: ${JSON.stringify(stdout.trim())}`,
      "",
      type,
    );
  }
  const e = isObject(parsed) ? parsed : {};
  const code = typeof e.code === "number" ? e.code : 0;
  const msg = typeof e.msg === "string" ? e.msg : "";
  const details = typeof e.details === "string" ? e.details : "";
  return new CniError(code, msg, details, type);
}

/** Parses a plugin's success output; anything but a JSON object is an error. */
export function parseResult(type: string, stdout: string): CniResult {
  let parsed: unknown;
  try {
    parsed = JSON.parse(stdout);
  } catch {
    throw new CniError(
      ErrCode.DecodingFailure,
      `plugin ${type} printed a result that is not JSON: ${JSON.stringify(stdout.trim())}`,
      "",
      type,
    );
  }
  if (!isObject(parsed)) {
    throw new CniError(
      ErrCode.DecodingFailure,
      `plugin ${type} printed a result that is not a JSON object: ${stdout.trim()}`,
      "",
      type,
    );
  }
  return parsed;
}

export function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** What a runtime knows about the container when it calls the network list. */
export interface ConflistOptions {
  containerId: string;
  /** Path of the pod's network namespace, e.g. /var/run/netns/pod1. */
  netns: string;
  ifName: string;
  /** Directories searched for plugin binaries, in order. */
  cniPath: string[];
  /** CNI_ARGS, as "K=V;K=V" or as pairs. */
  args?: string | Record<string, string>;
  /**
   * Runtime values for plugins that declare `capabilities`; containerd always sends
   * portMappings, so that is the default.
   */
  capabilityArgs?: Record<string, unknown>;
  /** Where ADD results are cached for CHECK and DEL; libcni's default is /var/lib/cni. */
  cacheDir?: string;
  /** A command every plugin runs under, e.g. ["ip", "netns", "exec", "node1"]. */
  wrapper?: string[];
  /** Base environment for the plugins; default process.env. */
  env?: NodeJS.ProcessEnv;
}

interface Conflist {
  name: string;
  cniVersion: string;
  disableCheck: boolean;
  plugins: Record<string, unknown>[];
}

function parseConflist(raw: object): Conflist {
  const c = raw as Record<string, unknown>;
  if (typeof c.name !== "string" || c.name === "") {
    throw new CniError(
      ErrCode.InvalidNetworkConfig,
      `conflist name must be a non-empty string, got ${JSON.stringify(c.name)}`,
    );
  }
  if (typeof c.cniVersion !== "string") {
    throw new CniError(
      ErrCode.InvalidNetworkConfig,
      `conflist cniVersion must be a string, got ${JSON.stringify(c.cniVersion)}`,
    );
  }
  if (!Array.isArray(c.plugins) || c.plugins.length === 0) {
    throw new CniError(ErrCode.InvalidNetworkConfig, `conflist ${c.name} has no plugins`);
  }
  c.plugins.forEach((p, i) => {
    if (!isObject(p) || typeof p.type !== "string") {
      throw new CniError(
        ErrCode.InvalidNetworkConfig,
        `conflist ${c.name} plugins[${i}].type must be a string, got ${JSON.stringify(isObject(p) ? p.type : p)}`,
      );
    }
  });
  return {
    name: c.name,
    cniVersion: c.cniVersion,
    disableCheck: c.disableCheck === true,
    plugins: c.plugins as Record<string, unknown>[],
  };
}

function cniArgs(args: ConflistOptions["args"]): string {
  if (args === undefined) return "";
  if (typeof args === "string") return args;
  return Object.entries(args)
    .map(([k, v]) => `${k}=${v}`)
    .join(";");
}

/** The config one plugin of the list receives (libcni buildOneConfig). */
function pluginConfig(
  list: Conflist,
  plugin: Record<string, unknown>,
  prevResult: CniResult | null,
  capabilityArgs: Record<string, unknown>,
): Record<string, unknown> {
  const conf: Record<string, unknown> = { ...plugin, name: list.name, cniVersion: list.cniVersion };
  if (prevResult !== null) conf.prevResult = prevResult;
  const runtimeConfig: Record<string, unknown> = {};
  const caps = isObject(plugin.capabilities) ? plugin.capabilities : {};
  for (const [cap, wanted] of Object.entries(caps)) {
    if (wanted === true && Object.hasOwn(capabilityArgs, cap)) runtimeConfig[cap] = capabilityArgs[cap];
  }
  if (Object.keys(runtimeConfig).length > 0) conf.runtimeConfig = runtimeConfig;
  return conf;
}

function cachePath(cacheDir: string, list: Conflist, opts: ConflistOptions): string {
  return join(cacheDir, "results", `${list.name}-${opts.containerId}-${opts.ifName}`);
}

async function readCachedResult(path: string): Promise<CniResult | null> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw e;
  }
  const cached = JSON.parse(text) as Record<string, unknown>;
  return isObject(cached.result) ? cached.result : null;
}

/**
 * Runs a network configuration list for one container, the way libcni does.
 * ADD returns the last plugin's result; CHECK and DEL return null. A failing plugin
 * throws its CniError (with `plugin` set); ADD does not undo earlier plugins, the
 * runtime is expected to call DEL, as kubelet does.
 */
export async function runConflist(
  conflist: object,
  cmd: "ADD" | "DEL" | "CHECK",
  opts: ConflistOptions,
): Promise<CniResult | null> {
  const list = parseConflist(conflist);
  const cacheDir = opts.cacheDir ?? "/var/lib/cni";
  const capabilityArgs = opts.capabilityArgs ?? { portMappings: [] };
  const cache = cachePath(cacheDir, list, opts);
  const env: NodeJS.ProcessEnv = {
    ...(opts.env ?? process.env),
    CNI_COMMAND: cmd,
    CNI_CONTAINERID: opts.containerId,
    CNI_NETNS: opts.netns,
    CNI_IFNAME: opts.ifName,
    CNI_ARGS: cniArgs(opts.args),
    CNI_PATH: opts.cniPath.join(":"),
  };
  const run = async (plugin: Record<string, unknown>, prevResult: CniResult | null): Promise<string> => {
    const type = plugin.type as string;
    const conf = pluginConfig(list, plugin, prevResult, capabilityArgs);
    const path = findPlugin(type, opts.cniPath);
    return execPlugin({ path, type, stdin: JSON.stringify(conf), env, wrapper: opts.wrapper });
  };

  if (cmd === "ADD") {
    let result: CniResult | null = null;
    for (const plugin of list.plugins) {
      result = parseResult(plugin.type as string, await run(plugin, result));
    }
    await mkdir(join(cacheDir, "results"), { recursive: true, mode: 0o700 });
    const entry = {
      kind: "cniCacheV1",
      containerId: opts.containerId,
      config: Buffer.from(JSON.stringify(conflist)).toString("base64"),
      ifName: opts.ifName,
      networkName: list.name,
      netns: opts.netns,
      cniArgs: cniArgs(opts.args),
      capabilityArgs,
      result,
    };
    await writeFile(cache, JSON.stringify(entry), { mode: 0o600 });
    return result;
  }

  if (cmd === "CHECK") {
    // libcni refuses CHECK for lists older than the spec version that introduced it.
    if (!versionAtLeast(list.cniVersion, "0.4.0")) {
      throw new CniError(
        ErrCode.IncompatibleVersion,
        `configuration version ${JSON.stringify(list.cniVersion)} does not support the CHECK command`,
      );
    }
    if (list.disableCheck) return null;
    const cached = await readCachedResult(cache);
    for (const plugin of list.plugins) await run(plugin, cached);
    return null;
  }

  // DEL: reverse order; before 0.4.0 plugins get no prevResult. The cache is kept when a
  // plugin fails, so the runtime's retry still has it.
  const cached = versionAtLeast(list.cniVersion, "0.4.0") ? await readCachedResult(cache) : null;
  for (let i = list.plugins.length - 1; i >= 0; i--) {
    await run(list.plugins[i] as Record<string, unknown>, cached);
  }
  await rm(cache, { force: true });
  return null;
}

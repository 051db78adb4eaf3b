// The `flannel` CNI meta-plugin, behaving as flannel-io/cni-plugin does so the unchanged
// kube-flannel conflist works against weft's subnet.env:
//
//   ADD    conf + subnet.env ──render──▶ delegate conf ──save──▶ dataDir/<containerID>
//                                              └──exec──▶ bridge (CNI_PATH) ──▶ its result
//   DEL    dataDir/<containerID> ──exec DEL──▶ bridge; the file goes once that succeeds
//   CHECK  dataDir/<containerID> must exist (flannel's CHECK does nothing; see cmdCheck)
//
// The rendered conf is serialised the way Go's encoding/json marshals flannel's
// map[string]interface{} (sorted keys, HTML-safe escapes), so the saved file is
// byte-for-byte what flannel would have written.

import { constants } from "node:fs";
import { mkdir, open, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { DEFAULT_SUBNET_ENV_PATH, subnetEnvValues } from "../control/subnet-env.js";
import {
  CniError,
  ErrCode,
  execPlugin,
  findPlugin,
  isObject,
  locatePlugin,
  parseResult,
  versionAtLeast,
} from "./chain.js";

export const SUPPORTED_VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"] as const;
export const DEFAULT_DATA_DIR = "/var/lib/cni/flannel";

/** The newest version we speak; used for VERSION and for errors before a config is read. */
const CURRENT_VERSION = "1.0.0";

/** What subnet.env tells the plugin. Networks and subnet are masked CIDR strings. */
export interface SubnetEnv {
  networks: string[];
  subnet: string;
  mtu: number;
  ipMasq: boolean;
}

/** The flannel plugin's own config, after decoding. */
export interface FlannelConf {
  cniVersion: string;
  name: string;
  subnetFile: string;
  dataDir: string;
  delegate: Record<string, unknown> | null;
  ipam: Record<string, unknown> | null;
  runtimeConfig: Record<string, unknown> | null;
  /** Accepted when chained after another plugin; flannel, too, ignores it. */
  prevResult: Record<string, unknown> | null;
}

// ---------------------------------------------------------------------------------------
// Go encoding/json, as far as flannel's rendered config needs it

/**
 * Serialises like Go's json.Marshal: plain objects are Go maps (keys sorted by UTF-8
 * bytes), Maps are Go structs (fields in insertion order), strings get Go's escapes.
 */
export function goJson(value: unknown): string {
  if (value === null || value === undefined) return "null";
  if (typeof value === "boolean") return value ? "true" : "false";
  if (typeof value === "number") return Object.is(value, -0) ? "-0" : JSON.stringify(value);
  if (typeof value === "string") return goString(value);
  if (Array.isArray(value)) return `[${value.map(goJson).join(",")}]`;
  if (value instanceof Map) {
    return `{${[...value].map(([k, v]) => `${goString(String(k))}:${goJson(v)}`).join(",")}}`;
  }
  const obj = value as Record<string, unknown>;
  const keys = Object.keys(obj).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
  return `{${keys.map((k) => `${goString(k)}:${goJson(obj[k])}`).join(",")}}`;
}

const GO_SHORT_ESCAPES: Record<number, string> = {
  8: "\\b",
  9: "\\t",
  10: "\\n",
  12: "\\f",
  13: "\\r",
  34: '\\"',
  92: "\\\\",
};

function goString(s: string): string {
  let out = '"';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    const short = GO_SHORT_ESCAPES[c];
    if (short !== undefined) {
      out += short;
    } else if (c < 0x20 || c === 0x3c || c === 0x3e || c === 0x26 || c === 0x2028 || c === 0x2029) {
      out += `\\u${c.toString(16).padStart(4, "0")}`;
    } else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length && isLowSurrogate(s.charCodeAt(i + 1))) {
      out += s[i] + s[i + 1];
      i++;
    } else if (c >= 0xd800 && c <= 0xdfff) {
      // Go never holds a lone surrogate: decoding turned it into U+FFFD, which it escapes.
      out += "\\ufffd";
    } else {
      out += s[i];
    }
  }
  return `${out}"`;
}

function isLowSurrogate(c: number): boolean {
  return c >= 0xdc00 && c <= 0xdfff;
}

// ---------------------------------------------------------------------------------------
// subnet.env

/** Parses a.b.c.d/len into the masked network, or null; Go's net.ParseCIDR rules. */
export function maskedIpv4Cidr(text: string): string | null {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/.exec(text);
  if (m === null) return null;
  const octets = m.slice(1, 5).map((o) => (o.length > 1 && o.startsWith("0") ? 256 : Number(o)));
  const len = Number(m[5]);
  if (octets.some((o) => o > 255) || len > 32) return null;
  const addr =
    (((octets[0] as number) << 24) |
      ((octets[1] as number) << 16) |
      ((octets[2] as number) << 8) |
      (octets[3] as number)) >>>
    0;
  const mask = len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0;
  const net = (addr & mask) >>> 0;
  return `${net >>> 24}.${(net >>> 16) & 255}.${(net >>> 8) & 255}.${net & 255}/${len}`;
}

/**
 * Parses subnet.env. Like flannel it ignores unknown lines and keeps the last value of a
 * key; unlike flannel it also tolerates blank lines, comments, CRLF, spaces around `=`
 * and quoted values (a hand-edited file should not break pod networking).
 */
export function parseSubnetEnv(text: string, file: string): SubnetEnv {
  let networks: string[] | null = null;
  let subnet: string | null = null;
  let mtu: number | null = null;
  let ipMasq: boolean | null = null;
  for (const [key, value] of subnetEnvValues(text)) {
    const bad = (what: string) =>
      new CniError(ErrCode.BadSubnetEnv, `${file}: ${key} ${JSON.stringify(value)} is not ${what}`);
    switch (key) {
      case "FLANNEL_NETWORK": {
        // flannel ≥ 0.22 allows several comma-separated networks and drops duplicates.
        networks = [];
        for (const part of value.split(",")) {
          const nw = maskedIpv4Cidr(part.trim());
          if (nw === null) throw bad("a list of IPv4 CIDRs");
          if (!networks.includes(nw)) networks.push(nw);
        }
        break;
      }
      case "FLANNEL_SUBNET":
        subnet = maskedIpv4Cidr(value);
        if (subnet === null) throw bad("an IPv4 CIDR");
        break;
      case "FLANNEL_MTU":
        if (!/^\d+$/.test(value) || Number(value) > 0xffffffff) throw bad("an unsigned integer");
        mtu = Number(value);
        break;
      case "FLANNEL_IPMASQ":
        // flannel: exactly "true" is true, anything else is false.
        ipMasq = value === "true";
        break;
    }
  }
  const missing: string[] = [];
  if (networks === null) missing.push("FLANNEL_NETWORK");
  if (subnet === null) missing.push("FLANNEL_SUBNET");
  if (mtu === null) missing.push("FLANNEL_MTU");
  if (ipMasq === null) missing.push("FLANNEL_IPMASQ");
  if (networks === null || subnet === null || mtu === null || ipMasq === null) {
    throw new CniError(ErrCode.BadSubnetEnv, `${file} is missing ${missing.join(", ")}`);
  }
  return { networks, subnet, mtu, ipMasq };
}

async function loadSubnetEnv(file: string): Promise<SubnetEnv> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === "ENOENT") {
      // flanneld writes it once it holds a lease; kubelet retries the pod sandbox.
      throw new CniError(ErrCode.TryAgainLater, `subnet file ${file} does not exist yet (is flanneld/weftd running?)`);
    }
    throw new CniError(ErrCode.IoFailure, `cannot read subnet file ${file}: ${err.message}`);
  }
  return parseSubnetEnv(text, file);
}

// ---------------------------------------------------------------------------------------
// config

/** Go's encoding/json matches struct fields case-insensitively; the last match wins. */
function goField(obj: Record<string, unknown>, name: string): unknown {
  const lower = name.toLowerCase();
  let found: unknown;
  for (const key of Object.keys(obj)) {
    if (key.toLowerCase() === lower) found = obj[key];
  }
  return found;
}

function optionalObject(obj: Record<string, unknown>, name: string): Record<string, unknown> | null {
  const v = goField(obj, name);
  if (v === undefined || v === null) return null;
  if (!isObject(v))
    throw new CniError(ErrCode.InvalidNetworkConfig, `${name} must be an object, got ${JSON.stringify(v)}`);
  return v;
}

function optionalPath(obj: Record<string, unknown>, name: string, fallback: string): string {
  const v = goField(obj, name);
  if (v === undefined || v === null) return fallback;
  if (typeof v !== "string" || v === "") {
    throw new CniError(ErrCode.InvalidNetworkConfig, `${name} must be a non-empty path, got ${JSON.stringify(v)}`);
  }
  return v;
}

/** Decodes the plugin's config the way flannel's loadFlannelNetConf does. */
export function parseFlannelConf(obj: Record<string, unknown>): FlannelConf {
  const name = goField(obj, "name");
  // flannel would pass an empty name on to bridge, and host-local would then keep its
  // leases directly in /var/lib/cni/networks; refuse instead.
  if (typeof name !== "string" || name === "") {
    throw new CniError(ErrCode.InvalidNetworkConfig, `name must be a non-empty string, got ${JSON.stringify(name)}`);
  }
  const cniVersion = goField(obj, "cniVersion");
  return {
    cniVersion: typeof cniVersion === "string" ? cniVersion : "",
    name,
    subnetFile: optionalPath(obj, "subnetFile", DEFAULT_SUBNET_ENV_PATH),
    dataDir: optionalPath(obj, "dataDir", DEFAULT_DATA_DIR),
    delegate: optionalObject(obj, "delegate"),
    ipam: optionalObject(obj, "ipam"),
    runtimeConfig: optionalObject(obj, "runtimeConfig"),
    prevResult: optionalObject(obj, "prevResult"),
  };
}

function checkDelegate(delegate: Record<string, unknown>): void {
  // The same three refusals as flannel's cmdAdd.
  if (Object.hasOwn(delegate, "type") && typeof delegate.type !== "string") {
    throw new CniError(
      ErrCode.InvalidNetworkConfig,
      `delegate.type must be a string, got ${JSON.stringify(delegate.type)}`,
    );
  }
  if (Object.hasOwn(delegate, "name")) {
    throw new CniError(
      ErrCode.InvalidNetworkConfig,
      `delegate.name must not be set (flannel sets it to the network name), got ${JSON.stringify(delegate.name)}`,
    );
  }
  if (Object.hasOwn(delegate, "ipam")) {
    throw new CniError(
      ErrCode.InvalidNetworkConfig,
      `delegate.ipam must not be set (flannel builds it from subnet.env), got ${JSON.stringify(delegate.ipam)}`,
    );
  }
}

/** An address as Go's net.IP prints it, or null. */
function goIp(text: string): string | null {
  if (maskedIpv4Cidr(`${text}/32`) !== null) return text;
  if (!text.includes(":")) return null;
  try {
    // WHATWG URL host serialisation is RFC 5952, like Go's.
    return new URL(`http://[${text}]/`).hostname.slice(1, -1);
  } catch {
    return null;
  }
}

/** A CIDR as cni's types.IPNet prints it: the address as given (host bits kept). */
function goIpNet(text: string): string | null {
  const slash = text.lastIndexOf("/");
  if (slash < 0) return null;
  const ip = goIp(text.slice(0, slash));
  const len = text.slice(slash + 1);
  if (ip === null || !/^\d{1,3}$/.test(len) || Number(len) > (ip.includes(":") ? 128 : 32)) return null;
  return `${ip}/${Number(len)}`;
}

/** One user route re-encoded as cni's types.Route struct (field order, omitempty). */
function goRoute(r: unknown, i: number): Map<string, unknown> {
  const bad = (field: string, v: unknown, what: string) =>
    new CniError(ErrCode.InvalidNetworkConfig, `ipam.routes[${i}].${field} must be ${what}, got ${JSON.stringify(v)}`);
  if (!isObject(r))
    throw new CniError(ErrCode.InvalidNetworkConfig, `ipam.routes[${i}] must be an object, got ${JSON.stringify(r)}`);
  const out = new Map<string, unknown>();
  const dst = goField(r, "dst");
  const dstText = typeof dst === "string" ? goIpNet(dst) : null;
  if (dstText === null) throw bad("dst", dst, "a CIDR");
  out.set("dst", dstText);
  const gw = goField(r, "gw");
  if (gw !== undefined && gw !== null && gw !== "") {
    const gwText = typeof gw === "string" ? goIp(gw) : null;
    if (gwText === null) throw bad("gw", gw, "an IP address");
    out.set("gw", gwText);
  }
  for (const field of ["mtu", "advmss", "priority", "table", "scope"]) {
    const v = goField(r, field);
    if (v === undefined || v === null) continue;
    if (typeof v !== "number" || !Number.isInteger(v)) throw bad(field, v, "an integer");
    // mtu, advmss and priority are plain ints (omitted when 0); table and scope are pointers.
    if (v !== 0 || field === "table" || field === "scope") out.set(field, v);
  }
  return out;
}

/**
 * The delegate config flannel's doCmdAdd builds. Matched details: delegate fields win
 * over the defaults (type bridge, ipMasq = !FLANNEL_IPMASQ, mtu = FLANNEL_MTU,
 * isGateway true for bridge only); name and cniVersion always come from the conf; the
 * conf's own top-level ipam is kept and completed (type host-local unless set, its
 * routes first); ranges hold FLANNEL_SUBNET's *network* (10.244.68.1/24 becomes
 * 10.244.68.0/24: flannel parses it with net.ParseCIDR, and host-local refuses a subnet
 * with host bits set); one route per FLANNEL_NETWORK entry.
 */
export function renderDelegate(conf: FlannelConf, env: SubnetEnv): Record<string, unknown> {
  const d: Record<string, unknown> = { ...(conf.delegate ?? {}) };
  checkDelegate(d);
  if (conf.runtimeConfig !== null) d.runtimeConfig = conf.runtimeConfig;
  d.name = conf.name;
  if (!Object.hasOwn(d, "type")) d.type = "bridge";
  if (!Object.hasOwn(d, "ipMasq")) d.ipMasq = !env.ipMasq;
  if (!Object.hasOwn(d, "mtu")) d.mtu = env.mtu;
  if (d.type === "bridge" && !Object.hasOwn(d, "isGateway")) d.isGateway = true;
  if (conf.cniVersion !== "") d.cniVersion = conf.cniVersion;

  const ipam: Record<string, unknown> = { ...(conf.ipam ?? {}) };
  if (!Object.hasOwn(ipam, "type")) ipam.type = "host-local";
  ipam.ranges = [[{ subnet: env.subnet }]];
  const given = ipam.routes;
  if (given !== undefined && given !== null && !Array.isArray(given)) {
    throw new CniError(ErrCode.InvalidNetworkConfig, `ipam.routes must be a list, got ${JSON.stringify(given)}`);
  }
  const routes = (given ?? []).map(goRoute);
  for (const nw of env.networks) routes.push(new Map([["dst", nw]]));
  ipam.routes = routes;
  d.ipam = ipam;
  return d;
}

// ---------------------------------------------------------------------------------------
// commands

type Env = NodeJS.ProcessEnv;

/** What the process prints and how it exits. */
export interface PluginOutcome {
  stdout: string;
  exitCode: number;
}

const CONTAINER_ID = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;

function requireEnv(env: Env, command: string): void {
  const needed = ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"];
  if (command !== "DEL") needed.push("CNI_NETNS");
  const missing = needed.filter((k) => !env[k]);
  if (missing.length > 0) {
    throw new CniError(ErrCode.InvalidEnvironment, `required env variables [${missing.join(" ")}] missing`);
  }
  const id = env.CNI_CONTAINERID as string;
  // The ID names a file under dataDir, so it must not be able to climb out of it.
  if (!CONTAINER_ID.test(id)) {
    throw new CniError(ErrCode.InvalidEnvironment, `CNI_CONTAINERID ${JSON.stringify(id)} has invalid characters`);
  }
  const ifName = env.CNI_IFNAME as string;
  if (ifName.length > 15 || ifName === "." || ifName === ".." || /[/:\s]/.test(ifName)) {
    throw new CniError(
      ErrCode.InvalidEnvironment,
      `CNI_IFNAME ${JSON.stringify(ifName)} is not a valid interface name`,
    );
  }
}

function cniPathOf(env: Env): string[] {
  return (env.CNI_PATH ?? "").split(":").filter((d) => d !== "");
}

async function saveScratch(path: string, dataDir: string, bytes: string): Promise<void> {
  try {
    await mkdir(dataDir, { recursive: true, mode: 0o700 });
    // Synced like flannel's writeAndSyncFile: DEL after a node crash still finds it.
    const fh = await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC, 0o600);
    try {
      await fh.writeFile(bytes);
      await fh.sync();
    } finally {
      await fh.close();
    }
  } catch (e) {
    throw new CniError(ErrCode.IoFailure, `cannot save the delegate config to ${path}: ${(e as Error).message}`);
  }
}

/** Reads the saved delegate config; null when there is none. */
async function readScratch(path: string): Promise<string | null> {
  try {
    return await readFile(path, "utf8");
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === "ENOENT") return null;
    throw new CniError(ErrCode.IoFailure, `cannot read the saved delegate config ${path}: ${err.message}`);
  }
}

function delegateType(saved: string): { conf: Record<string, unknown>; type: string } | null {
  try {
    const conf = JSON.parse(saved) as unknown;
    if (isObject(conf) && typeof conf.type === "string" && conf.type !== "") return { conf, type: conf.type };
  } catch {
    // Fall through: unusable.
  }
  return null;
}

async function cmdAdd(conf: FlannelConf, env: Env): Promise<string> {
  const subnetEnv = await loadSubnetEnv(conf.subnetFile);
  const delegate = renderDelegate(conf, subnetEnv);
  const bytes = goJson(delegate);
  const id = env.CNI_CONTAINERID as string;
  const type = delegate.type as string;
  // Found first: a delegate that cannot be found must not leave a file behind.
  const path = findPlugin(type, cniPathOf(env));
  // Saved before the delegate runs, so a failed ADD can still be cleaned up by DEL.
  await saveScratch(join(conf.dataDir, id), conf.dataDir, bytes);
  const stdout = await execPlugin({
    path,
    type,
    stdin: bytes,
    env: { ...env, CNI_COMMAND: "ADD" },
  });
  parseResult(type, stdout);
  return stdout.endsWith("\n") ? stdout : `${stdout}\n`;
}

async function cmdDel(conf: FlannelConf, env: Env): Promise<void> {
  const path = join(conf.dataDir, env.CNI_CONTAINERID as string);
  const saved = await readScratch(path);
  // Per spec DEL of something already gone succeeds.
  if (saved === null) return;
  const parsed = delegateType(saved);
  if (parsed === null) {
    // flannel gives up the same way: the veth stays on the bridge until the pod's
    // namespace goes, which removes it.
    await rm(path, { force: true });
    return;
  }
  const plugin = locatePlugin(parsed.type, cniPathOf(env));
  if (plugin === null) {
    // The delegate is gone (uninstalled, another CNI_PATH): whatever it made
    // cannot be undone by us, and a DEL that fails forever helps nobody (the
    // spec asks DEL to succeed when things are already gone).
    await rm(path, { force: true });
    return;
  }
  await execPlugin({
    path: plugin,
    type: parsed.type,
    stdin: saved,
    env: { ...env, CNI_COMMAND: "DEL" },
  });
  // Only after the delegate succeeded: kubelet retries a failed DEL, and the retry
  // needs the file to find the delegate again.
  await rm(path, { force: true });
}

/**
 * flannel's own CHECK is a no-op. Ours also confirms ADD happened here (the saved config
 * exists and is usable), but does not run the delegate's CHECK: bridge before plugins
 * v1.3.0 (Debian 12 ships 1.1.1) rejects the gateway-less route flannel itself renders,
 * "Expected Route {Dst:10.244.0.0/16 GW:<nil>} not found in routing table"
 * (containernetworking/plugins#886), so every pod would fail CHECK.
 */
async function cmdCheck(conf: FlannelConf, env: Env): Promise<void> {
  const id = env.CNI_CONTAINERID as string;
  const path = join(conf.dataDir, id);
  const saved = await readScratch(path);
  if (saved === null) {
    throw new CniError(ErrCode.UnknownContainer, `no network was set up for container ${id}: ${path} does not exist`);
  }
  if (delegateType(saved) === null) {
    throw new CniError(ErrCode.DecodingFailure, `the saved delegate config ${path} is not a JSON object with a type`);
  }
}

function versionOutput(): string {
  return `${JSON.stringify({ cniVersion: CURRENT_VERSION, supportedVersions: SUPPORTED_VERSIONS })}\n`;
}

/**
 * Runs one plugin invocation: `env` holds the CNI_* variables, `stdin` the config.
 * Never throws; failures come back as the CNI error JSON and exit code 1.
 */
export async function runPlugin(env: Env, stdin: string | Uint8Array): Promise<PluginOutcome> {
  let errorVersion = CURRENT_VERSION;
  try {
    const command = env.CNI_COMMAND;
    if (!command) throw new CniError(ErrCode.InvalidEnvironment, "required env variables [CNI_COMMAND] missing");
    if (command === "VERSION") return { stdout: versionOutput(), exitCode: 0 };
    if (command !== "ADD" && command !== "DEL" && command !== "CHECK") {
      throw new CniError(
        ErrCode.InvalidEnvironment,
        `CNI_COMMAND ${JSON.stringify(command)} is not ADD, DEL, CHECK or VERSION`,
      );
    }
    requireEnv(env, command);

    let raw: unknown;
    try {
      raw = JSON.parse(typeof stdin === "string" ? stdin : Buffer.from(stdin).toString("utf8"));
    } catch (e) {
      throw new CniError(
        ErrCode.DecodingFailure,
        `the network config on stdin is not valid JSON: ${(e as Error).message}`,
      );
    }
    if (!isObject(raw))
      throw new CniError(
        ErrCode.DecodingFailure,
        `the network config on stdin must be a JSON object, got ${JSON.stringify(raw)}`,
      );
    const version = goField(raw, "cniVersion") ?? "";
    if (typeof version !== "string") {
      throw new CniError(ErrCode.DecodingFailure, `cniVersion must be a string, got ${JSON.stringify(version)}`);
    }
    // libcni's skel reads a missing cniVersion as 0.1.0.
    const effective = version === "" ? "0.1.0" : version;
    if (!(SUPPORTED_VERSIONS as readonly string[]).includes(effective)) {
      throw new CniError(
        ErrCode.IncompatibleVersion,
        "incompatible CNI versions",
        `config is ${JSON.stringify(effective)}, plugin supports ${JSON.stringify(SUPPORTED_VERSIONS)}`,
      );
    }
    errorVersion = effective;
    if (command === "CHECK" && !versionAtLeast(effective, "0.4.0")) {
      throw new CniError(
        ErrCode.IncompatibleVersion,
        `config version ${JSON.stringify(effective)} does not allow CHECK`,
      );
    }
    const conf = parseFlannelConf(raw);
    if (command === "ADD") return { stdout: await cmdAdd(conf, env), exitCode: 0 };
    if (command === "DEL") await cmdDel(conf, env);
    else await cmdCheck(conf, env);
    return { stdout: "", exitCode: 0 };
  } catch (e) {
    // A delegate's CniError passes through with its own code and message, as flannel's
    // wrapped error does through libcni's skel.
    const err = e instanceof CniError ? e : new CniError(ErrCode.Internal, (e as Error)?.message ?? String(e));
    return { stdout: `${JSON.stringify(err.toResult(errorVersion))}\n`, exitCode: 1 };
  }
}

// subnet.env: the four lines flannel writes for the CNI plugin and
// mk-docker-opts.sh, and the file weft reads back on restart to ask for the
// subnet it held before.

import { randomBytes } from "node:crypto";
import { chmod, mkdir, open, readFile, rename, unlink } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { formatPrefix, type Ipv4Prefix, parsePrefix } from "../net/addr.js";

export const DEFAULT_SUBNET_ENV_PATH = "/run/flannel/subnet.env";

export interface SubnetEnv {
  readonly network: Ipv4Prefix;
  /** The lease itself (network address, lease prefix), not the bridge address. */
  readonly subnet: Ipv4Prefix;
  readonly mtu: number;
  readonly ipMasq: boolean;
}

/** What could be read back from an existing file; a field that is absent or malformed is null. */
export interface SubnetEnvReadBack {
  readonly network: Ipv4Prefix | null;
  readonly subnet: Ipv4Prefix | null;
  readonly mtu: number | null;
  readonly ipMasq: boolean | null;
}

/** flannel's exact bytes: the bridge gets the lease's first address, hence +1. */
export function renderSubnetEnv(env: SubnetEnv): string {
  const bridge = { base: env.subnet.base + 1, len: env.subnet.len };
  return (
    `FLANNEL_NETWORK=${formatPrefix(env.network)}\n` +
    `FLANNEL_SUBNET=${formatPrefix(bridge)}\n` +
    `FLANNEL_MTU=${env.mtu}\n` +
    `FLANNEL_IPMASQ=${env.ipMasq}\n`
  );
}

/**
 * Replaces the file atomically: consumers (the CNI plugin runs at any moment)
 * see either the old file or the new one, never a partial write.
 */
export async function writeSubnetEnv(path: string, env: SubnetEnv): Promise<void> {
  const dir = dirname(path);
  await mkdir(dir, { recursive: true });
  const temp = join(dir, `.${basename(path)}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`);
  try {
    const file = await open(temp, "wx", 0o644);
    try {
      await file.writeFile(renderSubnetEnv(env));
      await file.sync();
    } finally {
      await file.close();
    }
    // The umask may have narrowed the mode given to open().
    await chmod(temp, 0o644);
    await rename(temp, path);
  } catch (err) {
    await unlink(temp).catch(() => {});
    throw err;
  }
}

/**
 * Reads a subnet.env written by weft or flannel; null when there is none.
 * Tolerates what godotenv tolerates: blank lines, comments, `export`, quotes,
 * and lines it does not know.
 */
export async function readSubnetEnv(path: string): Promise<SubnetEnvReadBack | null> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw err;
  }
  const values = subnetEnvValues(text);
  return {
    network: parseNetworkValue(values.get("FLANNEL_NETWORK")),
    subnet: leaseFromSubnetValue(values.get("FLANNEL_SUBNET")),
    mtu: parseMtuValue(values.get("FLANNEL_MTU")),
    ipMasq: parseBoolValue(values.get("FLANNEL_IPMASQ")),
  };
}

/**
 * FLANNEL_SUBNET holds the bridge address (lease + 1) with the lease prefix;
 * the lease is that address with its host bits cleared, as flannel reads it.
 */
export function leaseFromSubnetValue(value: string | undefined): Ipv4Prefix | null {
  return value === undefined ? null : parsePrefix(value);
}

/**
 * The one subnet.env line parser (weftd's read-back, the CNI plugin, the lab):
 * key to raw value, the last of a repeated key winning, as godotenv and flannel read it.
 */
export function subnetEnvValues(text: string): Map<string, string> {
  const values = new Map<string, string>();
  for (const rawLine of text.split(/\r?\n/)) {
    let line = rawLine.trim();
    if (line === "" || line.startsWith("#")) continue;
    if (line.startsWith("export ")) line = line.slice("export ".length).trim();
    const eq = line.indexOf("=");
    if (eq <= 0) continue;
    const key = line.slice(0, eq).trim();
    let value = line.slice(eq + 1).trim();
    if (value.length >= 2 && (value[0] === '"' || value[0] === "'") && value.at(-1) === value[0]) {
      value = value.slice(1, -1);
    }
    values.set(key, value);
  }
  return values;
}

function parseNetworkValue(value: string | undefined): Ipv4Prefix | null {
  return value === undefined ? null : parsePrefix(value);
}

function parseMtuValue(value: string | undefined): number | null {
  if (value === undefined || !/^\d{1,5}$/.test(value)) return null;
  return Number(value);
}

function parseBoolValue(value: string | undefined): boolean | null {
  if (value === "true") return true;
  if (value === "false") return false;
  return null;
}

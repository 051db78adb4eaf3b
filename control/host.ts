// The host around the dataplane: which interface carries the underlay,
// flannel0's address, MTU and route, and the iptables rules of --ip-masq and
// --iptables-forward-rules. Everything here shells out to iproute2 and
// iptables: slow, rare, and exactly what an operator would type.

import { execFile, execFileSync } from "node:child_process";
import { accessSync, constants, readFileSync, writeFileSync } from "node:fs";
import { networkInterfaces } from "node:os";
import { promisify } from "node:util";
import { formatIpv4, formatPrefix, type Ipv4Prefix, parseIpv4 } from "../net/addr.js";

const run = promisify(execFile);

export class HostError extends Error {}

export interface ExternalInterface {
  readonly name: string;
  /** The interface's IPv4 address: the UDP socket binds to it. */
  readonly addr: number;
  readonly mtu: number;
}

/** Fails with one sentence when weft cannot create flannel0 here. */
export function checkPrivileges(): void {
  try {
    accessSync("/dev/net/tun", constants.R_OK | constants.W_OK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new HostError(
      code === "ENOENT"
        ? "/dev/net/tun does not exist: load the tun module (modprobe tun) or give the container the device"
        : `/dev/net/tun is not accessible (${code}): weftd needs root or CAP_NET_ADMIN`,
    );
  }
  const status = readFileSync("/proc/self/status", "utf8");
  const capEff = /^CapEff:\s*([0-9a-f]+)$/m.exec(status)?.[1];
  const CAP_NET_ADMIN = 12n;
  if (capEff !== undefined && ((BigInt(`0x${capEff}`) >> CAP_NET_ADMIN) & 1n) === 0n) {
    throw new HostError("weftd needs CAP_NET_ADMIN (run it as root or grant the capability) to create flannel0");
  }
}

/** The interface of the IPv4 default route, from /proc/net/route. */
function defaultRouteInterface(): string | null {
  const lines = readFileSync("/proc/net/route", "utf8").trim().split("\n").slice(1);
  for (const line of lines) {
    const [iface, dest, , , , , , mask] = line.trim().split(/\s+/);
    if (dest === "00000000" && mask === "00000000" && iface !== undefined) return iface;
  }
  return null;
}

interface LinkAddrs {
  readonly name: string;
  readonly mtu: number;
  readonly loopback: boolean;
  readonly addrs: string[];
}

/**
 * Every link with its IPv4 addresses, from `ip -j addr` (os.networkInterfaces()
 * hides links without carrier, which flanneld does not).
 */
function listLinks(): LinkAddrs[] {
  const json = JSON.parse(execFileSync("ip", ["-j", "-4", "addr", "show"], { encoding: "utf8" })) as {
    ifname: string;
    mtu: number;
    flags?: string[];
    addr_info?: { local?: string; family?: string }[];
  }[];
  return json.map((l) => ({
    name: l.ifname,
    mtu: l.mtu,
    loopback: (l.flags ?? []).includes("LOOPBACK"),
    addrs: (l.addr_info ?? []).flatMap((a) => (a.local !== undefined ? [a.local] : [])),
  }));
}

/**
 * This host's IPv4 addresses, every link. Cheap (getifaddrs, no child
 * process), so the daemon can refresh it on a timer; links that are down may
 * be missing, which `ip` would list (see localAddressesAtStart).
 */
export function localAddresses(): number[] {
  const out: number[] = [];
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) if (a.family === "IPv4") out.push(parseIpv4(a.address));
  }
  return out.filter((n) => n >= 0);
}

/** localAddresses plus the addresses of links that are down, from `ip` (once, at start). */
export function localAddressesAtStart(): number[] {
  const fromIp = listLinks().flatMap((l) => l.addrs.map(parseIpv4));
  return [...new Set([...fromIp, ...localAddresses()])].filter((n) => n >= 0);
}

function linkExists(name: string): boolean {
  try {
    readFileSync(`/sys/class/net/${name}/ifindex`);
    return true;
  } catch {
    return false;
  }
}

/**
 * Picks the underlay interface as flanneld does: each --iface (name or IP)
 * in order, then each --iface-regex (matched against names and IPs), else
 * the default-route interface.
 */
export function findExternalInterface(ifaces: readonly string[], regexes: readonly string[]): ExternalInterface {
  const links = listLinks();
  const pick = (link: LinkAddrs, addr: string): ExternalInterface => ({
    name: link.name,
    addr: parseIpv4(addr),
    mtu: link.mtu,
  });

  for (const want of ifaces) {
    if (parseIpv4(want) >= 0) {
      const link = links.find((l) => l.addrs.includes(want));
      if (link === undefined) throw new HostError(`--iface ${want}: no interface has this address`);
      return pick(link, want);
    }
    const link = links.find((l) => l.name === want);
    if (link === undefined) {
      throw new HostError(
        linkExists(want) ? `--iface ${want}: the interface has no IPv4 address` : `--iface ${want}: no such interface`,
      );
    }
    const addr = link.addrs[0];
    if (addr === undefined) throw new HostError(`--iface ${want}: the interface has no IPv4 address`);
    return pick(link, addr);
  }
  for (const re of regexes) {
    const rx = new RegExp(re);
    for (const link of links) {
      if (link.loopback) continue;
      const addr = rx.test(link.name) ? link.addrs[0] : link.addrs.find((a) => rx.test(a));
      if (addr !== undefined) return pick(link, addr);
    }
  }
  if (regexes.length > 0) throw new HostError(`--iface-regex ${regexes.join(", ")}: no interface matches`);
  const name = defaultRouteInterface();
  if (name === null) throw new HostError("no default route to pick the interface from: pass --iface");
  const link = links.find((l) => l.name === name);
  const addr = link?.addrs[0];
  if (link === undefined || addr === undefined)
    throw new HostError(`default-route interface ${name} has no IPv4 address: pass --iface`);
  return pick(link, addr);
}

async function ip(...args: string[]): Promise<void> {
  try {
    await run("ip", args);
  } catch (err) {
    const stderr = String((err as { stderr?: string }).stderr ?? "").trim();
    throw new HostError(`ip ${args.join(" ")}: ${stderr || (err as Error).message}`);
  }
}

/**
 * accept_local=1 on the device. Left alone when already set: in a container /proc/sys
 * is read-only, and there `net.ipv4.conf.default.accept_local=1` (docker --sysctl)
 * makes the new device start with it.
 */
function setAcceptLocal(name: string): void {
  const path = `/proc/sys/net/ipv4/conf/${name}/accept_local`;
  if (readFileSync(path, "utf8").trim() === "1") return;
  try {
    writeFileSync(path, "1");
  } catch (err) {
    throw new HostError(
      `cannot set net.ipv4.conf.${name}.accept_local=1 (${(err as Error).message}); in a container, start it with the sysctl net.ipv4.conf.default.accept_local=1`,
    );
  }
}

/**
 * flannel0 as flannel sets it up: the lease's network address as a /32, the
 * overlay MTU, up, and one route for the whole Network. Also accept_local,
 * because the ICMP errors weft writes into flannel0 come from flannel0's own
 * address and the kernel would otherwise drop them as martians.
 *
 * With `gsoMaxSegments` (offloads on) the kernel is told to hand flannel0 no
 * super-packet of more segments than that, which bounds what weft must split
 * per read. Returns false when the kernel would not take that limit.
 */
export async function configureTun(
  name: string,
  lease: Ipv4Prefix,
  mtu: number,
  network: Ipv4Prefix,
  opts: { gsoMaxSegments?: number } = {},
): Promise<boolean> {
  await ip("addr", "replace", `${formatIpv4(lease.base)}/32`, "dev", name);
  let capped = true;
  if (opts.gsoMaxSegments !== undefined && opts.gsoMaxSegments > 0) {
    try {
      await run("ip", ["link", "set", "dev", name, "gso_max_segs", String(opts.gsoMaxSegments)]);
    } catch {
      capped = false;
    }
  }
  await ip("link", "set", "dev", name, "mtu", String(mtu), "txqueuelen", "1000", "up");
  try {
    await run("ip", ["route", "add", formatPrefix(network), "dev", name]);
  } catch (err) {
    const stderr = String((err as { stderr?: string }).stderr ?? "");
    if (!/File exists/.test(stderr))
      throw new HostError(`ip route add ${formatPrefix(network)} dev ${name}: ${stderr.trim()}`);
  }
  setAcceptLocal(name);
  return capped;
}

/** Whether the link exists and is up (for readiness). */
export function linkIsUp(name: string): boolean {
  try {
    const flags = Number(readFileSync(`/sys/class/net/${name}/flags`, "utf8").trim());
    return (flags & 1) === 1;
  } catch {
    return false;
  }
}

// The network config stored at `<prefix>/config`, parsed with flannel's rules
// (pkg/subnet/config.go) plus weft's own limits: the udp backend only, IPv4 only.
// Every rejection is a ConfigError with one sentence naming the field and value;
// tests assert the sentences, so keep them stable.

import {
  formatIpv4,
  formatPrefix,
  type Ipv4Prefix,
  parseIpv4,
  parsePrefix,
  prefixContains,
  prefixesOverlap,
  prefixMask,
  prefixSize,
  RESERVED_RANGES,
} from "../net/addr.js";

export interface NetworkConfig {
  readonly network: Ipv4Prefix;
  /** Prefix length of every lease. */
  readonly subnetLen: number;
  /** Lowest lease network address a host may take (host order). */
  readonly subnetMin: number;
  /** Highest lease network address a host may take (host order). */
  readonly subnetMax: number;
  readonly backend: { readonly type: "udp"; readonly port: number };
}

export class ConfigError extends Error {
  override readonly name = "ConfigError";
}

export const DEFAULT_UDP_PORT = 8285;

/** flannel needs room for the skipped zeroth subnet plus at least one more of /30. */
const LONGEST_NETWORK_PREFIX = 28;
/** A lease must hold a bridge address and at least one pod: /30 at most. */
const LONGEST_SUBNET_LEN = 30;

export function parseNetworkConfig(json: string): NetworkConfig {
  let parsed: unknown;
  try {
    parsed = JSON.parse(json);
  } catch (err) {
    throw new ConfigError(`network config is not valid JSON: ${(err as Error).message}`);
  }
  if (!isObject(parsed)) {
    throw new ConfigError(`network config is not a JSON object: ${show(parsed)}`);
  }

  rejectIpv6(parsed);
  const network = parseNetwork(field(parsed, "Network"));
  const subnetLen = parseSubnetLen(field(parsed, "SubnetLen"), network);
  const subnetSize = prefixSize(subnetLen);
  // The zeroth subnet is skipped: its network address would equal Network's.
  const subnetMin = parseSubnetBound(
    "SubnetMin",
    field(parsed, "SubnetMin"),
    network,
    subnetLen,
    network.base + subnetSize,
  );
  const subnetMax = parseSubnetBound(
    "SubnetMax",
    field(parsed, "SubnetMax"),
    network,
    subnetLen,
    network.base + prefixSize(network.len) - subnetSize,
  );
  if (subnetMin > subnetMax) {
    throw new ConfigError(
      `network config: SubnetMin ${formatIpv4(subnetMin)} is above SubnetMax ${formatIpv4(subnetMax)}`,
    );
  }
  const backend = parseBackend(field(parsed, "Backend"));
  return { network, subnetLen, subnetMin, subnetMax, backend };
}

function rejectIpv6(config: Record<string, unknown>): void {
  const enableIpv4 = field(config, "EnableIPv4");
  if (enableIpv4 === false) {
    throw new ConfigError("network config: EnableIPv4 false is not supported; the udp backend carries only IPv4");
  }
  const enableIpv6 = field(config, "EnableIPv6");
  if (enableIpv6 === true) {
    throw new ConfigError("network config: EnableIPv6 true is not supported; the udp backend carries only IPv4");
  }
  const ipv6Network = field(config, "IPv6Network");
  if (ipv6Network !== undefined && ipv6Network !== null && ipv6Network !== "") {
    throw new ConfigError(
      `network config: IPv6Network ${show(ipv6Network)} is not supported; the udp backend carries only IPv4`,
    );
  }
}

function parseNetwork(value: unknown): Ipv4Prefix {
  if (value === undefined || value === null || value === "") {
    throw new ConfigError("network config: Network is missing");
  }
  // flannel (Go's net.ParseCIDR) clears host bits: "10.244.1.1/16" is 10.244.0.0/16.
  const network = typeof value === "string" ? parsePrefix(value) : null;
  if (network === null) {
    throw new ConfigError(`network config: Network ${show(value)} is not an IPv4 CIDR`);
  }
  if (network.len > LONGEST_NETWORK_PREFIX) {
    throw new ConfigError(
      `network config: Network ${formatPrefix(network)} is too small; the smallest usable Network is a /${LONGEST_NETWORK_PREFIX}`,
    );
  }
  // Routing such a Network into flannel0 (and accepting it in FORWARD) would
  // capture loopback, multicast or, for 0.0.0.0/0, everything.
  const reserved = RESERVED_RANGES.find((r) => prefixesOverlap(network, r.prefix));
  if (reserved !== undefined) {
    throw new ConfigError(
      `network config: Network ${formatPrefix(network)} overlaps ${reserved.what}; use a private range such as 10.244.0.0/16`,
    );
  }
  return network;
}

function parseSubnetLen(value: unknown, network: Ipv4Prefix): number {
  // flannel treats 0 like an absent SubnetLen.
  if (value === undefined || value === null || value === 0) {
    return network.len <= 22 ? 24 : network.len + 2;
  }
  if (typeof value !== "number" || !Number.isInteger(value)) {
    throw new ConfigError(`network config: SubnetLen ${show(value)} is not an integer`);
  }
  if (value > LONGEST_SUBNET_LEN) {
    throw new ConfigError(`network config: SubnetLen ${value} is larger than ${LONGEST_SUBNET_LEN}`);
  }
  if (value < network.len + 2) {
    throw new ConfigError(
      `network config: SubnetLen ${value} is smaller than ${network.len + 2}, the Network prefix length plus 2`,
    );
  }
  return value;
}

function parseSubnetBound(
  name: "SubnetMin" | "SubnetMax",
  value: unknown,
  network: Ipv4Prefix,
  subnetLen: number,
  fallback: number,
): number {
  if (value === undefined || value === null || value === "") return fallback;
  const addr = typeof value === "string" ? parseIpv4(value) : -1;
  if (addr < 0) {
    throw new ConfigError(`network config: ${name} ${show(value)} is not an IPv4 address`);
  }
  // flannel stores these as IP4 numbers where 0 means "not set".
  if (addr === 0) return fallback;
  if (!prefixContains(network, addr)) {
    throw new ConfigError(`network config: ${name} ${formatIpv4(addr)} is outside Network ${formatPrefix(network)}`);
  }
  if ((addr & prefixMask(subnetLen)) >>> 0 !== addr) {
    throw new ConfigError(`network config: ${name} ${formatIpv4(addr)} is not aligned to SubnetLen ${subnetLen}`);
  }
  return addr;
}

function parseBackend(value: unknown): NetworkConfig["backend"] {
  if (value === undefined || value === null) return { type: "udp", port: DEFAULT_UDP_PORT };
  if (!isObject(value)) {
    throw new ConfigError(`network config: Backend ${show(value)} is not a JSON object`);
  }
  const type = field(value, "Type");
  if (type === undefined || type === null || type === "") {
    throw new ConfigError("network config: Backend.Type is missing; weft implements only the udp backend");
  }
  // flannel lower-cases the backend name before looking it up.
  if (typeof type !== "string" || type.toLowerCase() !== "udp") {
    throw new ConfigError(
      `network config: Backend.Type ${show(type)} is not supported; weft implements only the udp backend`,
    );
  }
  const port = field(value, "Port");
  if (port === undefined || port === null) return { type: "udp", port: DEFAULT_UDP_PORT };
  if (typeof port !== "number" || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new ConfigError(`network config: Backend.Port ${show(port)} is not a port number between 1 and 65535`);
  }
  return { type: "udp", port };
}

/**
 * Looks a key up the way Go's encoding/json fills a struct field: names match
 * case-insensitively and, when several keys match, the last one wins.
 */
function field(object: Record<string, unknown>, name: string): unknown {
  const wanted = name.toLowerCase();
  let found: unknown;
  for (const key of Object.keys(object)) {
    if (key.toLowerCase() === wanted) found = object[key];
  }
  return found;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function show(value: unknown): string {
  return JSON.stringify(value) ?? String(value);
}

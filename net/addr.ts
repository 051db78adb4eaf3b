// IPv4 addresses and prefixes as plain unsigned 32-bit numbers (host order).
// Everything on the packet path compares numbers, never strings.

export interface Ipv4Prefix {
  /** Network address, host bits zero, as an unsigned 32-bit number. */
  readonly base: number;
  /** Prefix length, 0..32. */
  readonly len: number;
}

const DOTTED = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

/** Parses dotted-quad IPv4; returns -1 when the text is not an IPv4 address. */
export function parseIpv4(text: string): number {
  const m = DOTTED.exec(text);
  if (m === null) return -1;
  let n = 0;
  for (let i = 1; i <= 4; i++) {
    const part = m[i] as string;
    if (part.length > 1 && part[0] === "0") return -1;
    const octet = Number(part);
    if (octet > 255) return -1;
    n = n * 256 + octet;
  }
  return n;
}

export function formatIpv4(n: number): string {
  return `${n >>> 24}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;
}

export function prefixMask(len: number): number {
  return len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0;
}

/**
 * Parses "a.b.c.d/len". Returns null when malformed. With `strict`, host bits
 * must be zero; without it they are cleared (flannel accepts "10.244.1.1/16").
 */
export function parsePrefix(text: string, strict = false): Ipv4Prefix | null {
  const slash = text.indexOf("/");
  if (slash < 0) return null;
  const addr = parseIpv4(text.slice(0, slash));
  const lenText = text.slice(slash + 1);
  if (addr < 0 || !/^\d{1,2}$/.test(lenText)) return null;
  const len = Number(lenText);
  if (len > 32) return null;
  const base = (addr & prefixMask(len)) >>> 0;
  if (strict && base !== addr) return null;
  return { base, len };
}

export function formatPrefix(p: Ipv4Prefix): string {
  return `${formatIpv4(p.base)}/${p.len}`;
}

export function prefixContains(p: Ipv4Prefix, addr: number): boolean {
  return (addr & prefixMask(p.len)) >>> 0 === p.base;
}

export function prefixSize(len: number): number {
  return 2 ** (32 - len);
}

export function prefixesOverlap(a: Ipv4Prefix, b: Ipv4Prefix): boolean {
  return a.base < b.base + prefixSize(b.len) && b.base < a.base + prefixSize(a.len);
}

/**
 * Addresses that are never a host's unicast address on a network: "this"
 * network 0/8, loopback 127/8, multicast 224/4, and 240/4 (reserved, with the
 * limited broadcast 255.255.255.255). A packet or a lease naming one is bogus.
 */
export function isMartian(addr: number): boolean {
  const top = addr >>> 24;
  return top === 0 || top === 127 || top >= 224;
}

/** Ranges a flannel Network must stay out of, with what each is, for the error sentence. */
export const RESERVED_RANGES: readonly { readonly prefix: Ipv4Prefix; readonly what: string }[] = [
  { prefix: { base: 0x00000000, len: 8 }, what: '"this" network 0.0.0.0/8' },
  { prefix: { base: 0x7f000000, len: 8 }, what: "loopback 127.0.0.0/8" },
  { prefix: { base: 0xa9fe0000, len: 16 }, what: "link-local 169.254.0.0/16" },
  { prefix: { base: 0xe0000000, len: 4 }, what: "multicast 224.0.0.0/4" },
  { prefix: { base: 0xf0000000, len: 4 }, what: "reserved 240.0.0.0/4 (and broadcast)" },
];

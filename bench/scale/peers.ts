// The scale bench's cluster on paper: Network 10.0.0.0/8 with /24 leases,
// the two real hosts in 10.244.1.0/24 and 10.244.2.0/24 (the lab's pod
// range), and as many made-up peers as asked for elsewhere in 10/8, each with
// its own underlay address in 198.19.0.0/16 (inside the lab's 198.18.0.0/15,
// and never on any interface: nothing is ever sent to a made-up peer).

import type { Ipv4Prefix } from "../../dataplane/addr.js";

export const SCALE_NETWORK = "10.0.0.0/8";
export const SCALE_CONFIG = `{"Network":"${SCALE_NETWORK}","SubnetLen":24,"Backend":{"Type":"udp","Port":8285}}`;
/** The real hosts' leases: the pods and their traffic stay in 10.244.0.0/16. */
export const HOST_SUBNET_THIRD_OCTET = [1, 2] as const;
/** Made-up peers per second octet (10.X.*.0/24), and how many there can be. */
const PER_OCTET = 256;
const SECOND_OCTETS = [...Array(255).keys()].map((i) => i + 1).filter((o) => o !== 244);
export const MAX_PEERS = SECOND_OCTETS.length * PER_OCTET;

/** The lease of made-up peer `i`: 10.X.Y.0/24, never in 10.244/16. */
export function peerSubnet(i: number): Ipv4Prefix {
  if (!Number.isInteger(i) || i < 0 || i >= MAX_PEERS)
    throw new Error(`peer index ${i} is outside 0..${MAX_PEERS - 1}`);
  const second = SECOND_OCTETS[Math.floor(i / PER_OCTET)] as number;
  const third = i % PER_OCTET;
  return { base: ((10 << 24) | (second << 16) | (third << 8)) >>> 0, len: 24 };
}

/** The underlay address of made-up peer `i`: 198.19.A.B with B in 1..250 (no .0, no .255). */
export function peerPublicIp(i: number): number {
  const a = Math.floor(i / 250);
  const b = (i % 250) + 1;
  if (a > 255) throw new Error(`peer index ${i} has no underlay address in 198.19.0.0/16`);
  return ((198 << 24) | (19 << 16) | (a << 8) | b) >>> 0;
}

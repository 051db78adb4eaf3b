// flannel's --ip-masq and --iptables-forward-rules, byte-compatible with the
// chains current flanneld installs (COMPAT.md). Each chain is rewritten as a
// whole with `iptables-restore --noflush` (declaring an existing user chain
// flushes it), so a resync is atomic and rules of an old network or subnet
// vanish with the rewrite. The jump from the built-in chain is added once.
// ChainKeeper re-checks them, and skips the check (two iptables processes a
// chain) while the nf_tables generation says no ruleset changed since the
// last clean one.

import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { formatPrefix, type Ipv4Prefix } from "../net/addr.js";

const run = promisify(execFile);

export interface ChainSpec {
  readonly table: "nat" | "filter";
  /** Built-in chain that jumps to ours. */
  readonly parent: string;
  readonly chain: string;
  readonly comment: string;
  /** Rule bodies without "-A CHAIN" and without the comment match. */
  readonly rules: readonly string[][];
}

const KUBE_PROXY_MARK = "0x4000/0x4000";

export function masqChain(network: Ipv4Prefix, lease: Ipv4Prefix): ChainSpec {
  const n = formatPrefix(network);
  const sn = formatPrefix(lease);
  return {
    table: "nat",
    parent: "POSTROUTING",
    chain: "FLANNEL-POSTRTG",
    comment: "flanneld masq",
    rules: [
      ["-m", "mark", "--mark", KUBE_PROXY_MARK, "-j", "RETURN"],
      ["-s", sn, "-d", n, "-j", "RETURN"],
      ["-s", n, "-d", sn, "-j", "RETURN"],
      ["!", "-s", n, "-d", sn, "-j", "RETURN"],
      ["-s", n, "!", "-d", "224.0.0.0/4", "-j", "MASQUERADE", "--random-fully"],
      ["!", "-s", n, "-d", n, "-j", "MASQUERADE", "--random-fully"],
    ],
  };
}

export function forwardChain(network: Ipv4Prefix): ChainSpec {
  const n = formatPrefix(network);
  return {
    table: "filter",
    parent: "FORWARD",
    chain: "FLANNEL-FWD",
    comment: "flanneld forward",
    rules: [
      ["-s", n, "-j", "ACCEPT"],
      ["-d", n, "-j", "ACCEPT"],
    ],
  };
}

function quote(word: string): string {
  return /^[\w./:!-]+$/.test(word) ? word : `"${word}"`;
}

/** A rule with the comment match placed where iptables prints it back. */
function withComment(spec: ChainSpec, body: readonly string[]): string[] {
  const j = body.indexOf("-j");
  return [...body.slice(0, j), "-m", "comment", "--comment", spec.comment, ...body.slice(j)];
}

async function iptables(args: string[]): Promise<string> {
  const { stdout } = await run("iptables", ["-w", "5", ...args]);
  return stdout;
}

async function restore(text: string): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const child = execFile("iptables-restore", ["--noflush", "-w", "5"], (err, _out, stderr) => {
      if (err) reject(new Error(`iptables-restore: ${String(stderr).trim() || err.message}`));
      else resolve();
    });
    child.stdin?.end(text);
  });
}

const jumpRule = (spec: ChainSpec) => ["-m", "comment", "--comment", spec.comment, "-j", spec.chain];

/** Whether the chain holds exactly our rules and the parent jumps to it. */
export async function chainIsCurrent(spec: ChainSpec): Promise<boolean> {
  let listing: string;
  try {
    listing = await iptables(["-t", spec.table, "-S", spec.chain]);
  } catch {
    return false;
  }
  const have = listing
    .trim()
    .split("\n")
    .filter((l) => l.startsWith(`-A ${spec.chain} `));
  const want = spec.rules.map((r) => `-A ${spec.chain} ${withComment(spec, r).map(quote).join(" ")}`);
  if (have.length !== want.length || have.some((l, i) => l !== want[i])) return false;
  try {
    await iptables(["-t", spec.table, "-C", spec.parent, ...jumpRule(spec)]);
    return true;
  } catch {
    return false;
  }
}

/** Installs or repairs one chain; returns true when something had to change. */
export async function ensureChain(spec: ChainSpec): Promise<boolean> {
  if (await chainIsCurrent(spec)) return false;
  const lines = [`*${spec.table}`, `:${spec.chain} - [0:0]`];
  for (const r of spec.rules) lines.push(`-A ${spec.chain} ${withComment(spec, r).map(quote).join(" ")}`);
  lines.push("COMMIT", "");
  await restore(lines.join("\n"));
  try {
    await iptables(["-t", spec.table, "-C", spec.parent, ...jumpRule(spec)]);
  } catch {
    await iptables(["-t", spec.table, "-A", spec.parent, ...jumpRule(spec)]);
  }
  return true;
}

/** Count of parent-chain jumps to our chain (tests: exactly one after resyncs). */
export async function countJumps(spec: ChainSpec): Promise<number> {
  const listing = await iptables(["-t", spec.table, "-S", spec.parent]);
  return listing.split("\n").filter((l) => l.includes(`-j ${spec.chain}`)).length;
}

/** Whether `iptables` is iptables-nft (its rules bump the nf_tables generation); false for legacy or no answer. */
export async function iptablesIsNft(): Promise<boolean> {
  try {
    return (await iptables(["-V"])).includes("(nf_tables)");
  } catch {
    return false;
  }
}

export interface ResyncCounts {
  /** Syncs that ran iptables and found every chain current. */
  current: number;
  /** Syncs that had to (re)write a chain: the first one, and repairs. */
  rewritten: number;
  /** Syncs that ran nothing: the ruleset generation was the one of the last clean check. */
  skipped: number;
}

/**
 * Installs the chains and keeps them installed. With a generation source
 * (nftGeneration, only for iptables-nft: legacy rules do not bump it), a
 * check that found everything current remembers the generation, provided it
 * did not move during the check; the next sync skips iptables while it is
 * still that. A repair commits itself, so it is never remembered: the sync
 * after one checks again.
 */
export class ChainKeeper {
  readonly counts: ResyncCounts = { current: 0, rewritten: 0, skipped: 0 };
  private cleanAt: number | null = null;

  constructor(
    private readonly chains: readonly ChainSpec[],
    private readonly generation: () => number | null,
    private readonly onInstalled: (spec: ChainSpec) => void,
  ) {}

  async sync(): Promise<void> {
    const before = this.generation();
    if (before !== null && before === this.cleanAt) {
      this.counts.skipped++;
      return;
    }
    this.cleanAt = null;
    let changed = false;
    for (const spec of this.chains) {
      if (await ensureChain(spec)) {
        changed = true;
        this.onInstalled(spec);
      }
    }
    if (changed) this.counts.rewritten++;
    else this.counts.current++;
    if (!changed && before !== null && this.generation() === before) this.cleanAt = before;
  }
}

// ChainKeeper in a network namespace of its own: the nf_tables generation
// lets a resync skip iptables only while no ruleset commit happened, and a
// rule deleted by someone else with iptables-nft is put back by the next one.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { DELETE_MASQ_MARK_RULE } from "./helpers/iptables.js";
import { createNetns, deleteNetns, nsExec } from "./helpers/netns.js";

const execFileAsync = promisify(execFile);
const IPTABLES_URL = new URL("../control/iptables.js", import.meta.url).href;
const IO_URL = new URL("../dataplane/native-io.js", import.meta.url).href;
const TIMEOUT = { timeout: 60_000 };

/**
 * Runs a ChainKeeper for the masq and forward chains inside `ns`; between
 * syncs it runs each step's iptables command (if any), and reports the counts
 * after every sync and whether the mark rule was there afterwards.
 */
async function keep(ns: string, useGeneration: boolean, steps: (string[] | null)[]): Promise<unknown> {
  const code = `
    import { execFileSync } from "node:child_process";
    import { ChainKeeper, forwardChain, iptablesIsNft, masqChain } from ${JSON.stringify(IPTABLES_URL)};
    import { nftGeneration } from ${JSON.stringify(IO_URL)};
    const network = { base: 0x0af40000, len: 16 };
    const lease = { base: 0x0af40500, len: 24 };
    const generation = ${useGeneration} && (await iptablesIsNft()) ? nftGeneration : () => null;
    const keeper = new ChainKeeper([masqChain(network, lease), forwardChain(network)], generation, () => {});
    const out = [];
    for (const step of ${JSON.stringify(steps)}) {
      if (step) execFileSync("iptables", step);
      await keeper.sync();
      const nat = execFileSync("iptables", ["-t", "nat", "-S", "FLANNEL-POSTRTG"]).toString();
      out.push({ ...keeper.counts, mark: nat.includes("0x4000/0x4000") });
    }
    console.log(JSON.stringify(out));
  `;
  const { stdout } = await execFileAsync(
    "ip",
    ["netns", "exec", ns, process.execPath, "--input-type=module", "-e", code],
    { timeout: 50_000, killSignal: "SIGKILL" },
  );
  return JSON.parse(stdout);
}

describe("iptables chain keeper", () => {
  let ns = "";

  before(async () => {
    ns = await createNetns("ipt");
  });

  after(async () => {
    if (ns !== "") await deleteNetns(ns);
  });

  it(
    "skips iptables while the nf_tables generation stands still and repairs a deletion at the next sync",
    TIMEOUT,
    async () => {
      const steps = [
        null,
        null,
        null,
        null,
        [...DELETE_MASQ_MARK_RULE],
        null,
        null,
        ["-t", "filter", "-N", "SOMEONE-ELSE"],
        null,
      ];
      assert.deepEqual(await keep(ns, true, steps), [
        { current: 0, rewritten: 1, skipped: 0, mark: true }, // installed
        { current: 1, rewritten: 1, skipped: 0, mark: true }, // checked once after our own commit
        { current: 1, rewritten: 1, skipped: 1, mark: true },
        { current: 1, rewritten: 1, skipped: 2, mark: true },
        { current: 1, rewritten: 2, skipped: 2, mark: true }, // iptables -D moved the generation: repaired
        { current: 2, rewritten: 2, skipped: 2, mark: true },
        { current: 2, rewritten: 2, skipped: 3, mark: true },
        { current: 3, rewritten: 2, skipped: 3, mark: true }, // an unrelated commit: checked, nothing to do
        { current: 3, rewritten: 2, skipped: 4, mark: true },
      ]);
    },
  );

  it("runs iptables at every sync without a generation (iptables-legacy)", TIMEOUT, async () => {
    // The chains are still there from the test before: every sync finds them current.
    const steps = [null, null, [...DELETE_MASQ_MARK_RULE], null];
    assert.deepEqual(await keep(ns, false, steps), [
      { current: 1, rewritten: 0, skipped: 0, mark: true },
      { current: 2, rewritten: 0, skipped: 0, mark: true },
      { current: 2, rewritten: 1, skipped: 0, mark: true },
      { current: 3, rewritten: 1, skipped: 0, mark: true },
    ]);
    const { stdout: nat } = await nsExec(ns, "iptables", ["-t", "nat", "-S", "POSTROUTING"]);
    assert.equal(nat.split("\n").filter((l) => l.includes("-j FLANNEL-POSTRTG")).length, 1);
  });
});

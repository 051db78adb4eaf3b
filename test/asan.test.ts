// The native and fuzz tests once more, against the addon built with
// AddressSanitizer and UBSan (test/helpers/asan.ts; also `npm run
// test:asan`): an out-of-bounds read or write, a use after free or undefined
// behaviour in the C++ stops that test process with a report, and fails here.
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { describe, it } from "node:test";
import { ASAN_SUITES, asanEnv, buildAsanAddon, REPORT, runUnderAsan } from "./helpers/asan.js";

describe("the addon under AddressSanitizer and UBSan", { timeout: 600_000 }, () => {
  it("builds instrumented, and the ASan runtime loads into node", () => {
    const addon = buildAsanAddon();
    const libs = execFileSync("ldd", [addon], { encoding: "utf8" });
    assert.match(libs, /libasan\.so/);
    assert.match(libs, /libubsan\.so/);
    const r = spawnSync(process.execPath, ["-e", "0"], {
      env: { ...asanEnv(), ASAN_OPTIONS: "help=1" },
      encoding: "utf8",
    });
    assert.match(`${r.stdout}${r.stderr}`, /Available flags for AddressSanitizer/);
  });

  it(`runs ${ASAN_SUITES.join(", ")} with no sanitizer report`, async () => {
    const { status, output } = await runUnderAsan(ASAN_SUITES);
    const at = output.search(REPORT);
    assert.equal(at, -1, `sanitizer report:\n${output.slice(Math.max(0, at - 200), at + 3000)}`);
    assert.equal(status, 0, `a test failed under the sanitizers:\n${failures(output)}`);
    // The suites really ran (a runner that ran nothing also exits 0).
    const passed = Number(/^# pass (\d+)$/m.exec(output)?.[1] ?? 0);
    assert.ok(passed >= 50, `only ${passed} tests passed under the sanitizers`);
  });
});

/** The failing tests' own lines (name, error, seed) rather than the run's tail,
 * which is mostly passing tests and would cut the failure out of a CI log. */
function failures(output: string): string {
  const lines = output.split("\n");
  const out: string[] = [];
  lines.forEach((line, i) => {
    if (/^\s*not ok /.test(line)) out.push(...lines.slice(i, i + 16), "");
  });
  return out.length ? out.join("\n").slice(0, 6000) : output.slice(-4000);
}

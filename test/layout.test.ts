// The rooms of the house keep their doors (docs/architecture.md): only
// dataplane/ reaches the addon, io.ts holds contracts, and the engine speaks
// of ordinary packets only, with the offload plumbing behind the Device and
// Transport. Read from the TypeScript sources, so a move that breaks a
// boundary fails here, not in review.

import assert from "node:assert/strict";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";

const REPO = fileURLToPath(new URL("../../", import.meta.url));

/** Every .ts file under dir, relative to the repository. */
function sources(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(join(REPO, dir))) {
    const path = join(dir, name);
    if (name === "node_modules") continue;
    if (statSync(join(REPO, path)).isDirectory()) out.push(...sources(path));
    else if (name.endsWith(".ts")) out.push(path);
  }
  return out;
}

/** The module specifiers a file imports (static and dynamic). */
function imports(path: string): string[] {
  const text = readFileSync(join(REPO, path), "utf8");
  return [...text.matchAll(/(?:from|import\()\s*"([^"]+)"/g)].map((m) => m[1] as string);
}

describe("layout", () => {
  it("nothing outside dataplane/ imports the addon's raw surface (dataplane/native/)", () => {
    const offenders = ["control", "bench", "lab", "cni"]
      .flatMap(sources)
      .filter((f) => imports(f).some((s) => s.includes("dataplane/native/")))
      .map((f) => relative(REPO, join(REPO, f)));
    assert.deepEqual(offenders, []);
  });

  it("net/ is neutral ground: it imports nothing of dataplane/ or control/", () => {
    for (const f of sources("net")) {
      const bad = imports(f).filter((s) => s.includes("dataplane/") || s.includes("control/"));
      assert.deepEqual(bad, [], `${f} imports ${bad.join(", ")}`);
    }
    assert.ok(sources("net").length > 0, "net/ has sources");
  });

  it("io.ts holds contracts only: it imports nothing", () => {
    assert.deepEqual(imports("dataplane/io.ts"), []);
  });

  it("the engine has no offload vocabulary and imports nothing of offload/ or the addon", () => {
    const text = readFileSync(join(REPO, "dataplane/engine.ts"), "utf8");
    for (const word of [
      /\bgso/i,
      /\bgro\b/i,
      /segSize/,
      /super-?packet/i,
      /coalesc/i,
      /split/i,
      /UDP_SEGMENT/,
      /offload/i,
    ]) {
      assert.ok(!word.test(text), `engine.ts mentions ${word}`);
    }
    assert.ok(!imports("dataplane/engine.ts").some((s) => s.includes("offload/") || s.includes("native")));
  });
});

// CI's shortened soak: `node dist/test/soak.js --seconds 60` (the full one is
// `npm run soak`, 10 minutes) must exit 0 and report every check passed.
// See test/soak.ts for what runs and what each check measures.

import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { after, before, describe, it } from "node:test";
import type { SoakResult } from "./soak.js";

const SOAK_JS = new URL("./soak.js", import.meta.url).pathname;

describe("a 60-second soak of three hosts with traffic and lease churn (netns)", { timeout: 180_000 }, () => {
  let child: ChildProcess;
  let exited: Promise<number | null>;
  let output = "";

  before(() => {
    child = spawn(process.execPath, [SOAK_JS, "--seconds", "60"], { stdio: ["ignore", "pipe", "pipe"] });
    child.stdout?.on("data", (d) => {
      output += String(d);
    });
    child.stderr?.on("data", (d) => {
      output += String(d);
    });
    exited = new Promise((resolve) => child.once("close", (code) => resolve(code)));
  });

  let result: SoakResult | null = null;
  let code: number | null = null;

  // The soak stops by itself; SIGTERM makes it clean up early if this suite is cut short.
  after(async () => {
    if (child !== undefined && child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      await exited;
    }
  });

  const finished = async (): Promise<SoakResult> => {
    if (result === null) {
      code = await exited;
      const line = output.split("\n").find((l) => l.startsWith("SOAK_RESULT "));
      assert.ok(line, `the soak printed no result:\n${output.slice(-3000)}`);
      result = JSON.parse(line.slice("SOAK_RESULT ".length)) as SoakResult;
    }
    return result;
  };

  const check = async (name: string) => {
    const found = (await finished()).checks.find((c) => c.name === name);
    assert.ok(found, `no check named ${name}`);
    return found;
  };

  it("exits 0 with every check passed", async (t) => {
    const r = await finished();
    const summary = output.slice(output.indexOf(`soak: ${r.seconds} s`), output.indexOf("SOAK_RESULT"));
    for (const line of summary.trim().split("\n")) t.diagnostic(line);
    assert.equal(code, 0, summary);
    assert.equal(r.ok, true);
  });

  it("no weftd crashed", async () => {
    assert.equal((await check("crashes")).value, 0);
  });

  it("every lease added or removed reached every weftd within 5 s", async () => {
    const c = await check("lost lease updates");
    assert.equal(c.value, 0, c.detail);
    assert.ok(((await finished()).figures.leaseChanges as number) >= 10, "the registry changed often");
  });

  it("weftd's RSS grew by less than 5 MB after the warm-up", async () => {
    const c = await check("RSS growth (kB)");
    assert.ok(c.value < 5 * 1024, c.detail);
  });

  it("weftd ends with the file descriptors it started with", async () => {
    const c = await check("file descriptors delta");
    assert.equal(c.value, 0, c.detail);
  });

  it("weftd goes back to idle once the traffic stops", async () => {
    const c = await check("idle CPU ticks over 5 s");
    assert.ok(c.ok, c.detail);
  });

  it("every TCP transfer arrived intact", async () => {
    const c = await check("TCP transfers corrupted or failed");
    assert.equal(c.value, 0, c.detail);
  });
});

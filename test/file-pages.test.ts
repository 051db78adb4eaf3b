// releaseFilePages (dataplane/native/file_pages.cc): a process drops the file
// pages it touched and goes on running the code they held, which faults back.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";

const INDEX = fileURLToPath(new URL("../dataplane/native/index.js", import.meta.url));

// In a child: RssFile before and after the release, the bytes released, then
// work that runs code whose pages were dropped (a module load, a regex, zlib).
const CHILD = `
import { readFileSync } from "node:fs";
const { loadAddon } = await import(${JSON.stringify(INDEX)});
const rssFile = () => Number(/RssFile:\\s+(\\d+)/.exec(readFileSync("/proc/self/status", "utf8"))[1]) * 1024;
const addon = loadAddon();
const before = rssFile();
const released = addon.releaseFilePages();
const after = rssFile();
const { gzipSync, gunzipSync } = await import("node:zlib");
const text = "weft ".repeat(1000);
const same = gunzipSync(gzipSync(text)).toString() === text && /^(weft )+$/.test(text);
process.stdout.write(JSON.stringify({ before, released, after, same }));
`;

describe("releaseFilePages", () => {
  it("drops the file pages a process touched, and the process runs on", () => {
    const r = spawnSync(process.execPath, ["--input-type=module", "-e", CHILD], { encoding: "utf8" });
    assert.equal(r.status, 0, r.stderr);
    const o = JSON.parse(r.stdout) as { before: number; released: number; after: number; same: boolean };
    assert.ok(o.released > 0, `released ${o.released} bytes`);
    assert.ok(o.after < o.before - o.released / 2, `RssFile ${o.before} -> ${o.after} after releasing ${o.released}`);
    assert.equal(o.same, true);
  });
});

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

// In a child: a burst of garbage on V8's heap (40 MB of small objects, then
// dropped) and in malloc's (many 64 kB blocks, below mmap's threshold, then
// freed), then reduceMemory; the heap and the anonymous memory before and after.
const BURST = `
import { readFileSync } from "node:fs";
const { loadAddon } = await import(${JSON.stringify(INDEX)});
const rssAnon = () => Number(/RssAnon:\\s+(\\d+)/.exec(readFileSync("/proc/self/status", "utf8"))[1]) * 1024;
const addon = loadAddon();
let garbage = [];
for (let i = 0; i < 400_000; i++) garbage.push({ i, s: String(i) });
let blocks = [];
for (let i = 0; i < 400; i++) blocks.push(Buffer.alloc(64 * 1024, 1));
garbage = null;
blocks = null;
const before = { heap: process.memoryUsage().heapTotal, anon: rssAnon() };
addon.reduceMemory();
const after = { heap: process.memoryUsage().heapTotal, anon: rssAnon() };
const live = Array.from({ length: 1000 }, (_, i) => ({ i })).reduce((n, o) => n + o.i, 0);
process.stdout.write(JSON.stringify({ before, after, live }));
`;

describe("reduceMemory", () => {
  it("gives back the heap and malloc memory a burst left free, and the process runs on", () => {
    const r = spawnSync(process.execPath, ["--max-semi-space-size=2", "--input-type=module", "-e", BURST], {
      encoding: "utf8",
    });
    assert.equal(r.status, 0, r.stderr);
    const o = JSON.parse(r.stdout) as {
      before: { heap: number; anon: number };
      after: { heap: number; anon: number };
      live: number;
    };
    const mib = 1048576;
    assert.ok(o.after.heap < o.before.heap - 10 * mib, `heap ${o.before.heap} -> ${o.after.heap}`);
    assert.ok(o.after.anon < o.before.anon - 20 * mib, `anonymous ${o.before.anon} -> ${o.after.anon}`);
    assert.equal(o.live, 499500);
  });
});

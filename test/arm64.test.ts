// The addon builds for arm64 (aarch64), where flannel's udp backend no longer goes:
// node-gyp --arch=arm64 with Debian's g++-aarch64-linux-gnu, on a copy of the sources so
// the checkout's own x86-64 build/ stays. It is compiled, not run: no arm64 machine here.
// The C++ keeps its x86 path (AVX2 checksum) behind __x86_64__ with a portable scalar
// loop beside it, reads packet fields byte by byte or by memcpy (no unaligned loads),
// and keeps the virtio-net header in native order, as the kernel's TUN does.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { fileURLToPath } from "node:url";

const REPO = fileURLToPath(new URL("../../", import.meta.url));
const EM_AARCH64 = 183;

describe("the addon cross-compiled for arm64", { timeout: 300_000 }, () => {
  const dir = mkdtempSync(join(tmpdir(), "stp-arm64-"));
  after(() => rmSync(dir, { recursive: true, force: true }));

  it("node-gyp --arch=arm64 builds weft.node for aarch64 without a warning", () => {
    cpSync(join(REPO, "binding.gyp"), join(dir, "binding.gyp"));
    mkdirSync(join(dir, "dataplane"));
    cpSync(join(REPO, "dataplane", "native"), join(dir, "dataplane", "native"), { recursive: true });
    symlinkSync(join(REPO, "node_modules"), join(dir, "node_modules"));
    const cross = {
      CC: "aarch64-linux-gnu-gcc",
      CXX: "aarch64-linux-gnu-g++",
      LINK: "aarch64-linux-gnu-g++",
      AR: "aarch64-linux-gnu-ar",
    };
    // npm exec: npm's own node-gyp on PATH and its nodedir setting, as `npm ci` builds.
    const r = spawnSync("npm", ["exec", "-c", "node-gyp rebuild --arch=arm64"], {
      cwd: dir,
      encoding: "utf8",
      env: { ...process.env, ...cross },
    });
    const log = `${r.stdout}${r.stderr}`;
    assert.equal(r.status, 0, log);
    assert.doesNotMatch(log, /warning:/);
    const elf = readFileSync(join(dir, "build", "Release", "weft.node"));
    assert.equal(elf.subarray(0, 4).toString("latin1"), "\x7fELF");
    assert.equal(elf[4], 2, "64-bit");
    assert.equal(elf[5], 1, "little-endian");
    assert.equal(elf.readUInt16LE(18), EM_AARCH64, "e_machine is AArch64");
  });
});

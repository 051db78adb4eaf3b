// The scale bench's churn driver against a file registry and a stand-in for
// weftd (a /metrics endpoint and the "peer added/removed" log lines a watch
// of the registry gives): what it writes, when it starts, and what it asks
// weftd for. No timings are asserted.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { appendFileSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { ChurnCommand, ChurnResult } from "../bench/scale/driver.js";
import { SCALE_CONFIG } from "../bench/scale/peers.js";
import { FileRegistry } from "../control/registry/file.js";
import type { Watch } from "../control/registry/registry.js";
import { formatIpv4, formatPrefix } from "../net/addr.js";

const DRIVER = new URL("../bench/scale/driver.js", import.meta.url).pathname;

/** Runs the driver; `go` is written to its stdin once it says ready (null: stdin closed at once). */
function runDriver(
  command: object,
  onReady: (() => void) | null,
): Promise<{ lines: { phase?: string }[]; result: ChurnResult }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [DRIVER, JSON.stringify(command)], { stdio: ["pipe", "pipe", "pipe"] });
    if (onReady === null) child.stdin.end();
    const lines: { phase?: string }[] = [];
    let buffered = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => {
      buffered += d;
      for (let nl = buffered.indexOf("\n"); nl >= 0; nl = buffered.indexOf("\n")) {
        const line = JSON.parse(buffered.slice(0, nl)) as { phase?: string };
        buffered = buffered.slice(nl + 1);
        lines.push(line);
        if (line.phase === "ready" && onReady !== null) {
          onReady();
          child.stdin.end("go\n");
        }
      }
    });
    child.stderr.setEncoding("utf8").on("data", (d: string) => {
      stderr += d;
    });
    child.once("close", (code) => {
      if (code !== 0) reject(new Error(`driver exit ${code}: ${stderr}`));
      else resolve({ lines, result: lines[lines.length - 1] as unknown as ChurnResult });
    });
  });
}

describe("bench scale churn driver", () => {
  let dir: string;
  let server: Server;
  let scrapes: number;
  let watcher: Watch;
  let registry: FileRegistry;
  let writes: string[];
  const logPath = () => join(dir, "weftd.log");

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "weft-scale-driver-"));
    registry = await FileRegistry.open(join(dir, "registry"));
    await registry.setNetworkConfig(SCALE_CONFIG);
    writeFileSync(logPath(), "");
    writes = [];
    scrapes = 0;
    server = createServer((_req, res) => {
      scrapes++;
      res.end(
        "weft_leases 0\nweft_table_swapped_at_seconds 0\nweft_table_updates_total 0\nweft_table_update_seconds_total 0\nweft_table_update_max_seconds 0\n",
      );
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    // weftd's part: a line per peer added or removed, as control/node.ts logs them.
    const listing = await registry.getLeases();
    watcher = registry.watchLeases(listing.revision, {
      onResync: () => {},
      onEvent: (e) => {
        const msg = e.type === "put" ? "peer added" : "peer removed";
        const subnet = e.type === "put" ? e.lease.subnet : e.subnet;
        const ip = e.type === "put" ? formatIpv4(e.lease.publicIp) : "-";
        writes.push(`${msg} ${formatPrefix(subnet)}`);
        appendFileSync(
          logPath(),
          `${JSON.stringify({ time: Date.now(), msg, lease: `${formatPrefix(subnet)} -> ${ip}` })}\n`,
        );
      },
    });
  });
  after(async () => {
    watcher.close();
    await registry.close();
    await new Promise((r) => server.close(r));
    rmSync(dir, { recursive: true, force: true });
  });

  const command = (firstIndex: number, extra: Partial<ChurnCommand>): ChurnCommand => ({
    command: "churn",
    registry: { kind: "file", dir: join(dir, "registry") },
    firstIndex,
    baselineSeconds: 0,
    changes: 6,
    rate: 200,
    pollMs: 10,
    metricsPort: (server.address() as AddressInfo).port,
    logPath: logPath(),
    ...extra,
  });

  it("waits for the go before any write, then adds and removes each peer once and sees every change", async () => {
    const seenAtReady: number[] = [];
    const { lines, result } = await runDriver(command(100, { waitForGo: true, pollMetrics: false }), () =>
      seenAtReady.push(writes.length),
    );
    assert.deepEqual(seenAtReady, [0], "nothing written before the go");
    assert.deepEqual(
      lines.map((l) => l.phase),
      ["ready", "baseline", "churn", "done"],
    );
    assert.equal(result.unseen, 0);
    assert.equal(result.latencies_ms.length, 6);
    assert.equal(writes.filter((w) => w.startsWith("peer added")).length, 3);
    assert.equal(writes.filter((w) => w.startsWith("peer removed")).length, 3);
    assert.ok(result.cpu_seconds > 0);
    assert.deepEqual(Object.keys(result.table_updates).sort(), ["count", "max_seconds", "seconds"]);
  });

  it("without pollMetrics reads /metrics only to start and end (three scrapes), with it at every look", async () => {
    scrapes = 0;
    await runDriver(command(200, { pollMetrics: false }), null);
    assert.equal(scrapes, 3);
    scrapes = 0;
    await runDriver(command(300, { baselineSeconds: 1 }), null);
    assert.ok(scrapes > 3, `${scrapes} scrapes`);
  });
});

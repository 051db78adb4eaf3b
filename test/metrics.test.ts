import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { countSwap, createMetrics, type MetricSources, newTableStats } from "../control/metrics.js";
import { Counters, Drop } from "../dataplane/counters.js";

/** Sources with nothing to report but the given table. */
function quietSources(table: { generation: number; swappedAt: number }): MetricSources {
  return {
    counters: new Counters(),
    leaseCount: () => 0,
    leaseExpiresAt: () => null,
    registryConnected: () => true,
    ignoredLeases: () => 0,
    deviceWriteErrors: () => 0,
    transportSendErrors: () => 0,
    transportSendRetries: () => 0,
    transportGsoFallbacks: () => 0,
    table,
  };
}

describe("metrics", () => {
  it("report the dataplane's absolute counts, the same on every scrape", async () => {
    const counters = new Counters();
    counters.rx.drops[Drop.UnknownSender] = 5;
    counters.tx.outPackets = 7;
    const registry = createMetrics({
      counters,
      leaseCount: () => 2,
      leaseExpiresAt: () => null,
      registryConnected: () => true,
      ignoredLeases: () => 6,
      deviceWriteErrors: () => 1,
      transportSendErrors: () => 3,
      transportSendRetries: () => 4,
      transportGsoFallbacks: () => 8,
      deviceTruncatedDrops: () => 9,
      coalesced: () => ({ superPackets: 10, segments: 11 }),
      arenaReleases: () => [12, 13],
    });
    for (let scrape = 0; scrape < 3; scrape++) {
      const text = await registry.metrics();
      assert.match(text, /^weft_drops_total\{direction="rx",reason="unknown_sender"\} 5$/m);
      assert.match(text, /^weft_drops_total\{direction="rx",reason="write_error"\} 1$/m);
      assert.match(text, /^weft_drops_total\{direction="tx",reason="send_error"\} 3$/m);
      assert.match(text, /^weft_packets_total\{direction="tx",stage="out"\} 7$/m);
      assert.match(text, /^weft_leases 2$/m);
      assert.match(text, /^weft_send_retries_total 4$/m);
      assert.match(text, /^weft_gso_fallbacks_total 8$/m);
      assert.match(text, /^weft_leases_ignored 6$/m);
      assert.match(text, /^weft_tun_truncated_drops_total 9$/m);
      assert.match(text, /^weft_coalesced_super_packets_total 10$/m);
      assert.match(text, /^weft_coalesced_packets_total 11$/m);
      assert.match(text, /^weft_arena_releases_total\{direction="tx"\} 12$/m);
      assert.match(text, /^weft_arena_releases_total\{direction="rx"\} 13$/m);
    }
  });

  it("say how many forwarding tables went in and when the last one did", async () => {
    const table = { generation: 0, swappedAt: 0 };
    const registry = createMetrics(quietSources(table));
    assert.match(await registry.metrics(), /^weft_table_generation 0$/m);
    assert.match(await registry.metrics(), /^weft_table_swapped_at_seconds 0$/m);
    table.generation = 3;
    table.swappedAt = 1_700_000_000_250;
    const text = await registry.metrics();
    assert.match(text, /^weft_table_generation 3$/m);
    assert.match(text, /^weft_table_swapped_at_seconds 1700000000.25$/m);
  });
});

describe("table update costs", () => {
  it("count every table but only the updates after the first build in the cost, with their sum and maximum", async () => {
    const table = newTableStats();
    const registry = createMetrics(quietSources(table));
    assert.match(await registry.metrics(), /^weft_table_updates_total 0$/m);
    countSwap(table, 0.5, true, 1000);
    countSwap(table, 0.002, false, 2000);
    countSwap(table, 0.004, false, 3000);
    countSwap(table, 0.001, false, 4000);
    assert.deepEqual(table, {
      generation: 4,
      swappedAt: 4000,
      updates: 3,
      updateSeconds: 0.002 + 0.004 + 0.001,
      updateMaxSeconds: 0.004,
    });
    const text = await registry.metrics();
    assert.match(text, /^weft_table_generation 4$/m);
    assert.match(text, /^# TYPE weft_table_updates_total counter\nweft_table_updates_total 3$/m);
    assert.match(text, /^weft_table_update_seconds_total 0\.007$/m);
    assert.match(text, /^# TYPE weft_table_update_max_seconds gauge\nweft_table_update_max_seconds 0\.004$/m);
  });
});

describe("metrics text", () => {
  it("gives each family its HELP and TYPE lines before its samples", async () => {
    const table = { generation: 0, swappedAt: 0 };
    const text = await createMetrics({
      ...quietSources(table),
      leaseCount: () => 1,
      leaseExpiresAt: () => 1_700_000_000_500,
      registryConnected: () => false,
    }).metrics();
    assert.match(
      text,
      /^# HELP weft_leases Peer leases in the forwarding table\n# TYPE weft_leases gauge\nweft_leases 1$/m,
    );
    assert.match(text, /^# TYPE weft_packets_total counter\nweft_packets_total\{direction="tx",stage="in"\} 0$/m);
    assert.match(text, /^weft_registry_connected 0$/m);
    assert.match(text, /^weft_lease_expiry_timestamp_seconds 1700000000.5$/m);
    assert.ok(text.endsWith("\n"));
  });
});

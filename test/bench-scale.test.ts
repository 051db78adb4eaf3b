// The scale bench's made-up cluster and its report, not its speed: every
// made-up peer gets its own lease in 10/8 outside the real hosts' 10.244/16
// and a unicast underlay address in 198.19/16; the report's table and chart
// carry every point.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { scaleChartSvg } from "../bench/scale/chart.js";
import { bytesPerPeer, cpuLines, medianPoint, scaleReport, updateLines } from "../bench/scale/main.js";
import { MAX_PEERS, peerNode, peerPublicIp, peerSubnet } from "../bench/scale/peers.js";
import { CpuTally, inNetns, pairRatio, type ScalePoint } from "../bench/scale/run.js";
import { formatIpv4, formatPrefix, isMartian, prefixesOverlap } from "../net/addr.js";

describe("bench scale peers", () => {
  it("gives 10,000 peers distinct /24 leases in 10/8, none in 10.244/16", () => {
    const seen = new Set<string>();
    const pods = { base: ((10 << 24) | (244 << 16)) >>> 0, len: 16 };
    for (let i = 0; i < 10_000; i++) {
      const s = peerSubnet(i);
      assert.equal(s.len, 24);
      assert.equal(s.base >>> 24, 10, formatPrefix(s));
      assert.equal(prefixesOverlap(s, pods), false, formatPrefix(s));
      seen.add(formatPrefix(s));
    }
    assert.equal(seen.size, 10_000);
    assert.throws(() => peerSubnet(MAX_PEERS), /peer index \d+ is outside 0\.\.\d+/);
  });

  it("gives each peer a unicast underlay address in 198.19.0.0/16, never .0 or .255", () => {
    const seen = new Set<number>();
    for (let i = 0; i < 10_000; i++) {
      const ip = peerPublicIp(i);
      assert.equal(ip >>> 16, (198 << 8) | 19, formatIpv4(ip));
      assert.ok((ip & 0xff) !== 0 && (ip & 0xff) !== 255, formatIpv4(ip));
      assert.equal(isMartian(ip), false);
      seen.add(ip);
    }
    assert.equal(seen.size, 10_000);
  });
});

describe("bench scale Node objects", () => {
  it("are several kB, as real nodes, and carry the peer's podCIDR and public-ip annotation", () => {
    const node = peerNode(300) as {
      metadata: { name: string; annotations: Record<string, string> };
      spec: { podCIDR: string; podCIDRs: string[] };
    };
    const size = JSON.stringify(node).length;
    assert.ok(size >= 4000 && size <= 12_000, `${size} bytes`);
    assert.equal(node.metadata.name, "peer-300");
    assert.equal(node.spec.podCIDR, formatPrefix(peerSubnet(300)));
    assert.deepEqual(node.spec.podCIDRs, [node.spec.podCIDR]);
    assert.equal(node.metadata.annotations["flannel.alpha.coreos.com/public-ip"], formatIpv4(peerPublicIp(300)));
    assert.equal(node.metadata.annotations["flannel.alpha.coreos.com/kube-subnet-manager"], "true");
  });
});

describe("bench scale CPU tally", () => {
  it("sums each process over the windows and leaves one that never ran as null, not 0", () => {
    const tally = new CpuTally();
    tally.add("writer", null);
    tally.add("weftd_h1", 0.5);
    tally.add("writer", null);
    tally.add("weftd_h1", 0.25);
    tally.add("registry", null);
    tally.add("registry", 0.1);
    // No window timed yet: no shares either.
    assert.equal(tally.shares().weftd_h1, null);
  });

  it("takes a process's CPU over a window, a process absent from it as null, the rest of the machine apart", async () => {
    const tally = new CpuTally();
    const pids = { weftd_h1: process.pid, weftd_h2: process.pid, writer: null, registry: null };
    for (let w = 0; w < 2; w++) {
      await tally.window(pids, async () => {
        // Spin until this process has used some CPU ticks.
        const start = process.cpuUsage();
        while (process.cpuUsage(start).user < 100_000) {}
      });
    }
    const shares = tally.shares();
    assert.ok((shares.weftd_h1 as number) > 0);
    assert.equal(shares.writer, null);
    assert.equal(shares.registry, null);
    assert.ok((shares.rest as number) >= 0);
  });
});

describe("bench scale TCP pairs", () => {
  it("take the median of each pair's own ratio, not the ratio of the medians, and skip a pair with no plain rate", () => {
    const pairs = [
      { plain_gbps: 4, churn_gbps: 3.6 }, // 0.9
      { plain_gbps: 2, churn_gbps: 2 }, // 1.0 (the machine was busy for both halves)
      { plain_gbps: 6, churn_gbps: 4.8 }, // 0.8
      { plain_gbps: 0, churn_gbps: 1 },
    ];
    assert.equal(pairRatio(pairs), 0.9);
    assert.equal(pairRatio([]), null);
    assert.equal(pairRatio([{ plain_gbps: 0, churn_gbps: 0 }]), null);
  });
});

describe("bench scale report", () => {
  const point = (mode: "file" | "etcd", peers: number, cpu: number): ScalePoint => ({
    mode,
    peers,
    seed_seconds: 1,
    ready_s: 0.5,
    cpu_to_ready_s: 0.6,
    memory_after_start: { rss_mb: 68, peak_rss_mb: 70, anon_mb: 24, pss_mb: 30 },
    log_lines_at_start: peers + 10,
    changes: 100,
    cpu_per_change_ms: cpu,
    cpu_baseline_pct: 1,
    change_to_table_p50_ms: 20,
    change_to_table_p99_ms: 90,
    change_to_table_max_ms: 95,
    changes_unseen: 0,
    tcp_gbps: 4,
    tcp_churn_gbps: 3,
    tcp_churn_ratio: 0.75,
    tcp_churn_changes_seen: 50,
    tcp_cpu_pct: {
      plain: { weftd_h1: 61, weftd_h2: 58, writer: null, registry: mode === "etcd" ? 2 : null, rest: 70 },
      churn: { weftd_h1: 60.4, weftd_h2: 57, writer: 12, registry: mode === "etcd" ? 9 : null, rest: 71 },
    },
  });
  const points = [point("file", 100, 3.5), point("file", 5000, 70), point("etcd", 100, 4)];
  const o = { rate: 10, churnSeconds: 10, settleSeconds: 5, tcpSeconds: 5, tcpReps: 3, pollMs: 25, noTcp: false };

  it("has a table row per point with its cost per change and the TCP ratio", () => {
    const text = scaleReport(points, o, "machine").join("\n");
    assert.match(text, /^file\s+5,000\s.*\s70\.00\s.*0\.75×$/m);
    assert.equal(text.split("\n").filter((l) => /^(file|etcd)\s/.test(l)).length, 3);
  });

  it("says per point where the CPU went during TCP without and with churn, naming only processes that ran", () => {
    const lines = cpuLines(points);
    assert.equal(lines[0], "CPU % of a core during TCP, without → with churn:");
    assert.equal(lines.filter((l) => l.startsWith("  ")).length, 3);
    assert.equal(
      lines[2],
      "  file 5,000: weftd h1 61 → 60, weftd h2 58 → 57, churn writer - → 12, rest of the machine 70 → 71",
    );
    assert.match(
      lines[3] as string,
      /^ {2}etcd 100: .*churn writer - → 12, registry server 2 → 9, rest of the machine 70 → 71$/,
    );
    const skipped = { ...points[0], tcp_cpu_pct: { plain: null, churn: null } } as ScalePoint;
    assert.deepEqual(cpuLines([skipped]), []);
  });

  it("gives the pairs' range after the ratio when there are several pairs", () => {
    const paired = {
      ...points[1],
      tcp_churn_ratio: 0.9,
      tcp_pairs: [
        { plain_gbps: 4, churn_gbps: 3.6 },
        { plain_gbps: 2, churn_gbps: 2 },
        { plain_gbps: 6, churn_gbps: 4.8 },
      ],
    } as ScalePoint;
    assert.match(scaleReport([paired], o, "machine").join("\n"), /^file\s+5,000\s.*\s0\.90× \[0\.80–1\.00\]$/m);
  });

  it("gives weftd's table update cost per point that has it, a dash for a missing half", () => {
    const withCost = { ...points[1], table_update_mean_us: 45.4, table_update_max_us: 480 } as ScalePoint;
    const half = { ...points[2], table_update_mean_us: null, table_update_max_us: 900 } as ScalePoint;
    assert.deepEqual(updateLines([points[0] as ScalePoint, withCost, half]), [
      "weftd's table update per change on its forwarding thread, mean during churn / longest, µs:",
      "  file 5,000: 45 / 480",
      "  etcd 100: - / 900",
      "",
    ]);
    assert.deepEqual(updateLines([points[0] as ScalePoint]), []);
  });

  it("says when the churn writer and the registry ran niced, standing in for other machines", () => {
    assert.doesNotMatch(scaleReport(points, o, "machine").join("\n"), /nice/);
    assert.match(
      scaleReport(points, { ...o, nice: 10 }, "machine").join("\n"),
      /churn writer, etcd and API server at nice 10, standing in for other machines/,
    );
    assert.deepEqual(inNetns("ns1", 10), ["nice", "-n", "10", "ip", "netns", "exec", "ns1"]);
    assert.deepEqual(inNetns("ns1"), ["ip", "netns", "exec", "ns1"]);
  });

  it("states anonymous memory per peer against the mode's smallest count", () => {
    const small = point("file", 100, 1);
    const big = { ...point("file", 5100, 1), memory_after_start: { ...small.memory_after_start, anon_mb: 29 } };
    const all = [small, big, point("etcd", 100, 1)];
    assert.equal(bytesPerPeer(all, small), null);
    assert.equal(bytesPerPeer(all, big), (5 * 2 ** 20) / 5000);
    assert.match(scaleReport(all, o, "machine").join("\n"), /^file\s+5,100\s.*\s1049\s/m);
  });

  it("takes each figure's median over runs, and a figure missing from any run is missing", () => {
    const a = point("file", 5000, 3);
    const b = {
      ...point("file", 5000, 1),
      ready_s: 2,
      memory_after_start: { ...a.memory_after_start, anon_mb: 30 },
      tcp_churn_ratio: 0.9,
    };
    const c = { ...point("file", 5000, 2), ready_s: 0.1, tcp_churn_ratio: 0.95 };
    const m = medianPoint([a, b, c]);
    assert.equal(m.cpu_per_change_ms, 2);
    assert.equal(m.ready_s, 0.5);
    assert.equal(m.memory_after_start.anon_mb, 24);
    assert.equal(m.tcp_churn_ratio, 0.9);
    assert.equal(medianPoint([a, { ...b, tcp_gbps: null, tcp_churn_ratio: null }]).tcp_churn_ratio, null);
    assert.equal(medianPoint([a, b]).cpu_per_change_ms, 2, "even count: mean of the middle two");
    assert.throws(() => medianPoint([]), /no runs/);
    // TCP pairs from every run are pooled: the ratio is their median, not the median of the runs' medians.
    const pairs = (xs: number[][]) =>
      xs.map(([plain, churn]) => ({ plain_gbps: plain as number, churn_gbps: churn as number }));
    const pooled = medianPoint([
      { ...a, tcp_pairs: pairs([[4, 4]]) },
      {
        ...b,
        tcp_pairs: pairs([
          [4, 2],
          [4, 2.2],
        ]),
      },
      { ...c, tcp_pairs: pairs([[4, 3.6]]) },
    ]);
    assert.equal(pooled.tcp_pairs?.length, 4);
    assert.equal(pooled.tcp_churn_ratio, (0.55 + 0.9) / 2);
    assert.match(scaleReport([m], { ...o, reps: 3 }, "machine").join("\n"), /medians of 3 runs per point/);
    assert.doesNotMatch(scaleReport([m], o, "machine").join("\n"), /medians of/);
  });

  it("draws one line per registry mode in each panel", () => {
    const svg = scaleChartSvg("t", "s", [{ title: "CPU", unit: "ms", value: (p) => p.cpu_per_change_ms }], points);
    assert.match(svg, /^<svg [^>]*>/);
    assert.equal(svg.match(/<polyline /g)?.length, 1, "file has two points, etcd one");
    assert.equal(svg.match(/<circle /g)?.length, 3);
  });
});

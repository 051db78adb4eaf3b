// The bench harness, not speed: the replay forwards and drops exactly what it
// should, flannel's lookup agrees with the lease table, the report math and
// JSON shapes hold, the lab's packet rewriting keeps checksums valid, the
// UDP generator/sink pair counts a burst exactly on loopback, and the lab's
// flannel mode (a C proxy built the way flannel's udp backend is) carries
// every workload and cleans up. No timings are asserted anywhere.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { promisify } from "node:util";
import { chartTitle, labJson } from "../bench/lab/figures.js";
import { rewriteForLab } from "../bench/lab/live-replay.js";
import { parseMode } from "../bench/lab/modes.js";
import { parseSnmp } from "../bench/lab/probes.js";
import { tcpRepLines } from "../bench/lab/table.js";
import { detectHypervisor, parsePerfStatCsv, parseStraceSummary } from "../bench/lab/truth.js";
import { parsePingTimes, type RepFigures } from "../bench/lab/workloads.js";
import {
  cutBatches,
  dropsOf,
  FlannelRouteList,
  generatedInput,
  makeRig,
  measure,
  networkFor,
  type ReplayInput,
  replayOnce,
} from "../bench/replay.js";
import {
  chartSvg,
  fmtRatioRange,
  formatTable,
  machineInfo,
  median,
  percentile,
  ratio,
  summarize,
  writeResult,
} from "../bench/report.js";
import { type RecvResult, type SendResult, spawnUdpgen } from "../bench/udpgen.js";
import { LeaseTable, type PeerLease } from "../dataplane/leases.js";
import { internetChecksum, onesSum } from "../dataplane/wire/checksum.js";
import { generateTrace, Prng } from "../fixtures/tracegen.js";
import { type Ipv4Prefix, parseIpv4, parsePrefix } from "../net/addr.js";

const execFileAsync = promisify(execFile);

function setTtl(p: Uint8Array, ttl: number): void {
  p[8] = ttl;
  p[10] = 0;
  p[11] = 0;
  const s = internetChecksum(p, 0, 20);
  p[10] = s >> 8;
  p[11] = s & 0xff;
}

/** A 256-lease trace where only the first 200 leases are known and every 7th routable packet has TTL 1. */
function tinyTrace() {
  const trace = generateTrace({ size: "imix", packets: 1000, leases: 256, seed: 7 });
  const all = generatedInput("imix", 256, 1); // for network and subnet length only
  const known = 200;
  const leases: PeerLease[] = trace.leases.slice(0, known).map((l) => ({
    subnet: parsePrefix(l.subnet, true) as Ipv4Prefix,
    publicIp: parseIpv4(l.publicIp),
  }));
  const packets = trace.packets.map((p) => p.slice());
  let noRoute = 0;
  let ttl = 0;
  let routable = 0;
  const expectedPeers: number[] = [];
  packets.forEach((p, i) => {
    const dest = trace.destinations[i] as number;
    if (dest >= known) {
      noRoute++;
      return;
    }
    if (routable++ % 7 === 0) {
      setTtl(p, 1);
      ttl++;
      return;
    }
    expectedPeers.push(parseIpv4(trace.leases[dest]?.publicIp as string));
  });
  const input: ReplayInput = {
    name: "tiny",
    source: "test",
    packets,
    network: all.network,
    subnetLen: all.subnetLen,
    leases,
  };
  return { input, noRoute, ttl, expectedPeers, total: packets.length };
}

describe("bench replay harness", () => {
  for (const impl of ["engine", "baseline"] as const) {
    it(`${impl}: forwards every packet with a lease, counts each no-route and TTL drop exactly`, () => {
      const t = tinyTrace();
      assert.ok(t.noRoute > 0 && t.ttl > 0);
      const rig = makeRig(impl, t.input, { record: true });
      replayOnce(rig, t.input.packets);
      const c = rig.counters;
      assert.equal(c.inPackets, t.total);
      assert.deepEqual(dropsOf(c), { no_route: t.noRoute, ttl_expired: t.ttl });
      assert.equal(c.outPackets, t.total - t.noRoute - t.ttl);
      assert.equal(rig.transport.sent.length, t.expectedPeers.length);
      assert.deepEqual(
        rig.transport.sent.map((d) => d.addr),
        t.expectedPeers,
      );
      for (const d of rig.transport.sent) {
        assert.equal(d.port, 8285);
        assert.equal(d.data[8], 63);
        assert.equal(onesSum(d.data, 0, 20), 0xffff, "header checksum still valid after TTL-1");
      }
    });
  }

  it("never modifies the trace: every pass starts from fresh TTLs", () => {
    const input = generatedInput(64, 16, 256);
    const before = input.packets.map((p) => p.slice());
    const rig = makeRig("engine", input);
    const batches = cutBatches(input.packets);
    // Far more than 64 passes: TTL 64 would run out if the decrement leaked.
    for (let i = 0; i < 100; i++) measure(rig, batches, 0, { next: 0 });
    assert.equal(rig.counters.dropped(), 0);
    assert.equal(rig.counters.outPackets, rig.counters.inPackets);
    assert.ok(rig.counters.inPackets >= 100 * 16 * 64);
    for (let i = 0; i < before.length; i++) assert.deepEqual(input.packets[i], before[i]);
  });

  it("measure() reports what the fake transport forwarded", () => {
    const input = generatedInput(1400, 4, 128);
    const rig = makeRig("baseline", input);
    const m = measure(rig, cutBatches(input.packets), 1, { next: 0 });
    assert.ok(m.packets > 0 && m.packets % 64 === 0);
    assert.equal(m.bytes, m.packets * 1400);
    assert.equal(rig.transport.outPackets, m.packets);
    assert.ok(m.seconds > 0);
  });

  it("flannel's lookup agrees with LeaseTable on random addresses, also as its order changes", () => {
    const rng = new Prng(42);
    for (const n of [1, 3, 256, 1000]) {
      const input = generatedInput(64, n, 1);
      const table = LeaseTable.build(input.network, input.subnetLen, input.leases, 8285);
      const list = new FlannelRouteList(input.leases);
      for (let i = 0; i < 20_000; i++) {
        // Half inside the network (hitting leases and holes), half anywhere.
        const dst = i % 2 === 0 ? (input.network.base + rng.below(2 ** (32 - input.network.len))) >>> 0 : rng.next();
        const id = table.lookup(dst);
        const want = id < 0 ? -1 : (table.peerAddr[id] as number);
        assert.equal(list.find(dst), want, `dst ${dst} with ${n} leases`);
      }
    }
  });

  it("networkFor picks the flannel network that holds the leases", () => {
    assert.deepEqual(networkFor(generatedInput(64, 200, 1).leases), parsePrefix("10.244.0.0/16"));
    assert.deepEqual(networkFor(generatedInput(64, 4096, 1).leases), parsePrefix("10.0.0.0/8"));
    const odd = [{ subnet: parsePrefix("192.168.4.0/24") as Ipv4Prefix, publicIp: 1 }];
    assert.deepEqual(networkFor(odd), parsePrefix("192.168.4.0/23"));
  });
});

describe("bench report math", () => {
  it("median, min and max over repetitions, ignoring non-numbers", () => {
    assert.equal(median([3, 1, 2]), 2);
    assert.equal(median([4, 1, 3, 2]), 2.5);
    assert.ok(Number.isNaN(median([])));
    assert.deepEqual(summarize([5, Number.NaN, 1, 9]), { median: 5, min: 1, max: 9, n: 3 });
    assert.deepEqual(summarize([7]), { median: 7, min: 7, max: 7, n: 1 });
    assert.equal(summarize([]).n, 0);
  });

  it("ratios are null when a side is missing or zero", () => {
    assert.equal(ratio(3, 4), 0.75);
    assert.equal(ratio(1, 0), null);
    assert.equal(ratio(Number.NaN, 1), null);
    assert.equal(ratio(undefined, 1), null);
  });

  it("percentiles by nearest rank", () => {
    const v = Array.from({ length: 100 }, (_, i) => 100 - i); // 100..1
    assert.equal(percentile(v, 50), 50);
    assert.equal(percentile(v, 99), 99);
    assert.equal(percentile([42], 99), 42);
  });

  it("tables align their columns", () => {
    const t = formatTable(
      ["a", "num"],
      [
        ["xx", "1"],
        ["y", "12345"],
      ],
    ).split("\n");
    assert.deepEqual(t, ["a     num", "--  -----", "xx      1", "y   12345"]);
  });

  it("writes <kind>-<timestamp>.json into the results directory", () => {
    const dir = mkdtempSync(join(tmpdir(), "weft-bench-test-"));
    try {
      const path = writeResult(
        "replay",
        { kind: "replay", x: 1 },
        { dir, date: new Date(Date.UTC(2025, 0, 2, 3, 4, 5)) },
      );
      assert.equal(path, join(dir, "replay-2025-01-02T03-04-05Z.json"));
      assert.deepEqual(readdirSync(dir), ["replay-2025-01-02T03-04-05Z.json"]);
      assert.deepEqual(JSON.parse(readFileSync(path, "utf8")), { kind: "replay", x: 1 });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("lists TCP per repetition as weft ÷ the vxlan run of the same repetition, with the others' CPU of each", () => {
    const rep = (tcp: number, others: number) => ({ tcp_gbps: tcp, tcp_others_cores: others }) as RepFigures;
    const lines = tcpRepLines(
      new Map([
        ["vxlan", [rep(10, 0.1), rep(8, 0)]],
        ["weft", [rep(6, 0.25), rep(2, 1.5)]],
      ]),
    );
    assert.equal(lines.length, 3);
    assert.equal(lines[1], "  rep 1: 6.00 ÷ 10.00 Gbit/s = 0.60×  (others 0.10 / 0.25)");
    assert.equal(lines[2], "  rep 2: 2.00 ÷ 8.00 Gbit/s = 0.25×  (others 0.00 / 1.50)");
    assert.deepEqual(tcpRepLines(new Map([["weft", [rep(6, 0)]]])), [], "nothing to pair without vxlan");
  });

  it("the lab JSON has the shape issue 4 fixes, medians, ranges and weft ÷ vxlan ratios", () => {
    const rep = (tcp: number, pps: number, rtt: number, extra: Partial<RepFigures> = {}): RepFigures => ({
      tcp_gbps: tcp,
      udp1400_pps: pps,
      udp64_pps: pps / 2,
      udp1400_loss: 1,
      udp64_loss: 2,
      rtt_p50_us: rtt,
      rtt_p99_us: rtt * 2,
      rtt_sparse_p50_us: rtt * 5,
      rtt_sparse_p99_us: rtt * 10,
      tcp_retransmits: 0,
      tcp_others_cores: 0,
      udp1400_drops: {},
      udp64_drops: {},
      udp1400_sender_pps: pps,
      udp64_sender_pps: pps,
      ping_lost: 0,
      ...extra,
    });
    const reps = new Map<"direct" | "vxlan" | "weft", RepFigures[]>([
      ["direct", [rep(14, 150_000, 8), rep(12, 140_000, 7), rep(16, 160_000, 9)]],
      ["vxlan", [rep(10, 100_000, 16), rep(12, 90_000, 14), rep(11, 110_000, 15)]],
      [
        "weft",
        [
          rep(1, 80_000, 40, { cpu_s_per_gb: 3, rss_mb: 50 }),
          rep(2, 70_000, 45, { cpu_s_per_gb: 4, rss_mb: 55 }),
          rep(3, 90_000, 30, { cpu_s_per_gb: 5, rss_mb: 60 }),
        ],
      ],
    ]);
    const { json } = labJson(machineInfo(), { reps: 3 }, reps);
    const round = JSON.parse(JSON.stringify(json));
    assert.equal(round.kind, "lab");
    for (const k of ["kernel", "node", "cores"]) assert.ok(k in round.machine, k);
    assert.deepEqual(Object.keys(round.modes), ["direct", "vxlan", "weft"]);
    for (const mode of ["direct", "vxlan", "weft"]) {
      for (const f of [
        "tcp_gbps",
        "udp1400_pps",
        "udp64_pps",
        "udp1400_loss",
        "udp64_loss",
        "rtt_p50_us",
        "rtt_p99_us",
        "rtt_sparse_p50_us",
        "rtt_sparse_p99_us",
      ]) {
        assert.equal(typeof round.modes[mode][f], "number", `${mode}.${f}`);
        assert.equal(round.modes[mode][`${f}_range`].length, 2);
      }
    }
    assert.equal(round.modes.vxlan.tcp_gbps, 11);
    assert.deepEqual(round.modes.vxlan.tcp_gbps_range, [10, 12]);
    assert.equal(round.modes.weft.cpu_s_per_gb, 4);
    assert.equal(round.modes.weft.rss_mb, 55);
    assert.equal("cpu_s_per_gb" in round.modes.vxlan, false);
    assert.deepEqual(Object.keys(round.ratios), ["tcp_gbps", "udp1400_pps", "udp64_pps", "rtt_p50", "rtt_sparse_p50"]);
    // Ratios of the medians, kept to 4 significant digits.
    assert.equal(round.ratios.tcp_gbps, 0.1818);
    assert.equal(round.ratios.udp1400_pps, 0.8);
    assert.equal(round.ratios.udp64_pps, 0.8);
    assert.equal(round.ratios.rtt_p50, 2.667);
    assert.equal(round.modes.weft.rtt_sparse_p50_us, 200);
    assert.equal(round.ratios.rtt_sparse_p50, 2.667);
    // Per-repetition ratios: 1/10, 2/12, 3/11.
    assert.deepEqual(round.ratio_ranges.tcp_gbps, [0.1, 0.2727]);
    // No flannel run: those ratios are there, and null.
    assert.deepEqual(Object.values(round.ratios_vs_flannel), [null, null, null, null, null]);

    // With a flannel run: its CPU and RSS like weft's, and weft ÷ flannel.
    reps.set("flannel" as "weft", [
      rep(0.5, 40_000, 60, { cpu_s_per_gb: 20, rss_mb: 1 }),
      rep(1, 35_000, 90, { cpu_s_per_gb: 16, rss_mb: 2 }),
      rep(0.75, 30_000, 75, { cpu_s_per_gb: 18, rss_mb: 1.5 }),
    ]);
    const withFlannel = JSON.parse(JSON.stringify(labJson(machineInfo(), { reps: 3 }, reps).json));
    assert.equal(withFlannel.modes.flannel.cpu_s_per_gb, 18);
    assert.equal(withFlannel.modes.flannel.rss_mb, 1.5);
    assert.equal(withFlannel.ratios_vs_flannel.tcp_gbps, 2.667);
    assert.equal(withFlannel.ratios_vs_flannel.udp1400_pps, 2.286);
    assert.equal(withFlannel.ratios_vs_flannel.rtt_p50, 0.5333);
    // Per repetition: 1/0.5, 2/1, 3/0.75.
    assert.deepEqual(withFlannel.ratio_ranges_vs_flannel.tcp_gbps, [2, 4]);
    assert.deepEqual(withFlannel.ratios, round.ratios, "weft ÷ vxlan unchanged");
  });

  it("a ratio cell carries the per-repetition range when there is one", () => {
    assert.equal(fmtRatioRange(3.2109, [2.9, 3.5]), "3.21× [2.90–3.50]");
    assert.equal(fmtRatioRange(3.2109, [3.2109, 3.2109]), "3.21×");
    assert.equal(fmtRatioRange(3.2109, undefined), "3.21×");
    assert.equal(fmtRatioRange(null, [1, 2]), "-");
    assert.equal(fmtRatioRange(0.5, [null, null]), "0.50×");
  });

  it("ratios are null without a vxlan run", () => {
    const { json } = labJson(machineInfo(), {}, new Map());
    assert.deepEqual(json.ratios, {
      tcp_gbps: null,
      udp1400_pps: null,
      udp64_pps: null,
      rtt_p50: null,
      rtt_sparse_p50: null,
    });
  });

  it("the SVG chart is one well-formed document with a bar per mode", () => {
    const s = { median: 2, min: 1, max: 3, n: 3 };
    const svg = chartSvg("t <&>", "sub", [
      {
        title: "A",
        unit: "u",
        bars: [
          { mode: "vxlan", value: s },
          { mode: "weft", value: s, note: "1.00× vxlan" },
        ],
      },
    ]);
    assert.match(svg, /^<svg [^>]*>/);
    assert.match(svg, /<\/svg>\n$/);
    assert.match(svg, /t &lt;&amp;&gt;/);
    assert.equal(svg.match(/<rect /g)?.length, 3); // background + 2 bars
  });
});

describe("bench lab helpers", () => {
  it("the chart's title names every mode it shows, and no other", () => {
    assert.equal(chartTitle(["direct", "vxlan", "weft"]), "weft vs kernel vxlan vs direct routing (bench lab)");
    assert.equal(
      chartTitle(["direct", "vxlan", "weft", "flannel"]),
      "weft vs kernel vxlan vs direct routing vs flannel's udp design (C proxy) (bench lab)",
    );
    assert.equal(chartTitle(["flannel"]), "flannel's udp design (C proxy) (bench lab)");
  });

  it("--hold and --modes take modes by name and name a bad one", () => {
    assert.equal(parseMode("weft", "--hold"), "weft");
    assert.equal(parseMode("vxlan", "--modes"), "vxlan");
    assert.equal(parseMode("flannel", "--modes"), "flannel");
    assert.throws(
      () => parseMode("vxlna", "--hold"),
      /^Error: --hold: "vxlna" is not one of direct, vxlan, weft, flannel$/,
    );
  });

  it("reads strace -c's table: calls per syscall (errors column or not) and the total", () => {
    const s = parseStraceSummary(
      [
        "% time     seconds  usecs/call     calls    errors syscall",
        "------ ----------- ----------- --------- --------- ----------------",
        " 40.00    0.004000           1      3200       800 epoll_pwait",
        " 35.00    0.003500           2      2000           readv",
        " 25.00    0.002500           1      1000           sendmmsg",
        "------ ----------- ----------- --------- --------- ----------------",
        "100.00    0.010000           1      6200       800 total",
      ].join("\n"),
    );
    assert.equal(s.total, 6200);
    assert.deepEqual(s.calls, { epoll_pwait: 3200, readv: 2000, sendmmsg: 1000 });
    assert.equal(parseStraceSummary("").total, 0);
  });

  it("reads perf stat -x, counts by event, leaving out what was not counted", () => {
    const c = parsePerfStatCsv(
      [
        "# started on Wed Dec  2 14:27:09 2026",
        "",
        "45321,,raw_syscalls:sys_enter,151785,100.00,,",
        "20011,,syscalls:sys_enter_sched_yield,151785,100.00,,",
        "<not counted>,,syscalls:sys_enter_poll,0,0.00,,",
        "<not supported>,,syscalls:sys_enter_readv,0,0.00,,",
      ].join("\n"),
    );
    assert.deepEqual(
      [...c],
      [
        ["raw_syscalls:sys_enter", 45321],
        ["syscalls:sys_enter_sched_yield", 20011],
      ],
    );
    assert.equal(parsePerfStatCsv("").size, 0);
  });

  it("names the hypervisor from the kernel's line, else from the cpuid flag", () => {
    const dmesg = "[    0.000000] Hypervisor detected: KVM\n[    0.1] other\n";
    assert.deepEqual(detectHypervisor(dmesg, null, null), { hypervisor: "KVM", hypervisor_source: "dmesg" });
    const flagged = "processor\t: 0\nflags\t\t: fpu vme hypervisor lm\n";
    assert.equal(detectHypervisor(null, flagged, null).hypervisor, "unnamed");
    assert.equal(detectHypervisor("no such line", "flags\t\t: fpu vme lm\n", null).hypervisor, "none");
    assert.equal(detectHypervisor(null, null, "xen").hypervisor, "xen");
    assert.equal(detectHypervisor(null, null, null).hypervisor, null);
  });

  it("parses /proc/net/snmp and ping's per-packet times", () => {
    const snmp = parseSnmp("Ip: Forwarding InReceives\nIp: 1 42\nUdp: InDatagrams RcvbufErrors\nUdp: 7 3\n");
    assert.equal(snmp.get("Ip.InReceives"), 42);
    assert.equal(snmp.get("Udp.RcvbufErrors"), 3);
    const times = parsePingTimes(
      "64 bytes from 10.244.2.2: icmp_seq=1 ttl=62 time=0.045 ms\n64 bytes from 10.244.2.2: icmp_seq=2 ttl=62 time=1.25 ms\n",
    );
    assert.deepEqual(times, [45, 1250]);
  });

  it("rewrites captured packets into p1 → p2 with every checksum valid", () => {
    const trace = generateTrace({ size: "imix", packets: 120, leases: 4, seed: 9 });
    const src = parseIpv4("10.244.1.2");
    const dst = parseIpv4("10.244.2.2");
    const snapped = trace.packets[0]?.subarray(0, 30) as Uint8Array;
    const rw = rewriteForLab([...trace.packets, snapped], src, dst, 1472);
    const oversize = trace.packets.filter((p) => p.length > 1472).length;
    assert.ok(oversize > 0);
    assert.equal(rw.oversize, oversize);
    assert.equal(rw.snapped, 1);
    assert.equal(rw.packets.length, trace.packets.length - oversize);
    let l4checked = 0;
    for (const p of rw.packets) {
      assert.equal(p[8], 64);
      assert.equal(((p[12] << 24) | (p[13] << 16) | (p[14] << 8) | p[15]) >>> 0, src);
      assert.equal(((p[16] << 24) | (p[17] << 16) | (p[18] << 8) | p[19]) >>> 0, dst);
      assert.equal(onesSum(p, 0, 20), 0xffff);
      const proto = p[9];
      const l4len = p.length - 20;
      if (proto === 6 || proto === 17) {
        const pseudo = (src >>> 16) + (src & 0xffff) + (dst >>> 16) + (dst & 0xffff) + proto + l4len;
        assert.equal(onesSum(p, 20, l4len, pseudo), 0xffff, `proto ${proto} checksum`);
        l4checked++;
      } else {
        assert.equal(onesSum(p, 20, l4len), 0xffff, "ICMP checksum untouched and valid");
      }
    }
    assert.ok(l4checked > 0);
  });
});

describe("udpgen on loopback", { timeout: 60_000 }, () => {
  async function burst(size: number, count: number, strays = 0): Promise<{ s: SendResult; r: RecvResult }> {
    const recv = spawnUdpgen(null, [
      "recv",
      "--bind",
      "127.0.0.1",
      "--port",
      "0",
      "--size",
      String(size),
      "--run",
      "6",
      "--count",
      String(count),
      "--timeout",
      "30",
    ]);
    try {
      const port = await recv.ready;
      assert.ok(port > 0);
      if (strays > 0) {
        const other = spawnUdpgen(null, [
          "send",
          "--dst",
          "127.0.0.1",
          "--port",
          String(port),
          "--size",
          String(size),
          "--count",
          String(strays),
          "--run",
          "5",
        ]);
        await other.result;
      }
      // Paced so the sink never falls behind, whatever the socket buffer limits.
      const send = spawnUdpgen(null, [
        "send",
        "--dst",
        "127.0.0.1",
        "--port",
        String(port),
        "--size",
        String(size),
        "--count",
        String(count),
        "--rate",
        "100000",
        "--run",
        "6",
      ]);
      const s = (await send.result) as SendResult;
      const r = (await recv.result) as RecvResult;
      return { s, r };
    } finally {
      if (recv.child.exitCode === null && recv.child.pid !== undefined) process.kill(recv.child.pid, "SIGKILL");
    }
  }

  it("the sink counts exactly the 1000 64-byte datagrams the generator sent", async () => {
    const { s, r } = await burst(64, 1000);
    assert.equal(s.sent, 1000);
    assert.equal(s.errors, 0);
    assert.equal(r.received, 1000);
    assert.equal(r.bytes, 64_000);
    assert.equal(r.seq_end, 1000);
    assert.equal(r.other, 0);
  });

  it("counts 1400-byte datagrams and ignores another run's", async () => {
    const { s, r } = await burst(1400, 500, 37);
    assert.equal(s.sent, 500);
    assert.equal(r.received, 500);
    assert.equal(r.other, 37);
  });
});

describe("bench lab, flannel mode (network namespaces)", { timeout: 300_000 }, () => {
  it("the flannel-design C proxy carries TCP, UDP and pings both ways, and leaves nothing behind", async () => {
    const out = mkdtempSync(join(tmpdir(), "weft-bench-flannel-"));
    try {
      const main = new URL("../bench/main.js", import.meta.url).pathname;
      const r = await execFileAsync(
        process.execPath,
        [main, "lab", "--quick", "--modes", "flannel", "--out-dir", out],
        { timeout: 240_000, killSignal: "SIGKILL" },
      ).catch((err: { stdout?: string; stderr?: string; code?: number }) => {
        assert.fail(`lab --modes flannel failed (${err.code}): ${err.stderr ?? ""}${err.stdout ?? ""}`);
      });
      assert.match(r.stdout, /^flannel\s/m, "the table has a flannel row");
      const [file] = readdirSync(out).filter((f) => f.endsWith(".json"));
      const json = JSON.parse(readFileSync(join(out, file as string), "utf8"));
      const f = json.modes.flannel;
      // Traffic went through the proxies in each workload: figures, not speeds.
      for (const key of ["tcp_gbps", "udp1400_pps", "udp64_pps", "rtt_p50_us", "rtt_sparse_p50_us"]) {
        assert.ok(f[key] > 0, `${key} = ${f[key]}`);
      }
      assert.ok(f.cpu_s_per_gb > 0 && f.rss_mb > 0, "the proxies' CPU and RSS were read");
      assert.deepEqual(Object.values(json.ratios_vs_flannel), [null, null, null, null, null], "no weft run");
      const { stdout: netns } = await execFileAsync("ip", ["netns", "list"]);
      assert.doesNotMatch(netns, /wbench-/);
      const proxies = readdirSync("/proc")
        .filter((d) => /^\d+$/.test(d))
        .filter((d) => {
          try {
            return readFileSync(`/proc/${d}/cmdline`, "utf8").includes("flannel-proxy");
          } catch {
            return false;
          }
        });
      assert.deepEqual(proxies, [], "no proxy process left");
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });
});

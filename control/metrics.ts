// Prometheus metrics (flannel has none). The dataplane keeps plain numbers;
// prom-client reads them in collect callbacks at scrape time, so the hot loop
// never touches a metrics object.

import { Counter, Gauge, Registry } from "prom-client";
import { type Counters, type DirectionCounters, DROP_NAMES, ICMP_NAMES } from "../dataplane/counters.js";
import type { ResyncCounts } from "./iptables.js";

export interface MetricSources {
  readonly counters: Counters;
  /** Peer leases in the forwarding table. */
  leaseCount(): number;
  /** Our lease's expiry, ms since the epoch; null for a reservation or before acquisition. */
  leaseExpiresAt(): number | null;
  registryConnected(): boolean;
  /** Keys under subnets/ that are not routed: unreadable, outside the Network, wrong length, bad PublicIP. */
  ignoredLeases(): number;
  /** Kernel-refused writes/sends (counted by the native layer). */
  deviceWriteErrors(): number;
  transportSendErrors(): number;
  /** Sends stopped for want of kernel memory (ENOBUFS) and retried after a pause. */
  transportSendRetries(): number;
  /** Busy-poll spins: started, those that caught a batch, nanoseconds spent waiting (absent: no dataplane). */
  busyPoll?(): { spins: number; caught: number; waitedNs: number; followUps?: number; followUpHits?: number };
  /** How many forwarding tables the engine has been given, and when the last one was (ms since the epoch). */
  readonly table?: { readonly generation: number; readonly swappedAt: number };
  /** UDP GSO runs the kernel refused; each sent its peer's runs datagram by datagram for a while. */
  transportGsoFallbacks(): number;
  /** Packets read from flannel0 longer than a receive slot, dropped by the native reader (absent: 0). */
  deviceTruncatedDrops?(): number;
  /** Super-packets coalesced toward flannel0 and the packets that went into them (absent: none). */
  coalesced?(): { readonly superPackets: number; readonly segments: number };
  /** iptables syncs by outcome (absent or null: no chains to keep). */
  iptablesResyncs?(): Readonly<ResyncCounts> | null;
}

/**
 * Counters here mirror absolute values kept by the dataplane: each scrape
 * resets the prom-client counter and adds the current value (public API only).
 */
function setTotal(c: Counter<string>, labels: Record<string, string>, value: number): void {
  c.inc(labels, value);
}

export function createMetrics(src: MetricSources): Registry {
  const registry = new Registry();
  const c = src.counters;
  const dirs: [string, DirectionCounters][] = [
    ["tx", c.tx],
    ["rx", c.rx],
  ];

  new Counter({
    name: "weft_packets_total",
    help: "Packets per direction (tx: flannel0 to peers, rx: peers to flannel0) and stage (in: read, out: forwarded)",
    labelNames: ["direction", "stage"],
    registers: [registry],
    collect() {
      this.reset();
      for (const [d, n] of dirs) {
        setTotal(this, { direction: d, stage: "in" }, n.inPackets);
        setTotal(this, { direction: d, stage: "out" }, n.outPackets);
      }
    },
  });
  new Counter({
    name: "weft_bytes_total",
    help: "Inner IP bytes per direction and stage",
    labelNames: ["direction", "stage"],
    registers: [registry],
    collect() {
      this.reset();
      for (const [d, n] of dirs) {
        setTotal(this, { direction: d, stage: "in" }, n.inBytes);
        setTotal(this, { direction: d, stage: "out" }, n.outBytes);
      }
    },
  });
  new Counter({
    name: "weft_drops_total",
    help: "Packets not forwarded, per direction and reason",
    labelNames: ["direction", "reason"],
    registers: [registry],
    collect() {
      this.reset();
      for (const [d, n] of dirs) {
        for (let i = 0; i < DROP_NAMES.length; i++) {
          const reason = DROP_NAMES[i] as string;
          let value = n.drops[i] as number;
          if (d === "tx" && reason === "send_error") value += src.transportSendErrors();
          if (d === "rx" && reason === "write_error") value += src.deviceWriteErrors();
          setTotal(this, { direction: d, reason }, value);
        }
      }
    },
  });
  new Counter({
    name: "weft_send_retries_total",
    help: "Times sending to peers stopped because the kernel was out of buffer memory (ENOBUFS) and was retried after a pause",
    registers: [registry],
    collect() {
      this.reset();
      setTotal(this, {}, src.transportSendRetries());
    },
  });
  new Counter({
    name: "weft_busy_poll_spins_total",
    help: "Spins after a batch (busy polling), and how many of them caught the next batch",
    labelNames: ["outcome"],
    registers: [registry],
    collect() {
      this.reset();
      const b = src.busyPoll?.() ?? { spins: 0, caught: 0 };
      setTotal(this, { outcome: "caught" }, b.caught);
      setTotal(this, { outcome: "ran_out" }, b.spins - b.caught);
    },
  });
  new Counter({
    name: "weft_follow_up_reads_total",
    help: "Reads of flannel0 right after writing to it (a reply is often already queued), by whether they found a packet",
    labelNames: ["outcome"],
    registers: [registry],
    collect() {
      this.reset();
      const b = src.busyPoll?.();
      setTotal(this, { outcome: "hit" }, b?.followUpHits ?? 0);
      setTotal(this, { outcome: "miss" }, (b?.followUps ?? 0) - (b?.followUpHits ?? 0));
    },
  });
  new Counter({
    name: "weft_busy_poll_seconds_total",
    help: "Time spent waiting in busy-poll spins",
    registers: [registry],
    collect() {
      this.reset();
      setTotal(this, {}, (src.busyPoll?.().waitedNs ?? 0) / 1e9);
    },
  });
  new Counter({
    name: "weft_gso_fallbacks_total",
    help: "UDP GSO runs the kernel refused (path MTU, no checksum offload); each sent its peer's runs datagram by datagram for a while",
    registers: [registry],
    collect() {
      this.reset();
      setTotal(this, {}, src.transportGsoFallbacks());
    },
  });
  new Counter({
    name: "weft_tun_truncated_drops_total",
    help: "Packets read from flannel0 that were longer than a receive slot and dropped",
    registers: [registry],
    collect() {
      this.reset();
      setTotal(this, {}, src.deviceTruncatedDrops?.() ?? 0);
    },
  });
  new Counter({
    name: "weft_coalesced_super_packets_total",
    help: "Super-packets built from packets received from peers and written to flannel0 in one write each (GRO)",
    registers: [registry],
    collect() {
      this.reset();
      setTotal(this, {}, src.coalesced?.().superPackets ?? 0);
    },
  });
  new Counter({
    name: "weft_coalesced_packets_total",
    help: "Packets received from peers that went into coalesced super-packets",
    registers: [registry],
    collect() {
      this.reset();
      setTotal(this, {}, src.coalesced?.().segments ?? 0);
    },
  });
  new Counter({
    name: "weft_icmp_sent_total",
    help: "ICMP errors sent, per type",
    labelNames: ["type"],
    registers: [registry],
    collect() {
      this.reset();
      for (let i = 0; i < ICMP_NAMES.length; i++)
        setTotal(this, { type: ICMP_NAMES[i] as string }, c.icmpSent[i] as number);
    },
  });
  new Counter({
    name: "weft_icmp_rate_limited_total",
    help: "ICMP errors suppressed because their destination was over its rate",
    registers: [registry],
    collect() {
      this.reset();
      setTotal(this, {}, c.icmpRateLimited);
    },
  });
  new Counter({
    name: "weft_iptables_syncs_total",
    help: "Checks of the --ip-masq and forward chains: current (iptables ran, nothing to do), rewritten (installed or repaired), skipped (the nf_tables ruleset had not changed since the last clean check)",
    labelNames: ["outcome"],
    registers: [registry],
    collect() {
      this.reset();
      const r = src.iptablesResyncs?.();
      if (!r) return;
      for (const outcome of ["current", "rewritten", "skipped"] as const) setTotal(this, { outcome }, r[outcome]);
    },
  });
  new Gauge({
    name: "weft_batch_size_mean",
    help: "Mean packets per batch since start, per direction",
    labelNames: ["direction"],
    registers: [registry],
    collect() {
      for (const [d, n] of dirs) this.set({ direction: d }, n.batches === 0 ? 0 : n.inPackets / n.batches);
    },
  });
  new Counter({
    name: "weft_batches_total",
    help: "Batches handled per direction",
    labelNames: ["direction"],
    registers: [registry],
    collect() {
      this.reset();
      for (const [d, n] of dirs) setTotal(this, { direction: d }, n.batches);
    },
  });
  new Gauge({
    name: "weft_leases",
    help: "Peer leases in the forwarding table",
    registers: [registry],
    collect() {
      this.set(src.leaseCount());
    },
  });
  new Gauge({
    name: "weft_leases_ignored",
    help: "Keys in the registry that are not routed because they are unreadable or do not fit the network (each logged once)",
    registers: [registry],
    collect() {
      this.set(src.ignoredLeases());
    },
  });
  new Gauge({
    name: "weft_registry_connected",
    help: "1 while the lease registry (etcd or directory) is reachable",
    registers: [registry],
    collect() {
      this.set(src.registryConnected() ? 1 : 0);
    },
  });
  new Gauge({
    name: "weft_lease_expiry_timestamp_seconds",
    help: "When this host's lease expires (0 for a reservation that never does)",
    registers: [registry],
    collect() {
      const at = src.leaseExpiresAt();
      this.set(at === null ? 0 : at / 1000);
    },
  });
  // When a lease change reached the forwarding table: the scale bench times
  // changes with these (a change is in the table once weft_leases shows it;
  // the timestamp says when that table went in, not when it was scraped).
  new Gauge({
    name: "weft_table_generation",
    help: "Forwarding tables installed since start (each lease change that reaches the table adds one)",
    registers: [registry],
    collect() {
      this.set(src.table?.generation ?? 0);
    },
  });
  new Gauge({
    name: "weft_table_swapped_at_seconds",
    help: "When the current forwarding table was installed, seconds since the epoch (0 before the first)",
    registers: [registry],
    collect() {
      this.set((src.table?.swappedAt ?? 0) / 1000);
    },
  });
  return registry;
}

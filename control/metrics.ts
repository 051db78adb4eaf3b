// Prometheus metrics (flannel has none). The dataplane keeps plain numbers;
// each family reads them when /metrics is rendered, so the hot loop never
// touches a metrics object. The text format is written here: prom-client cost
// weftd 4.5 MB of resident memory for a page of counters and gauges.

import { type Counters, type DirectionCounters, DROP_NAMES, ICMP_NAMES } from "../dataplane/counters.js";
import type { ResyncCounts } from "./iptables.js";

/** The forwarding tables handed to the engine (the daemon keeps one, /metrics reads it). */
export interface TableStats {
  /** Tables installed since start, the first build included. */
  generation: number;
  /** When the last went in, ms since the epoch (0: none yet). */
  swappedAt: number;
  /** Tables after the first (lease changes), and the seconds spent making and installing them, in sum and at most. */
  updates: number;
  updateSeconds: number;
  updateMaxSeconds: number;
}

export function newTableStats(): TableStats {
  return { generation: 0, swappedAt: 0, updates: 0, updateSeconds: 0, updateMaxSeconds: 0 };
}

/** Counts one table handed to the engine, which took `seconds` to make and install (`initial`: the first build). */
export function countSwap(stats: TableStats, seconds: number, initial: boolean, now: number): void {
  stats.generation++;
  stats.swappedAt = now;
  if (initial) return;
  stats.updates++;
  stats.updateSeconds += seconds;
  if (seconds > stats.updateMaxSeconds) stats.updateMaxSeconds = seconds;
}

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
  busyPoll?(): {
    spins: number;
    caught: number;
    waitedNs: number;
    followUps?: number;
    followUpHits?: number;
    ring?: boolean;
    ringArms?: number;
  };
  /** How many forwarding tables the engine has been given, when the last one was, and what the updates cost. */
  readonly table?: Readonly<Partial<TableStats>>;
  /** UDP GSO runs the kernel refused; each sent its peer's runs datagram by datagram for a while. */
  transportGsoFallbacks(): number;
  /** Packets read from flannel0 longer than a receive slot, dropped by the native reader (absent: 0). */
  deviceTruncatedDrops?(): number;
  /** Super-packets coalesced toward flannel0 and the packets that went into them (absent: none). */
  coalesced?(): { readonly superPackets: number; readonly segments: number };
  /** Idle releases of the receive arenas: flannel0's (tx) and the socket's (rx) (absent: none). */
  arenaReleases?(): readonly number[];
  /** iptables syncs by outcome (absent or null: no chains to keep). */
  iptablesResyncs?(): Readonly<ResyncCounts> | null;
}

/** Labels of one sample, in the order they are printed. */
type Labels = Readonly<Record<string, string>>;
type Put = (labels: Labels, value: number) => void;

/** One metric family: its samples are read from their sources at each rendering. */
interface Family {
  readonly type: "counter" | "gauge";
  readonly name: string;
  readonly help: string;
  readonly collect: (put: Put) => void;
}

/** What /metrics serves: the text exposition format, rendered on demand. */
export interface MetricsRegistry {
  readonly contentType: string;
  metrics(): Promise<string>;
}

function family(type: Family["type"], name: string, help: string, collect: Family["collect"]): Family {
  return { type, name, help, collect };
}

/** A number as the text format writes it (Prometheus spells the non-finite ones its own way). */
function formatValue(v: number): string {
  if (Number.isNaN(v)) return "NaN";
  if (v === Number.POSITIVE_INFINITY) return "+Inf";
  if (v === Number.NEGATIVE_INFINITY) return "-Inf";
  return String(v);
}

function escapeLabel(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

/** `# HELP`, `# TYPE` and one line per sample, for each family in order. */
export function renderFamilies(families: readonly Family[]): string {
  let text = "";
  for (const f of families) {
    text += `# HELP ${f.name} ${f.help.replace(/\\/g, "\\\\").replace(/\n/g, "\\n")}\n# TYPE ${f.name} ${f.type}\n`;
    f.collect((labels, value) => {
      const pairs = Object.entries(labels).map(([k, v]) => `${k}="${escapeLabel(v)}"`);
      text += `${f.name}${pairs.length === 0 ? "" : `{${pairs.join(",")}}`} ${formatValue(value)}\n`;
    });
  }
  return text;
}

export function createMetrics(src: MetricSources): MetricsRegistry {
  const c = src.counters;
  const dirs: [string, DirectionCounters][] = [
    ["tx", c.tx],
    ["rx", c.rx],
  ];
  const families: Family[] = [
    family(
      "counter",
      "weft_packets_total",
      "Packets per direction (tx: flannel0 to peers, rx: peers to flannel0) and stage (in: read, out: forwarded)",
      (put) => {
        for (const [d, n] of dirs) {
          put({ direction: d, stage: "in" }, n.inPackets);
          put({ direction: d, stage: "out" }, n.outPackets);
        }
      },
    ),
    family("counter", "weft_bytes_total", "Inner IP bytes per direction and stage", (put) => {
      for (const [d, n] of dirs) {
        put({ direction: d, stage: "in" }, n.inBytes);
        put({ direction: d, stage: "out" }, n.outBytes);
      }
    }),
    family("counter", "weft_drops_total", "Packets not forwarded, per direction and reason", (put) => {
      for (const [d, n] of dirs) {
        for (let i = 0; i < DROP_NAMES.length; i++) {
          const reason = DROP_NAMES[i] as string;
          let value = n.drops[i] as number;
          if (d === "tx" && reason === "send_error") value += src.transportSendErrors();
          if (d === "rx" && reason === "write_error") value += src.deviceWriteErrors();
          put({ direction: d, reason }, value);
        }
      }
    }),
    family(
      "counter",
      "weft_send_retries_total",
      "Times sending to peers stopped because the kernel was out of buffer memory (ENOBUFS) and was retried after a pause",
      (put) => {
        put({}, src.transportSendRetries());
      },
    ),
    family(
      "counter",
      "weft_busy_poll_spins_total",
      "Spins after a batch (busy polling), and how many of them caught the next batch",
      (put) => {
        const b = src.busyPoll?.() ?? { spins: 0, caught: 0 };
        put({ outcome: "caught" }, b.caught);
        put({ outcome: "ran_out" }, b.spins - b.caught);
      },
    ),
    family(
      "counter",
      "weft_follow_up_reads_total",
      "Reads of flannel0 right after writing to it (a reply is often already queued), by whether they found a packet",
      (put) => {
        const b = src.busyPoll?.();
        put({ outcome: "hit" }, b?.followUpHits ?? 0);
        put({ outcome: "miss" }, (b?.followUps ?? 0) - (b?.followUpHits ?? 0));
      },
    ),
    family(
      "counter",
      "weft_busy_poll_ring_arms_total",
      "With --busy-poll-ring: system calls that armed io_uring polls on flannel0 and the socket (a spin step itself makes none)",
      (put) => {
        put({}, src.busyPoll?.().ringArms ?? 0);
      },
    ),
    family("counter", "weft_busy_poll_seconds_total", "Time spent waiting in busy-poll spins", (put) => {
      put({}, (src.busyPoll?.().waitedNs ?? 0) / 1e9);
    }),
    family(
      "counter",
      "weft_gso_fallbacks_total",
      "UDP GSO runs the kernel refused (path MTU, no checksum offload); each sent its peer's runs datagram by datagram for a while",
      (put) => {
        put({}, src.transportGsoFallbacks());
      },
    ),
    family(
      "counter",
      "weft_tun_truncated_drops_total",
      "Packets read from flannel0 that were longer than a receive slot and dropped",
      (put) => {
        put({}, src.deviceTruncatedDrops?.() ?? 0);
      },
    ),
    family(
      "counter",
      "weft_coalesced_super_packets_total",
      "Super-packets built from packets received from peers and written to flannel0 in one write each (GRO)",
      (put) => {
        put({}, src.coalesced?.().superPackets ?? 0);
      },
    ),
    family(
      "counter",
      "weft_coalesced_packets_total",
      "Packets received from peers that went into coalesced super-packets",
      (put) => {
        put({}, src.coalesced?.().segments ?? 0);
      },
    ),
    family(
      "counter",
      "weft_arena_releases_total",
      "Times a receive arena's pages were given back to the kernel after its source was idle (tx: flannel0's, rx: the socket's)",
      (put) => {
        const r = src.arenaReleases?.() ?? [];
        put({ direction: "tx" }, r[0] ?? 0);
        put({ direction: "rx" }, r[1] ?? 0);
      },
    ),
    family(
      "counter",
      "weft_iptables_syncs_total",
      "Checks of the --ip-masq and forward chains: current (iptables ran, nothing to do), rewritten (installed or repaired), skipped (the nf_tables ruleset had not changed since the last clean check)",
      (put) => {
        const r = src.iptablesResyncs?.();
        if (!r) return;
        for (const outcome of ["current", "rewritten", "skipped"] as const) put({ outcome }, r[outcome]);
      },
    ),
    family("counter", "weft_icmp_sent_total", "ICMP errors sent, per type", (put) => {
      for (let i = 0; i < ICMP_NAMES.length; i++) put({ type: ICMP_NAMES[i] as string }, c.icmpSent[i] as number);
    }),
    family(
      "counter",
      "weft_icmp_rate_limited_total",
      "ICMP errors suppressed because their destination was over its rate",
      (put) => {
        put({}, c.icmpRateLimited);
      },
    ),
    family("gauge", "weft_batch_size_mean", "Mean packets per batch since start, per direction", (put) => {
      for (const [d, n] of dirs) put({ direction: d }, n.batches === 0 ? 0 : n.inPackets / n.batches);
    }),
    family("counter", "weft_batches_total", "Batches handled per direction", (put) => {
      for (const [d, n] of dirs) put({ direction: d }, n.batches);
    }),
    family("gauge", "weft_leases", "Peer leases in the forwarding table", (put) => {
      put({}, src.leaseCount());
    }),
    family(
      "gauge",
      "weft_leases_ignored",
      "Keys in the registry that are not routed because they are unreadable or do not fit the network (each logged once)",
      (put) => {
        put({}, src.ignoredLeases());
      },
    ),
    family("gauge", "weft_registry_connected", "1 while the lease registry (etcd or directory) is reachable", (put) => {
      put({}, src.registryConnected() ? 1 : 0);
    }),
    family(
      "gauge",
      "weft_lease_expiry_timestamp_seconds",
      "When this host's lease expires (0 for a reservation that never does)",
      (put) => {
        const at = src.leaseExpiresAt();
        put({}, at === null ? 0 : at / 1000);
      },
    ),
    // When a lease change reached the forwarding table: the scale bench times
    // changes with these (a change is in the table once weft_leases shows it;
    // the timestamp says when that table went in, not when it was scraped).
    family(
      "gauge",
      "weft_table_generation",
      "Forwarding tables installed since start (each lease change that reaches the table adds one)",
      (put) => {
        put({}, src.table?.generation ?? 0);
      },
    ),
    family(
      "gauge",
      "weft_table_swapped_at_seconds",
      "When the current forwarding table was installed, seconds since the epoch (0 before the first)",
      (put) => {
        put({}, (src.table?.swappedAt ?? 0) / 1000);
      },
    ),
    // What a lease change costs the thread that forwards packets: making the
    // new table (a copy of the old one, edited) and handing it to the engine.
    family(
      "counter",
      "weft_table_updates_total",
      "Forwarding tables installed after the first (lease changes, a burst being one)",
      (put) => {
        put({}, src.table?.updates ?? 0);
      },
    ),
    family(
      "counter",
      "weft_table_update_seconds_total",
      "Seconds spent making and installing those tables, on the thread that forwards packets",
      (put) => {
        put({}, src.table?.updateSeconds ?? 0);
      },
    ),
    family("gauge", "weft_table_update_max_seconds", "The longest of those, seconds", (put) => {
      put({}, src.table?.updateMaxSeconds ?? 0);
    }),
  ];
  return {
    contentType: "text/plain; version=0.0.4; charset=utf-8",
    metrics: () => Promise.resolve(renderFamilies(families)),
  };
}

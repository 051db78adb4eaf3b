// flanneld-compatible command line: every flag flanneld's udp users type,
// in single- or double-dash spelling, `--flag value` or `--flag=value`, and
// each also settable as FLANNELD_<FLAG> in the environment (flag wins).
// Go's flag package semantics: a boolean takes `--x`, `--x=true|false`.

import { normaliseAnnotationPrefix } from "./kube/node.js";
import { DEFAULT_SUBNET_ENV_PATH } from "./subnet-env.js";

export type FlagKind = "string" | "bool" | "int" | "list";

interface FlagSpec {
  readonly kind: FlagKind;
  readonly help: string;
  readonly def?: string | boolean | number | string[];
}

/** The flag table; also the source of `--help`. */
export const FLAGS = {
  "etcd-endpoints": {
    kind: "string",
    def: "http://127.0.0.1:4001,http://127.0.0.1:2379",
    help: "comma-separated etcd endpoints",
  },
  "etcd-prefix": { kind: "string", def: "/coreos.com/network", help: "etcd prefix" },
  "etcd-keyfile": { kind: "string", def: "", help: "SSL key file used to secure etcd communication" },
  "etcd-certfile": { kind: "string", def: "", help: "SSL certification file used to secure etcd communication" },
  "etcd-cafile": { kind: "string", def: "", help: "SSL Certificate Authority file used to secure etcd communication" },
  "etcd-username": { kind: "string", def: "", help: "username for BasicAuth to etcd" },
  "etcd-password": { kind: "string", def: "", help: "password for BasicAuth to etcd" },
  "registry-dir": {
    kind: "string",
    def: "",
    help: "use the embedded file registry in this directory instead of etcd (one machine only)",
  },
  iface: { kind: "list", def: [], help: "interface to use (IP or name) for inter-host communication; repeatable" },
  "iface-regex": { kind: "list", def: [], help: "regex matching the first interface (IP or name) to use; repeatable" },
  "public-ip": { kind: "string", def: "", help: "IP accessible by other nodes for inter-host communication" },
  "subnet-file": {
    kind: "string",
    def: DEFAULT_SUBNET_ENV_PATH,
    help: "filename where env variables (subnet, MTU, ...) will be written to",
  },
  "subnet-lease-renew-margin": { kind: "int", def: 60, help: "subnet lease renewal margin, in minutes" },
  "ip-masq": {
    kind: "bool",
    def: false,
    help: "setup IP masquerade rule for traffic destined outside of overlay network",
  },
  "iptables-resync": { kind: "int", def: 5, help: "resync period for iptables rules, in seconds" },
  "iptables-forward-rules": { kind: "bool", def: true, help: "add default accept rules to FORWARD chain in iptables" },
  "healthz-ip": { kind: "string", def: "0.0.0.0", help: "the IP address for healthz server to listen" },
  "healthz-port": { kind: "int", def: 0, help: "the port for healthz server to listen (0 to disable)" },
  port: { kind: "int", def: 0, help: "UDP port (default: Backend.Port from the network config, 8285)" },
  "peer-check": {
    kind: "bool",
    def: true,
    help: "accept datagrams only from hosts that hold a lease (--no-peer-check for NAT'd peers)",
  },
  offload: {
    kind: "bool",
    def: true,
    help: "TUN checksum/segmentation offloads and UDP GSO/GRO where the kernel has them (--no-offload: one packet per syscall; the wire format is the same)",
  },
  "busy-poll-us": {
    kind: "int",
    def: 0,
    help: "after each batch, poll flannel0 and the socket this many microseconds without sleeping before waiting again (0: no fixed window, the adaptive one unless --no-adaptive-busy-poll); trades CPU for latency",
  },
  "adaptive-busy-poll": {
    kind: "bool",
    def: true,
    help: "after traffic, poll flannel0 and the socket for a window that adapts to how soon the next packet comes (50-200 µs, none after 100 ms idle, at most --busy-poll-duty of a core); --no-adaptive-busy-poll: sleep after every batch (docs/latency.md)",
  },
  "busy-poll-duty": {
    kind: "int",
    def: 50,
    help: "the share of a core adaptive busy polling may spend waiting, in percent",
  },
  "busy-poll-ring": {
    kind: "bool",
    def: false,
    help: "busy polling watches flannel0 and the socket through io_uring polls whose completions land in shared memory, so a spin step is a memory load instead of a system call (falls back to epoll where io_uring is refused, e.g. by a container's seccomp profile)",
  },
  "loop-wait": {
    kind: "bool",
    def: true,
    help: "after a one-packet batch, sleep on the event loop's own epoll set and serve flannel0 and the socket without a loop turn (one system call per wake-up instead of two; --no-loop-wait: always through the event loop)",
  },
  "release-file-pages": {
    kind: "bool",
    def: true,
    help: "after start-up, unmap the pages of node's executable and libraries that start-up touched; they stay in the page cache and come back as code runs (resident memory ~25 MB lower; --no-release-file-pages keeps them)",
  },
  "strict-inner-source": {
    kind: "bool",
    def: false,
    help: "drop tunnelled packets whose inner source is outside the sender's subnet",
  },
  "kube-subnet-mgr": {
    kind: "bool",
    def: false,
    help: "take this node's subnet from its Node object (spec.podCIDR) and peers from all Nodes, as flanneld in kube-flannel.yml",
  },
  "kube-api-url": {
    kind: "string",
    def: "",
    help: "Kubernetes API server URL (in a pod the service account still authenticates)",
  },
  "kubeconfig-file": {
    kind: "string",
    def: "",
    help: "kubeconfig file: server, CA and credentials (default: in-cluster)",
  },
  "kube-annotation-prefix": {
    kind: "string",
    def: "flannel.alpha.coreos.com",
    help: "prefix of the node annotations weftd writes and reads",
  },
  "net-config-path": {
    kind: "string",
    def: "/etc/kube-flannel/net-conf.json",
    help: "network config file in kube mode",
  },
  "set-node-network-unavailable": {
    kind: "bool",
    def: true,
    help: "set the node's NetworkUnavailable condition to False once the network is up (kube mode)",
  },
  v: { kind: "int", def: 0, help: "log level: 0 info, 1+ debug" },
  version: { kind: "bool", def: false, help: "print version and exit" },
  help: { kind: "bool", def: false, help: "print this help and exit" },
} as const satisfies Record<string, FlagSpec>;

export type FlagName = keyof typeof FLAGS;

export interface Options {
  etcdEndpoints: string[];
  etcdPrefix: string;
  etcdKeyfile: string;
  etcdCertfile: string;
  etcdCafile: string;
  etcdUsername: string;
  etcdPassword: string;
  registryDir: string;
  iface: string[];
  ifaceRegex: string[];
  publicIp: string;
  subnetFile: string;
  subnetLeaseRenewMargin: number;
  ipMasq: boolean;
  iptablesResync: number;
  iptablesForwardRules: boolean;
  healthzIp: string;
  healthzPort: number;
  port: number;
  peerCheck: boolean;
  offload: boolean;
  strictInnerSource: boolean;
  busyPollUs: number;
  adaptiveBusyPoll: boolean;
  busyPollDuty: number;
  busyPollRing: boolean;
  loopWait: boolean;
  releaseFilePages: boolean;
  kubeSubnetMgr: boolean;
  kubeApiUrl: string;
  kubeconfigFile: string;
  kubeAnnotationPrefix: string;
  netConfigPath: string;
  setNodeNetworkUnavailable: boolean;
  verbosity: number;
  version: boolean;
  help: boolean;
}

export class UsageError extends Error {}

function camel(name: string): string {
  return name.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
}

function convert(name: string, raw: string, from: string): string | boolean | number {
  const spec: FlagSpec = FLAGS[name as FlagName];
  switch (spec.kind) {
    case "bool":
      if (/^(1|t|true|T|TRUE|True)$/.test(raw)) return true;
      if (/^(0|f|false|F|FALSE|False)$/.test(raw)) return false;
      throw new UsageError(`${from} ${name}: "${raw}" is not a boolean (use true or false)`);
    case "int":
      if (!/^-?\d+$/.test(raw)) throw new UsageError(`${from} ${name}: "${raw}" is not an integer`);
      return Number(raw);
    default:
      return raw;
  }
}

/** Parses argv (without node and script) and the environment into Options. */
export function parseOptions(argv: readonly string[], env: NodeJS.ProcessEnv = process.env): Options {
  const values = new Map<FlagName, string | boolean | number | string[]>();
  const set = (name: FlagName, value: string | boolean | number) => {
    if (FLAGS[name].kind === "list") {
      const prev = values.get(name);
      values.set(name, [...(Array.isArray(prev) ? prev : []), String(value)]);
    } else values.set(name, value);
  };

  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    if (!arg.startsWith("-") || arg === "-" || arg === "--") {
      throw new UsageError(`unexpected argument "${arg}" (weftd takes only flags)`);
    }
    const body = arg.replace(/^--?/, "");
    const eq = body.indexOf("=");
    let name = eq < 0 ? body : body.slice(0, eq);
    let inline: string | undefined = eq < 0 ? undefined : body.slice(eq + 1);
    if (name.startsWith("no-") && !(name in FLAGS) && name.slice(3) in FLAGS) {
      if (inline !== undefined) throw new UsageError(`flag ${arg} takes no value`);
      name = name.slice(3);
      inline = "false";
      if (FLAGS[name as FlagName].kind !== "bool") throw new UsageError(`unknown flag -${body}`);
    }
    if (!(name in FLAGS)) throw new UsageError(`unknown flag ${arg.split("=")[0]}`);
    const flag = name as FlagName;
    const kind = FLAGS[flag].kind;
    if (inline === undefined) {
      if (kind === "bool") inline = "true";
      else if (flag === "v") inline = "1";
      else {
        const next = argv[i + 1];
        if (next === undefined) throw new UsageError(`flag ${arg} needs a value`);
        inline = next;
        i++;
      }
    }
    set(flag, convert(flag, inline, "flag"));
  }

  const out: Record<string, unknown> = {};
  for (const [name, spec] of Object.entries(FLAGS) as [FlagName, FlagSpec][]) {
    let value = values.get(name);
    if (value === undefined) {
      const envName = `FLANNELD_${name.toUpperCase().replace(/-/g, "_")}`;
      const raw = env[envName];
      if (raw !== undefined && raw !== "") {
        value =
          spec.kind === "list"
            ? raw
                .split(",")
                .map((s) => s.trim())
                .filter(Boolean)
            : convert(name, raw, `environment variable ${envName} for`);
      }
    }
    out[name === "v" ? "verbosity" : camel(name)] = value ?? spec.def;
  }
  const opts = out as unknown as Options & { etcdEndpoints: string | string[] };
  opts.etcdEndpoints = String(opts.etcdEndpoints)
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
  validate(opts);
  return opts;
}

/** Each numeric flag's sane range: [min, max, unit]. */
const RANGES: Record<string, readonly [number, number, string]> = {
  // Below 1 s (or above ~24.8 days, where Node clamps timers to 1 ms) iptables would run back to back.
  "iptables-resync": [1, 86_400, "seconds"],
  // The lease lives 24 h; a margin as long would renew in a tight loop.
  "subnet-lease-renew-margin": [1, 24 * 60 - 1, "minutes, below the 24 h lease"],
  "healthz-port": [0, 65_535, "(0 turns the server off)"],
  port: [0, 65_535, "(0 takes Backend.Port from the network config)"],
  // The spin gives the event loop back after 2 ms whatever the window.
  "busy-poll-us": [0, 2_000, "microseconds"],
  "busy-poll-duty": [1, 100, "percent"],
  v: [0, 10, ""],
};

function validate(o: Options): void {
  const values: Record<string, number> = {
    "iptables-resync": o.iptablesResync,
    "subnet-lease-renew-margin": o.subnetLeaseRenewMargin,
    "healthz-port": o.healthzPort,
    port: o.port,
    "busy-poll-us": o.busyPollUs,
    "busy-poll-duty": o.busyPollDuty,
    v: o.verbosity,
  };
  for (const [name, [min, max, unit]] of Object.entries(RANGES)) {
    const value = values[name] as number;
    if (value < min || value > max) {
      throw new UsageError(`flag --${name}: ${value} is out of range; give ${min} to ${max}${unit ? ` ${unit}` : ""}`);
    }
  }
  for (const re of o.ifaceRegex) {
    try {
      new RegExp(re);
    } catch {
      throw new UsageError(`flag --iface-regex: "${re}" is not a valid regular expression`);
    }
  }
  if (normaliseAnnotationPrefix(o.kubeAnnotationPrefix) === null) {
    throw new UsageError(
      `flag --kube-annotation-prefix: "${o.kubeAnnotationPrefix}" has more than one "/"; give a DNS prefix such as flannel.alpha.coreos.com`,
    );
  }
  for (const e of o.etcdEndpoints) {
    if (!/^https?:\/\/[^/]+\/?$/.test(e))
      throw new UsageError(`flag --etcd-endpoints: "${e}" is not an http(s)://host:port URL`);
  }
}

export function usage(): string {
  const lines = ["Usage: weftd [flags]", ""];
  for (const [name, spec] of Object.entries(FLAGS) as [string, FlagSpec][]) {
    const def = Array.isArray(spec.def)
      ? ""
      : spec.def === "" || spec.def === undefined
        ? ""
        : ` (default ${spec.def})`;
    lines.push(`  --${name}${spec.kind === "bool" ? "" : ` ${spec.kind}`}`.padEnd(36) + spec.help + def);
  }
  lines.push("", "Every flag may also be spelled with one dash, and set as FLANNELD_<FLAG> in the environment.");
  return lines.join("\n");
}

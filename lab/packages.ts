// The one place that knows which Debian packages weft's jobs use, and which of them a
// machine lacks. `lab/setup.ts` installs what is missing; `npm run lab`, `npm test`,
// `npm run bench` and `.ci/run` all go through it first.
//
// A package counts as present when what weft runs from it is there (a command on PATH,
// or a file at a fixed place), not when dpkg says so: a machine with the tools from
// elsewhere needs nothing installed, and a test can make a command look missing with
// its own PATH.

import { existsSync } from "node:fs";
import { join } from "node:path";

export interface Package {
  /** Debian's package name, as apt-get takes it. */
  name: string;
  /** What weft uses it for, a phrase. */
  why: string;
  /** A command looked up on PATH, or an absolute path that must exist. */
  probe: string;
}

const LAB: readonly Package[] = [
  { name: "iproute2", why: "namespaces, veths and routes", probe: "ip" },
  { name: "iptables", why: "the CNI plugins' and --ip-masq rules", probe: "iptables" },
  { name: "iputils-ping", why: "the connectivity checks", probe: "ping" },
  { name: "containernetworking-plugins", why: "the pods' bridge and host-local", probe: "/usr/lib/cni/bridge" },
];

const TEST_EXTRA: readonly Package[] = [
  { name: "etcd-server", why: "the etcd registry tests", probe: "etcd" },
  { name: "etcd-client", why: "reading leases back from etcd", probe: "etcdctl" },
  { name: "iperf3", why: "throughput through the tunnel", probe: "iperf3" },
  { name: "tcpdump", why: "captures for the pcap tests", probe: "tcpdump" },
  { name: "openssl", why: "certificates for etcd over TLS", probe: "openssl" },
  { name: "strace", why: "counting the daemon's system calls", probe: "strace" },
  { name: "docker-compose", why: "the compose lab", probe: "docker-compose" },
  { name: "docker.io", why: "the Docker engine the compose lab runs on", probe: "dockerd" },
  { name: "debootstrap", why: "the compose lab's base image, made locally", probe: "debootstrap" },
  { name: "g++-aarch64-linux-gnu", why: "the arm64 build check of the addon", probe: "aarch64-linux-gnu-g++" },
  // Looked up as a command: a kubectl from elsewhere (Kubernetes' own package) satisfies
  // it, and kubernetes-client would conflict with that one.
  { name: "kubernetes-client", why: "kubectl for the Kubernetes tests", probe: "kubectl" },
];

const ETCD_LAB_EXTRA: readonly Package[] = [
  { name: "etcd-server", why: "the lab's etcd", probe: "etcd" },
  { name: "etcd-client", why: "showing the leases in etcd", probe: "etcdctl" },
];

const KUBE_LAB_EXTRA: readonly Package[] = [
  { name: "openssl", why: "the lab API server's CA and certificates", probe: "openssl" },
  { name: "kubernetes-client", why: "kubectl against the lab API server", probe: "kubectl" },
];

const BENCH_EXTRA: readonly Package[] = [
  { name: "iperf3", why: "throughput per mode", probe: "iperf3" },
  { name: "strace", why: "system calls per packet", probe: "strace" },
  { name: "linux-perf", why: "system calls per round trip as the daemons run", probe: "perf" },
  { name: "gcc", why: "compiling the flannel-design C proxy", probe: "cc" },
  // The scale bench's etcd mode (its lab etcd is checked with etcdctl) and kube mode (the stand-in's certificates).
  { name: "etcd-server", why: "the scale bench's etcd mode", probe: "etcd" },
  { name: "etcd-client", why: "checking the scale bench's etcd", probe: "etcdctl" },
  { name: "openssl", why: "the scale bench's API server certificates", probe: "openssl" },
];

export const JOBS = {
  lab: LAB,
  "lab-etcd": [...LAB, ...ETCD_LAB_EXTRA],
  "lab-kube": [...LAB, ...KUBE_LAB_EXTRA],
  test: [...LAB, ...TEST_EXTRA],
  bench: [...LAB, ...BENCH_EXTRA],
} as const satisfies Record<string, readonly Package[]>;

export type Job = keyof typeof JOBS;

export function isJob(s: string): s is Job {
  return Object.hasOwn(JOBS, s);
}

/** Whether a probe is satisfied: an absolute path exists, or a command is on `path`. */
export function present(probe: string, path: string): boolean {
  if (probe.startsWith("/")) return existsSync(probe);
  return path.split(":").some((dir) => dir !== "" && existsSync(join(dir, probe)));
}

/** The job's packages whose probe fails, in the table's order. */
export function missingPackages(job: Job, path: string): Package[] {
  return JOBS[job].filter((p) => !present(p.probe, path));
}

// What /readyz and /metrics report for a running weftd: each condition of
// flannel's readiness, and the node's figures read at scrape time. The HTTP
// side (limits, pacing, caching) is health.ts's.

import { type HealthServer, startHealthServer } from "./health.js";
import { linkIsUp } from "./host.js";
import { createMetrics, type MetricSources } from "./metrics.js";

/** Each condition flannel's readiness implies, set as start-up passes it. */
export class Readiness {
  lease = false;
  tun = false;
  rules = false;
  subnetEnv = false;
  /** flannel0's name once open: readiness also needs the link still up. */
  tunName: string | null = null;
  /** What start-up is waiting for (kube mode: the node's podCIDR), named by /readyz. */
  waiting: string | null = null;

  get all(): boolean {
    return this.lease && this.tun && this.rules && this.subnetEnv;
  }

  conditions(): Record<string, boolean | string> {
    const all = { lease: this.lease, tun: this.tun, rules: this.rules, subnetEnv: this.subnetEnv };
    return this.waiting === null ? all : { ...all, waiting: this.waiting };
  }

  /** All conditions, and flannel0 still up now (someone may have deleted it). */
  ready(): boolean {
    return this.all && this.tunName !== null && linkIsUp(this.tunName);
  }
}

export interface StatusServerOptions {
  readonly ip: string;
  readonly port: number;
  readonly readiness: Readiness;
  readonly metrics: MetricSources;
  readonly onError: (err: Error) => void;
}

/** /healthz, /readyz and /metrics on --healthz-ip:--healthz-port. */
export function startStatusServer(opts: StatusServerOptions): HealthServer {
  return startHealthServer({
    ip: opts.ip,
    port: opts.port,
    metrics: createMetrics(opts.metrics),
    readiness: { conditions: () => opts.readiness.conditions(), ready: () => opts.readiness.ready() },
    onError: opts.onError,
  });
}

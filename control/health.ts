// /healthz, /readyz and /metrics (flannel's --healthz-ip/--healthz-port). The
// server shares the dataplane's only thread, so nothing a client does may
// starve forwarding:
//
//   accept ──(at most MAX_CONNECTIONS open: at the limit the socket stops
//            listening, so the kernel refuses the rest without waking us;
//            slow clients time out)──►
//   parse (GET/HEAD only, small headers, no body) ──► pacer: at most
//   REQUESTS_PER_SECOND answered, the rest wait their turn (one outstanding
//   request per connection, so a flood waits instead of queueing work)
//   ──► answer; /metrics from a rendering at most RENDER_TTL_MS old
//
// A scrape every few seconds, or a kubelet probe, never meets the limits.

import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import type { MetricsRegistry } from "./metrics.js";

/** Connections open at once; while this many are open nothing listens, so more are refused by the kernel. */
export const MAX_CONNECTIONS = 16;
/** Requests answered per second, all paths and clients together; burst as large. */
export const REQUESTS_PER_SECOND = 50;
/** How long a rendering of /metrics is served before the next scrape renders again (tests read deltas after 0.5 s). */
export const RENDER_TTL_MS = 250;
/** Bytes of request headers accepted (Node's default is 16 KiB). */
const MAX_HEADER_BYTES = 4096;
/** A client must send its headers within this, and the whole request within REQUEST_TIMEOUT_MS. */
const HEADERS_TIMEOUT_MS = 2000;
const REQUEST_TIMEOUT_MS = 5000;
/** Idle keep-alive connections are closed after this. */
const KEEP_ALIVE_MS = 2000;

export interface Readiness {
  /** Each condition of readiness and whether it holds, reported as JSON by /readyz. */
  conditions(): Record<string, boolean | string>;
  ready(): boolean;
}

export interface HealthOptions {
  readonly ip: string;
  readonly port: number;
  readonly readiness: Readiness;
  readonly metrics: MetricsRegistry;
  readonly onError: (err: Error) => void;
  /** Milliseconds clock (tests inject one). */
  readonly now?: () => number;
}

/** Requests waiting for their turn; beyond this (a pipelining flood) the connection is dropped. */
const MAX_WAITING = 4 * MAX_CONNECTIONS;

/** Renders the registry at most once per RENDER_TTL_MS; concurrent scrapes share one rendering. */
export class CachedMetrics {
  private text = "";
  private renderedAt = Number.NEGATIVE_INFINITY;
  private rendering: Promise<string> | null = null;
  renders = 0;

  constructor(
    private readonly registry: MetricsRegistry,
    private readonly now: () => number = Date.now,
    private readonly ttlMs = RENDER_TTL_MS,
  ) {}

  get contentType(): string {
    return this.registry.contentType;
  }

  render(): Promise<string> {
    if (this.now() - this.renderedAt < this.ttlMs) return Promise.resolve(this.text);
    if (this.rendering === null) {
      this.renders++;
      this.rendering = this.registry.metrics().then(
        (text) => {
          this.text = text;
          this.renderedAt = this.now();
          this.rendering = null;
          return text;
        },
        (err: unknown) => {
          this.rendering = null;
          throw err;
        },
      );
    }
    return this.rendering;
  }
}

/** A token bucket that hands out turns in arrival order, one shared timer for all waiters. */
export class Pacer {
  private tokens: number;
  private stamp: number;
  private readonly waiting: (() => void)[] = [];
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly perSecond: number,
    private readonly maxWaiting: number,
    private readonly now: () => number = Date.now,
  ) {
    this.tokens = perSecond;
    this.stamp = now();
  }

  /**
   * Runs `turn` now if a token is left, else once one is (in arrival order).
   * False when maxWaiting turns already wait: the caller drops the request.
   */
  take(turn: () => void): boolean {
    this.refill();
    if (this.waiting.length === 0 && this.tokens >= 1) {
      this.tokens -= 1;
      turn();
      return true;
    }
    if (this.waiting.length >= this.maxWaiting) return false;
    this.waiting.push(turn);
    this.arm();
    return true;
  }

  get queued(): number {
    return this.waiting.length;
  }

  close(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    this.waiting.length = 0;
  }

  private refill(): void {
    const t = this.now();
    this.tokens = Math.min(this.perSecond, this.tokens + ((t - this.stamp) * this.perSecond) / 1000);
    this.stamp = t;
  }

  private arm(): void {
    if (this.timer !== null) return;
    const wait = Math.max(1, Math.ceil(((1 - this.tokens) * 1000) / this.perSecond));
    this.timer = setTimeout(() => {
      this.timer = null;
      this.refill();
      while (this.waiting.length > 0 && this.tokens >= 1) {
        this.tokens -= 1;
        (this.waiting.shift() as () => void)();
      }
      if (this.waiting.length > 0) this.arm();
    }, wait);
    this.timer.unref();
  }
}

/** The running health server: where it listens, and how to stop it. */
export interface HealthServer {
  /** Resolves with the bound port once listening (rejects if the first listen fails). */
  readonly listening: Promise<number>;
  /** True while the socket accepts (false at the connection limit). */
  readonly accepting: boolean;
  /** Stops listening and drops every connection. */
  close(): void;
}

export function startHealthServer(opts: HealthOptions): HealthServer {
  const now = opts.now ?? Date.now;
  const metrics = new CachedMetrics(opts.metrics, now);
  const pacer = new Pacer(REQUESTS_PER_SECOND, MAX_WAITING, now);
  const answer = (req: IncomingMessage, res: ServerResponse): void => {
    if (res.destroyed) return;
    const path = (req.url ?? "/").split("?")[0];
    if (path === "/healthz") {
      res.writeHead(200, { "content-type": "text/plain" }).end("flanneld is running");
    } else if (path === "/readyz") {
      const ready = opts.readiness.ready();
      res
        .writeHead(ready ? 200 : 503, { "content-type": "application/json" })
        .end(JSON.stringify(opts.readiness.conditions()));
    } else if (path === "/metrics") {
      metrics.render().then(
        (text) => res.writeHead(200, { "content-type": metrics.contentType }).end(text),
        (err: unknown) => res.writeHead(500).end(String(err)),
      );
    } else {
      res.writeHead(404).end("not found");
    }
  };
  const server = createServer(
    {
      maxHeaderSize: MAX_HEADER_BYTES,
      headersTimeout: HEADERS_TIMEOUT_MS,
      requestTimeout: REQUEST_TIMEOUT_MS,
      keepAliveTimeout: KEEP_ALIVE_MS,
      // Node's own sweep for requests past these timeouts runs on an interval
      // for as long as the server listens, connections or not; its default
      // (30 s) is only a backstop: headerDeadline below closes slow clients
      // on time without waking an idle daemon.
    },
    (req, res) => {
      received(req.socket, res);
      // Probes and scrapes carry no body: anything else is refused unread.
      if (req.method !== "GET" && req.method !== "HEAD") {
        res.writeHead(405, { allow: "GET, HEAD", connection: "close" }).end();
        return;
      }
      const length = req.headers["content-length"];
      if ((length !== undefined && length !== "0") || req.headers["transfer-encoding"] !== undefined) {
        res.writeHead(413, { connection: "close" }).end();
        return;
      }
      if (!pacer.take(() => answer(req, res))) req.socket.destroy();
    },
  );
  // Node's maxConnections would accept each extra connection and close it
  // here, on the dataplane's thread: a reconnect storm then costs a wake-up,
  // an accept and a close per attempt. Closing the listening socket instead
  // hands the refusals to the kernel; it listens again when a slot frees.
  const sockets = new Set<Socket>();
  // Per connection: a timer that closes it unless a request's headers arrive
  // within HEADERS_TIMEOUT_MS (armed on connect and after each answer), and the
  // requests received but not yet answered (no deadline while there are any).
  const pending = new Map<Socket, { deadline: NodeJS.Timeout | null; unanswered: number }>();
  const headerDeadline = (socket: Socket) => {
    const p = pending.get(socket);
    if (p === undefined || p.unanswered > 0) return;
    if (p.deadline !== null) clearTimeout(p.deadline);
    p.deadline = setTimeout(() => socket.destroy(), HEADERS_TIMEOUT_MS);
    p.deadline.unref();
  };
  const received = (socket: Socket, res: ServerResponse) => {
    const p = pending.get(socket);
    if (p === undefined) return;
    p.unanswered++;
    if (p.deadline !== null) clearTimeout(p.deadline);
    p.deadline = null;
    res.once("close", () => {
      p.unanswered--;
      headerDeadline(socket);
    });
  };
  let port = opts.port;
  let closed = false;
  let accepting = false;
  const listen = () => {
    accepting = true;
    server.listen(port, opts.ip);
  };
  server.on("connection", (socket) => {
    sockets.add(socket);
    pending.set(socket, { deadline: null, unanswered: 0 });
    headerDeadline(socket);
    socket.once("close", () => {
      const p = pending.get(socket);
      if (p?.deadline) clearTimeout(p.deadline);
      pending.delete(socket);
      sockets.delete(socket);
      if (!closed && !accepting && sockets.size < MAX_CONNECTIONS) listen();
    });
    if (sockets.size >= MAX_CONNECTIONS && accepting) {
      accepting = false;
      server.close();
    }
  });
  const listening = new Promise<number>((resolve, reject) => {
    server.once("listening", () => {
      port = (server.address() as AddressInfo).port;
      server.off("error", reject);
      server.on("error", opts.onError);
      resolve(port);
    });
    server.once("error", reject);
  });
  listening.catch(opts.onError);
  listen();
  return {
    listening,
    get accepting() {
      return accepting;
    },
    close() {
      if (closed) return;
      closed = true;
      pacer.close();
      if (accepting) server.close();
      accepting = false;
      for (const s of sockets) s.destroy();
    },
  };
}

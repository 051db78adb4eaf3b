// A lean Kubernetes API client on node:https: JSON requests and watch streams
// (one JSON event a line), nothing else. weftd needs four calls (GET pod, GET
// node, list/watch nodes, PATCH node status); @kubernetes/client-node would
// bring ~72 MB of dependencies and double the daemon's resident memory for them
// (docs/kubernetes.md has the measurements).
//
// Every error names the URL it was about: an operator reading "certificate
// signed by unknown authority" must see which server said so.

import { Agent, request as httpRequest, type IncomingMessage } from "node:http";
import { Agent as HttpsAgent, request as httpsRequest } from "node:https";
import type { KubeCredentials } from "./credentials.js";

const REQUEST_TIMEOUT_MS = 30_000;

export class KubeError extends Error {
  constructor(
    message: string,
    /** HTTP status, or 0 when no answer came (connection, TLS, timeout). */
    readonly status: number,
    readonly reason: string,
  ) {
    super(message);
  }
}

export interface WatchEvent {
  readonly type: string;
  readonly object: Record<string, unknown>;
}

export interface WatchHandle {
  close(): void;
}

const TLS_CODES = new Set([
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "CERT_HAS_EXPIRED",
  "ERR_TLS_CERT_ALTNAME_INVALID",
]);

export class KubeClient {
  readonly server: string;
  private readonly creds: KubeCredentials;
  private readonly agent: Agent;

  constructor(creds: KubeCredentials) {
    this.creds = creds;
    this.server = creds.server;
    this.agent = creds.server.startsWith("https:")
      ? new HttpsAgent({
          keepAlive: true,
          ca: creds.ca,
          cert: creds.cert,
          key: creds.key,
          rejectUnauthorized: !creds.insecureSkipVerify,
        })
      : new Agent({ keepAlive: true });
  }

  /** A JSON request; resolves to the parsed answer, rejects with a KubeError naming the URL. */
  async request(method: string, path: string, body?: string, contentType = "application/json"): Promise<unknown> {
    return this.requestParsed(method, path, JSON.parse, body, contentType);
  }

  /**
   * A GET whose answer is handed to `reader` chunk by chunk as it arrives
   * (never held whole); resolves to what reader.end() returns. `reader`
   * throws on anything but JSON.
   */
  async requestStreamed<T>(path: string, reader: { write(chunk: Buffer): void; end(): T }): Promise<T> {
    const res = await this.open("GET", path, undefined, "application/json", REQUEST_TIMEOUT_MS);
    const url = this.server + path;
    if ((res.statusCode ?? 0) >= 400) throw statusError("GET", url, res.statusCode ?? 0, await readAll(res));
    const notJson = () => new KubeError(`GET ${url}: the answer is not JSON`, res.statusCode ?? 0, "BadResponse");
    return new Promise((resolve, reject) => {
      let failed = false;
      res.on("data", (chunk: Buffer) => {
        if (failed) return;
        try {
          reader.write(chunk);
        } catch {
          failed = true;
          res.destroy();
          reject(notJson());
        }
      });
      res.once("end", () => {
        if (failed) return;
        try {
          resolve(reader.end());
        } catch {
          reject(notJson());
        }
      });
      res.once("error", (err) => {
        if (!failed) reject(err);
      });
    });
  }

  /** request(), the answer's text handed to `parse` (which throws on anything but JSON). */
  async requestParsed<T>(
    method: string,
    path: string,
    parse: (text: string) => T,
    body?: string,
    contentType = "application/json",
  ): Promise<T> {
    const res = await this.open(method, path, body, contentType, REQUEST_TIMEOUT_MS);
    const text = await readAll(res);
    const url = this.server + path;
    if ((res.statusCode ?? 0) >= 400) throw statusError(method, url, res.statusCode ?? 0, text);
    try {
      return parse(text);
    } catch {
      throw new KubeError(`${method} ${url}: the answer is not JSON`, res.statusCode ?? 0, "BadResponse");
    }
  }

  /**
   * Opens a watch (`path` carries ?watch=true…). Events arrive in order;
   * `onEnd` is called once: with no error when the server closed the stream
   * cleanly (timeoutSeconds), else with a KubeError. `idleMs` without a byte
   * (bookmarks keep a healthy stream busy) counts as a dead connection.
   */
  watch(
    path: string,
    onEvent: (event: WatchEvent) => void,
    onEnd: (err?: KubeError) => void,
    idleMs: number,
  ): WatchHandle {
    let ended = false;
    let res: IncomingMessage | null = null;
    let closed = false;
    const url = this.server + path;
    const end = (err?: KubeError) => {
      if (ended) return;
      ended = true;
      res?.destroy();
      if (!closed) onEnd(err);
    };
    this.open("GET", path, undefined, undefined, idleMs).then(
      (r) => {
        res = r;
        if (closed) return void r.destroy();
        if ((r.statusCode ?? 0) >= 400) {
          void readAll(r).then(
            (text) => end(statusError("GET", url, r.statusCode ?? 0, text)),
            () => end(),
          );
          return;
        }
        r.setEncoding("utf8");
        let partial = "";
        r.on("data", (chunk: string) => {
          const lines = (partial + chunk).split("\n");
          partial = lines.pop() ?? "";
          for (const line of lines) {
            if (line.trim() === "" || ended) continue;
            let event: WatchEvent;
            try {
              event = JSON.parse(line) as WatchEvent;
            } catch {
              return end(new KubeError(`GET ${url}: a watch event is not JSON`, 0, "BadResponse"));
            }
            onEvent(event);
          }
        });
        r.once("end", () => end());
        r.once("error", (err) => end(this.connectionError("GET", path, err)));
        r.once("aborted", () => end(new KubeError(`GET ${url}: the watch was cut off`, 0, "ConnectionLost")));
      },
      (err: KubeError) => end(err),
    );
    return {
      close: () => {
        closed = true;
        end();
      },
    };
  }

  close(): void {
    this.agent.destroy();
  }

  private open(
    method: string,
    path: string,
    body: string | undefined,
    contentType: string | undefined,
    timeoutMs: number,
  ): Promise<IncomingMessage> {
    const url = new URL(this.server + path);
    const token = this.creds.token();
    const headers: Record<string, string> = { accept: "application/json", "user-agent": "weftd" };
    if (token) headers.authorization = `Bearer ${token}`;
    if (body !== undefined && contentType) headers["content-type"] = contentType;
    const send = url.protocol === "https:" ? httpsRequest : httpRequest;
    return new Promise((resolve, reject) => {
      const req = send(url, { method, headers, agent: this.agent }, resolve);
      req.setTimeout(timeoutMs, () =>
        req.destroy(Object.assign(new Error(`no answer within ${timeoutMs / 1000} s`), { code: "ETIMEDOUT" })),
      );
      req.once("error", (err) => reject(this.connectionError(method, path, err)));
      req.end(body);
    });
  }

  private connectionError(method: string, path: string, err: Error): KubeError {
    const code = (err as NodeJS.ErrnoException).code ?? "";
    const url = this.server + path;
    if (TLS_CODES.has(code))
      return new KubeError(
        `${method} ${url}: the server's TLS certificate is not trusted (${err.message}); check the CA`,
        0,
        "TLS",
      );
    return new KubeError(`${method} ${url}: cannot reach the Kubernetes API: ${err.message}`, 0, code || "Connection");
  }
}

/**
 * The whole body as a string, built chunk by chunk in V8's heap (a NodeList
 * page joined as one Buffer is megabytes of malloc, which glibc need not
 * give back: anonymous memory after start rose with it in the scale bench).
 */
function readAll(res: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = "";
    res.setEncoding("utf8");
    res.on("data", (c: string) => {
      text += c;
    });
    res.once("end", () => resolve(text));
    res.once("error", reject);
  });
}

function statusError(method: string, url: string, status: number, text: string): KubeError {
  let message = text.trim().slice(0, 200);
  let reason = "";
  try {
    const parsed = JSON.parse(text) as { message?: string; reason?: string };
    message = parsed.message ?? message;
    reason = parsed.reason ?? "";
  } catch {
    // Not a Status object (a proxy's error page): its text is the message.
  }
  return new KubeError(`${method} ${url}: ${message} (HTTP ${status}${reason ? ` ${reason}` : ""})`, status, reason);
}

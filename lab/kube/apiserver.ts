// A stand-in for kube-apiserver's Node and Pod endpoints, for weft's tests and
// lab. It is not a Kubernetes: no etcd, no admission, no controllers, two
// kinds. What it keeps from a real API server is what weftd and kubectl can
// observe about those two kinds:
//
//   GET  /version /api /apis /api/v1 /apis/<g>/<v>     discovery (kubectl reads it first)
//   GET  /api/v1/nodes[?limit&continue]                NodeList, one global resourceVersion
//   GET  /api/v1/nodes?watch=true&resourceVersion=…    ADDED/MODIFIED/DELETED in order,
//        &allowWatchBookmarks&timeoutSeconds           BOOKMARKs, a clean close at the timeout,
//                                                      410 Expired after compaction
//   GET|PUT|DELETE /api/v1/nodes/<n>, POST /api/v1/nodes
//   PATCH /api/v1/nodes/<n>[/status]                   strategic merge or JSON merge, else 415;
//                                                      /status ignores spec, the object ignores status
//   GET|POST|DELETE /api/v1/namespaces/<ns>/pods[/<p>]
//
// Clients authenticate with a bearer token or a client certificate (its CN is
// the user); a user is an admin (everything) or flannel's service account
// (kube-flannel.yml's RBAC: pods get, nodes get/list/watch, nodes/status
// patch; anything else is 403). Errors are Status objects. Every request is
// logged (method, URL, content type, body, user, status) for assertions.

import { appendFileSync } from "node:fs";
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import type { Socket } from "node:net";
import type { TLSSocket } from "node:tls";
import { discovery } from "./discovery.js";
import { isObject, mergePatch, strategicMergePatch } from "./patch.js";
import { Conflict, type JsonObject, ObjectStore, type Resource, type StoredEvent } from "./store.js";
import { nodeTable, wantsTable } from "./table.js";

export type Role = "admin" | "flannel";

/** kube-flannel.yml's ServiceAccount, as the API server names it. */
export const FLANNEL_USER = "system:serviceaccount:kube-flannel:flannel";

export interface ApiServerOptions {
  host?: string;
  /** 0 picks a free port; restarts keep the port first chosen. */
  port?: number;
  /** Serve HTTPS with this key and certificate; client certificates are checked against `ca`. */
  tls?: { key: string; cert: string; ca: string };
  /** Bearer token -> user name. */
  tokens?: Record<string, string>;
  /** User name (a token's user or a client certificate's CN) -> role. */
  users?: Record<string, Role>;
  /** Interval of BOOKMARK events on watches that allow them. Default 60 s, as kube-apiserver. */
  bookmarkMs?: number;
  /** Also append each logged request to this file, one JSON object a line. */
  requestLogFile?: string;
}

export interface LoggedRequest {
  readonly time: number;
  readonly method: string;
  readonly url: string;
  readonly contentType: string | undefined;
  readonly body: string;
  readonly user: string | null;
  readonly status: number;
}

class ApiError extends Error {
  constructor(
    readonly code: number,
    readonly reason: string,
    message: string,
    readonly details?: JsonObject,
  ) {
    super(message);
  }
}

const PATCH_TYPES = ["application/strategic-merge-patch+json", "application/merge-patch+json"];
const MAX_BODY = 3 * 1024 * 1024;

interface Route {
  resource: Resource;
  namespace?: string;
  name?: string;
  subresource?: string;
}

function parseRoute(path: string): Route | null {
  const p = path.split("/").slice(1);
  if (p[0] !== "api" || p[1] !== "v1") return null;
  if (p[2] === "nodes" && p.length <= 5) return { resource: "nodes", name: p[3], subresource: p[4] };
  if (p[2] === "namespaces" && p[4] === "pods" && p.length <= 6 && p[3] !== undefined)
    return { resource: "pods", namespace: p[3], name: p[5] };
  return null;
}

function statusObject(code: number, reason: string, message: string, details?: JsonObject): JsonObject {
  return { kind: "Status", apiVersion: "v1", metadata: {}, status: "Failure", message, reason, details, code };
}

export class KubeApiServer {
  readonly store = new ObjectStore();
  readonly requests: LoggedRequest[] = [];
  private readonly opts: ApiServerOptions;
  private tokens: Record<string, string>;
  private server: Server | null = null;
  private port: number;
  private readonly sockets = new Set<Socket>();
  private readonly watches = new Set<(event: "expire" | "close") => void>();

  constructor(opts: ApiServerOptions = {}) {
    this.opts = opts;
    this.tokens = { ...(opts.tokens ?? {}) };
    this.port = opts.port ?? 0;
  }

  get url(): string {
    const host = this.opts.host ?? "127.0.0.1";
    return `${this.opts.tls ? "https" : "http"}://${host}:${this.port}`;
  }

  /** Replaces the accepted tokens (a projected token rotated). */
  setTokens(tokens: Record<string, string>): void {
    this.tokens = { ...tokens };
  }

  async start(): Promise<void> {
    if (this.server !== null) return;
    const handler = (req: IncomingMessage, res: ServerResponse) => void this.handle(req, res);
    const { tls } = this.opts;
    const server = tls
      ? createHttpsServer({ ...tls, requestCert: true, rejectUnauthorized: false }, handler)
      : createHttpServer(handler);
    server.on(tls ? "secureConnection" : "connection", (socket: Socket) => {
      this.sockets.add(socket);
      socket.once("close", () => this.sockets.delete(socket));
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.port, this.opts.host ?? "127.0.0.1", () => {
        server.off("error", reject);
        resolve();
      });
    });
    const address = server.address();
    if (address !== null && typeof address === "object") this.port = address.port;
    this.server = server;
  }

  /** Stops listening and drops every connection; objects survive for the next start(). */
  async stop(): Promise<void> {
    const server = this.server;
    if (server === null) return;
    this.server = null;
    for (const end of [...this.watches]) end("close");
    for (const socket of this.sockets) socket.destroy();
    server.closeAllConnections?.();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  /** Compacts history and ends every open watch with a 410 Expired ERROR event. */
  expireWatches(): void {
    this.store.compact();
    for (const end of [...this.watches]) end("expire");
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", "http://x");
    let body = "";
    let user: string | null = null;
    let status = 200;
    try {
      body = await readBody(req);
      user = this.authenticate(req);
      status = await this.route(req, res, url, body, user);
    } catch (err) {
      const e =
        err instanceof ApiError
          ? err
          : err instanceof Conflict
            ? new ApiError(409, "AlreadyExists", err.message)
            : new ApiError(500, "InternalError", (err as Error).message);
      status = e.code;
      if (!res.headersSent) send(res, e.code, statusObject(e.code, e.reason, e.message, e.details));
      else res.end();
    }
    const entry: LoggedRequest = {
      time: Date.now(),
      method: req.method ?? "",
      url: req.url ?? "",
      contentType: req.headers["content-type"],
      body,
      user,
      status,
    };
    this.requests.push(entry);
    if (this.opts.requestLogFile) appendFileSync(this.opts.requestLogFile, `${JSON.stringify(entry)}\n`);
  }

  private authenticate(req: IncomingMessage): string {
    const auth = req.headers.authorization;
    let user: string | undefined;
    if (auth?.startsWith("Bearer ")) user = this.tokens[auth.slice(7).trim()];
    else if (this.opts.tls) {
      const socket = req.socket as TLSSocket;
      const cn = socket.authorized ? socket.getPeerCertificate()?.subject?.CN : undefined;
      user = typeof cn === "string" ? cn : undefined;
    }
    if (user === undefined || this.opts.users?.[user] === undefined)
      throw new ApiError(401, "Unauthorized", "Unauthorized");
    return user;
  }

  private authorize(user: string, verb: string, route: Route): void {
    if (this.opts.users?.[user] === "admin") return;
    const resource = route.subresource ? `${route.resource}/${route.subresource}` : route.resource;
    const allowed: Record<string, string[]> = {
      pods: ["get"],
      nodes: ["get", "list", "watch"],
      "nodes/status": ["patch"],
    };
    if (allowed[resource]?.includes(verb)) return;
    const what = route.name === undefined ? route.resource : `${route.resource} "${route.name}"`;
    const scope = route.namespace === undefined ? "at the cluster scope" : `in the namespace "${route.namespace}"`;
    const sub = route.subresource ? `/${route.subresource}` : "";
    throw new ApiError(
      403,
      "Forbidden",
      `${what} is forbidden: User "${user}" cannot ${verb} resource "${route.resource}${sub}" in API group "" ${scope}`,
      { name: route.name ?? "", kind: route.resource },
    );
  }

  /** Serves one request; returns the status code sent. */
  private async route(
    req: IncomingMessage,
    res: ServerResponse,
    url: URL,
    body: string,
    user: string,
  ): Promise<number> {
    const method = req.method ?? "GET";
    const doc = method === "GET" ? discovery(url.pathname, `${req.socket.localAddress}:${this.port}`) : undefined;
    if (doc !== undefined) return send(res, 200, doc);
    const route = parseRoute(url.pathname);
    if (route === null) throw new ApiError(404, "NotFound", "the server could not find the requested resource");
    const q = url.searchParams;
    const verb =
      method === "GET"
        ? route.name === undefined
          ? q.get("watch") === "true" || q.get("watch") === "1"
            ? "watch"
            : "list"
          : "get"
        : ({ POST: "create", PUT: "update", PATCH: "patch", DELETE: "delete" } as Record<string, string>)[method];
    if (verb === undefined) throw new ApiError(405, "MethodNotAllowed", `${method} is not supported`);
    if (route.subresource !== undefined && (route.subresource !== "status" || verb === "delete"))
      throw new ApiError(404, "NotFound", "the server could not find the requested resource");
    this.authorize(user, verb, route);
    const key = route.namespace === undefined ? (route.name ?? "") : `${route.namespace}/${route.name}`;
    switch (verb) {
      case "watch":
        return this.watch(req, res, route, q);
      case "list":
        return this.list(req, res, route, q);
      case "get": {
        const object = this.mustGet(route, key);
        if (route.resource === "nodes" && wantsTable(req.headers.accept))
          return send(res, 200, nodeTable([object], String(this.store.resourceVersion)));
        return send(res, 200, object);
      }
      case "create": {
        if (route.name !== undefined) throw new ApiError(405, "MethodNotAllowed", "POST to a named object");
        const object = parseJson(body);
        const name = (object.metadata as JsonObject | undefined)?.name;
        if (typeof name !== "string" || name === "")
          throw new ApiError(422, "Invalid", "metadata.name: Required value: name is required");
        if (route.namespace !== undefined) (object.metadata as JsonObject).namespace = route.namespace;
        const k = route.namespace === undefined ? name : `${route.namespace}/${name}`;
        return send(res, 201, this.store.create(route.resource, k, object));
      }
      case "update":
        return send(
          res,
          200,
          this.write(route, key, () => parseJson(body)),
        );
      case "patch":
        return send(
          res,
          200,
          this.write(route, key, (old) => applyPatch(old, req.headers["content-type"], body)),
        );
      default: {
        const gone = this.store.delete(route.resource, key);
        if (gone === undefined) this.mustGet(route, key);
        return send(res, 200, gone);
      }
    }
  }

  private mustGet(route: Route, key: string): JsonObject {
    const object = this.store.get(route.resource, key);
    if (object === undefined) {
      throw new ApiError(404, "NotFound", `${route.resource} "${route.name}" not found`, {
        name: route.name ?? "",
        kind: route.resource,
      });
    }
    return object;
  }

  /** An update or patch: /status keeps spec, the object itself keeps status; podCIDR is immutable once set. */
  private write(route: Route, key: string, change: (old: JsonObject) => JsonObject): JsonObject {
    const old = this.mustGet(route, key);
    const next = change(old);
    if (!isObject(next.metadata)) next.metadata = {};
    if (route.subresource === "status") next.spec = old.spec;
    else next.status = old.status;
    if (route.resource === "nodes") checkPodCidr(route.name as string, old, next);
    return this.store.replace(route.resource, key, next);
  }

  private list(req: IncomingMessage, res: ServerResponse, route: Route, q: URLSearchParams): number {
    const all = this.inScope(route);
    const limit = Number(q.get("limit") ?? 0);
    const start = Number(q.get("continue") ?? 0) || 0;
    const items = limit > 0 ? all.slice(start, start + limit) : all.slice(start);
    const more = limit > 0 && start + limit < all.length;
    const rv = String(this.store.resourceVersion);
    if (route.resource === "nodes" && wantsTable(req.headers.accept)) return send(res, 200, nodeTable(items, rv));
    const kind = route.resource === "nodes" ? "NodeList" : "PodList";
    const metadata = more ? { resourceVersion: rv, continue: String(start + limit) } : { resourceVersion: rv };
    const head = JSON.stringify({ kind, apiVersion: "v1", metadata });
    return sendText(
      res,
      200,
      `${head.slice(0, -1)},"items":[${items.map((o) => this.store.serialised(o)).join(",")}]}`,
    );
  }

  /** The stored objects (not copies: serialised at once), by key as etcd lists them. */
  private inScope(route: Route): readonly JsonObject[] {
    const all = this.store.view(route.resource);
    const ns = route.namespace;
    return ns === undefined ? all : all.filter((o) => (o.metadata as JsonObject).namespace === ns);
  }

  private watch(req: IncomingMessage, res: ServerResponse, route: Route, q: URLSearchParams): number {
    if (q.get("sendInitialEvents") !== null) {
      throw new ApiError(
        422,
        "Invalid",
        "sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled",
      );
    }
    const rvParam = q.get("resourceVersion") ?? "";
    const from = rvParam === "" || rvParam === "0" ? null : Number(rvParam);
    if (from !== null && !(Number.isInteger(from) && from >= 0))
      throw new ApiError(400, "BadRequest", `resourceVersion "${rvParam}" is not valid`);
    const kind = route.resource === "nodes" ? "Node" : "Pod";
    res.writeHead(200, { "content-type": "application/json", "transfer-encoding": "chunked" });
    const write = (type: string, object: unknown) => res.write(`${JSON.stringify({ type, object })}\n`);
    const matches = (e: StoredEvent) =>
      e.resource === route.resource &&
      (route.namespace === undefined || (e.object.metadata as JsonObject).namespace === route.namespace);
    const expired = () =>
      write(
        "ERROR",
        statusObject(410, "Expired", `too old resource version: ${from ?? 0} (${this.store.compactedRv})`),
      );
    if (from !== null && from < this.store.compactedRv) {
      expired();
      res.end();
      return 200;
    }
    if (from === null) for (const o of this.inScope(route)) write("ADDED", o);
    else for (const e of this.store.since(route.resource, from)) if (matches(e)) write(e.type, e.object);
    const unsubscribe = this.store.subscribe((e) => {
      if (matches(e)) write(e.type, e.object);
    });
    const timers: NodeJS.Timeout[] = [];
    const allow = q.get("allowWatchBookmarks") === "true";
    if (allow) {
      const bookmark = () =>
        write("BOOKMARK", {
          kind,
          apiVersion: "v1",
          metadata: { resourceVersion: String(this.store.resourceVersion) },
        });
      timers.push(setInterval(bookmark, this.opts.bookmarkMs ?? 60_000));
    }
    const end = (why: "expire" | "close" | "timeout") => {
      if (!this.watches.delete(end)) return;
      unsubscribe();
      for (const t of timers) clearTimeout(t);
      if (why === "expire") expired();
      if (why === "close") res.destroy();
      else res.end();
    };
    this.watches.add(end);
    const timeout = Number(q.get("timeoutSeconds") ?? 0);
    // kube-apiserver closes a watch without timeoutSeconds after 30-60 minutes.
    timers.push(setTimeout(() => end("timeout"), (timeout > 0 ? timeout : 1800) * 1000));
    req.once("close", () => end("close"));
    return 200;
  }
}

function checkPodCidr(name: string, old: JsonObject, next: JsonObject): void {
  const a = (old.spec ?? {}) as JsonObject;
  const b = (next.spec ?? {}) as JsonObject;
  for (const field of ["podCIDR", "podCIDRs"]) {
    const before = JSON.stringify(a[field] ?? null);
    if (before !== "null" && before !== '""' && before !== "[]" && before !== JSON.stringify(b[field] ?? null)) {
      throw new ApiError(
        422,
        "Invalid",
        `Node "${name}" is invalid: spec.${field}: Forbidden: node updates may not change podCIDR except from "" to valid`,
      );
    }
  }
}

function applyPatch(old: JsonObject, contentType: string | undefined, body: string): JsonObject {
  const type = (contentType ?? "").split(";")[0]?.trim() ?? "";
  if (!PATCH_TYPES.includes(type)) {
    throw new ApiError(
      415,
      "UnsupportedMediaType",
      `the body of the request was in an unknown format - accepted media types include: ${PATCH_TYPES.join(", ")}`,
    );
  }
  const patch = parseJson(body);
  const next =
    type === PATCH_TYPES[0]
      ? strategicMergePatch(old as never, patch as never)
      : mergePatch(old as never, patch as never);
  return next as JsonObject;
}

function parseJson(body: string): JsonObject {
  let value: unknown;
  try {
    value = JSON.parse(body);
  } catch (err) {
    throw new ApiError(400, "BadRequest", `the request body is not JSON: ${(err as Error).message}`);
  }
  if (!isObject(value)) throw new ApiError(400, "BadRequest", "the request body is not a JSON object");
  return value as JsonObject;
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = "";
    req.setEncoding("utf8");
    req.on("data", (chunk: string) => {
      text += chunk;
      if (text.length > MAX_BODY) reject(new ApiError(413, "RequestEntityTooLarge", "request body too large"));
    });
    req.once("end", () => resolve(text));
    req.once("error", reject);
  });
}

function send(res: ServerResponse, code: number, object: unknown): number {
  return sendText(res, code, JSON.stringify(object));
}

function sendText(res: ServerResponse, code: number, text: string): number {
  res.writeHead(code, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
  return code;
}

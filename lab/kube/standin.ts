// Runs lab/kube/serve.ts as a child (optionally inside a namespace) and
// speaks its stdin protocol: outages, 410s, token rotation and admin
// requests, as the netns tests and the lab need them. Tracked by PID only.

import { type ChildProcess, spawn } from "node:child_process";
import { closeSync, openSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import type { LoggedRequest } from "./apiserver.js";

// biome-ignore lint/suspicious/noExplicitAny: API documents are read loosely by the lab and tests
export type Doc = any;

export interface Standin {
  readonly url: string;
  readonly dir: string;
  readonly child: ChildProcess;
  readonly caFile: string;
  readonly adminKubeconfig: string;
  readonly flannelKubeconfig: string;
  /** Stop listening (an outage); objects are kept. */
  stop(): Promise<void>;
  start(): Promise<void>;
  /** Compacts history: open watches get 410 Expired. */
  expire(): Promise<void>;
  rotateToken(token: string): Promise<void>;
  /** Creates or replaces a Node in the store, also while stopped. */
  putNode(node: Doc): Promise<void>;
  deleteNode(name: string): Promise<void>;
  /** An admin request; JSON bodies are sent as application/json unless told. */
  request(method: string, path: string, body?: unknown, contentType?: string): Promise<{ status: number; body: Doc }>;
  /** Every request served so far. */
  requests(): LoggedRequest[];
  kill(): Promise<void>;
}

export async function startStandin(opts: {
  dir: string;
  listen: string;
  /** e.g. ["ip", "netns", "exec", ns] */
  commandPrefix?: string[];
  bookmarkMs?: number;
  detached?: boolean;
}): Promise<Standin> {
  const serve = new URL("./serve.js", import.meta.url).pathname;
  const args = [serve, "--listen", opts.listen, "--dir", opts.dir, "--bookmark-ms", String(opts.bookmarkMs ?? 60_000)];
  const prefix = opts.commandPrefix ?? [];
  const log = openSync(join(opts.dir, "apiserver.log"), "a");
  const child = spawn(
    prefix[0] ?? process.execPath,
    [...prefix.slice(1), ...(prefix.length ? [process.execPath] : []), ...args],
    {
      stdio: ["pipe", "pipe", log],
      detached: opts.detached ?? false,
    },
  );
  closeSync(log);
  const waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  let nextId = 1;
  const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream });
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("the stand-in API server did not start within 20 s")), 20_000);
    child.once("exit", (code) => {
      clearTimeout(timer);
      let tail = "";
      try {
        tail = readFileSync(join(opts.dir, "apiserver.log"), "utf8").trim().slice(-500);
      } catch {}
      reject(new Error(`the stand-in API server exited with ${code}: ${tail}`));
    });
    lines.once("line", (line) => {
      clearTimeout(timer);
      resolve(JSON.parse(line).url);
    });
  });
  lines.on("line", (line) => {
    const reply = JSON.parse(line) as { id: number; ok: boolean; result?: unknown; error?: string };
    const w = waiting.get(reply.id);
    waiting.delete(reply.id);
    if (reply.ok) w?.resolve(reply.result);
    else w?.reject(new Error(reply.error));
  });
  const command = (op: string, extra: Record<string, unknown> = {}) =>
    new Promise<Doc>((resolve, reject) => {
      const id = nextId++;
      waiting.set(id, { resolve, reject });
      child.stdin?.write(`${JSON.stringify({ id, op, ...extra })}\n`);
    });
  return {
    url,
    dir: opts.dir,
    child,
    caFile: join(opts.dir, "pki", "ca.crt"),
    adminKubeconfig: join(opts.dir, "admin.kubeconfig"),
    flannelKubeconfig: join(opts.dir, "flannel.kubeconfig"),
    stop: () => command("stop"),
    start: () => command("start"),
    expire: () => command("expire"),
    rotateToken: (token) => command("token", { token }),
    putNode: (node) => command("node", { node }),
    deleteNode: (name) => command("delete-node", { name }),
    async request(method, path, body, contentType) {
      const text = body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body);
      const r = await command("request", { method, path, body: text, contentType });
      let parsed: unknown = r.body;
      try {
        parsed = JSON.parse(r.body);
      } catch {}
      return { status: r.status, body: parsed };
    },
    requests() {
      try {
        const text = readFileSync(join(opts.dir, "requests.jsonl"), "utf8");
        return text
          .split("\n")
          .filter(Boolean)
          .map((l) => JSON.parse(l) as LoggedRequest);
      } catch {
        return [];
      }
    },
    async kill() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
      await exited;
      clearTimeout(timer);
    },
  };
}

// List + watch of a collection, the way client-go's reflector keeps a cache
// (and unlike client-node's informer, which stops on any non-410 error):
//
//   list (limit=500, pages) ──► onList(items)        first with resourceVersion=0, as flanneld
//        │                                            (served from the watch cache)
//        ▼
//   watch from the list's resourceVersion ──► onEvent(ADDED|MODIFIED|DELETED)
//        │  BOOKMARK: only remember its resourceVersion
//        │  clean close (timeoutSeconds, 300–600 s at random): watch again from the last one
//        │  410 Expired (an ERROR event or the answer): list again (resourceVersion="")
//        │  anything else: wait 100 ms, 200 ms … 5 s, then watch again from the last one
//        ▼
//   ...until stop(). The caller's cache stays as it was while the server is away.

import { type KubeClient, KubeError, type WatchHandle } from "./client.js";

export const MIN_BACKOFF_MS = 100;
export const MAX_BACKOFF_MS = 5000;
const LIST_LIMIT = 500;

export type KubeObject = Record<string, unknown>;

export interface InformerHandlers {
  /** A complete listing that replaces everything known. */
  onList(items: KubeObject[]): void;
  onEvent(type: "ADDED" | "MODIFIED" | "DELETED", object: KubeObject): void;
  /** The API server answered (true) or the last attempt failed (false). */
  onConnection?(connected: boolean, err?: Error): void;
}

export interface InformerOptions {
  /** Collection path, e.g. /api/v1/nodes. */
  readonly path: string;
  readonly minBackoffMs?: number;
  readonly maxBackoffMs?: number;
  /** Seconds asked of each watch; default 300–600 at random, as client-go spreads them. */
  readonly timeoutSeconds?: () => number;
  /**
   * What is kept of each listed or watched object (default: all of it).
   * Applied as each page arrives, so a listing of thousands of fat objects
   * never holds more than one page of them whole.
   */
  readonly keep?: (object: KubeObject) => KubeObject;
}

function rvOf(object: KubeObject): string {
  const meta = object.metadata as { resourceVersion?: unknown } | undefined;
  return typeof meta?.resourceVersion === "string" ? meta.resourceVersion : "";
}

export class Informer {
  private readonly client: KubeClient;
  private readonly opts: InformerOptions;
  private readonly handlers: InformerHandlers;
  private rv = "";
  private backoffMs: number;
  private watching: WatchHandle | null = null;
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;
  private connected: boolean | null = null;
  /** Lists and relists done, for tests and metrics. */
  lists = 0;

  constructor(client: KubeClient, opts: InformerOptions, handlers: InformerHandlers) {
    this.client = client;
    this.opts = opts;
    this.handlers = handlers;
    this.backoffMs = opts.minBackoffMs ?? MIN_BACKOFF_MS;
  }

  get resourceVersion(): string {
    return this.rv;
  }

  /** Lists (retrying with backoff until it works), then watches until stop(). */
  start(): void {
    void this.relist("0");
  }

  stop(): void {
    this.stopped = true;
    if (this.timer !== null) clearTimeout(this.timer);
    this.watching?.close();
    this.watching = null;
  }

  /** One complete listing, page by page; rejects with a KubeError. */
  async list(resourceVersion: string): Promise<{ items: KubeObject[]; resourceVersion: string }> {
    const items: KubeObject[] = [];
    let cont = "";
    for (;;) {
      const q = new URLSearchParams({ limit: String(LIST_LIMIT) });
      if (cont !== "") q.set("continue", cont);
      else if (resourceVersion !== "") q.set("resourceVersion", resourceVersion);
      const keep = this.opts.keep ?? ((o: KubeObject) => o);
      const page = await this.client.requestParsed("GET", `${this.opts.path}?${q}`, (text) =>
        parseListPage(text, (item) => items.push(keep(item))),
      );
      cont = page.metadata?.continue ?? "";
      if (cont === "") return { items, resourceVersion: page.metadata?.resourceVersion ?? "" };
    }
  }

  private async relist(resourceVersion: string): Promise<void> {
    if (this.stopped) return;
    let listing: { items: KubeObject[]; resourceVersion: string };
    try {
      listing = await this.list(resourceVersion);
    } catch (err) {
      this.failed(err as Error, () => void this.relist(resourceVersion));
      return;
    }
    if (this.stopped) return;
    this.lists++;
    this.rv = listing.resourceVersion;
    this.setConnected(true);
    this.handlers.onList(listing.items);
    this.watch();
  }

  private watch(): void {
    if (this.stopped) return;
    const seconds = this.opts.timeoutSeconds?.() ?? 300 + Math.floor(Math.random() * 301);
    const q = new URLSearchParams({
      allowWatchBookmarks: "true",
      resourceVersion: this.rv,
      timeoutSeconds: String(seconds),
      watch: "true",
    });
    const started = Date.now();
    let done = false;
    let delivered = false;
    /** Ends this watch ourselves (onEnd is not called after close()). */
    const abandon = () => {
      done = true;
      handle.close();
      if (this.watching === handle) this.watching = null;
    };
    const handle = this.client.watch(
      `${this.opts.path}?${q}`,
      (event) => {
        if (this.stopped || done) return;
        if (event.type === "ERROR") {
          const status = event.object as { code?: number; message?: string };
          abandon();
          if (status.code === 410) void this.relist("");
          else this.failed(new Error(`watch ERROR: ${status.message ?? JSON.stringify(status)}`), () => this.watch());
          return;
        }
        const rv = rvOf(event.object);
        if (rv !== "") this.rv = rv;
        if (!delivered) {
          delivered = true;
          this.backoffMs = this.opts.minBackoffMs ?? MIN_BACKOFF_MS;
          this.setConnected(true);
        }
        if (event.type === "ADDED" || event.type === "MODIFIED" || event.type === "DELETED")
          this.handlers.onEvent(event.type, this.opts.keep?.(event.object) ?? event.object);
      },
      (err) => {
        if (this.watching === handle) this.watching = null;
        if (this.stopped || done) return;
        done = true;
        if (err instanceof KubeError && err.status === 410) {
          void this.relist("");
          return;
        }
        if (err === undefined) {
          // A clean close is the server's timeout: watch again at once from the
          // last resourceVersion, unless it came straight back (a proxy that
          // closes everything), which is paced by the backoff.
          this.setConnected(true);
          if (Date.now() - started > 1000) {
            this.backoffMs = this.opts.minBackoffMs ?? MIN_BACKOFF_MS;
            this.watch();
          } else this.retryAfterBackoff(() => this.watch());
          return;
        }
        this.failed(err, () => this.watch());
      },
      (seconds + 30) * 1000,
    );
    this.watching = handle;
  }

  private failed(err: Error, retry: () => void): void {
    this.setConnected(false, err);
    this.retryAfterBackoff(retry);
  }

  private retryAfterBackoff(retry: () => void): void {
    if (this.stopped) return;
    const delay = this.backoffMs;
    this.backoffMs = Math.min(this.opts.maxBackoffMs ?? MAX_BACKOFF_MS, delay * 2);
    this.timer = setTimeout(() => {
      this.timer = null;
      retry();
    }, delay);
  }

  private setConnected(connected: boolean, err?: Error): void {
    if (this.connected === connected) return;
    this.connected = connected;
    this.handlers.onConnection?.(connected, err);
  }
}

/**
 * A list answer, each of its items parsed on its own and handed to `onItem`
 * at once: a page is megabytes of Nodes, and parsed whole every object of it
 * lives until the last one is read, which with weftd's small young
 * generation sends them all through the old one (most of the CPU of a
 * 5,000-node start went to the garbage collector). Returns the rest of the
 * answer (its metadata), items left out. Anything but a top-level "items"
 * array of objects is parsed whole, the same way.
 */
export function parseListPage(
  text: string,
  onItem: (item: KubeObject) => void,
): { metadata?: { resourceVersion?: string; continue?: string } } {
  const spans = itemSpans(text);
  if (spans === null) {
    const page = JSON.parse(text) as { items?: KubeObject[]; metadata?: { resourceVersion?: string } };
    for (const item of Array.isArray(page.items) ? page.items : []) onItem(item);
    return page;
  }
  const { open, close, starts, ends } = spans;
  const rest = JSON.parse(`${text.slice(0, open)}[]${text.slice(close + 1)}`);
  for (let k = 0; k < starts.length; k++) onItem(JSON.parse(text.slice(starts[k], ends[k])) as KubeObject);
  return rest;
}

const QUOTE = 34;
const BACKSLASH = 92;

/**
 * Where the top-level "items" array is ([open, close]) and each of its
 * elements, found by following JSON's nesting and strings only (JSON.parse
 * checks each piece); null when the answer has no such array of objects.
 */
function itemSpans(text: string): { open: number; close: number; starts: number[]; ends: number[] } | null {
  const starts: number[] = [];
  const ends: number[] = [];
  let depth = 0;
  let open = -1;
  let lastKeyWasItems = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === QUOTE) {
      let j = i;
      for (;;) {
        j = text.indexOf('"', j + 1);
        if (j < 0) return null;
        let backslashes = 0;
        while (text.charCodeAt(j - 1 - backslashes) === BACKSLASH) backslashes++;
        if (backslashes % 2 === 0) break;
      }
      if (depth === 1) lastKeyWasItems = j - i === 6 && text.startsWith('"items"', i);
      i = j;
      continue;
    }
    const inItems = open >= 0 && depth === 2;
    if (c === 123 /* { */ || c === 91 /* [ */) {
      if (inItems) {
        if (c !== 123) return null;
        starts.push(i);
      } else if (depth === 1 && c === 91 && lastKeyWasItems && open < 0) open = i;
      depth++;
    } else if (c === 125 /* } */ || c === 93 /* ] */) {
      depth--;
      if (open >= 0 && depth === 2 && starts.length === ends.length + 1) ends.push(i + 1);
      else if (open >= 0 && depth === 1 && c === 93 && ends.length === starts.length)
        return { open, close: i, starts, ends };
    } else if (inItems && c !== 44 /* , */ && c !== 32 && c !== 10 && c !== 13 && c !== 9) return null;
  }
  return null;
}

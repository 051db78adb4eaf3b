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
  /**
   * The top-level members of each listed object that `keep` reads (default:
   * all): the others are skipped unparsed as each page is read.
   */
  readonly pick?: readonly string[];
}

interface ListPage {
  /** This page's items, as they are read. */
  readonly items: KubeObject[];
  readonly continueToken: Promise<string>;
  /** The answer without its items, once all of it is read. */
  readonly done: Promise<ListPageRest>;
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

  /**
   * One complete listing, page by page; rejects with a KubeError. A page's
   * list metadata comes before its items (Go encodes ListMeta first), so the
   * next page is asked for as soon as this one's continue token is read:
   * the server builds page n+1 while page n is still being read. At most two
   * pages are in flight; items are kept in the server's order.
   */
  async list(resourceVersion: string): Promise<{ items: KubeObject[]; resourceVersion: string }> {
    const pages: KubeObject[][] = [];
    let next = this.page("", resourceVersion);
    for (;;) {
      const current = next;
      pages.push(current.items);
      const cont = await current.continueToken;
      if (cont !== "") next = this.page(cont, resourceVersion);
      const rest = await current.done;
      if (cont === "") return { items: pages.flat(), resourceVersion: rest.metadata?.resourceVersion ?? "" };
    }
  }

  /** Asks for one list page; `continueToken` resolves once its list metadata is read ("" on the last page, or on error). */
  private page(cont: string, resourceVersion: string): ListPage {
    const q = new URLSearchParams({ limit: String(LIST_LIMIT) });
    if (cont !== "") q.set("continue", cont);
    else if (resourceVersion !== "") q.set("resourceVersion", resourceVersion);
    const keep = this.opts.keep ?? ((o: KubeObject) => o);
    const items: KubeObject[] = [];
    let token: (cont: string) => void = () => {};
    const continueToken = new Promise<string>((resolve) => {
      token = resolve;
    });
    const reader = new ListPageReader(
      (item) => items.push(keep(item)),
      this.opts.pick,
      (head) => token(head.metadata?.continue ?? ""),
    );
    const done = this.client.requestStreamed(`${this.opts.path}?${q}`, reader).then(
      (rest) => {
        token(rest.metadata?.continue ?? "");
        return rest;
      },
      (err) => {
        token("");
        throw err;
      },
    );
    // A page ahead may fail before the one being read ends: its error is
    // thrown when its turn comes, or dropped with it when an earlier page fails.
    done.catch(() => {});
    return { items, continueToken, done };
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
 * at once (parseListPage on a whole text; ListPageReader as it arrives).
 */
export function parseListPage(
  text: string,
  onItem: (item: KubeObject) => void,
  pick?: readonly string[],
): ListPageRest {
  const reader = new ListPageReader(onItem, pick);
  reader.write(Buffer.from(text));
  return reader.end();
}

export type ListPageRest = { metadata?: { resourceVersion?: string; continue?: string } };

const QUOTE = 34;
const BACKSLASH = 92;
const COLON = 58;
const COMMA = 44;
const OPEN_BRACE = 123;
const CLOSE_BRACE = 125;
const OPEN_BRACKET = 91;
const CLOSE_BRACKET = 93;
const ITEMS = [105, 116, 101, 109, 115]; // "items"

function isSpace(c: number): boolean {
  return c === 32 || c === 10 || c === 13 || c === 9;
}

function pickOf(item: unknown, pick: readonly string[] | undefined): KubeObject {
  if (pick === undefined || item === null || typeof item !== "object" || Array.isArray(item)) return item as KubeObject;
  const out: KubeObject = {};
  for (const key of pick) if (Object.hasOwn(item, key)) out[key] = (item as KubeObject)[key];
  return out;
}

/**
 * A list answer read chunk by chunk as it arrives: each element of its
 * top-level "items" array is parsed on its own and handed to `onItem` at
 * once, so neither the answer (megabytes of Nodes a page) nor its parsed
 * objects are ever held whole: parsed whole, every object of a page lives
 * until the last one is read, which with weftd's small young generation
 * sends them all through the old one, and the page's text is one more
 * young-generation string per chunk plus a flat copy. The scan follows
 * JSON's nesting and strings only; JSON.parse checks each piece. With
 * `pick`, only those top-level members of each object item are parsed (a
 * Node's status, ~90 % of its bytes, is skipped unparsed, so unchecked).
 * end() returns the rest of the answer (its metadata), "items" left empty;
 * an answer without a top-level "items" array is parsed whole there. With
 * `onHead`, the members before "items" are handed over as soon as the array
 * opens (a list's metadata, with its continue token, comes first).
 */
export class ListPageReader {
  private readonly onItem: (item: KubeObject) => void;
  private readonly pick: readonly string[] | undefined;
  private readonly onHead: ((head: ListPageRest) => void) | undefined;
  private depth = 0;
  private inString = false;
  private escaped = false;
  /** Before the "items" array (0), in it (1), after it (2). */
  private state = 0;
  /** At depth 1 before the array: read the key "items" (1) and its colon (2). */
  private itemsKey = 0;
  /** Bytes of a key being read (depth 1, or an item's member with `pick`), and whether it had an escape. */
  private key: number[] | null = null;
  private keyEscaped = false;
  /** What is being copied out: from `captureFrom` in the current chunk, after `pieces`. */
  private capturing = true;
  private captureFrom = 0;
  private pieces: Buffer[] = [];
  private readonly rest: string[] = [];
  private inElement = false;
  private afterComma = false;
  private elementIsObject = false;
  private expectKey = false;
  private wanted = false;
  private refilter = false;
  private kept: string[] = [];

  constructor(onItem: (item: KubeObject) => void, pick?: readonly string[], onHead?: (head: ListPageRest) => void) {
    this.onItem = onItem;
    this.pick = pick;
    this.onHead = onHead;
  }

  write(chunk: Buffer): void {
    if (this.capturing) this.captureFrom = 0;
    const n = chunk.length;
    for (let i = 0; i < n; i++) {
      const c = chunk[i] as number;
      if (this.inString) {
        if (this.key === null && !this.escaped) {
          // A value's string: skip to its closing quote (memchr), one not
          // escaped by an odd run of backslashes before it.
          const j = chunk.indexOf(QUOTE, i);
          const end = j < 0 ? n : j;
          let backslashes = 0;
          while (end - 1 - backslashes >= i && chunk[end - 1 - backslashes] === BACKSLASH) backslashes++;
          if (j < 0) {
            this.escaped = backslashes % 2 === 1;
            break;
          }
          i = j;
          if (backslashes % 2 === 0) this.inString = false;
          continue;
        }
        if (this.escaped) this.escaped = false;
        else if (c === BACKSLASH) {
          this.escaped = true;
          this.keyEscaped = true;
        } else if (c === QUOTE) {
          this.inString = false;
          if (this.key !== null) this.keyRead();
        } else if (this.key !== null) this.key.push(c);
        continue;
      }
      const depth = this.depth;
      if (this.state === 1 && depth === 2) {
        if (c === COMMA || c === CLOSE_BRACKET) {
          if (this.inElement) this.endElement(chunk, i);
          else if (c === COMMA || this.afterComma) throw new SyntaxError("an empty element in items");
          this.afterComma = c === COMMA;
          if (c === CLOSE_BRACKET) {
            this.depth = 1;
            this.state = 2;
            this.startCapture(i + 1);
          }
          continue;
        }
        if (!this.inElement && !isSpace(c)) this.startElement(i, c);
      }
      if (c === QUOTE) {
        this.inString = true;
        this.keyEscaped = false;
        if (depth === 1 && this.state === 0) this.key = [];
        else if (depth === 3 && this.expectKey) {
          this.key = [];
          this.expectKey = false;
          this.startCapture(i);
        }
      } else if (c === OPEN_BRACE || c === OPEN_BRACKET) {
        if (depth === 1 && this.state === 0 && this.itemsKey === 2 && c === OPEN_BRACKET) {
          this.rest.push(this.takeCapture(chunk, i), "[]");
          this.state = 1;
          this.head();
        }
        this.depth++;
      } else if (c === CLOSE_BRACE || c === CLOSE_BRACKET) {
        this.depth--;
        if (this.depth === 2 && this.state === 1 && this.expectKey === false && this.memberOpen())
          this.endMember(chunk, i);
      } else if (depth === 3 && c === COMMA && this.memberOpen()) {
        this.endMember(chunk, i);
        this.expectKey = true;
      } else if (depth === 3 && c === COMMA && this.state === 1 && this.elementIsObject && this.pick !== undefined)
        this.expectKey = true;
      if (depth === 1 && this.state === 0 && !this.inString) {
        if (c === COLON && this.itemsKey === 1) this.itemsKey = 2;
        else if (c !== QUOTE && !isSpace(c)) this.itemsKey = 0;
      }
    }
    if (this.capturing) {
      this.pieces.push(chunk.subarray(this.captureFrom));
      this.captureFrom = 0;
    }
  }

  end(): ListPageRest {
    if (this.state === 1 || this.inString) throw new SyntaxError("the answer ends inside its items");
    if (this.capturing) this.rest.push(this.takeCapture(Buffer.alloc(0), 0));
    const rest = JSON.parse(this.rest.join("")) as ListPageRest & { items?: unknown };
    if (this.state === 0 && Array.isArray(rest.items))
      for (const item of rest.items) this.onItem(pickOf(item, this.pick));
    return rest;
  }

  /**
   * The members before "items" (a list's kind, apiVersion and metadata), to
   * onHead; a head that does not parse is left for end() to reject, and
   * onHead is then not called.
   */
  private head(): void {
    if (this.onHead === undefined) return;
    let head: ListPageRest;
    try {
      head = JSON.parse(`${this.rest.join("")}}`) as ListPageRest;
    } catch {
      return;
    }
    this.onHead(head);
  }

  /** With `pick`, a member of an object item is being read (from its key's quote). */
  private memberOpen(): boolean {
    return this.inElement && this.elementIsObject && this.pick !== undefined && this.capturing;
  }

  private keyRead(): void {
    const key = this.key as number[];
    this.key = null;
    if (this.state === 0 && this.depth === 1) {
      this.itemsKey = !this.keyEscaped && key.length === 5 && key.every((b, k) => b === ITEMS[k]) ? 1 : 0;
      return;
    }
    // A member's name: an escaped one is kept and sorted out after parsing.
    this.wanted = this.keyEscaped || (this.pick as readonly string[]).includes(Buffer.from(key).toString());
    if (this.keyEscaped) this.refilter = true;
    if (!this.wanted) {
      this.capturing = false;
      this.pieces = [];
    }
  }

  private startElement(i: number, c: number): void {
    this.inElement = true;
    this.afterComma = false;
    this.elementIsObject = c === OPEN_BRACE;
    this.refilter = false;
    if (this.pick !== undefined && this.elementIsObject) {
      this.kept = [];
      this.expectKey = true;
    } else this.startCapture(i);
  }

  private endMember(chunk: Buffer, end: number): void {
    this.kept.push(this.takeCapture(chunk, end));
  }

  private endElement(chunk: Buffer, end: number): void {
    this.inElement = false;
    this.expectKey = false;
    let item: unknown;
    if (this.pick !== undefined && this.elementIsObject) {
      this.capturing = false;
      this.pieces = [];
      item = JSON.parse(`{${this.kept.join(",")}}`);
      this.kept = [];
      if (this.refilter) item = pickOf(item, this.pick);
    } else item = pickOf(JSON.parse(this.takeCapture(chunk, end)), this.pick);
    this.onItem(item as KubeObject);
  }

  private startCapture(from: number): void {
    this.capturing = true;
    this.captureFrom = from;
    this.pieces = [];
  }

  private takeCapture(chunk: Buffer, end: number): string {
    this.capturing = false;
    const last = chunk.subarray(this.captureFrom, end);
    const pieces = this.pieces;
    this.pieces = [];
    if (pieces.length === 0) return last.toString();
    pieces.push(last);
    return Buffer.concat(pieces).toString();
  }
}

// The embedded registry for one machine: a directory laid out like flannel's
// etcd keys, so `ls` and `cat` show what etcdctl would.
//
//   <dir>/config                    the network config JSON (etcd: <prefix>/config)
//   <dir>/subnets/10.244.68.0-24    {"PublicIP":"198.18.0.1","PublicIPv6":null}
//   <dir>/leases/10.244.68.0-24     expiry in ms since the epoch; no file = a reservation
//   <dir>/tmp/                      scratch files that become keys by link() or rename()
//
// Several weftd processes may share the directory, so every write is atomic:
// a file is written completely under tmp/ and then appears under its name in
// one step. A lease is created sidecar first, both by link(), which fails
// when the name exists: whoever links the sidecar may link the key, and a key
// never appears without its expiry (a key without one would look like a
// reservation that never expires). Deletion goes the other way: key, then
// sidecar. Expired leases count as absent and whoever scans removes them.
//
// There is no change log, so a watch diffs what it reads against what it
// reported. inotify on subnets/ and leases/ names the key that changed and only
// that key is re-read; a timer set for the earliest known expiry re-reads the
// leases that have expired; a slow full rescan catches whatever inotify missed
// (NFS, a lost event, a directory moved away and back). Re-reading every key
// every second made enough garbage to grow V8's old space about 1 MB a minute.

import { randomBytes } from "node:crypto";
import {
  closeSync,
  constants,
  type FSWatcher,
  fstatSync,
  lstatSync,
  openSync,
  readSync,
  watch as watchDirectory,
} from "node:fs";
import { link, lstat, mkdir, open, readdir, rename, unlink } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { formatIpv4, formatPrefix, type Ipv4Prefix } from "../../net/addr.js";
import {
  decodeLeaseValue,
  encodeLeaseValue,
  type Lease,
  type LeaseEvent,
  type LeaseListing,
  parseSubnetKey,
  type Registry,
  subnetKey,
  type Watch,
  type WatchHandlers,
} from "./registry.js";

export interface FileRegistryOptions {
  /**
   * How often a watch re-reads every key to catch what inotify missed (changes
   * arrive through inotify, expiries on their own timer). Default 30 s; while the
   * directory is missing or cannot be watched, at most 1 s.
   */
  readonly rescanIntervalMs?: number;
  /** Clock for expiries, ms since the epoch (tests inject one). Default Date.now. */
  readonly now?: () => number;
  /**
   * A sidecar without its key younger than this may be a create in flight;
   * older ones are leftovers of a crash and get removed. Default 10 s.
   */
  readonly orphanGraceMs?: number;
  /** @internal Called with each key, expiry file and directory listing read (tests count them). */
  readonly onRead?: (path: string) => void;
}

/** One key as read from disk: a lease, a reason it cannot be used, or null when it vanished. */
type Entry = { readonly publicIp: number; readonly expiresAt: number | null; readonly expiryText: string | null };

/** What one name under subnets/ holds now; `unusable` marks a subnet key whose value cannot be used. */
type KeyState =
  | { readonly kind: "lease"; readonly lease: Lease }
  | { readonly kind: "absent" }
  | { readonly kind: "skipped"; readonly reason: string; readonly unusable: boolean };

const ABSENT: KeyState = { kind: "absent" };
const NOT_A_KEY: KeyState = {
  kind: "skipped",
  reason: "the name is not a subnet key like 10.244.68.0-24",
  unusable: false,
};

interface Scan {
  readonly leases: Map<string, Lease>;
  readonly skipped: { key: string; reason: string }[];
  /** Key names among `skipped` that are subnet keys with an unusable value. */
  readonly unusable: Set<string>;
}

/**
 * Keys read per event-loop turn. Reads are synchronous (a key and its sidecar
 * are a few µs of system calls; through the thread pool each cost ~80 µs of
 * CPU in promises and callbacks, 0.9 s per scan of 5,000 keys), in chunks
 * so a scan never holds the thread that forwards packets for more than a few ms.
 */
const READ_CHUNK = 128;
const DEFAULT_RESCAN_MS = 30_000;
/** How often a watch retries while the directory is missing or cannot be watched. */
const RETRY_MS = 1000;
/** setTimeout fires at once for delays above 2^31-1 ms. */
const LONGEST_TIMER_MS = 2 ** 31 - 1;
/**
 * Listings a watch may start from; older revisions get a resync instead. Each
 * holds every lease (a Map entry, a Lease and its subnet per peer), and a lease manager watches from
 * the listing it just took, so two suffice.
 */
const KEPT_SNAPSHOTS = 2;
/** Own writes kept for watches from a kept listing (a renewal a day adds one while no listing is taken). */
const KEPT_WRITES = 64;

interface OwnWrite {
  /** The revision of the newest listing when the write was made. */
  readonly after: number;
  readonly name: string;
  readonly event: LeaseEvent;
}

export class FileRegistry implements Registry {
  readonly description: string;
  private readonly configPath: string;
  private readonly subnetsDir: string;
  private readonly leasesDir: string;
  private readonly tmpDir: string;
  private readonly rescanIntervalMs: number;
  private readonly orphanGraceMs: number;
  private readonly now: () => number;
  private readonly onRead: ((path: string) => void) | undefined;
  private revision = 0;
  private readonly snapshots = new Map<number, ReadonlyMap<string, Lease>>();
  /** This registry's writes, each after the listing it followed (see wrote()). */
  private readonly ownWrites: OwnWrite[] = [];
  private readonly watches = new Set<DirectoryWatch>();
  private tempCounter = 0;

  private constructor(
    readonly dir: string,
    options: FileRegistryOptions,
  ) {
    this.description = `dir ${dir}`;
    this.configPath = join(dir, "config");
    this.subnetsDir = join(dir, "subnets");
    this.leasesDir = join(dir, "leases");
    this.tmpDir = join(dir, "tmp");
    this.rescanIntervalMs = options.rescanIntervalMs ?? DEFAULT_RESCAN_MS;
    this.orphanGraceMs = options.orphanGraceMs ?? 10_000;
    this.now = options.now ?? Date.now;
    this.onRead = options.onRead;
  }

  /** Creates the layout when missing; throws one sentence when the directory cannot be written. */
  static async open(dir: string, options: FileRegistryOptions = {}): Promise<FileRegistry> {
    const registry = new FileRegistry(dir, options);
    try {
      for (const sub of [registry.subnetsDir, registry.leasesDir, registry.tmpDir]) {
        await makeDirs(sub);
      }
      // mkdir succeeds on an existing read-only directory; only a write proves access.
      const probe = await registry.writeTemp("");
      await unlink(probe);
    } catch (err) {
      throw new Error(`registry dir ${dir} is not writable: ${errorCode(err)}`);
    }
    return registry;
  }

  async getNetworkConfig(): Promise<string | null> {
    try {
      // The config may be a link (to a file an operator manages elsewhere); keys may not.
      // Read synchronously, as keys are: weftd reads it every 10 s, and four
      // thread-pool round trips cost an idle daemon more than the read itself.
      return readRegularFileNow(this.configPath, { followLink: true });
    } catch (err) {
      if (errorCode(err) === "ENOENT") return null;
      throw err;
    }
  }

  /** Writes `<dir>/config` atomically (the embedded counterpart of `etcdctl put <prefix>/config`). */
  async setNetworkConfig(json: string): Promise<void> {
    await this.replaceFromTemp(json, this.configPath);
  }

  async getLeases(): Promise<LeaseListing> {
    const scan = await this.scan();
    return this.listing(scan);
  }

  async createLease(subnet: Ipv4Prefix, publicIp: number, ttlSeconds: number): Promise<Lease | null> {
    const name = subnetKey(subnet);
    // Checked first so that a reservation's empty sidecar slot is not touched.
    if (await pathExists(join(this.subnetsDir, name))) return null;
    const expiresAt = this.expiryAfter(ttlSeconds);
    if (!(await this.claimSidecar(name, expiresAt))) return null;
    if (!(await this.linkFromTemp(encodeLeaseValue(publicIp), join(this.subnetsDir, name)))) {
      // The key exists without a sidecar (a reservation) or appeared meanwhile.
      await this.removeSidecarIfUnchanged(name, String(expiresAt));
      return null;
    }
    return this.wrote(name, subnet, { subnet, publicIp, expiresAt });
  }

  async updateLease(lease: Lease, publicIp: number, ttlSeconds: number): Promise<Lease> {
    const name = subnetKey(lease.subnet);
    const keyPath = join(this.subnetsDir, name);
    const value = encodeLeaseValue(publicIp);
    const current = this.readEntry(name);
    if (typeof current === "string") {
      throw new Error(
        `lease ${formatPrefix(lease.subnet)} cannot be rewritten because its key is unreadable: ${current}`,
      );
    }
    if (current === null) {
      // Expired and removed, or deleted: take it again, atomically like a create.
      if (lease.expiresAt === null) {
        if (await this.linkFromTemp(value, keyPath))
          return this.wrote(name, lease.subnet, { subnet: lease.subnet, publicIp, expiresAt: null });
      } else {
        const recreated = await this.createLease(lease.subnet, publicIp, ttlSeconds);
        if (recreated !== null) return recreated;
      }
      throw new Error(`lease ${formatPrefix(lease.subnet)} was taken by another host while being rewritten`);
    }
    if (current.publicIp !== lease.publicIp) {
      throw new Error(
        `lease ${formatPrefix(lease.subnet)} is held by ${formatIpv4(current.publicIp)}, not ${formatIpv4(lease.publicIp)}`,
      );
    }
    // What is on disk decides whether this is a reservation: the caller's copy may be stale.
    if (current.expiresAt === null) {
      await this.replaceFromTemp(value, keyPath);
      return this.wrote(name, lease.subnet, { subnet: lease.subnet, publicIp, expiresAt: null });
    }
    const expiresAt = this.expiryAfter(ttlSeconds);
    // Sidecar before key: a reader that sees the new key also sees the new expiry.
    await this.replaceFromTemp(String(expiresAt), join(this.leasesDir, name));
    await this.replaceFromTemp(value, keyPath);
    return this.wrote(name, lease.subnet, { subnet: lease.subnet, publicIp, expiresAt });
  }

  async deleteLease(subnet: Ipv4Prefix): Promise<void> {
    const name = subnetKey(subnet);
    await unlinkIfPresent(join(this.subnetsDir, name));
    await unlinkIfPresent(join(this.leasesDir, name));
    this.wrote(name, subnet, null);
  }

  /**
   * Our own write, remembered after the listing it followed: a directory
   * watch sees states, not events, so a watch from that listing replays it
   * (registry semantics: every change after the revision) and diffs its first
   * scan against the result; a key we wrote and someone else removed before
   * that scan is then reported gone, as etcd would report both.
   */
  private wrote<T extends Lease | null>(name: string, subnet: Ipv4Prefix, lease: T): T {
    this.ownWrites.push({
      after: this.revision,
      name,
      event: lease === null ? { type: "delete", subnet } : { type: "put", lease },
    });
    const oldest = Math.min(...this.snapshots.keys());
    while ((this.ownWrites[0]?.after ?? oldest) < oldest) this.ownWrites.shift();
    if (this.ownWrites.length > KEPT_WRITES) {
      // Listings older than the dropped write can no longer be replayed from: a watch from them resyncs.
      const dropped = this.ownWrites.shift() as OwnWrite;
      for (const revision of this.snapshots.keys()) if (revision <= dropped.after) this.snapshots.delete(revision);
    }
    return lease;
  }

  watchLeases(revision: number, handlers: WatchHandlers): Watch {
    const watch = new DirectoryWatch(
      this,
      this.subnetsDir,
      this.leasesDir,
      this.rescanIntervalMs,
      this.snapshots.get(revision) ?? null,
      this.ownWrites.filter((w) => w.after >= revision),
      handlers,
    );
    this.watches.add(watch);
    watch.start();
    return {
      close: () => {
        watch.close();
        this.watches.delete(watch);
      },
    };
  }

  async close(): Promise<void> {
    for (const watch of this.watches) watch.close();
    this.watches.clear();
  }

  /** @internal A listing with a fresh revision, remembered so a watch can start from it. */
  listing(scan: Scan): LeaseListing {
    this.revision += 1;
    this.snapshots.set(this.revision, scan.leases);
    for (const old of this.snapshots.keys()) {
      if (this.snapshots.size <= KEPT_SNAPSHOTS) break;
      this.snapshots.delete(old);
    }
    const leases = [...scan.leases.values()].sort(
      (a, b) => a.subnet.base - b.subnet.base || a.subnet.len - b.subnet.len,
    );
    return { leases, revision: this.revision, skipped: scan.skipped };
  }

  /** @internal Reads every key; throws only when the subnets directory itself cannot be read. */
  async scan(): Promise<Scan> {
    this.onRead?.(this.subnetsDir);
    const names = (await readdir(this.subnetsDir)).sort();
    const now = this.now();
    const leases = new Map<string, Lease>();
    const skipped: { key: string; reason: string }[] = [];
    const unusable = new Set<string>();
    const states = await this.readKeys(names, now);
    for (let j = 0; j < names.length; j++) {
      const name = names[j] as string;
      const state = states[j] as KeyState;
      if (state.kind === "lease") {
        leases.set(name, state.lease);
      } else if (state.kind === "skipped") {
        skipped.push({ key: join(this.subnetsDir, name), reason: state.reason });
        if (state.unusable) unusable.add(name);
      }
    }
    await this.removeOrphanSidecars(new Set(names), now);
    return { leases, skipped, unusable };
  }

  /**
   * @internal What each of `names` under subnets/ holds now, READ_CHUNK keys
   * per turn; expired leases are removed (after the reads) and read as absent.
   */
  async readKeys(names: readonly string[], now: number): Promise<KeyState[]> {
    const states: KeyState[] = [];
    const expired: [string, Entry][] = [];
    for (let i = 0; i < names.length; i++) {
      if (i > 0 && i % READ_CHUNK === 0) await new Promise<void>((resolve) => setImmediate(resolve));
      const name = names[i] as string;
      const subnet = parseSubnetKey(name);
      if (subnet === null) {
        states.push(existsNow(join(this.subnetsDir, name)) ? NOT_A_KEY : ABSENT);
        continue;
      }
      const entry = this.readEntry(name);
      if (entry === null) states.push(ABSENT);
      else if (typeof entry === "string") states.push({ kind: "skipped", reason: entry, unusable: true });
      else if (entry.expiresAt !== null && entry.expiresAt < now) {
        expired.push([name, entry]);
        states.push(ABSENT);
      } else states.push({ kind: "lease", lease: { subnet, publicIp: entry.publicIp, expiresAt: entry.expiresAt } });
    }
    for (const [name, entry] of expired) await this.removeExpired(name, entry).catch(() => {});
    return states;
  }

  /** @internal The registry's clock, ms since the epoch. */
  clock(): number {
    return this.now();
  }

  /** @internal False when subnets/ is gone (moved away, unmounted): a missing key then proves nothing. */
  async keysDirExists(): Promise<boolean> {
    return pathExists(this.subnetsDir).catch(() => false);
  }

  private readEntry(name: string): Entry | string | null {
    let value: string;
    const keyPath = join(this.subnetsDir, name);
    this.onRead?.(keyPath);
    try {
      value = readRegularFileNow(keyPath);
    } catch (err) {
      if (errorCode(err) === "ENOENT") return null;
      return `the key cannot be read: ${unreadable(err)}`;
    }
    const publicIp = decodeLeaseValue(value);
    if (typeof publicIp === "string") return publicIp;
    let expiryText: string | null;
    const sidecar = join(this.leasesDir, name);
    this.onRead?.(sidecar);
    try {
      expiryText = readOptionalNow(sidecar);
    } catch (err) {
      return `the expiry in leases/${name} cannot be read: ${unreadable(err)}`;
    }
    if (expiryText === null) return { publicIp, expiresAt: null, expiryText: null };
    if (!/^\d{1,16}$/.test(expiryText.trim())) {
      return `the expiry ${JSON.stringify(expiryText)} in leases/${name} is not a number of milliseconds`;
    }
    return { publicIp, expiresAt: Number(expiryText.trim()), expiryText };
  }

  private expiryAfter(ttlSeconds: number): number {
    return Math.round(this.now() + ttlSeconds * 1000);
  }

  /** Links a fresh sidecar; a leftover one from a crash does not block the subnet forever. */
  private async claimSidecar(name: string, expiresAt: number): Promise<boolean> {
    const sidecar = join(this.leasesDir, name);
    if (await this.linkFromTemp(String(expiresAt), sidecar)) return true;
    if (!(await this.removeOrphanSidecar(name, this.now()))) return false;
    return this.linkFromTemp(String(expiresAt), sidecar);
  }

  private async removeExpired(name: string, entry: Entry): Promise<void> {
    // Re-read right before removing: the owner may have renewed since the scan read it.
    // A renewal landing between this check and the unlink is lost; the owner then
    // sees its key deleted, as it would when etcd expires a lease it renewed too late.
    const expiryText = await readOptional(join(this.leasesDir, name));
    if (expiryText !== entry.expiryText) return;
    await unlinkIfPresent(join(this.subnetsDir, name));
    await this.removeSidecarIfUnchanged(name, entry.expiryText);
  }

  private async removeOrphanSidecars(keyNames: ReadonlySet<string>, now: number): Promise<void> {
    let sidecars: string[];
    this.onRead?.(this.leasesDir);
    try {
      sidecars = await readdir(this.leasesDir);
    } catch {
      return;
    }
    for (const name of sidecars) {
      // Best effort: a sidecar that cannot be removed now is retried on the next scan.
      if (!keyNames.has(name)) await this.removeOrphanSidecar(name, now).catch(() => false);
    }
  }

  /** Removes the sidecar of `name` when it has no key and is expired or old; true when the slot is free. */
  private async removeOrphanSidecar(name: string, now: number): Promise<boolean> {
    if (await pathExists(join(this.subnetsDir, name))) return false;
    const sidecar = join(this.leasesDir, name);
    let mtimeMs: number;
    try {
      mtimeMs = (await lstat(sidecar)).mtimeMs;
    } catch (err) {
      return errorCode(err) === "ENOENT";
    }
    const text = await readOptional(sidecar);
    if (text === null) return true;
    const expiry = Number(text.trim());
    const expired = Number.isFinite(expiry) && expiry < now;
    // A young sidecar without its key is probably a create in flight in another process.
    if (!expired && Date.now() - mtimeMs < this.orphanGraceMs) return false;
    await this.removeSidecarIfUnchanged(name, text);
    return !(await pathExists(sidecar));
  }

  /**
   * Removes the sidecar of `name` if it still holds `expectedText`. Reading
   * and then unlinking by name would race with a create that replaced the
   * sidecar in between (the fresh one would go, leaving a key that looks like
   * a reservation forever), so the sidecar is first taken away atomically by
   * rename, checked, and put back by link() when it turns out to be new.
   */
  private async removeSidecarIfUnchanged(name: string, expectedText: string | null): Promise<void> {
    if (expectedText === null) return;
    const sidecar = join(this.leasesDir, name);
    if ((await readOptional(sidecar)) !== expectedText) return;
    const taken = this.tempName();
    try {
      await rename(sidecar, taken);
    } catch (err) {
      if (errorCode(err) === "ENOENT") return;
      throw err;
    }
    try {
      if ((await readOptional(taken)) === expectedText) return;
      // Someone's fresh sidecar: put it back, unless an even newer one appeared.
      await link(taken, sidecar).catch((err: unknown) => {
        if (errorCode(err) !== "EEXIST") throw err;
      });
    } finally {
      await unlinkIfPresent(taken);
    }
  }

  /** A fresh name under tmp/, unique across processes sharing the directory. */
  private tempName(): string {
    this.tempCounter += 1;
    return join(this.tmpDir, `${process.pid}-${this.tempCounter}-${randomBytes(4).toString("hex")}`);
  }

  private async writeTemp(content: string): Promise<string> {
    const path = this.tempName();
    const file = await open(path, "wx", 0o644);
    try {
      await file.writeFile(content);
      await file.sync();
    } finally {
      await file.close();
    }
    return path;
  }

  /** Makes `target` appear with `content` unless it exists; false when it did. */
  private async linkFromTemp(content: string, target: string): Promise<boolean> {
    const temp = await this.writeTemp(content);
    try {
      await link(temp, target);
      return true;
    } catch (err) {
      if (errorCode(err) === "EEXIST") return false;
      throw err;
    } finally {
      await unlinkIfPresent(temp);
    }
  }

  private async replaceFromTemp(content: string, target: string): Promise<void> {
    const temp = await this.writeTemp(content);
    try {
      await rename(temp, target);
    } catch (err) {
      await unlinkIfPresent(temp);
      throw err;
    }
  }
}

/**
 * Turns what changes on disk into events: inotify names a key (or its sidecar)
 * and that key alone is re-read; the expiry timer re-reads leases whose expiry
 * has passed; a full rescan (at start, on a slow timer, and whenever inotify
 * cannot be trusted) diffs everything. One read runs at a time, full rescans first.
 */
class DirectoryWatch {
  private closed = false;
  private running = false;
  private fullScanPending = true;
  /** Key names inotify reported since they were last read. */
  private readonly dirty = new Set<string>();
  private connected: boolean | null = null;
  private rescanTimer: NodeJS.Timeout | null = null;
  private expiryTimer: NodeJS.Timeout | null = null;
  /** The expiry the armed expiry timer is for; Infinity when none is armed. */
  private expiryTimerFor = Number.POSITIVE_INFINITY;
  private watchers: FSWatcher[] = [];
  private runSoon: NodeJS.Immediate | null = null;
  /** Skipped keys already reported, so one bad file is reported once, not on every read. */
  private reported = new Map<string, string>();
  /** What the handlers were last told; null means "unknown, resync first". */
  private known: Map<string, Lease> | null;
  /** Own writes since the start revision, not yet reported (the first successful scan does). */
  private replay: LeaseEvent[] = [];

  constructor(
    private readonly registry: FileRegistry,
    private readonly subnetsDir: string,
    private readonly leasesDir: string,
    private readonly rescanIntervalMs: number,
    /** The state at the watch's start revision; null means "unknown, resync first". */
    known: ReadonlyMap<string, Lease> | null,
    /** The registry's own writes since that revision, replayed before the first scan's changes. */
    writes: readonly OwnWrite[],
    private readonly handlers: WatchHandlers,
  ) {
    this.known = known === null ? null : new Map(known);
    if (this.known === null) return;
    for (const { name, event } of writes) {
      if (event.type === "put") this.known.set(name, event.lease);
      else this.known.delete(name);
      this.replay.push(event);
    }
  }

  start(): void {
    this.run();
  }

  close(): void {
    this.closed = true;
    if (this.rescanTimer !== null) clearTimeout(this.rescanTimer);
    this.rescanTimer = null;
    if (this.expiryTimer !== null) clearTimeout(this.expiryTimer);
    this.expiryTimer = null;
    if (this.runSoon !== null) clearImmediate(this.runSoon);
    this.runSoon = null;
    this.closeWatchers();
  }

  /** Attaches inotify before a full rescan reads, so no change falls between the two. */
  private ensureWatchers(): void {
    if (this.watchers.length > 0 || this.closed) return;
    try {
      this.watchers.push(this.watchDirectory(this.subnetsDir, true));
      this.watchers.push(this.watchDirectory(this.leasesDir, false));
    } catch {
      // Gone or unwatchable (e.g. out of inotify watches): rescans every RETRY_MS stand in.
      this.closeWatchers();
    }
  }

  private watchDirectory(dir: string, holdsKeys: boolean): FSWatcher {
    const self = basename(dir);
    const watcher = watchDirectory(dir, { persistent: false }, (_type, filename) =>
      this.onChange(filename, self, holdsKeys),
    );
    watcher.on("error", () => {
      this.closeWatchers();
      this.requestFullScan();
    });
    return watcher;
  }

  private onChange(filename: string | null, self: string, holdsKeys: boolean): void {
    if (this.closed) return;
    if (filename === null || filename === self) {
      // No name, or the directory itself was moved or deleted: inotify follows
      // the old inode, so re-attach to whatever is at the path now.
      this.closeWatchers();
      this.requestFullScan();
      return;
    }
    // Anything else under leases/ is no sidecar; orphans are the full rescan's business.
    if (!holdsKeys && parseSubnetKey(filename) === null) return;
    this.dirty.add(filename);
    // inotify delivers a burst in one turn: read it as one batch, published as one snapshot.
    if (this.runSoon === null) this.runSoon = setImmediate(this.runFromImmediate);
  }

  private readonly runFromImmediate = (): void => {
    this.runSoon = null;
    this.run();
  };

  private closeWatchers(): void {
    for (const watcher of this.watchers) watcher.close();
    this.watchers = [];
  }

  private requestFullScan(): void {
    this.fullScanPending = true;
    this.run();
  }

  private run(): void {
    if (this.running || this.closed) return;
    this.running = true;
    void this.drain().finally(() => {
      this.running = false;
    });
  }

  private async drain(): Promise<void> {
    while (!this.closed && (this.fullScanPending || this.dirty.size > 0)) {
      if (this.fullScanPending) {
        this.fullScanPending = false;
        // A full rescan reads every key; names reported from here on are read again after it.
        this.dirty.clear();
        await this.fullScan();
      } else {
        const names = [...this.dirty];
        this.dirty.clear();
        await this.rereadKeys(names);
      }
    }
  }

  private async fullScan(): Promise<void> {
    this.ensureWatchers();
    let scan: Scan;
    try {
      scan = await this.registry.scan();
    } catch (err) {
      if (this.closed) return;
      this.closeWatchers();
      if (this.connected !== false) {
        this.connected = false;
        this.handlers.onConnection?.(false, err as Error);
      }
      this.scheduleRescan();
      return;
    }
    if (this.closed) return;
    if (this.connected !== true) {
      this.connected = true;
      this.handlers.onConnection?.(true);
    }
    this.scheduleRescan();
    const reportedBefore = this.reported;
    this.reportSkipped(scan.skipped);
    const replay = this.replay;
    this.replay = [];
    if (this.known === null) {
      this.known = new Map(scan.leases);
      this.scheduleExpiry();
      this.handlers.onResync(this.registry.listing(scan));
      return;
    }
    // Like a watch event that cannot be parsed, an unusable value changes nothing:
    // the key keeps its last good lease (a half-written hand edit must not revoke it).
    const current = new Map(scan.leases);
    const now = this.registry.clock();
    for (const name of scan.unusable) {
      const before = this.known.get(name);
      if (before !== undefined && !hasExpired(before, now)) current.set(name, before);
    }
    const events: LeaseEvent[] = replay;
    // Keys reported unusable that no longer are: each is a put or a delete even when
    // the diff alone has nothing to say (as in rereadKeys), so the handlers forget them.
    const repaired = new Set<string>();
    for (const key of reportedBefore.keys()) if (!this.reported.has(key)) repaired.add(basename(key));
    for (const [name, lease] of current) {
      const before = this.known.get(name);
      // Unchanged: keep the Lease already held (by the lease manager too), so a
      // rescan leaves one object per peer, not a second copy of every lease.
      if (before !== undefined && sameLease(before, lease) && !repaired.has(name)) current.set(name, before);
      else events.push({ type: "put", lease });
    }
    for (const [name, lease] of this.known) {
      if (!current.has(name)) events.push({ type: "delete", subnet: lease.subnet });
    }
    for (const name of repaired) {
      const subnet = current.has(name) || this.known.has(name) ? null : parseSubnetKey(name);
      if (subnet !== null) events.push({ type: "delete", subnet });
    }
    this.known = current;
    this.scheduleExpiry();
    this.emit(events);
  }

  private async rereadKeys(names: readonly string[]): Promise<void> {
    const known = this.known;
    // Until a full rescan succeeds there is nothing to diff against; it reads these keys too.
    if (known === null || this.connected !== true) return;
    const now = this.registry.clock();
    const states = await this.registry.readKeys(names, now);
    if (this.closed) return;
    const lostKnownKey = names.some((name, i) => states[i]?.kind === "absent" && known.has(name));
    if (lostKnownKey && !(await this.registry.keysDirExists())) {
      // The directory went away, not the key: the full rescan reports the lost connection.
      this.requestFullScan();
      return;
    }
    if (this.closed) return;
    const events: LeaseEvent[] = [];
    let earliestMoved = false;
    for (let i = 0; i < names.length; i++) {
      const name = names[i] as string;
      const state = states[i] as KeyState;
      const key = join(this.subnetsDir, name);
      const before = known.get(name);
      // The earliest expiry can only have moved if this key held it or now holds an earlier one.
      const after = state.kind === "lease" ? state.lease.expiresAt : null;
      if ((before?.expiresAt ?? Number.POSITIVE_INFINITY) <= this.expiryTimerFor) earliestMoved = true;
      if (after !== null && after < this.expiryTimerFor) earliestMoved = true;
      if (state.kind === "skipped") {
        if (this.reported.get(key) !== state.reason) {
          this.reported.set(key, state.reason);
          this.handlers.onSkipped?.(key, state.reason);
        }
        // An unusable value keeps the key's last good lease, as in a full rescan, until that lease expires.
        if (before !== undefined && hasExpired(before, now)) {
          known.delete(name);
          events.push({ type: "delete", subnet: before.subnet });
        }
        continue;
      }
      const repaired = this.reported.delete(key);
      if (state.kind === "lease") {
        // A repaired key is a put even with its last good lease: the handlers were told it is unusable.
        if (sameLease(before, state.lease) && !repaired) continue;
        known.set(name, state.lease);
        events.push({ type: "put", lease: state.lease });
      } else if (before !== undefined) {
        known.delete(name);
        events.push({ type: "delete", subnet: before.subnet });
      } else if (repaired) {
        // An unusable key without a lease went away: a delete tells the handlers to forget it.
        const subnet = parseSubnetKey(name);
        if (subnet !== null) events.push({ type: "delete", subnet });
      }
    }
    // Not a walk over every known lease per change unless the earliest expiry may have moved.
    if (earliestMoved) this.scheduleExpiry();
    this.emit(events);
  }

  private emit(events: readonly LeaseEvent[]): void {
    for (const event of events) {
      if (this.closed) return;
      this.handlers.onEvent(event);
    }
  }

  private scheduleRescan(): void {
    if (this.rescanTimer !== null) clearTimeout(this.rescanTimer);
    const trusted = this.connected === true && this.watchers.length > 0;
    const delay = trusted ? this.rescanIntervalMs : Math.min(this.rescanIntervalMs, RETRY_MS);
    this.rescanTimer = setTimeout(() => {
      this.rescanTimer = null;
      this.requestFullScan();
    }, delay);
    this.rescanTimer.unref();
  }

  /** Arms one timer for the earliest known expiry; a lease is expired once that moment has passed. */
  private scheduleExpiry(): void {
    let earliest = Number.POSITIVE_INFINITY;
    for (const lease of (this.known as Map<string, Lease>).values()) {
      if (lease.expiresAt !== null && lease.expiresAt < earliest) earliest = lease.expiresAt;
    }
    if (earliest === this.expiryTimerFor || this.closed) return;
    if (this.expiryTimer !== null) clearTimeout(this.expiryTimer);
    this.expiryTimer = null;
    this.expiryTimerFor = earliest;
    if (earliest === Number.POSITIVE_INFINITY) return;
    const delay = Math.min(LONGEST_TIMER_MS, Math.max(0, earliest + 1 - this.registry.clock()));
    this.expiryTimer = setTimeout(() => this.onExpiryTimer(), delay);
    this.expiryTimer.unref();
  }

  private onExpiryTimer(): void {
    this.expiryTimer = null;
    this.expiryTimerFor = Number.POSITIVE_INFINITY;
    const known = this.known;
    if (this.closed || known === null) return;
    const now = this.registry.clock();
    for (const [name, lease] of known) {
      if (lease.expiresAt !== null && lease.expiresAt < now) this.dirty.add(name);
    }
    // Nothing due yet (a capped delay, or the wall clock went back): wait again.
    if (this.dirty.size === 0) this.scheduleExpiry();
    else this.run();
  }

  private reportSkipped(skipped: readonly { key: string; reason: string }[]): void {
    const current = new Map<string, string>();
    for (const { key, reason } of skipped) {
      current.set(key, reason);
      if (this.reported.get(key) !== reason) this.handlers.onSkipped?.(key, reason);
    }
    this.reported = current;
  }
}

/** Expired leases count as absent; the last good lease of an unusable key too, once it has expired. */
function hasExpired(lease: Lease, now: number): boolean {
  return lease.expiresAt !== null && lease.expiresAt < now;
}

function sameLease(a: Lease | undefined, b: Lease): boolean {
  return a !== undefined && a.publicIp === b.publicIp && a.expiresAt === b.expiresAt;
}

/** Most bytes a key, an expiry file or the config may hold; flannel's values are under 100. */
const MAX_FILE_BYTES = 64 * 1024;

/**
 * Reads a file of the registry without trusting what lies there: a FIFO would
 * block the read (and the process's exit) forever, a link to /dev/zero never
 * ends, a link may point anywhere. Only a regular file, at most
 * MAX_FILE_BYTES, and (unless followLink) not through a symbolic link.
 */
async function readRegularFile(path: string, opts: { followLink?: boolean } = {}): Promise<string> {
  const flags = constants.O_RDONLY | constants.O_NONBLOCK | (opts.followLink === true ? 0 : constants.O_NOFOLLOW);
  const file = await open(path, flags);
  try {
    const stat = await file.stat();
    if (!stat.isFile()) throw Object.assign(new Error(`${path} is not a regular file`), { code: "ENOTREG" });
    // One byte more than allowed tells a file that grew past the limit since stat.
    const buffer = Buffer.alloc(Math.min(stat.size, MAX_FILE_BYTES) + 1);
    const { bytesRead } = await file.read(buffer, 0, buffer.length, 0);
    if (bytesRead > MAX_FILE_BYTES) throw Object.assign(new Error(`${path} is too large`), { code: "EFBIG" });
    return buffer.toString("utf8", 0, bytesRead);
  } finally {
    await file.close();
  }
}

/** Why a registry file was refused, in words. */
function unreadable(err: unknown): string {
  switch (errorCode(err)) {
    case "ELOOP":
      return "it is a symbolic link (not followed)";
    case "ENOTREG":
      return "it is not a regular file";
    case "EFBIG":
      return `it is larger than ${MAX_FILE_BYTES} bytes`;
    default:
      return errorCode(err);
  }
}

/** readRegularFile, synchronously (see READ_CHUNK): the same checks, the same errors. */
function readRegularFileNow(path: string, opts: { followLink?: boolean } = {}): string {
  const fd = openSync(
    path,
    constants.O_RDONLY | constants.O_NONBLOCK | (opts.followLink === true ? 0 : constants.O_NOFOLLOW),
  );
  try {
    const stat = fstatSync(fd);
    if (!stat.isFile()) throw Object.assign(new Error(`${path} is not a regular file`), { code: "ENOTREG" });
    const buffer = Buffer.allocUnsafe(Math.min(stat.size, MAX_FILE_BYTES) + 1);
    const bytesRead = readSync(fd, buffer, 0, buffer.length, 0);
    if (bytesRead > MAX_FILE_BYTES) throw Object.assign(new Error(`${path} is too large`), { code: "EFBIG" });
    return buffer.toString("utf8", 0, bytesRead);
  } finally {
    closeSync(fd);
  }
}

function readOptionalNow(path: string): string | null {
  try {
    return readRegularFileNow(path);
  } catch (err) {
    if (errorCode(err) === "ENOENT") return null;
    throw err;
  }
}

/** Whether anything is at `path`; true when that cannot be told (it is then no proof of absence). */
function existsNow(path: string): boolean {
  try {
    lstatSync(path);
    return true;
  } catch (err) {
    return errorCode(err) !== "ENOENT";
  }
}

async function readOptional(path: string): Promise<string | null> {
  try {
    return await readRegularFile(path);
  } catch (err) {
    if (errorCode(err) === "ENOENT") return null;
    throw err;
  }
}

async function pathExists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch (err) {
    if (errorCode(err) === "ENOENT") return false;
    throw err;
  }
}

async function unlinkIfPresent(path: string): Promise<void> {
  try {
    await unlink(path);
  } catch (err) {
    if (errorCode(err) !== "ENOENT") throw err;
  }
}

function errorCode(err: unknown): string {
  const code = (err as NodeJS.ErrnoException | null)?.code;
  return typeof code === "string" ? code : String((err as Error | null)?.message ?? err);
}

/**
 * mkdir -p, one level at a time: Node 20's recursive mkdir spins forever on
 * some paths it cannot create (seen under /proc), which would hang start-up.
 */
async function makeDirs(path: string): Promise<void> {
  try {
    await mkdir(path);
  } catch (err) {
    const code = errorCode(err);
    if (code === "EEXIST") return;
    if (code !== "ENOENT" || dirname(path) === path) throw err;
    await makeDirs(dirname(path));
    await mkdir(path).catch((again: unknown) => {
      if (errorCode(again) !== "EEXIST") throw again;
    });
  }
}

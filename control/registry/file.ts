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
// There is no change log, so a watch is a rescan (on inotify events and on a
// timer, which also notices expiries) diffed against the previous scan.

import { randomBytes } from "node:crypto";
import { type FSWatcher, watch as watchDirectory } from "node:fs";
import { link, lstat, mkdir, open, readdir, readFile, rename, unlink } from "node:fs/promises";
import { dirname, join } from "node:path";
import { formatIpv4, formatPrefix, type Ipv4Prefix } from "../../dataplane/addr.js";
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
  /** How often watches rescan without an inotify event; bounds how late an expiry is noticed. Default 1000 ms. */
  readonly rescanIntervalMs?: number;
  /** Clock for expiries, ms since the epoch (tests inject one). Default Date.now. */
  readonly now?: () => number;
  /**
   * A sidecar without its key younger than this may be a create in flight;
   * older ones are leftovers of a crash and get removed. Default 10 s.
   */
  readonly orphanGraceMs?: number;
}

/** One key as read from disk: a lease, a reason it cannot be used, or null when it vanished. */
type Entry = { readonly publicIp: number; readonly expiresAt: number | null; readonly expiryText: string | null };

interface Scan {
  readonly leases: Map<string, Lease>;
  readonly skipped: { key: string; reason: string }[];
  /** Key names among `skipped` that are subnet keys with an unusable value. */
  readonly unusable: Set<string>;
}

const SCAN_CONCURRENCY = 64;
/** Listings a watch may start from; older revisions get a resync instead. */
const KEPT_SNAPSHOTS = 16;

export class FileRegistry implements Registry {
  readonly description: string;
  private readonly configPath: string;
  private readonly subnetsDir: string;
  private readonly leasesDir: string;
  private readonly tmpDir: string;
  private readonly rescanIntervalMs: number;
  private readonly orphanGraceMs: number;
  private readonly now: () => number;
  private revision = 0;
  private readonly snapshots = new Map<number, ReadonlyMap<string, Lease>>();
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
    this.rescanIntervalMs = options.rescanIntervalMs ?? 1000;
    this.orphanGraceMs = options.orphanGraceMs ?? 10_000;
    this.now = options.now ?? Date.now;
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
      return await readFile(this.configPath, "utf8");
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
    return { subnet, publicIp, expiresAt };
  }

  async updateLease(lease: Lease, publicIp: number, ttlSeconds: number): Promise<Lease> {
    const name = subnetKey(lease.subnet);
    const keyPath = join(this.subnetsDir, name);
    const value = encodeLeaseValue(publicIp);
    const current = await this.readEntry(name);
    if (typeof current === "string") {
      throw new Error(
        `lease ${formatPrefix(lease.subnet)} cannot be rewritten because its key is unreadable: ${current}`,
      );
    }
    if (current === null) {
      // Expired and removed, or deleted: take it again, atomically like a create.
      if (lease.expiresAt === null) {
        if (await this.linkFromTemp(value, keyPath)) return { subnet: lease.subnet, publicIp, expiresAt: null };
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
      return { subnet: lease.subnet, publicIp, expiresAt: null };
    }
    const expiresAt = this.expiryAfter(ttlSeconds);
    // Sidecar before key: a reader that sees the new key also sees the new expiry.
    await this.replaceFromTemp(String(expiresAt), join(this.leasesDir, name));
    await this.replaceFromTemp(value, keyPath);
    return { subnet: lease.subnet, publicIp, expiresAt };
  }

  async deleteLease(subnet: Ipv4Prefix): Promise<void> {
    const name = subnetKey(subnet);
    await unlinkIfPresent(join(this.subnetsDir, name));
    await unlinkIfPresent(join(this.leasesDir, name));
  }

  watchLeases(revision: number, handlers: WatchHandlers): Watch {
    const watch = new DirectoryWatch(
      this,
      this.subnetsDir,
      this.rescanIntervalMs,
      this.snapshots.get(revision) ?? null,
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
    const names = (await readdir(this.subnetsDir)).sort();
    const now = this.now();
    const leases = new Map<string, Lease>();
    const skipped: { key: string; reason: string }[] = [];
    const unusable = new Set<string>();
    for (let i = 0; i < names.length; i += SCAN_CONCURRENCY) {
      const batch = names.slice(i, i + SCAN_CONCURRENCY);
      const entries = await Promise.all(
        batch.map((name) => (parseSubnetKey(name) === null ? undefined : this.readEntry(name))),
      );
      for (let j = 0; j < batch.length; j++) {
        const name = batch[j] as string;
        const entry = entries[j];
        const subnet = parseSubnetKey(name);
        if (subnet === null || entry === undefined) {
          skipped.push({
            key: join(this.subnetsDir, name),
            reason: "the name is not a subnet key like 10.244.68.0-24",
          });
          continue;
        }
        if (entry === null) continue;
        if (typeof entry === "string") {
          skipped.push({ key: join(this.subnetsDir, name), reason: entry });
          unusable.add(name);
          continue;
        }
        if (entry.expiresAt !== null && entry.expiresAt < now) {
          await this.removeExpired(name, entry).catch(() => {});
          continue;
        }
        leases.set(name, { subnet, publicIp: entry.publicIp, expiresAt: entry.expiresAt });
      }
    }
    await this.removeOrphanSidecars(new Set(names), now);
    return { leases, skipped, unusable };
  }

  private async readEntry(name: string): Promise<Entry | string | null> {
    let value: string;
    try {
      value = await readFile(join(this.subnetsDir, name), "utf8");
    } catch (err) {
      if (errorCode(err) === "ENOENT") return null;
      return `the key cannot be read: ${errorCode(err)}`;
    }
    const publicIp = decodeLeaseValue(value);
    if (typeof publicIp === "string") return publicIp;
    let expiryText: string | null;
    try {
      expiryText = await readOptional(join(this.leasesDir, name));
    } catch (err) {
      return `the expiry in leases/${name} cannot be read: ${errorCode(err)}`;
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

  private async removeSidecarIfUnchanged(name: string, expectedText: string | null): Promise<void> {
    const sidecar = join(this.leasesDir, name);
    if ((await readOptional(sidecar)) === expectedText && expectedText !== null) await unlinkIfPresent(sidecar);
  }

  private async writeTemp(content: string): Promise<string> {
    this.tempCounter += 1;
    const path = join(this.tmpDir, `${process.pid}-${this.tempCounter}-${randomBytes(4).toString("hex")}`);
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

/** Rescans on inotify events and on a timer, and turns the differences into events. */
class DirectoryWatch {
  private closed = false;
  private scanning = false;
  private scanAgain = false;
  private connected: boolean | null = null;
  private timer: NodeJS.Timeout | null = null;
  private watcher: FSWatcher | null = null;
  /** Skipped keys already reported, so one bad file is reported once, not every rescan. */
  private reported = new Map<string, string>();

  constructor(
    private readonly registry: FileRegistry,
    private readonly subnetsDir: string,
    private readonly rescanIntervalMs: number,
    /** The state at the watch's start revision; null means "unknown, resync first". */
    private known: ReadonlyMap<string, Lease> | null,
    private readonly handlers: WatchHandlers,
  ) {}

  start(): void {
    this.timer = setInterval(() => this.requestScan(), this.rescanIntervalMs);
    this.timer.unref();
    this.ensureWatcher();
    this.requestScan();
  }

  close(): void {
    this.closed = true;
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    this.closeWatcher();
  }

  private ensureWatcher(): void {
    if (this.watcher !== null || this.closed) return;
    try {
      const watcher = watchDirectory(this.subnetsDir, { persistent: false }, () => this.requestScan());
      watcher.on("error", () => this.closeWatcher());
      this.watcher = watcher;
    } catch {
      // The directory is gone or unreadable; the timer keeps scanning and retries.
    }
  }

  private closeWatcher(): void {
    this.watcher?.close();
    this.watcher = null;
  }

  private requestScan(): void {
    if (this.closed) return;
    if (this.scanning) {
      this.scanAgain = true;
      return;
    }
    this.scanning = true;
    void this.scanUntilQuiet().finally(() => {
      this.scanning = false;
    });
  }

  private async scanUntilQuiet(): Promise<void> {
    do {
      this.scanAgain = false;
      await this.scanOnce();
    } while (this.scanAgain && !this.closed);
  }

  private async scanOnce(): Promise<void> {
    let scan: Scan;
    try {
      scan = await this.registry.scan();
    } catch (err) {
      if (this.closed) return;
      // inotify follows the old inode if the directory was moved away; re-attach once it is back.
      this.closeWatcher();
      if (this.connected !== false) {
        this.connected = false;
        this.handlers.onConnection?.(false, err as Error);
      }
      return;
    }
    if (this.closed) return;
    this.ensureWatcher();
    if (this.connected !== true) {
      this.connected = true;
      this.handlers.onConnection?.(true);
    }
    this.reportSkipped(scan.skipped);
    if (this.known === null) {
      this.known = scan.leases;
      this.handlers.onResync(this.registry.listing(scan));
      return;
    }
    // Like a watch event that cannot be parsed, an unusable value changes nothing:
    // the key keeps its last good lease (a half-written hand edit must not revoke it).
    const current = new Map(scan.leases);
    for (const name of scan.unusable) {
      const before = this.known.get(name);
      if (before !== undefined) current.set(name, before);
    }
    const events: LeaseEvent[] = [];
    for (const [name, lease] of current) {
      const before = this.known.get(name);
      if (before === undefined || before.publicIp !== lease.publicIp || before.expiresAt !== lease.expiresAt) {
        events.push({ type: "put", lease });
      }
    }
    for (const [name, lease] of this.known) {
      if (!current.has(name)) events.push({ type: "delete", subnet: lease.subnet });
    }
    this.known = current;
    for (const event of events) {
      if (this.closed) return;
      this.handlers.onEvent(event);
    }
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

async function readOptional(path: string): Promise<string | null> {
  try {
    return await readFile(path, "utf8");
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

// Giving the receive arenas' pages back once the dataplane is idle. A flood
// makes up to 8.5 MiB of them resident (64 slots of up to 72 KiB on each
// side with offloads); nothing else would ever return them.
//
//   batch ──► engine.onNextBatch alarm ──► timer (idleMs, unref'd)
//   tick: a side with no batch since the last tick and no write pointing
//         into its arena ──► release(arena): MADV_DONTNEED, pages read as 0
//   every side released ──► timer stops; the next batch arms it again
//
// Safe because every slot is written by the kernel (readv/recvmmsg) before
// anything reads it: the engine and the offload wrappers read only the
// [offset, +length) the read reported, and coalescing and splitting write
// before they read. What may still point into an arena between batches is a
// short write (the engine's staging, pending < count), and a side is not
// released while one waits. Releases run on this thread, between batches:
// the addon reads and writes on it too, never concurrently.
//
// Cost while idle: nothing (no timer once released); while traffic flows:
// one unref'd timer per idleMs and one branch per batch in the engine.

/** How long a source must have read nothing before its arena is released. */
export const ARENA_IDLE_MS = 5000;

/** One receive arena and what says whether it may be released. */
export interface ReleasableArena {
  readonly bytes: Uint8Array;
  /** Batches read into it so far: any change means it was written since the last look. */
  batches(): number;
  /** True while a write or send still points into bytes. */
  inUse(): boolean;
}

export interface ArenaReleaseOptions {
  /** Returns the pages of bytes to the kernel (native-io's releaseArenaPages). */
  readonly release: (bytes: Uint8Array) => void;
  /** Calls cb once at the next batch from any source (Engine.onNextBatch). */
  readonly onNextBatch: (cb: () => void) => void;
  /** Quiet time before a release (default ARENA_IDLE_MS); a release comes 1–2 times this after the last batch. */
  readonly idleMs?: number;
  /** After a tick that released the last busy arena: the whole dataplane has gone idle. */
  readonly onIdle?: () => void;
}

interface Side {
  readonly arena: ReleasableArena;
  seen: number;
  released: boolean;
}

export class ArenaRelease {
  /** Releases per arena, in the order given (for /metrics). */
  readonly releases: number[];
  private readonly sides: Side[];
  private readonly opts: ArenaReleaseOptions;
  private readonly idleMs: number;
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;

  constructor(arenas: readonly ReleasableArena[], opts: ArenaReleaseOptions) {
    const idleMs = opts.idleMs ?? ARENA_IDLE_MS;
    if (!(idleMs > 0)) throw new RangeError(`idleMs must be positive, got ${idleMs}`);
    this.idleMs = idleMs;
    this.opts = opts;
    // An arena nothing was read into yet is untouched: nothing to give back.
    this.sides = arenas.map((arena) => {
      const seen = arena.batches();
      return { arena, seen, released: seen === 0 };
    });
    this.releases = arenas.map(() => 0);
    if (this.sides.every((side) => side.released)) this.opts.onNextBatch(this.wake);
    else this.arm();
  }

  /** One look at every arena; the timer calls it, tests may too. */
  tick(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    if (this.stopped) return;
    let busy = false;
    let released = false;
    for (let i = 0; i < this.sides.length; i++) {
      const side = this.sides[i] as Side;
      const batches = side.arena.batches();
      if (batches !== side.seen) {
        side.seen = batches;
        side.released = false;
        busy = true;
      } else if (!side.released) {
        if (side.arena.inUse()) busy = true;
        else {
          this.opts.release(side.arena.bytes);
          side.released = true;
          this.releases[i] = (this.releases[i] as number) + 1;
          released = true;
        }
      }
    }
    if (busy) this.arm();
    else {
      this.opts.onNextBatch(this.wake);
      if (released) this.opts.onIdle?.();
    }
  }

  /** Whether the timer runs (false once every arena is released, until the next batch). */
  get watching(): boolean {
    return this.timer !== null;
  }

  stop(): void {
    this.stopped = true;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }

  private readonly wake = (): void => {
    if (this.timer === null) this.arm();
  };

  private arm(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => this.tick(), this.idleMs);
    this.timer.unref();
  }
}

/** What releaseWhenIdle needs of the engine. */
export interface ArenaOwner {
  readonly arenas: { readonly device: Uint8Array; readonly transport: Uint8Array };
  readonly counters: { readonly tx: { readonly batches: number }; readonly rx: { readonly batches: number } };
  readonly deviceArenaInUse: boolean;
  readonly transportArenaInUse: boolean;
  onNextBatch(cb: () => void): void;
}

/** Releases the engine's two receive arenas when idle: releases[0] is flannel0's (tx), releases[1] the socket's (rx). */
export function releaseWhenIdle(engine: ArenaOwner, opts: Omit<ArenaReleaseOptions, "onNextBatch">): ArenaRelease {
  const { device, transport } = engine.arenas;
  return new ArenaRelease(
    [
      { bytes: device, batches: () => engine.counters.tx.batches, inUse: () => engine.deviceArenaInUse },
      { bytes: transport, batches: () => engine.counters.rx.batches, inUse: () => engine.transportArenaInUse },
    ],
    { ...opts, onNextBatch: (cb) => engine.onNextBatch(cb) },
  );
}

// The weftd process: flags in, one clear sentence and a non-zero exit for
// anything an operator must fix, SIGINT/SIGTERM for a clean stop.

import { reduceMemory, releaseFilePages as releaseFilePagesNow } from "../dataplane/file-pages.js";
import { parseOptions, UsageError, usage } from "./cli.js";
import { createLogger, type Logger } from "./log.js";

/**
 * Unmaps the file pages (node's executable, libraries) touched so far: node's
 * own start-up reads ~35 MB of its executable that a running daemon never
 * executes again (docs/latency.md note 7). Memory, never correctness: a
 * failure is logged and start-up goes on.
 */
function releaseFilePages(log: Logger, when: string): void {
  try {
    const bytes = releaseFilePagesNow();
    log.debug({ when, mib: Math.round(bytes / 1048576) }, "released file pages");
  } catch (err) {
    log.warn({ when, err: (err as Error).message }, "could not release file pages");
  }
}

/**
 * How long after start-up the memory it left free is given back (and the file
 * pages of the code only start-up ran released once more): by then the
 * registry's watch has done its first read (the file registry re-reads every
 * key once) and what start-up allocated is garbage. V8's own memory reducer
 * would get there ~8 s after the heap stops growing, and glibc's arenas keep
 * their freed memory resident until trimmed.
 */
const REDUCE_MEMORY_AFTER_MS = 2000;

/** Gives back what start-up left free but resident (V8's heap, malloc's arenas); memory, never correctness. */
function reduceStartupMemory(log: Logger): void {
  const before = process.memoryUsage();
  const t0 = performance.now();
  try {
    reduceMemory();
  } catch (err) {
    log.warn({ err: (err as Error).message }, "could not reduce memory after start-up");
    return;
  }
  const after = process.memoryUsage();
  const mib = (n: number) => Math.round((n / 1048576) * 10) / 10;
  log.debug(
    {
      ms: Math.round(performance.now() - t0),
      heapMib: `${mib(before.heapTotal)} -> ${mib(after.heapTotal)}`,
      rssMib: `${mib(before.rss)} -> ${mib(after.rss)}`,
    },
    "reduced memory after start-up",
  );
}

async function main(): Promise<number> {
  let opts: ReturnType<typeof parseOptions>;
  try {
    opts = parseOptions(process.argv.slice(2));
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`weftd: ${err.message}\n`);
    return 2;
  }
  if (opts.help) {
    process.stdout.write(`${usage()}\n`);
    return 0;
  }
  const log = createLogger(opts.verbosity);
  // Node's start-up pages go before the daemon's modules load, the rest once it runs.
  if (opts.releaseFilePages && !opts.version) releaseFilePages(log, "node start-up");
  const { Daemon, VERSION } = await import("./daemon.js");
  if (opts.version) {
    process.stdout.write(`weftd v${VERSION} (flannel udp backend compatible)\n`);
    return 0;
  }
  const daemon = new Daemon(opts, log);
  const onSignal = (signal: string) => {
    log.info({ signal }, "stopping");
    void daemon.stop(0);
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  try {
    await daemon.start();
    if (opts.releaseFilePages && !daemon.stopping) releaseFilePages(log, "weftd start-up");
    if (!daemon.stopping) {
      setTimeout(() => {
        if (daemon.stopping) return;
        reduceStartupMemory(log);
        // The code the registry's first rescan ran (thousands of files read
        // at 5,000 peers) paged in more of node's executable.
        if (opts.releaseFilePages) releaseFilePages(log, "after start-up");
      }, REDUCE_MEMORY_AFTER_MS).unref();
    }
  } catch (err) {
    if (daemon.stopping) return daemon.done; // a signal interrupted start-up
    const message = err instanceof Error ? err.message : String(err);
    log.error({ err: message }, "cannot start");
    process.stderr.write(`weftd: ${message}\n`);
    await daemon.stop(1);
  }
  return daemon.done;
}

main().then(
  (code) => {
    // Give stderr's last lines a turn before exiting.
    setImmediate(() => process.exit(code));
  },
  (err) => {
    process.stderr.write(`weftd: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);

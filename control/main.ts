// The weftd process: flags in, one clear sentence and a non-zero exit for
// anything an operator must fix, SIGINT/SIGTERM for a clean stop.

import { releaseFilePages as releaseFilePagesNow } from "../dataplane/file-pages.js";
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

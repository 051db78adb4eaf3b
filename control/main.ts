// The weftd process: flags in, one clear sentence and a non-zero exit for
// anything an operator must fix, SIGINT/SIGTERM for a clean stop.

import { parseOptions, UsageError, usage } from "./cli.js";
import { Daemon, VERSION } from "./daemon.js";
import { createLogger } from "./log.js";

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
  if (opts.version) {
    process.stdout.write(`weftd v${VERSION} (flannel udp backend compatible)\n`);
    return 0;
  }
  const log = createLogger(opts.verbosity);
  const daemon = new Daemon(opts, log);
  const onSignal = (signal: string) => {
    log.info({ signal }, "stopping");
    void daemon.stop(0);
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  try {
    await daemon.start();
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
    // pino writes asynchronously to fd 2: give it a turn before exiting.
    setImmediate(() => process.exit(code));
  },
  (err) => {
    process.stderr.write(`weftd: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);

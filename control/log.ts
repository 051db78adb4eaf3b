// The one logger type of the control plane, and weftd's own: JSON lines in
// pino's shape ({"level":30,"time":<ms>,...fields,"msg":"..."}), written by
// hand because importing pino cost weftd 7 MB of resident memory (its stream
// modules and the parts of node they load) for four methods.

export interface Logger {
  debug(obj: unknown, msg?: string): void;
  info(obj: unknown, msg?: string): void;
  warn(obj: unknown, msg?: string): void;
  error(obj: unknown, msg?: string): void;
}

export const silentLogger: Logger = { debug() {}, info() {}, warn() {}, error() {} };

/** pino's numbers, which log collectors already map. */
const LEVELS = { debug: 20, info: 30, warn: 40, error: 50 } as const;

/** An Error field as pino's standard serializer writes it; a BigInt as its digits; other values as they are. */
function errorAsFields(_key: string, value: unknown): unknown {
  if (typeof value === "bigint") return value.toString();
  if (!(value instanceof Error)) return value;
  return { ...value, type: value.name, message: value.message, stack: value.stack };
}

/**
 * One log line: the level and time first, then the object's fields, then the
 * message. An Error given as the object logs as `err`. Fields JSON cannot
 * write (a cycle) never throw out of a log call: the line says so instead.
 */
export function formatLine(level: number, time: number, obj: unknown, msg?: string): string {
  const fields = obj instanceof Error ? { err: obj } : typeof obj === "object" && obj !== null ? obj : {};
  const text = typeof obj === "string" ? obj : msg;
  const record = text === undefined ? { level, time, ...fields } : { level, time, ...fields, msg: text };
  try {
    return `${JSON.stringify(record, errorAsFields)}\n`;
  } catch (err) {
    const fallback = { level, time, logError: (err as Error).message, msg: text };
    return `${JSON.stringify(fallback)}\n`;
  }
}

/** weftd's logger: JSON lines on stderr, debug from -v up (flanneld's verbosity flag). */
export function createLogger(
  verbosity: number,
  write: (line: string) => void = (line) => {
    process.stderr.write(line);
  },
): Logger {
  const min = verbosity > 0 ? LEVELS.debug : LEVELS.info;
  const at = (level: number) => (obj: unknown, msg?: string) => {
    if (level >= min) write(formatLine(level, Date.now(), obj, msg));
  };
  return { debug: at(LEVELS.debug), info: at(LEVELS.info), warn: at(LEVELS.warn), error: at(LEVELS.error) };
}

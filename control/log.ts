// The one logger type of the control plane: the four pino methods weft calls,
// so tests and fakes can stand in for pino without pulling it in.

import { pino } from "pino";

export interface Logger {
  debug(obj: unknown, msg?: string): void;
  info(obj: unknown, msg?: string): void;
  warn(obj: unknown, msg?: string): void;
  error(obj: unknown, msg?: string): void;
}

export const silentLogger: Logger = { debug() {}, info() {}, warn() {}, error() {} };

/** weftd's logger: JSON lines on stderr, debug from -v up (flanneld's verbosity flag). */
export function createLogger(verbosity: number): Logger {
  return pino({ base: undefined, level: verbosity > 0 ? "debug" : "info" }, pino.destination(2));
}

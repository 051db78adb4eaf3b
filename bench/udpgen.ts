// A batching UDP generator and a counting sink (iperf3 tops out near 150 kpps
// here; BENCH.md wants delivered pps well above that). Both sit on the addon's
// UdpTransport: sendmmsg of up to --batch datagrams per call, recvmmsg of up to
// 64 per readiness. Run as child processes, one per pod namespace:
//
//   node dist/bench/udpgen.js recv --port 5201 [--bind A] [--size B] [--run ID] [--count N] [--timeout S]
//       prints {"ready":true,"port":P} once bound, then one result line on SIGTERM/SIGINT,
//       after --count matching datagrams, or at --timeout.
//   node dist/bench/udpgen.js send --dst A --port P --size B (--duration S | --count N) [--batch N] [--rate PPS] [--run ID]
//       prints one result line when done.
//
// Every datagram carries a magic word, the run id and a sequence number; the
// sink counts only datagrams of its run and of the expected size, so stray
// traffic is never counted as delivered.

import { type ChildProcess, spawn } from "node:child_process";
import { realpathSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { UdpTransport } from "../dataplane/native-io.js";
import { formatIpv4, parseIpv4 } from "../net/addr.js";

const MAGIC = 0x77656674; // "weft"
export const MIN_PAYLOAD = 12;
const BUFFER_BYTES = 16 * 1024 * 1024;

export interface SendResult {
  role: "send";
  /** Datagrams the kernel took (sendmmsg), including ones it then refused (errors). */
  sent: number;
  errors: number;
  seconds: number;
  pps: number;
  size: number;
}

export interface RecvResult {
  role: "recv";
  /** Datagrams of this run and size. */
  received: number;
  bytes: number;
  /** Other datagrams (wrong size, run or magic). */
  other: number;
  /** First to last matching datagram's batch, seconds. */
  seconds: number;
  pps: number;
  /** Highest sequence number seen + 1 (what the sender had sent at least). */
  seq_end: number;
}

function put32(b: Uint8Array, off: number, v: number): void {
  b[off] = v >>> 24;
  b[off + 1] = v >>> 16;
  b[off + 2] = v >>> 8;
  b[off + 3] = v;
}

function get32(b: Uint8Array, off: number): number {
  return ((b[off] << 24) | (b[off + 1] << 16) | (b[off + 2] << 8) | b[off + 3]) >>> 0;
}

function emit(obj: unknown): void {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

export interface SendOptions {
  dst: number;
  port: number;
  size: number;
  /** Stop after this many seconds… */
  duration?: number;
  /** …or after exactly this many datagrams. */
  count?: number;
  batch: number;
  /** Datagrams per second; 0 = as fast as the socket takes them. */
  rate: number;
  run: number;
}

/** Sends until the duration or count is reached; never spins more than a tick without yielding. */
export function runSender(o: SendOptions): Promise<SendResult> {
  const t = UdpTransport.bind(0, 0, { capacity: 1, slotSize: 64, bufferBytes: BUFFER_BYTES });
  const arena = new Uint8Array(o.batch * o.size);
  const offsets = new Uint32Array(o.batch);
  const lengths = new Uint32Array(o.batch).fill(o.size);
  const addrs = new Uint32Array(o.batch).fill(o.dst);
  const ports = new Uint16Array(o.batch).fill(o.port);
  for (let i = 0; i < o.batch; i++) {
    offsets[i] = i * o.size;
    put32(arena, i * o.size, MAGIC);
    put32(arena, i * o.size + 4, o.run);
  }
  const limit = o.count ?? Number.POSITIVE_INFINITY;
  const durationNs = BigInt(Math.round((o.duration ?? 1e6) * 1e9));
  let seq = 0; // next sequence number to stamp
  let sent = 0;
  let inBatch = 0; // datagrams stamped in the current batch
  let pending = 0; // first of them the kernel has not taken yet
  const t0 = process.hrtime.bigint();
  return new Promise((resolve) => {
    const finish = () => {
      const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
      const errors = t.sendErrors;
      t.close();
      resolve({ role: "send", sent, errors, seconds, pps: sent / seconds, size: o.size });
    };
    const pump = (): void => {
      for (let spin = 0; spin < 512; spin++) {
        const now = process.hrtime.bigint();
        if (now - t0 >= durationNs || (sent >= limit && pending === inBatch)) {
          finish();
          return;
        }
        if (pending === inBatch) {
          let n = Math.min(o.batch, limit - seq);
          if (o.rate > 0) {
            const due = Math.floor((Number(now - t0) / 1e9) * o.rate) - sent;
            n = Math.min(n, due);
            if (n <= 0) {
              setTimeout(pump, 1);
              return;
            }
          }
          for (let i = 0; i < n; i++) put32(arena, i * o.size + 8, seq + i);
          seq += n;
          inBatch = n;
          pending = 0;
        }
        const took = t.send(arena, offsets, lengths, addrs, ports, pending, inBatch - pending);
        pending += took;
        sent += took;
        if (pending < inBatch) {
          // Socket buffer full: continue when it drains.
          t.onWritable(pump);
          return;
        }
      }
      setImmediate(pump);
    };
    pump();
  });
}

export interface RecvOptions {
  bind: number;
  port: number;
  /** Expected datagram size; 0 = any size. */
  size: number;
  run: number;
  count: number;
  timeout: number;
}

/** Binds, reports the port through onReady, counts until stop() / count / timeout. */
export function runReceiver(
  o: RecvOptions,
  onReady: (port: number) => void,
): { done: Promise<RecvResult>; stop: () => void } {
  const t = UdpTransport.bind(o.bind, o.port, { capacity: 64, bufferBytes: BUFFER_BYTES });
  const rx = t.rx;
  let received = 0;
  let bytes = 0;
  let other = 0;
  let seqEnd = 0;
  let first = 0n;
  let last = 0n;
  let resolveDone: (r: RecvResult) => void = () => {};
  const done = new Promise<RecvResult>((r) => {
    resolveDone = r;
  });
  let stopped = false;
  const stop = () => {
    if (stopped) return;
    stopped = true;
    clearTimeout(timer);
    t.close();
    const seconds = Number(last - first) / 1e9;
    resolveDone({
      role: "recv",
      received,
      bytes,
      other,
      seconds,
      pps: seconds > 0 ? received / seconds : 0,
      seq_end: seqEnd,
    });
  };
  const timer = setTimeout(stop, o.timeout * 1000);
  t.start((count) => {
    const b = rx.bytes;
    let hits = 0;
    for (let i = 0; i < count; i++) {
      const off = i * rx.slotSize;
      const len = rx.lengths[i] as number;
      if (
        len < MIN_PAYLOAD ||
        (o.size !== 0 && len !== o.size) ||
        rx.truncated[i] !== 0 ||
        get32(b, off) !== MAGIC ||
        get32(b, off + 4) !== o.run
      ) {
        other++;
        continue;
      }
      hits++;
      bytes += len;
      const s = get32(b, off + 8) + 1;
      if (s > seqEnd) seqEnd = s;
    }
    if (hits > 0) {
      last = process.hrtime.bigint();
      if (received === 0) first = last;
      received += hits;
      if (received >= o.count) stop();
    }
  });
  onReady(t.localPort);
  return { done, stop };
}

// ---------------------------------------------------------------------------
// Parent side: start either role as a child, optionally inside a namespace.

/** The compiled entry (this file), for spawning. */
export const UDPGEN_JS = realpathSync(fileURLToPath(import.meta.url));

export interface UdpgenChild {
  readonly child: ChildProcess;
  /** Resolves with the child's port once a receiver is bound (senders: never awaited). */
  readonly ready: Promise<number>;
  /** Resolves with the result line (or rejects when the child dies without one). */
  readonly result: Promise<SendResult | RecvResult>;
}

/**
 * Spawns `node udpgen.js <args>`, inside `ns` via `ip netns exec` when given
 * (which execs node, so child.pid is the generator's own PID).
 */
export function spawnUdpgen(ns: string | null, args: readonly string[]): UdpgenChild {
  const argv = [UDPGEN_JS, ...args];
  const child =
    ns === null
      ? spawn(process.execPath, argv, { stdio: ["ignore", "pipe", "pipe"] })
      : spawn("ip", ["netns", "exec", ns, process.execPath, ...argv], { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  let readyResolve: (port: number) => void = () => {};
  const ready = new Promise<number>((r) => {
    readyResolve = r;
  });
  let resultLine: SendResult | RecvResult | null = null;
  child.stdout?.setEncoding("utf8");
  child.stderr?.setEncoding("utf8");
  child.stdout?.on("data", (chunk: string) => {
    out += chunk;
    let nl = out.indexOf("\n");
    while (nl >= 0) {
      const line = out.slice(0, nl);
      out = out.slice(nl + 1);
      nl = out.indexOf("\n");
      if (line.trim() === "") continue;
      const msg = JSON.parse(line) as { ready?: boolean; port?: number; role?: string };
      if (msg.ready === true) readyResolve(msg.port as number);
      else if (msg.role !== undefined) resultLine = msg as SendResult | RecvResult;
    }
  });
  child.stderr?.on("data", (chunk: string) => {
    if (err.length < 4000) err += chunk;
  });
  const result = new Promise<SendResult | RecvResult>((resolve, reject) => {
    child.once("error", reject);
    child.once("close", (code, signal) => {
      if (resultLine !== null) resolve(resultLine);
      else reject(new Error(`udpgen ${args[0]} exited ${code ?? signal} without a result: ${err.trim()}`));
    });
  });
  // A receiver that dies before it is bound must not leave `ready` hanging.
  result.catch(() => readyResolve(-1));
  return { child, ready, result };
}

// ---------------------------------------------------------------------------
// CLI

const USAGE = `usage: udpgen recv --port P [--bind A] [--size B] [--run ID] [--count N] [--timeout S]
       udpgen send --dst A --port P --size B (--duration S | --count N) [--batch N] [--rate PPS] [--run ID]`;

function num(text: string | undefined, flag: string, def: number | undefined, min: number, max: number): number {
  if (text === undefined) {
    if (def === undefined) throw new Error(`${flag} is required`);
    return def;
  }
  const n = Number(text);
  if (!Number.isFinite(n) || n < min || n > max)
    throw new Error(`${flag} ${JSON.stringify(text)}: expected a number in ${min}..${max}`);
  return n;
}

function addr(text: string | undefined, flag: string, def?: string): number {
  const t = text ?? def;
  if (t === undefined) throw new Error(`${flag} is required`);
  const a = parseIpv4(t);
  if (a < 0) throw new Error(`${flag} ${JSON.stringify(t)} is not an IPv4 address`);
  return a;
}

async function main(argv: string[]): Promise<number> {
  const [role, ...rest] = argv;
  const { values } = parseArgs({
    args: rest,
    options: {
      dst: { type: "string" },
      bind: { type: "string" },
      port: { type: "string" },
      size: { type: "string" },
      duration: { type: "string" },
      count: { type: "string" },
      batch: { type: "string" },
      rate: { type: "string" },
      run: { type: "string" },
      timeout: { type: "string" },
    },
  });
  const run = num(values.run, "--run", 1, 0, 0xffffffff);
  if (role === "send") {
    const size = num(values.size, "--size", undefined, MIN_PAYLOAD, 65507);
    const duration =
      values.duration === undefined ? undefined : num(values.duration, "--duration", undefined, 0.001, 3600);
    const count = values.count === undefined ? undefined : num(values.count, "--count", undefined, 1, 2 ** 32 - 1);
    if (duration === undefined && count === undefined) throw new Error("send needs --duration or --count");
    const result = await runSender({
      dst: addr(values.dst, "--dst"),
      port: num(values.port, "--port", undefined, 1, 65535),
      size,
      duration,
      count,
      batch: num(values.batch, "--batch", 64, 1, 1024),
      rate: num(values.rate, "--rate", 0, 0, 1e9),
      run,
    });
    emit(result);
    return 0;
  }
  if (role === "recv") {
    const size = values.size === undefined ? 0 : num(values.size, "--size", undefined, MIN_PAYLOAD, 65507);
    const { done, stop } = runReceiver(
      {
        bind: addr(values.bind, "--bind", "0.0.0.0"),
        port: num(values.port, "--port", 0, 0, 65535),
        size,
        run,
        count: num(values.count, "--count", Number.POSITIVE_INFINITY, 1, Number.POSITIVE_INFINITY),
        timeout: num(values.timeout, "--timeout", 120, 0.1, 3600),
      },
      (port) => emit({ ready: true, port, bind: formatIpv4(addr(values.bind, "--bind", "0.0.0.0")) }),
    );
    process.once("SIGTERM", stop);
    process.once("SIGINT", stop);
    emit(await done);
    return 0;
  }
  process.stderr.write(`${USAGE}\n`);
  return 2;
}

const isMain = process.argv[1] !== undefined && realpathSync(process.argv[1]) === UDPGEN_JS;
if (isMain) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: Error) => {
      process.stderr.write(`udpgen: ${err.message}\n`);
      process.exit(1);
    },
  );
}

// A real etcd (Debian's etcd-server) for tests: free ports from the OS, a temp
// data dir, optional mutual TLS, optionally inside a network namespace through a
// command prefix such as ["ip", "netns", "exec", ns]. Processes are tracked and
// killed by PID only; every directory this file creates is removed by stop().

import { type ChildProcess, execFile, execFileSync, spawn } from "node:child_process";
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface EtcdCerts {
  readonly dir: string;
  /** CA that signed both the server and the client certificate. */
  readonly caFile: string;
  readonly serverCertFile: string;
  readonly serverKeyFile: string;
  readonly clientCertFile: string;
  readonly clientKeyFile: string;
  /** A second, unrelated CA: verifying the server with it must fail. */
  readonly otherCaFile: string;
}

export interface EtcdOptions {
  /** Address etcd listens on (client and peer); default 127.0.0.1. */
  listenAddress?: string;
  /** Prepended to every etcd/etcdctl command, e.g. ["ip", "netns", "exec", "ns1"]. */
  commandPrefix?: string[];
  /** Serve clients over TLS with these certificates. */
  tls?: EtcdCerts;
  /** With tls: require a client certificate signed by the CA (default true). */
  clientCertAuth?: boolean;
}

export interface EtcdServer {
  /** Client URL, e.g. "http://127.0.0.1:40123". */
  readonly endpoint: string;
  readonly dataDir: string;
  readonly logFile: string;
  /** PID of the running etcd, or null while halted. */
  readonly pid: number | null;
  /** Kills etcd by PID and removes its directory. Safe to call twice. */
  stop(): Promise<void>;
  /** Kills etcd but keeps the data dir, so resume() continues the same store. */
  halt(): Promise<void>;
  /** Starts etcd again on the same ports; emptyDataDir starts from a blank store. */
  resume(opts?: { emptyDataDir?: boolean }): Promise<void>;
  /** halt() + resume(). */
  restart(opts?: { emptyDataDir?: boolean }): Promise<void>;
  /** Runs etcdctl against this server (TLS flags added); resolves to stdout. */
  etcdctl(args: string[], opts?: { user?: string; input?: string }): Promise<string>;
}

const ETCD = "etcd";
const ETCDCTL = "etcdctl";
const HEALTH_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 10_000;

// Children still alive when the test process exits (a crash, a forgotten stop())
// are killed here by PID; nothing else is ever signalled.
const running = new Set<number>();
process.on("exit", () => {
  for (const pid of running) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
});

/** A port the OS reports free on 127.0.0.1 (bound to 0, read back, released). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      server.close(() => (port > 0 ? resolve(port) : reject(new Error("could not read a free port"))));
    });
  });
}

function run(argv: string[], input?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      argv[0] as string,
      argv.slice(1),
      { timeout: 20_000, env: { ...process.env, ETCDCTL_API: "3" } },
      (err, stdout, stderr) => {
        if (err) reject(new Error(`${argv.join(" ")} failed: ${stderr.trim() || err.message}`));
        else resolve(stdout);
      },
    );
    if (input !== undefined) child.stdin?.end(input);
  });
}

function openssl(cwd: string, args: string[]): void {
  execFileSync("openssl", args, { cwd, stdio: ["ignore", "ignore", "pipe"] });
}

function newCa(dir: string, name: string): void {
  openssl(dir, [
    "req",
    "-x509",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
    "-keyout",
    `${name}.key`,
    "-out",
    `${name}.crt`,
    "-days",
    "2",
    "-subj",
    `/CN=weft test ${name}`,
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign,cRLSign",
  ]);
}

function newLeaf(dir: string, name: string, cn: string, extensions: string): void {
  writeFileSync(join(dir, `${name}.ext`), extensions);
  openssl(dir, [
    "req",
    "-new",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
    "-keyout",
    `${name}.key`,
    "-out",
    `${name}.csr`,
    "-subj",
    `/CN=${cn}`,
  ]);
  openssl(dir, [
    "x509",
    "-req",
    "-in",
    `${name}.csr`,
    "-CA",
    "ca.crt",
    "-CAkey",
    "ca.key",
    "-CAcreateserial",
    "-out",
    `${name}.crt`,
    "-days",
    "2",
    "-extfile",
    `${name}.ext`,
  ]);
}

/**
 * Generates a CA, a server certificate (SAN IP:127.0.0.1 plus `extraIps`), a
 * client certificate, and an unrelated second CA, all with openssl, into `dir`.
 */
export function makeCerts(dir: string, extraIps: string[] = []): EtcdCerts {
  mkdirSync(dir, { recursive: true });
  newCa(dir, "ca");
  newCa(dir, "other-ca");
  const sans = ["IP:127.0.0.1", ...extraIps.map((ip) => `IP:${ip}`)].join(",");
  newLeaf(
    dir,
    "server",
    "etcd",
    `subjectAltName=${sans}\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n`,
  );
  newLeaf(dir, "client", "weft", "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n");
  return {
    dir,
    caFile: join(dir, "ca.crt"),
    serverCertFile: join(dir, "server.crt"),
    serverKeyFile: join(dir, "server.key"),
    clientCertFile: join(dir, "client.crt"),
    clientKeyFile: join(dir, "client.key"),
    otherCaFile: join(dir, "other-ca.crt"),
  };
}

function tail(file: string, lines = 15): string {
  try {
    return readFileSync(file, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
  } catch {
    return "(no log)";
  }
}

function waitExit(child: ChildProcess, ms: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    child.once("exit", () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));

class EtcdProcess implements EtcdServer {
  readonly endpoint: string;
  readonly dataDir: string;
  readonly logFile: string;
  private child: ChildProcess | null = null;
  private stopped = false;

  constructor(
    private readonly root: string,
    private readonly host: string,
    clientPort: number,
    private readonly peerPort: number,
    private readonly options: EtcdOptions,
  ) {
    const scheme = options.tls ? "https" : "http";
    this.endpoint = `${scheme}://${host}:${clientPort}`;
    this.dataDir = join(root, "data");
    this.logFile = join(root, "etcd.log");
  }

  get pid(): number | null {
    return this.child?.pid ?? null;
  }

  private argv(): string[] {
    const peer = `http://${this.host}:${this.peerPort}`;
    const args = [
      ...(this.options.commandPrefix ?? []),
      ETCD,
      "--name",
      "weft-test",
      "--data-dir",
      this.dataDir,
      "--listen-client-urls",
      this.endpoint,
      "--advertise-client-urls",
      this.endpoint,
      "--listen-peer-urls",
      peer,
      "--initial-advertise-peer-urls",
      peer,
      "--initial-cluster",
      `weft-test=${peer}`,
      "--initial-cluster-state",
      "new",
      // A single member elects itself after one election timeout: keep it short.
      "--heartbeat-interval",
      "50",
      "--election-timeout",
      "250",
      "--logger",
      "zap",
      "--log-outputs",
      "stderr",
    ];
    const tls = this.options.tls;
    if (tls) {
      args.push("--cert-file", tls.serverCertFile, "--key-file", tls.serverKeyFile, "--trusted-ca-file", tls.caFile);
      if (this.options.clientCertAuth ?? true) args.push("--client-cert-auth");
    }
    return args;
  }

  async start(): Promise<void> {
    mkdirSync(this.dataDir, { recursive: true, mode: 0o700 });
    const fd = openSync(this.logFile, "a");
    const argv = this.argv();
    const child = spawn(argv[0] as string, argv.slice(1), { stdio: ["ignore", fd, fd] });
    closeSync(fd);
    this.child = child;
    if (child.pid !== undefined) running.add(child.pid);
    child.once("exit", () => {
      if (child.pid !== undefined) running.delete(child.pid);
    });
    const spawnError = new Promise<Error>((resolve) => child.once("error", resolve));
    const deadline = Date.now() + HEALTH_TIMEOUT_MS;
    for (;;) {
      const failed = await Promise.race([spawnError, delay(100).then(() => null)]);
      if (failed) throw new Error(`etcd could not be started: ${failed.message}`);
      if (child.exitCode !== null || child.signalCode !== null) {
        throw new Error(
          `etcd exited (${child.exitCode ?? child.signalCode}) before becoming healthy:\n${tail(this.logFile)}`,
        );
      }
      try {
        await this.etcdctl(["endpoint", "health", "--command-timeout=1s", "--dial-timeout=1s"]);
        return;
      } catch (err) {
        if (Date.now() > deadline) {
          await this.halt();
          throw new Error(
            `etcd at ${this.endpoint} not healthy after ${HEALTH_TIMEOUT_MS} ms: ${(err as Error).message}\n${tail(this.logFile)}`,
          );
        }
      }
    }
  }

  etcdctl(args: string[], opts: { user?: string; input?: string } = {}): Promise<string> {
    const argv = [...(this.options.commandPrefix ?? []), ETCDCTL, `--endpoints=${this.endpoint}`];
    const tls = this.options.tls;
    if (tls) argv.push(`--cacert=${tls.caFile}`, `--cert=${tls.clientCertFile}`, `--key=${tls.clientKeyFile}`);
    if (opts.user !== undefined) argv.push(`--user=${opts.user}`);
    return run([...argv, ...args], opts.input);
  }

  async halt(): Promise<void> {
    const child = this.child;
    this.child = null;
    if (child === null || child.pid === undefined) return;
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      if (!(await waitExit(child, STOP_TIMEOUT_MS))) {
        child.kill("SIGKILL");
        await waitExit(child, STOP_TIMEOUT_MS);
      }
    }
    running.delete(child.pid);
  }

  async resume(opts: { emptyDataDir?: boolean } = {}): Promise<void> {
    if (this.stopped) throw new Error(`etcd at ${this.endpoint} was stopped and cannot be resumed`);
    if (this.child !== null) throw new Error(`etcd at ${this.endpoint} is already running (pid ${this.child.pid})`);
    if (opts.emptyDataDir) rmSync(this.dataDir, { recursive: true, force: true });
    await this.start();
  }

  async restart(opts: { emptyDataDir?: boolean } = {}): Promise<void> {
    await this.halt();
    await this.resume(opts);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.halt();
    rmSync(this.root, { recursive: true, force: true });
  }
}

/** Starts a fresh single-member etcd and waits until it answers a health check. */
export async function startEtcd(options: EtcdOptions = {}): Promise<EtcdServer> {
  const host = options.listenAddress ?? "127.0.0.1";
  // Ports come from the OS; another test may grab one between our probe and
  // etcd's bind, so a start that fails on "address already in use" is retried.
  for (let attempt = 1; ; attempt++) {
    const root = mkdtempSync(join(tmpdir(), "weft-etcd-"));
    const server = new EtcdProcess(root, host, await freePort(), await freePort(), options);
    try {
      await server.start();
      return server;
    } catch (err) {
      const inUse = tail(server.logFile, 50).includes("address already in use");
      await server.stop();
      if (!inUse || attempt >= 3) throw err;
    }
  }
}

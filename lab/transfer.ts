// The lab's TCP check, run inside pod namespaces: a server that answers every
// connection with the SHA-256 and length of what it received, and a client that
// sends random bytes to each target and compares. Equal hashes mean every byte
// crossed the overlay intact and in order.
//
//   node transfer.js serve <ip> <port>                  prints "listening", runs until killed
//   node transfer.js send <KiB> <port> <ip> [<ip> ...]  one JSON line per target:
//                                                       {"to","ok","ms"} or {"to","ok":false,"error"}

import { createHash, randomFillSync } from "node:crypto";
import { createConnection, createServer } from "node:net";

const TIMEOUT_MS = 10_000;

function serve(ip: string, port: number): void {
  const server = createServer((sock) => {
    const hash = createHash("sha256");
    let bytes = 0;
    sock.on("data", (chunk: Buffer) => {
      hash.update(chunk);
      bytes += chunk.length;
    });
    sock.on("end", () => sock.end(`${JSON.stringify({ bytes, sha256: hash.digest("hex") })}\n`));
    sock.on("error", () => sock.destroy());
  });
  server.listen(port, ip, () => process.stdout.write("listening\n"));
}

interface Outcome {
  to: string;
  ok: boolean;
  ms?: number;
  error?: string;
}

function sendOne(ip: string, port: number, total: number): Promise<Outcome> {
  return new Promise((resolve) => {
    const started = performance.now();
    const hash = createHash("sha256");
    let reply = "";
    let settled = false;
    const finish = (o: Outcome) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      resolve(o);
    };
    const timer = setTimeout(() => finish({ to: ip, ok: false, error: `no answer in ${TIMEOUT_MS} ms` }), TIMEOUT_MS);
    const sock = createConnection({ host: ip, port }, () => {
      const block = Buffer.alloc(64 * 1024);
      let sent = 0;
      const pump = () => {
        while (sent < total) {
          const n = Math.min(block.length, total - sent);
          // Fresh random bytes per block, copied, since the socket keeps what it is given.
          const chunk = Buffer.from(randomFillSync(block).subarray(0, n));
          hash.update(chunk);
          sent += n;
          if (!sock.write(chunk)) {
            sock.once("drain", pump);
            return;
          }
        }
        sock.end();
      };
      pump();
    });
    sock.on("data", (d: Buffer) => {
      reply += d.toString("utf8");
    });
    sock.on("end", () => {
      const want = hash.digest("hex");
      let got: { bytes?: number; sha256?: string } = {};
      try {
        got = JSON.parse(reply);
      } catch {
        finish({ to: ip, ok: false, error: `server answered ${JSON.stringify(reply.slice(0, 80))}` });
        return;
      }
      if (got.bytes !== total || got.sha256 !== want) {
        finish({ to: ip, ok: false, error: `server received ${got.bytes} bytes with another hash (sent ${total})` });
      } else {
        finish({ to: ip, ok: true, ms: Math.round((performance.now() - started) * 10) / 10 });
      }
    });
    sock.on("error", (err) => finish({ to: ip, ok: false, error: err.message }));
  });
}

async function send(kib: number, port: number, targets: string[]): Promise<void> {
  for (const ip of targets) {
    process.stdout.write(`${JSON.stringify(await sendOne(ip, port, kib * 1024))}\n`);
  }
}

const [mode, ...rest] = process.argv.slice(2);
if (mode === "serve" && rest.length === 2) {
  serve(rest[0] as string, Number(rest[1]));
} else if (mode === "send" && rest.length >= 3) {
  await send(Number(rest[0]), Number(rest[1]), rest.slice(2));
} else {
  process.stderr.write("usage: transfer.js serve <ip> <port> | send <KiB> <port> <ip>...\n");
  process.exitCode = 2;
}

// A TCP transfer whose content is checked end to end: the client streams
// random bytes and prints their SHA-256, the server
// prints the SHA-256 and count of what arrived. Run inside pod namespaces:
//   node tcp-transfer.js server <bindIp> <port>
//   node tcp-transfer.js client <serverIp> <port> <megabytes>

import { createHash, randomFillSync } from "node:crypto";
import { createConnection, createServer } from "node:net";

const [mode, host, portText, mbText] = process.argv.slice(2);
const port = Number(portText);

if (mode === "server") {
  const server = createServer((sock) => {
    const hash = createHash("sha256");
    let bytes = 0;
    sock.on("data", (chunk) => {
      hash.update(chunk);
      bytes += chunk.length;
    });
    sock.on("end", () => {
      process.stdout.write(`${JSON.stringify({ bytes, sha256: hash.digest("hex") })}\n`);
      sock.end();
      server.close();
    });
  });
  server.listen(port, host, () => process.stdout.write("listening\n"));
} else if (mode === "client") {
  const total = Number(mbText) * 1024 * 1024;
  const hash = createHash("sha256");
  // Fresh random bytes per block; both ends hash what they saw, so equal
  // hashes mean every byte arrived intact and in order.
  const block = Buffer.alloc(1024 * 1024);
  const sock = createConnection({ host, port }, () => {
    let sent = 0;
    const pump = () => {
      while (sent < total) {
        randomFillSync(block);
        const n = Math.min(block.length, total - sent);
        const chunk = Buffer.from(block.subarray(0, n));
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
  sock.on("close", () => process.stdout.write(`${JSON.stringify({ bytes: total, sha256: hash.digest("hex") })}\n`));
  sock.on("error", (err) => {
    process.stderr.write(`${err.message}\n`);
    process.exit(1);
  });
} else {
  process.stderr.write("usage: tcp-transfer server <ip> <port> | client <ip> <port> <MiB>\n");
  process.exit(2);
}

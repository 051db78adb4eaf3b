// A /metrics flood, run inside a namespace by `bench scrape`: `concurrency`
// loops each GET the URL back to back on keep-alive connections for `seconds`,
// reconnecting at once whenever the server closes or refuses a connection.
// Prints one JSON line: answers by status, connection errors, requests/s.
//
//   node scrape-client.js <url> <concurrency> <seconds>

import { Agent, get } from "node:http";

const [url, concurrencyArg, secondsArg] = process.argv.slice(2);
if (url === undefined || concurrencyArg === undefined || secondsArg === undefined) {
  process.stderr.write("usage: scrape-client.js <url> <concurrency> <seconds>\n");
  process.exit(2);
}
const concurrency = Number(concurrencyArg);
const deadline = Date.now() + Number(secondsArg) * 1000;
const agent = new Agent({ keepAlive: true, maxSockets: concurrency });
const statuses: Record<string, number> = {};
let errors = 0;

function loop(done: () => void): void {
  if (Date.now() >= deadline) {
    done();
    return;
  }
  const req = get(url as string, { agent, timeout: 10_000 }, (res) => {
    res.resume();
    res.on("end", () => {
      statuses[String(res.statusCode)] = (statuses[String(res.statusCode)] ?? 0) + 1;
      loop(done);
    });
    res.on("error", () => {
      errors++;
      loop(done);
    });
  });
  req.on("timeout", () => req.destroy());
  req.on("error", () => {
    errors++;
    // Refused or reset: try again at once, as a hostile client would.
    setImmediate(() => loop(done));
  });
}

const started = Date.now();
let running = concurrency;
for (let i = 0; i < concurrency; i++) {
  loop(() => {
    if (--running > 0) return;
    const answered = Object.values(statuses).reduce((a, b) => a + b, 0);
    const seconds = (Date.now() - started) / 1000;
    process.stdout.write(`${JSON.stringify({ statuses, errors, answeredPerSecond: answered / seconds })}\n`);
    agent.destroy();
  });
}

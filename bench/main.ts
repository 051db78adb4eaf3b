// npm run bench -- <replay|micro|lab|scale> [options]
//
//   replay   traces through the engine over in-memory fakes, beside flannel's lookup
//   micro    tinybench: lookup, validation, TTL, ICMP, staging (packets/s)
//   lab      the BENCH.md topology in namespaces: direct, kernel vxlan, weft
//   scrape   TCP through weft while clients flood /metrics
//   scale    one weftd against 100–10,000 peers: start-up, churn, memory
//
// Each prints a table and writes bench/results/<kind>-<timestamp>.json.

import { runLab } from "./lab/main.js";
import { runMicro } from "./micro.js";
import { runReplay } from "./replay.js";
import { runScale } from "./scale/main.js";
import { runScrape } from "./scrape.js";

const USAGE = `usage: npm run bench -- <replay|micro|lab|scrape|scale> [options]   (--help after a command for its options)
  replay [trace.pcap …]   in-process replay through the engine and flannel's lookup
  micro                   microbenchmarks of the hot-path pieces
  lab                     end-to-end in network namespaces: direct, vxlan, weft
  scrape                  TCP through weft while clients flood /metrics
  scale                   the control plane at 100 to 10,000 peers: start-up, lease churn, memory`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case "replay":
      return runReplay(rest);
    case "micro":
      return runMicro(rest);
    case "lab":
      return runLab(rest);
    case "scrape":
      return runScrape(rest);
    case "scale":
      return runScale(rest);
    case undefined:
    case "help":
    case "--help":
    case "-h":
      process.stdout.write(`${USAGE}\n`);
      return command === undefined ? 2 : 0;
    default:
      process.stderr.write(`bench: unknown command ${JSON.stringify(command)}\n${USAGE}\n`);
      return 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: Error) => {
    process.stderr.write(`bench: ${err.message}\n`);
    process.exitCode = 1;
  },
);

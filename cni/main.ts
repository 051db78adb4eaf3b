// Entry of the `flannel` CNI plugin executable: config on stdin, CNI_* in the
// environment, the result or the CNI error JSON on stdout, nothing else.

import { runPlugin } from "./flannel.js";

async function readStdin(): Promise<Buffer> {
  // Run by hand from a terminal (e.g. CNI_COMMAND=VERSION) there is nothing to wait for.
  if (process.stdin.isTTY) return Buffer.alloc(0);
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

const outcome = await runPlugin(process.env, await readStdin());
if (outcome.stdout !== "") process.stdout.write(outcome.stdout);
// exitCode rather than exit(): stdout may be a pipe that still has to drain.
process.exitCode = outcome.exitCode;

// The stand-in API server as a process, for the lab and the netns tests (it
// runs inside the lab's switch namespace, on the underlay, where every host
// reaches it). Run with `node dist/lab/kube/serve.js --listen IP:PORT --dir D`.
//
// In D it makes a CA, the server's certificate, an admin client certificate,
// flannel's service-account token, admin.kubeconfig and flannel.kubeconfig,
// and appends every request to requests.jsonl. It prints one JSON line
// {"url":…} when it serves. Commands on stdin, one JSON object a line, each
// answered by a line with the same id (stdin closing is not a command; the
// server keeps running, as `npm run lab -- --kube --keep` needs):
//
//   {"id":1,"op":"stop"}      stop listening, drop connections (an outage)
//   {"id":2,"op":"start"}     listen again on the same address
//   {"id":3,"op":"expire"}    compact history; open watches get 410 Expired
//   {"id":4,"op":"token","token":"…"}              rotate flannel's token
//   {"id":6,"op":"node","node":{…}}           create or replace a Node directly in the
//                             store (works while stopped: a change during an outage)
//   {"id":7,"op":"delete-node","name":"…"}
//   {"id":5,"op":"request","method":"POST","path":"/api/v1/nodes","body":"…","contentType":"…"}
//                             an admin request, answered {"status":…,"body":…}

import { randomBytes } from "node:crypto";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { request as httpsRequest } from "node:https";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";
import { FLANNEL_USER, KubeApiServer } from "./apiserver.js";
import { createPki, kubeconfig } from "./pki.js";

const { values } = parseArgs({
  options: {
    listen: { type: "string", default: "127.0.0.1:0" },
    dir: { type: "string" },
    "bookmark-ms": { type: "string", default: "60000" },
  },
});
const dir = values.dir;
if (dir === undefined) {
  process.stderr.write("serve: --dir is required\n");
  process.exit(2);
}
const [host, portText] = (values.listen as string).split(":") as [string, string];
const bookmarkMs = Number(values["bookmark-ms"]);
if (!(Number.isInteger(bookmarkMs) && bookmarkMs > 0)) {
  process.stderr.write(`serve: --bookmark-ms "${values["bookmark-ms"]}" is not a positive integer\n`);
  process.exit(2);
}

const pki = createPki(join(dir, "pki"));
const serverCert = pki.issue("server", "kube-apiserver", [host, "127.0.0.1"]);
const admin = pki.issue("admin", "admin");
const tokenFile = join(dir, "flannel-token");
const token = existsSync(tokenFile) ? readFileSync(tokenFile, "utf8").trim() : randomBytes(16).toString("hex");
writeFileSync(tokenFile, token);

const server = new KubeApiServer({
  host,
  port: Number(portText),
  tls: { key: serverCert.key, cert: serverCert.cert, ca: pki.ca },
  tokens: { [token]: FLANNEL_USER },
  users: { admin: "admin", [FLANNEL_USER]: "flannel" },
  bookmarkMs,
  requestLogFile: join(dir, "requests.jsonl"),
});
await server.start();
writeFileSync(
  join(dir, "admin.kubeconfig"),
  kubeconfig({ server: server.url, ca: pki.ca, user: { cert: admin.cert, key: admin.key } }),
);
writeFileSync(join(dir, "flannel.kubeconfig"), kubeconfig({ server: server.url, ca: pki.ca, user: { token } }));
process.stdout.write(`${JSON.stringify({ url: server.url, pid: process.pid })}\n`);

function adminRequest(method: string, path: string, body?: string, contentType?: string) {
  return new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = httpsRequest(
      new URL(path, server.url),
      {
        method,
        ca: pki.ca,
        cert: admin.cert,
        key: admin.key,
        headers: body === undefined ? {} : { "content-type": contentType ?? "application/json" },
      },
      (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => {
          text += c;
        });
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body: text }));
      },
    );
    req.once("error", reject);
    req.end(body);
  });
}

const commands: Record<string, (c: Record<string, string>) => Promise<unknown>> = {
  stop: () => server.stop(),
  start: () => server.start(),
  expire: async () => server.expireWatches(),
  token: async (c) => {
    writeFileSync(tokenFile, c.token as string);
    server.setTokens({ [c.token as string]: FLANNEL_USER });
  },
  node: async (c) => {
    const node = c.node as unknown as { metadata: { name: string } };
    const name = node.metadata.name;
    if (server.store.get("nodes", name) === undefined) server.store.create("nodes", name, node);
    else server.store.replace("nodes", name, node);
  },
  "delete-node": async (c) => void server.store.delete("nodes", c.name as string),
  request: (c) => adminRequest(c.method as string, c.path as string, c.body, c.contentType),
};

createInterface({ input: process.stdin }).on("line", (line) => {
  let command: Record<string, string>;
  try {
    command = JSON.parse(line);
  } catch {
    process.stdout.write(`${JSON.stringify({ error: `not JSON: ${line}` })}\n`);
    return;
  }
  const run = commands[command.op as string];
  const done = run === undefined ? Promise.reject(new Error(`unknown op "${command.op}"`)) : run(command);
  done.then(
    (result) => process.stdout.write(`${JSON.stringify({ id: command.id, ok: true, result })}\n`),
    (err: Error) => process.stdout.write(`${JSON.stringify({ id: command.id, ok: false, error: err.message })}\n`),
  );
});
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => void server.stop().then(() => process.exit(0)));
}

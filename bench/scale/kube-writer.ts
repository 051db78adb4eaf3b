// The scale bench's hands in Kubernetes mode: made-up peers become Node
// objects in the stand-in API server (lab/kube/), created and deleted as the
// cluster admin over HTTPS, the way nodes joining and leaving would show up.

import { readFileSync } from "node:fs";
import { Agent, request } from "node:https";
import { peerNode } from "./peers.js";

export interface KubeSpec {
  kind: "kube";
  url: string;
  /** The stand-in's admin.kubeconfig: CA and client certificate inline. */
  adminKubeconfig: string;
}

/** A field of the lab's kubeconfig (lab/kube/pki.ts writes each on one line), decoded. */
function field(text: string, name: string): string {
  const value = new RegExp(`${name}: (\\S+)`).exec(text)?.[1];
  if (value === undefined) throw new Error(`kubeconfig has no ${name}`);
  return Buffer.from(value, "base64").toString("utf8");
}

export class KubeWriter {
  private readonly agent: Agent;
  private readonly url: URL;

  constructor(spec: KubeSpec) {
    const text = readFileSync(spec.adminKubeconfig, "utf8");
    this.url = new URL(spec.url);
    this.agent = new Agent({
      keepAlive: true,
      maxSockets: 16,
      ca: field(text, "certificate-authority-data"),
      cert: field(text, "client-certificate-data"),
      key: field(text, "client-key-data"),
    });
  }

  /** Creates Node peer-<i>. */
  async add(i: number): Promise<void> {
    await this.send("POST", "/api/v1/nodes", JSON.stringify(peerNode(i)));
  }

  /** Deletes Node peer-<i>. */
  async remove(i: number): Promise<void> {
    await this.send("DELETE", `/api/v1/nodes/peer-${i}`);
  }

  close(): void {
    this.agent.destroy();
  }

  private send(method: string, path: string, body?: string): Promise<void> {
    return new Promise((resolve, reject) => {
      const req = request(
        {
          agent: this.agent,
          host: this.url.hostname,
          port: this.url.port,
          method,
          path,
          headers: body === undefined ? {} : { "content-type": "application/json" },
        },
        (res) => {
          let text = "";
          res.setEncoding("utf8").on("data", (d: string) => {
            if (text.length < 2000) text += d;
          });
          res.on("end", () => {
            const status = res.statusCode ?? 0;
            if (status >= 200 && status < 300) resolve();
            else reject(new Error(`${method} ${path}: HTTP ${status} ${text.slice(0, 300)}`));
          });
        },
      );
      req.on("error", reject);
      req.end(body);
    });
  }
}

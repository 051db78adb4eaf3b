// Where the Kubernetes API is and how weftd proves who it is, by flanneld's
// rules (client-go's BuildConfigFromFlags as flannel calls it):
//
//   --kubeconfig-file F   F's current context: cluster server + CA (data or file),
//                         user client certificate/key (data or file), token or
//                         token file; --kube-api-url, when also given, replaces the server
//   --kube-api-url U      U; inside a pod the service account's token and CA are
//                         still used (COMPAT.md), outside one no credentials
//   neither               in-cluster: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT
//                         with the service account's token and CA
//
// Token files are re-read at least every minute: projected service-account
// tokens rotate (hourly by default) and the old one stops working.

import { readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { parseSimpleYaml } from "./simple-yaml.js";

export const SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount";
export const TOKEN_REREAD_MS = 60_000;

export interface KubeCredentials {
  /** Base URL, no trailing slash. */
  readonly server: string;
  readonly ca?: string;
  readonly cert?: string;
  readonly key?: string;
  readonly insecureSkipVerify?: boolean;
  /** The bearer token to send now, or undefined for none. */
  token(): string | undefined;
  /** Where the settings came from, for logs. */
  readonly source: string;
}

export interface CredentialOptions {
  readonly kubeconfigFile?: string;
  readonly apiUrl?: string;
  readonly env?: NodeJS.ProcessEnv;
  readonly serviceAccountDir?: string;
  readonly now?: () => number;
}

export class CredentialError extends Error {}

function read(path: string, what: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch (err) {
    throw new CredentialError(`${what} ${path} cannot be read: ${(err as NodeJS.ErrnoException).code ?? err}`);
  }
}

/** A token read from `path`, re-read when the last read is older than TOKEN_REREAD_MS. */
function tokenFile(path: string, what: string, now: () => number): () => string {
  let token = read(path, what).trim();
  let readAt = now();
  return () => {
    if (now() - readAt >= TOKEN_REREAD_MS) {
      readAt = now();
      try {
        token = readFileSync(path, "utf8").trim();
      } catch {
        // A rotation in progress (the kubelet swaps a symlink): keep the last token, retry next time.
      }
    }
    return token;
  };
}

function checkUrl(url: string, what: string): string {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new CredentialError(`${what} "${url}" is not a URL`);
  }
  if (parsed.protocol !== "https:" && parsed.protocol !== "http:")
    throw new CredentialError(`${what} "${url}" is not an http(s):// URL`);
  return url.replace(/\/+$/, "");
}

export async function loadCredentials(opts: CredentialOptions): Promise<KubeCredentials> {
  const env = opts.env ?? process.env;
  const saDir = opts.serviceAccountDir ?? SERVICE_ACCOUNT_DIR;
  const now = opts.now ?? Date.now;
  const apiUrl = opts.apiUrl ? checkUrl(opts.apiUrl, "--kube-api-url") : "";
  if (opts.kubeconfigFile) return fromKubeconfig(opts.kubeconfigFile, apiUrl, now);

  const tokenPath = `${saDir}/token`;
  let inPod = true;
  try {
    readFileSync(tokenPath);
  } catch {
    inPod = false;
  }
  if (apiUrl !== "") {
    if (!inPod) return { server: apiUrl, token: () => undefined, source: `--kube-api-url ${apiUrl}` };
    return {
      server: apiUrl,
      ca: read(`${saDir}/ca.crt`, "service account CA"),
      token: tokenFile(tokenPath, "service account token", now),
      source: `--kube-api-url ${apiUrl} with the service account in ${saDir}`,
    };
  }
  const host = env.KUBERNETES_SERVICE_HOST;
  const port = env.KUBERNETES_SERVICE_PORT;
  if (!host || !port) {
    throw new CredentialError(
      "--kube-subnet-mgr needs --kubeconfig-file, --kube-api-url, or to run in a pod (KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set)",
    );
  }
  if (!inPod) throw new CredentialError(`in-cluster: service account token ${tokenPath} cannot be read`);
  const server = `https://${host.includes(":") ? `[${host}]` : host}:${port}`;
  return {
    server,
    ca: read(`${saDir}/ca.crt`, "service account CA"),
    token: tokenFile(tokenPath, "service account token", now),
    source: `in-cluster ${server}`,
  };
}

type Doc = Record<string, unknown>;

function named(list: unknown, name: unknown, what: string, file: string): Doc {
  const entry = Array.isArray(list) ? (list as Doc[]).find((e) => e?.name === name) : undefined;
  if (entry === undefined) throw new CredentialError(`kubeconfig ${file}: ${what} "${String(name)}" is not defined`);
  return (entry[what] ?? {}) as Doc;
}

async function fromKubeconfig(file: string, apiUrl: string, now: () => number): Promise<KubeCredentials> {
  const text = read(file, "kubeconfig");
  let doc: Doc;
  try {
    // The usual kubeconfig without the `yaml` package (~50 ms of loading);
    // anything else by it, loaded only then: nothing else in weftd reads YAML.
    const simple = parseSimpleYaml(text);
    doc = (simple ?? (await import("yaml")).parse(text) ?? {}) as Doc;
  } catch (err) {
    throw new CredentialError(`kubeconfig ${file} is not valid YAML: ${(err as Error).message.split("\n")[0]}`);
  }
  const base = dirname(resolve(file));
  const context = named(doc.contexts, doc["current-context"], "context", file);
  const cluster = named(doc.clusters, context.cluster, "cluster", file);
  const user = context.user === undefined ? {} : named(doc.users, context.user, "user", file);
  if (user.exec !== undefined || user["auth-provider"] !== undefined)
    throw new CredentialError(
      `kubeconfig ${file}: user "${String(context.user)}" uses an exec or auth-provider plugin, which weftd does not run; use a token or client certificate`,
    );
  const data = (entry: Doc, dataKey: string, fileKey: string, what: string): string | undefined => {
    if (typeof entry[dataKey] === "string") return Buffer.from(entry[dataKey] as string, "base64").toString("utf8");
    if (typeof entry[fileKey] === "string") return read(resolve(base, entry[fileKey] as string), what);
    return undefined;
  };
  const server =
    apiUrl || (typeof cluster.server === "string" ? checkUrl(cluster.server, `kubeconfig ${file}: server`) : "");
  if (server === "")
    throw new CredentialError(`kubeconfig ${file}: cluster "${String(context.cluster)}" has no server`);
  let token: () => string | undefined = () => undefined;
  if (typeof user.token === "string") {
    const fixed = user.token;
    token = () => fixed;
  } else if (typeof user.tokenFile === "string") {
    token = tokenFile(resolve(base, user.tokenFile), "kubeconfig tokenFile", now);
  }
  return {
    server,
    ca: data(cluster, "certificate-authority-data", "certificate-authority", "kubeconfig certificate-authority"),
    cert: data(user, "client-certificate-data", "client-certificate", "kubeconfig client-certificate"),
    key: data(user, "client-key-data", "client-key", "kubeconfig client-key"),
    insecureSkipVerify: cluster["insecure-skip-tls-verify"] === true,
    token,
    source: `kubeconfig ${file} (${server})`,
  };
}

// Certificates made at test/lab time with openssl: a CA, the stand-in API
// server's certificate for the addresses it listens on, and client
// certificates whose CN is the user name. EC P-256 keys (fast to make), valid
// two days: nothing here outlives a lab.

import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export interface Pki {
  readonly dir: string;
  readonly caFile: string;
  readonly ca: string;
  /** Key and certificate in PEM. */
  issue(
    name: string,
    cn: string,
    ips?: readonly string[],
  ): { keyFile: string; certFile: string; key: string; cert: string };
}

function openssl(args: string[], cwd: string): void {
  try {
    execFileSync("openssl", args, { cwd, stdio: ["ignore", "ignore", "pipe"] });
  } catch (err) {
    throw new Error(`openssl ${args[0]} failed: ${String((err as { stderr?: Buffer }).stderr ?? err).trim()}`);
  }
}

const KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

/** Makes a CA named `caName` in `dir`; `issue` signs certificates with it. */
export function createPki(dir: string, caName = "weft-standin-ca"): Pki {
  mkdirSync(dir, { recursive: true });
  openssl(["req", "-x509", ...KEY, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", `/CN=${caName}`], dir);
  const caFile = join(dir, "ca.crt");
  return {
    dir,
    caFile,
    ca: readFileSync(caFile, "utf8"),
    issue(name, cn, ips = []) {
      const ext = join(dir, `${name}.ext`);
      const san = ips.length > 0 ? `subjectAltName=${ips.map((ip) => `IP:${ip}`).join(",")}\n` : "";
      writeFileSync(ext, `${san}basicConstraints=CA:FALSE\n`);
      openssl(["req", ...KEY, "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", `/CN=${cn}`], dir);
      openssl(
        ["x509", "-req", "-in", `${name}.csr`, "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial"].concat([
          "-out",
          `${name}.crt`,
          "-days",
          "2",
          "-extfile",
          ext,
        ]),
        dir,
      );
      const keyFile = join(dir, `${name}.key`);
      const certFile = join(dir, `${name}.crt`);
      return { keyFile, certFile, key: readFileSync(keyFile, "utf8"), cert: readFileSync(certFile, "utf8") };
    },
  };
}

/** A kubeconfig for `server` with the CA inline and either a token or a client certificate inline. */
export function kubeconfig(opts: {
  server: string;
  ca: string;
  user: { token: string } | { cert: string; key: string };
  name?: string;
}): string {
  const b64 = (s: string) => Buffer.from(s).toString("base64");
  const name = opts.name ?? "weft-lab";
  const user =
    "token" in opts.user
      ? `    token: ${opts.user.token}`
      : `    client-certificate-data: ${b64(opts.user.cert)}\n    client-key-data: ${b64(opts.user.key)}`;
  return [
    "apiVersion: v1",
    "kind: Config",
    "clusters:",
    `- name: ${name}`,
    "  cluster:",
    `    server: ${opts.server}`,
    `    certificate-authority-data: ${b64(opts.ca)}`,
    "users:",
    `- name: ${name}`,
    "  user:",
    user,
    "contexts:",
    `- name: ${name}`,
    "  context:",
    `    cluster: ${name}`,
    `    user: ${name}`,
    `current-context: ${name}`,
    "",
  ].join("\n");
}

// Creates or removes one pod through the CNI chain, as kubelet would: kube-flannel's
// conflist run against an existing network namespace, plugins in the current
// namespace (in the compose lab the container is the host). Used by entrypoint.sh.
//
//   node dist/lab/compose/pod.js add <netns> [--subnet-file F] [--cni-path A:B] [--cache-dir D]
//                                             prints the pod's IPv4 address
//   node dist/lab/compose/pod.js del <netns> [same options]
//
// With flannel's default subnet file (/run/flannel/subnet.env, where weftd writes it by
// default) the conflist is kube-flannel's, unchanged; another --subnet-file is added to
// the flannel entry as `subnetFile`.

import { parseArgs } from "node:util";
import { CniError } from "../../cni/chain.js";
import { DEFAULT_SUBNET_ENV_PATH } from "../../control/subnet-env.js";
import { cniAdd, cniDel, defaultCniPath, KUBE_FLANNEL_CONFLIST, labConflist } from "../pods.js";

async function main(): Promise<number> {
  const { values, positionals } = parseArgs({
    options: {
      "subnet-file": { type: "string", default: DEFAULT_SUBNET_ENV_PATH },
      "cni-path": { type: "string" },
      "cache-dir": { type: "string", default: "/var/lib/cni" },
    },
    allowPositionals: true,
  });
  const [command, netns] = positionals;
  if ((command !== "add" && command !== "del") || netns === undefined || positionals.length !== 2) {
    process.stderr.write("usage: pod.js add|del <netns> [--subnet-file F] [--cni-path A:B] [--cache-dir D]\n");
    return 2;
  }
  const subnetFile = values["subnet-file"] as string;
  const cni = {
    hostNs: null,
    varLib: null,
    cacheDir: values["cache-dir"] as string,
    conflist: subnetFile === DEFAULT_SUBNET_ENV_PATH ? KUBE_FLANNEL_CONFLIST : labConflist(subnetFile),
    cniPath: values["cni-path"]?.split(":") ?? defaultCniPath(),
  };
  // The container ID names the pod in host-local's and flannel's state; the namespace name is unique here.
  if (command === "add") process.stdout.write(`${await cniAdd(cni, netns, netns)}\n`);
  else await cniDel(cni, netns, netns);
  return 0;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    const plugin = err instanceof CniError && err.plugin ? ` (plugin ${err.plugin}, code ${err.code})` : "";
    process.stderr.write(`pod: ${(err as Error).message}${plugin}\n`);
    process.exit(1);
  },
);

// /dev/net/tun in a container without privileged mode: kube-weft.yml mounts
// the host's device (a hostPath CharDevice), and when a runtime still leaves
// it out weftd makes the node itself (character device 10,200), which
// CAP_MKNOD allows; using it needs only NET_ADMIN. flanneld's udp backend just
// fails with "open /dev/net/tun: no such file" (flannel #1267).

import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync } from "node:fs";

export const TUN_PATH = "/dev/net/tun";

/** Creates /dev/net/tun when missing; returns true if it did. Throws one sentence if it cannot. */
export function ensureTunDevice(path = TUN_PATH): boolean {
  if (existsSync(path)) return false;
  try {
    // Not recursive: Node's recursive mkdir loops forever where mkdir keeps
    // answering ENOENT (under /proc); /dev exists wherever this runs.
    const parent = path.slice(0, path.lastIndexOf("/"));
    if (!existsSync(parent)) mkdirSync(parent);
    execFileSync("mknod", ["-m", "0666", path, "c", "10", "200"], { stdio: ["ignore", "ignore", "pipe"] });
  } catch (err) {
    const why = String((err as { stderr?: Buffer }).stderr ?? (err as Error).message).trim();
    throw new Error(
      `${path} is missing and weftd cannot create it (${why}); mount the host's /dev/net/tun (hostPath, type CharDevice) or grant CAP_MKNOD`,
    );
  }
  return true;
}

// Kube mode's start: credentials, the client, this node's name, then the
// registry (which waits for the node's podCIDR). Loaded only with --kube-subnet-mgr.

import type { Options } from "../cli.js";
import type { Logger } from "../lease-manager.js";
import { KubeRegistry, resolveNodeName } from "../registry/kube.js";
import { KubeClient } from "./client.js";
import { loadCredentials } from "./credentials.js";
import { normaliseAnnotationPrefix } from "./node.js";

export async function openKubeRegistry(
  opts: Options,
  log: Logger,
  localPublicIp: number,
  signal: AbortSignal,
  onWaiting: (what: string | null) => void,
): Promise<KubeRegistry> {
  const creds = await loadCredentials({ kubeconfigFile: opts.kubeconfigFile, apiUrl: opts.kubeApiUrl });
  log.info({ api: creds.source }, "kubernetes API");
  const client = new KubeClient(creds);
  try {
    const nodeName = await resolveNodeName(client);
    return await KubeRegistry.open({
      client,
      nodeName,
      netConfPath: opts.netConfigPath,
      annotationPrefix: normaliseAnnotationPrefix(opts.kubeAnnotationPrefix) as string,
      localPublicIp,
      setNodeNetworkUnavailable: opts.setNodeNetworkUnavailable,
      log,
      onWaiting,
      signal,
    });
  } catch (err) {
    client.close();
    throw err;
  }
}

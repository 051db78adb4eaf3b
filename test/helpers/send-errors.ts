// Send-error injection for tests: the addon's socket can make its next
// sendmmsg calls fail with a chosen errno (ENOBUFS, EINVAL, ...). The hook
// lives on the native object only; the production UdpTransport has no such
// method, so this reaches past it on purpose.

import type { NativeUdpSocket } from "../../dataplane/native/index.js";
import type { UdpTransport } from "../../dataplane/native-io.js";

/** The next `count` sendmmsg calls of `transport` fail with `errno` (e.g. os.constants.errno.ENOBUFS). */
export function injectSendErrors(transport: UdpTransport, errno: number, count: number): void {
  (transport as unknown as { native: NativeUdpSocket }).native.injectSendErrors(errno, count);
}

// A fake underlay joining FakeTransports by address: what one node sends to
// 198.18.0.3:8285 arrives at the transport attached as 198.18.0.3, with the
// sender's address as source, when the test calls flush(). Datagrams to an
// address nobody holds are lost, as on a real network.

import type { FakeTransport } from "../../dataplane/fake-io.js";

export class FakeUnderlay {
  private readonly hosts = new Map<number, FakeTransport>();
  /** Datagrams sent to addresses nobody is attached as. */
  lost = 0;

  attach(addr: number, transport: FakeTransport): void {
    this.hosts.set(addr, transport);
  }

  detach(addr: number): void {
    this.hosts.delete(addr);
  }

  /** Carries everything sent so far, and what that provokes, until the wire is quiet. Returns datagrams carried. */
  flush(maxRounds = 16): number {
    let carried = 0;
    for (let round = 0; round < maxRounds; round++) {
      let moved = 0;
      for (const [src, from] of this.hosts) {
        for (const datagram of from.sent.splice(0)) {
          const to = this.hosts.get(datagram.addr);
          if (to === undefined || to.closed || to.localPort !== datagram.port) {
            this.lost++;
            continue;
          }
          to.inject([{ data: datagram.data, src, srcPort: from.localPort }]);
          moved++;
        }
      }
      carried += moved;
      if (moved === 0) return carried;
    }
    throw new Error(`fake underlay: still busy after ${maxRounds} rounds (a forwarding loop?)`);
  }
}

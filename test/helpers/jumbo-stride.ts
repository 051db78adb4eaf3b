// Runs in a worker (test/offload.test.ts): a super-packet whose segments are
// longer than a UDP payload may be, through the engine over fakes with an MTU
// derived from loopback's 65,536. The old staging looped forever on it, so
// the test runs it where it can be stopped, and this posts the outcome.
import { parentPort, workerData } from "node:worker_threads";
import { engineOver, FakeDevice, FakeTransport } from "../../dataplane/fake-io.js";
import { LeaseTable } from "../../dataplane/leases.js";
import { type Ipv4Prefix, parseIpv4, parsePrefix } from "../../net/addr.js";
import { ACK, tcpPacket } from "./segments.js";

const { gsoSize, payload, mtu } = workerData as { gsoSize: number; payload: number; mtu: number };
const device = new FakeDevice("flannel0", { gso: true });
const transport = new FakeTransport(8285, { gso: true });
const engine = engineOver(device, transport, { localAddr: parseIpv4("10.244.1.0"), mtu });
engine.setTable(
  LeaseTable.build(
    parsePrefix("10.244.0.0/16") as Ipv4Prefix,
    24,
    [{ subnet: parsePrefix("10.244.2.0/24") as Ipv4Prefix, publicIp: parseIpv4("198.18.0.2") }],
    8285,
  ),
);
engine.start();
const p = tcpPacket({
  src: parseIpv4("10.244.1.2"),
  dst: parseIpv4("10.244.2.7"),
  seq: 1,
  flags: ACK,
  payload: new Uint8Array(payload),
});
device.inject([{ data: p, gsoSize }]);
const c = engine.counters.tx;
parentPort?.postMessage({
  inPackets: c.inPackets,
  outPackets: c.outPackets,
  dropped: c.dropped(),
  sent: transport.sent.map((d) => d.data.length),
  entries: transport.entries,
});

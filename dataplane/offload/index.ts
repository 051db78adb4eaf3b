// `--offload`'s factory: flannel0 with virtio-net headers and the UDP socket
// with GRO/GSO, wrapped so the engine sees ordinary packets only. The pair is
// built together because each gathers in the other's arena: runs toward
// peers grow in the device's slots, super-packets toward flannel0 in the
// socket's.

import type { DirectionCounters } from "../counters.js";
import type { Dataplane, RawDataplane } from "../plain.js";
import { OffloadDevice } from "./device.js";
import { OffloadTransport } from "./transport.js";

export interface OffloadOptions {
  /** The transmit counters (super-packets that cannot be split are their drops). */
  readonly counters: DirectionCounters;
  /** flannel0's MTU. */
  readonly mtu: number;
  /** Coalesce toward flannel0 (default true). */
  readonly coalesce?: boolean;
}

export interface OffloadDataplane extends Dataplane {
  readonly device: OffloadDevice;
  readonly transport: OffloadTransport;
}

export function offloadDataplane(raw: RawDataplane, opts: OffloadOptions): OffloadDataplane {
  const device = new OffloadDevice(raw.device, {
    counters: opts.counters,
    mtu: opts.mtu,
    coalesce: opts.coalesce,
    peerArena: raw.transport.rx,
  });
  return { device, transport: new OffloadTransport(raw.transport, raw.device.rx) };
}

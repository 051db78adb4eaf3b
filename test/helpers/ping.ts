// A steady ping from inside a namespace (20 a second), counted at the end:
// what "forwarding lost nothing across an outage" is measured with.

import { spawn } from "node:child_process";

export interface SteadyPing {
  /** Waits for the last ping; resolves to transmitted and received counts. */
  result(): Promise<{ sent: number; received: number; summary: string }>;
  stop(): void;
}

export function steadyPing(ns: string, dst: string, seconds: number): SteadyPing {
  const count = String(Math.round(seconds * 20));
  const child = spawn("ip", ["netns", "exec", ns, "ping", "-i", "0.05", "-c", count, "-W", "1", dst]);
  let out = "";
  child.stdout.on("data", (d) => {
    out += String(d);
  });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  return {
    async result() {
      await exited;
      const stats = /(\d+) packets transmitted, (\d+) received/.exec(out);
      if (stats === null) throw new Error(`ping printed no summary: ${out.slice(-300)}`);
      return { sent: Number(stats[1]), received: Number(stats[2]), summary: stats[0] };
    },
    stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill();
    },
  };
}

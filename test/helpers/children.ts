// Several node processes released at the same instant, for tests of what
// must hold when separate processes race (atomic creates in one registry).

import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";

/**
 * Starts one node process per argument list, waits until each prints "ready",
 * then releases them together and returns the line each prints next. A child
 * that dies or stays silent fails the test with its stderr, never hangs it.
 */
export async function raceChildren(argLists: string[][], timeoutMs = 60_000): Promise<string[]> {
  let notify = () => {};
  const children = argLists.map((args) => {
    const child = spawn(process.execPath, args, { stdio: ["pipe", "pipe", "pipe"] });
    const state = { child, lines: [] as string[], partial: "", stderr: "", exited: false };
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
      const parts = (state.partial + chunk).split("\n");
      state.partial = parts.pop() ?? "";
      state.lines.push(...parts);
      notify();
    });
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => {
      state.stderr += chunk;
    });
    // "close", not "exit": only then has all of the child's output arrived.
    child.once("close", () => {
      state.exited = true;
      notify();
    });
    return state;
  });
  const until = (what: string, linesWanted: number) =>
    new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => finish(new Error(`timed out waiting for ${what}`)), timeoutMs);
      const finish = (err?: Error) => {
        clearTimeout(timer);
        notify = () => {};
        if (err === undefined) resolve();
        else {
          const report = children.map(
            (c, i) => `child ${i}: stdout ${JSON.stringify(c.lines)}, stderr ${JSON.stringify(c.stderr)}`,
          );
          reject(new Error(`${err.message}\n${report.join("\n")}`));
        }
      };
      notify = () => {
        if (children.every((c) => c.lines.length >= linesWanted)) finish();
        else if (children.some((c) => c.exited && c.lines.length < linesWanted))
          finish(new Error(`a child exited before ${what}`));
      };
      notify();
    });
  try {
    await until("every child to be ready", 1);
    for (const { lines } of children) assert.equal(lines[0], "ready");
    for (const { child } of children) child.stdin.write("go\n");
    await until("every child's result", 2);
    return children.map(({ lines }) => lines[1] as string);
  } finally {
    for (const { child } of children) if (child.exitCode === null && child.signalCode === null) child.kill();
  }
}

/**
 * Collects a child's stdout. `ready` resolves at its first output and rejects
 * if it exits before printing; `exited()` resolves once it has ended.
 */
export function watchOutput(proc: ChildProcess, what: string) {
  let out = "";
  proc.stdout?.on("data", (d) => {
    out += String(d);
  });
  const ready = new Promise<void>((resolve, reject) => {
    proc.stdout?.once("data", () => resolve());
    proc.once("exit", (code) => reject(new Error(`${what} exited ${code}`)));
  });
  const exited = () =>
    new Promise<void>((resolve) => (proc.exitCode !== null ? resolve() : proc.once("exit", () => resolve())));
  return { ready, exited, output: () => out };
}

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { createLogger, formatLine } from "../control/log.js";

describe("log", () => {
  it("writes pino's line shape: level and time first, the fields, then the message", () => {
    const line = formatLine(30, 1_700_000_000_000, { subnet: "10.244.1.0/24", attempt: 2 }, "acquired lease");
    assert.equal(
      line,
      '{"level":30,"time":1700000000000,"subnet":"10.244.1.0/24","attempt":2,"msg":"acquired lease"}\n',
    );
    assert.equal(
      formatLine(40, 5, "waiting for network config"),
      '{"level":40,"time":5,"msg":"waiting for network config"}\n',
    );
  });

  it("writes an Error field as its type, message and stack, with its own properties", () => {
    const err = Object.assign(new Error("connect refused"), { code: "ECONNREFUSED" });
    const o = JSON.parse(formatLine(50, 1, { err }, "registry unreachable")) as { err: Record<string, unknown> };
    assert.equal(o.err.type, "Error");
    assert.equal(o.err.message, "connect refused");
    assert.equal(o.err.code, "ECONNREFUSED");
    assert.match(String(o.err.stack), /connect refused/);
  });

  it("never throws from a log call: a BigInt as its digits, an Error object as err, a cycle named", () => {
    assert.equal(formatLine(30, 1, { bytes: 12n }, "m"), '{"level":30,"time":1,"bytes":"12","msg":"m"}\n');
    const o = JSON.parse(formatLine(50, 1, new Error("boom"), "failed")) as { err: { message: string }; msg: string };
    assert.equal(o.err.message, "boom");
    assert.equal(o.msg, "failed");
    const cyclic: Record<string, unknown> = { a: 1 };
    cyclic.self = cyclic;
    const c = JSON.parse(formatLine(40, 2, cyclic, "loop")) as { logError: string; msg: string };
    assert.match(c.logError, /circular/i);
    assert.equal(c.msg, "loop");
  });

  it("leaves debug lines out unless verbose", () => {
    const lines: string[] = [];
    const quiet = createLogger(0, (l) => lines.push(l));
    quiet.debug({ a: 1 }, "hidden");
    quiet.info({ a: 2 }, "shown");
    createLogger(1, (l) => lines.push(l)).debug({ a: 3 }, "verbose");
    assert.deepEqual(
      lines.map((l) => (JSON.parse(l) as { msg: string; level: number }).msg),
      ["shown", "verbose"],
    );
  });
});

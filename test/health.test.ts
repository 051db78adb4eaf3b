// The health server shares the dataplane's thread: whatever clients do, it
// answers at a bounded rate, renders /metrics at most once per interval, and
// sheds connections, big requests and slow clients. Loopback only.

import assert from "node:assert/strict";
import { connect, type Socket } from "node:net";
import { after, before, describe, it } from "node:test";
import {
  CachedMetrics,
  type HealthServer,
  MAX_CONNECTIONS,
  Pacer,
  RENDER_TTL_MS,
  REQUESTS_PER_SECOND,
  startHealthServer,
} from "../control/health.js";
import type { MetricsRegistry } from "../control/metrics.js";

function fakeClock(start = 1_000_000): { now: () => number; advance: (ms: number) => void } {
  let t = start;
  return { now: () => t, advance: (ms) => (t += ms) };
}

/** A registry that counts its own renderings. */
function countingRegistry(): { registry: MetricsRegistry; renders: () => number } {
  let renders = 0;
  const registry: MetricsRegistry = {
    contentType: "text/plain; version=0.0.4; charset=utf-8",
    metrics() {
      renders++;
      return Promise.resolve(`test_renders_total ${renders}\n`);
    },
  };
  return { registry, renders: () => renders };
}

describe("metrics rendering cache", () => {
  it("renders once per interval however many scrapes arrive, and again after it", async () => {
    const clock = fakeClock();
    const { registry, renders } = countingRegistry();
    const cached = new CachedMetrics(registry, clock.now, 1000);
    const texts = await Promise.all(Array.from({ length: 50 }, () => cached.render()));
    assert.equal(renders(), 1);
    assert.ok(texts.every((t) => t === texts[0] && t.includes("test_renders_total")));
    clock.advance(999);
    await cached.render();
    assert.equal(renders(), 1);
    clock.advance(1);
    await cached.render();
    assert.equal(renders(), 2);
  });
});

describe("request pacer", () => {
  it("answers a burst at once up to its rate, the rest in arrival order as tokens refill", async () => {
    const pacer = new Pacer(10, 100);
    const order: number[] = [];
    for (let i = 0; i < 15; i++)
      assert.equal(
        pacer.take(() => order.push(i)),
        true,
      );
    assert.deepEqual(order, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert.equal(pacer.queued, 5);
    await new Promise((r) => setTimeout(r, 700));
    assert.deepEqual(
      order,
      Array.from({ length: 15 }, (_, i) => i),
    );
    pacer.close();
  });

  it("refuses turns beyond its waiting room", () => {
    const pacer = new Pacer(2, 3);
    const results = Array.from({ length: 8 }, () => pacer.take(() => {}));
    assert.deepEqual(results, [true, true, true, true, true, false, false, false]);
    pacer.close();
  });
});

/** Sends raw bytes, returns everything the server sent until it closed or `ms` passed. */
function rawExchange(port: number, bytes: string, ms = 3000): Promise<{ text: string; closed: boolean }> {
  return new Promise((resolve) => {
    const socket = connect(port, "127.0.0.1");
    let text = "";
    let done = false;
    const finish = (closed: boolean) => {
      if (done) return;
      done = true;
      socket.destroy();
      resolve({ text, closed });
    };
    socket.on("data", (d) => (text += String(d)));
    socket.on("close", () => finish(true));
    socket.on("error", () => finish(true));
    socket.setTimeout(ms, () => finish(false));
    socket.write(bytes);
  });
}

describe("health server under abuse (loopback)", () => {
  let server: HealthServer;
  let port: number;
  const { registry, renders } = countingRegistry();

  before(async () => {
    server = startHealthServer({
      ip: "127.0.0.1",
      port: 0,
      metrics: registry,
      readiness: { conditions: () => ({ lease: true }), ready: () => true },
      onError: (err) => {
        throw err;
      },
    });
    port = await server.listening;
  });
  after(() => server.close());

  it("answers /healthz, /readyz and /metrics", async () => {
    const h = await fetch(`http://127.0.0.1:${port}/healthz`);
    assert.equal(await h.text(), "flanneld is running");
    const r = await fetch(`http://127.0.0.1:${port}/readyz`);
    assert.equal(r.status, 200);
    assert.deepEqual(await r.json(), { lease: true });
    const m = await fetch(`http://127.0.0.1:${port}/metrics`);
    assert.match(await m.text(), /test_renders_total/);
  });

  it("refuses a request with a body (413) and any method but GET and HEAD (405)", async () => {
    const body = await rawExchange(port, "GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
    assert.match(body.text, /^HTTP\/1\.1 413 /);
    const post = await rawExchange(port, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    assert.match(post.text, /^HTTP\/1\.1 405 /);
  });

  it("refuses headers beyond 4 KiB with 431", async () => {
    const big = `GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: ${"a".repeat(5000)}\r\n\r\n`;
    const r = await rawExchange(port, big);
    assert.match(r.text, /^HTTP\/1\.1 431 /);
  });

  it("closes a client that never finishes its headers", async () => {
    const r = await rawExchange(port, "GET /healthz HTTP/1.1\r\nHost: x\r\n", 15_000);
    assert.equal(r.closed, true, "the server closed the connection");
    assert.doesNotMatch(r.text, /flanneld is running/);
  });

  it("closes a keep-alive client that answers its first request with a second it never finishes", async () => {
    const r = await rawExchange(
      port,
      "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n",
      15_000,
    );
    assert.equal(r.closed, true, "the server closed the connection");
    assert.equal(r.text.split("flanneld is running").length - 1, 1, "only the complete request was answered");
  });

  it(`keeps at most ${MAX_CONNECTIONS} connections open, refusing the rest in the kernel, and listens again when one closes`, async () => {
    const sockets: Socket[] = [];
    const attempt = () =>
      new Promise<Socket | null>((resolve) => {
        const s = connect(port, "127.0.0.1");
        s.once("connect", () => resolve(s));
        s.once("error", () => resolve(null));
      });
    for (let i = 0; i < MAX_CONNECTIONS + 8; i++) {
      const s = await attempt();
      if (s !== null) sockets.push(s);
      await new Promise((r) => setImmediate(r));
    }
    await new Promise((r) => setTimeout(r, 100));
    const open = sockets.filter((s) => !s.destroyed && s.readyState === "open").length;
    assert.equal(open, MAX_CONNECTIONS);
    assert.equal(server.accepting, false, "at the limit the socket does not listen");
    (sockets.pop() as Socket).destroy();
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(server.accepting, true, "a freed slot listens again");
    const again = await attempt();
    assert.notEqual(again, null, "a new client connects once a slot is free");
    again?.destroy();
    for (const s of sockets) s.destroy();
  });

  it("under a flood of scrapes answers at most its rate and renders at most once per interval", async () => {
    await new Promise((r) => setTimeout(r, 1100)); // a full bucket and an expired rendering
    const rendersBefore = renders();
    const started = Date.now();
    let answered = 0;
    const client = async () => {
      while (Date.now() - started < 2000) {
        const res = await fetch(`http://127.0.0.1:${port}/metrics`).catch(() => null);
        if (res !== null && res.status === 200) {
          await res.text();
          answered++;
        }
      }
    };
    await Promise.all(Array.from({ length: 8 }, client));
    const seconds = (Date.now() - started) / 1000;
    // One bucket's burst plus the refill over the flood, whatever the clients tried.
    assert.ok(
      answered <= REQUESTS_PER_SECOND * (1 + seconds) + 1,
      `${answered} answers in ${seconds} s exceeds the pacer's bound`,
    );
    assert.ok(answered > 0, "the flood got some answers");
    const maxRenders = Math.ceil((seconds * 1000) / RENDER_TTL_MS) + 1;
    assert.ok(renders() - rendersBefore <= maxRenders, `${renders() - rendersBefore} renderings`);
  });
});

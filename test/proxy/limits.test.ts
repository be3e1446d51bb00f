/**
 * SPEC §4 `limits`, measured by what they protect: each attack of issue 18
 * reproduced with real sockets from one loopback address (127.0.0.2) while
 * another address (127.0.0.3) must still be answered within a second.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { rmSync, writeFileSync } from "node:fs";
import { createServer, type Server, type ServerResponse } from "node:http";
import { connect, type AddressInfo, type Socket } from "node:net";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { WebSocket, WebSocketServer } from "ws";
import { stringify } from "yaml";
import { send } from "../helpers/http.js";
import { eventually, startTestSidecar, type TestSidecar } from "../helpers/sidecar.js";
import { BIN } from "../helpers/spawn.js";

const ATTACKER = "127.0.0.2";
const VICTIM = "127.0.0.3";

/** An upstream whose paths hold connections the way the attacks do. */
interface SlowUpstream {
  url: string;
  /** Requests that reached it, by path prefix. */
  count(prefix: string): number;
  /** Bytes of request bodies that reached it. */
  bodyBytes: number;
  /** Requests whose body stopped before it ended (aborted upstream). */
  aborted: number;
  close(): Promise<void>;
}

/**
 * `/trickle`: headers at once, then one byte every 500 ms, never ending;
 * `/hang`: never answers; `/upload`: reads the body, then 200;
 * anything else: 200 "ok"; `/ws`: a WebSocket echo (via the upgrade event).
 */
async function slowUpstream(): Promise<SlowUpstream> {
  const seen: string[] = [];
  const open = new Set<ServerResponse>();
  let bodyBytes = 0;
  let aborted = 0;
  const server: Server = createServer((req, res) => {
    const url = req.url ?? "/";
    seen.push(url);
    if (url.startsWith("/trickle")) {
      res.writeHead(200, { "content-type": "application/octet-stream" });
      open.add(res);
      const t = setInterval(() => res.write("x"), 500);
      res.on("close", () => {
        clearInterval(t);
        open.delete(res);
      });
    } else if (url.startsWith("/hang")) {
      open.add(res);
      res.on("close", () => open.delete(res));
    } else {
      req.on("data", (c: Buffer) => (bodyBytes += c.length));
      req.on("aborted", () => aborted++);
      req.on("end", () => res.end("ok"));
    }
  });
  const wss = new WebSocketServer({ noServer: true });
  server.on("upgrade", (req, socket: Socket, head: Buffer) => {
    if (req.url === "/ws") {
      wss.handleUpgrade(req, socket, head, (ws) => ws.on("message", (m) => ws.send(m)));
      return;
    }
    socket.write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n");
    socket.pipe(socket);
  });
  server.keepAliveTimeout = 60_000;
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    count: (prefix) => seen.filter((u) => u.startsWith(prefix)).length,
    get bodyBytes() {
      return bodyBytes;
    },
    get aborted() {
      return aborted;
    },
    async close() {
      for (const r of open) r.destroy();
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** Opens a raw connection from `localAddress` and writes `text`; resolves once connected. */
function rawOpen(url: string, localAddress: string, text: string): Promise<Socket> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      s.destroy();
      reject(new Error(`no connection from ${localAddress} within 5 s`));
    }, 5000);
    const s = connect({ host: u.hostname, port: Number(u.port), localAddress }, () => {
      clearTimeout(t);
      if (text !== "") s.write(text);
      resolve(s);
    });
    s.on("error", reject);
  });
}

/** Opens `n` raw connections, a few at a time; every socket swallows later errors (the test closes them). */
async function rawMany(n: number, url: string, localAddress: string, text: (i: number) => string): Promise<Socket[]> {
  const out: Socket[] = [];
  for (let i = 0; i < n; i += 50) {
    const batch = await Promise.all(
      Array.from({ length: Math.min(50, n - i) }, (_, k) => rawOpen(url, localAddress, text(i + k))),
    );
    for (const s of batch) {
      s.on("error", () => undefined);
      out.push(s);
    }
  }
  return out;
}

/** Resolves when `s` is closed (an error on the way, such as a reset, is part of closing); rejects after `ms`. */
function closed(s: Socket, ms = 5000): Promise<void> {
  return new Promise((resolve, reject) => {
    if (s.destroyed) return resolve();
    const t = setTimeout(() => reject(new Error(`connection still open after ${ms} ms`)), ms);
    s.once("close", () => {
      clearTimeout(t);
      resolve();
    });
  });
}

/** Sends `n` requests one after another from VICTIM; returns each one's time in ms, asserting each answered with `status`. */
async function victim(url: string, n: number, status = 200): Promise<number[]> {
  const times: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    const r = await send(url, { localAddress: VICTIM, timeoutMs: 5000 });
    times.push(performance.now() - t0);
    assert.equal(r.status, status, r.body);
  }
  return times;
}

/** A counter's value from the sidecar's registry. */
async function counter(kf: TestSidecar, name: string, label: string): Promise<number> {
  const text = await kf.sidecar.registry.getSingleMetricAsString(name);
  const m = new RegExp(`^${name}\\{[^}]*="${label}"\\} (\\d+)$`, "m").exec(text);
  return Number(m?.[1] ?? "NaN");
}

function limitedLines(kf: TestSidecar, limit: string, client: string): Array<Record<string, unknown>> {
  return kf.logs.filter((l) => l["event"] === "limited" && l["limit"] === limit && l["client_ip"] === client);
}

describe("limits: one address cannot starve the others", () => {
  let up: SlowUpstream;
  const sockets: Socket[] = [];
  const sidecars: TestSidecar[] = [];
  before(async () => {
    up = await slowUpstream();
  });
  after(async () => {
    for (const s of sockets) s.destroy();
    for (const kf of sidecars) await kf.stop();
    await up.close();
  });
  const start = async (limits: Record<string, unknown>, config: Record<string, unknown> = {}): Promise<TestSidecar> => {
    const kf = await startTestSidecar({
      upstream: up.url,
      keys: [],
      admin: false,
      config: { upstream_timeout_ms: 20_000, limits, ...config },
    });
    sidecars.push(kf);
    return kf;
  };

  test("300 slow uploads: small bodies are read before an upstream connection is taken", async () => {
    // inflight_per_client raised so that buffering alone is what protects here.
    const kf = await start({ inflight_per_client: 1000 });
    const attack = await rawMany(
      300,
      kf.url,
      ATTACKER,
      (i) => `POST /upload/${i} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nx`,
    );
    sockets.push(...attack);
    await gaugeReaches(kf, "keyfence_inflight_requests", (v) => v >= 300, "300 uploads in flight");
    const times = await victim(`${kf.url}/ok`, 10);
    assert.ok(Math.max(...times) < 1000, `victim answered in ${times.map(Math.round).join(", ")} ms`);
    assert.equal(up.count("/upload"), 0, "no dripping body reached the upstream");
    // Finishing the bodies forwards them whole.
    for (const s of attack.slice(0, 5)) s.write("y".repeat(999));
    await eventually(() => up.count("/upload") === 5, 5000, "completed uploads forwarded");
    for (const s of attack) s.destroy();
  });

  test("300 slow downloads: at most inflight_per_client per address, the rest 429", async () => {
    const kf = await start({});
    const replies: string[] = [];
    const attack = await rawMany(300, kf.url, ATTACKER, (i) => `GET /trickle/${i} HTTP/1.1\r\nHost: x\r\n\r\n`);
    for (const s of attack) {
      let first = "";
      s.on("data", (d: Buffer) => {
        if (first === "") {
          first = d.toString("latin1");
          replies.push(first);
        }
      });
    }
    sockets.push(...attack);
    await eventually(() => replies.length === 300, 10_000, "an answer on every attacking connection");
    const tooMany = replies.filter((r) => r.startsWith("HTTP/1.1 429"));
    assert.equal(tooMany.length, 300 - 128);
    assert.match(tooMany[0] ?? "", /x-keyfence-reason: too_many_requests/i);
    assert.match(tooMany[0] ?? "", /retry-after: 1/i);
    assert.equal(replies.filter((r) => r.startsWith("HTTP/1.1 200")).length, 128);
    const times = await victim(`${kf.url}/ok`, 10);
    assert.ok(Math.max(...times) < 1000, `victim answered in ${times.map(Math.round).join(", ")} ms`);
    assert.equal(await counter(kf, "keyfence_limited_total", "inflight_per_client"), 172);
    assert.equal(limitedLines(kf, "inflight_per_client", ATTACKER).length, 1, "logged once, not per request");
    for (const s of attack) s.destroy();
  });

  test("an IPv6 client's slots count per /64: its other addresses share them, another /64 has its own", async () => {
    const kf = await start({ inflight_per_client: 4 }, { trusted_proxies: ["127.0.0.1"] });
    const from = (ip: string, i: number): string =>
      `GET /trickle/v6-${i} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: ${ip}\r\n\r\n`;
    const replies: string[] = [];
    const attack: Socket[] = [];
    for (let i = 0; i < 12; i++) {
      // Twelve addresses of one /64, one request each.
      attack.push(...(await rawMany(1, kf.url, "127.0.0.1", () => from(`2001:db8:7:7::${(i + 1).toString(16)}`, i))));
    }
    for (const s of attack) s.once("data", (d: Buffer) => replies.push(d.toString("latin1")));
    sockets.push(...attack);
    await eventually(() => replies.length === 12, 10_000, "an answer on every connection");
    assert.equal(replies.filter((r) => r.startsWith("HTTP/1.1 200")).length, 4, "4 slots for the /64");
    assert.equal(replies.filter((r) => r.startsWith("HTTP/1.1 429")).length, 8);
    const other = await rawMany(1, kf.url, "127.0.0.1", () => from("2001:db8:7:8::1", 99));
    sockets.push(...other);
    const reply = await new Promise<string>((r) => other[0]?.once("data", (d: Buffer) => r(d.toString("latin1"))));
    assert.match(reply, /^HTTP\/1\.1 200/, "another /64 has its own slots");
    for (const s of [...attack, ...other]) s.destroy();
    // limits.ipv6_prefix: 128 counts each address on its own again.
    const each = await start({ inflight_per_client: 4, ipv6_prefix: 128 }, { trusted_proxies: ["127.0.0.1"] });
    const own: string[] = [];
    const held: Socket[] = [];
    for (let i = 0; i < 6; i++) {
      held.push(
        ...(await rawMany(1, each.url, "127.0.0.1", () => from(`2001:db8:7:7::${(i + 1).toString(16)}`, 50 + i))),
      );
    }
    for (const s of held) s.once("data", (d: Buffer) => own.push(d.toString("latin1")));
    sockets.push(...held);
    await eventually(() => own.length === 6, 10_000, "an answer on every connection");
    assert.equal(own.filter((r) => r.startsWith("HTTP/1.1 200")).length, 6, "each address its own slots");
    for (const s of held) s.destroy();
  });

  test("upstream pool exhausted: a request that waits longer than queue_ms gets 503 upstream_busy", async () => {
    const kf = await start({ queue_ms: 300, inflight_per_client: 100 });
    // Three addresses hold all 256 upstream connections.
    for (const [i, addr] of ["127.0.0.4", "127.0.0.5", "127.0.0.6"].entries()) {
      sockets.push(
        ...(await rawMany(i < 2 ? 100 : 56, kf.url, addr, (k) => `GET /hang/${addr}/${k} HTTP/1.1\r\nHost: x\r\n\r\n`)),
      );
    }
    await eventually(() => up.count("/hang") >= 256, 10_000, "256 hanging upstream requests");
    const t0 = performance.now();
    const r = await send(`${kf.url}/ok`, { localAddress: VICTIM });
    const waited = performance.now() - t0;
    assert.equal(r.status, 503);
    assert.equal(r.body, '{"message":"upstream busy"}');
    assert.equal(r.headers["x-keyfence-reason"], "upstream_busy");
    assert.ok(waited >= 280 && waited < 2000, `answered after ${Math.round(waited)} ms`);
    assert.equal(await counter(kf, "keyfence_limited_total", "queue"), 1);
    assert.equal(limitedLines(kf, "queue", VICTIM).length, 1);
    // A freed connection goes to the next waiting request. A request without a body is queued in the
    // tick it is counted in flight: 256 hanging plus this one.
    const waiting = send(`${kf.url}/ok`, { localAddress: VICTIM });
    await gaugeReaches(kf, "keyfence_inflight_requests", (v) => v === 257, "the request queued");
    sockets.splice(sockets.length - 1, 1)[0]?.destroy();
    assert.equal((await waiting).status, 200);
  });

  test("a body that stalls longer than body_idle_ms: 408, whether buffered or streamed", async () => {
    const kf = await start({ body_idle_ms: 300, buffer_body_bytes: 1024 });
    for (const length of [100, 100_000]) {
      const aborted = up.aborted;
      const s = await rawOpen(
        kf.url,
        ATTACKER,
        `POST /upload/stall HTTP/1.1\r\nHost: x\r\nContent-Length: ${length}\r\n\r\n${"z".repeat(length > 1024 ? 4096 : 10)}`,
      );
      sockets.push(s);
      const t0 = performance.now();
      let reply = "";
      s.on("data", (d: Buffer) => (reply += d.toString("latin1")));
      await closed(s);
      const took = performance.now() - t0;
      assert.match(reply, /^HTTP\/1\.1 408 /, `length ${length}`);
      assert.match(reply, /x-keyfence-reason: body_timeout/i);
      assert.match(reply, /\{"message":"request body timed out"\}$/);
      assert.ok(took >= 250 && took < 3000, `closed after ${Math.round(took)} ms`);
      if (length > 1024) await eventually(() => up.aborted === aborted + 1, 3000, "the upstream request aborted");
    }
    assert.equal(await counter(kf, "keyfence_limited_total", "body_idle"), 2);
    // A slow but steady body is not idle.
    const s = await rawOpen(kf.url, ATTACKER, "POST /upload/steady HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n");
    sockets.push(s);
    let reply = "";
    s.on("data", (d: Buffer) => (reply += d.toString("latin1")));
    for (let i = 0; i < 8; i++) {
      // The pacing is the input under test (a byte every 100 ms, under body_idle_ms), not a wait for state.
      await new Promise((r) => setTimeout(r, 100));
      s.write("b");
    }
    await eventually(() => reply.includes("\r\n\r\nok"), 3000, "the steady upload answered");
    assert.match(reply, /^HTTP\/1\.1 200 /);
  });

  test("connections per peer and in total: over the cap, closed at once without an answer", async () => {
    const kf = await start({ connections: 6, connections_per_peer: 4 });
    const held = await rawMany(4, kf.url, ATTACKER, () => "");
    sockets.push(...held);
    const extra = await rawOpen(kf.url, ATTACKER, "GET /ok HTTP/1.1\r\nHost: x\r\n\r\n");
    let got = "";
    extra.on("data", (d: Buffer) => (got += d.toString()));
    extra.on("error", () => undefined);
    await closed(extra);
    assert.equal(got, "", "no answer on a refused connection");
    assert.deepEqual(await victim(`${kf.url}/ok`, 1).then((t) => t.length), 1, "another peer still gets in");
    // The total: 4 held + 2 from another peer fill it.
    const other = await rawMany(2, kf.url, "127.0.0.7", () => "");
    sockets.push(...other);
    await gaugeReaches(kf, "keyfence_open_connections", (v) => v === 6, "6 connections open");
    const over = await rawOpen(kf.url, VICTIM, "GET /ok HTTP/1.1\r\nHost: x\r\n\r\n");
    over.on("error", () => undefined);
    let got2 = "";
    over.on("data", (d: Buffer) => (got2 += d.toString()));
    await closed(over);
    assert.equal(got2, "");
    assert.equal(await counter(kf, "keyfence_limited_total", "connections_per_peer"), 1);
    assert.equal(await counter(kf, "keyfence_limited_total", "connections"), 1);
    // Closing connections frees their places.
    for (const s of [...held, ...other]) s.destroy();
    await gaugeReaches(kf, "keyfence_open_connections", (v) => v === 0, "connections closed");
    await victim(`${kf.url}/ok`, 1);
  });

  test("an upgraded tunnel idle for tunnel_idle_ms is closed; an active one is not", async () => {
    const kf = await start({ tunnel_idle_ms: 400 });
    const open = async (): Promise<Socket> => {
      const s = await rawOpen(
        kf.url,
        ATTACKER,
        "GET /tunnel HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
      );
      sockets.push(s);
      let text = "";
      await new Promise<void>((r) => {
        const on = (d: Buffer): void => {
          text += d.toString("latin1");
          if (text.includes("\r\n\r\n")) {
            s.off("data", on);
            r();
          }
        };
        s.on("data", on);
      });
      assert.match(text, /^HTTP\/1\.1 101 /);
      return s;
    };
    const idle = await open();
    const active = await open();
    let echoed = 0;
    active.on("data", (d: Buffer) => (echoed += d.length));
    const t0 = performance.now();
    const keepBusy = setInterval(() => active.write("p"), 100);
    await closed(idle);
    const took = performance.now() - t0;
    assert.ok(took >= 350 && took < 3000, `idle tunnel closed after ${Math.round(took)} ms`);
    // The active tunnel lives on: its 8th echo comes some 800 ms after it opened, twice tunnel_idle_ms.
    await eventually(() => echoed >= 8 || active.destroyed, 5000, "8 bytes echoed through the active tunnel");
    clearInterval(keepBusy);
    assert.equal(active.destroyed, false, "the active tunnel stays open");
    await closed(active);
    assert.equal(await counter(kf, "keyfence_limited_total", "tunnel_idle"), 2);
  });

  test("a WebSocket through the proxy is closed when idle too", async () => {
    const kf = await start({ tunnel_idle_ms: 300 });
    const ws = new WebSocket(`${kf.url.replace("http", "ws")}/ws`, { localAddress: ATTACKER });
    await once(ws, "open");
    const [code] = (await once(ws, "close")) as [number];
    assert.equal(code, 1006, "the connection is cut");
  });
});

describe("limits: 1,000 idle connections from one address in a process short of descriptors", () => {
  let up: SlowUpstream;
  let child: ReturnType<typeof spawn> | undefined;
  const sockets: Socket[] = [];
  before(async () => {
    up = await slowUpstream();
  });
  const cleanup: (() => void)[] = [];
  after(async () => {
    for (const s of sockets) s.destroy();
    child?.kill("SIGKILL");
    await up.close();
    for (const c of cleanup) c();
  });

  test("the other addresses are still answered within a second", async () => {
    // A directory with a keys file in it; the sidecar that wrote them stops (its listener would keep this file's process alive).
    const scratch = await startTestSidecar({ upstream: up.url, keys: [], admin: false });
    await scratch.stop({ keep: true });
    const dir = scratch.dir;
    cleanup.push(() => rmSync(dir, { recursive: true, force: true }));
    const config = join(dir, "limited.yaml");
    writeFileSync(
      config,
      stringify({
        listen: "127.0.0.1:0",
        upstream: up.url,
        keys: { file: "keys.yaml" },
        admin: { listen: "127.0.0.1:0" },
      }),
    );
    // 1,100 descriptors: without the per-peer cap, 1,200 idle connections exhaust them.
    child = spawn("sh", ["-c", `ulimit -n 1100 && exec "${process.execPath}" "${BIN}" serve --config "${config}"`], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    child.stdout?.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr?.on("data", (d: Buffer) => (out += d.toString()));
    await eventually(() => /"event":"listening"/.test(out), 20_000, "keyfence started");
    const m = /"proxy":"([^"]+)","admin":"([^"]+)"/.exec(out);
    const url = `http://${m?.[1] ?? ""}`;
    const admin = `http://${m?.[2] ?? ""}`;
    const attack = await rawMany(1200, url, ATTACKER, () => "");
    sockets.push(...attack);
    const refused = (): number => attack.filter((s) => s.destroyed || s.readableEnded).length;
    for (const s of attack) s.on("end", () => s.destroy());
    await eventually(() => refused() >= 200, 10_000, "200 connections over the cap closed");
    const times = await victim(`${url}/ok`, 20);
    assert.ok(Math.max(...times) < 1000, `victim answered in ${times.map(Math.round).join(", ")} ms`);
    assert.equal(refused(), 200, "the first 1,000 are held, the rest closed");
    const metrics = await send(`${admin}/metrics`);
    assert.match(metrics.body, /^keyfence_limited_total\{limit="connections_per_peer"\} 200$/m);
    assert.equal(out.split("\n").filter((l) => l.includes('"limit":"connections_per_peer"')).length, 1);
  });
});

/** A gauge's value from the sidecar's registry. */
async function gauge(kf: TestSidecar, name: string): Promise<number> {
  const text = await kf.sidecar.registry.getSingleMetricAsString(name);
  return Number(new RegExp(`^${name} (\\d+)$`, "m").exec(text)?.[1] ?? "NaN");
}

/** Polls a gauge until `check` holds. */
async function gaugeReaches(kf: TestSidecar, name: string, check: (v: number) => boolean, what: string): Promise<void> {
  let v = NaN;
  await eventually(async () => check((v = await gauge(kf, name))), 10_000, `${what} (${name} is ${v})`);
}

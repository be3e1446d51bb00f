/**
 * Upgrade requests (SPEC §4): a tunnel only after the upstream's 101; any
 * other answer is relayed and the connection ends, so later requests on it
 * never reach the upstream unchecked. Real sockets, real upstreams.
 */
import assert from "node:assert/strict";
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import { connect, type AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";
import { WebSocket } from "ws";
import { send } from "../helpers/http.js";
import { eventually, sidecarFixture, startTestSidecar, type TestKey, type TestSidecar } from "../helpers/sidecar.js";

const LOCAL: TestKey = { id: "k_local", secret: "s_local", allow: ["127.0.0.1"] };
const OFFICE: TestKey = { id: "k_office", secret: "s_office", allow: ["203.0.113.0/24"] };
const KEYS = [LOCAL, OFFICE];

/** A plain upstream without WebSocket support: `/ws/STATUS` answers STATUS on a kept-alive connection. */
async function plainUpstream(): Promise<{
  url: string;
  seen: Array<{ url: string; headers: IncomingHttpHeaders }>;
  server: Server;
}> {
  const seen: Array<{ url: string; headers: IncomingHttpHeaders }> = [];
  const server = createServer((req, res) => {
    seen.push({ url: req.url ?? "", headers: req.headers });
    const m = /^\/ws\/(\d{3})/.exec(req.url ?? "");
    const status = m ? Number(m[1]) : 200;
    const headers: Record<string, string> = { "content-type": "text/plain", "x-upstream": "plain" };
    if (status === 302) headers["location"] = "/elsewhere";
    if (status === 426) headers["upgrade"] = "h2c";
    res.writeHead(status, headers);
    res.end(`answer ${String(status)} to ${req.url ?? ""}`);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return { url: `http://127.0.0.1:${String((server.address() as AddressInfo).port)}`, seen, server };
}

interface Parsed {
  status: number;
  headers: Record<string, string>;
  body: string;
}

function parseOne(buf: string): { parsed: Parsed; rest: string } | undefined {
  const end = buf.indexOf("\r\n\r\n");
  if (end < 0) return undefined;
  const lines = buf.slice(0, end).split("\r\n");
  const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(lines[0] ?? "")?.[1] ?? 0);
  const headers: Record<string, string> = {};
  for (const l of lines.slice(1)) {
    const i = l.indexOf(":");
    headers[l.slice(0, i).toLowerCase()] = l.slice(i + 1).trim();
  }
  if (headers["transfer-encoding"] === "chunked") {
    let at = end + 4;
    let body = "";
    for (;;) {
      const eol = buf.indexOf("\r\n", at);
      if (eol < 0) return undefined;
      const size = parseInt(buf.slice(at, eol), 16);
      if (buf.length < eol + 2 + size + 2) return undefined;
      body += buf.slice(eol + 2, eol + 2 + size);
      at = eol + 2 + size + 2;
      if (size === 0) return { parsed: { status, headers, body }, rest: buf.slice(at) };
    }
  }
  const length = Number(headers["content-length"] ?? 0);
  if (buf.length < end + 4 + length) return undefined;
  return {
    parsed: { status, headers, body: buf.slice(end + 4, end + 4 + length) },
    rest: buf.slice(end + 4 + length),
  };
}

/**
 * Sends `first` on one connection, reads its answer, then sends `second` (or
 * sends both in one write when `pipelined`) and waits until a second answer
 * arrives or the connection closes.
 */
function exchange(
  port: number,
  first: string,
  second: string,
  pipelined = false,
): Promise<{ first: Parsed | undefined; second: Parsed | undefined; closed: boolean }> {
  return new Promise((resolve, reject) => {
    const s = connect(port, "127.0.0.1");
    let buf = "";
    let one: Parsed | undefined;
    let finished = false;
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error("no second answer and no close within 5 s"));
    }, 5000);
    const finish = (two: Parsed | undefined, closed: boolean): void => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      s.destroy();
      resolve({ first: one, second: two, closed });
    };
    s.on("connect", () => s.write(pipelined ? first + second : first));
    s.on("data", (d: Buffer) => {
      buf += d.toString("latin1");
      if (one === undefined) {
        const r = parseOne(buf);
        if (r === undefined) return;
        one = r.parsed;
        buf = r.rest;
        if (!pipelined) s.write(second, () => undefined);
      }
      const r2 = parseOne(buf);
      if (r2 !== undefined) finish(r2.parsed, false);
    });
    s.on("error", () => finish(undefined, true));
    s.on("close", () => finish(undefined, true));
  });
}

const upgradeRequest = (path: string, auth: string | undefined): string =>
  `GET ${path} HTTP/1.1\r\nHost: kf.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
  "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
  (auth === undefined ? "" : `Authorization: Bearer ${auth}\r\n`) +
  "\r\n";

describe("upgrades to an upstream that answers without switching protocols", () => {
  let up: Awaited<ReturnType<typeof plainUpstream>>;
  let kf: TestSidecar;
  before(async () => {
    up = await plainUpstream();
    kf = await startTestSidecar({ upstream: up.url, keys: KEYS, config: { access_log: true } });
  });
  after(async () => {
    await kf.stop();
    up.server.closeAllConnections();
    await new Promise<void>((r) => up.server.close(() => r()));
  });
  const port = (): number => Number(new URL(kf.url).port);

  const seconds: Array<[string, (path: string) => string]> = [
    ["a denied key", (p) => `GET ${p} HTTP/1.1\r\nHost: kf.test\r\nAuthorization: Bearer s_office\r\n\r\n`],
    [
      "a forged X-Forwarded-For with a denied key",
      (p) =>
        `GET ${p} HTTP/1.1\r\nHost: kf.test\r\nX-Forwarded-For: 203.0.113.9\r\nAuthorization: Bearer s_office\r\n\r\n`,
    ],
    [
      "no key and a forged X-Forwarded-For",
      (p) => `GET ${p} HTTP/1.1\r\nHost: kf.test\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n`,
    ],
  ];
  for (const status of [200, 302, 400, 426]) {
    for (const opener of ["s_local", undefined]) {
      for (const [what, second] of seconds) {
        for (const pipelined of [false, true]) {
          const desc = `${String(status)} to an upgrade ${opener === undefined ? "without a key" : "with an allowed key"}, then ${what}${pipelined ? " in the same write" : ""}: relayed, then never unchecked`;
          test(desc, async () => {
            const tag = `/second/${String(Math.random()).slice(2)}`;
            const r = await exchange(port(), upgradeRequest(`/ws/${String(status)}`, opener), second(tag), pipelined);
            assert.equal(r.first?.status, status);
            assert.equal(r.first?.body, `answer ${String(status)} to /ws/${String(status)}`);
            assert.equal(r.first?.headers["x-upstream"], "plain");
            assert.equal(r.first?.headers["connection"], "close");
            assert.match(r.first?.headers["x-request-id"] ?? "", /^[0-9a-f-]{36}$/);
            // Either keyfence decided the second request itself (and refused it) or the connection closed.
            if (r.second !== undefined) assert.notEqual(r.second.status, 200);
            assert.equal(
              up.seen.some((s) => s.url === tag),
              false,
              "the second request reached the upstream",
            );
          });
        }
      }
    }
  }

  test("a relayed upgrade answer is counted and logged like any request", async () => {
    const n = kf.logs.length;
    const r = await exchange(port(), upgradeRequest("/ws/302", "s_local"), "");
    assert.equal(r.first?.status, 302);
    await eventually(() => kf.logs.slice(n).some((l) => l["event"] === "access"), 3000, "the access line");
    const line = kf.logs.slice(n).find((l) => l["event"] === "access");
    assert.equal(line?.["status"], 302);
    assert.equal(line?.["key_id"], "k_local");
    assert.equal(line?.["request_id"], r.first?.headers["x-request-id"]);
  });
});

describe("upgrades to a WebSocket upstream and to the ping path", () => {
  const fx = sidecarFixture((up) => startTestSidecar({ upstream: up.url, keys: KEYS, config: { access_log: true } }));

  test("a real WebSocket keeps working after the 101, which carries X-Request-Id and is logged and counted", async () => {
    const before = await requestCount(fx.kf.adminUrl, "forwarded");
    const n = fx.kf.logs.length;
    const ws = new WebSocket(fx.kf.url.replace("http:", "ws:") + "/ws", {
      headers: { authorization: "Bearer s_local" },
    });
    let upgradeId = "";
    ws.on("upgrade", (res) => (upgradeId = String(res.headers["x-request-id"])));
    const messages: string[] = [];
    await new Promise<void>((resolve, reject) => {
      ws.on("message", (d: Buffer) => {
        messages.push(d.toString());
        if (messages.length < 3) ws.send(`echo ${String(messages.length)}`);
        else {
          ws.close();
          resolve();
        }
      });
      ws.on("error", reject);
    });
    assert.deepEqual(messages.slice(1), ["echo 1", "echo 2"]);
    assert.match(upgradeId, /^[0-9a-f-]{36}$/);
    const line = fx.kf.logs.slice(n).find((l) => l["event"] === "access");
    assert.equal(line?.["status"], 101);
    assert.equal(line?.["request_id"], upgradeId);
    assert.equal(await requestCount(fx.kf.adminUrl, "forwarded"), before + 1);
  });

  const pings: Array<[string, string | undefined, number, string]> = [
    ["no key", undefined, 401, "missing_api_key"],
    ["an unknown key", "nope", 401, "invalid_api_key"],
    ["a denied key", "s_office", 403, "ip_not_allowed"],
    ["an allowed key", "s_local", 200, "pong"],
  ];
  for (const [what, key, status, reason] of pings) {
    test(`an upgrade to the ping path with ${what} is answered like any ping (${String(status)})`, async () => {
      const n = fx.up.seen.length;
      const before = await requestCount(fx.kf.adminUrl, "answered");
      const r = await exchange(Number(new URL(fx.kf.url).port), upgradeRequest("/_keyfence/ping", key), "");
      assert.equal(r.first?.status, status);
      assert.equal(r.first?.headers["x-keyfence-reason"], reason);
      assert.match(r.first?.headers["x-request-id"] ?? "", /^[0-9a-f-]{36}$/);
      assert.equal(fx.up.seen.length, n);
      assert.equal(await requestCount(fx.kf.adminUrl, "answered"), before + 1);
    });
  }
});

/** keyfence_request_duration_seconds_count{outcome} from /metrics. */
/** Connects, writes `bytes`, and after `ms` resets the connection (RST, not FIN) before or while keyfence answers. */
async function resetAfter(port: number, bytes: string, ms: number): Promise<void> {
  const s = connect(port, "127.0.0.1");
  s.on("error", () => undefined);
  await new Promise<void>((r) => s.once("connect", () => r()));
  s.write(bytes);
  if (ms > 0) await new Promise((r) => setTimeout(r, ms));
  s.resetAndDestroy();
  await new Promise((r) => s.once("close", r));
}

describe("clients that reset their connection after an upgrade request", () => {
  const fx = sidecarFixture((up) => startTestSidecar({ upstream: up.url, keys: KEYS }));

  const cases: Array<[string, string, string | undefined]> = [
    ["the ping path with no key", "/_keyfence/ping", undefined],
    ["the ping path with an allowed key", "/_keyfence/ping", "s_local"],
    ["an unknown key", "/ws", "nope"],
    ["a key denied from this address", "/ws", "s_office"],
    ["an allowed key, to a WebSocket upstream", "/ws", "s_local"],
  ];
  for (const [what, path, key] of cases) {
    test(`${what}: the connection is dropped and keyfence keeps serving`, async () => {
      const port = Number(new URL(fx.kf.url).port);
      // At once, while the answer is written, and after it: each a read or a write that fails on a reset socket.
      for (const ms of [0, 1, 5, 20, 50, 200]) await resetAfter(port, upgradeRequest(path, key), ms);
      await new Promise((r) => setTimeout(r, 50));
      const r = await send(`${fx.kf.url}/_keyfence/ping`, { headers: [["Authorization", "Bearer s_local"]] });
      assert.equal(r.status, 200);
    });
  }
});

async function requestCount(adminUrl: string, outcome: string): Promise<number> {
  const body = (await send(`${adminUrl}/metrics`)).body;
  const m = new RegExp(`^keyfence_request_duration_seconds_count\\{outcome="${outcome}"\\} (\\d+)`, "m").exec(body);
  return Number(m?.[1] ?? 0);
}

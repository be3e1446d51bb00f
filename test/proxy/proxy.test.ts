/** SPEC §4 over real sockets: a real upstream, a real sidecar, real HTTP. */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { request as httpRequest } from "node:http";
import { connect } from "node:net";
import { after, before, describe, test } from "node:test";
import { WebSocket } from "ws";
import { bearer, send } from "../helpers/http.js";
import { eventually, sidecarFixture, startTestSidecar, type TestKey } from "../helpers/sidecar.js";
import { startUpstream, UTF8_HEADER, type Upstream } from "../helpers/upstream.js";

const LOCAL: TestKey = { id: "k_local", secret: "s_local", allow: ["127.0.0.1"] };
const OFFICE: TestKey = { id: "k_office", secret: "s_office", allow: ["203.0.113.0/24", "2001:db8::/32"] };
const OPEN: TestKey = { id: "k_open", secret: "s_open", allow: [] };
const REPORT: TestKey = { id: "k_report", secret: "s_report", allow: ["203.0.113.0/24"], mode: "report" };
const KEYS = [LOCAL, OFFICE, OPEN, REPORT];

const DENIED_LOCAL = '{"message":"source IP 127.0.0.1 is not allowed for this API key"}';

describe("proxy: no trusted proxies", () => {
  const fx = sidecarFixture((up) => startTestSidecar({ upstream: up.url, keys: KEYS }));

  test("allowed request is forwarded unchanged, with forwarding headers", async () => {
    const n = fx.up.seen.length;
    const r = await send(`${fx.kf.url}/v1/messages?to=a%20b&x=1`, {
      method: "POST",
      headers: [
        bearer("s_local"),
        ["Content-Type", "text/plain"],
        ["X-Custom", "one"],
        ["X-Custom", "two"],
        ["X-Forwarded-For", "6.6.6.6"],
        ["X-Forwarded-Proto", "https"],
        ["X-Forwarded-Host", "evil.example"],
        ["Connection", "keep-alive, X-Secret-Hop"],
        ["X-Secret-Hop", "hop"],
        ["Keep-Alive", "timeout=5"],
        ["Proxy-Authorization", "Basic abc"],
        ["X-Bytes", UTF8_HEADER],
      ],
      // A Buffer: a string body makes Node's client write the header block as UTF-8.
      body: Buffer.from("hello upstream"),
    });
    assert.equal(r.status, 200);
    assert.equal(fx.up.seen.length, n + 1);
    const s = fx.up.seen[n]!;
    assert.equal(s.method, "POST");
    assert.equal(s.url, "/v1/messages?to=a%20b&x=1");
    assert.equal(s.headers.authorization, "Bearer s_local", "the checked key travels on");
    assert.equal(s.headers["x-custom"], "one, two");
    assert.equal(s.headers["content-type"], "text/plain");
    assert.equal(s.headers["x-forwarded-for"], "6.6.6.6, 127.0.0.1", "XFF extended by the socket address");
    assert.equal(s.headers["x-forwarded-proto"], "http", "overwritten: the peer is not a trusted proxy");
    assert.equal(s.headers["x-forwarded-host"], new URL(fx.kf.url).host);
    assert.equal(s.headers["x-secret-hop"], undefined, "headers named in Connection are hop-by-hop");
    assert.equal(s.headers["keep-alive"], undefined);
    assert.equal(s.headers["proxy-authorization"], undefined);
    assert.equal(s.bodyBytes, Buffer.byteLength("hello upstream"));
    assert.equal(s.headers["x-bytes"], UTF8_HEADER, "raw header bytes travel up unchanged");
    // The response comes back with its headers, minus hop-by-hop ones.
    assert.deepEqual(r.rawHeaders.filter((_, i, a) => i % 2 === 0 && a[i]?.toLowerCase() === "set-cookie").length, 2);
    assert.equal(r.headers["x-upstream"], "yes");
    assert.equal(r.headers["x-bytes"], UTF8_HEADER, "raw header bytes come back unchanged");
    assert.equal(r.headers["x-hop"], undefined);
    assert.equal(r.headers["x-keyfence-reason"], undefined, "forwarded answers carry no keyfence reason");
  });

  test("X-Forwarded-* spelled with `_` or `.` never reaches the upstream (CGI, WSGI, PHP and Rack read it as the real one)", async () => {
    const n = fx.up.seen.length;
    const r = await send(`${fx.kf.url}/x`, {
      headers: [
        bearer("s_local"),
        ["X_Forwarded_For", "203.0.113.4"],
        ["x_forwarded_proto", "https"],
        ["X-Forwarded_Host", "evil.example"],
        ["X_FORWARDED-HOST", "evil.example"],
        // PHP reads `.` in a name as `_` too
        ["X.Forwarded.For", "203.0.113.4"],
        ["x-forwarded.proto", "https"],
      ],
    });
    assert.equal(r.status, 200);
    const s = fx.up.seen[n]!;
    const names = s.rawHeaders.filter((_, i) => i % 2 === 0).map((h) => h.toLowerCase());
    assert.deepEqual(
      names.filter((h) => /^x[-_.]forwarded[-_.]/.test(h)),
      ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"],
      "only keyfence's own spellings",
    );
    assert.equal(s.headers["x-forwarded-for"], "127.0.0.1");
    assert.equal(s.headers["x-forwarded-proto"], "http");
  });

  test("an untrusted client cannot name its address to the upstream in Forwarded, X-Real-IP and the like", async () => {
    const n = fx.up.seen.length;
    const spoofs: Array<[string, string]> = [
      ["Forwarded", "for=203.0.113.4;proto=https;host=evil.example"],
      ["X-Real-IP", "203.0.113.4"],
      ["X_Real_IP", "203.0.113.4"],
      ["X.Real.IP", "203.0.113.4"],
      ["True-Client-IP", "203.0.113.4"],
      ["X-Client-IP", "203.0.113.4"],
      ["Client-IP", "203.0.113.4"],
      ["X-Cluster-Client-IP", "203.0.113.4"],
      ["CF-Connecting-IP", "203.0.113.4"],
      ["Fastly-Client-IP", "203.0.113.4"],
    ];
    const r = await send(`${fx.kf.url}/x`, { headers: [bearer("s_local"), ...spoofs, ["X-Other", "203.0.113.4"]] });
    assert.equal(r.status, 200);
    const s = fx.up.seen[n]!;
    const values = s.rawHeaders.filter((_, i) => i % 2 === 1);
    assert.deepEqual(
      s.rawHeaders.filter((v, i) => i % 2 === 0 && values[(i / 2) | 0]?.includes("203.0.113.4")),
      ["X-Other"],
      "only the unrelated header keeps the client's claim",
    );
  });

  test("denied: 403, exact body, JSON, reason header, nothing reaches the upstream", async () => {
    const n = fx.up.seen.length;
    for (const method of ["GET", "POST", "DELETE"]) {
      const r = await send(`${fx.kf.url}/v1/messages`, {
        method,
        headers: [bearer("s_office")],
        body: method === "POST" ? "x" : undefined,
      });
      assert.equal(r.status, 403);
      assert.equal(r.body, DENIED_LOCAL);
      assert.equal(r.headers["content-type"], "application/json");
      assert.equal(r.headers["x-keyfence-reason"], "ip_not_allowed");
    }
    assert.equal(fx.up.seen.length, n);
    const line = fx.kf.logs.find((l) => l["event"] === "denied" && l["key_id"] === "k_office");
    assert.ok(line, "a denial is logged");
    assert.equal(line["client_ip"], "127.0.0.1");
    assert.equal(line["level"], 40);
  });

  test("a key with an empty list works from anywhere", async () => {
    const r = await send(`${fx.kf.url}/x`, { headers: [bearer("s_open")], localAddress: "127.0.0.2" });
    assert.equal(r.status, 200);
  });

  test("a second loopback address is another client", async () => {
    const r = await send(`${fx.kf.url}/x`, { headers: [bearer("s_local")], localAddress: "127.0.0.2" });
    assert.equal(r.status, 403);
    assert.equal(r.body, '{"message":"source IP 127.0.0.2 is not allowed for this API key"}');
  });

  test("spoofed X-Forwarded-For from an untrusted peer changes nothing", async () => {
    const r = await send(`${fx.kf.url}/x`, { headers: [bearer("s_office"), ["X-Forwarded-For", "203.0.113.4"]] });
    assert.equal(r.status, 403);
    assert.equal(r.body, DENIED_LOCAL);
  });

  test("scheme is case-insensitive", async () => {
    const r = await send(`${fx.kf.url}/x`, { headers: [["Authorization", "bearer s_office"]] });
    assert.equal(r.status, 403);
  });

  test("unknown and missing keys are forwarded by default", async () => {
    const n = fx.up.seen.length;
    assert.equal((await send(`${fx.kf.url}/x`, { headers: [bearer("nope")] })).status, 200);
    assert.equal((await send(`${fx.kf.url}/x`)).status, 200);
    assert.equal(
      (await send(`${fx.kf.url}/x`, { headers: [["Authorization", "Basic dTpw"]] })).status,
      200,
      "another scheme is no key",
    );
    assert.equal(fx.up.seen.length, n + 3);
  });

  test("several Authorization headers: 400, never forwarded", async () => {
    const n = fx.up.seen.length;
    for (const pair of [
      [bearer("s_open"), bearer("s_office")],
      [bearer("s_open"), bearer("s_open")],
      [bearer("s_open"), ["authorization", "Basic x"] as [string, string]],
    ]) {
      const r = await send(`${fx.kf.url}/x`, { headers: pair });
      assert.equal(r.status, 400);
      assert.equal(r.body, '{"message":"multiple Authorization headers"}');
      assert.equal(r.headers["x-keyfence-reason"], "multiple_authorization");
    }
    assert.equal(fx.up.seen.length, n);
  });

  test("malformed Bearer values: 400", async () => {
    for (const value of ["Bearer", "Bearer  ", "Bearer a b", "Bearer a,b"]) {
      const r = await send(`${fx.kf.url}/x`, { headers: [["Authorization", value]] });
      assert.equal(r.status, 400, value);
      assert.equal(r.body, '{"message":"malformed Authorization header"}');
      assert.equal(r.headers["x-keyfence-reason"], "malformed_authorization");
    }
  });

  test("ping: allowed, denied, unknown, missing; any method; query ignored; never forwarded", async () => {
    const n = fx.up.seen.length;
    const ok = await send(`${fx.kf.url}/_keyfence/ping?x=1`, { method: "POST", headers: [bearer("s_local")] });
    assert.equal(ok.status, 200);
    assert.equal(ok.body, '{"message":"pong"}');
    assert.equal(ok.headers["x-keyfence-reason"], "pong");
    const denied = await send(`${fx.kf.url}/_keyfence/ping`, { headers: [bearer("s_office")] });
    assert.equal(denied.status, 403);
    assert.equal(denied.body, DENIED_LOCAL);
    const unknown = await send(`${fx.kf.url}/_keyfence/ping`, { method: "DELETE", headers: [bearer("who")] });
    assert.equal(unknown.status, 401);
    assert.equal(unknown.body, '{"message":"invalid API key"}');
    assert.equal(unknown.headers["x-keyfence-reason"], "invalid_api_key");
    const missing = await send(`${fx.kf.url}/_keyfence/ping`);
    assert.equal(missing.status, 401);
    assert.equal(missing.body, '{"message":"missing API key"}');
    assert.equal(missing.headers["x-keyfence-reason"], "missing_api_key");
    const report = await send(`${fx.kf.url}/_keyfence/ping`, { headers: [bearer("s_report")] });
    assert.equal(report.status, 200);
    const body = report.json() as { message: string; would_deny: { message: string } };
    assert.equal(body.message, "pong");
    assert.equal(body.would_deny.message, "source IP 127.0.0.1 is not allowed for this API key");
    assert.equal(fx.up.seen.length, n);
  });

  test("per-key report mode forwards and logs the would-be denial", async () => {
    const n = fx.up.seen.length;
    const r = await send(`${fx.kf.url}/x`, { headers: [bearer("s_report")] });
    assert.equal(r.status, 200);
    assert.equal(fx.up.seen.length, n + 1);
    assert.ok(fx.kf.logs.some((l) => l["event"] === "would_deny" && l["key_id"] === "k_report"));
  });

  test("the public port never answers admin routes", async () => {
    const n = fx.up.seen.length;
    const r = await send(`${fx.kf.url}/healthz`);
    assert.equal(r.status, 200);
    assert.equal(fx.up.seen.length, n + 1, "forwarded like any path");
    assert.equal(fx.up.seen[n]?.url, "/healthz");
  });

  test("streams a multi-megabyte body both ways", async () => {
    const size = 8 * 1024 * 1024;
    const n = fx.up.seen.length;
    const digest = createHash("sha256");
    const sent = await new Promise<number>((resolve, reject) => {
      const u = new URL(fx.kf.url);
      const req = httpRequest(
        {
          host: u.hostname,
          port: u.port,
          method: "PUT",
          path: "/upload",
          headers: { authorization: "Bearer s_local", "transfer-encoding": "chunked" },
        },
        (res) => {
          res.resume();
          res.on("end", () => resolve(res.statusCode ?? 0));
        },
      );
      req.on("error", reject);
      const chunk = Buffer.alloc(256 * 1024, 7);
      let left = size;
      const pump = (): void => {
        while (left > 0) {
          left -= chunk.length;
          digest.update(chunk);
          if (!req.write(chunk)) {
            req.once("drain", pump);
            return;
          }
        }
        req.end();
      };
      pump();
    });
    assert.equal(sent, 200);
    assert.equal(fx.up.seen[n]?.bodyBytes, size);
    assert.equal(fx.up.seen[n]?.bodySha256, digest.digest("hex"));

    const down = await new Promise<number>((resolve, reject) => {
      const u = new URL(fx.kf.url);
      httpRequest(
        { host: u.hostname, port: u.port, path: `/download/${3 * size}`, headers: { authorization: "Bearer s_local" } },
        (res) => {
          let bytes = 0;
          res.on("data", (c: Buffer) => (bytes += c.length));
          res.on("end", () => resolve(bytes));
        },
      )
        .on("error", reject)
        .end();
    });
    assert.equal(down, 3 * size);
  });

  test("a client that goes away aborts the upstream request", async () => {
    const u = new URL(fx.kf.url);
    const req = httpRequest({
      host: u.hostname,
      port: u.port,
      path: "/hang/1",
      headers: { authorization: "Bearer s_local" },
    });
    req.on("error", () => {});
    req.end();
    await eventually(() => fx.up.seen.some((s) => s.url === "/hang/1"), 3000, "request reaches upstream");
    req.destroy();
    await eventually(() => fx.up.aborted.includes("/hang/1"), 3000, "upstream sees the abort");
  });

  test("malformed HTTP gets a 400 and the process stays up", async () => {
    const answer = await new Promise<string>((resolve) => {
      const s = connect(Number(new URL(fx.kf.url).port), "127.0.0.1", () => s.write("GARBAGE\r\n\r\n"));
      let data = "";
      s.on("data", (d) => (data += d.toString()));
      s.on("close", () => resolve(data));
    });
    assert.match(answer, /^HTTP\/1\.1 400 /);
    assert.match(answer, /x-keyfence-reason: bad_request/i);
    const huge = await new Promise<string>((resolve) => {
      const s = connect(Number(new URL(fx.kf.url).port), "127.0.0.1", () =>
        s.write(`GET / HTTP/1.1\r\nHost: x\r\nX-Big: ${"a".repeat(20000)}\r\n\r\n`),
      );
      let data = "";
      s.on("data", (d) => (data += d.toString()));
      s.on("close", () => resolve(data));
      s.on("error", () => resolve(data));
    });
    assert.match(huge, /^HTTP\/1\.1 431 /);
    assert.equal((await send(`${fx.kf.url}/_keyfence/ping`, { headers: [bearer("s_local")] })).status, 200);
  });

  test("WebSocket upgrade: allowed key is piped through, refused key gets the 403", async () => {
    const wsUrl = fx.kf.url.replace("http:", "ws:") + "/ws";
    const ws = new WebSocket(wsUrl, { headers: { authorization: "Bearer s_local" } });
    const messages: string[] = [];
    await new Promise<void>((resolve, reject) => {
      ws.on("message", (d: Buffer) => {
        messages.push(d.toString());
        if (messages.length === 1) ws.send("echo me");
        else {
          ws.close();
          resolve();
        }
      });
      ws.on("error", reject);
    });
    assert.equal((JSON.parse(messages[0]!) as { xff: string }).xff, "127.0.0.1");
    assert.equal(messages[1], "echo me");

    const refused = new WebSocket(wsUrl, { headers: { authorization: "Bearer s_office" } });
    const status = await new Promise<{ code: number; body: string; reason: string }>((resolve) => {
      refused.on("unexpected-response", (_req, res) => {
        let body = "";
        res.on("data", (c: Buffer) => (body += c.toString()));
        res.on("end", () =>
          resolve({ code: res.statusCode ?? 0, body, reason: String(res.headers["x-keyfence-reason"]) }),
        );
      });
      refused.on("error", () => {});
    });
    assert.deepEqual(status, { code: 403, body: DENIED_LOCAL, reason: "ip_not_allowed" });
  });

  test("metrics count each decision", async () => {
    const before = await decisions(fx.kf.adminUrl);
    await send(`${fx.kf.url}/x`, { headers: [bearer("s_local")] });
    await send(`${fx.kf.url}/x`, { headers: [bearer("s_office")] });
    await send(`${fx.kf.url}/x`, { headers: [bearer("s_report")] });
    await send(`${fx.kf.url}/x`, { headers: [bearer("unknown")] });
    await send(`${fx.kf.url}/x`);
    await send(`${fx.kf.url}/x`, { headers: [bearer("a"), bearer("b")] });
    const afterCounts = await decisions(fx.kf.adminUrl);
    const delta = (k: string): number => (afterCounts[k] ?? 0) - (before[k] ?? 0);
    assert.deepEqual(
      ["allowed", "denied", "would_deny", "unknown_key", "missing_key", "bad_request", "invalid_client_ip"].map(delta),
      [1, 1, 1, 1, 1, 1, 0],
    );
  });
});

/** Reads keyfence_decisions_total by decision from /metrics. */
export async function decisions(adminUrl: string): Promise<Record<string, number>> {
  const r = await send(`${adminUrl}/metrics`);
  const out: Record<string, number> = {};
  for (const m of r.body.matchAll(/^keyfence_decisions_total\{decision="(\w+)"\} (\d+)/gm)) out[m[1]!] = Number(m[2]);
  return out;
}

describe("proxy: behind trusted proxies", () => {
  const fx = sidecarFixture((up) =>
    startTestSidecar({ upstream: up.url, keys: KEYS, config: { trusted_proxies: ["127.0.0.1"] } }),
  );

  test("client IP from X-Forwarded-For through a trusted peer", async () => {
    const r = await send(`${fx.kf.url}/x`, {
      headers: [bearer("s_office"), ["X-Forwarded-For", "6.6.6.6, 203.0.113.4"]],
    });
    assert.equal(r.status, 200);
    const s = fx.up.seen.at(-1)!;
    assert.equal(s.headers["x-forwarded-for"], "6.6.6.6, 203.0.113.4, 127.0.0.1");
  });

  test("repeated X-Forwarded-For lines are one list", async () => {
    const r = await send(`${fx.kf.url}/x`, {
      headers: [bearer("s_office"), ["X-Forwarded-For", "6.6.6.6"], ["X-Forwarded-For", "203.0.113.4"]],
    });
    assert.equal(r.status, 200);
    const spoof = await send(`${fx.kf.url}/x`, {
      headers: [bearer("s_office"), ["X-Forwarded-For", "203.0.113.4"], ["X-Forwarded-For", "6.6.6.6"]],
    });
    assert.equal(spoof.status, 403);
    assert.equal(spoof.body, '{"message":"source IP 6.6.6.6 is not allowed for this API key"}');
  });

  test("an untrusted peer (127.0.0.2) cannot choose its IP", async () => {
    const r = await send(`${fx.kf.url}/x`, {
      headers: [bearer("s_office"), ["X-Forwarded-For", "203.0.113.4"]],
      localAddress: "127.0.0.2",
    });
    assert.equal(r.status, 403);
    assert.equal(r.body, '{"message":"source IP 127.0.0.2 is not allowed for this API key"}');
  });

  test("X-Forwarded-Proto/-Host kept from a trusted peer, overwritten from an untrusted one", async () => {
    await send(`${fx.kf.url}/x`, {
      headers: [bearer("s_open"), ["X-Forwarded-Proto", "https"], ["X-Forwarded-Host", "api.example"]],
    });
    assert.equal(fx.up.seen.at(-1)?.headers["x-forwarded-proto"], "https");
    assert.equal(fx.up.seen.at(-1)?.headers["x-forwarded-host"], "api.example");
    await send(`${fx.kf.url}/x`, {
      headers: [bearer("s_open"), ["X-Forwarded-Proto", "https"], ["X-Forwarded-Host", "api.example"]],
      localAddress: "127.0.0.2",
    });
    assert.equal(fx.up.seen.at(-1)?.headers["x-forwarded-proto"], "http");
    assert.equal(fx.up.seen.at(-1)?.headers["x-forwarded-host"], new URL(fx.kf.url).host);
  });

  test("Forwarded and X-Real-IP kept from a trusted peer, dropped from an untrusted one", async () => {
    const claims: Array<[string, string]> = [
      ["Forwarded", "for=198.51.100.7"],
      ["X-Real-IP", "198.51.100.7"],
    ];
    await send(`${fx.kf.url}/x`, { headers: [bearer("s_open"), ...claims] });
    assert.equal(fx.up.seen.at(-1)?.headers["forwarded"], "for=198.51.100.7");
    assert.equal(fx.up.seen.at(-1)?.headers["x-real-ip"], "198.51.100.7");
    await send(`${fx.kf.url}/x`, { headers: [bearer("s_open"), ...claims], localAddress: "127.0.0.2" });
    assert.equal(fx.up.seen.at(-1)?.headers["forwarded"], undefined);
    assert.equal(fx.up.seen.at(-1)?.headers["x-real-ip"], undefined);
  });

  test("denial names the canonical client IP (IPv6, mapped)", async () => {
    const v6 = await send(`${fx.kf.url}/x`, {
      headers: [bearer("s_local"), ["X-Forwarded-For", "2001:DB8:0:0::0001"]],
    });
    assert.equal(v6.body, '{"message":"source IP 2001:db8::1 is not allowed for this API key"}');
    const mapped = await send(`${fx.kf.url}/x`, {
      headers: [bearer("s_local"), ["X-Forwarded-For", "::ffff:198.51.100.9"]],
    });
    assert.equal(mapped.body, '{"message":"source IP 198.51.100.9 is not allowed for this API key"}');
    const allowedMapped = await send(`${fx.kf.url}/x`, {
      headers: [bearer("s_office"), ["X-Forwarded-For", "::ffff:203.0.113.200"]],
    });
    assert.equal(allowedMapped.status, 200);
  });

  test("an unparseable client address: 400 for a restricted key, never forwarded", async () => {
    const n = fx.up.seen.length;
    for (const xff of ["0177.0.0.1", "127.1", "1.2.3.4:80", "garbage", "[::1]"]) {
      const r = await send(`${fx.kf.url}/x`, { headers: [bearer("s_office"), ["X-Forwarded-For", xff]] });
      assert.equal(r.status, 400, xff);
      assert.equal(r.body, '{"message":"client IP address could not be determined"}');
      assert.equal(r.headers["x-keyfence-reason"], "invalid_client_ip");
    }
    assert.equal(fx.up.seen.length, n);
    const open = await send(`${fx.kf.url}/x`, { headers: [bearer("s_open"), ["X-Forwarded-For", "garbage"]] });
    assert.equal(open.status, 200, "no list, no restriction");
    const report = await send(`${fx.kf.url}/x`, { headers: [bearer("s_report"), ["X-Forwarded-For", "garbage"]] });
    assert.equal(report.status, 200, "report mode forwards");
  });
});

describe("proxy: reject modes, upstream failures, prefix, reload", () => {
  let up: Upstream;
  before(async () => {
    up = await startUpstream();
  });
  after(async () => {
    await up.close();
  });

  test("unknown: reject and missing: reject give 401", async () => {
    const kf = await startTestSidecar({
      upstream: up.url,
      keys: KEYS,
      keysConfig: { unknown: "reject", missing: "reject" },
    });
    try {
      const n = up.seen.length;
      const unknown = await send(`${kf.url}/x`, { headers: [bearer("nope")] });
      assert.equal(unknown.status, 401);
      assert.equal(unknown.body, '{"message":"invalid API key"}');
      assert.equal(unknown.headers["x-keyfence-reason"], "invalid_api_key");
      const missing = await send(`${kf.url}/x`, { headers: [["Authorization", "Basic x"]] });
      assert.equal(missing.status, 401);
      assert.equal(missing.body, '{"message":"missing API key"}');
      assert.equal(missing.headers["x-keyfence-reason"], "missing_api_key");
      assert.equal(up.seen.length, n);
    } finally {
      await kf.stop();
    }
  });

  test("global report mode forwards would-be denials; a key's enforce overrides it", async () => {
    const strictKey: TestKey = { id: "k_strict", secret: "s_strict", allow: ["203.0.113.0/24"], mode: "enforce" };
    const kf = await startTestSidecar({ upstream: up.url, keys: [...KEYS, strictKey], config: { mode: "report" } });
    try {
      assert.equal((await send(`${kf.url}/x`, { headers: [bearer("s_office")] })).status, 200);
      assert.equal((await send(`${kf.url}/x`, { headers: [bearer("s_strict")] })).status, 403);
      assert.equal(
        (await send(`${kf.url}/x`, { headers: [bearer("a"), bearer("b")] })).status,
        400,
        "report never forwards a second key",
      );
    } finally {
      await kf.stop();
    }
  });

  test("upstream down: 502; too slow: 504; keyfence stays up", async () => {
    const dead = await startUpstream();
    const deadUrl = dead.url;
    await dead.close();
    const kf = await startTestSidecar({ upstream: deadUrl, keys: KEYS });
    try {
      const r = await send(`${kf.url}/x`, { headers: [bearer("s_local")] });
      assert.equal(r.status, 502);
      assert.equal(r.body, '{"message":"upstream unavailable"}');
      assert.equal(r.headers["x-keyfence-reason"], "upstream_unavailable");
    } finally {
      await kf.stop();
    }
    const slow = await startTestSidecar({ upstream: up.url, keys: KEYS, config: { upstream_timeout_ms: 300 } });
    try {
      const r = await send(`${slow.url}/slow/1500`, { headers: [bearer("s_local")] });
      assert.equal(r.status, 504);
      assert.equal(r.body, '{"message":"upstream timed out"}');
      assert.equal(r.headers["x-keyfence-reason"], "upstream_timeout");
      assert.equal((await send(`${slow.url}/slow/10`, { headers: [bearer("s_local")] })).status, 200);
      const m = await send(`${slow.adminUrl}/metrics`);
      assert.match(m.body, /keyfence_upstream_errors_total\{kind="timeout"\} 1/);
    } finally {
      await slow.stop();
    }
  });

  test("a path in upstream prefixes the request path", async () => {
    const kf = await startTestSidecar({ upstream: `${up.url}/base/`, keys: KEYS });
    try {
      await send(`${kf.url}/v1/x?y=1`, { headers: [bearer("s_local")] });
      assert.equal(up.seen.at(-1)?.url, "/base/v1/x?y=1");
    } finally {
      await kf.stop();
    }
  });

  test("hot reload: a good edit applies within a second, a bad one keeps the last good list", async () => {
    const kf = await startTestSidecar({ upstream: up.url, keys: KEYS });
    try {
      const ping = async (secret: string): Promise<number> =>
        (await send(`${kf.url}/_keyfence/ping`, { headers: [bearer(secret)] })).status;
      assert.equal(await ping("s_office"), 403);
      const started = Date.now();
      kf.writeKeys([LOCAL, { ...OFFICE, allow: ["127.0.0.0/8"] }]);
      await eventually(async () => (await ping("s_office")) === 200, 1500, "reload");
      assert.ok(Date.now() - started < 1000, `reload took ${Date.now() - started} ms`);
      assert.ok(kf.logs.some((l) => l["event"] === "store_reloaded"));

      kf.writeKeys("keys:\n  - id: k_office\n    secret_sha256: nothex\n    ip_allow_list: [10.0.0.300]\n");
      await eventually(() => kf.logs.some((l) => l["event"] === "store_reload_failed"), 1500, "reload failure logged");
      const lines = kf.logs.filter((l) => l["event"] === "store_reload_failed").map((l) => String(l["msg"]));
      assert.ok(
        lines.some((m) => /keys\.yaml:4:\d+: keys\[0\]\.ip_allow_list\[0\] \("10\.0\.0\.300"\)/.test(m)),
        lines.join("\n"),
      );
      assert.equal(await ping("s_office"), 200, "the last good version keeps serving");
      assert.equal(await ping("s_local"), 200);
      const m = await send(`${kf.adminUrl}/metrics`);
      assert.match(m.body, /keyfence_store_reloads_total\{result="failure"\} [1-9]/);

      kf.writeKeys([OPEN]);
      await eventually(async () => (await ping("s_local")) === 401, 1500, "key removal");
      assert.equal(await ping("s_open"), 200);
    } finally {
      await kf.stop();
    }
  });
});

/**
 * SPEC §9 over real sockets: scopes by route (proxy, upgrades, decision
 * endpoint), the `<ping_path>/ip` echo, sandbox keys, and the identity sent
 * upstream (client-sent X-Keyfence-* never passes).
 */
import assert from "node:assert/strict";
import { connect } from "node:net";
import { after, before, describe, test } from "node:test";
import WebSocket from "ws";
import { bearer, send } from "../helpers/http.js";
import { eventually, sidecarFixture, startTestSidecar, type TestSidecar, type TestKey } from "../helpers/sidecar.js";
import { startUpstream, type Upstream } from "../helpers/upstream.js";

const PLAIN: TestKey = { id: "k_plain", secret: "s_plain", allow: ["127.0.0.1"] };
const SENDER: TestKey = {
  id: "k_sender",
  secret: "s_sender",
  allow: ["127.0.0.1"],
  scopes: ["messages:send", "exact:read"],
};
const REPORT: TestKey = { id: "k_report", secret: "s_report", allow: ["127.0.0.1"], mode: "report" };
const ELSEWHERE: TestKey = { id: "k_elsewhere", secret: "s_elsewhere", allow: ["203.0.113.0/24"] };
const SANDBOX: TestKey = { id: "k_sandbox", secret: "s_sandbox", scopes: ["messages:send"], sandbox: true };

const ROUTES = [
  { methods: ["POST"], path: "/v2/messages/*", scope: "messages:send" },
  { path: "/v2/exact", scope: "exact:read" },
  { methods: ["GET"], path: "/v2/reports/*", scope: "reports:read" },
];

/** A raw HTTP/1.1 exchange: the request text as written, the status, headers and body of the answer. */
async function raw(url: string, request: string): Promise<{ status: number; head: string; body: string }> {
  const u = new URL(url);
  const sock = connect(Number(u.port), u.hostname);
  sock.write(request);
  const chunks: Buffer[] = [];
  await new Promise<void>((resolve, reject) => {
    sock.on("data", (c: Buffer) => chunks.push(c));
    sock.on("end", () => resolve());
    sock.on("close", () => resolve());
    sock.on("error", reject);
  });
  const text = Buffer.concat(chunks).toString("latin1");
  const split = text.indexOf("\r\n\r\n");
  const head = text.slice(0, split);
  return { status: Number(head.slice(9, 12)), head, body: text.slice(split + 4) };
}

const req = (method: string, target: string, token: string | undefined, extra = ""): string =>
  `${method} ${target} HTTP/1.1\r\nHost: x\r\n${token ? `Authorization: Bearer ${token}\r\n` : ""}${extra}Connection: close\r\n\r\n`;

const LACKS = (scope: string): string => JSON.stringify({ message: `API key lacks scope ${scope}` });

describe("route_scopes through the proxy", () => {
  const f = sidecarFixture((up) =>
    startTestSidecar({
      upstream: up.url,
      keys: [PLAIN, SENDER, REPORT, ELSEWHERE],
      config: { route_scopes: ROUTES },
    }),
  );

  // [method, target, expected status for PLAIN (no scopes)]; SENDER gets through wherever PLAIN gets 403.
  const table: Array<[string, string, number]> = [
    ["POST", "/v2/messages/send", 403],
    ["POST", "/v2/messages", 403],
    ["POST", "/v2/messages/", 403],
    ["POST", "/V2/MESSAGES/send", 403],
    ["POST", "/v2/mess%61ges/send", 403],
    ["POST", "/v2/%6dessages", 403],
    ["POST", "/v2//messages/send", 403],
    ["POST", "/v2/messages;jsessionid=1/send", 403],
    ["POST", "/v2/messages%3Bx/send", 403],
    ["POST", "/v2/messages/send?x=1", 403],
    ["POST", "http://upstream.example/v2/messages/send", 403],
    ["POST", "HTTP://x/v2/x/../messages/send", 403],
    ["POST", "http://x/v2/%2e%2e/v2/messages/send", 403],
    ["GET", "/v2/exact", 403],
    ["DELETE", "/v2/exact/", 403],
    ["PUT", "/v2/Exact;a", 403],
    ["GET", "/v2/reports/1", 403],
    ["POST", "/v2/messages.json", 403],
    ["GET", "/v2/exact.xml", 403],
    ["HEAD", "/v2/reports/1", 403],
    ["GET", "/v2/messages/send", 200],
    ["POST", "/v2/messagesX", 200],
    ["POST", "/v2/exact/below", 200],
    ["POST", "/v2/reports/1", 200],
    ["POST", "/other", 200],
    // ambiguous: refused for every key
    ["POST", "/v2/x/../messages/send", 400],
    ["POST", "/v2/./messages/send", 400],
    ["POST", "/v2/%2e%2e/v2/messages/send", 400],
    ["POST", "/v2/..;/v2/messages/send", 400],
    ["POST", "/v2%2Fmessages/send", 400],
    ["POST", "/v2%5cmessages/send", 400],
    ["POST", "/v2\\messages/send", 400],
    ["POST", "//v2/messages/send", 400],
    ["POST", "/v2/%252e%252e/messages", 400],
    ["POST", "/v2/messages%zz", 400],
    ["POST", "/v2/%c0%ae%c0%ae/messages", 400],
  ];
  for (const [method, target, status] of table) {
    test(`${method} ${target}: ${String(status)} without the scope`, async () => {
      const seen = f.up.seen.length;
      const r = await raw(f.kf.url, req(method, target, "s_plain"));
      assert.equal(r.status, status, r.head + r.body);
      if (status === 403) {
        const scope = /reports/i.test(target) ? "reports:read" : /exact/i.test(target) ? "exact:read" : "messages:send";
        assert.equal(r.body, method === "HEAD" ? "" : LACKS(scope));
        assert.match(r.head, /\r\nX-Keyfence-Reason: missing_scope\r\n/i);
      }
      if (status === 400) {
        assert.match(r.body, /^\{"message":"ambiguous request path: /);
        assert.match(r.head, /\r\nX-Keyfence-Reason: ambiguous_path\r\n/i);
      }
      if (status !== 200) assert.equal(f.up.seen.length, seen, "nothing reached the upstream");
      if (status === 403) {
        const ok = await raw(f.kf.url, req(method, target, "s_sender"));
        if (!/reports/i.test(target)) assert.equal(ok.status, 200, `the key with the scope gets through: ${ok.head}`);
      }
    });
  }

  test("a method override header counts as the method", async () => {
    for (const h of [
      "X-HTTP-Method-Override: GET",
      "x-http-method: get",
      "X-Method-Override: GET",
      // CGI, WSGI, PHP and Rack upstreams read these as the same variable (HTTP_X_HTTP_METHOD_OVERRIDE)
      "X_HTTP_Method_Override: GET",
      "X_HTTP_METHOD: GET",
      // PHP also reads `.` as `_` (php -S, php-fpm behind Caddy): HTTP_X_HTTP_METHOD_OVERRIDE again
      "X.HTTP.Method.Override: GET",
      "X-HTTP.Method: GET",
    ]) {
      const r = await raw(f.kf.url, req("POST", "/v2/reports/1", "s_plain", `${h}\r\n`));
      assert.equal(r.status, 403, h);
      assert.equal(r.body, LACKS("reports:read"));
    }
    for (const q of ["_method=GET", "%5Fmethod=GET", "_METHOD=get", "+_method=GET", "_method[]=GET"]) {
      assert.equal((await raw(f.kf.url, req("POST", `/v2/reports/1?${q}`, "s_plain"))).status, 403, q);
    }
  });

  test("a path-override header's path counts as a path of the request", async () => {
    for (const h of [
      "X-Original-URL: /v2/exact",
      "x-rewrite-url: /v2/exact?x=1",
      "X-Original-URL:    /v2/exact#f",
      // Every spelling an upstream reads alike: HTTP_X_ORIGINAL_URL.
      "X_Original_URL: /v2/exact",
      "X.Rewrite.URL: /v2/exact",
      "X-Original_URL: /v2/Exact",
    ]) {
      const r = await raw(f.kf.url, req("GET", "/elsewhere", "s_plain", `${h}\r\n`));
      assert.equal(r.status, 403, h);
      assert.equal(r.body, LACKS("exact:read"), h);
      const ok = await raw(f.kf.url, req("GET", "/elsewhere", "s_sender", `${h}\r\n`));
      assert.equal(ok.status, 200, `${h}: the key with the scope gets through`);
    }
    for (const h of [
      "X-Original-URL: http://x/v2/exact",
      "X-Rewrite-URL: v2/exact",
      "X-Original-URL: /v2/../v2/exact",
    ]) {
      const r = await raw(f.kf.url, req("GET", "/elsewhere", "s_sender", `${h}\r\n`));
      assert.equal(r.status, 400, h);
    }
    // Without such a header nothing changes.
    assert.equal((await raw(f.kf.url, req("GET", "/elsewhere", "s_plain"))).status, 200);
  });

  test("the IP check comes first; unknown and missing keys follow keys.unknown/missing", async () => {
    const r = await raw(f.kf.url, req("POST", "/v2/messages/send", "s_elsewhere"));
    assert.equal(r.status, 403);
    assert.match(r.body, /source IP 127\.0\.0\.1 is not allowed/);
    assert.equal((await raw(f.kf.url, req("POST", "/v2/messages/send", "s_unknown"))).status, 200);
    assert.equal((await raw(f.kf.url, req("POST", "/v2/messages/send", undefined))).status, 200);
  });

  test("the ping needs no scope", async () => {
    const r = await raw(f.kf.url, req("POST", "/_keyfence/ping", "s_plain"));
    assert.equal(r.status, 200);
    assert.equal(r.body, '{"message":"pong"}');
  });

  test("report mode forwards and reports; the metric counts missing_scope", async () => {
    const r = await raw(f.kf.url, req("POST", "/v2/messages/send", "s_report"));
    assert.equal(r.status, 200);
    await eventually(() => f.kf.logText().includes('"reason":"missing_scope"'), 3000, "a would_deny line");
    const metrics = await send(`${f.kf.adminUrl}/metrics`);
    assert.match(metrics.body, /keyfence_decisions_total\{decision="missing_scope"\} [1-9]/);
    assert.match(f.kf.logText(), /"event":"denied","request_id":"[^"]+","reason":"missing_scope","key_id":"k_plain"/);
  });

  test("upgrades are held to the same rules", async () => {
    const ws = new WebSocket(`${f.kf.url.replace("http", "ws")}/v2/reports/ws`, {
      headers: { authorization: "Bearer s_plain" },
    });
    const status = await new Promise<number>((resolve) => {
      ws.on("unexpected-response", (_r, res) => resolve(res.statusCode ?? 0));
      ws.on("open", () => resolve(101));
      ws.on("error", () => resolve(-1));
    });
    ws.terminate();
    assert.equal(status, 403);
  });
});

describe("route_scopes through the decision endpoint", () => {
  const f = sidecarFixture((up) =>
    startTestSidecar({
      upstream: up.url,
      keys: [PLAIN, SENDER, SANDBOX],
      config: { route_scopes: ROUTES, trusted_proxies: ["loopback"], decision: { listen: "127.0.0.1:0" } },
    }),
  );
  const cases: Array<[string, string, string, number]> = [
    ["X-Forwarded-Method", "X-Forwarded-Uri", "/v2/messages/send", 403],
    ["X-Original-Method", "X-Original-URI", "/v2/messages/send", 403],
    ["X-Forwarded-Method", "X-Forwarded-Uri", "/V2/mess%61ges;x/send", 403],
    ["X-Original-Method", "X-Original-URI", "/v2//messages/", 403],
    ["X-Forwarded-Method", "X-Forwarded-Uri", "/v2/x/../messages/send", 400],
    ["X-Original-Method", "X-Original-URI", "/v2%2fmessages/send", 400],
    ["X-Forwarded-Method", "X-Forwarded-Uri", "/v2/messages%2f..%2f..%2fadmin", 400],
    ["X-Forwarded-Method", "X-Forwarded-Uri", "/v2/other", 200],
  ];
  for (const [mh, uh, uri, status] of cases) {
    test(`${mh}/${uh} ${uri}: ${String(status)}`, async () => {
      const r = await send(`${f.kf.decisionUrl}/`, {
        headers: [bearer("s_plain"), [mh, "POST"], [uh, uri]],
      });
      assert.equal(r.status, status, r.body);
      if (status === 403) {
        assert.equal(r.body, LACKS("messages:send"));
        assert.equal(r.headers["x-keyfence-reason"], "missing_scope");
        assert.equal(r.headers["x-keyfence-message"], "API key lacks scope messages:send");
      }
      const ok = await send(`${f.kf.decisionUrl}/`, { headers: [bearer("s_sender"), [mh, "POST"], [uh, uri]] });
      assert.equal(ok.status, status === 403 ? 200 : status);
    });
  }
  test("the two pairs disagreeing, or an empty method, is refused: never the pair or method that lets the request through", async () => {
    // An ingress that sends one pair and passes client headers on (nginx's auth_request) hands keyfence both.
    const variants: Array<Array<[string, string]>> = [
      [
        ["X-Original-Method", "POST"],
        ["X-Original-URI", "/v2/messages/send"],
        ["X-Forwarded-Method", "GET"],
        ["X-Forwarded-Uri", "/v2/other"],
      ],
      [
        ["X-Original-Method", "POST"],
        ["X-Original-URI", "/v2/messages/send"],
        ["X-Forwarded-Uri", "/v2/other"],
      ],
      [
        ["X-Original-Method", "POST"],
        ["X-Original-URI", "/v2/messages/send"],
        ["X-Forwarded-Method", "GET"],
      ],
      [
        ["X-Original-Method", ""],
        ["X-Original-URI", "/v2/messages/send"],
      ],
    ];
    for (const v of variants) {
      const r = await send(`${f.kf.decisionUrl}/`, { method: "POST", headers: [bearer("s_plain"), ...v] });
      assert.equal(r.status, 400, `${JSON.stringify(v)}: ${r.body}`);
      assert.equal(r.headers["x-keyfence-reason"], "bad_request");
    }
    const weird = await send(`${f.kf.decisionUrl}/`, {
      headers: [bearer("s_sender"), ["X-Forwarded-Method", "PO ST"], ["X-Forwarded-Uri", "/v2/other"]],
    });
    assert.equal(weird.status, 400, "a method that is no HTTP method");
    // Both pairs, agreeing (method case aside): one question, decided as usual.
    const both = [
      ["X-Original-Method", "post"],
      ["X-Original-URI", "/v2/messages/send"],
      ["X-Forwarded-Method", "POST"],
      ["X-Forwarded-Uri", "/v2/messages/send"],
    ] as Array<[string, string]>;
    const plain = await send(`${f.kf.decisionUrl}/`, { headers: [bearer("s_plain"), ...both] });
    assert.equal(plain.status, 403);
    assert.equal(plain.headers["x-keyfence-reason"], "missing_scope");
    const sender = await send(`${f.kf.decisionUrl}/`, { headers: [bearer("s_sender"), ...both] });
    assert.equal(sender.status, 200);
  });

  test("a lowercase method from the ingress is the same method", async () => {
    const r = await send(`${f.kf.decisionUrl}/`, {
      headers: [bearer("s_plain"), ["X-Forwarded-Method", "post"], ["X-Forwarded-Uri", "/v2/messages/x"]],
    });
    assert.equal(r.status, 403);
  });
  test("the allowed answer carries the identity, sandbox included", async () => {
    const r = await send(`${f.kf.decisionUrl}/`, {
      headers: [bearer("s_sandbox"), ["X-Forwarded-Method", "POST"], ["X-Forwarded-Uri", "/v2/messages/x"]],
    });
    assert.equal(r.status, 200);
    assert.equal(r.headers["x-keyfence-key-id"], "k_sandbox");
    assert.equal(r.headers["x-keyfence-sandbox"], "true");
    assert.equal(r.headers["x-keyfence-key-scopes"], "messages:send");
    const p = await send(`${f.kf.decisionUrl}/`, { headers: [bearer("s_sender"), ["X-Forwarded-Uri", "/x"]] });
    assert.equal(p.headers["x-keyfence-sandbox"], "false");
  });
  test("<ping_path>/ip answers the client as resolved from X-Forwarded-For", async () => {
    const r = await send(`${f.kf.decisionUrl}/`, {
      headers: [
        ["X-Forwarded-Uri", "/_keyfence/ping/ip"],
        ["X-Forwarded-For", "198.51.100.7"],
      ],
    });
    assert.equal(r.status, 200);
    assert.deepEqual(r.json(), { ip: "198.51.100.7" });
  });
});

describe("<ping_path>/ip", () => {
  const f = sidecarFixture((up) =>
    startTestSidecar({ upstream: up.url, keys: [PLAIN, ELSEWHERE], config: { trusted_proxies: ["loopback"] } }),
  );
  test("any method, no key needed, never forwarded, never counted as a decision", async () => {
    const seen = f.up.seen.length;
    for (const method of ["GET", "POST", "DELETE"]) {
      const r = await send(`${f.kf.url}/_keyfence/ping/ip`, { method });
      assert.equal(r.status, 200, method);
      assert.deepEqual(r.json(), { ip: "127.0.0.1" });
      assert.equal(r.headers["x-keyfence-reason"], "client_ip");
    }
    const head = await send(`${f.kf.url}/_keyfence/ping/ip`, { method: "HEAD" });
    assert.equal(head.status, 200);
    assert.equal(head.body, "");
    assert.equal(f.up.seen.length, seen);
    const metrics = (await send(`${f.kf.adminUrl}/metrics`)).body;
    assert.match(metrics, /keyfence_decisions_total\{decision="allowed"\} 0\b/);
  });
  test("a key sent along is not looked at: a denied key still learns its address", async () => {
    const r = await send(`${f.kf.url}/_keyfence/ping/ip?x=1`, { headers: [bearer("s_elsewhere")] });
    assert.equal(r.status, 200);
    assert.deepEqual(r.json(), { ip: "127.0.0.1" });
    const bad = await send(`${f.kf.url}/_keyfence/ping/ip`, { headers: [["Authorization", "Bearer a,b"]] });
    assert.equal(bad.status, 200);
  });
  test("resolved through trusted_proxies; an unparseable client is a 400", async () => {
    const r = await send(`${f.kf.url}/_keyfence/ping/ip`, {
      headers: [["X-Forwarded-For", "10.9.9.9, ::ffff:203.0.113.9"]],
    });
    assert.deepEqual(r.json(), { ip: "203.0.113.9" });
    const bad = await send(`${f.kf.url}/_keyfence/ping/ip`, { headers: [["X-Forwarded-For", "0177.0.0.1"]] });
    assert.equal(bad.status, 400);
    assert.equal(bad.headers["x-keyfence-reason"], "invalid_client_ip");
  });
  test("only the exact path: below it is an ordinary request", async () => {
    const r = await send(`${f.kf.url}/_keyfence/ping/ip/x`);
    assert.equal(r.status, 200);
    assert.equal((r.json() as { url: string }).url, "/_keyfence/ping/ip/x");
  });
});

/** Client-sent spellings of keyfence's own headers: none may reach the upstream. */
const SPOOFS = [
  "X-Keyfence-Key-Id: forged",
  "x-keyfence-key-id: forged",
  "X-KEYFENCE-KEY-ID: forged",
  "X_Keyfence_Key_Id: forged",
  "x_keyfence-key_id: forged",
  "X.Keyfence.Key.Id: forged",
  "x-keyfence.key-scopes: admin",
  "X.Keyfence_Sandbox: true",
  "X-Keyfence_Key-Scopes: admin",
  "X-Keyfence-Sandbox: false",
  "X-Keyfence-Anything: forged",
  "X-Keyfence-Key-Id: forged\r\nX-Keyfence-Key-Id: forged2",
];

describe("sandbox_upstream and forward_identity", () => {
  let sandbox: Upstream;
  let up: Upstream;
  let kf: TestSidecar;
  let plainKf: TestSidecar;
  before(async () => {
    up = await startUpstream();
    sandbox = await startUpstream();
    kf = await startTestSidecar({
      upstream: up.url,
      keys: [SENDER, SANDBOX],
      config: { sandbox_upstream: sandbox.url, forward_identity: true },
    });
    plainKf = await startTestSidecar({ upstream: up.url, keys: [SENDER, SANDBOX] });
  });
  after(async () => {
    await kf.stop();
    await plainKf.stop();
    await up.close();
    await sandbox.close();
  });
  const upstreamKeyfence = (headers: Record<string, unknown>): Record<string, unknown> =>
    Object.fromEntries(Object.entries(headers).filter(([k]) => /^x[-_]keyfence/i.test(k)));

  test("a sandbox key's allowed requests go to sandbox_upstream", async () => {
    const n = sandbox.seen.length;
    const m = up.seen.length;
    const r = await send(`${kf.url}/v2/x?q=1`, { headers: [bearer("s_sandbox")] });
    assert.equal(r.status, 200);
    assert.equal(sandbox.seen.length, n + 1);
    assert.equal(up.seen.length, m);
    assert.equal(sandbox.seen.at(-1)?.url, "/v2/x?q=1");
    const p = await send(`${kf.url}/v2/x`, { headers: [bearer("s_sender")] });
    assert.equal(p.status, 200);
    assert.equal(up.seen.length, m + 1);
  });
  test("a sandbox key's upgrades go there too", async () => {
    const ws = new WebSocket(`${kf.url.replace("http", "ws")}/ws`, { headers: { authorization: "Bearer s_sandbox" } });
    const hello = await new Promise<string>((resolve, reject) => {
      ws.on("message", (d: Buffer) => resolve(d.toString()));
      ws.on("error", reject);
      ws.on("unexpected-response", (_q, res) => reject(new Error(`status ${String(res.statusCode)}`)));
    });
    ws.terminate();
    const h = JSON.parse(hello) as { url: string; headers: Record<string, string> };
    assert.equal(h.url, "/ws");
    assert.equal(h.headers["x-keyfence-sandbox"], "true");
  });
  test("without sandbox_upstream a sandbox key goes to upstream", async () => {
    const m = up.seen.length;
    assert.equal((await send(`${plainKf.url}/v2/x`, { headers: [bearer("s_sandbox")] })).status, 200);
    assert.equal(up.seen.length, m + 1);
  });
  test("forward_identity sends the checked key's identity, and only it", async () => {
    for (const spoof of SPOOFS) {
      const r = await raw(kf.url, req("GET", "/id", "s_sender", `${spoof}\r\n`));
      assert.equal(r.status, 200);
      const seen = up.seen.at(-1);
      assert.deepEqual(
        upstreamKeyfence(seen?.headers ?? {}),
        {
          "x-keyfence-key-id": "k_sender",
          "x-keyfence-key-scopes": "messages:send exact:read",
          "x-keyfence-sandbox": "false",
        },
        spoof,
      );
      assert.ok(!(seen?.rawHeaders ?? []).some((h) => /forged|admin/.test(h)), spoof);
    }
  });
  test("without forward_identity no X-Keyfence-* header reaches the upstream, in any spelling", async () => {
    for (const spoof of SPOOFS) {
      for (const token of ["s_sender", undefined, "s_unknown"]) {
        const r = await raw(plainKf.url, req("GET", "/id", token, `${spoof}\r\n`));
        assert.equal(r.status, 200);
        assert.deepEqual(upstreamKeyfence(up.seen.at(-1)?.headers ?? {}), {}, `${spoof} with ${String(token)}`);
      }
    }
  });
  test("unknown and missing keys get no identity", async () => {
    await raw(kf.url, req("GET", "/id", undefined, "X-Keyfence-Key-Id: forged\r\n"));
    assert.deepEqual(upstreamKeyfence(up.seen.at(-1)?.headers ?? {}), {});
  });
  test("a header named in Connection and a chunked trailer do not carry one through", async () => {
    await raw(
      plainKf.url,
      "POST /id HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s_sender\r\nConnection: close, X-Keyfence-Key-Id\r\n" +
        "X-Keyfence-Key-Id: forged\r\nTransfer-Encoding: chunked\r\nTrailer: X-Keyfence-Sandbox\r\n\r\n" +
        "3\r\nabc\r\n0\r\nX-Keyfence-Sandbox: true\r\n\r\n",
    );
    const seen = up.seen.at(-1);
    assert.equal(seen?.bodyBytes, 3);
    assert.deepEqual(upstreamKeyfence(seen?.headers ?? {}), {});
    assert.ok(!(seen?.rawHeaders ?? []).some((h) => /forged/.test(h)));
  });
  test("upgrades carry the identity and never a client-sent one", async () => {
    const ws = new WebSocket(`${kf.url.replace("http", "ws")}/ws`, {
      headers: { authorization: "Bearer s_sender", "x-keyfence-key-id": "forged", x_keyfence_sandbox: "true" },
    });
    const hello = await new Promise<string>((resolve, reject) => {
      ws.on("message", (d: Buffer) => resolve(d.toString()));
      ws.on("error", reject);
    });
    ws.terminate();
    const h = JSON.parse(hello) as { url: string; headers: Record<string, string> };
    assert.equal(h.url, "/ws");
    assert.deepEqual(upstreamKeyfence(h.headers), {
      "x-keyfence-key-id": "k_sender",
      "x-keyfence-key-scopes": "messages:send exact:read",
      "x-keyfence-sandbox": "false",
    });
  });
});

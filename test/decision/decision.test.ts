/** SPEC §8 over real sockets: the decision listener answers as the proxy would decide, and forwards nothing. */
import assert from "node:assert/strict";
import { Agent, request as httpRequest } from "node:http";
import { connect } from "node:net";
import { describe, test } from "node:test";
import { bearer, send, type Reply } from "../helpers/http.js";
import { sidecarFixture, startTestSidecar, type TestKey } from "../helpers/sidecar.js";

const LOCAL: TestKey = { id: "k_local", secret: "s_local", allow: ["127.0.0.1"] };
const OFFICE: TestKey = { id: "k_office", secret: "s_office", allow: ["203.0.113.0/24", "2001:db8::/32"] };
const OPEN: TestKey = { id: "k_open", secret: "s_open", allow: [] };
const REPORT: TestKey = { id: "k_report", secret: "s_report", allow: ["203.0.113.0/24"], mode: "report" };
const KEYS = [LOCAL, OFFICE, OPEN, REPORT];

const denied = (ip: string): string => `source IP ${ip} is not allowed for this API key`;

/** One question to the decision listener and the answer it must get. */
interface Case {
  readonly desc: string;
  readonly headers: Array<[string, string]>;
  readonly method?: string;
  readonly path?: string;
  readonly status: number;
  /** Undefined: an allowed answer (empty body, no reason). */
  readonly reason?: string;
  readonly message?: string;
  /** The whole JSON body when it is not `{"message": message}`. */
  readonly body?: unknown;
  /** Expected X-Keyfence-Key-Id (undefined: absent). */
  readonly keyId?: string;
}

/** Checks one answer against its case: status, body, headers. */
function check(c: Case, r: Reply): void {
  assert.equal(r.status, c.status, `${c.desc}: status (body ${r.body})`);
  assert.equal(r.headers["x-keyfence-key-id"], c.keyId, `${c.desc}: key id`);
  if (c.reason === undefined) {
    assert.equal(r.body, "", `${c.desc}: empty body`);
    assert.equal(r.headers["content-length"], "0", `${c.desc}: no body`);
    assert.equal(r.headers["x-keyfence-reason"], undefined, `${c.desc}: no reason`);
    assert.equal(r.headers["x-keyfence-message"], undefined, `${c.desc}: no message`);
    // An allow of no key is never an ingress cache's to keep (nothing of the request's credential to key it by).
    const keep = c.keyId === undefined ? "no-store" : undefined;
    assert.equal(r.headers["cache-control"], keep, `${c.desc}: Cache-Control`);
    return;
  }
  assert.match(String(r.headers["x-request-id"]), /^[0-9a-f-]{36}$/, `${c.desc}: request id, as in the log line`);
  assert.equal(r.headers["x-keyfence-reason"], c.reason, `${c.desc}: reason`);
  assert.equal(r.headers["content-type"], "application/json", `${c.desc}: JSON`);
  assert.deepEqual(r.json(), c.body ?? { message: c.message }, `${c.desc}: body`);
  assert.equal(r.headers["x-keyfence-message"], c.message, `${c.desc}: message header`);
  assert.equal(r.headers["www-authenticate"], c.status === 401 ? 'Bearer realm="keyfence"' : undefined);
}

const xff = (v: string): [string, string] => ["X-Forwarded-For", v];

/** 2,100 header lines of 6 bytes each: past Node's default count, within keyfence's 16 KiB of headers. */
const FILLER: Array<[string, string]> = Array.from({ length: 2_100 }, () => ["F", "1"]);

/** Behind a trusted ingress on loopback: what the ingress says about the original request counts. */
const BEHIND_INGRESS: Case[] = [
  { desc: "allowed network", headers: [bearer("s_office"), xff("203.0.113.9")], status: 200, keyId: "k_office" },
  { desc: "allowed IPv6", headers: [bearer("s_office"), xff("2001:db8::5")], status: 200, keyId: "k_office" },
  {
    desc: "IPv4-mapped client",
    headers: [bearer("s_office"), xff("::ffff:203.0.113.9")],
    status: 200,
    keyId: "k_office",
  },
  {
    desc: "denied network",
    headers: [bearer("s_office"), xff("198.51.100.1")],
    status: 403,
    reason: "ip_not_allowed",
    message: denied("198.51.100.1"),
    keyId: "k_office",
  },
  {
    desc: "spoofed left entry does not count",
    headers: [bearer("s_office"), xff("203.0.113.9, 198.51.100.1")],
    status: 403,
    reason: "ip_not_allowed",
    message: denied("198.51.100.1"),
    keyId: "k_office",
  },
  {
    desc: "the first untrusted hop from the right is the client",
    headers: [bearer("s_office"), xff("198.51.100.1, 203.0.113.9")],
    status: 200,
    keyId: "k_office",
  },
  {
    desc: "denied, IPv6 in canonical form",
    headers: [bearer("s_office"), xff("2001:0DB9:0:0::1")],
    status: 403,
    reason: "ip_not_allowed",
    message: denied("2001:db9::1"),
    keyId: "k_office",
  },
  {
    desc: "loose client address is never read as another",
    headers: [bearer("s_office"), xff("0177.0.0.1")],
    status: 400,
    reason: "invalid_client_ip",
    message: "client IP address could not be determined",
    keyId: "k_office",
  },
  { desc: "unrestricted key", headers: [bearer("s_open"), xff("198.51.100.1")], status: 200, keyId: "k_open" },
  {
    desc: "report mode: would-be denial goes on",
    headers: [bearer("s_report"), xff("198.51.100.1")],
    status: 200,
    keyId: "k_report",
  },
  { desc: "unknown key forwarded: no key id", headers: [bearer("nope"), xff("198.51.100.1")], status: 200 },
  { desc: "missing key forwarded: no key id", headers: [xff("198.51.100.1")], status: 200 },
  { desc: "another scheme is no key", headers: [["Authorization", "Basic czpz"]], status: 200 },
  {
    desc: "two Authorization headers",
    headers: [bearer("s_open"), bearer("s_office")],
    status: 400,
    reason: "multiple_authorization",
    message: "multiple Authorization headers",
  },
  {
    desc: "malformed bearer",
    headers: [["Authorization", "Bearer a b"]],
    status: 400,
    reason: "malformed_authorization",
    message: "malformed Authorization header",
  },
  {
    desc: "ping via X-Forwarded-Uri (Traefik, Caddy), query ignored",
    headers: [bearer("s_office"), xff("203.0.113.9"), ["X-Forwarded-Uri", "/_keyfence/ping?x=1"]],
    status: 200,
    reason: "pong",
    message: "pong",
    keyId: "k_office",
  },
  {
    desc: "ping via X-Original-URI (nginx)",
    headers: [bearer("s_office"), xff("203.0.113.9"), ["X-Original-URI", "/_keyfence/ping"]],
    status: 200,
    reason: "pong",
    message: "pong",
    keyId: "k_office",
  },
  {
    desc: "ping, denied",
    headers: [bearer("s_office"), xff("198.51.100.1"), ["X-Original-URI", "/_keyfence/ping"]],
    status: 403,
    reason: "ip_not_allowed",
    message: denied("198.51.100.1"),
    keyId: "k_office",
  },
  {
    desc: "ping, missing key: 401",
    headers: [["X-Forwarded-Uri", "/_keyfence/ping"]],
    status: 401,
    reason: "missing_api_key",
    message: "missing API key",
  },
  {
    desc: "ping, unknown key: 401",
    headers: [bearer("nope"), ["X-Forwarded-Uri", "/_keyfence/ping"]],
    status: 401,
    reason: "invalid_api_key",
    message: "invalid API key",
  },
  {
    desc: "ping, report mode: the would-be denial in the body",
    headers: [bearer("s_report"), xff("198.51.100.1"), ["X-Forwarded-Uri", "/_keyfence/ping"]],
    status: 200,
    reason: "pong",
    message: "pong",
    body: {
      message: "pong",
      mode: "report",
      would_deny: { reason: "ip_not_allowed", status: 403, message: denied("198.51.100.1") },
    },
    keyId: "k_report",
  },
  {
    desc: "ping on the request line (Envoy sends the original path)",
    path: "/_keyfence/ping",
    headers: [bearer("s_open")],
    status: 200,
    reason: "pong",
    message: "pong",
    keyId: "k_open",
  },
  {
    desc: "X-Forwarded-Uri wins over the request line",
    path: "/_keyfence/ping",
    headers: [bearer("s_open"), ["X-Forwarded-Uri", "/v1/x"]],
    status: 200,
    keyId: "k_open",
  },
  {
    desc: "a target that is no path",
    headers: [bearer("s_open"), ["X-Forwarded-Uri", "*"]],
    status: 400,
    reason: "bad_request",
    message: "request target must be a path",
  },
  {
    desc: "the original method does not change the decision",
    method: "GET",
    headers: [bearer("s_office"), xff("198.51.100.1"), ["X-Forwarded-Method", "DELETE"]],
    status: 403,
    reason: "ip_not_allowed",
    message: denied("198.51.100.1"),
    keyId: "k_office",
  },
  {
    desc: "an Upgrade request is answered plainly, never tunnelled",
    headers: [bearer("s_office"), xff("203.0.113.9"), ["Connection", "Upgrade"], ["Upgrade", "websocket"]],
    status: 200,
    keyId: "k_office",
  },
  {
    desc: "an Upgrade request, denied",
    headers: [bearer("s_office"), xff("198.51.100.1"), ["Connection", "Upgrade"], ["Upgrade", "websocket"]],
    status: 403,
    reason: "ip_not_allowed",
    message: denied("198.51.100.1"),
    keyId: "k_office",
  },
];

describe("decision listener behind a trusted ingress", () => {
  const fx = sidecarFixture((up) =>
    startTestSidecar({
      upstream: up.url,
      keys: KEYS,
      config: { trusted_proxies: ["loopback"], access_log: true, decision: { listen: "127.0.0.1:0" } },
    }),
  );

  for (const c of BEHIND_INGRESS) {
    test(c.desc, async () => {
      const r = await send(`${fx.kf.decisionUrl}${c.path ?? "/"}`, { method: c.method, headers: c.headers });
      check(c, r);
      assert.equal(fx.up.seen.length, 0, "nothing ever reaches the upstream");
    });
  }

  // An ingress passes every header line on to the application (Caddy sorts them by name, so a client picks
  // which come last); Node reads only the first 2,000 unless told otherwise. Every question above, with its
  // own headers after 2,100 others, must be decided the same: nothing said late may go unseen.
  for (const c of BEHIND_INGRESS) {
    test(`${c.desc}, after 2,100 other header lines`, async () => {
      const headers = [...FILLER, ...c.headers];
      const r = await send(`${fx.kf.decisionUrl}${c.path ?? "/"}`, { method: c.method, headers });
      check(c, r);
    });
  }

  test("metrics, logs and observed sources count decisions like the proxy's", async () => {
    const before = await decisionsTotal(fx.kf.adminUrl);
    const n = fx.kf.logs.length;
    const asks: Array<[string, string, number]> = [
      ["s_office", "203.0.113.77", 200],
      ["s_office", "192.0.2.77", 403],
      ["s_report", "198.51.100.78", 200],
      ["nope", "198.51.100.1", 200],
    ];
    for (const [secret, ip, status] of asks) {
      const r = await send(`${fx.kf.decisionUrl}/`, {
        headers: [bearer(secret), xff(ip), ["X-Forwarded-Uri", "/v1/messages?secret=q"], ["X-Forwarded-Method", "PUT"]],
      });
      assert.equal(r.status, status);
    }
    const after = await decisionsTotal(fx.kf.adminUrl);
    const delta = (d: string): number => (after[d] ?? 0) - (before[d] ?? 0);
    assert.deepEqual(
      ["allowed", "denied", "would_deny", "unknown_key"].map(delta),
      [1, 1, 1, 1],
      "one decision counted per question",
    );
    const lines = fx.kf.logs.slice(n);
    const deniedLine = lines.find((l) => l["event"] === "denied");
    assert.ok(deniedLine, "a denial is logged");
    assert.equal(deniedLine["client_ip"], "192.0.2.77");
    assert.equal(deniedLine["method"], "PUT", "the original method");
    assert.equal(deniedLine["path"], "/v1/messages", "the original path, without its query");
    assert.equal(deniedLine["listener"], "decision");
    assert.ok(
      lines.some((l) => l["event"] === "would_deny" && l["key_id"] === "k_report"),
      "report mode logs the would-be denial",
    );
    const access = lines.filter((l) => l["event"] === "access");
    assert.equal(access.length, 4, "one access line per question");
    assert.ok(!fx.kf.logText().includes("secret=q"), "the query is never logged");
    const office = fx.kf.sidecar.sources.sources("k_office");
    const net = (cidr: string) => office.find((s) => s.network === cidr);
    assert.equal(net("203.0.113.0/24")?.denied, 0);
    assert.deepEqual(
      [net("192.0.2.0/24")?.requests, net("192.0.2.0/24")?.denied],
      [1, 1],
      "the refused network is observed",
    );
    assert.equal(fx.up.seen.length, 0);
  });

  test("a body is never read: the answer comes at once and the connection closes", async () => {
    const text = await rawExchange(
      fx.kf.decisionUrl,
      "POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s_office\r\nX-Forwarded-For: 198.51.100.1\r\nContent-Length: 10000000\r\n\r\n",
    );
    assert.match(text, /^HTTP\/1\.1 403 /);
    assert.match(text, /\r\nconnection: close\r\n/i);
    assert.match(text, /\r\nX-Keyfence-Reason: ip_not_allowed\r\n/i);
  });
});

describe("decision listener with unknown and missing keys refused", () => {
  const fx = sidecarFixture((up) =>
    startTestSidecar({
      upstream: up.url,
      keys: KEYS,
      keysConfig: { unknown: "reject", missing: "reject" },
      config: { trusted_proxies: ["loopback"], decision: { listen: "127.0.0.1:0" } },
    }),
  );
  const cases: Case[] = [
    {
      desc: "unknown key",
      headers: [bearer("nope")],
      status: 401,
      reason: "invalid_api_key",
      message: "invalid API key",
    },
    { desc: "missing key", headers: [], status: 401, reason: "missing_api_key", message: "missing API key" },
    { desc: "known key still allowed", headers: [bearer("s_local")], status: 200, keyId: "k_local" },
  ];
  for (const c of cases) {
    test(c.desc, async () => check(c, await send(`${fx.kf.decisionUrl}/`, { headers: c.headers })));
  }
});

describe("decision listener when the peer is not a trusted proxy", () => {
  const fx = sidecarFixture((up) =>
    startTestSidecar({ upstream: up.url, keys: KEYS, config: { decision: { listen: "127.0.0.1:0" } } }),
  );
  const cases: Case[] = [
    {
      desc: "X-Forwarded-For is not read",
      headers: [bearer("s_office"), xff("203.0.113.9")],
      status: 403,
      reason: "ip_not_allowed",
      message: denied("127.0.0.1"),
      keyId: "k_office",
    },
    {
      desc: "X-Forwarded-Uri is not read (no pong for an untrusted peer's say-so)",
      headers: [bearer("s_local"), ["X-Forwarded-Uri", "/_keyfence/ping"]],
      status: 200,
      keyId: "k_local",
    },
    {
      desc: "X-Original-URI is not read",
      headers: [["X-Original-URI", "/_keyfence/ping"]],
      status: 200,
    },
  ];
  for (const c of cases) {
    test(c.desc, async () => check(c, await send(`${fx.kf.decisionUrl}/`, { headers: c.headers })));
  }
  test("the sidecar without `decision` starts no decision listener", async () => {
    const kf = await startTestSidecar({ upstream: fx.up.url, keys: KEYS });
    try {
      assert.equal(kf.decisionUrl, "");
      assert.equal(kf.sidecar.decisionAddress, undefined);
    } finally {
      await kf.stop();
    }
  });
});

describe("decision listener: each connection's peer is its own", () => {
  // Only 127.0.0.1 is a trusted proxy; 127.0.0.2 is loopback too, but a client.
  const fx = sidecarFixture((up) =>
    startTestSidecar({
      upstream: up.url,
      keys: KEYS,
      config: { trusted_proxies: ["127.0.0.1"], decision: { listen: "127.0.0.1:0" } },
    }),
  );
  test("questions interleaved on two kept-alive connections from a trusted and an untrusted peer", async () => {
    const ingress = new Agent({ keepAlive: true, maxSockets: 1, localAddress: "127.0.0.1" });
    const client = new Agent({ keepAlive: true, maxSockets: 1, localAddress: "127.0.0.2" });
    try {
      for (let round = 0; round < 3; round++) {
        const viaIngress = await askOn(fx.kf.decisionUrl, ingress);
        assert.equal(viaIngress.status, 200, `round ${round}: the ingress's X-Forwarded-For counts`);
        assert.equal(viaIngress.reused, round > 0, `round ${round}: the ingress's connection is kept`);
        const direct = await askOn(fx.kf.decisionUrl, client);
        assert.equal(direct.status, 403, `round ${round}: an untrusted peer's X-Forwarded-For is not read`);
        assert.equal(direct.message, denied("127.0.0.2"));
        assert.equal(direct.reused, round > 0, `round ${round}: the client's connection is kept`);
      }
    } finally {
      ingress.destroy();
      client.destroy();
    }
  });
});

/** Asks about a request from 203.0.113.9 with the office key over `agent`'s connection. */
function askOn(url: string, agent: Agent): Promise<{ status: number; message: string; reused: boolean }> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      {
        host: u.hostname,
        port: u.port,
        path: "/",
        agent,
        headers: { authorization: "Bearer s_office", "x-forwarded-for": "203.0.113.9" },
      },
      (res) => {
        res.resume();
        res.on("end", () =>
          resolve({
            status: res.statusCode ?? 0,
            message: String(res.headers["x-keyfence-message"] ?? ""),
            reused: req.reusedSocket,
          }),
        );
      },
    );
    req.on("error", reject);
    req.end();
  });
}

/** `keyfence_decisions_total` by decision, from the admin listener's /metrics. */
async function decisionsTotal(adminUrl: string): Promise<Record<string, number>> {
  const text = (await send(`${adminUrl}/metrics`)).body;
  const out: Record<string, number> = {};
  for (const m of text.matchAll(/^keyfence_decisions_total\{decision="([a-z_]+)"\} (\d+)$/gm)) {
    out[m[1] ?? ""] = Number(m[2]);
  }
  return out;
}

/** Writes `request` on a fresh connection and reads until the server closes it (5 s at most). */
function rawExchange(url: string, request: string): Promise<string> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const s = connect(Number(u.port), u.hostname);
    let out = "";
    const t = setTimeout(() => {
      s.destroy();
      reject(new Error(`no close within 5 s; got: ${out}`));
    }, 5000);
    s.on("data", (d: Buffer) => (out += d.toString("latin1")));
    s.on("error", () => undefined);
    s.on("close", () => {
      clearTimeout(t);
      resolve(out);
    });
    s.write(request);
  });
}

/** SPEC §4 credential spellings and places over real sockets: what is refused never reaches the upstream. */
import assert from "node:assert/strict";
import { connect } from "node:net";
import { describe, test } from "node:test";
import { bearer, send } from "../helpers/http.js";
import { sidecarFixture, startTestSidecar, type TestKey } from "../helpers/sidecar.js";

const LOCAL: TestKey = { id: "k_local", secret: "s_local", allow: ["127.0.0.1"] };
const OFFICE: TestKey = { id: "k_office", secret: "s_office", allow: ["203.0.113.0/24"] };
const KEYS = [LOCAL, OFFICE];

/** Sends raw request bytes (header values as latin1 bytes) and reads the status line, reason header and body. */
function raw(url: string, request: string): Promise<{ status: number; reason: string; body: string }> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const s = connect(Number(u.port), u.hostname);
    let data = "";
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error("no answer within 5 s"));
    }, 5000);
    s.on("connect", () => s.write(Buffer.from(request, "latin1")));
    s.on("data", (d: Buffer) => (data += d.toString("latin1")));
    s.on("end", () => {
      clearTimeout(timer);
      const end = data.indexOf("\r\n\r\n");
      resolve({
        status: Number(data.slice(9, 12)),
        reason: /x-keyfence-reason: (\S+)/i.exec(data)?.[1] ?? "",
        body: data.slice(end + 4),
      });
    });
    s.on("error", reject);
  });
}

const get = (path: string, headers: string): string =>
  `GET ${path} HTTP/1.1\r\nHost: kf.test\r\nConnection: close\r\n${headers}\r\n`;

describe("Authorization spellings on the wire", () => {
  const fx = sidecarFixture((up) => startTestSidecar({ upstream: up.url, keys: KEYS }));
  const spellings = [
    "Bearer\xa0s_office",
    "Bearer\x85s_office",
    "Bearer\xe3\x80\x80s_office",
    "Bearer:s_office",
    "Bearer=s_office",
    "Bearers_office",
    "bearer  s_office",
    "Bearer s_office x",
    'Bearer "s_office"',
    "Basic x, Bearer s_office",
    "Token s_office\xa0",
    "Bearer s_\xe9office",
  ];
  for (const v of spellings) {
    test(`${JSON.stringify(v)}: 400 malformed_authorization, never forwarded`, async () => {
      const n = fx.up.seen.length;
      const r = await raw(fx.kf.url, get(`/spell`, `Authorization: ${v}\r\n`));
      assert.equal(r.status, 400);
      assert.equal(r.reason, "malformed_authorization");
      assert.equal(r.body, '{"message":"malformed Authorization header"}');
      assert.equal(fx.up.seen.length, n);
    });
  }
  test("a key after 2,100 other header lines is still checked, and every line reaches the upstream", async () => {
    // Node reads only the first 2,000 header lines unless told otherwise: a key said later went unseen.
    const filler = "F: 1\r\n".repeat(2_100);
    const n = fx.up.seen.length;
    const denied = await raw(fx.kf.url, get("/late", `${filler}Authorization: Bearer s_office\r\n`));
    assert.equal(denied.status, 403, denied.body);
    assert.equal(denied.reason, "ip_not_allowed");
    assert.equal(fx.up.seen.length, n, "never forwarded");
    const allowed = await raw(fx.kf.url, get("/late", `${filler}Authorization: Bearer s_local\r\n`));
    assert.equal(allowed.status, 200, allowed.body);
    const seen = fx.up.seen[n];
    assert.equal(seen?.headers.authorization, "Bearer s_local");
    assert.equal(seen?.rawHeaders.filter((h, i) => i % 2 === 0 && h.toLowerCase() === "f").length, 2_100);
  });
  test("two Host headers, or none in HTTP/1.1: 400 bad_request with keyfence's JSON, never forwarded", async () => {
    const n = fx.up.seen.length;
    const cases: Array<[string, string, string]> = [
      ["two", "Host: a\r\nHost: b\r\n", "multiple Host headers"],
      ["two alike, in other cases", "host: a\r\nHOST: a\r\n", "multiple Host headers"],
      ["none", "", "missing Host header"],
    ];
    for (const [desc, hosts, message] of cases) {
      const request = `GET /h HTTP/1.1\r\n${hosts}Authorization: Bearer s_local\r\nConnection: close\r\n\r\n`;
      const r = await raw(fx.kf.url, request);
      assert.equal(r.status, 400, `${desc}: ${r.body}`);
      assert.equal(r.reason, "bad_request", desc);
      assert.equal(r.body, JSON.stringify({ message }), desc);
      const r10 = await raw(fx.kf.url, request.replace("HTTP/1.1", "HTTP/1.0"));
      if (hosts === "") assert.equal(r10.status, 200, "HTTP/1.0 needs no Host");
      else assert.equal(r10.status, 400, `${desc}, HTTP/1.0`);
    }
    assert.equal(fx.up.seen.length, n + 1, "only the HTTP/1.0 request without Host is forwarded");
    assert.equal(
      fx.kf.logs.some((l) => l["event"] === "upstream_error"),
      false,
      "never an upstream error",
    );
  });
  test("the strict form still works, with a tab too", async () => {
    assert.equal((await raw(fx.kf.url, get("/ok", "Authorization: Bearer\ts_local\r\n"))).status, 200);
    assert.equal((await raw(fx.kf.url, get("/ok", "Authorization: Bearer\ts_office\r\n"))).status, 403);
  });
});

describe("keys.credentials: keys in every listed place", () => {
  const fx = sidecarFixture((up) =>
    startTestSidecar({
      upstream: up.url,
      keys: KEYS,
      keysConfig: { credentials: ["bearer", { header: "X-API-Key" }, { basic: "username" }, { query: "api_key" }] },
    }),
  );
  const basic = (k: string): [string, string] => ["Authorization", `Basic ${Buffer.from(`${k}:`).toString("base64")}`];

  test("a denied key in each place gets the 403; an allowed one is forwarded unchanged", async () => {
    const places: Array<{ path: (k: string) => string; headers: (k: string) => Array<[string, string]> }> = [
      { path: () => "/p", headers: (k) => [bearer(k)] },
      { path: () => "/p", headers: (k) => [["X-API-Key", k]] },
      { path: () => "/p", headers: (k) => [basic(k)] },
      { path: (k) => `/p?x=1&api_key=${k}`, headers: () => [] },
      { path: (k) => `/p?API%5Fkey=${k}`, headers: () => [] },
      // PHP cuts a decoded parameter name at its first NUL: $_GET['api_key'] there.
      { path: (k) => `/p?api_key%00=${k}`, headers: () => [] },
      { path: (k) => `/p?api_key%00.x=${k}`, headers: () => [] },
    ];
    for (const p of places) {
      const what = JSON.stringify([p.path("K"), p.headers("K")]);
      const n = fx.up.seen.length;
      const denied = await send(`${fx.kf.url}${p.path("s_office")}`, { headers: p.headers("s_office") });
      assert.equal(denied.status, 403, what);
      assert.equal(fx.up.seen.length, n);
      const allowed = await send(`${fx.kf.url}${p.path("s_local")}`, { headers: p.headers("s_local") });
      assert.equal(allowed.status, 200, what);
      assert.equal(fx.up.seen.at(-1)?.url, p.path("s_local"), "the query is forwarded unchanged");
    }
  });

  test("a configured header spelled with `_` or `.` for `-` is the same place (CGI, WSGI, PHP and Rack read X_API_Key, PHP also X.API.Key, as HTTP_X_API_KEY)", async () => {
    const n = fx.up.seen.length;
    for (const name of ["X_API_Key", "x_api_key", "X-API_KEY", "X.API.Key", "x-api.key"]) {
      const denied = await send(`${fx.kf.url}/u`, { headers: [[name, "s_office"]] });
      assert.equal(denied.status, 403, `${name}: the key is checked like X-API-Key`);
      const twice = await send(`${fx.kf.url}/u`, { headers: [[name, "s_office"], bearer("s_local")] });
      assert.equal(twice.status, 400, `${name} and a bearer key: two places`);
      assert.equal(twice.headers["x-keyfence-reason"], "multiple_credentials");
    }
    assert.equal(fx.up.seen.length, n, "an unchecked key never reaches the upstream");
  });

  test("the key in the query is never logged", async () => {
    await send(`${fx.kf.url}/logged?api_key=s_office`);
    assert.ok(fx.kf.logs.some((l) => l["event"] === "denied" && l["path"] === "/logged"));
    assert.equal(fx.kf.logText().includes("s_office"), false);
  });

  const multiple: Array<[string, string, Array<[string, string]>]> = [
    ["bearer and X-API-Key", "/m", [bearer("s_local"), ["X-API-Key", "s_local"]]],
    ["bearer and query", "/m?api_key=s_local", [bearer("s_local")]],
    ["basic and X-API-Key", "/m", [basic("s_local"), ["X-API-Key", "s_office"]]],
    [
      "X-API-Key twice",
      "/m",
      [
        ["X-API-Key", "s_local"],
        ["x-api-key", "s_local"],
      ],
    ],
    ["the query parameter twice", "/m?api_key=s_local&api_key=s_local", []],
    ["the query parameter twice, spelled apart", "/m?api_key=s_local&Api.Key=s_office", []],
  ];
  for (const [desc, path, headers] of multiple) {
    test(`${desc}: 400 multiple_credentials, never forwarded`, async () => {
      const n = fx.up.seen.length;
      const r = await send(`${fx.kf.url}${path}`, { headers });
      assert.equal(r.status, 400);
      assert.equal(r.headers["x-keyfence-reason"], "multiple_credentials");
      assert.equal(r.body, '{"message":"multiple API keys"}');
      assert.equal(fx.up.seen.length, n);
    });
  }

  test("a malformed key in a header or the query: 400 malformed_credential", async () => {
    const n = fx.up.seen.length;
    for (const [path, headers] of [
      ["/b", [["X-API-Key", "s_office\xa0"]]],
      ["/b?api_key=s+office", []],
      ["/b?api_key=s%20office", []],
    ] as Array<[string, Array<[string, string]>]>) {
      const r = await send(`${fx.kf.url}${path}`, { headers });
      assert.equal(r.status, 400, path);
      assert.equal(r.headers["x-keyfence-reason"], "malformed_credential");
    }
    assert.equal(fx.up.seen.length, n);
  });
});

/**
 * The shipped ingress configurations (deploy/ingress/) with the real servers:
 * nginx (auth_request) and Caddy (forward_auth) in front of a real upstream,
 * asking a real keyfence decision listener through a byte-counting relay. The
 * clients connect from 127.0.0.2, the ingress from 127.0.0.1 (the only
 * trusted proxy), so every address is what it would be in production.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { request as httpRequest } from "node:http";
import { createServer, connect, type AddressInfo, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { nginxIngressConfig, shippedIngress, withDecisionCache } from "../../bench/ingress.js";
import { freePort, startLogged, type Proc } from "../../bench/procs.js";
import { needBinary } from "../helpers/binary.js";
import { bearer, send, type Reply } from "../helpers/http.js";
import { eventually, startTestSidecar, type TestKey, type TestSidecar } from "../helpers/sidecar.js";
import { startUpstream, type Upstream } from "../helpers/upstream.js";
import { CLIENT_ADDRESS_HEADERS } from "../../src/proxy/forward.js";

const CLIENT = "127.0.0.2";
const KEYS: TestKey[] = [
  { id: "k_allowed", secret: "s_allowed", allow: [CLIENT], scopes: ["messages:send", "reports:read"] },
  { id: "k_denied", secret: "s_denied", allow: ["203.0.113.0/24"] },
  // Allowed from the ingress's own address only: usable by a client only if keyfence mistook the ingress for it.
  { id: "k_ingress", secret: "s_ingress", allow: ["127.0.0.1"] },
];
/** The header names in `raw` with `_` or `.`: ones an application (CGI, PHP) may read as a dashed name it trusts. */
const underscored = (raw: readonly string[] | undefined): string[] =>
  (raw ?? []).filter((name, i) => i % 2 === 0 && (name.includes("_") || name.includes(".")));

const DENIED_BODY = `{"message":"source IP ${CLIENT} is not allowed for this API key"}`;

/** A TCP relay in front of keyfence's decision listener: counts what the ingress sends; `down` refuses everything. */
interface Relay {
  readonly port: number;
  bytesIn: number;
  /** While down, every connection (kept-alive ones included) is cut. */
  setDown(down: boolean): void;
  /** While stalled, kept-alive connections are cut and new ones are taken but never answered (a frozen keyfence). */
  setStalled(stalled: boolean): void;
  close(): Promise<void>;
}

async function startRelay(targetPort: number): Promise<Relay> {
  const sockets = new Set<Socket>();
  let down = false;
  let stalled = false;
  const relay: Relay = {
    port: 0,
    bytesIn: 0,
    setDown(d) {
      down = d;
      if (d) for (const s of sockets) s.destroy();
    },
    setStalled(st) {
      stalled = st;
      if (st) for (const s of sockets) s.destroy();
    },
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
  const server = createServer((client) => {
    if (down) {
      client.destroy();
      return;
    }
    if (stalled) {
      sockets.add(client);
      client.on("close", () => sockets.delete(client));
      client.on("error", () => undefined);
      client.resume();
      return;
    }
    const upstream = connect(targetPort, "127.0.0.1");
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => undefined);
    }
    client.on("data", (d: Buffer) => (relay.bytesIn += d.length));
    client.pipe(upstream).pipe(client);
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return Object.assign(relay, { port: (server.address() as AddressInfo).port });
}

/** How a test starts one ingress in `dir`, listening on `port`, asking `decisionPort`, forwarding to `appPort`. */
type Starter = (dir: string, port: number, decisionPort: number, appPort: number) => Promise<Proc>;

const ready = (port: number) => async (): Promise<boolean> => {
  try {
    await send(`http://127.0.0.1:${port}/_ready`, { timeoutMs: 1000 });
    return true;
  } catch {
    return false;
  }
};

const startNginx =
  (bin: string): Starter =>
  async (dir, port, decisionPort, appPort) => {
    const conf = nginxIngressConfig(dir, { port, decisionPort, appPort });
    return startLogged("nginx", bin, ["-c", conf, "-p", dir], join(dir, "nginx.out"), ready(port));
  };

const startCaddy =
  (bin: string): Starter =>
  async (dir, port, decisionPort, appPort) => {
    const site = shippedIngress("caddy/Caddyfile", [
      ["127.0.0.1:8081", `127.0.0.1:${decisionPort}`],
      ["127.0.0.1:3000", `127.0.0.1:${appPort}`],
      [":8080 {", `http://127.0.0.1:${port} {`],
    ]);
    const file = join(dir, "Caddyfile");
    writeFileSync(file, `{\n\tadmin off\n}\n\n${site}`);
    const env = { ...process.env, HOME: dir, XDG_DATA_HOME: dir, XDG_CONFIG_HOME: dir };
    return startLogged(
      "caddy",
      bin,
      ["run", "--config", file, "--adapter", "caddyfile"],
      join(dir, "caddy.out"),
      ready(port),
      env,
    );
  };

/** Streams `size` bytes as a chunked upload (64 KiB chunks, waiting for drain); resolves with the answer. */
function upload(url: string, size: number, headers: Array<[string, string]>): Promise<Reply & { sha256: string }> {
  const u = new URL(url);
  const hash = createHash("sha256");
  return new Promise((resolveReply, reject) => {
    const req = httpRequest(
      {
        host: u.hostname,
        port: u.port,
        path: u.pathname,
        method: "POST",
        headers: ["Host", u.host, ...headers.flat(), "Content-Type", "application/octet-stream"],
        localAddress: CLIENT,
        agent: false,
        timeout: 30_000,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const body = Buffer.concat(chunks).toString("utf8");
          resolveReply({
            status: res.statusCode ?? 0,
            headers: res.headers,
            rawHeaders: res.rawHeaders,
            body,
            json: () => JSON.parse(body) as unknown,
            sha256: hash.digest("hex"),
          });
        });
      },
    );
    req.on("timeout", () => req.destroy(new Error("upload timed out")));
    req.on("error", reject);
    let left = size;
    let i = 0;
    const pump = (): void => {
      while (left > 0) {
        const n = Math.min(65536, left);
        const chunk = Buffer.alloc(n, i++ % 251);
        hash.update(chunk);
        left -= n;
        if (!req.write(chunk)) {
          req.once("drain", pump);
          return;
        }
      }
      req.end();
    };
    pump();
  });
}

/**
 * One ingress suite's set-up, made in the calling describe's hooks: an
 * upstream, a keyfence sidecar (`keysConfig`, `config`) whose decision
 * listener sits behind a byte-counting relay, and the ingress `start` makes
 * in front of them; its fields are set once the suite has started.
 */
class IngressSuite {
  up!: Upstream;
  kf!: TestSidecar;
  relay!: Relay;
  /** Where clients reach the ingress. */
  url = "";

  constructor(start: Starter, keysConfig: Record<string, unknown>, config: Record<string, unknown>) {
    let ingress: Proc | undefined;
    let dir = "";
    before(async () => {
      this.up = await startUpstream();
      this.kf = await startTestSidecar({ upstream: this.up.url, keys: KEYS, keysConfig, config });
      this.relay = await startRelay(this.kf.sidecar.decisionAddress?.port ?? 0);
      dir = mkdtempSync(join(tmpdir(), "keyfence-ingress-"));
      const port = await freePort();
      ingress = await start(dir, port, this.relay.port, this.up.port);
      this.url = `http://127.0.0.1:${port}`;
    });
    after(async () => {
      await ingress?.stop();
      await this.relay.close();
      await this.kf.stop();
      await this.up.close();
      if (process.env["KEEP"] === undefined) rmSync(dir, { recursive: true, force: true });
    });
  }

  /**
   * Sends one request from the client address (`opts.from` for another; a
   * `|` in the target goes as written); returns the answer, what reached the
   * upstream, and whether keyfence was asked.
   */
  readonly ask = async (
    target: string,
    headers: Array<[string, string]>,
    opts: { from?: string; method?: string } = {},
  ): Promise<{ r: Reply; seen: Upstream["seen"]; asked: boolean }> => {
    const n = this.up.seen.length;
    const before = this.relay.bytesIn;
    const r = await send(`${this.url}${target}`, { headers, localAddress: opts.from ?? CLIENT, method: opts.method });
    return { r, seen: this.up.seen.slice(n), asked: this.relay.bytesIn > before };
  };
}

/** The shipped nginx file with its decision cache switched on (every "#cache " mark removed). */
const startCachedNginx =
  (bin: string): Starter =>
  async (dir, port, decisionPort, appPort) => {
    const conf = nginxIngressConfig(dir, {
      port,
      decisionPort,
      appPort,
      edit: (site) => withDecisionCache(site, join(dir, "decisions")),
    });
    return startLogged("nginx", bin, ["-c", conf, "-p", dir], join(dir, "nginx.out"), ready(port));
  };

const ingresses: Array<[string, string, string, (bin: string) => Starter]> = [
  ["nginx", "nginx-light", "nginx", startNginx],
  ["Caddy", "caddy", "caddy", startCaddy],
];

for (const [name, pkg, command, starter] of ingresses) {
  const bin = needBinary(pkg, command);
  describe(`${name} with deploy/ingress and keyfence's decision endpoint`, { skip: bin.skip }, () => {
    const suite = new IngressSuite(
      starter(bin.path ?? command),
      { missing: "reject" },
      {
        trusted_proxies: ["127.0.0.1"],
        decision: { listen: "127.0.0.1:0" },
        route_scopes: [{ methods: ["POST"], path: "/v1/admin/*", scope: "admin:write" }],
      },
    );
    const ask = suite.ask;

    test("allowed: forwarded with the key id keyfence matched", async () => {
      const { r, seen } = await ask("/v1/messages?to=a", [bearer("s_allowed"), ["X-Keyfence-Key-Id", "k_forged"]]);
      assert.equal(r.status, 200, r.body);
      assert.equal(seen.length, 1);
      assert.equal(seen[0]?.url, "/v1/messages?to=a");
      assert.equal(seen[0]?.headers.authorization, "Bearer s_allowed");
      assert.equal(seen[0]?.headers["x-keyfence-key-id"], "k_allowed", "keyfence's key id, not the client's");
    });

    // Refusals: the client gets keyfence's own status, JSON body and reason; nothing reaches the upstream.
    const refusals: Array<[string, string, Array<[string, string]>, number, string, string]> = [
      ["denied", "/v1/messages", [bearer("s_denied")], 403, "ip_not_allowed", DENIED_BODY],
      [
        "spoofed X-Forwarded-For",
        "/v1/messages",
        [bearer("s_denied"), ["X-Forwarded-For", "203.0.113.9"], ["X-Real-IP", "203.0.113.9"]],
        403,
        "ip_not_allowed",
        DENIED_BODY,
      ],
      ["missing key", "/v1/messages", [], 401, "missing_api_key", '{"message":"missing API key"}'],
      [
        "malformed Authorization",
        "/v1/messages",
        [["Authorization", "Bearer a b"]],
        400,
        "malformed_authorization",
        '{"message":"malformed Authorization header"}',
      ],
      [
        "a bearer spelling upstreams misread",
        "/v1/messages",
        [["Authorization", "Bearer=s_denied"]],
        400,
        "malformed_authorization",
        '{"message":"malformed Authorization header"}',
      ],
      ["ping, denied", "/_keyfence/ping", [bearer("s_denied")], 403, "ip_not_allowed", DENIED_BODY],
      ["ping, missing key", "/_keyfence/ping?x=1", [], 401, "missing_api_key", '{"message":"missing API key"}'],
    ];
    for (const [desc, path, headers, status, reason, body] of refusals) {
      test(`refused: ${desc}`, async (t) => {
        if (reason === "malformed_authorization" && desc.includes("misread")) {
          // SPEC §4 names `Bearer=k` malformed; keyfence's parser before the hardening pass reads it as no key.
          const direct = await send(`${suite.kf.decisionUrl}/`, { headers });
          if (direct.status !== 400) return t.skip("needs the strict credential syntax of SPEC §4");
        }
        const { r, seen } = await ask(path, headers);
        assert.equal(r.status, status, r.body);
        assert.equal(r.body, body, "keyfence's exact JSON body");
        assert.match(String(r.headers["content-type"]), /^application\/json/);
        assert.equal(r.headers["x-keyfence-reason"], reason);
        if (status === 401) assert.equal(r.headers["www-authenticate"], 'Bearer realm="keyfence"');
        assert.equal(seen.length, 0, "nothing reaches the upstream");
      });
    }

    test("route scopes: the method and path keyfence decides are the ingress's, never client-sent ones", async () => {
      // Each ingress sends one pair of headers; a client-sent copy of the other pair must count for nothing.
      const spoofs: Array<[string, string]> = [
        ["X-Forwarded-Method", "GET"],
        ["X-Forwarded-Uri", "/v1/public"],
        ["X-Original-Method", "GET"],
        ["X-Original-URI", "/v1/public"],
      ];
      const n = suite.up.seen.length;
      const r = await send(`${suite.url}/v1/admin/x`, {
        method: "POST",
        headers: [bearer("s_allowed"), ...spoofs],
        localAddress: CLIENT,
      });
      // An ingress that clears the pair it does not send (nginx) gets its own question decided; one that passes
      // the client's copy on (Caddy) gets both pairs, which disagree: refused as a malformed question.
      if (r.status === 400) {
        assert.equal(r.body, '{"message":"X-Forwarded-Method and X-Original-Method differ"}');
        assert.equal(r.headers["x-keyfence-reason"], "bad_request");
      } else {
        assert.equal(r.status, 403, r.body);
        assert.equal(r.body, '{"message":"API key lacks scope admin:write"}');
        assert.equal(r.headers["x-keyfence-reason"], "missing_scope");
      }
      assert.equal(suite.up.seen.length, n, "nothing reaches the upstream");
    });

    test("a key and the client address said after 2,100 other header lines still count", async () => {
      // The ingress passes every line on, Caddy sorted by name: these "B" lines come between Authorization and
      // X-Forwarded-For. Node reads only the first 2,000 lines unless told otherwise, so keyfence once decided
      // with the key but without the address, taking the ingress's own for the client's.
      const filler: Array<[string, string]> = Array.from({ length: 2_100 }, () => ["B", "1"]);
      for (const secret of ["s_denied", "s_ingress"]) {
        const { r, seen } = await ask("/v1/x", [...filler, bearer(secret)]);
        assert.ok(r.status >= 400 && r.status < 500, `${secret}: ${r.status} ${r.body.slice(0, 200)}`);
        assert.equal(seen.length, 0, `${secret}: nothing reaches the upstream`);
      }
    });

    test("ping: keyfence answers it, the upstream never sees it", async () => {
      const { r, seen } = await ask("/_keyfence/ping", [bearer("s_allowed")]);
      assert.equal(r.status, 200);
      assert.equal(r.body, '{"message":"pong"}');
      assert.equal(r.headers["x-keyfence-reason"], "pong");
      assert.equal(seen.length, 0);
    });

    test("ping: a client's own X-Forwarded-Uri or X-Original-URI does not change what is asked", async () => {
      for (const [name, value] of [
        ["X-Forwarded-Uri", "/v1/admin/x"],
        ["X-Forwarded-Method", "POST"],
        ["X-Original-URI", "/v1/admin/x"],
        ["X-Original-Method", "POST"],
      ] as const) {
        const { r, seen } = await ask("/_keyfence/ping", [bearer("s_allowed"), [name, value]]);
        assert.equal(r.body, '{"message":"pong"}', `${name}: ${r.status}`);
        assert.equal(seen.length, 0);
      }
    });

    test("identity: keyfence's scopes and sandbox flag reach the upstream, never a client-sent spelling", async () => {
      // Underscore spellings too: CGI, PHP and WSGI applications read X-Keyfence_Key-Id as X-Keyfence-Key-Id.
      const spoofs: Array<[string, string]> = [
        ["X-Keyfence-Key-Scopes", "admin"],
        ["x-keyfence-sandbox", "true"],
        ["X-KEYFENCE-KEY-ID", "k_forged"],
        ["X-Keyfence_Key-Id", "k_forged"],
        ["X_Keyfence_Key_Scopes", "admin"],
        ["X-Keyfence_Sandbox", "true"],
        ["x_keyfence-key-id", "k_forged"],
        // and PHP reads `.` as `_` too
        ["X.Keyfence.Key.Id", "k_forged"],
        ["x-keyfence.key-scopes", "admin"],
        // every other name keyfence uses
        ["X-Keyfence-Reason", "pong"],
        ["X-Keyfence-Message", "forged"],
        ["X-Keyfence-OTP", "123456"],
      ];
      const { r, seen } = await ask("/v1/x", [bearer("s_allowed"), ...spoofs]);
      assert.equal(r.status, 200, r.body);
      const h = seen[0]?.headers ?? {};
      assert.deepEqual(underscored(seen[0]?.rawHeaders), [], "no `_` or `.` spelling reaches the application");
      assert.equal(h["x-keyfence-key-id"], "k_allowed");
      assert.equal(h["x-keyfence-key-scopes"], "messages:send reports:read");
      assert.equal(h["x-keyfence-sandbox"], "false");
      const keyfence = Object.keys(h).filter((name) => name.startsWith("x-keyfence-"));
      assert.deepEqual(keyfence.sort(), ["x-keyfence-key-id", "x-keyfence-key-scopes", "x-keyfence-sandbox"]);
      const unknown = await ask("/v1/x", [bearer("nope"), ...spoofs]);
      const u = unknown.seen[0]?.headers ?? {};
      assert.deepEqual(underscored(unknown.seen[0]?.rawHeaders), []);
      for (const name of ["x-keyfence-key-id", "x-keyfence-key-scopes", "x-keyfence-sandbox"]) {
        assert.ok(!u[name], `${name}: ${String(u[name])}`);
      }
    });

    test("<ping_path>/ip: keyfence answers with the client address, the upstream never sees it", async () => {
      const { r, seen } = await ask("/_keyfence/ping/ip", [["X-Forwarded-For", "203.0.113.9"]]);
      assert.equal(r.status, 200, r.body);
      assert.deepEqual(JSON.parse(r.body), { ip: CLIENT });
      assert.equal(seen.length, 0);
    });

    test("the client's own claims of its address never reach the application", async () => {
      const { r, seen } = await ask("/v1/x", [
        bearer("s_allowed"),
        ["X-Real-IP", "203.0.113.9"],
        ["Forwarded", "for=203.0.113.9"],
        ["X_Real_IP", "203.0.113.9"],
        ["X-Real_IP", "203.0.113.9"],
        ["X_Forwarded_For", "203.0.113.9"],
        ["X-Forwarded_For", "203.0.113.9"],
        ["X.Real.IP", "203.0.113.9"],
        ["X.Forwarded.For", "203.0.113.9"],
        // Every other header the proxy listener drops from clients, in the case clients send it.
        ...[...CLIENT_ADDRESS_HEADERS]
          .filter((h) => h !== "x-real-ip" && h !== "forwarded")
          .map((h, i): [string, string] => [i % 2 ? h.toUpperCase() : h, "203.0.113.9"]),
      ]);
      assert.equal(r.status, 200, r.body);
      assert.equal(seen[0]?.headers["x-real-ip"], CLIENT);
      for (const h of CLIENT_ADDRESS_HEADERS) {
        if (h !== "x-real-ip") assert.equal(seen[0]?.headers[h], undefined, `${h} reached the application`);
      }
      assert.deepEqual(underscored(seen[0]?.rawHeaders), [], "no `_` or `.` spelling reaches the application");
    });

    test("unknown key (forwarded): no key id reaches the upstream, not even a client-sent one", async () => {
      const { r, seen } = await ask("/v1/x", [bearer("nope"), ["X-Keyfence-Key-Id", "k_allowed"]]);
      assert.equal(r.status, 200);
      assert.equal(seen.length, 1);
      assert.ok(!seen[0]?.headers["x-keyfence-key-id"], `got ${String(seen[0]?.headers["x-keyfence-key-id"])}`);
    });

    test("a 10 MB streamed upload arrives whole; keyfence never sees the body", async () => {
      const size = 10 * 1024 * 1024;
      const n = suite.up.seen.length;
      const before = suite.relay.bytesIn;
      const r = await upload(`${suite.url}/upload`, size, [bearer("s_allowed")]);
      assert.equal(r.status, 200, r.body);
      const seen = suite.up.seen.slice(n);
      assert.equal(seen.length, 1);
      assert.equal(seen[0]?.bodyBytes, size, "every byte arrives");
      assert.equal(seen[0]?.bodySha256, r.sha256, "unchanged");
      const asked = suite.relay.bytesIn - before;
      assert.ok(asked > 0 && asked < 4096, `keyfence got ${asked} bytes: the question, never the body`);
    });

    test("a denied upload is refused before its body is taken", async () => {
      const n = suite.up.seen.length;
      const before = suite.relay.bytesIn;
      const r = await upload(`${suite.url}/upload`, 10 * 1024 * 1024, [bearer("s_denied")]).catch((err: unknown) => {
        // The ingress may close the connection after its answer while the client still writes.
        if ((err as NodeJS.ErrnoException).code === "EPIPE" || (err as NodeJS.ErrnoException).code === "ECONNRESET")
          return undefined;
        throw err;
      });
      if (r !== undefined) {
        assert.equal(r.status, 403);
        assert.equal(r.body, DENIED_BODY);
      }
      assert.equal(suite.up.seen.length, n, "nothing reaches the upstream");
      assert.ok(suite.relay.bytesIn - before < 4096);
    });

    test("keyfence not answering: refused within seconds, never open", async () => {
      suite.relay.setStalled(true);
      try {
        const t0 = Date.now();
        const { r, seen } = await ask("/v1/messages", [bearer("s_allowed")]);
        assert.ok(r.status >= 500, `status ${r.status}`);
        assert.ok(Date.now() - t0 < 8_000, `answered after ${Date.now() - t0} ms`);
        assert.equal(seen.length, 0);
      } finally {
        suite.relay.setStalled(false);
      }
    });

    test("keyfence unreachable: closed, never open", async () => {
      suite.relay.setDown(true);
      try {
        const { r, seen } = await ask("/v1/messages", [bearer("s_allowed")]);
        assert.ok(r.status >= 500, `status ${r.status}`);
        assert.equal(seen.length, 0);
      } finally {
        suite.relay.setDown(false);
      }
    });
  });
}

// The shipped nginx file's optional decision cache ("#cache " lines switched on): what it reuses and what it never does.
{
  const bin = needBinary("nginx-light", "nginx");
  describe("nginx with deploy/ingress and its optional decision cache", { skip: bin.skip }, () => {
    const OTHER_CLIENT = "127.0.0.3";
    const suite = new IngressSuite(
      startCachedNginx(bin.path ?? "nginx"),
      { missing: "reject", unknown: "reject" },
      { trusted_proxies: ["127.0.0.1"], decision: { listen: "127.0.0.1:0" } },
    );
    const ask = suite.ask;

    /** Sends an allowed request until one is answered by keyfence (a fresh cache entry for it); fails after 10 s. */
    const prime = async (path: string, headers: Array<[string, string]> = [bearer("s_allowed")]): Promise<void> => {
      const end = Date.now() + 10_000;
      for (;;) {
        const { r, asked } = await ask(path, headers);
        assert.equal(r.status, 200, r.body);
        if (asked) return;
        if (Date.now() > end) throw new Error(`${path} never reached keyfence`);
        await new Promise((res) => setTimeout(res, 200));
      }
    };

    test("an allow is reused without asking keyfence, and still passes the key id it matched", async () => {
      // The TTL is 1-2 s: a pair straddling an expiry asks twice, so try a few pairs under load.
      let hit = false;
      for (let attempt = 0; attempt < 10 && !hit; attempt++) {
        await prime("/v1/cached?x=1");
        const { r, seen, asked } = await ask("/v1/cached?x=1", [
          bearer("s_allowed"),
          ["X-Keyfence-Key-Id", "k_forged"],
        ]);
        assert.equal(r.status, 200, r.body);
        assert.equal(seen.length, 1);
        assert.equal(seen[0]?.headers["x-keyfence-key-id"], "k_allowed", "keyfence's key id, from the cached answer");
        hit = !asked;
      }
      assert.ok(hit, "no second request within the TTL was served from the cache");
    });

    test("the TTL bounds staleness: a key narrowed in keyfence stops working within seconds", async () => {
      await prime("/v1/stale");
      suite.kf.writeKeys([{ id: "k_allowed", secret: "s_allowed", allow: ["203.0.113.0/24"] }, KEYS[1] as TestKey]);
      try {
        const changed = Date.now();
        let status = 200;
        while (status === 200 && Date.now() - changed < 15_000) {
          status = (await ask("/v1/stale", [bearer("s_allowed")])).r.status;
          if (status === 200) await new Promise((res) => setTimeout(res, 100));
        }
        assert.equal(status, 403, "still allowed 15 s after the change");
      } finally {
        suite.kf.writeKeys(KEYS);
        await eventually(
          async () => (await ask("/v1/back", [bearer("s_allowed")])).r.status === 200,
          15_000,
          "key back",
        );
      }
    });

    // Each refusal, asked twice in a row: never cached, so both are keyfence's and nothing reaches the upstream.
    const refusals: Array<[string, Array<[string, string]>, number, string]> = [
      ["denied key", [bearer("s_denied")], 403, DENIED_BODY],
      ["unknown key", [bearer("nope")], 401, '{"message":"invalid API key"}'],
      ["missing key", [], 401, '{"message":"missing API key"}'],
      [
        "malformed Authorization",
        [["Authorization", "Bearer a b"]],
        400,
        '{"message":"malformed Authorization header"}',
      ],
    ];
    for (const [desc, headers, status, body] of refusals) {
      test(`never cached: ${desc}`, async () => {
        for (let i = 0; i < 2; i++) {
          const { r, seen, asked } = await ask("/v1/refused", headers);
          assert.equal(r.status, status, r.body);
          assert.equal(r.body, body);
          assert.ok(asked, `request ${i + 1} was answered without asking keyfence`);
          assert.equal(seen.length, 0, "nothing reaches the upstream");
        }
      });
    }

    // After a fresh allow, every request differing in one thing keyfence decides on is asked again.
    const others: Array<[string, Array<[string, string]>, { from?: string; method?: string; path?: string }, number]> =
      [
        ["another client address, same key", [bearer("s_allowed")], { from: OTHER_CLIENT }, 403],
        ["another key, same address", [bearer("s_denied")], {}, 403],
        ["an unknown key, same address", [bearer("nope")], {}, 401],
        ["no key, same address", [], {}, 401],
        ["the same key spelled with a lowercase scheme", [["Authorization", "bearer s_allowed"]], {}, 200],
        ["the same key with a second Authorization line", [bearer("s_allowed"), bearer("s_denied")], {}, 400],
        ["another method", [bearer("s_allowed")], { method: "DELETE" }, 200],
        // Method overrides are methods to route_scopes: an allow for POST must not serve a claimed DELETE.
        ["a method override", [bearer("s_allowed"), ["X-HTTP-Method-Override", "DELETE"]], {}, 200],
        ["an X-HTTP-Method override", [bearer("s_allowed"), ["X-HTTP-Method", "DELETE"]], {}, 200],
        ["an X-Method-Override", [bearer("s_allowed"), ["X-Method-Override", "DELETE"]], {}, 200],
        ["another target", [bearer("s_allowed")], { path: "/v1/other" }, 200],
        ["another query", [bearer("s_allowed")], { path: "/v1/same?x=2" }, 200],
      ];
    for (const [desc, headers, opts, status] of others) {
      test(`a cached allow never serves ${desc}`, async () => {
        await prime("/v1/same?x=1");
        const { r, seen, asked } = await ask(opts.path ?? "/v1/same?x=1", headers, opts);
        assert.equal(r.status, status, r.body);
        // nginx refuses a repeated Authorization line itself (400), before any decision or cache.
        if (desc.includes("second Authorization")) assert.equal(seen.length, 0);
        else assert.ok(asked, "answered from another request's cache entry");
        assert.equal(seen.length, status === 200 ? 1 : 0);
      });
    }
  });
}

// The same cache with keys in the query and in Basic, keyless requests let through and route scopes: requests
// built so that the text of their cache key equals another's must never be served that other's allow.
{
  const bin = needBinary("nginx-light", "nginx");
  describe("nginx decision cache: a request built to share another's cache key", { skip: bin.skip }, () => {
    const { ask } = new IngressSuite(
      startCachedNginx(bin.path ?? "nginx"),
      {
        missing: "forward",
        unknown: "forward",
        credentials: ["bearer", { basic: "password" }, { query: "api_key" }],
      },
      {
        trusted_proxies: ["127.0.0.1"],
        decision: { listen: "127.0.0.1:0" },
        route_scopes: [{ path: "/v1/admin/*", scope: "admin:write" }],
      },
    );

    const basic = (secret: string): string => `Basic ${Buffer.from(`u:${secret}`).toString("base64")}`;
    // [what, the request that is allowed first, the request whose cache key text would equal it with "|" as the
    // separator, what keyfence answers that second request]
    const pairs: Array<
      [
        string,
        (n: number) => [string, Array<[string, string]>],
        (n: number) => [string, Array<[string, string]>],
        number,
      ]
    > = [
      [
        "a key in the query after a keyless allow",
        (n) => [`/v1/d${n}?z=`, [["Authorization", "&api_key=s_denied|"]]],
        (n) => [`/v1/d${n}?z=|&api_key=s_denied`, []],
        403,
      ],
      [
        "a Basic key after a keyless allow",
        (n) => [`/v1/d${n}?q=`, [["Authorization", `|${basic("s_denied")}`]]],
        (n) => [`/v1/d${n}?q=|`, [["Authorization", basic("s_denied")]]],
        403,
      ],
      [
        "a second query key after an allowed one",
        (n) => [`/v1/d${n}?api_key=s_allowed&z=`, [["Authorization", "x|&api_key=s_denied|"]]],
        (n) => [`/v1/d${n}?api_key=s_allowed&z=|x|&api_key=s_denied`, []],
        400,
      ],
      [
        "an override value cut elsewhere",
        (n) => [`/v1/d${n}`, [bearer("s_allowed"), ["X-HTTP-Method-Override", "GET,"], ["X-HTTP-Method", ""]]],
        (n) => [`/v1/d${n}`, [bearer("s_allowed"), ["X-HTTP-Method-Override", "GET"], ["X-HTTP-Method", ","]]],
        200,
      ],
    ];
    for (const [desc, firstOf, secondOf, status] of pairs) {
      test(`never served from another's entry: ${desc}`, async () => {
        for (let i = 0; i < 3; i++) {
          // A path of each round's own: an allowed second request is cached too, and must not answer the next round.
          const [firstTarget, firstHeaders] = firstOf(i);
          const [target, headers] = secondOf(i);
          const first = await ask(firstTarget, firstHeaders);
          assert.equal(first.r.status, 200, first.r.body);
          const { r, seen, asked } = await ask(target, headers);
          assert.ok(asked, "answered from another request's cache entry");
          assert.equal(r.status, status, r.body);
          assert.equal(seen.length, status === 200 ? 1 : 0);
        }
      });
    }

    test("an allow of no key is never cached", async () => {
      for (let i = 0; i < 2; i++) {
        const { r, asked } = await ask("/v1/keyless", []);
        assert.equal(r.status, 200, r.body);
        assert.ok(asked, `request ${i + 1} was answered without asking keyfence`);
      }
    });

    for (const name of ["X-Original-URL", "X-Rewrite-URL"]) {
      test(`${name}: a scoped path never rides an unscoped allow to the application`, async () => {
        for (let i = 0; i < 3; i++) {
          const first = await ask("/v1/public", [bearer("s_allowed")]);
          assert.equal(first.r.status, 200, first.r.body);
          const { r, seen } = await ask("/v1/public", [bearer("s_allowed"), [name, "/v1/admin/x"]]);
          // Cached or asked, the application never reads the override the key lacks the scope for.
          if (r.status === 200) {
            assert.equal(seen.length, 1);
            assert.equal(seen[0]?.headers[name.toLowerCase()], undefined, `${name} reached the application`);
          } else {
            assert.equal(r.status, 403, r.body);
            assert.equal(seen.length, 0);
          }
        }
      });
    }
  });
}

/** An application that switches to HTTP/2 whenever asked (`Upgrade: h2c`) and records every byte it gets. */
async function h2cApp(): Promise<{ port: number; received: () => string; close(): Promise<void> }> {
  const chunks: string[] = [];
  const server = createServer((sock) => {
    let head = "";
    let switched = false;
    sock.on("data", (d: Buffer) => {
      chunks.push(d.toString("latin1"));
      head += d.toString("latin1");
      const end = head.indexOf("\r\n\r\n");
      if (switched || end < 0) return;
      if (/\r\nupgrade:[^\r]*h2c/i.test(head.slice(0, end + 2))) {
        switched = true;
        sock.write("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n");
      } else sock.end("HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhttp/1");
    });
    sock.on("error", () => undefined);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    port: (server.address() as AddressInfo).port,
    received: () => chunks.join(""),
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

// h2c smuggling: after an application's 101 to `Upgrade: h2c`, every later request rides the tunnel undecided.
for (const [name, pkg, command, starter] of ingresses) {
  const bin = needBinary(pkg, command);
  describe(`${name} with deploy/ingress: no h2c upgrade reaches the application`, { skip: bin.skip }, () => {
    let app: Awaited<ReturnType<typeof h2cApp>>;
    let kf: TestSidecar;
    let ingress: Proc | undefined;
    let dir: string;
    let port: number;
    before(async () => {
      app = await h2cApp();
      kf = await startTestSidecar({
        upstream: `http://127.0.0.1:${String(app.port)}`,
        keys: KEYS,
        config: { trusted_proxies: ["127.0.0.1"], decision: { listen: "127.0.0.1:0" } },
      });
      dir = mkdtempSync(join(tmpdir(), `keyfence-${command}-h2c-`));
      port = await freePort();
      ingress = await starter(bin.path ?? command)(dir, port, kf.sidecar.decisionAddress?.port ?? 0, app.port);
    });
    after(async () => {
      await ingress?.stop();
      await kf.stop();
      await app.close();
      if (process.env["KEEP"] === undefined) rmSync(dir, { recursive: true, force: true });
    });

    for (const token of ["h2c", "H2C", "websocket, h2c"]) {
      test(`Upgrade: ${token}, then a request with a denied key: never tunnelled`, async () => {
        const before = app.received().length;
        const tag = `/smuggled/${String(Math.random()).slice(2)}`;
        const s = connect({ port, host: "127.0.0.1", localAddress: CLIENT });
        let got = "";
        s.on("data", (d: Buffer) => {
          got += d.toString("latin1");
          if (got.startsWith("HTTP/1.1 101"))
            s.write(`GET ${tag} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s_denied\r\n\r\n`);
        });
        s.on("error", () => undefined);
        s.write(
          `GET / HTTP/1.1\r\nHost: 127.0.0.1:${String(port)}\r\nAuthorization: Bearer s_allowed\r\n` +
            `Connection: Upgrade, HTTP2-Settings\r\nUpgrade: ${token}\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n`,
        );
        await new Promise((r) => setTimeout(r, 1000));
        s.destroy();
        assert.doesNotMatch(got, /^HTTP\/1\.1 101/, "no tunnel");
        assert.match(got, /^HTTP\/1\.1 200/);
        assert.equal(app.received().slice(before).includes(tag), false, "the second request reached the application");
      });
    }
  });
}

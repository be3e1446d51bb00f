/**
 * SPEC §7 over real sockets: hand-written PROXY headers from a listed peer
 * (127.0.0.1) and an unlisted one (127.0.0.2), and a real HAProxy in TCP mode
 * sending `send-proxy` and `send-proxy-v2` for IPv4 and IPv6 clients.
 */
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer as createNetServer, connect, type AddressInfo, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { needBinary } from "../helpers/binary.js";
import { bearer, send } from "../helpers/http.js";
import { eventually, sidecarFixture, startTestSidecar, type TestKey, type TestSidecar } from "../helpers/sidecar.js";

/** A key that works from nowhere near loopback: its 403 names the client IP keyfence resolved. */
const FAR: TestKey = { id: "k_far", secret: "s_far", allow: ["203.0.113.0/24"] };
const OPEN: TestKey = { id: "k_open", secret: "s_open", allow: [] };

const SIG = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);

/** A v2 PROXY TCP header for `src` (dotted IPv4 or full 8-group IPv6) written from the spec. */
function v2Header(src: string, sport = 4000): Buffer {
  const six = src.includes(":");
  const addr = six
    ? Buffer.concat([
        ...src.split(":").map((g) => Buffer.from([parseInt(g, 16) >> 8, parseInt(g, 16) & 255])),
        Buffer.alloc(15),
        Buffer.from([1]),
      ])
    : Buffer.from([...src.split(".").map(Number), 127, 0, 0, 1]);
  const ports = Buffer.from([sport >> 8, sport & 255, 0, 80]);
  const body = Buffer.concat([addr, ports]);
  return Buffer.concat([SIG, Buffer.from([0x21, six ? 0x21 : 0x11, 0, body.length]), body]);
}

const LOCAL_V2 = Buffer.concat([SIG, Buffer.from([0x20, 0x00, 0, 0])]);

function request(path: string, token: string): string {
  return `GET ${path} HTTP/1.1\r\nHost: kf\r\nAuthorization: Bearer ${token}\r\n\r\n`;
}

/** What a raw connection got back before it closed (or `ms` passed). */
interface Exchange {
  reply: string;
  closed: boolean;
  ms: number;
}

/** Connects from `localAddress`, writes each part (a small pause between parts), and reads until close or `waitMs`. */
async function exchange(
  url: string,
  localAddress: string,
  parts: Array<Buffer | string>,
  waitMs = 3000,
): Promise<Exchange> {
  const u = new URL(url);
  const s: Socket = connect({ host: u.hostname, port: Number(u.port), localAddress });
  s.on("error", () => undefined);
  await new Promise<void>((r) => s.once("connect", () => r()));
  const t0 = performance.now();
  let reply = "";
  s.on("data", (d: Buffer) => (reply += d.toString("latin1")));
  const closed = new Promise<boolean>((r) => {
    const t = setTimeout(() => r(false), waitMs);
    s.once("close", () => {
      clearTimeout(t);
      r(true);
    });
  });
  for (const [i, p] of parts.entries()) {
    if (i > 0) await new Promise((r) => setTimeout(r, 20));
    if (!s.destroyed) s.write(p);
  }
  const wasClosed = await closed;
  s.destroy();
  return { reply, closed: wasClosed, ms: performance.now() - t0 };
}

/** Two connections from 127.0.0.1 to `kf`, each opened with its PROXY header line and held open, once `kf` counts both. */
async function holdTwo(kf: TestSidecar, first: string, second: string): Promise<Socket[]> {
  const u = new URL(kf.url);
  const held: Socket[] = [];
  for (const line of [first, second]) {
    const s = connect({ host: u.hostname, port: Number(u.port), localAddress: "127.0.0.1" });
    s.on("error", () => undefined);
    await new Promise<void>((r) => s.once("connect", () => r()));
    s.write(`${line}\r\n`);
    held.push(s);
  }
  await eventually(async () => {
    const m = await kf.sidecar.registry.getSingleMetricAsString("keyfence_open_connections");
    return / 2$/m.test(m);
  });
  return held;
}

function body(x: Exchange): string {
  return x.reply.slice(x.reply.indexOf("\r\n\r\n") + 4);
}

describe("PROXY protocol: hand-written headers", () => {
  const fx = sidecarFixture((up) =>
    startTestSidecar({
      upstream: up.url,
      keys: [FAR, OPEN],
      config: { proxy_protocol: ["127.0.0.1"], limits: { connections_per_peer: 2 } },
    }),
  );
  const denied = (ip: string): string => `{"message":"source IP ${ip} is not allowed for this API key"}`;

  test("v1 TCP4 from a listed peer: its source is the client", async () => {
    const x = await exchange(
      fx.kf.url,
      "127.0.0.1",
      [`PROXY TCP4 192.0.2.7 127.0.0.1 5000 80\r\n${request("/x", "s_far")}`],
      500,
    );
    assert.match(x.reply, /^HTTP\/1\.1 403 /);
    assert.equal(body(x), denied("192.0.2.7"));
  });

  test("v2 TCP6, split over several writes: its source is the client", async () => {
    const h = v2Header("2001:db8:0:0:0:0:0:7");
    const x = await exchange(
      fx.kf.url,
      "127.0.0.1",
      [h.subarray(0, 5), h.subarray(5, 20), h.subarray(20), request("/x", "s_far")],
      500,
    );
    assert.match(x.reply, /^HTTP\/1\.1 403 /);
    assert.equal(body(x), denied("2001:db8::7"));
  });

  test("the source replaces the socket address in X-Forwarded-For and logs, for every request on the connection", async () => {
    const n = fx.up.seen.length;
    const x = await exchange(
      fx.kf.url,
      "127.0.0.1",
      [`PROXY TCP4 198.51.100.23 127.0.0.1 5000 80\r\n${request("/one", "s_open")}${request("/two", "s_far")}`],
      800,
    );
    assert.equal(fx.up.seen.length, n + 1);
    assert.equal(fx.up.seen[n]?.headers["x-forwarded-for"], "198.51.100.23");
    assert.ok(x.reply.includes(denied("198.51.100.23")), x.reply);
    const line = fx.kf.logs.find((l) => l["event"] === "denied" && l["client_ip"] === "198.51.100.23");
    assert.equal(line?.["peer_ip"], "198.51.100.23");
  });

  test("v1 UNKNOWN and v2 LOCAL keep the socket address", async () => {
    for (const header of [Buffer.from("PROXY UNKNOWN\r\n"), Buffer.from("PROXY UNKNOWN ::1 ::2 1 2\r\n"), LOCAL_V2]) {
      const x = await exchange(
        fx.kf.url,
        "127.0.0.1",
        [Buffer.concat([header, Buffer.from(request("/x", "s_far"))])],
        500,
      );
      assert.equal(body(x), denied("127.0.0.1"), JSON.stringify(header.toString("latin1")));
    }
  });

  test("missing, malformed or truncated header from a listed peer: closed without an answer", async () => {
    const cases: Array<[string, Array<Buffer | string>]> = [
      ["plain HTTP", [request("/x", "s_open")]],
      ["lower-case proxy", [`proxy TCP4 192.0.2.7 127.0.0.1 5000 80\r\n${request("/x", "s_open")}`]],
      ["LF only", [`PROXY TCP4 192.0.2.7 127.0.0.1 5000 80\n${request("/x", "s_open")}`]],
      ["leading zero", [`PROXY TCP4 192.0.2.07 127.0.0.1 5000 80\r\n${request("/x", "s_open")}`]],
      ["IPv6 under TCP4", [`PROXY TCP4 ::1 ::1 5000 80\r\n${request("/x", "s_open")}`]],
      ["v2 version 1", [Buffer.concat([SIG, Buffer.from([0x11, 0x11, 0, 12]), Buffer.alloc(12)])]],
      ["v2 too short for TCP4", [Buffer.concat([SIG, Buffer.from([0x21, 0x11, 0, 4]), Buffer.alloc(4)])]],
    ];
    const n = fx.up.seen.length;
    for (const [desc, parts] of cases) {
      const x = await exchange(fx.kf.url, "127.0.0.1", parts, 2000);
      assert.equal(x.closed, true, `${desc}: closed`);
      assert.equal(x.reply, "", `${desc}: no answer`);
      assert.ok(x.ms < 1000, `${desc}: closed at once (${Math.round(x.ms)} ms)`);
    }
    // Truncated: half a header, then the client closes its side.
    const u = new URL(fx.kf.url);
    const s = connect({ host: u.hostname, port: Number(u.port), localAddress: "127.0.0.1" });
    s.on("error", () => undefined);
    let reply = "";
    s.on("data", (d: Buffer) => (reply += d.toString()));
    s.end(v2Header("192.0.2.7").subarray(0, 20));
    await new Promise((r) => s.once("close", r));
    assert.equal(reply, "");
    assert.equal(fx.up.seen.length, n, "nothing reached the upstream");
    assert.ok(fx.kf.logs.some((l) => l["event"] === "proxy_protocol_error" && l["kind"] === "invalid"));
  });

  test("a listed peer that resets mid-header, or before any byte, is dropped; keyfence keeps serving", async () => {
    const u = new URL(fx.kf.url);
    const partials: Array<Buffer | string> = [
      "",
      "PROXY TCP4 1.2",
      "PROXY TCP4 203.0.113.7 127.0.0.1 4000 80",
      SIG.subarray(0, 5),
      v2Header("203.0.113.7").subarray(0, 20),
    ];
    for (const part of partials) {
      for (const ms of [0, 20]) {
        const s: Socket = connect({ host: u.hostname, port: Number(u.port), localAddress: "127.0.0.1" });
        s.on("error", () => undefined);
        await new Promise<void>((r) => s.once("connect", () => r()));
        if (part.length > 0) s.write(part);
        if (ms > 0) await new Promise((r) => setTimeout(r, ms));
        s.resetAndDestroy();
        await new Promise((r) => s.once("close", r));
      }
    }
    await new Promise((r) => setTimeout(r, 50));
    const x = await exchange(
      fx.kf.url,
      "127.0.0.1",
      ["PROXY TCP4 203.0.113.7 127.0.0.1 4000 80\r\n", request("/x", "s_far")],
      500,
    );
    assert.match(x.reply, /^HTTP\/1\.1 200 /);
  });

  test("slow header: closed without an answer after 5 s", async () => {
    const x = await exchange(fx.kf.url, "127.0.0.1", ["PROXY TCP4 192.0.2.7 "], 8000);
    assert.equal(x.closed, true);
    assert.equal(x.reply, "");
    assert.ok(x.ms >= 4900 && x.ms < 7000, `closed after ${Math.round(x.ms)} ms`);
  });

  test("a PROXY header from a peer not listed is malformed HTTP: 400", async () => {
    for (const header of [Buffer.from("PROXY TCP4 192.0.2.7 127.0.0.1 5000 80\r\n"), v2Header("192.0.2.7")]) {
      const x = await exchange(
        fx.kf.url,
        "127.0.0.2",
        [Buffer.concat([header, Buffer.from(request("/x", "s_far"))])],
        2000,
      );
      assert.match(x.reply, /^HTTP\/1\.1 400 /);
      assert.equal(body(x), '{"message":"malformed HTTP request"}');
    }
    // Plain HTTP from it works as always.
    const r = await send(`${fx.kf.url}/x`, { headers: [bearer("s_far")], localAddress: "127.0.0.2" });
    assert.equal(r.body, denied("127.0.0.2"));
  });

  test("connections_per_peer counts the PROXY source, not the balancer", async () => {
    const held = await holdTwo(
      fx.kf,
      "PROXY TCP4 192.0.2.50 127.0.0.1 5000 80",
      "PROXY TCP4 192.0.2.50 127.0.0.1 5000 80",
    );
    try {
      const third = await exchange(
        fx.kf.url,
        "127.0.0.1",
        [`PROXY TCP4 192.0.2.50 127.0.0.1 5000 80\r\n${request("/x", "s_far")}`],
        2000,
      );
      assert.equal(third.closed, true);
      assert.equal(third.reply, "", "the third connection of 192.0.2.50 is closed");
      const other = await exchange(
        fx.kf.url,
        "127.0.0.1",
        [`PROXY TCP4 192.0.2.51 127.0.0.1 5000 80\r\n${request("/x", "s_far")}`],
        500,
      );
      assert.equal(body(other), denied("192.0.2.51"), "another source through the same balancer gets in");
      assert.ok(fx.kf.logs.some((l) => l["event"] === "limited" && l["client_ip"] === "192.0.2.50"));
    } finally {
      for (const s of held) s.destroy();
    }
  });

  test("an IPv6 client counts per /64: other addresses of its /64 share its connections", async () => {
    const held = await holdTwo(
      fx.kf,
      "PROXY TCP6 2001:db8:1:1::1 ::1 5000 80",
      "PROXY TCP6 2001:db8:1:1:ffff:ffff:ffff:ffff ::1 5000 80",
    );
    try {
      for (const src of ["2001:db8:1:1::2", "2001:db8:1:1:abcd::9", "2001:db8:1:1::1"]) {
        const x = await exchange(
          fx.kf.url,
          "127.0.0.1",
          [`PROXY TCP6 ${src} ::1 5000 80\r\n${request("/x", "s_far")}`],
          2000,
        );
        assert.equal(x.reply, "", `${src}: a third connection of 2001:db8:1:1::/64 is closed`);
      }
      for (const src of ["2001:db8:1:2::1", "2001:db8:1:0:ffff:ffff:ffff:ffff"]) {
        const x = await exchange(
          fx.kf.url,
          "127.0.0.1",
          [`PROXY TCP6 ${src} ::1 5000 80\r\n${request("/x", "s_far")}`],
          500,
        );
        assert.equal(body(x), denied(src), `${src}, in another /64, gets in`);
      }
    } finally {
      for (const s of held) s.destroy();
    }
  });
});

describe("PROXY protocol: configuration", () => {
  test("entries compiled like trusted_proxies; a catch-all warns", async () => {
    const { parseConfig } = await import("../../src/config/config.js");
    const { formatProblem } = await import("../../src/util/yaml.js");
    const base = 'upstream: "http://127.0.0.1:3000"\nkeys:\n  file: keys.yaml\n';
    const bad = parseConfig("/k.yaml", `${base}proxy_protocol: [loopback, 10.0.0.1/8, lan]\n`);
    assert.equal(bad.ok, false);
    const p = bad.ok ? [] : bad.problems.map(formatProblem);
    assert.equal(p.length, 2, p.join("\n"));
    assert.match(p[0] ?? "", /proxy_protocol\[1\] \("10\.0\.0\.1\/8"\): host bits are set/);
    assert.match(p[1] ?? "", /proxy_protocol\[2\] \("lan"\): unknown name/);
    const notList = parseConfig("/k.yaml", `${base}proxy_protocol: 1\n`);
    assert.equal(notList.ok, false);
    const ok = parseConfig("/k.yaml", `${base}proxy_protocol: [loopback, "0.0.0.0/0"]\n`);
    assert.ok(ok.ok);
    assert.match(ok.config.warnings.join("\n"), /proxy_protocol lists every address/);
    const none = parseConfig("/k.yaml", base);
    assert.ok(none.ok && none.config.proxyProtocol.none);
  });

  test("a hop count beside proxy_protocol warns: the PROXY header's source would be trusted as a proxy", async () => {
    const { parseConfig } = await import("../../src/config/config.js");
    const base = 'upstream: "http://127.0.0.1:3000"\nkeys:\n  file: keys.yaml\n';
    const cases: Array<[string, boolean]> = [
      ["proxy_protocol: [127.0.0.1]\ntrusted_proxies: 1\n", true],
      ["proxy_protocol: [loopback, 10.0.0.0/8]\ntrusted_proxies: 3\n", true],
      ["proxy_protocol: [127.0.0.1]\ntrusted_proxies: 0\n", false],
      ["proxy_protocol: [127.0.0.1]\ntrusted_proxies: [127.0.0.1]\n", false],
      ["proxy_protocol: []\ntrusted_proxies: 1\n", false],
      ["trusted_proxies: 2\n", false],
    ];
    for (const [yaml, warns] of cases) {
      const r = parseConfig("/k.yaml", `${base}${yaml}`);
      assert.ok(r.ok, yaml);
      assert.equal(
        /with proxy_protocol trusts the address the PROXY header names/.test(r.config.warnings.join("\n")),
        warns,
        yaml,
      );
    }
  });
});

async function freePort(host: string): Promise<number> {
  const srv = createNetServer();
  await new Promise<void>((r) => srv.listen(0, host, r));
  const port = (srv.address() as AddressInfo).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

describe("PROXY protocol: behind a real HAProxy in TCP mode", () => {
  const haproxy = needBinary("haproxy", "haproxy");
  const fx = sidecarFixture((up) =>
    startTestSidecar({ upstream: up.url, keys: [FAR, OPEN], config: { proxy_protocol: ["loopback"] } }),
  );
  let child: ChildProcess | undefined;
  let dir = "";
  const fronts: Record<string, string> = {};
  before(async () => {
    if (haproxy.path === undefined) return;
    dir = mkdtempSync(join(tmpdir(), "keyfence-haproxy-"));
    const kfPort = new URL(fx.kf.url).port;
    const lines = [
      "global",
      "  maxconn 200",
      "defaults",
      "  mode tcp",
      "  timeout connect 5s",
      "  timeout client 30s",
      "  timeout server 30s",
      "backend v1",
      `  server kf 127.0.0.1:${kfPort} send-proxy`,
      "backend v2",
      `  server kf 127.0.0.1:${kfPort} send-proxy-v2`,
    ];
    for (const [name, host, backend] of [
      ["v1-ipv4", "127.0.0.1", "v1"],
      ["v2-ipv4", "127.0.0.1", "v2"],
      ["v1-ipv6", "::1", "v1"],
      ["v2-ipv6", "::1", "v2"],
    ] as const) {
      const port = await freePort(host);
      fronts[name] = host.includes(":") ? `http://[${host}]:${port}` : `http://${host}:${port}`;
      lines.push(
        `frontend ${name}`,
        `  bind ${host.includes(":") ? `[${host}]` : host}:${port}`,
        `  default_backend ${backend}`,
      );
    }
    const cfg = join(dir, "haproxy.cfg");
    writeFileSync(cfg, `${lines.join("\n")}\n`);
    child = spawn(haproxy.path, ["-f", cfg, "-db"], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout?.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr?.on("data", (d: Buffer) => (out += d.toString()));
    await eventually(
      async () => {
        try {
          await send(`${fronts["v2-ipv6"] ?? ""}/`, { timeoutMs: 500 });
          return true;
        } catch {
          return false;
        }
      },
      15_000,
      `haproxy listening (${out})`,
    );
  });
  after(() => {
    child?.kill("SIGKILL");
    if (dir !== "") rmSync(dir, { recursive: true, force: true });
  });

  for (const [front, from, expected] of [
    ["v1-ipv4", "127.0.0.5", "127.0.0.5"],
    ["v2-ipv4", "127.0.0.6", "127.0.0.6"],
    ["v1-ipv6", "::1", "::1"],
    ["v2-ipv6", "::1", "::1"],
  ] as const) {
    test(
      `${front}: the client behind HAProxy is the one decided on and forwarded`,
      { skip: haproxy.skip },
      async () => {
        const url = fronts[front] ?? "";
        const r = await send(`${url}/x`, { headers: [bearer("s_far")], localAddress: from });
        assert.equal(r.status, 403);
        assert.equal(r.body, `{"message":"source IP ${expected} is not allowed for this API key"}`);
        const n = fx.up.seen.length;
        const ok = await send(`${url}/forwarded`, { headers: [bearer("s_open")], localAddress: from });
        assert.equal(ok.status, 200);
        assert.equal(fx.up.seen[n]?.headers["x-forwarded-for"], expected);
        const ip = await send(`${url}/_keyfence/ping`, { headers: [bearer("s_open")], localAddress: from });
        assert.equal(ip.status, 200);
      },
    );
  }
});

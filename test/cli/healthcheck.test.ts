/** `keyfence healthcheck`: follows the configured addresses, tells keyfence from anything else on the port. */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { healthcheck, healthTarget } from "../../src/cli/healthcheck.js";
import { parseConfig, type Config } from "../../src/config/config.js";
import { startTestSidecar, type TestSidecar } from "../helpers/sidecar.js";
import { BIN } from "../helpers/spawn.js";

function config(yaml: string, env: NodeJS.ProcessEnv = {}): Config {
  const r = parseConfig(
    "/etc/keyfence/keyfence.yaml",
    `upstream: "http://127.0.0.1:9"\nkeys: {file: keys.yaml}\n${yaml}`,
    env,
  );
  if (!r.ok) throw new Error(JSON.stringify(r.problems));
  return r.config;
}

/** Runs the real CLI (asynchronously: the server it asks lives in this process). */
function cli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      env: { ...process.env, KEYFENCE_CONFIG: "", KEYFENCE_ADMIN_LISTEN: "", KEYFENCE_LISTEN: "", ...env },
      stdio: ["ignore", "pipe", "pipe"],
      timeout: 20_000,
    });
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (out += d.toString()));
    child.on("exit", (code) => resolve({ code, out }));
  });
}

function listen(handler: Parameters<typeof createServer>[1]): Promise<{ server: Server; port: number }> {
  const server = createServer(handler);
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => resolve({ server, port: (server.address() as AddressInfo).port }));
  });
}

describe("healthcheck target", () => {
  const cases: Array<[string, NodeJS.ProcessEnv, string]> = [
    ['admin: {listen: "127.0.0.1:9090"}', {}, "http://127.0.0.1:9090/healthz"],
    ['admin: {listen: "0.0.0.0:9191"}', {}, "http://127.0.0.1:9191/healthz"],
    ['admin: {listen: "[::]:9090"}', {}, "http://[::1]:9090/healthz"],
    ['admin: {listen: "[::1]:9090"}', {}, "http://[::1]:9090/healthz"],
    ['admin: {listen: "10.1.2.3:9090"}', {}, "http://10.1.2.3:9090/healthz"],
    ['admin: {listen: "localhost:9090"}', {}, "http://localhost:9090/healthz"],
    ['admin: {listen: "127.0.0.1:9090"}', { KEYFENCE_ADMIN_LISTEN: "0.0.0.0:7000" }, "http://127.0.0.1:7000/healthz"],
    ['listen: "0.0.0.0:8080"', {}, "http://127.0.0.1:8080/_keyfence/ping"],
    ['listen: "[::]:8080"\nping_path: /-/ping', {}, "http://[::1]:8080/-/ping"],
    ["", { KEYFENCE_LISTEN: "0.0.0.0:8181" }, "http://127.0.0.1:8181/_keyfence/ping"],
  ];
  for (const [yaml, env, url] of cases) {
    test(`${yaml.replace(/\n/g, "; ") || "(defaults)"} ${JSON.stringify(env)} -> ${url}`, () => {
      assert.equal(healthTarget(config(yaml, env)).url, url);
    });
  }
});

describe("keyfence healthcheck", () => {
  let dir: string;
  let withAdmin: TestSidecar;
  let noAdmin: TestSidecar;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "keyfence-health-"));
    writeFileSync(join(dir, "keys.yaml"), "keys: []\n");
    withAdmin = await startTestSidecar({ upstream: "http://127.0.0.1:9", keys: [] });
    noAdmin = await startTestSidecar({ upstream: "http://127.0.0.1:9", keys: [], admin: false });
  });
  after(async () => {
    await withAdmin.stop();
    await noAdmin.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  const write = (name: string, yaml: string): string => {
    const file = join(dir, name);
    writeFileSync(file, `upstream: "http://127.0.0.1:9"\nkeys: {file: keys.yaml}\n${yaml}`);
    return file;
  };
  const port = (url: string): string => new URL(url).port;

  test("asks the admin listener's /healthz: exit 0", async () => {
    const file = write("admin.yaml", `admin: {listen: "0.0.0.0:${port(withAdmin.adminUrl)}"}\n`);
    const r = await cli(["healthcheck", "--config", file]);
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, new RegExp(`healthy: http://127\\.0\\.0\\.1:${port(withAdmin.adminUrl)}/healthz answered 200`));
  });

  test("follows KEYFENCE_ADMIN_LISTEN as serve does", async () => {
    const file = write("admin-env.yaml", 'admin: {listen: "127.0.0.1:1"}\n');
    const r = await cli(["healthcheck", "--config", file], {
      KEYFENCE_ADMIN_LISTEN: `127.0.0.1:${port(withAdmin.adminUrl)}`,
    });
    assert.equal(r.code, 0, r.out);
  });

  test("without an admin section asks the proxy's ping path, which keyfence answers itself", async () => {
    const file = write("proxy.yaml", `listen: "0.0.0.0:${port(noAdmin.url)}"\n`);
    const r = await cli(["healthcheck", "--config", file]);
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /\/_keyfence\/ping answered 401 \(missing_api_key\)/);
  });

  test("nothing listening: exit 1 naming the address", async () => {
    const closed = await listen(() => undefined);
    const p = closed.port;
    await new Promise((r) => closed.server.close(r));
    const file = write("down.yaml", `admin: {listen: "127.0.0.1:${p}"}\n`);
    const r = await cli(["healthcheck", "--config", file]);
    assert.equal(r.code, 1, r.out);
    assert.match(r.out, new RegExp(`unhealthy: http://127\\.0\\.0\\.1:${p}/healthz: ECONNREFUSED`));
  });

  test("a bad configuration: exit 1 with its errors, nothing asked", async () => {
    const file = write("bad.yaml", "admin: {listen: nowhere}\n");
    const r = await cli(["healthcheck", "--config", file]);
    assert.equal(r.code, 1, r.out);
    assert.match(r.out, /admin\.listen/);
  });

  test("something else on the port is not keyfence", async () => {
    const other = await listen((_req, res) => res.writeHead(200).end("hello"));
    const failing = await listen((_req, res) => res.writeHead(503).end());
    try {
      const viaProxy = await healthcheck(config(`listen: "127.0.0.1:${other.port}"`));
      assert.equal(viaProxy.healthy, false);
      assert.match(viaProxy.message, /answered 200 without x-keyfence-reason/);
      const viaAdmin = await healthcheck(config(`admin: {listen: "127.0.0.1:${failing.port}"}`));
      assert.deepEqual(viaAdmin, {
        healthy: false,
        message: `unhealthy: http://127.0.0.1:${failing.port}/healthz answered 503`,
      });
    } finally {
      other.server.close();
      failing.server.close();
    }
  });

  test("a listener that never answers: unhealthy after the timeout", async () => {
    const silent = await listen(() => undefined);
    try {
      const r = await healthcheck(config(`admin: {listen: "127.0.0.1:${silent.port}"}`), 200);
      assert.deepEqual(r, {
        healthy: false,
        message: `unhealthy: http://127.0.0.1:${silent.port}/healthz: no answer within 200 ms`,
      });
    } finally {
      silent.server.closeAllConnections();
      silent.server.close();
    }
  });
});

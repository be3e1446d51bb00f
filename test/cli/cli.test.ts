/** SPEC §1 through the real `keyfence` executable. */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { bearer, send } from "../helpers/http.js";
import { eventually, keysYaml } from "../helpers/sidecar.js";
import { BIN, spawnKeyfence } from "../helpers/spawn.js";
import { startUpstream, type Upstream } from "../helpers/upstream.js";

const ROOT = resolve(fileURLToPath(import.meta.url), "../../../..");

function run(args: string[], opts: { input?: string; env?: NodeJS.ProcessEnv; cwd?: string } = {}) {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    input: opts.input,
    env: { ...process.env, KEYFENCE_CONFIG: "", ...opts.env },
    cwd: opts.cwd ?? ROOT,
    encoding: "utf8",
    timeout: 20_000,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe("keyfence CLI", () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), "keyfence-cli-"));
    writeFileSync(join(dir, "keys.yaml"), keysYaml([{ id: "k1", secret: "s1", allow: ["127.0.0.1"] }]));
    writeFileSync(
      join(dir, "good.yaml"),
      'listen: "127.0.0.1:0"\nupstream: "http://127.0.0.1:9"\nkeys:\n  file: keys.yaml\n',
    );
    writeFileSync(
      join(dir, "bad.yaml"),
      'listen: "127.0.0.1:0"\nupstream: "http://127.0.0.1:9"\ntrusted_proxies: [10.0.0.1/8]\nkeys:\n  file: keys.yaml\n  unknown: maybe\n',
    );
    writeFileSync(join(dir, "badkeys.yaml"), "keys:\n  - id: k1\n    secret_sha256: x\n    ip_allow_list: [1.2.3]\n");
    writeFileSync(join(dir, "uses-badkeys.yaml"), 'upstream: "http://127.0.0.1:9"\nkeys:\n  file: badkeys.yaml\n');
    writeFileSync(join(dir, "nokeys.yaml"), 'upstream: "http://127.0.0.1:9"\nkeys:\n  file: missing.yaml\n');
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  test("check-config: valid configuration prints a summary, exit 0", () => {
    const r = run(["check-config", "--config", join(dir, "good.yaml")]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /good\.yaml: OK/);
    assert.match(r.stdout, /: 1 key, 1 restricted, 1 allow-list entry$/m);
    assert.equal(r.stderr, "");
  });

  test("check-config: the bundled example is valid", () => {
    const r = run(["check-config", "--config", "config/keyfence.yaml"]);
    assert.equal(r.code, 0, r.stderr);
  });

  test('check-config: every error with FILE:LINE:COL: PATH ("VALUE"): MESSAGE, exit 1', () => {
    const r = run(["check-config", "--config", join(dir, "bad.yaml")]);
    assert.equal(r.code, 1);
    const lines = r.stderr.trim().split("\n");
    assert.equal(lines.length, 2, r.stderr);
    assert.match(
      lines[0]!,
      /bad\.yaml:3:19: trusted_proxies\[0\] \("10\.0\.0\.1\/8"\): host bits are set; did you mean 10\.0\.0\.0\/8\?$/,
    );
    assert.match(lines[1]!, /bad\.yaml:6:12: keys\.unknown \("maybe"\): must be "forward" or "reject"$/);
    assert.equal(r.stdout, "");
  });

  test("check-config: errors in the keys file, exit 1", () => {
    const r = run(["check-config", "--config", join(dir, "uses-badkeys.yaml")]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /badkeys\.yaml:3:20: keys\[0\]\.secret_sha256: must be 64 lowercase hex/);
    assert.match(
      r.stderr,
      /badkeys\.yaml:4:21: keys\[0\]\.ip_allow_list\[0\] \("1\.2\.3"\): an IPv4 address has exactly four decimal parts/,
    );
  });

  test("check-config: a missing keys file is an error", () => {
    const r = run(["check-config", "--config", join(dir, "nokeys.yaml")]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /missing\.yaml:1:1: cannot read the keys file/);
  });

  test("KEYFENCE_CONFIG names the file; --config wins over it", () => {
    assert.equal(run(["check-config"], { env: { KEYFENCE_CONFIG: join(dir, "good.yaml") } }).code, 0);
    assert.equal(
      run(["check-config", "--config", join(dir, "bad.yaml")], { env: { KEYFENCE_CONFIG: join(dir, "good.yaml") } })
        .code,
      1,
    );
    assert.equal(
      run(["check-config", "--config", join(dir, "good.yaml")], { env: { KEYFENCE_CONFIG: join(dir, "bad.yaml") } })
        .code,
      0,
    );
  });

  test("hash-key: argument or stdin (one trailing newline removed)", () => {
    const expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n";
    assert.equal(run(["hash-key", "abc"]).stdout, expected);
    assert.equal(run(["hash-key"], { input: "abc\n" }).stdout, expected);
    assert.equal(run(["hash-key"], { input: "abc" }).stdout, expected);
    assert.notEqual(run(["hash-key"], { input: "abc\n\n" }).stdout, expected, "only one newline is removed");
  });

  test("serve: a bad configuration stops it before listening, exit 1, file:line", () => {
    const r = run(["serve", "--config", join(dir, "bad.yaml")]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /bad\.yaml:3:19:/);
    const k = run(["--config", join(dir, "uses-badkeys.yaml")]);
    assert.equal(k.code, 1, "serve is the default command");
    assert.match(k.stderr, /badkeys\.yaml:4:21:/);
    assert.equal(run(["serve", "--config", join(dir, "nokeys.yaml")]).code, 1);
    const viaEnv = run(["serve"], { env: { KEYFENCE_CONFIG: join(dir, "bad.yaml") } });
    assert.equal(viaEnv.code, 1, "KEYFENCE_CONFIG names the file for serve too");
    assert.match(viaEnv.stderr, /bad\.yaml:3:19:/);
  });

  test("unknown command or option: usage, exit 2", () => {
    assert.equal(run(["frobnicate"]).code, 2);
    assert.equal(run(["--frob"]).code, 2);
  });
});

describe("keyfence serve: start-up log and SIGTERM drain", () => {
  let up: Upstream;
  let dir: string;
  before(async () => {
    up = await startUpstream();
    dir = mkdtempSync(join(tmpdir(), "keyfence-serve-"));
    writeFileSync(join(dir, "keys.yaml"), keysYaml([{ id: "k1", secret: "s1", allow: ["127.0.0.1"] }]));
    writeFileSync(
      join(dir, "keyfence.yaml"),
      `listen: "127.0.0.1:0"\nupstream: "${up.url}"\ndrain_timeout_ms: 5000\nkeys:\n  file: keys.yaml\nadmin:\n  listen: "127.0.0.1:0"\n`,
    );
  });
  after(async () => {
    await up.close();
    rmSync(dir, { recursive: true, force: true });
  });

  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    test(`${signal}: stops accepting, the slow in-flight request completes, exit 0`, async () => {
      const kf = await spawnKeyfence(join(dir, "keyfence.yaml"));
      const { child, exited } = kf;
      const port = new URL(kf.proxy).port;
      assert.match(kf.output(), /listening on http:\/\/127\.0\.0\.1:\d+, admin on http:\/\/127\.0\.0\.1:\d+/);
      assert.match(kf.output(), /"keys_store":"[^"]*keys\.yaml"/);
      const seenBefore = up.seen.length;
      const inflight = send(`http://127.0.0.1:${port}/slow/700`, { headers: [bearer("s1")] });
      // Signal only once the request is in flight (the upstream holds it for 700 ms).
      await eventually(
        () => up.seen.slice(seenBefore).some((s) => s.url === "/slow/700"),
        10_000,
        "the request at the upstream",
      );
      child.kill(signal);
      const reply = await inflight;
      assert.equal(reply.status, 200);
      assert.equal(reply.body, "slow");
      assert.equal(await exited, 0);
      await assert.rejects(
        send(`http://127.0.0.1:${port}/x`, { headers: [bearer("s1")], timeoutMs: 1000 }),
        "no longer accepting",
      );
      assert.match(kf.output(), /"event":"draining"/);
    });
  }
});

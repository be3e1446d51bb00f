/**
 * With an admin listener, `serve` refuses to start when it could not write
 * the keys directory, naming the uid that needs write access. Runs the real
 * CLI as a user that really lacks the access: uid 65534 (nobody) when the
 * tests run as root (root writes anywhere), else this user on a 0555
 * directory.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { chmodSync, chownSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { keysDirProblem } from "../../src/cli/preflight.js";
import { parseConfig } from "../../src/config/config.js";
import { keysYaml } from "../helpers/sidecar.js";
import { BIN } from "../helpers/spawn.js";

const ROOT = process.getuid?.() === 0;
/** The uid the child runs as, and which the message must name. */
const UID = ROOT ? 65534 : (process.getuid?.() ?? 0);

/** Runs `keyfence serve` as UID until it exits or prints its start-up line (then stops it). */
function serve(config: string): Promise<{ code: number | null; out: string; started: boolean }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, "serve", "--config", config], {
      env: { ...process.env, KEYFENCE_CONFIG: "", KEYFENCE_ADMIN_LISTEN: "", KEYFENCE_LISTEN: "" },
      stdio: ["ignore", "pipe", "pipe"],
      timeout: 20_000,
      ...(ROOT ? { uid: UID, gid: UID } : {}),
      cwd: tmpdir(),
    });
    let out = "";
    let started = false;
    const seen = (d: Buffer): void => {
      out += d.toString();
      if (!started && out.includes('"event":"listening"')) {
        started = true;
        child.kill("SIGTERM");
      }
    };
    child.stdout.on("data", seen);
    child.stderr.on("data", seen);
    child.on("exit", (code) => resolve({ code, out, started }));
  });
}

describe("keys directory writable by the uid keyfence runs as", () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), "keyfence-preflight-"));
    chmodSync(dir, 0o755);
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  /** A directory with a config and keys file, readable by UID; `writable` decides whether UID may write it. */
  const setup = (name: string, admin: boolean, writable: boolean): string => {
    const at = mkdtempSync(join(dir, `${name}-`));
    writeFileSync(join(at, "keys.yaml"), keysYaml([{ id: "k1", secret: "s1", allow: ["127.0.0.1"] }]));
    writeFileSync(
      join(at, "keyfence.yaml"),
      `listen: "127.0.0.1:0"\nupstream: "http://127.0.0.1:9"\nkeys: {file: keys.yaml}\n${admin ? 'admin: {listen: "127.0.0.1:0"}\n' : ""}`,
    );
    if (ROOT) {
      chmodSync(at, 0o755);
      if (writable) chownSync(at, UID, UID);
    } else chmodSync(at, writable ? 0o755 : 0o555);
    return at;
  };

  test("admin and an unwritable keys directory: exit 1 before listening, naming the uid and directory", async () => {
    const at = setup("ro", true, false);
    const r = await serve(join(at, "keyfence.yaml"));
    assert.equal(r.code, 1, r.out);
    assert.equal(r.started, false);
    assert.match(r.out, new RegExp(`uid ${UID} cannot create files there \\(EACCES\\)`));
    assert.match(r.out, new RegExp(`give uid ${UID} write access to ${at.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}`));
    assert.deepEqual(readdirSync(at).sort(), ["keyfence.yaml", "keys.yaml"]);
  });

  test("admin and a writable keys directory: starts, and leaves no probe file", async () => {
    const at = setup("rw", true, true);
    const r = await serve(join(at, "keyfence.yaml"));
    assert.equal(r.started, true, r.out);
    assert.equal(r.code, 0, r.out);
    assert.deepEqual(readdirSync(at).sort(), ["keyfence.yaml", "keys.yaml"]);
  });

  test("no admin section: nothing is written, so a read-only keys directory is fine", async () => {
    const at = setup("ro-noadmin", false, false);
    const r = await serve(join(at, "keyfence.yaml"));
    assert.equal(r.started, true, r.out);
    assert.equal(r.code, 0, r.out);
  });

  test("an audit log the uid cannot append to: exit 1 naming it", async () => {
    const at = setup("audit", true, true);
    const audit = join(at, "keys.audit.jsonl");
    writeFileSync(audit, "");
    if (ROOT) chownSync(audit, 0, 0);
    chmodSync(audit, ROOT ? 0o600 : 0o400);
    const r = await serve(join(at, "keyfence.yaml"));
    assert.equal(r.code, 1, r.out);
    assert.match(
      r.out,
      new RegExp(`appends to the audit log .*keys\\.audit\\.jsonl, but uid ${UID} cannot \\(EACCES\\)`),
    );
  });

  test("without an admin section the check passes whatever the directory", async () => {
    const r = parseConfig(
      "/nonexistent/dir/keyfence.yaml",
      'upstream: "http://127.0.0.1:9"\nkeys: {file: keys.yaml}\n',
    );
    assert.ok(r.ok);
    assert.equal(await keysDirProblem(r.config), undefined);
    const withAdmin = parseConfig(
      "/nonexistent/dir/keyfence.yaml",
      'upstream: "http://127.0.0.1:9"\nkeys: {file: keys.yaml}\nadmin: {}\n',
    );
    assert.ok(withAdmin.ok);
    assert.match((await keysDirProblem(withAdmin.config)) ?? "", /cannot create files there \(ENOENT\)/);
  });
});

/**
 * `keyfence operator add NAME [--totp]` (SPEC §1) through the real executable:
 * the printed token, lines and secret work in a real keyfence, and on a
 * terminal (a pseudo-terminal from `script`) the QR code decodes to the URI.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import jsQR from "jsqr";
import { Secret, TOTP, URI } from "otpauth";
import { parse } from "yaml";
import { newOperator, operatorReport, renderQr } from "../../src/cli/operator.js";
import { OPERATOR_NAME } from "../../src/config/config.js";
import { needBinary } from "../helpers/binary.js";
import { bearer, send } from "../helpers/http.js";
import { keysYaml } from "../helpers/sidecar.js";
import { BIN, spawnKeyfence } from "../helpers/spawn.js";

const ESC = "\u001b";
/** One ANSI colour escape (SGR) at the start of a string. */
const ANSI_SGR = new RegExp(`^${ESC}\\[(\\d+)m`);
const sha = (s: string): string => createHash("sha256").update(s).digest("hex");

/** Runs the real CLI without blocking, so the file's tests can run side by side (each run is a Node start). */
function run(
  args: string[],
  file = process.execPath,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const argv = file === process.execPath ? [BIN, ...args] : args;
  return new Promise((resolve) => {
    execFile(file, argv, { encoding: "utf8", timeout: 90_000 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === "number" ? err.code : null;
      resolve({ code, stdout, stderr });
    });
  });
}

/** What `operator add` printed, picked apart the way a reader would. */
interface Printed {
  token: string;
  /** The lines under "  operators:", as printed. */
  block: string;
  item: { name: unknown; token_sha256: unknown; totp_secret?: unknown };
  uri: string | undefined;
}

function picked(stdout: string): Printed {
  const token = /^ {4}(kfo_\S+)$/m.exec(stdout)?.[1];
  assert.ok(token !== undefined, stdout);
  const block = /^ {2}operators:\n((?: {4}.*\n)+)/m.exec(stdout)?.[1];
  assert.ok(block !== undefined, stdout);
  const items = parse(`operators:\n${block}`) as { operators: Printed["item"][] };
  assert.equal(items.operators.length, 1);
  const uri = /^ {4}(otpauth:\/\/\S+)$/m.exec(stdout)?.[1];
  return { token, block, item: items.operators[0] as Printed["item"], uri };
}

/**
 * Reads the half-block QR code a terminal shows back into pixels (each cell is
 * two modules, top and bottom, coloured by the ANSI foreground and background
 * in force) and decodes it with jsQR, as a phone's camera would.
 */
function decodeTerminalQr(output: string): string | undefined {
  const lines = output.split(/\r?\n/).filter((l) => l.includes("\x1b[47m"));
  const rows: boolean[][] = [];
  for (const line of lines) {
    let fg = "default";
    let bg = "default";
    const top: boolean[] = [];
    const bottom: boolean[] = [];
    const dark = (c: string): boolean => c === "black";
    for (let i = 0; i < line.length; i++) {
      const m = ANSI_SGR.exec(line.slice(i));
      if (m) {
        const n = Number(m[1]);
        if (n === 0) fg = bg = "default";
        else if (n === 30) fg = "black";
        else if (n === 37) fg = "white";
        else if (n === 40) bg = "black";
        else if (n === 47) bg = "white";
        i += m[0].length - 1;
        continue;
      }
      const ch = line[i];
      if (ch === "\r") continue;
      top.push(dark(ch === "▀" || ch === "█" ? fg : bg));
      bottom.push(dark(ch === "▄" || ch === "█" ? fg : bg));
    }
    rows.push(top, bottom);
  }
  if (rows.length === 0) return undefined;
  const scale = 6;
  const margin = 4 * scale;
  const modules = Math.max(...rows.map((r) => r.length));
  const width = modules * scale + 2 * margin;
  const height = rows.length * scale + 2 * margin;
  const rgba = new Uint8ClampedArray(width * height * 4).fill(255);
  rows.forEach((row, y) =>
    row.forEach((isDark, x) => {
      if (!isDark) return;
      for (let dy = 0; dy < scale; dy++)
        for (let dx = 0; dx < scale; dx++) {
          const p = ((margin + y * scale + dy) * width + margin + x * scale + dx) * 4;
          rgba[p] = rgba[p + 1] = rgba[p + 2] = 0;
        }
    }),
  );
  // jsqr is CommonJS: its default export is module.exports, whose `default` is the function.
  return jsQR.default(rgba, width, height)?.data;
}

describe("keyfence operator add", { concurrency: true }, () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), "keyfence-operator-"));
    writeFileSync(join(dir, "keys.yaml"), keysYaml([{ id: "k1", secret: "s1" }]));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  test("without --totp: a 256-bit token once, its SHA-256 in the lines to paste, no secret, no URI", async () => {
    const r = await run(["operator", "add", "alice"]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, "");
    const p = picked(r.stdout);
    assert.match(p.token, /^kfo_[A-Za-z0-9_-]{43}$/);
    assert.equal(Buffer.from(p.token.slice(4), "base64url").length, 32, "256 random bits");
    assert.equal(p.item.name, "alice");
    assert.equal(p.item.token_sha256, sha(p.token));
    assert.equal(p.item.totp_secret, undefined);
    assert.equal(p.uri, undefined);
    assert.equal(r.stdout.split(p.token).length, 2, "the token is printed exactly once");
    assert.ok(!r.stdout.includes(ESC), "no QR code or colour when stdout is not a terminal");
    const again = picked(await operatorReport(newOperator("alice", false), false));
    assert.notEqual(again.token, p.token, "every run makes a new token");
  });

  test("--totp: a valid base32 secret and the otpauth URI that carries it", async () => {
    const r = await run(["operator", "add", "bob", "--totp"]);
    assert.equal(r.code, 0, r.stderr);
    const p = picked(r.stdout);
    assert.equal(p.item.token_sha256, sha(p.token));
    const secret = p.item.totp_secret;
    assert.ok(typeof secret === "string");
    assert.match(secret, /^[A-Z2-7]{32}$/, "RFC 4648 base32, no padding");
    assert.equal(Secret.fromBase32(secret).bytes.length, 20, "160 bits");
    assert.ok(p.uri !== undefined);
    assert.match(p.uri, /^otpauth:\/\/totp\/keyfence:bob\?/);
    const parsed = URI.parse(p.uri);
    assert.ok(parsed instanceof TOTP);
    assert.equal(parsed.issuer, "keyfence");
    assert.equal(parsed.label, "bob");
    assert.equal(parsed.secret.base32, secret);
    assert.deepEqual([parsed.algorithm, parsed.digits, parsed.period], ["SHA1", 6, 30]);
    assert.notEqual(picked(await operatorReport(newOperator("bob", true), false)).item.totp_secret, secret);
  });

  test("names YAML would read as something else stay strings; check-config accepts the pasted lines", async () => {
    const names = ["@ops", "123", "true", "null", "1.5", "-x", "a.b@c", "0x1F", "-", ".inf", "Y", "x".repeat(64)];
    const blocks: string[] = [];
    // Through the CLI for one of them ("--": a name may start with "-"), in-process for the rest (each run costs a Node start).
    for (const name of names) {
      const stdout =
        name === "-"
          ? (await run(["operator", "add", "--totp", "--", name])).stdout
          : await operatorReport(newOperator(name, true), false);
      const p = picked(stdout);
      assert.equal(p.item.name, name);
      if (p.uri !== undefined) assert.equal(URI.parse(p.uri).label, name);
      blocks.push(p.block);
    }
    const config = join(dir, "names.yaml");
    writeFileSync(
      config,
      `upstream: "http://127.0.0.1:9"\nkeys:\n  file: keys.yaml\nadmin:\n  listen: "127.0.0.1:0"\n  operators:\n${blocks.join("")}`,
    );
    const check = await run(["check-config", "--config", config]);
    assert.equal(check.code, 0, check.stderr);
    assert.match(check.stdout, new RegExp(`${names.length} operators`));
  });

  test("refused names and bad usage: a message on stderr, nothing on stdout, exit 2", async () => {
    const cases = [
      ["operator", "add", "ünï/a b"],
      ["operator", "remove", "alice"],
      ["operator", "add", "alice", "--totpp"],
    ];
    // The CLI refuses what the configuration would refuse (one rule, OPERATOR_NAME).
    for (const bad of ["", "x".repeat(65), "a b", "ü", "a/b", "a:b"]) assert.ok(!OPERATOR_NAME.test(bad), bad);
    const results = await Promise.all(cases.map((args) => run(args)));
    results.forEach((r, i) => {
      const what = cases[i]?.join(" ") ?? "";
      assert.equal(r.code, 2, what);
      assert.equal(r.stdout, "", what);
      assert.match(r.stderr, /operator add NAME|must be 1 to 64 characters/, what);
    });
  });

  test("the printed token and secret work in a real keyfence: API calls, and a code for a list change", async () => {
    const r = await run(["operator", "add", "carol", "--totp"]);
    const p = picked(r.stdout);
    const config = join(dir, "serve.yaml");
    writeFileSync(
      config,
      `listen: "127.0.0.1:0"\nupstream: "http://127.0.0.1:9"\nkeys:\n  file: keys.yaml\nadmin:\n  listen: "127.0.0.1:0"\n  operators:\n${p.block}`,
    );
    const kf = await spawnKeyfence(config);
    try {
      const list = await send(`${kf.admin}/v1/api-keys`, { headers: [bearer(p.token)] });
      assert.equal(list.status, 200);
      assert.equal((await send(`${kf.admin}/v1/api-keys`, { headers: [bearer(`${p.token}x`)] })).status, 401);
      // A real process judges by the real clock. No boundary to wait for: the code of the step we are in
      // is accepted through the next step too (±1 step, src/admin/confirm.ts), so it stays good for at
      // least 30 s, and this operator has used no code yet.
      const code = URI.parse(p.uri ?? "").generate();
      const created = await send(`${kf.admin}/v1/api-keys`, {
        method: "POST",
        headers: [bearer(p.token), ["Content-Type", "application/json"], ["X-Keyfence-OTP", code]],
        body: JSON.stringify({ name: "restricted", ip_allow_list: ["10.0.0.0/8"] }),
      });
      assert.equal(created.status, 201, created.body);
    } finally {
      kf.child.kill("SIGTERM");
      await kf.exited;
    }
  });

  const script = needBinary("bsdutils", "script");
  test("on a terminal the URI is also drawn as a QR code that decodes to it", { skip: script.skip }, async () => {
    // script(1) gives the command a pseudo-terminal as stdout, as an operator's shell would.
    const r = await run(
      ["-qec", `${JSON.stringify(process.execPath)} ${JSON.stringify(BIN)} operator add dave --totp`, "/dev/null"],
      script.path,
    );
    assert.equal(r.code, 0, r.stderr);
    const out = r.stdout.replace(/\r\n/g, "\n");
    const uri = /^ {4}(otpauth:\/\/\S+)$/m.exec(out)?.[1];
    assert.ok(uri !== undefined, out);
    assert.equal(decodeTerminalQr(out), uri);
  });

  test("the QR rendering decodes for short and long names and secrets", async () => {
    for (const name of ["a", "ops@example.com", "x".repeat(64)]) {
      const uri = new TOTP({ issuer: "keyfence", label: name, secret: new Secret({ size: 20 }) }).toString();
      assert.equal(decodeTerminalQr(await renderQr(uri)), uri, name);
    }
    assert.equal(decodeTerminalQr("no code here"), undefined, "the decoder is not fooled by plain text");
  });
});

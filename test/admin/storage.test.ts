/**
 * SPEC §5 exact storage and bounded sizes: any string the validator admits
 * round-trips through create/patch → keys file → reload → GET unchanged; the
 * keys file and the API refuse the same names and scopes.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { describe, test } from "node:test";
import fc from "fast-check";
import { MAX_NAME_CHARS, MAX_SCOPES, nameProblem, scopesProblems } from "../../src/store/keyfields.js";
import { parseKeysFile } from "../../src/store/keysfile.js";
import { bearer, send, type Reply } from "../helpers/http.js";
import { sidecarFixture, startTestSidecar, type TestSidecar } from "../helpers/sidecar.js";

const sha = (s: string): string => createHash("sha256").update(s).digest("hex");
const OPS = bearer("tok_ops");

function call(kf: TestSidecar, method: string, path: string, body?: unknown): Promise<Reply> {
  return send(`${kf.adminUrl}${path}`, {
    method,
    headers: body === undefined ? [OPS] : [OPS, ["Content-Type", "application/json"]],
    body: body === undefined ? undefined : JSON.stringify(body),
  });
}

function nameInFile(kf: TestSidecar, id: string): string | undefined {
  const parsed = parseKeysFile("keys.yaml", readFileSync(kf.keysFile, "utf8"), 1000);
  assert.ok(parsed.ok, "the keys file stays valid");
  return parsed.keys.find((k) => k.id === id)?.name;
}

/** Characters that trip YAML writers and readers, mixed with any code point. */
const tricky = fc.constantFrom(
  "😀",
  "w",
  " ",
  "#",
  ":",
  "- ",
  "'",
  '"',
  "\\",
  "\u2028",
  "\u2029",
  "\u0085",
  "\u00a0",
  "\ufeff",
  "\ufffe",
  "\uffff",
  "&a",
  "*a",
  "!",
  "%",
  "@",
  "`",
  "{",
  "[",
  "|",
  ">",
  "? ",
  "null",
  "true",
  "0x1",
  "1e3",
  "~",
  "\u{10ffff}",
);
const names = fc
  .oneof(
    fc.string({ unit: fc.oneof(tricky, fc.string({ unit: "binary", minLength: 1, maxLength: 1 })), maxLength: 210 }),
    fc.string({ unit: "binary", maxLength: 210 }),
  )
  .filter((s) => nameProblem(s) === undefined);

describe("exact storage", () => {
  const fx = sidecarFixture((up) =>
    startTestSidecar({
      upstream: up.url,
      keys: [],
      admin: { operators: [{ name: "ops", token_sha256: sha("tok_ops") }] },
    }),
  );
  const stored = new Map<string, string>();

  test("a name that once came back with U+FFFD (a line folded inside a surrogate pair)", async () => {
    const name = `#${"w".repeat(70)}${"😀".repeat(8)}${"w".repeat(30)}`;
    const r = await call(fx.kf, "POST", "/v1/api-keys", { name });
    assert.equal(r.status, 201);
    const id = (r.json() as { id: string }).id;
    assert.equal(nameInFile(fx.kf, id), name);
    const renamed = `${name} ${[...name].slice(0, 80).join("")}`;
    const p = await call(fx.kf, "PATCH", `/v1/api-keys/${id}`, { name: renamed });
    assert.equal(p.status, 200, p.body);
    assert.equal(nameInFile(fx.kf, id), renamed);
    assert.ok(!readFileSync(fx.kf.keysFile, "utf8").includes("\ufffd"));
  });

  test("property: any admitted name round-trips through create and patch, the file and GET", async () => {
    await fc.assert(
      fc.asyncProperty(names, names, async (first, second) => {
        const c = await call(fx.kf, "POST", "/v1/api-keys", { name: first });
        assert.equal(c.status, 201, c.body);
        const id = (c.json() as { id: string; name: string }).id;
        assert.equal((c.json() as { name: string }).name, first);
        assert.equal(nameInFile(fx.kf, id), first);
        const p = await call(fx.kf, "PATCH", `/v1/api-keys/${id}`, { name: second });
        assert.equal(p.status, 200, p.body);
        assert.equal(nameInFile(fx.kf, id), second);
        const g = await call(fx.kf, "GET", `/v1/api-keys/${id}`);
        assert.equal((g.json() as { name: string }).name, second);
        stored.set(id, second);
      }),
      { numRuns: 80 },
    );
  });

  test("after a restart (a fresh load of the file), every name GETs back unchanged", async () => {
    await fx.kf.sidecar.stop();
    const again = await fx.kf.restart();
    try {
      for (const [id, name] of stored) {
        const g = await call(again, "GET", `/v1/api-keys/${id}`);
        assert.equal((g.json() as { name: string }).name, name);
      }
      assert.ok(stored.size >= 80);
    } finally {
      await again.sidecar.stop();
    }
  });
});

describe("bounded sizes, the API and the keys file alike", () => {
  const fx = sidecarFixture((up) =>
    startTestSidecar({
      upstream: up.url,
      keys: [],
      admin: { operators: [{ name: "ops", token_sha256: sha("tok_ops") }] },
    }),
  );
  const bad: Array<[string, Record<string, unknown>, string]> = [
    ["a name of 201 characters", { name: "n".repeat(201) }, "name"],
    ["a name of 201 emoji", { name: "😀".repeat(201) }, "name"],
    ["a blank name", { name: " \u3000 " }, "name"],
    ["a name with a tab", { name: "a\tb" }, "name"],
    ["a name with DEL", { name: "a\u007fb" }, "name"],
    ["a name with U+FFFE", { name: "a\ufffeb" }, "name"],
    ["a lone surrogate", { name: "a\ud800b" }, "name"],
    ["101 scopes", { name: "x", scopes: Array.from({ length: 101 }, (_, i) => `s:${i}`) }, "scopes"],
    ["a scope of 101 characters", { name: "x", scopes: ["a", "s".repeat(101)] }, "scopes[1]"],
    ["a scope with a space", { name: "x", scopes: ["a b"] }, "scopes[0]"],
  ];
  for (const [what, body, field] of bad) {
    test(`refused by both: ${what}`, async () => {
      const before = readFileSync(fx.kf.keysFile, "utf8");
      const r = await call(fx.kf, "POST", "/v1/api-keys", body);
      assert.equal(r.status, 400, r.body);
      const errors = (r.json() as { errors: Array<{ field: string; message: string }> }).errors;
      assert.ok(
        errors.some((e) => e.field === field),
        JSON.stringify(errors),
      );
      assert.ok(r.body.length < 2000, "the error quotes a bounded part of the value");
      assert.equal(readFileSync(fx.kf.keysFile, "utf8"), before);
      const entry = { id: "k1", secret_sha256: "a".repeat(64), ...body };
      const file = parseKeysFile("keys.yaml", JSON.stringify({ keys: [entry] }), 1000);
      assert.ok(!file.ok, "the keys file refuses it too");
      const path = field.replace(/\[(\d+)\]/, ".$1").replace(/^/, "keys[0].");
      assert.ok(
        file.problems.some((p) => p.path.replace(/\[(\d+)\]/g, ".$1").startsWith(path.replace(/\[(\d+)\]/g, ".$1"))),
        JSON.stringify(file.problems),
      );
    });
  }

  test("the limits themselves are admitted by both", async () => {
    const body = {
      name: "😀".repeat(MAX_NAME_CHARS),
      scopes: Array.from({ length: MAX_SCOPES }, (_, i) => `${"s".repeat(96)}:${String(i).padStart(3, "0")}`),
    };
    assert.equal(nameProblem(body.name), undefined);
    assert.deepEqual(scopesProblems(body.scopes), []);
    const r = await call(fx.kf, "POST", "/v1/api-keys", body);
    assert.equal(r.status, 201, r.body);
    const file = parseKeysFile(
      "keys.yaml",
      JSON.stringify({ keys: [{ id: "k1", secret_sha256: "a".repeat(64), ...body }] }),
      1000,
    );
    assert.ok(file.ok);
  });
});

/** Sandbox keys through the management API and both stores' encodings (SPEC §9). */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { describe, test } from "node:test";
import { decodeRecord, encodeRecord } from "../../src/store/redis/record.js";
import { bearer, send } from "../helpers/http.js";
import { sidecarFixture, startTestSidecar } from "../helpers/sidecar.js";
import { digestOfHex } from "../../src/store/digest.js";

const sha = (s: string): string => createHash("sha256").update(s).digest("hex");

describe("sandbox keys through the management API", () => {
  const f = sidecarFixture((up) =>
    startTestSidecar({
      upstream: up.url,
      keys: [{ id: "k_plain", secret: "s_plain" }],
      admin: { operators: [{ name: "ops", token_sha256: sha("tok") }] },
    }),
  );
  const call = async (method: string, path: string, body?: unknown): Promise<{ status: number; json: unknown }> => {
    const r = await send(`${f.kf.adminUrl}${path}`, {
      method,
      headers: [bearer("tok"), ["Content-Type", "application/json"]],
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    return { status: r.status, json: r.body === "" ? undefined : r.json() };
  };

  test("created, shown, patched, written to the keys file and audited", async () => {
    const made = await call("POST", "/v1/api-keys", { name: "test key", sandbox: true });
    assert.equal(made.status, 201);
    const key = made.json as { id: string; sandbox: boolean };
    assert.equal(key.sandbox, true);
    assert.equal(((await call("GET", `/v1/api-keys/${key.id}`)).json as { sandbox: boolean }).sandbox, true);
    assert.equal(((await call("GET", "/v1/api-keys/k_plain")).json as { sandbox: boolean }).sandbox, false);
    assert.match(readFileSync(f.kf.keysFile, "utf8"), /sandbox: true/);
    const out = await call("PATCH", `/v1/api-keys/${key.id}`, { sandbox: false });
    assert.equal(out.status, 200);
    assert.equal((out.json as { sandbox: boolean }).sandbox, false);
    assert.doesNotMatch(readFileSync(f.kf.keysFile, "utf8"), /sandbox:/);
    const audit = (await call("GET", "/v1/audit")).json as { data: Array<{ changes: Record<string, unknown> }> };
    assert.deepEqual(audit.data[0]?.changes["sandbox"], { before: true, after: false });
  });

  test("a non-boolean sandbox is a 400 naming the field", async () => {
    const r = await call("POST", "/v1/api-keys", { name: "x", sandbox: "yes" });
    assert.equal(r.status, 400);
    assert.deepEqual((r.json as { errors: unknown[] }).errors, [
      { field: "sandbox", message: 'must be true or false, got "yes"' },
    ]);
  });
});

describe("the Redis encoding keeps the sandbox flag and reads old records", () => {
  const base = {
    id: "k",
    name: "n",
    secretDigest: digestOfHex("a".repeat(64)),
    scopes: ["s"],
    ipAllowList: ["10.0.0.0/8"],
    mode: undefined,
    createdAt: undefined,
    updatedAt: undefined,
  };
  test("round trip", () => {
    assert.deepEqual(decodeRecord("k", encodeRecord({ ...base, sandbox: true })), { ...base, sandbox: true });
    assert.deepEqual(decodeRecord("k", encodeRecord(base)), base);
    assert.equal(encodeRecord(base).split(",").length, encodeRecord({ ...base, sandbox: true }).split(",").length - 1);
  });
  test("a malformed flag is no record", () => {
    assert.equal(decodeRecord("k", JSON.stringify(["n", "a".repeat(64), [], [], 0, 0, 0, true])), undefined);
  });
});

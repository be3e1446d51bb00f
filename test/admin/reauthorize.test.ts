/**
 * A key's change is authorized again when it is made, under the store's
 * lock: a key revoked (deleted, narrowed away from its caller, or stripped of
 * the write scope) while its request waited for the lock gets the answer it
 * would get now, and changes nothing. The test holds the keys file's lock
 * itself, as another process writing the file would, and revokes the key in
 * the file meanwhile.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { test } from "node:test";
import { lock } from "proper-lockfile";
import { parseKeysFile } from "../../src/store/keysfile.js";
import { bearer, send, type Send } from "../helpers/http.js";
import { eventually, sidecarFixture, startTestSidecar, type TestKey } from "../helpers/sidecar.js";

const WRITER: TestKey = { id: "k_writer", secret: "s_writer", scopes: ["api_keys:write"], allow: ["127.0.0.1"] };
const OTHER: TestKey = { id: "k_other", secret: "s_other", allow: ["10.0.0.0/8"] };
const KEYS = [WRITER, OTHER];

const fx = sidecarFixture((up) => startTestSidecar({ upstream: up.url, keys: KEYS }));

/** What a revocation leaves of the writer, and the answer its waiting request must get. */
const revocations: Array<[string, TestKey[], number, string | undefined]> = [
  ["keeps everything (the change goes through)", KEYS, 0, undefined],
  ["loses its write scope", [{ ...WRITER, scopes: ["messages:send"] }, OTHER], 403, "missing_scope"],
  ["is narrowed away from its caller", [{ ...WRITER, allow: ["203.0.113.0/24"] }, OTHER], 403, "ip_not_allowed"],
  ["is deleted", [OTHER], 401, "invalid_credential"],
];

/** The writer's changes: a rename of another key, a create, a delete. */
const changes: Array<[string, Send & { path: string }, number]> = [
  ["PATCH", { method: "PATCH", path: "/v1/api-keys/k_other", body: JSON.stringify({ name: "renamed" }) }, 200],
  ["POST", { method: "POST", path: "/v1/api-keys", body: JSON.stringify({ name: "made by a revoked key" }) }, 201],
  ["DELETE", { method: "DELETE", path: "/v1/api-keys/k_other" }, 204],
];

for (const [what, after, status, reason] of revocations) {
  for (const [method, req, okStatus] of changes) {
    test(`a ${method} waiting for the lock while its key ${what}`, async () => {
      const kf = fx.kf;
      kf.writeKeys(KEYS);
      // The sidecar has read them back (checked in memory: failed sign-ins would count against the attempt limit).
      await eventually(() => {
        const snap = kf.sidecar.store.snapshot;
        const writer = snap.record("k_writer");
        return (
          writer?.scopes.includes("api_keys:write") === true &&
          writer.ipAllowList.join() === "127.0.0.1" &&
          snap.record("k_other")?.name === "k_other"
        );
      });
      const release = await lock(kf.keysFile, {
        realpath: false,
        lockfilePath: join(dirname(kf.keysFile), `.${basename(kf.keysFile)}.lock`),
      });
      let reply;
      try {
        reply = send(`${kf.adminUrl}${req.path}`, {
          ...req,
          headers: [bearer(WRITER.secret), ["Content-Type", "application/json"]],
        });
        // Authenticated by now (the snapshot in memory), waiting for the lock.
        await new Promise((r) => setTimeout(r, 300));
        kf.writeKeys(after);
      } finally {
        await release();
      }
      const r = await reply;
      const expected = status === 0 ? okStatus : status;
      assert.equal(r.status, expected, r.body);
      const stored = parseKeysFile(kf.keysFile, readFileSync(kf.keysFile, "utf8"), 1000);
      assert.ok(stored.ok);
      const ids = stored.keys.map((k) => k.id).sort();
      if (reason !== undefined) {
        assert.equal((r.json() as { reason?: string }).reason ?? r.headers["x-keyfence-reason"], reason, r.body);
        // Nothing changed: the file is exactly the revocation.
        assert.deepEqual(ids, after.map((k) => k.id).sort());
        assert.equal(stored.keys.find((k) => k.id === "k_other")?.name, "k_other");
      }
    });
  }
}

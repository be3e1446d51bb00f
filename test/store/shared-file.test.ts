/**
 * SPEC §5, §6: several `keyfence serve` processes sharing one keys file lose
 * no concurrent write, and each sees every other's change within a second.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { stringify } from "yaml";
import { parseKeysFile } from "../../src/store/keysfile.js";
import { bearer, send } from "../helpers/http.js";
import { eventually } from "../helpers/sidecar.js";
import { spawnKeyfence, type Running } from "../helpers/spawn.js";
import { startUpstream, type Upstream } from "../helpers/upstream.js";

const sha = (s: string): string => createHash("sha256").update(s).digest("hex");

let dir: string;
let up: Upstream;
const running: Running[] = [];

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "keyfence-shared-"));
  up = await startUpstream();
  writeFileSync(join(dir, "keys.yaml"), "keys: []\n");
  writeFileSync(
    join(dir, "keyfence.yaml"),
    stringify({
      listen: "127.0.0.1:0",
      upstream: up.url,
      keys: { file: "keys.yaml" },
      admin: { listen: "127.0.0.1:0", operators: [{ name: "ops", token_sha256: sha("tok_ops") }] },
    }),
  );
});

after(async () => {
  for (const r of running) {
    r.child.kill("SIGTERM");
    await r.exited;
  }
  await up.close();
  rmSync(dir, { recursive: true, force: true });
});

test("three processes sharing one keys file: 10 concurrent creates each keep all 30, seen by all within 1 s", async () => {
  const config = join(dir, "keyfence.yaml");
  for (let i = 0; i < 3; i++) running.push(await spawnKeyfence(config));
  const replies = await Promise.all(
    Array.from({ length: 30 }, (_, i) =>
      send(`${(running[i % 3] as Running).admin}/v1/api-keys`, {
        method: "POST",
        headers: [bearer("tok_ops"), ["Content-Type", "application/json"]],
        body: JSON.stringify({ name: `shared${i}` }),
      }),
    ),
  );
  for (const r of replies) assert.equal(r.status, 201, r.body);
  const ids = new Set(replies.map((r) => (r.json() as { id: string }).id));
  assert.equal(ids.size, 30);
  const parsed = parseKeysFile("keys.yaml", readFileSync(join(dir, "keys.yaml"), "utf8"), 1000);
  assert.ok(parsed.ok);
  assert.deepEqual(new Set(parsed.keys.map((k) => k.id)), ids);
  const t0 = Date.now();
  for (const r of running) {
    await eventually(
      async () => {
        const list = await send(`${r.admin}/v1/api-keys?limit=1000`, { headers: [bearer("tok_ops")] });
        return (list.json() as { data: unknown[] }).data.length === 30;
      },
      1000,
      "every process lists all 30",
    );
  }
  assert.ok(Date.now() - t0 <= 1000, `seen by all after ${Date.now() - t0} ms`);
  // Every secret works on every process, and no temp or lock file is left behind.
  for (const [i, r] of replies.entries()) {
    const secret = (r.json() as { secret: string }).secret;
    assert.equal((await send(`${(running[i % 3] as Running).proxy}/x`, { headers: [bearer(secret)] })).status, 200);
  }
  assert.deepEqual(
    readdirSync(dir).filter((f) => f.startsWith(".")),
    [],
  );
});

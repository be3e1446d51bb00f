/** A kill -9 in the middle of a stream of API writes leaves a valid keys file holding every answered change. */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { parseKeysFile } from "../../src/store/keysfile.js";
import { bearer, send } from "../helpers/http.js";
import { keysYaml } from "../helpers/sidecar.js";
import { spawnKeyfence } from "../helpers/spawn.js";

test("kill -9 during a stream of writes: the file is old or new, never torn; answered writes are there", async () => {
  const dir = mkdtempSync(join(tmpdir(), "keyfence-crash-"));
  try {
    writeFileSync(join(dir, "keys.yaml"), keysYaml([{ id: "k0", secret: "s0", allow: ["127.0.0.1"] }]));
    const token = createHash("sha256").update("tok").digest("hex");
    writeFileSync(
      join(dir, "keyfence.yaml"),
      `listen: "127.0.0.1:0"\nupstream: "http://127.0.0.1:9"\nkeys:\n  file: keys.yaml\nadmin:\n  listen: "127.0.0.1:0"\n  operators:\n    - name: ops\n      token_sha256: "${token}"\n`,
    );
    const kf = await spawnKeyfence(join(dir, "keyfence.yaml"));
    const child = kf.child;
    const answered: string[] = [];
    let stop = false;
    let enoughAnswered: () => void = () => undefined;
    const enough = new Promise<void>((r) => (enoughAnswered = r));
    const writer = async (w: number): Promise<void> => {
      for (let i = 0; !stop; i++) {
        try {
          const r = await send(`${kf.admin}/v1/api-keys`, {
            method: "POST",
            headers: [bearer("tok"), ["Content-Type", "application/json"]],
            body: JSON.stringify({ name: `w${w}-${i}`, ip_allow_list: [`10.${w}.${i % 256}.0/24`] }),
            timeoutMs: 2000,
          });
          if (r.status === 201) answered.push((r.json() as { id: string }).id);
          if (answered.length >= 6) enoughAnswered();
        } catch {
          return; // the process is gone
        }
      }
    };
    const writers = [0, 1, 2, 3].map(writer);
    // Kill once some writes were answered (and more are in flight), however slow the machine;
    // the runner's test timeout bounds the wait, and an early exit fails at once.
    await Promise.race([
      enough,
      kf.exited.then((code) => assert.fail(`keyfence exited (${String(code)}) before 6 writes were answered`)),
    ]);
    child.kill("SIGKILL");
    await kf.exited;
    stop = true;
    await Promise.all(writers);
    assert.ok(answered.length > 5, `only ${answered.length} writes answered before the kill`);
    const parsed = parseKeysFile("keys.yaml", readFileSync(join(dir, "keys.yaml"), "utf8"), 1000);
    assert.ok(parsed.ok, "the keys file is valid after kill -9");
    const ids = new Set(parsed.keys.map((k) => k.id));
    for (const id of answered) assert.ok(ids.has(id), `answered write ${id} is missing`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

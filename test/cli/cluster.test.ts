/** `workers: 2`: every worker enforces the same snapshot; API writes reach all of them before the answer. */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { processTree } from "../../bench/procs.js";
import { bearer, send } from "../helpers/http.js";
import { eventually, keysYaml } from "../helpers/sidecar.js";
import { spawnKeyfence } from "../helpers/spawn.js";
import { startUpstream, type Upstream } from "../helpers/upstream.js";

const sha = (s: string): string => createHash("sha256").update(s).digest("hex");

let up: Upstream;
let dir: string;
before(async () => {
  up = await startUpstream();
  dir = mkdtempSync(join(tmpdir(), "keyfence-cluster-"));
});
after(async () => {
  await up.close();
  rmSync(dir, { recursive: true, force: true });
});

test("a 2-worker cluster: shared port, writes in force on every worker at once, merged metrics, restart, drain", async () => {
  writeFileSync(join(dir, "keys.yaml"), keysYaml([{ id: "k1", secret: "s1", allow: ["127.0.0.1"] }]));
  writeFileSync(
    join(dir, "keyfence.yaml"),
    `listen: "127.0.0.1:0"\nupstream: "${up.url}"\nworkers: 2\ndrain_timeout_ms: 3000\nkeys:\n  file: keys.yaml\nadmin:\n  listen: "127.0.0.1:0"\n  operators:\n    - name: ops\n      token_sha256: "${sha("tok")}"\n`,
  );
  const kf = await spawnKeyfence(join(dir, "keyfence.yaml"));
  const { child, exited } = kf;
  try {
    assert.match(kf.output(), /with 2 workers/);
    const { proxy, admin } = kf;
    const tree = () => processTree(child.pid ?? 0).filter((p) => p !== child.pid);
    assert.equal(tree().length, 2, "two worker processes");

    // Fresh connections spread over both workers; every one must see each change at once.
    const burst = async (secret: string): Promise<number[]> =>
      Promise.all(
        Array.from({ length: 24 }, () =>
          send(`${proxy}/_keyfence/ping`, { headers: [bearer(secret)] }).then((r) => r.status),
        ),
      );
    assert.deepEqual(new Set(await burst("s1")), new Set([200]));
    const created = await send(`${admin}/v1/api-keys`, {
      method: "POST",
      headers: [bearer("tok"), ["Content-Type", "application/json"]],
      body: JSON.stringify({ name: "new", ip_allow_list: ["127.0.0.1"] }),
    });
    assert.equal(created.status, 201);
    const { id, secret } = created.json() as { id: string; secret: string };
    assert.deepEqual(new Set(await burst(secret)), new Set([200]), "a new key works on every worker at once");
    const patched = await send(`${admin}/v1/api-keys/${id}`, {
      method: "PATCH",
      headers: [bearer("tok"), ["Content-Type", "application/json"]],
      body: JSON.stringify({ ip_allow_list: ["203.0.113.0/24"] }),
    });
    assert.equal(patched.status, 200);
    assert.deepEqual(new Set(await burst(secret)), new Set([403]), "a restriction applies on every worker at once");

    const metrics = (await send(`${admin}/metrics`)).body;
    assert.match(metrics, /keyfence_decisions_total\{decision="allowed"\} 48\b/, "decisions summed over the workers");
    assert.match(metrics, /keyfence_decisions_total\{decision="denied"\} 24\b/);
    assert.match(metrics, /^keyfence_keys 2$/m, "store gauges are not summed");
    const sources = (await send(`${admin}/v1/api-keys/${id}/sources`, { headers: [bearer("tok")] })).json() as {
      data: Array<{ network: string; requests: number; denied: number }>;
    };
    assert.deepEqual(
      sources.data.map((s) => [s.network, s.requests, s.denied]),
      [["127.0.0.0/24", 48, 24]],
    );

    // A crashed worker is replaced.
    const [victim] = tree();
    process.kill(victim ?? 0, "SIGKILL");
    await eventually(() => tree().length === 2 && !tree().includes(victim ?? 0), 10_000, "worker restart");
    await eventually(async () => new Set(await burst("s1")).size === 1, 5000, "replacement serving");

    child.kill("SIGTERM");
    assert.equal(await exited, 0);
  } finally {
    child.kill("SIGKILL");
  }
});

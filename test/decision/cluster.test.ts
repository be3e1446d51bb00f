/** `workers: 2` with `decision.listen`: every worker decides on the shared port; counts merge; SIGTERM drains both listeners. */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { processTree } from "../../bench/procs.js";
import { bearer, send } from "../helpers/http.js";
import { keysYaml } from "../helpers/sidecar.js";
import { spawnKeyfence } from "../helpers/spawn.js";
import { startUpstream, type Upstream } from "../helpers/upstream.js";

const sha = (s: string): string => createHash("sha256").update(s).digest("hex");

let up: Upstream;
let dir: string;
before(async () => {
  up = await startUpstream();
  dir = mkdtempSync(join(tmpdir(), "keyfence-decision-cluster-"));
});
after(async () => {
  await up.close();
  rmSync(dir, { recursive: true, force: true });
});

test("a 2-worker cluster answers decisions on one port, merges their counts and drains on SIGTERM", async () => {
  writeFileSync(join(dir, "keys.yaml"), keysYaml([{ id: "k1", secret: "s1", allow: ["203.0.113.0/24"] }]));
  writeFileSync(
    join(dir, "keyfence.yaml"),
    `listen: "127.0.0.1:0"\nupstream: "${up.url}"\nworkers: 2\ntrusted_proxies: [loopback]\ndrain_timeout_ms: 3000\nkeys:\n  file: keys.yaml\ndecision:\n  listen: "127.0.0.1:0"\nadmin:\n  listen: "127.0.0.1:0"\n  operators:\n    - name: ops\n      token_sha256: "${sha("tok")}"\n`,
  );
  const kf = await spawnKeyfence(join(dir, "keyfence.yaml"));
  const { child, exited } = kf;
  try {
    const m = /"decision":"([^"]+)"/.exec(kf.output());
    assert.ok(m, `the start-up line names the decision listener:\n${kf.output()}`);
    assert.match(kf.output(), /decisions on http:\/\/127\.0\.0\.1:\d+/);
    const decision = `http://${m[1] ?? ""}`;
    assert.equal(processTree(child.pid ?? 0).length, 3, "a primary and two workers");
    // Fresh connections spread over both workers.
    const ask = (ip: string): Promise<number[]> =>
      Promise.all(
        Array.from({ length: 24 }, () =>
          send(`${decision}/`, { headers: [bearer("s1"), ["X-Forwarded-For", ip]] }).then((r) => r.status),
        ),
      );
    assert.deepEqual(new Set(await ask("203.0.113.5")), new Set([200]));
    assert.deepEqual(new Set(await ask("198.51.100.5")), new Set([403]));
    const metrics = (await send(`${kf.admin}/metrics`)).body;
    assert.match(metrics, /keyfence_decisions_total\{decision="allowed"\} 24\b/, "decisions summed over the workers");
    assert.match(metrics, /keyfence_decisions_total\{decision="denied"\} 24\b/);
    const sources = (await send(`${kf.admin}/v1/api-keys/k1/sources`, { headers: [bearer("tok")] })).json() as {
      data: Array<{ network: string; requests: number; denied: number }>;
    };
    assert.deepEqual(sources.data.map((s) => [s.network, s.requests, s.denied]).sort(), [
      ["198.51.100.0/24", 24, 24],
      ["203.0.113.0/24", 24, 0],
    ]);
    assert.equal(up.seen.length, 0, "nothing forwarded");
    child.kill("SIGTERM");
    assert.equal(await exited, 0);
    await assert.rejects(send(`${decision}/`, { timeoutMs: 2000 }), "the decision listener is closed");
  } finally {
    child.kill("SIGKILL");
  }
});

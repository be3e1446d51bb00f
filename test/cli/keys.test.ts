/** `keyfence keys import` / `export` (SPEC §6) against a real redis-server and a keys file. */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { stringify } from "yaml";
import { decodeJournalEntry, type AuditEvent } from "../../src/admin/audit.js";
import { parseKeysFile } from "../../src/store/keysfile.js";
import { needBinary } from "../helpers/binary.js";
import { redisFixture } from "../helpers/redis.js";
import { keysYaml } from "../helpers/sidecar.js";
import { BIN } from "../helpers/spawn.js";

const redisBin = needBinary("redis-server", "redis-server");

function run(args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, ...args], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    child.on("exit", (code) => resolve({ code, out, err }));
  });
}

const KEYS = keysYaml([
  { id: "k_a", secret: "s_a", allow: ["203.0.113.0/24"], name: "Ünïcode ✓" },
  { id: "k_b", secret: "s_b", scopes: ["api_keys:write"], mode: "report" },
]);

describe("keyfence keys import/export", () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), "keyfence-keys-"));
    writeFileSync(join(dir, "in.yaml"), KEYS);
    writeFileSync(
      join(dir, "bad.yaml"),
      `keys:\n  - id: k_c\n    secret_sha256: "${"a".repeat(64)}"\n  - id: k_d\n    secret_sha256: "${"b".repeat(64)}"\n    ip_allow_list: [198.51.100.7/24]\n`,
    );
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  describe("into Redis", { skip: redisBin.skip }, () => {
    const redis = redisFixture(redisBin.path, "t");
    let config: string;
    before(() => {
      config = join(dir, "redis.yaml");
      writeFileSync(
        config,
        stringify({
          listen: "127.0.0.1:0",
          upstream: "http://127.0.0.1:1",
          keys: { store: "redis", redis: { url: redis.url, prefix: "t:" } },
        }),
      );
    });

    test("export of an uninitialized store fails clearly", async () => {
      const r = await run(["keys", "export", "--config", config]);
      assert.equal(r.code, 1);
      assert.match(r.err, /no keyfence data/);
    });

    test("an invalid entry refuses the whole import, naming file:line:col", async () => {
      const r = await run(["keys", "import", "--config", config, "--from", join(dir, "bad.yaml")]);
      assert.equal(r.code, 1);
      assert.match(r.err, /bad\.yaml:6:\d+: .*198\.51\.100\.0\/24/);
      assert.match(r.err, /nothing was imported/);
      const e = await run(["keys", "export", "--config", config]);
      assert.equal(e.code, 1, "the store is still uninitialized");
    });

    test("an import whose audit entry cannot be written imports nothing", async () => {
      const cfg = join(dir, "redis-broken-audit.yaml");
      writeFileSync(
        cfg,
        stringify({
          listen: "127.0.0.1:0",
          upstream: "http://127.0.0.1:1",
          keys: { store: "redis", redis: { url: redis.url, prefix: "broken:" } },
        }),
      );
      await redis.withClient((c) => c.set("broken:audit", "not a stream"));
      const r = await run(["keys", "import", "--config", cfg, "--from", join(dir, "in.yaml")]);
      assert.equal(r.code, 1, r.err);
      assert.match(r.err, /cannot write the audit stream broken:audit .*WRONGTYPE.*nothing was imported/);
      assert.equal(await redis.withClient((c) => c.hLen("broken:keys")), 0);
    });

    test("import, export round trip; a second import is a no-op", async () => {
      const first = await run(["keys", "import", "--config", config, "--from", join(dir, "in.yaml")]);
      assert.equal(first.code, 0, first.err);
      assert.match(first.err, /2 keys written, 0 unchanged \(the store was initialized\)/);
      // One audit entry for the import, with who ran it, the file and the keys written.
      const entries = async (): Promise<AuditEvent[]> =>
        redis.withClient(async (c) =>
          (await c.xRevRange("t:audit", "+", "-")).map((r) => {
            const e = decodeJournalEntry(Number(r.id.split("-")[0]), r.message["e"] ?? "");
            assert.ok(e, r.message["e"]);
            return e;
          }),
        );
      const logged = await entries();
      assert.equal(logged.length, 1);
      const entry = logged[0] as AuditEvent;
      assert.equal(entry.action, "import");
      assert.equal(entry.actor.type, "cli");
      assert.match(entry.actor.id, /.@./);
      assert.deepEqual(entry.import, { from: join(dir, "in.yaml"), key_ids: ["k_a", "k_b"] });
      const again = await run(["keys", "import", "--config", config, "--from", join(dir, "in.yaml")]);
      assert.equal(again.code, 0, again.err);
      assert.match(again.err, /0 keys written, 2 unchanged/);
      assert.equal((await entries()).length, 1, "an import that changes nothing writes no entry");
      const out = join(dir, "out.yaml");
      const e = await run(["keys", "export", "--config", config, "--to", out]);
      assert.equal(e.code, 0, e.err);
      const a = parseKeysFile("in.yaml", KEYS, 1000);
      const b = parseKeysFile("out.yaml", readFileSync(out, "utf8"), 1000);
      assert.ok(a.ok && b.ok);
      assert.deepEqual(b.keys, a.keys);
    });
  });

  test("into a keys file: merged by id, idempotent", async () => {
    const keysFile = join(dir, "keys.yaml");
    writeFileSync(
      keysFile,
      keysYaml([
        { id: "k_a", secret: "s_a" },
        { id: "k_z", secret: "s_z" },
      ]),
    );
    const config = join(dir, "file.yaml");
    writeFileSync(
      config,
      stringify({ listen: "127.0.0.1:0", upstream: "http://127.0.0.1:1", keys: { file: "keys.yaml" } }),
    );
    const r = await run(["keys", "import", "--config", config, "--from", join(dir, "in.yaml")]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.err, /2 keys written, 0 unchanged/);
    const parsed = parseKeysFile("keys.yaml", readFileSync(keysFile, "utf8"), 1000);
    assert.ok(parsed.ok);
    assert.deepEqual(
      parsed.keys.map((k) => [k.id, k.ipAllowList.join()]),
      [
        ["k_a", "203.0.113.0/24"],
        ["k_z", ""],
        ["k_b", ""],
      ],
    );
    const again = await run(["keys", "import", "--config", config, "--from", join(dir, "in.yaml")]);
    assert.match(again.err, /0 keys written, 2 unchanged/);
    const e = await run(["keys", "export", "--config", config]);
    assert.equal(e.code, 0, e.err);
    const exported = parseKeysFile("stdout", e.out, 1000);
    assert.ok(exported.ok);
    assert.equal(exported.keys.length, 3);
  });
});

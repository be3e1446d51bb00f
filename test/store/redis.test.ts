/**
 * SPEC §6 with a real redis-server: three replicas share one store; changes
 * propagate; concurrent writes through different replicas lose nothing; an
 * outage (server killed, or one replica's connection cut) keeps every
 * replica enforcing its last snapshot, answers writes 503 and catches up
 * afterwards, missed changes included; vanished data is an outage; a start
 * while Redis is down uses the snapshot file or exits 1.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { stringify } from "yaml";
import { StoreLoadError } from "../../src/store/store.js";
import { connectOnce, exportRecords, importRecords } from "../../src/store/redis/io.js";
import { redisKeys } from "../../src/store/redis/store.js";
import { encodeRecord } from "../../src/store/redis/record.js";
import { changedId, type KeyChange } from "../../src/store/change.js";
import { digestOfHex } from "../../src/store/digest.js";
import type { KeyRecord } from "../../src/store/keysfile.js";
import { needBinary } from "../helpers/binary.js";
import { bearer, send, type Reply } from "../helpers/http.js";
import { freePort, redisFixture, startRedis, startRelay, type Relay } from "../helpers/redis.js";
import { eventually, startTestSidecar, type TestSidecar } from "../helpers/sidecar.js";
import { spawnKeyfence, type Running } from "../helpers/spawn.js";
import { startUpstream, type Upstream } from "../helpers/upstream.js";

const redisBin = needBinary("redis-server", "redis-server");
const sha = (s: string): string => createHash("sha256").update(s).digest("hex");
const OPS = bearer("tok_ops");
const OPERATORS = [{ name: "ops", token_sha256: sha("tok_ops") }];

function record(id: string, secret: string, allow: string[] = []): KeyRecord {
  return {
    id,
    name: id,
    secretDigest: digestOfHex(sha(secret)),
    scopes: [],
    ipAllowList: allow,
    mode: undefined,
    createdAt: undefined,
    updatedAt: undefined,
  };
}

/** Initializes the store under `prefix` at `url` with {@link SEED} over a one-off connection. */
async function seedAt(url: string, prefix: string): Promise<void> {
  const client = await connectOnce(url);
  try {
    await importRecords(client, prefix, SEED);
  } finally {
    client.destroy();
  }
}

/** A `keyfence serve` configuration in `dir` for the Redis store `redis` in front of `up`; its path. */
function serveConfig(
  dir: string,
  up: Upstream,
  redis: { url: string; prefix: string },
  keys: Record<string, unknown> = {},
): string {
  const cfg = join(dir, "keyfence.yaml");
  writeFileSync(cfg, stringify({ listen: "127.0.0.1:0", upstream: up.url, keys: { store: "redis", ...keys, redis } }));
  return cfg;
}

/** The initial store: one key usable from loopback, one pinned elsewhere. */
const SEED = [record("k_open", "s_open"), record("k_pinned", "s_pinned", ["203.0.113.0/24"])];

async function replica(
  up: Upstream,
  url: string,
  prefix: string,
  extra: Record<string, unknown> = {},
): Promise<TestSidecar> {
  return startTestSidecar({
    upstream: up.url,
    keys: "keys: []\n",
    keysConfig: { store: "redis", redis: { url, prefix, ...extra }, unknown: "reject" },
    admin: { operators: OPERATORS },
  });
}

/** What the proxy of `kf` answers for `secret` from 127.0.0.1: 200 allowed, 403 pinned elsewhere, 401 unknown. */
async function proxied(kf: TestSidecar, secret: string): Promise<number> {
  return (await send(`${kf.url}/x`, { headers: [bearer(secret)] })).status;
}

async function apiCall(kf: TestSidecar, method: string, path: string, json?: unknown): Promise<Reply> {
  const headers: Array<[string, string]> = [OPS];
  if (json !== undefined) headers.push(["Content-Type", "application/json"]);
  return send(`${kf.adminUrl}${path}`, {
    method,
    headers,
    body: json === undefined ? undefined : JSON.stringify(json),
  });
}

async function create(kf: TestSidecar, body: unknown): Promise<{ id: string; secret: string }> {
  const r = await apiCall(kf, "POST", "/v1/api-keys", body);
  assert.equal(r.status, 201, r.body);
  return r.json() as { id: string; secret: string };
}

/** The changes of each snapshot `kf`'s store installs from now on by a catch-up or resync (undefined: read afresh, taken whole). */
function resyncsOf(kf: TestSidecar): (readonly KeyChange[] | undefined)[] {
  const seen: (readonly KeyChange[] | undefined)[] = [];
  kf.sidecar.store.subscribe({
    change: (_snapshot, cause, changes) => {
      if (cause === "reload") seen.push(changes);
    },
  });
  return seen;
}

async function storeUp(kf: TestSidecar): Promise<string | undefined> {
  const m = await send(`${kf.adminUrl}/metrics`);
  return /^keyfence_store_up (\d)/m.exec(m.body)?.[1];
}

describe("Redis store", { skip: redisBin.skip }, () => {
  let up: Upstream;
  const started: TestSidecar[] = [];
  const start = async (url: string, prefix: string, extra?: Record<string, unknown>): Promise<TestSidecar> => {
    const kf = await replica(up, url, prefix, extra);
    started.push(kf);
    return kf;
  };

  before(async () => {
    up = await startUpstream();
  });
  after(async () => {
    await Promise.all(started.map((kf) => kf.stop()));
    await up.close();
  });
  const redis = redisFixture(redisBin.path, "kf");
  const seed = (prefix: string, records: readonly KeyRecord[] = SEED): Promise<void> => redis.seed(prefix, records);

  test("a change through any of three replicas is enforced by all three within 1 s", async () => {
    const prefix = redis.newPrefix();
    await seed(prefix);
    const r = [await start(redis.url, prefix), await start(redis.url, prefix), await start(redis.url, prefix)] as const;
    for (const kf of r) {
      assert.equal(await proxied(kf, "s_open"), 200);
      assert.equal(await proxied(kf, "s_pinned"), 403);
    }
    const within = async (what: string, check: (kf: TestSidecar) => Promise<boolean>): Promise<void> => {
      const t0 = Date.now();
      for (const kf of r) await eventually(() => check(kf), 1000, what);
      assert.ok(Date.now() - t0 < 1500);
    };
    // Create through replica 0.
    const k = await create(r[0], { name: "new", ip_allow_list: ["198.51.100.7"] });
    await within("the new key on every replica", async (kf) => (await proxied(kf, k.secret)) === 403);
    // Loosen through replica 1: the key now works from anywhere.
    const p = await apiCall(r[1], "PATCH", `/v1/api-keys/${k.id}`, { ip_allow_list: [] });
    assert.equal(p.status, 200, p.body);
    await within("the patch on every replica", async (kf) => (await proxied(kf, k.secret)) === 200);
    // Tighten through replica 2.
    const t = await apiCall(r[2], "PATCH", `/v1/api-keys/k_open`, { ip_allow_list: ["192.0.2.1"] });
    assert.equal(t.status, 200, t.body);
    await within("the restriction on every replica", async (kf) => (await proxied(kf, "s_open")) === 403);
    // Delete through replica 0.
    assert.equal((await apiCall(r[0], "DELETE", `/v1/api-keys/${k.id}`)).status, 204);
    await within("the delete on every replica", async (kf) => (await proxied(kf, k.secret)) === 401);
    for (const kf of r) {
      const got = await apiCall(kf, "GET", "/v1/api-keys/k_open");
      assert.deepEqual((got.json() as { ip_allow_list: string[] }).ip_allow_list, ["192.0.2.1"]);
      assert.equal((await send(`${kf.adminUrl}/readyz`)).status, 200);
      assert.equal(await storeUp(kf), "1");
    }
  });

  test("concurrent writes through three replicas lose nothing", async () => {
    const prefix = redis.newPrefix();
    await seed(prefix, []);
    const r = [await start(redis.url, prefix), await start(redis.url, prefix), await start(redis.url, prefix)];
    // 30 creates at once, spread over the replicas.
    const made = await Promise.all(
      Array.from({ length: 30 }, (_, i) => create(r[i % 3] as TestSidecar, { name: `c${i}` })),
    );
    assert.equal(new Set(made.map((m) => m.id)).size, 30);
    for (const kf of r) await eventually(() => kf.sidecar.store.snapshot.size === 30, 1000, "30 keys everywhere");
    // Patches of different fields of one key through different replicas at once: every one survives.
    for (let round = 0; round < 5; round++) {
      const id = (made[round] as { id: string }).id;
      const replies = await Promise.all([
        apiCall(r[0] as TestSidecar, "PATCH", `/v1/api-keys/${id}`, { name: `renamed${round}` }),
        apiCall(r[1] as TestSidecar, "PATCH", `/v1/api-keys/${id}`, { scopes: [`s:${round}`] }),
        apiCall(r[2] as TestSidecar, "PATCH", `/v1/api-keys/${id}`, { ip_allow_list: ["192.0.2.9"] }),
        apiCall(r[0] as TestSidecar, "PATCH", `/v1/api-keys/${id}`, { mode: "report" }),
      ]);
      for (const x of replies) assert.equal(x.status, 200, x.body);
      for (const kf of r) {
        await eventually(
          () => {
            const rec = kf.sidecar.store.snapshot.record(id);
            return (
              rec?.name === `renamed${round}` &&
              rec.scopes.join() === `s:${round}` &&
              rec.ipAllowList.join() === "192.0.2.9" &&
              rec.mode === "report"
            );
          },
          1000,
          `every patch of round ${round} on every replica`,
        );
      }
    }
    const all = await redis.withClient((c) => exportRecords(c, prefix));
    assert.equal(all.length, 30);
  });

  /** Runs `body` with a freshly seeded prefix and a relay to the server, closed afterwards. */
  const withRelay = async (body: (relay: Relay, prefix: string) => Promise<void>): Promise<void> => {
    const prefix = redis.newPrefix();
    await seed(prefix);
    const relay = await startRelay(redis.port);
    try {
      await body(relay, prefix);
    } finally {
      await relay.close();
    }
  };

  test("one replica cut off keeps enforcing, answers writes 503, and catches up on what it missed", () =>
    withRelay(async (relay, prefix) => {
      const a = await start(redis.url, prefix);
      const b = await start(relay.url, prefix);
      relay.cut();
      await eventually(async () => (await send(`${b.adminUrl}/readyz`)).status === 503, 3000, "readyz 503");
      const ready = await send(`${b.adminUrl}/readyz`);
      assert.match(ready.body, /Redis redis:\/\/127\.0\.0\.1/);
      assert.equal((await send(`${b.adminUrl}/healthz`)).status, 200);
      assert.equal(await storeUp(b), "0");
      const w = await apiCall(b, "POST", "/v1/api-keys", { name: "refused" });
      assert.equal(w.status, 503);
      assert.deepEqual(w.json(), { message: "key store unavailable" });
      assert.equal(w.headers["x-keyfence-reason"], "store_unavailable");
      // Meanwhile, through the other replica: a new key, a restriction, a delete.
      const k = await create(a, { name: "missed" });
      assert.equal((await apiCall(a, "PATCH", "/v1/api-keys/k_open", { ip_allow_list: ["192.0.2.1"] })).status, 200);
      assert.equal((await apiCall(a, "DELETE", "/v1/api-keys/k_pinned")).status, 204);
      // b still enforces its last snapshot.
      assert.equal(await proxied(b, "s_open"), 200);
      assert.equal(await proxied(b, "s_pinned"), 403);
      assert.equal(await proxied(b, k.secret), 401);
      relay.restore();
      await eventually(async () => (await proxied(b, k.secret)) === 200, 5000, "the missed create");
      assert.equal(await proxied(b, "s_open"), 403);
      assert.equal(await proxied(b, "s_pinned"), 401);
      assert.equal((await send(`${b.adminUrl}/readyz`)).status, 200);
      assert.equal(await storeUp(b), "1");
      assert.equal((await apiCall(b, "POST", "/v1/api-keys", { name: "after" })).status, 201);
    }));

  test("a store that hangs with the connection open is an outage within seconds: readyz 503, writes 503, then back", () =>
    // node-redis stops timing a command once it is written: a stopped Redis used to leave writes, sign-ins and
    // token checks waiting until it woke, with /readyz 200 all along.
    withRelay(async (relay, prefix) => {
      const b = await start(relay.url, prefix);
      assert.equal((await send(`${b.adminUrl}/readyz`)).status, 200);
      relay.hold();
      const t0 = Date.now();
      const w = await apiCall(b, "POST", "/v1/api-keys", { name: "refused-while-hung" });
      assert.equal(w.status, 503, w.body);
      assert.equal(w.headers["x-keyfence-reason"], "store_unavailable");
      assert.ok(Date.now() - t0 < 8_000, `answered after ${Date.now() - t0} ms`);
      await eventually(async () => (await send(`${b.adminUrl}/readyz`)).status === 503, 10_000, "readyz 503");
      assert.equal(await storeUp(b), "0");
      assert.equal(await proxied(b, "s_open"), 200, "the proxy keeps enforcing its last snapshot");
      assert.equal(await proxied(b, "s_pinned"), 403);
      relay.release();
      await eventually(async () => (await send(`${b.adminUrl}/readyz`)).status === 200, 10_000, "readyz 200 again");
      assert.equal(await storeUp(b), "1");
      const keys = await apiCall(b, "GET", "/v1/api-keys");
      assert.equal(keys.status, 200, keys.body);
      assert.equal(keys.body.includes("refused-while-hung"), false, "the refused write was never applied");
      assert.equal((await apiCall(b, "POST", "/v1/api-keys", { name: "after" })).status, 201);
    }));

  test("a store gone back to an older copy is an outage, never adopted, until a re-import under a new generation", async () => {
    const prefix = redis.newPrefix();
    await seed(prefix);
    const a = await start(redis.url, prefix);
    const names = redisKeys(prefix);
    const [text, version] = await redis.withClient((c) =>
      Promise.all([c.hGet(names.keys, "k_open"), c.get(names.version)]),
    );
    assert.equal((await apiCall(a, "PATCH", "/v1/api-keys/k_open", { ip_allow_list: ["192.0.2.1"] })).status, 200);
    assert.equal(await proxied(a, "s_open"), 403);
    // As after a restart from a copy saved before the change: the record and the version as they were.
    await redis.withClient(async (c) => {
      await c.hSet(names.keys, "k_open", text ?? "");
      await c.set(names.version, version ?? "0");
    });
    await eventually(async () => (await send(`${a.adminUrl}/readyz`)).status === 503, 10_000, "readyz 503");
    assert.match((await send(`${a.adminUrl}/readyz`)).body, /went back to an older state/);
    assert.equal(await storeUp(a), "0");
    assert.equal(await proxied(a, "s_open"), 403, "the restriction the lost change added stays");
    assert.equal((await apiCall(a, "POST", "/v1/api-keys", { name: "refused" })).status, 503);
    // Other writers pushing the version past this replica's do not end it either.
    await redis.withClient((c) => c.set(names.version, "1000"));
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal((await send(`${a.adminUrl}/readyz`)).status, 503);
    // An operator restores the keys under a new generation.
    await redis.withClient(async (c) => {
      await c.del(names.generation);
      await importRecords(c, prefix, [record("k_open", "s_open", ["198.51.100.0/24"]), SEED[1] as KeyRecord]);
    });
    await eventually(async () => (await send(`${a.adminUrl}/readyz`)).status === 200, 10_000, "readyz 200");
    assert.equal(await proxied(a, "s_open"), 403);
    assert.equal((await apiCall(a, "PATCH", "/v1/api-keys/k_open", { ip_allow_list: [] })).status, 200);
    await eventually(async () => (await proxied(a, "s_open")) === 200, 2000, "writes work again");
  });

  test("a key's change is not committed when another replica revoked the key after this one authorized it", async () => {
    const writer: KeyRecord = { ...record("k_writer", "s_writer", ["127.0.0.1"]), scopes: ["api_keys:write"] };
    const revocations: Array<[string, unknown, number]> = [
      ["its write scope removed", { scopes: [] }, 403],
      ["narrowed away from its caller", { ip_allow_list: ["203.0.113.9"] }, 403],
      ["deleted", undefined, 401],
    ];
    for (const [what, patch, status] of revocations) {
      const prefix = redis.newPrefix();
      await seed(prefix, [...SEED, writer]);
      const a = await start(redis.url, prefix);
      const b = await start(redis.url, prefix);
      // Between replica A's catch-up (the plan authorizes the key) and its commit, an operator revokes the key on B.
      const store = a.sidecar.store;
      const transact = store.transact.bind(store);
      let revoked = false;
      store.transact = (plan) =>
        transact(async (snap) => {
          const p = await plan(snap);
          if (!revoked) {
            revoked = true;
            const r =
              patch === undefined
                ? await apiCall(b, "DELETE", "/v1/api-keys/k_writer")
                : await apiCall(b, "PATCH", "/v1/api-keys/k_writer", patch);
            assert.ok(r.status === 200 || r.status === 204, r.body);
          }
          return p;
        });
      try {
        const r = await send(`${a.adminUrl}/v1/api-keys/k_open`, {
          method: "PATCH",
          headers: [bearer("s_writer"), ["Content-Type", "application/json"]],
          body: JSON.stringify({ name: `renamed by a key ${what}` }),
        });
        assert.equal(r.status, status, `${what}: ${r.body}`);
        assert.ok(revoked);
      } finally {
        delete (store as { transact?: unknown }).transact;
      }
      const stored = await redis.withClient((c) => c.hGet(redisKeys(prefix).keys, "k_open"));
      assert.equal(JSON.parse(stored ?? "[]")[0], "k_open", `${what}: k_open's name unchanged`);
    }
  });

  test("vanished data is an outage, never no keys, until an import restores it", async () => {
    const prefix = redis.newPrefix();
    await seed(prefix);
    const a = await start(redis.url, prefix);
    const b = await start(redis.url, prefix);
    await redis.withClient(async (c) => {
      // As after a restart without persistence: every key under the prefix is gone.
      const names = await c.keys(`${prefix}*`);
      await c.del(names);
      await c.publish(`${prefix}changes`, "x 999");
      for (const kf of [a, b]) {
        await eventually(async () => (await send(`${kf.adminUrl}/readyz`)).status === 503, 7000, "readyz 503");
        assert.match((await send(`${kf.adminUrl}/readyz`)).body, /no keyfence data/);
        assert.equal(await proxied(kf, "s_open"), 200);
        assert.equal(await proxied(kf, "s_pinned"), 403, "the restriction still holds");
        assert.equal((await apiCall(kf, "DELETE", "/v1/api-keys/k_pinned")).status, 503);
      }
      // The operator restores the store (with one change): every replica resyncs.
      await importRecords(c, prefix, [record("k_open", "s_open", ["192.0.2.1"]), SEED[1] as KeyRecord]);
      for (const kf of [a, b]) {
        await eventually(async () => (await send(`${kf.adminUrl}/readyz`)).status === 200, 7000, "readyz 200");
        assert.equal(await proxied(kf, "s_open"), 403);
      }
    });
  });

  test("a full resync applies what differs: a key gone from the store stops working, changed and new ones take effect", async () => {
    const prefix = redis.newPrefix();
    await seed(prefix, [...SEED, record("k_gone", "s_gone"), record("k_same", "s_same")]);
    const a = await start(redis.url, prefix);
    assert.equal(await proxied(a, "s_gone"), 200);
    const resyncs = resyncsOf(a);
    await redis.withClient(async (c) => {
      // A re-import under a new generation: the replica reads every record and compares.
      await c.del(redisKeys(prefix).generation);
      const restored = [record("k_open", "s_open", ["192.0.2.1"]), SEED[1] as KeyRecord, record("k_same", "s_same")];
      await importRecords(c, prefix, [...restored, record("k_new", "s_new")]);
    });
    await eventually(async () => (await proxied(a, "s_new")) === 200, 7000, "the resync");
    assert.equal(await proxied(a, "s_gone"), 401, "a key the store no longer holds");
    assert.equal(await proxied(a, "s_open"), 403);
    assert.equal(await proxied(a, "s_same"), 200);
    assert.equal(await proxied(a, "s_pinned"), 403);
    // Applied as changes over the snapshot held: the two that differ, the new key and the key gone.
    assert.deepEqual(
      resyncs.map((changes) => changes?.map((c) => `${c.kind} ${changedId(c)}`).sort()),
      [["delete k_gone", "update k_new", "update k_open"]],
    );
  });

  test("a full resync with more differences than it applies as changes builds the snapshot afresh, just as right", async () => {
    const prefix = redis.newPrefix();
    await seed(prefix, [...SEED, record("k_gone", "s_gone")]);
    const a = await start(redis.url, prefix);
    const resyncs = resyncsOf(a);
    // More than DELTA_MAX (10,000) records differ.
    const many = Array.from({ length: 10_050 }, (_, i) => record(`k_${i}`, `s_${i}`, i === 7 ? ["192.0.2.1"] : []));
    await redis.withClient(async (c) => {
      await c.del(redisKeys(prefix).generation);
      await importRecords(c, prefix, [...SEED, ...many]);
    });
    await eventually(async () => (await proxied(a, "s_10049")) === 200, 10_000, "the resync");
    assert.equal(await proxied(a, "s_7"), 403);
    assert.equal(await proxied(a, "s_gone"), 401, "a key the store no longer holds");
    assert.equal(await proxied(a, "s_pinned"), 403);
    assert.match((await send(`${a.adminUrl}/metrics`)).body, /^keyfence_keys 10052$/m);
    // Read afresh, taken whole: no list of changes.
    assert.deepEqual(resyncs, [undefined]);
  });

  test("a record this version cannot read is an outage, never an unknown key", async () => {
    // Skipping it would make the key unknown, and unknown keys may be forwarded unchecked.
    const prefix = redis.newPrefix();
    await seed(prefix);
    const a = await start(redis.url, prefix);
    assert.equal(await proxied(a, "s_pinned"), 403);
    const names = redisKeys(prefix);
    await redis.withClient(async (c) => {
      // As a newer version's record format, or corruption; a new generation makes the replica read every record.
      await c.hSet(names.keys, "k_pinned", JSON.stringify(["k_pinned", sha("s_pinned"), [], [], 0, 0, 0, 2, 3, 4]));
      await c.set(names.generation, "newer");
      await c.publish(names.channel, "x 999");
      await eventually(async () => (await send(`${a.adminUrl}/readyz`)).status === 503, 7000, "readyz 503");
      assert.match((await send(`${a.adminUrl}/readyz`)).body, /cannot read the record of key \\?"k_pinned\\?"/);
      assert.equal(await storeUp(a), "0");
      assert.equal(await proxied(a, "s_pinned"), 403, "the last snapshot's restriction still holds");
      assert.equal(await proxied(a, "s_open"), 200);
      await assert.rejects(exportRecords(c, prefix), /cannot read the record of key "k_pinned"/);
      // Fixed by an import: the replica reads every record again.
      await importRecords(c, prefix, SEED);
      await eventually(async () => (await send(`${a.adminUrl}/readyz`)).status === 200, 7000, "readyz 200");
      assert.equal(await proxied(a, "s_pinned"), 403);
    });
  });

  test("a change whose notice never came is enforced within about a second (SPEC §6), by the version check alone", async () => {
    const prefix = redis.newPrefix();
    await seed(prefix);
    const a = await start(redis.url, prefix);
    const names = redisKeys(prefix);
    // A commit's writes without its PUBLISH, as when a notice is lost; four times, so a check landing early by luck
    // (the check ran every 5 s before) cannot pass for all of them.
    for (let i = 0; i < 4; i++) {
      const narrowed = i % 2 === 0;
      await redis.withClient(async (c) => {
        await c.hSet(names.keys, "k_open", encodeRecord(record("k_open", "s_open", narrowed ? ["192.0.2.1"] : [])));
        const v = await c.incr(names.version);
        await c.xAdd(names.log, `${v}-0`, { id: "k_open" });
      });
      const want = narrowed ? 403 : 200;
      await eventually(async () => (await proxied(a, "s_open")) === want, 2000, `change ${i + 1} within 2 s`);
    }
  });

  test("an allow-list entry written into Redis by other means is an outage, never a crash on the key's request", async () => {
    // Before: the record was read, and the first request with the key found the entry would not compile and ended the process.
    const prefix = redis.newPrefix();
    await seed(prefix);
    const a = await start(redis.url, prefix);
    const names = redisKeys(prefix);
    for (const entry of ["garbage", "0.0.0.0/0", "198.51.100.7/24", "300.1.2.3"]) {
      await redis.withClient(async (c) => {
        // A change as a commit announces it: the record, the version, the log entry naming the key, the notice.
        await c.hSet(names.keys, "k_pinned", JSON.stringify(["k_pinned", sha("s_pinned"), [], [entry], 0, 0, 0]));
        const v = await c.incr(names.version);
        await c.xAdd(names.log, `${v}-0`, { id: "k_pinned" });
        await c.publish(names.channel, `${(await c.get(names.generation)) ?? ""} ${v}`);
      });
      await eventually(async () => (await send(`${a.adminUrl}/readyz`)).status === 503, 7000, `readyz 503 (${entry})`);
      assert.equal(await proxied(a, "s_pinned"), 403, "the last snapshot's restriction still holds");
      assert.equal(await proxied(a, "s_open"), 200, "and the process still answers");
    }
    await redis.withClient((c) => importRecords(c, prefix, SEED));
    await eventually(async () => (await send(`${a.adminUrl}/readyz`)).status === 200, 7000, "readyz 200");
    assert.equal(await proxied(a, "s_pinned"), 403);
  });

  test("redis-server killed and restarted: fail-static, 503, then catch-up once the store is restored", async () => {
    const prefix = redis.newPrefix();
    await seed(prefix);
    const a = await start(redis.url, prefix);
    const b = await start(redis.url, prefix);
    await redis.server.kill();
    for (const kf of [a, b]) {
      await eventually(async () => (await send(`${kf.adminUrl}/readyz`)).status === 503, 3000, "readyz 503");
      assert.equal(await proxied(kf, "s_open"), 200);
      assert.equal(await proxied(kf, "s_pinned"), 403);
      assert.equal(await storeUp(kf), "0");
      const w = await apiCall(kf, "PATCH", "/v1/api-keys/k_pinned", { ip_allow_list: [] });
      assert.equal(w.status, 503);
    }
    await redis.server.start();
    // Without persistence the data is gone: still an outage, once each sidecar has seen the empty server.
    for (const kf of [a, b]) {
      await eventually(
        async () => (await send(`${kf.adminUrl}/readyz`)).body.includes("holds no keyfence data"),
        7000,
        "readyz naming the emptied store",
      );
      assert.equal((await send(`${kf.adminUrl}/readyz`)).status, 503);
      assert.equal(await proxied(kf, "s_pinned"), 403);
    }
    await seed(prefix, [...SEED, record("k_new", "s_new")]);
    for (const kf of [a, b]) {
      await eventually(async () => (await proxied(kf, "s_new")) === 200, 7000, "the restored store");
      assert.equal((await send(`${kf.adminUrl}/readyz`)).status, 200);
    }
  });

  /** Runs `body` with a seeded prefix, a relay to the server and a snapshot file's path in a directory of its own. */
  const withSnapshotFile = async (
    body: (s: { prefix: string; dir: string; relay: Relay; snapshotFile: string }) => Promise<void>,
  ): Promise<void> => {
    const prefix = redis.newPrefix();
    await seed(prefix);
    const dir = mkdtempSync(join(tmpdir(), "keyfence-redis-"));
    const relay = await startRelay(redis.port);
    try {
      await body({ prefix, dir, relay, snapshotFile: join(dir, "keys.snapshot") });
    } finally {
      await relay.close();
      rmSync(dir, { recursive: true, force: true });
    }
  };

  /** A replica started on `url` (Redis unreachable through it) from `snapshotFile`: says so, enforces the seed. */
  const fromSnapshot = async (url: string, prefix: string, snapshotFile: string): Promise<TestSidecar> => {
    const b = await start(url, prefix, { snapshot_file: snapshotFile });
    assert.ok(
      b.logs.some((l) => l["event"] === "store_snapshot_file"),
      b.logText(),
    );
    assert.equal(await proxied(b, "s_pinned"), 403);
    assert.equal(await proxied(b, "s_open"), 200);
    return b;
  };

  test("snapshot_file is written at start, before any change, so a replica that saw none can start from it", async () => {
    await withSnapshotFile(async ({ prefix, relay, snapshotFile }) => {
      await start(redis.url, prefix, { snapshot_file: snapshotFile });
      await eventually(() => existsSync(snapshotFile), 3000, "the snapshot file, with no change made");
      relay.cut();
      await fromSnapshot(relay.url, prefix, snapshotFile);
    });
  });

  test("a replica started while Redis is down starts from snapshot_file, else exits 1", async () => {
    await withSnapshotFile(async ({ prefix, dir, relay, snapshotFile }) => {
      const a = await start(redis.url, prefix, { snapshot_file: snapshotFile });
      await create(a, { name: "in-snapshot", ip_allow_list: ["198.51.100.0/24"] });
      await eventually(() => existsSync(snapshotFile), 3000, "the snapshot file");
      relay.cut();
      // Without snapshot_file: a clear error.
      await assert.rejects(
        replica(up, relay.url, prefix),
        (err: unknown) =>
          err instanceof StoreLoadError && /unavailable.*snapshot_file/s.test(err.problems[0]?.message ?? ""),
      );
      // The real command exits 1 saying so.
      const cfg = serveConfig(dir, up, { url: relay.url, prefix });
      await assert.rejects(spawnKeyfence(cfg), /exited with 1[\s\S]*key store Redis .* is unavailable/);
      // With it: starts, says so, enforces the snapshot, not ready.
      const b = await fromSnapshot(relay.url, prefix, snapshotFile);
      assert.equal(b.sidecar.store.snapshot.size, 3);
      assert.equal((await send(`${b.adminUrl}/readyz`)).status, 503);
      const k = await create(a, { name: "while-b-was-down" });
      relay.restore();
      await eventually(async () => (await proxied(b, k.secret)) === 200, 7000, "b catches up");
      assert.equal((await send(`${b.adminUrl}/readyz`)).status, 200);
      // The real command with Redis reachable: its start line names the store, not a keys file it never reads.
      const c = await spawnKeyfence(cfg);
      try {
        assert.match(c.output(), /"keys_store":"Redis redis:\/\/127\.0\.0\.1:\d+\/? \(prefix \\"/);
        assert.doesNotMatch(c.output(), /keys_file/);
      } finally {
        c.child.kill();
        await c.exited;
      }
    });
  });
});

describe("Redis store behind a password (SPEC §6: user:password@ in the URL)", { skip: redisBin.skip }, () => {
  test("the password in the URL is used for every connection; a wrong one is a clear start-up error", async () => {
    const server = await startRedis(redisBin.path ?? "redis-server", ["--requirepass", "s3cret"]);
    const up = await startUpstream();
    const started: TestSidecar[] = [];
    try {
      const url = `redis://:s3cret@127.0.0.1:${server.port}`;
      await seedAt(url, "pw:");
      const a = await replica(up, url, "pw:");
      const b = await replica(up, url, "pw:");
      started.push(a, b);
      assert.equal(await proxied(a, "s_open"), 200);
      assert.equal(await proxied(b, "s_pinned"), 403);
      // Writes and the shared admin state (attempts, sessions) use the same connection.
      const made = await create(a, { name: "with a password", ip_allow_list: ["127.0.0.1"] });
      await eventually(async () => (await proxied(b, made.secret)) === 200, 2000, "B enforces A's change");
      assert.equal((await send(`${b.adminUrl}/readyz`)).status, 200);
      for (const kf of [a, b]) assert.doesNotMatch(kf.logText(), /s3cret/, "the password is never logged");
      await assert.rejects(
        replica(up, `redis://:wrong@127.0.0.1:${server.port}`, "pw:"),
        (err: unknown) =>
          err instanceof StoreLoadError &&
          /unavailable/.test(err.problems[0]?.message ?? "") &&
          // The URL's password is never repeated (README: never logged).
          !err.problems.some((p) => p.message.includes("wrong")),
      );
    } finally {
      await Promise.all(started.map((kf) => kf.stop()));
      await up.close();
      await server.kill();
    }
  });
});

describe("Redis store restarted from an older copy while a replica was cut off", { skip: redisBin.skip }, () => {
  test("the cut-off replica, back, finds its version written by another history: an outage, not a silent divergence", async () => {
    const dir = mkdtempSync(join(tmpdir(), "keyfence-redis-rdb-"));
    // An RDB in `dir`, read again when the server starts: SAVE now, a crash later, and it comes back as saved.
    const server = await startRedis(redisBin.path ?? "redis-server", ["--dir", dir]);
    const up = await startUpstream();
    const relay = await startRelay(server.port);
    const started: TestSidecar[] = [];
    try {
      await seedAt(server.url, "rb:");
      const a = await replica(up, server.url, "rb:");
      const b = await replica(up, relay.url, "rb:");
      started.push(a, b);
      const saver = await connectOnce(server.url);
      await saver.sendCommand(["SAVE"]);
      await saver.quit();
      // Three keys made after the copy; B (through the relay) holds them too.
      const made: Array<{ id: string; secret: string }> = [];
      for (let i = 0; i < 3; i++) made.push(await create(a, { name: `after-the-copy-${i}` }));
      await eventually(async () => (await proxied(b, made[2]?.secret ?? "")) === 200, 3000, "B has the third");
      relay.cut();
      await server.kill();
      await server.start(); // from the copy: the three keys and their versions are gone
      // A fresh replica cannot tell, and writes the store past B's version: another history of the same numbers.
      const c = await replica(up, server.url, "rb:");
      started.push(c);
      assert.equal((await apiCall(c, "DELETE", "/v1/api-keys/k_open")).status, 204);
      for (let i = 0; i < 3; i++) await create(c, { name: `another-history-${i}` });
      relay.restore();
      // Back in touch with the store (readyz said "unreachable" while cut off), B names what happened.
      const said = async (): Promise<Reply> => send(`${b.adminUrl}/readyz`);
      await eventually(async () => /went back to an older state/.test((await said()).body), 7000, "B reports it");
      assert.equal((await said()).status, 503);
      // A was connected when the copy came back: it saw the version fall, and says the same.
      assert.equal((await send(`${a.adminUrl}/readyz`)).status, 503);
    } finally {
      await Promise.all(started.map((kf) => kf.stop()));
      await relay.close();
      await up.close();
      await server.kill();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("Redis store on a server that may evict keys", { skip: redisBin.skip }, () => {
  test("a replica warns when maxmemory-policy is not noeviction, and only then", async () => {
    const evicting = await startRedis(redisBin.path ?? "redis-server", ["--maxmemory-policy", "allkeys-lru"]);
    const keeping = await startRedis(redisBin.path ?? "redis-server");
    const up = await startUpstream();
    const started: TestSidecar[] = [];
    const warned = (kf: TestSidecar): Array<Record<string, unknown>> =>
      kf.logs.filter((l) => l["event"] === "store_eviction_policy");
    try {
      for (const server of [evicting, keeping]) await seedAt(`redis://127.0.0.1:${server.port}`, "ev:");
      const a = await replica(up, `redis://127.0.0.1:${evicting.port}`, "ev:");
      const b = await replica(up, `redis://127.0.0.1:${keeping.port}`, "ev:");
      started.push(a, b);
      await eventually(() => warned(a).length > 0, 3000, "the warning");
      assert.equal(warned(a)[0]?.["maxmemory_policy"], "allkeys-lru");
      assert.match(String(warned(a)[0]?.["msg"]), /set maxmemory-policy noeviction/);
      assert.equal(await proxied(a, "s_open"), 200, "a warning, not a refusal");
      // B asked too, before anything else on its connection, so its answer came before its load's: nothing to say.
      assert.deepEqual(warned(b), []);
    } finally {
      await Promise.all(started.map((kf) => kf.stop()));
      await up.close();
      await evicting.kill();
      await keeping.kill();
    }
  });
});

describe("Redis store over TLS (SPEC §6: rediss://)", { skip: redisBin.skip }, () => {
  const openssl = needBinary("openssl", "openssl");
  test(
    "a replica reads the store through rediss:// with the CA it trusts, and refuses a server it cannot verify",
    {
      skip: openssl.skip,
    },
    async () => {
      const dir = mkdtempSync(join(tmpdir(), "keyfence-tls-"));
      const ssl = (...args: string[]): void => {
        execFileSync(openssl.path ?? "openssl", args, { cwd: dir, stdio: "ignore" });
      };
      ssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=keyfence test CA",
      );
      ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=127.0.0.1");
      writeFileSync(join(dir, "san.ext"), "subjectAltName=IP:127.0.0.1\n");
      ssl(
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.pem",
        "-days",
        "1",
        "-extfile",
        "san.ext",
      );
      const tlsPort = await freePort();
      const server = await startRedis(redisBin.path ?? "redis-server", [
        ...["--tls-port", String(tlsPort), "--tls-auth-clients", "no"],
        ...["--tls-cert-file", join(dir, "srv.pem"), "--tls-key-file", join(dir, "srv.key")],
        ...["--tls-ca-cert-file", join(dir, "ca.pem")],
      ]);
      const up = await startUpstream();
      let running: Running | undefined;
      try {
        // Seeded over the plain port; the replica uses TLS only.
        await seedAt(server.url, "tls:");
        const cfg = serveConfig(
          dir,
          up,
          { url: `rediss://127.0.0.1:${tlsPort}`, prefix: "tls:" },
          { unknown: "reject" },
        );
        await assert.rejects(spawnKeyfence(cfg), /exited with 1[\s\S]*key store Redis .* is unavailable/);
        running = await spawnKeyfence(cfg, { NODE_EXTRA_CA_CERTS: join(dir, "ca.pem") });
        const call = (secret: string): Promise<Reply> =>
          send(`${running?.proxy ?? ""}/x`, { headers: [bearer(secret)] });
        assert.equal((await call("s_open")).status, 200);
        assert.equal((await call("s_pinned")).status, 403);
        assert.equal((await call("nope")).status, 401);
      } finally {
        running?.child.kill("SIGTERM");
        await running?.exited;
        await up.close();
        await server.kill();
        rmSync(dir, { recursive: true, force: true });
      }
    },
  );
});

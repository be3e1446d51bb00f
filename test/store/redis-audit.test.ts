/**
 * SPEC §5/§6 with a real redis-server: with `keys.store: redis` the audit log
 * is one capped stream that every replica writes and reads; each entry is
 * committed in the same script as its change, so a change whose entry cannot
 * be written is not made (503 `audit_unavailable`); reads during an outage
 * answer 503 `store_unavailable`.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { after, before, describe, test } from "node:test";
import type { AuditEvent, AuditPage } from "../../src/admin/audit.js";
import { sideFiles } from "../../src/cli/sidecar.js";
import { digestOfHex } from "../../src/store/digest.js";
import type { KeyRecord } from "../../src/store/keysfile.js";
import { needBinary } from "../helpers/binary.js";
import { bearer, send, type Reply } from "../helpers/http.js";
import { redisFixture, startRelay } from "../helpers/redis.js";
import { eventually, startTestSidecar, type TestSidecar } from "../helpers/sidecar.js";
import { startUpstream, type Upstream } from "../helpers/upstream.js";

const redisBin = needBinary("redis-server", "redis-server");
const sha = (s: string): string => createHash("sha256").update(s).digest("hex");
const OPS = bearer("tok_ops");

const SEED: KeyRecord[] = [
  {
    id: "k_seed",
    name: "seed",
    secretDigest: digestOfHex(sha("s_seed")),
    scopes: [],
    ipAllowList: ["192.0.2.1"],
    mode: undefined,
    createdAt: undefined,
    updatedAt: undefined,
  },
];

async function apiCall(kf: TestSidecar, method: string, path: string, json?: unknown): Promise<Reply> {
  const headers: Array<[string, string]> = [OPS];
  if (json !== undefined) headers.push(["Content-Type", "application/json"]);
  return send(`${kf.adminUrl}${path}`, {
    method,
    headers,
    body: json === undefined ? undefined : JSON.stringify(json),
  });
}

async function create(kf: TestSidecar, body: unknown): Promise<string> {
  const r = await apiCall(kf, "POST", "/v1/api-keys", body);
  assert.equal(r.status, 201, r.body);
  return (r.json() as { id: string }).id;
}

async function auditPage(kf: TestSidecar, query = ""): Promise<AuditPage> {
  const r = await apiCall(kf, "GET", `/v1/audit${query}`);
  assert.equal(r.status, 200, r.body);
  return r.json() as AuditPage;
}

/** Every event, newest first, read `limit` at a time through the cursor. */
async function allEvents(kf: TestSidecar, limit: number): Promise<AuditEvent[]> {
  const out: AuditEvent[] = [];
  let cursor: string | null = null;
  for (let i = 0; i < 10_000; i++) {
    const page: AuditPage = await auditPage(kf, `?limit=${limit}${cursor === null ? "" : `&cursor=${cursor}`}`);
    out.push(...page.data);
    if (page.next_cursor === null) return out;
    cursor = page.next_cursor;
  }
  throw new Error("pagination never ended");
}

describe("audit log in Redis", { skip: redisBin.skip }, () => {
  let up: Upstream;
  const started: TestSidecar[] = [];
  const start = async (url: string, prefix: string, admin: Record<string, unknown> = {}): Promise<TestSidecar> => {
    const kf = await startTestSidecar({
      upstream: up.url,
      keys: "keys: []\n",
      keysConfig: { store: "redis", redis: { url, prefix } },
      admin: { operators: [{ name: "ops", token_sha256: sha("tok_ops") }], ...admin },
    });
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
  const redis = redisFixture(redisBin.path, "au");

  /** Three replicas on a fresh, seeded prefix. */
  const three = async (admin?: Record<string, unknown>): Promise<{ prefix: string; r: TestSidecar[] }> => {
    const prefix = redis.newPrefix();
    await redis.seed(prefix, SEED);
    const r = [];
    for (let i = 0; i < 3; i++) r.push(await start(redis.url, prefix, admin));
    return { prefix, r };
  };

  test("changes through three replicas make one log, read the same from any replica, newest first", async () => {
    const { r } = await three();
    const [a, b, c] = r as [TestSidecar, TestSidecar, TestSidecar];
    const made: Array<[string, string]> = [];
    const k1 = await create(a, { name: "one", ip_allow_list: ["198.51.100.7"] });
    made.push(["create", k1]);
    assert.equal((await apiCall(b, "PATCH", `/v1/api-keys/${k1}`, { ip_allow_list: ["198.51.100.8"] })).status, 200);
    made.push(["update", k1]);
    const k2 = await create(c, { name: "two" });
    made.push(["create", k2]);
    assert.equal((await apiCall(a, "PATCH", "/v1/api-keys/k_seed", { name: "renamed" })).status, 200);
    made.push(["update", "k_seed"]);
    assert.equal((await apiCall(c, "DELETE", `/v1/api-keys/${k1}`)).status, 204);
    made.push(["delete", k1]);
    // A patch that changes nothing writes nothing.
    assert.equal((await apiCall(b, "PATCH", `/v1/api-keys/${k2}`, { name: "two" })).status, 200);

    const expected = made.reverse();
    const seen: AuditEvent[][] = [];
    for (const kf of r) {
      const events = await allEvents(kf, 2);
      assert.deepEqual(
        events.map((e) => [e.action, e.key_id]),
        expected,
        "every change once, newest first",
      );
      assert.deepEqual(
        events.map((e) => e.id),
        [5, 4, 3, 2, 1],
        "ids count up without gaps",
      );
      seen.push(events);
    }
    assert.deepEqual(seen[1], seen[0]);
    assert.deepEqual(seen[2], seen[0]);
    const events = seen[0] as AuditEvent[];
    // The same shape as the file log's events.
    const patch = events[3] as AuditEvent;
    assert.deepEqual(Object.keys(patch), [
      "id",
      "time",
      "action",
      "actor",
      "client_ip",
      "key_id",
      "ip_allow_list",
      "changes",
      "confirmed",
    ]);
    assert.deepEqual(patch.actor, { type: "operator", id: "ops", via: "token" });
    assert.equal(patch.client_ip, "127.0.0.1");
    assert.deepEqual(patch.ip_allow_list, { before: ["198.51.100.7"], after: ["198.51.100.8"] });
    assert.deepEqual((events[1] as AuditEvent).changes, { name: { before: "seed", after: "renamed" } });
    assert.ok(!Number.isNaN(Date.parse(patch.time)));
    // The log line of a change names its audit id.
    assert.ok(
      b.logs.some((l) => l["event"] === "key_updated" && l["audit_id"] === 2),
      b.logText(),
    );
    // The dashboard's audit page on any replica reads the same log, newest first.
    const signedIn = await send(`${c.adminUrl}/session`, {
      method: "POST",
      headers: [
        ["Content-Type", "application/x-www-form-urlencoded"],
        ["Origin", `http://${new URL(c.adminUrl).host}`],
      ],
      body: "token=tok_ops",
    });
    assert.equal(signedIn.status, 303, signedIn.body);
    const cookie = (signedIn.headers["set-cookie"]?.[0] ?? "").split(";")[0] ?? "";
    const html = await send(`${c.adminUrl}/audit`, { headers: [["Cookie", cookie]] });
    assert.equal(html.status, 200, html.body);
    const shown = [...html.body.matchAll(/<code>(k[^<]*)<\/code>\s+(created|updated|deleted)/g)].map((m) => [
      m[2],
      m[1],
    ]);
    assert.deepEqual(
      shown.map(([what, id]) => [what === "created" ? "create" : what === "deleted" ? "delete" : "update", id]),
      expected,
    );
    // No audit file next to the keys file with the Redis store.
    for (const kf of r) assert.equal(existsSync(sideFiles(kf.keysFile).audit), false);
  });

  test("concurrent changes through three replicas: one entry each, none lost, ids unique", async () => {
    const { r } = await three();
    const ids = await Promise.all(
      Array.from({ length: 30 }, (_, i) => create(r[i % 3] as TestSidecar, { name: `c${i}` })),
    );
    const events = await allEvents(r[1] as TestSidecar, 7);
    assert.equal(events.length, 30);
    assert.deepEqual(new Set(events.map((e) => e.key_id)), new Set(ids));
    assert.deepEqual(
      events.map((e) => e.id),
      Array.from({ length: 30 }, (_, i) => 30 - i),
    );
  });

  test("the stream is capped at about admin.audit_max_entries; the newest entries stay readable", async () => {
    const prefix = redis.newPrefix();
    await redis.seed(prefix, SEED);
    const kf = await start(redis.url, prefix, { audit_max_entries: 100 });
    const id = await create(kf, { name: "churn" });
    const total = 400;
    for (let i = 1; i < total; i += 10) {
      await Promise.all(
        Array.from({ length: Math.min(10, total - i) }, (_, j) =>
          apiCall(kf, "PATCH", `/v1/api-keys/${id}`, { name: `n${i + j}` }).then((x) =>
            assert.equal(x.status, 200, x.body),
          ),
        ),
      );
    }
    const len = await redis.withClient((c) => c.xLen(`${prefix}audit`));
    // MAXLEN ~ trims whole nodes of up to 100 entries: at least the cap stays, never much more.
    assert.ok(len >= 100 && len <= 200, `stream length ${len}`);
    const events = await allEvents(kf, 50);
    assert.equal(events.length, len);
    assert.equal(events[0]?.id, total);
    assert.deepEqual(
      events.map((e) => e.id),
      Array.from({ length: len }, (_, i) => total - i),
    );
    // Ids go on after a trim, and after the stream is emptied by hand: never reused.
    await redis.withClient((c) => c.xTrim(`${prefix}audit`, "MAXLEN", 0));
    assert.equal((await apiCall(kf, "PATCH", `/v1/api-keys/${id}`, { name: "after-trim" })).status, 200);
    assert.deepEqual(
      (await auditPage(kf)).data.map((e) => e.id),
      [total + 1],
    );
  });

  test("an audit entry that cannot be written: 503 audit_unavailable and the change is not made", async () => {
    const { prefix, r } = await three();
    const [a, b] = r as [TestSidecar, TestSidecar, TestSidecar];
    const before = await redis.withClient(async (c) => ({
      record: await c.hGet(`${prefix}keys`, "k_seed"),
      version: await c.get(`${prefix}version`),
    }));
    await redis.withClient((c) => c.set(`${prefix}audit`, "not a stream"));
    const attempts: Array<[string, string, unknown]> = [
      ["PATCH", "/v1/api-keys/k_seed", { ip_allow_list: [] }],
      ["PATCH", "/v1/api-keys/k_seed", { name: "x", scopes: ["a"], mode: "report" }],
      ["DELETE", "/v1/api-keys/k_seed", undefined],
      ["POST", "/v1/api-keys", { name: "new" }],
      ["POST", "/v1/api-keys", { name: "pinned", ip_allow_list: ["203.0.113.9"] }],
    ];
    for (const [method, path, body] of attempts) {
      const w = await apiCall(b, method, path, body);
      assert.equal(w.status, 503, `${method} ${path}: ${w.body}`);
      assert.equal(w.headers["x-keyfence-reason"], "audit_unavailable");
      assert.match((w.json() as { message: string }).message, /audit log cannot be written.*nothing was changed/);
    }
    assert.ok(b.logs.some((l) => l["event"] === "audit_write_failed"));
    const after = await redis.withClient(async (c) => ({
      record: await c.hGet(`${prefix}keys`, "k_seed"),
      version: await c.get(`${prefix}version`),
    }));
    assert.deepEqual(after, before, "nothing changed in Redis");
    for (const kf of r) {
      assert.equal(kf.sidecar.store.snapshot.size, 1);
      assert.deepEqual(kf.sidecar.store.snapshot.record("k_seed")?.ipAllowList, ["192.0.2.1"]);
      // The store itself is fine: reads and readiness are not affected.
      assert.equal((await send(`${kf.adminUrl}/readyz`)).status, 200);
    }
    // Reading a log that is not a stream fails like the store: never an empty log.
    assert.equal((await apiCall(a, "GET", "/v1/audit")).status, 503);
    // Repaired: the next change is made, with its entry.
    await redis.withClient((c) => c.del(`${prefix}audit`));
    assert.equal((await apiCall(a, "PATCH", "/v1/api-keys/k_seed", { ip_allow_list: [] })).status, 200);
    const page = await auditPage(b);
    assert.deepEqual(
      page.data.map((e) => [e.id, e.action, e.key_id]),
      [[1, "update", "k_seed"]],
    );
  });

  test("Redis unreachable: audit reads answer 503 store_unavailable, then recover", async () => {
    const prefix = redis.newPrefix();
    await redis.seed(prefix, SEED);
    const relay = await startRelay(redis.port);
    try {
      const kf = await start(relay.url, prefix);
      await create(kf, { name: "before-outage" });
      assert.equal((await auditPage(kf)).data.length, 1);
      relay.cut();
      await eventually(async () => (await send(`${kf.adminUrl}/readyz`)).status === 503, 5000, "readyz 503");
      for (const query of ["", "?limit=1", "?cursor=5"]) {
        const r = await apiCall(kf, "GET", `/v1/audit${query}`);
        assert.equal(r.status, 503, r.body);
        assert.equal(r.headers["x-keyfence-reason"], "store_unavailable");
        assert.deepEqual(r.json(), { message: "key store unavailable" });
      }
      relay.restore();
      await eventually(async () => (await apiCall(kf, "GET", "/v1/audit")).status === 200, 7000, "audit back");
      assert.equal((await auditPage(kf)).data[0]?.key_id !== undefined, true);
    } finally {
      await relay.close();
    }
  });
});

/**
 * SPEC §9 entries with notes and expiry, over real sockets: the keys file
 * and the API accept strings or `{entry, note, expires_at}`; responses add
 * `ip_allow_list_entries`; an entry stops matching at its second (the
 * sidecar's clock is injected, no sleep); step-up and self-lockout; the
 * audit log records each expiry once, also between processes sharing a
 * keys file and replicas sharing Redis.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import { describe, test } from "node:test";
import { FileAuditLog, JournalAuditLog, type AuditLog } from "../../src/admin/audit.js";
import { ExpiryWatcher, FileExpiryMarks, RedisExpiryMarks } from "../../src/admin/expiry.js";
import { needsConfirmation } from "../../src/admin/keys.js";
import { FileKeyStore } from "../../src/store/filestore.js";
import { parseKeysFile, type KeyRecord } from "../../src/store/keysfile.js";
import { connectOnce, importRecords } from "../../src/store/redis/io.js";
import { RedisKeyStore } from "../../src/store/redis/store.js";
import { needBinary } from "../helpers/binary.js";
import { bearer, send, type Reply, type Send } from "../helpers/http.js";
import { OpenApi } from "../helpers/openapi.js";
import { rec } from "../helpers/records.js";
import { startRedis } from "../helpers/redis.js";
import { BIN } from "../helpers/spawn.js";
import { eventually, sidecarFixture, startTestSidecar, type TestSidecar } from "../helpers/sidecar.js";
import { code } from "../helpers/totp.js";
import { digestOfHex } from "../../src/store/digest.js";

const openapi = new OpenApi();
const sha = (s: string): string => createHash("sha256").update(s).digest("hex");
const TOTP = "JBSWY3DPEHPK3PXPJBSWY3DP";
const OPERATORS = [
  { name: "ops", token_sha256: sha("tok_ops") },
  { name: "ops2fa", token_sha256: sha("tok_2fa"), totp_secret: TOTP },
];
const OPS = bearer("tok_ops");
const FA = bearer("tok_2fa");
const iso = (ms: number): string => new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z");
const DAY = 86_400_000;

async function api(
  kf: TestSidecar,
  method: string,
  template: string,
  opts: Send & { path?: string; json?: unknown } = {},
): Promise<Reply> {
  return openapi.call(kf.adminUrl, method, template, opts);
}

interface KeyJson {
  id: string;
  secret?: string;
  ip_allow_list: string[];
  ip_allow_list_entries: { entry: string; note: string | null; expires_at: string | null }[];
  mode: string | null;
}

describe("entries with notes and expiry (injected clock)", () => {
  // The sidecar's clock: starts at the real time, moved by the tests.
  let clock = Math.floor(Date.now() / 1000) * 1000;
  const fx = sidecarFixture((up) =>
    startTestSidecar({
      upstream: up.url,
      keys: [{ id: "k_writer", secret: "s_writer", scopes: ["api_keys:write"], allow: ["127.0.0.1"] }],
      admin: { operators: OPERATORS },
      now: () => clock,
    }),
  );
  const create = async (body: unknown, auth = OPS): Promise<Reply> =>
    api(fx.kf, "POST", "/v1/api-keys", { headers: [auth], json: body });
  const patch = async (id: string, body: unknown, headers: [string, string][] = [OPS]): Promise<Reply> =>
    api(fx.kf, "PATCH", "/v1/api-keys/{id}", { path: `/v1/api-keys/${id}`, headers, json: body });
  const proxied = (secret: string, from = "127.0.0.1"): Promise<Reply> =>
    send(`${fx.kf.url}/v1/x`, { headers: [bearer(secret)], localAddress: from });

  test("a created key answers with canonical strings and the entries beside them; GET returns the same", async () => {
    const exp = iso(clock + 3 * DAY);
    const r = await create({
      name: "contractor",
      ip_allow_list: [
        "10.0.0.0/8",
        { entry: "::ffff:127.0.0.1", note: "Jane's laptop ✓", expires_at: exp },
        { entry: "2001:DB8::/32", note: null, expires_at: null },
      ],
    });
    assert.equal(r.status, 201, r.body);
    const k = r.json() as KeyJson;
    assert.deepEqual(k.ip_allow_list, ["10.0.0.0/8", "127.0.0.1", "2001:db8::/32"]);
    assert.deepEqual(k.ip_allow_list_entries, [
      { entry: "10.0.0.0/8", note: null, expires_at: null },
      { entry: "127.0.0.1", note: "Jane's laptop ✓", expires_at: exp },
      { entry: "2001:db8::/32", note: null, expires_at: null },
    ]);
    const g = await api(fx.kf, "GET", "/v1/api-keys/{id}", { path: `/v1/api-keys/${k.id}`, headers: [OPS] });
    assert.deepEqual(g.json(), Object.fromEntries(Object.entries(k).filter(([f]) => f !== "secret")));
    // The keys file holds the same, read back by the loader.
    const file = parseKeysFile("keys.yaml", readFileSync(fx.kf.keysFile, "utf8"), 1000);
    assert.ok(file.ok);
    assert.deepEqual(file.keys.find((r) => r.id === k.id)?.entryDetails, {
      "127.0.0.1": { note: "Jane's laptop ✓", expiresAt: exp },
    });
  });

  test("an entry stops matching at its expires_at second, through a real proxy request; report mode reports it", async () => {
    const start = clock;
    const exp = start + 3 * DAY;
    const r = await create({
      name: "temp",
      ip_allow_list: ["192.0.2.0/24", { entry: "127.0.0.1", note: "one week", expires_at: iso(exp) }],
    });
    const k = r.json() as KeyJson;
    const secret = k.secret ?? "";
    assert.equal((await proxied(secret)).status, 200);
    clock = exp - 1;
    assert.equal((await proxied(secret)).status, 200, "still in force 1 ms before its second");
    clock = exp;
    const denied = await proxied(secret);
    assert.equal(denied.status, 403, denied.body);
    assert.equal(denied.headers["x-keyfence-reason"], "ip_not_allowed");
    clock = exp + 5 * DAY;
    assert.equal((await proxied(secret)).status, 403);
    const metrics = (await send(`${fx.kf.adminUrl}/metrics`)).body;
    assert.match(metrics, /keyfence_decisions_total\{decision="denied"\} [1-9]/);
    // The expired entry is still shown (it is stored) and keeps the key restricted.
    const g = (
      await api(fx.kf, "GET", "/v1/api-keys/{id}", { path: `/v1/api-keys/${k.id}`, headers: [OPS] })
    ).json() as KeyJson;
    assert.deepEqual(g.ip_allow_list, ["192.0.2.0/24", "127.0.0.1"]);
    assert.equal(g.ip_allow_list_entries[1]?.expires_at, iso(exp));
    // Report mode: forwarded, counted as would_deny.
    assert.equal((await patch(k.id, { mode: "report" })).status, 200);
    const reported = await proxied(secret);
    assert.equal(reported.status, 200);
    assert.match(
      (await send(`${fx.kf.adminUrl}/metrics`)).body,
      /keyfence_decisions_total\{decision="would_deny"\} [1-9]/,
    );
    clock = start;
  });

  test("hostile entries: 400 naming each bad field, nothing changed", async () => {
    const base = await create({ name: "victim", ip_allow_list: ["198.51.100.1"] });
    const id = (base.json() as KeyJson).id;
    const future = iso(clock + DAY);
    const cases: Array<[string, unknown[], string[]]> = [
      ["unknown field", [{ entry: "10.0.0.1", comment: "x" }], ["ip_allow_list[0].comment"]],
      [
        "two unknown fields",
        [{ entry: "10.0.0.1", Note: "x", expiresAt: future }],
        ["ip_allow_list[0].Note", "ip_allow_list[0].expiresAt"],
      ],
      ["missing entry", [{ note: "x" }], ["ip_allow_list[0]"]],
      ["entry a number", [{ entry: 1 }], ["ip_allow_list[0].entry"]],
      ["entry bad", [{ entry: "10.0.0.256" }], ["ip_allow_list[0].entry"]],
      ["entry catch-all", [{ entry: "::/0", note: "all" }], ["ip_allow_list[0].entry"]],
      ["note empty", [{ entry: "10.0.0.1", note: "" }], ["ip_allow_list[0].note"]],
      ["note too long", [{ entry: "10.0.0.1", note: "é".repeat(201) }], ["ip_allow_list[0].note"]],
      ["note CR", [{ entry: "10.0.0.1", note: "a\rb" }], ["ip_allow_list[0].note"]],
      ["note escape", [{ entry: "10.0.0.1", note: "\u001b[31mred" }], ["ip_allow_list[0].note"]],
      ["note lone surrogate", [{ entry: "10.0.0.1", note: "\udc00" }], ["ip_allow_list[0].note"]],
      ["note array", [{ entry: "10.0.0.1", note: ["x"] }], ["ip_allow_list[0].note"]],
      [
        "expiry no offset",
        [{ entry: "10.0.0.1", expires_at: future.replace("Z", "") }],
        ["ip_allow_list[0].expires_at"],
      ],
      ["expiry date only", [{ entry: "10.0.0.1", expires_at: future.slice(0, 10) }], ["ip_allow_list[0].expires_at"]],
      [
        "expiry epoch",
        [{ entry: "10.0.0.1", expires_at: Math.floor(clock / 1000) + 60 }],
        ["ip_allow_list[0].expires_at"],
      ],
      [
        "expiry fraction",
        [{ entry: "10.0.0.1", expires_at: future.replace("Z", ".250Z") }],
        ["ip_allow_list[0].expires_at"],
      ],
      ["expiry Feb 30", [{ entry: "10.0.0.1", expires_at: "2099-02-30T00:00:00Z" }], ["ip_allow_list[0].expires_at"]],
      ["expiry in the past", [{ entry: "10.0.0.1", expires_at: iso(clock - 1000) }], ["ip_allow_list[0].expires_at"]],
      ["expiry now", [{ entry: "10.0.0.1", expires_at: iso(clock) }], ["ip_allow_list[0].expires_at"]],
      ["duplicate with a note", ["10.0.0.1", { entry: "10.0.0.1/32", note: "x" }], ["ip_allow_list[1]"]],
      [
        "duplicate objects",
        [
          { entry: "10.0.0.0/8", expires_at: future },
          { entry: "10.0.0.0/8", expires_at: iso(clock + 2 * DAY) },
        ],
        ["ip_allow_list[1]"],
      ],
      ["mixed problems", ["nope", { entry: "10.0.0.2", bad: 1 }], ["ip_allow_list[0]", "ip_allow_list[1].bad"]],
    ];
    for (const [what, list, fields] of cases) {
      for (const send of [() => patch(id, { ip_allow_list: list }), () => create({ name: "x", ip_allow_list: list })]) {
        const r = await send();
        assert.equal(r.status, 400, `${what}: ${r.body}`);
        const body = r.json() as { errors: { field: string; message: string }[] };
        assert.deepEqual(body.errors.map((e) => e.field).sort(), [...fields].sort(), `${what}: ${r.body}`);
      }
    }
    const after = (
      await api(fx.kf, "GET", "/v1/api-keys/{id}", { path: `/v1/api-keys/${id}`, headers: [OPS] })
    ).json() as KeyJson;
    assert.deepEqual(after.ip_allow_list, ["198.51.100.1"]);
  });

  test("a list read back with an expired entry can be sent again (that expiry is not new)", async () => {
    const exp = clock + DAY;
    const k = (
      await create({ name: "rt", ip_allow_list: [{ entry: "10.9.0.0/16", expires_at: iso(exp) }] })
    ).json() as KeyJson;
    clock = exp + 1000;
    try {
      const r = await patch(k.id, { ip_allow_list: [...k.ip_allow_list_entries, { entry: "10.8.0.1", note: "new" }] });
      assert.equal(r.status, 200, r.body);
      // But a different past expiry for it is refused.
      const moved = await patch(k.id, { ip_allow_list: [{ entry: "10.9.0.0/16", expires_at: iso(exp - 1000) }] });
      assert.equal(moved.status, 400, moved.body);
    } finally {
      clock = exp - DAY;
    }
  });

  test("step-up: adding or moving forward an expiry and notes need no code; removing or postponing one does", async () => {
    const exp = iso(clock + 2 * DAY);
    const created = await create({ name: "su", ip_allow_list: ["10.1.0.0/16"] }, OPS);
    const id = (created.json() as KeyJson).id;
    const ok = async (list: unknown[]): Promise<void> => {
      const r = await patch(id, { ip_allow_list: list }, [FA]);
      assert.equal(r.status, 200, r.body);
    };
    const needsCode = async (list: unknown[]): Promise<void> => {
      const r = await patch(id, { ip_allow_list: list }, [FA]);
      assert.equal(r.status, 403, r.body);
      assert.deepEqual(r.json(), { message: "confirmation required" });
    };
    await ok([{ entry: "10.1.0.0/16", note: "office" }]);
    await ok([{ entry: "10.1.0.0/16", note: "office", expires_at: exp }]);
    await ok([{ entry: "10.1.0.0/16", note: "office, until Friday", expires_at: iso(clock + DAY) }]);
    await needsCode([{ entry: "10.1.0.0/16", expires_at: iso(clock + 2 * DAY) }]);
    await needsCode([{ entry: "10.1.0.0/16", note: "office" }]);
    await needsCode(["10.1.0.0/16"]);
    await needsCode([
      { entry: "10.1.0.0/16", expires_at: iso(clock + DAY) },
      { entry: "10.2.0.1", expires_at: iso(clock + 60_000) },
    ]);
    const r = await patch(id, { ip_allow_list: [{ entry: "10.1.0.0/16", expires_at: iso(clock + 7 * DAY) }] }, [
      FA,
      ["X-Keyfence-OTP", code(TOTP, clock)],
    ]);
    assert.equal(r.status, 200, r.body);
    const events = (await api(fx.kf, "GET", "/v1/audit", { headers: [OPS] })).json() as {
      data: { key_id: string; confirmed: boolean; changes: Record<string, { before: unknown; after: unknown }> }[];
    };
    const last = events.data.find((e) => e.key_id === id);
    assert.ok(last?.confirmed);
    assert.ok(last.changes["ip_allow_list_entries"], "the expiry change is in the audit line");
  });

  test("self-lockout counts an entry that expires soon: it admits the caller now", async () => {
    const soon = iso(clock + 60_000);
    const r = await patch("k_writer", { ip_allow_list: [{ entry: "127.0.0.1", expires_at: soon }] }, [
      bearer("s_writer"),
    ]);
    assert.equal(r.status, 200, r.body);
    const locked = await patch("k_writer", { ip_allow_list: [{ entry: "127.0.0.2", note: "not me" }] }, [
      bearer("s_writer"),
    ]);
    assert.equal(locked.status, 409, locked.body);
    const back = await patch("k_writer", { ip_allow_list: ["127.0.0.1"] }, [bearer("s_writer")]);
    assert.equal(back.status, 200, back.body);
  });
});

describe("entries in the keys file", () => {
  test("objects load and match; a bad item refuses the reload (file:line:col), and check-config names it", async () => {
    const dir = mkdtempSync(join(tmpdir(), "keyfence-entries-"));
    try {
      const now = Date.UTC(2030, 0, 1);
      const good = [
        "keys:",
        "  - id: k1",
        `    secret_sha256: ${sha("s1")}`,
        "    ip_allow_list:",
        "      - {entry: 127.0.0.1, note: build box, expires_at: 2030-01-02T00:00:00Z}",
        "      - entry: 127.0.0.2",
        "        expires_at: 2029-12-31T00:00:00+01:00",
        "",
      ].join("\n");
      const { startUpstream } = await import("../helpers/upstream.js");
      const up = await startUpstream();
      const kf = await startTestSidecar({ upstream: up.url, keys: good, now: () => now, admin: false });
      try {
        const from = (a: string): Promise<Reply> => send(`${kf.url}/x`, { headers: [bearer("s1")], localAddress: a });
        assert.equal((await from("127.0.0.1")).status, 200);
        assert.equal((await from("127.0.0.2")).status, 403, "expired before the snapshot was built");
        kf.writeKeys(good.replace("expires_at: 2030-01-02T00:00:00Z", "expires_at: 2030-01-02T00:00:00"));
        await eventually(
          () => kf.logs.some((l) => l["event"] === "store_reload_failed" && l["line"] === 5),
          10_000,
          "refused reload",
        );
        assert.match(kf.logText(), /keys\.yaml:5:\d+: keys\[0\]\.ip_allow_list\[0\]\.expires_at/);
        assert.equal((await from("127.0.0.1")).status, 200, "the last good snapshot keeps serving");
      } finally {
        await kf.stop();
        await up.close();
      }
      writeFileSync(
        join(dir, "keys.yaml"),
        good.replace("note: build box", "note: build box, owner: me").replace("2029-12-31T00:00:00+01:00", "yesterday"),
      );
      writeFileSync(join(dir, "keyfence.yaml"), "upstream: http://127.0.0.1:9\nkeys:\n  file: keys.yaml\n");
      const r = spawnSync(process.execPath, [BIN, "check-config", "--config", "keyfence.yaml"], {
        cwd: dir,
        env: { ...process.env, KEYFENCE_CONFIG: "" },
        encoding: "utf8",
        timeout: 20_000,
      });
      assert.equal(r.status, 1, r.stderr);
      assert.match(r.stderr, /keys\.yaml:5:\d+: keys\[0\]\.ip_allow_list\[0\]\.owner: unknown field/);
      assert.match(
        r.stderr,
        /keys\.yaml:7:\d+: keys\[0\]\.ip_allow_list\[1\]\.expires_at \("yesterday"\): must be an RFC 3339/,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("needsConfirmation: expiries", () => {
  const rec = (details: KeyRecord["entryDetails"], list = ["10.0.0.1", "10.0.0.2"]): KeyRecord => ({
    id: "k",
    name: "k",
    secretDigest: digestOfHex("0".repeat(64)),
    scopes: [],
    ipAllowList: list,
    ...(details ? { entryDetails: details } : {}),
    mode: undefined,
    createdAt: undefined,
    updatedAt: undefined,
  });
  const A = "2030-01-01T00:00:00Z";
  const B = "2030-01-02T00:00:00Z";
  const table: Array<[string, KeyRecord, KeyRecord, boolean]> = [
    ["a note added", rec(undefined), rec({ "10.0.0.1": { note: "x" } }), false],
    ["a note removed", rec({ "10.0.0.1": { note: "x" } }), rec(undefined), false],
    ["an expiry added", rec(undefined), rec({ "10.0.0.1": { expiresAt: A } }), false],
    ["an expiry brought forward", rec({ "10.0.0.1": { expiresAt: B } }), rec({ "10.0.0.1": { expiresAt: A } }), false],
    [
      "same instant, other offset",
      rec({ "10.0.0.1": { expiresAt: A } }),
      rec({ "10.0.0.1": { expiresAt: "2030-01-01T01:00:00+01:00" } }),
      false,
    ],
    ["an expiry removed", rec({ "10.0.0.1": { expiresAt: A } }), rec(undefined), true],
    [
      "an expiry removed, the note kept",
      rec({ "10.0.0.1": { expiresAt: A, note: "n" } }),
      rec({ "10.0.0.1": { note: "n" } }),
      true,
    ],
    ["an expiry postponed", rec({ "10.0.0.1": { expiresAt: A } }), rec({ "10.0.0.1": { expiresAt: B } }), true],
    [
      "postponed by a second",
      rec({ "10.0.0.1": { expiresAt: A } }),
      rec({ "10.0.0.1": { expiresAt: "2030-01-01T00:00:01Z" } }),
      true,
    ],
    [
      "an expiring entry added",
      rec(undefined),
      rec({ "10.0.0.3": { expiresAt: A } }, ["10.0.0.1", "10.0.0.2", "10.0.0.3"]),
      true,
    ],
    ["an expiring entry removed", rec({ "10.0.0.2": { expiresAt: A } }), rec(undefined, ["10.0.0.1"]), true],
  ];
  for (const [what, before, after, needs] of table) {
    test(what, () => assert.equal(needsConfirmation(before, after, "enforce"), needs));
  }
});

/** A keys file with one key whose entry expires at `at`. */
function expiringKeys(at: number): string {
  return [
    "keys:",
    "  - id: k1",
    `    secret_sha256: ${sha("s1")}`,
    "    ip_allow_list:",
    `      - {entry: 10.0.0.1, note: "temp", expires_at: ${iso(at)}}`,
    "      - 10.0.0.2",
    "",
  ].join("\n");
}

describe("expiry audit events", () => {
  const log = pino({ level: "silent" });

  test("two processes sharing a keys file write the expiry once", async () => {
    const dir = mkdtempSync(join(tmpdir(), "keyfence-expiry-"));
    const t = Date.UTC(2030, 0, 1);
    let now = t - 1000;
    const file = join(dir, "keys.yaml");
    writeFileSync(file, expiringKeys(t));
    const watchers: ExpiryWatcher[] = [];
    const stores: FileKeyStore[] = [];
    try {
      for (let i = 0; i < 2; i++) {
        const store = new FileKeyStore({ file, displayName: "keys.yaml", maxEntries: 100 });
        await store.load();
        stores.push(store);
        const audit = await FileAuditLog.open(join(dir, "keys.audit.jsonl"));
        const w = new ExpiryWatcher({
          store,
          audit,
          marks: new FileExpiryMarks(join(dir, "keys.expiries")),
          log,
          now: () => now,
        });
        w.start();
        watchers.push(w);
      }
      await Promise.all(watchers.map((w) => w.check()));
      const reader = await FileAuditLog.open(join(dir, "keys.audit.jsonl"));
      assert.equal((await reader.page(100)).data.length, 0, "nothing before the second");
      now = t;
      await Promise.all(watchers.map((w) => w.check()));
      await Promise.all(watchers.map((w) => w.check()));
      const events = (await reader.page(100)).data;
      assert.equal(events.length, 1, JSON.stringify(events));
      const e = events[0];
      assert.equal(e?.action, "expire");
      assert.deepEqual(e.actor, { type: "system", id: "keyfence" });
      assert.deepEqual(e.expired, { entry: "10.0.0.1", note: "temp", expires_at: iso(t) });
      assert.deepEqual(e.ip_allow_list, { before: ["10.0.0.1", "10.0.0.2"], after: ["10.0.0.2"] });
      // A restart (a new watcher) does not write it again.
      const again = new ExpiryWatcher({
        store: stores[0] as FileKeyStore,
        audit: await FileAuditLog.open(join(dir, "keys.audit.jsonl")),
        marks: new FileExpiryMarks(join(dir, "keys.expiries")),
        log,
        now: () => now,
      });
      again.start();
      await again.check();
      await again.close();
      assert.equal((await reader.page(100)).data.length, 1);
    } finally {
      await Promise.all(watchers.map((w) => w.close()));
      await Promise.all(stores.map((s) => s.close()));
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("an event that cannot be written gives up its claim and is written by the next check", async () => {
    const dir = mkdtempSync(join(tmpdir(), "keyfence-expiry-"));
    const t = Date.UTC(2030, 0, 1);
    const file = join(dir, "keys.yaml");
    writeFileSync(file, expiringKeys(t));
    const store = new FileKeyStore({ file, displayName: "keys.yaml", maxEntries: 100 });
    await store.load();
    const real = await FileAuditLog.open(join(dir, "keys.audit.jsonl"));
    let failures = 1;
    const audit: AuditLog = {
      prepare: (d) => real.prepare(d),
      page: (l, c) => real.page(l, c),
      record: (d) => (failures-- > 0 ? Promise.reject(new Error("disk full")) : real.record(d)),
    };
    const w = new ExpiryWatcher({ store, audit, marks: new FileExpiryMarks(join(dir, "m")), log, now: () => t });
    try {
      w.start(); // its first check fails to write
      await w.check();
      assert.ok(failures < 0, "the first write was tried and failed");
      const events = (await real.page(10)).data;
      assert.equal(events.length, 1, JSON.stringify(events));
      assert.equal(events[0]?.action, "expire");
      await w.check();
      assert.equal((await real.page(10)).data.length, 1, "once");
    } finally {
      await w.close();
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("an entry removed or extended before its second writes nothing", async () => {
    const dir = mkdtempSync(join(tmpdir(), "keyfence-expiry-"));
    const t = Date.UTC(2030, 0, 1);
    let now = t - 1000;
    const file = join(dir, "keys.yaml");
    writeFileSync(file, expiringKeys(t));
    const store = new FileKeyStore({ file, displayName: "keys.yaml", maxEntries: 100 });
    await store.load();
    const audit = await FileAuditLog.open(join(dir, "keys.audit.jsonl"));
    const w = new ExpiryWatcher({
      store,
      audit,
      marks: new FileExpiryMarks(join(dir, "m")),
      log,
      now: () => now,
    });
    w.start();
    try {
      writeFileSync(file, expiringKeys(t + DAY));
      await store.refresh();
      now = t;
      await w.check();
      assert.equal((await audit.page(10)).data.length, 0);
      now = t + DAY;
      await w.check();
      assert.equal((await audit.page(10)).data.length, 1);
    } finally {
      await w.close();
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("a real sidecar writes the event when the second passes (real clock, waits on the event)", async () => {
    const { startUpstream } = await import("../helpers/upstream.js");
    const up = await startUpstream();
    const at = Math.ceil(Date.now() / 1000) * 1000 + 2000;
    const keys = expiringKeys(at).replace("10.0.0.1", "127.0.0.1");
    const kf = await startTestSidecar({ upstream: up.url, keys, admin: { operators: OPERATORS } });
    try {
      await eventually(
        async () => {
          const r = await api(kf, "GET", "/v1/audit", { headers: [OPS] });
          return (r.json() as { data: { action: string }[] }).data.some((e) => e.action === "expire");
        },
        20_000,
        "the expire event",
      );
      const r = await send(`${kf.url}/x`, { headers: [bearer("s1")], localAddress: "127.0.0.1" });
      assert.equal(r.status, 403);
      await eventually(() => kf.logs.some((l) => l["event"] === "entry_expired"), 10_000, "the entry_expired line");
    } finally {
      await kf.stop();
      await up.close();
    }
  });

  const redisBin = needBinary("redis-server", "redis-server");
  test(
    "an expiry arriving in a catch-up of several changes, or in a full resync, is watched",
    { skip: redisBin.skip },
    async () => {
      const redis = await startRedis(redisBin.path ?? "redis-server");
      const t = Date.UTC(2030, 0, 1);
      let now = t - 1000;
      const key = (id: string, expiring: boolean): KeyRecord =>
        rec(id, {
          secretDigest: digestOfHex(sha(`s_${id}`)),
          ipAllowList: ["10.0.0.1", "10.0.0.2"],
          ...(expiring ? { entryDetails: { "10.0.0.1": { expiresAt: iso(t) } } } : {}),
        });
      const c = await connectOnce(redis.url);
      const store = new RedisKeyStore({ url: redis.url, displayUrl: redis.url, prefix: "kfy:", maxEntries: 100 });
      const w = new ExpiryWatcher({
        store,
        audit: new JournalAuditLog(store.journal),
        marks: new RedisExpiryMarks(store),
        log,
        now: () => now,
      });
      try {
        await importRecords(c, "kfy:", [key("k1", false), key("k2", false), key("k3", false)]);
        await store.load();
        w.start();
        // One import batch into the live store: a catch-up of two changes.
        await importRecords(c, "kfy:", [key("k1", true), key("k2", false), key("k4", false)]);
        await store.refresh();
        assert.ok(store.snapshot.record("k4"));
        // A new generation: the replica reads every record and applies what differs.
        await c.del("kfy:generation");
        await importRecords(c, "kfy:", [key("k1", true), key("k2", true), key("k4", false)]);
        await store.refresh();
        assert.equal(store.snapshot.record("k3"), undefined);
        now = t;
        await w.check();
        const events = (await new JournalAuditLog(store.journal).page(10)).data;
        assert.deepEqual(events.map((e) => [e.action, e.key_id]).sort(), [
          ["expire", "k1"],
          ["expire", "k2"],
        ]);
      } finally {
        await w.close();
        await store.close();
        c.destroy();
        await redis.kill();
      }
    },
  );

  test("replicas sharing Redis write the expiry once", { skip: redisBin.skip }, async () => {
    const redis = await startRedis(redisBin.path ?? "redis-server");
    const dir = mkdtempSync(join(tmpdir(), "keyfence-expiry-"));
    const t = Date.UTC(2030, 0, 1);
    let now = t - 1000;
    const stores: RedisKeyStore[] = [];
    const watchers: ExpiryWatcher[] = [];
    try {
      const c = await connectOnce(redis.url);
      const record: KeyRecord = {
        id: "k1",
        name: "k1",
        secretDigest: digestOfHex(sha("s1")),
        scopes: [],
        ipAllowList: ["10.0.0.1", "10.0.0.2"],
        entryDetails: { "10.0.0.1": { note: "temp", expiresAt: iso(t) } },
        mode: undefined,
        createdAt: undefined,
        updatedAt: undefined,
      };
      try {
        await importRecords(c, "kfx:", [record]);
      } finally {
        c.destroy();
      }
      for (let i = 0; i < 3; i++) {
        const store = new RedisKeyStore({ url: redis.url, displayUrl: redis.url, prefix: "kfx:", maxEntries: 100 });
        await store.load();
        assert.deepEqual(store.snapshot.record("k1")?.entryDetails, record.entryDetails, "details survive Redis");
        stores.push(store);
        const audit = new JournalAuditLog(store.journal);
        const w = new ExpiryWatcher({ store, audit, marks: new RedisExpiryMarks(store), log, now: () => now });
        w.start();
        watchers.push(w);
      }
      now = t;
      await Promise.all(watchers.map((w) => w.check()));
      // One event, in the stream every replica reads (the audit log all replicas share).
      const shared = new JournalAuditLog((stores[2] as RedisKeyStore).journal);
      const events = (await shared.page(10)).data;
      assert.equal(events.length, 1, JSON.stringify(events));
      const e = events[0];
      assert.equal(e?.action, "expire");
      assert.deepEqual(e.actor, { type: "system", id: "keyfence" });
      assert.deepEqual(e.expired, { entry: "10.0.0.1", note: "temp", expires_at: iso(t) });
      assert.deepEqual(e.ip_allow_list, { before: ["10.0.0.1", "10.0.0.2"], after: ["10.0.0.2"] });
      // A change committed afterwards is numbered after it, as the commit script numbers its entries.
      const store = stores[0] as RedisKeyStore;
      await store.transact((snap) => {
        const before = snap.record("k1") as KeyRecord;
        return Promise.resolve({
          change: { kind: "update", record: { ...before, name: "renamed" } },
          result: undefined,
          journal: JSON.stringify({ ...e, id: undefined, action: "update", changes: {} }),
        });
      });
      const ids = (await shared.page(10)).data.map((x) => x.id);
      assert.equal(ids.length, 2);
      assert.ok((ids[0] as number) > e.id, `ids ${ids.join(",")}`);
    } finally {
      await Promise.all(watchers.map((w) => w.close()));
      await Promise.all(stores.map((s) => s.close()));
      await redis.kill();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

/**
 * SPEC §5 bounded audit log: rotated by size keeping N files, read from the
 * newest end, a change whose line cannot be written is refused.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import {
  appendFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  symlinkSync,
  unlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import { monitorEventLoopDelay } from "node:perf_hooks";
import fc from "fast-check";
import {
  AUDIT_ACTIONS,
  decodeJournalEntry,
  encodeJournalEntry,
  FileAuditLog,
  JournalAuditLog,
  type AuditEvent,
} from "../../src/admin/audit.js";
import type { Journal } from "../../src/store/store.js";
import { parseConfig } from "../../src/config/config.js";
import { bearer, send, type Reply } from "../helpers/http.js";
import { startTestSidecar, type TestSidecar } from "../helpers/sidecar.js";
import { startUpstream } from "../helpers/upstream.js";

const sha = (s: string): string => createHash("sha256").update(s).digest("hex");
const EVENT: Omit<AuditEvent, "id" | "time"> = {
  action: "update",
  actor: { type: "operator", id: "ops", via: "token" },
  client_ip: "127.0.0.1",
  key_id: "k",
  ip_allow_list: { before: ["10.0.0.1"], after: ["10.0.0.2"] },
  changes: {},
  confirmed: false,
};

async function allIds(log: FileAuditLog, limit: number): Promise<number[]> {
  const out: number[] = [];
  let cursor: number | undefined;
  for (let i = 0; i < 10_000; i++) {
    const page = await log.page(limit, cursor);
    out.push(...page.data.map((e) => e.id));
    if (page.next_cursor === null) return out;
    cursor = Number(page.next_cursor);
  }
  throw new Error("pagination never ended");
}

describe("audit log (unit)", () => {
  test("rotates by size keeping N files; pages newest first across files; ids continue after a reopen", async () => {
    const dir = mkdtempSync(join(tmpdir(), "keyfence-audit-"));
    try {
      const file = join(dir, "keys.audit.jsonl");
      const log = await FileAuditLog.open(file, { rotateBytes: 2048, keep: 3, maxEntries: 100_000 });
      for (let i = 0; i < 100; i++) await log.append({ ...EVENT, key_id: `k${i}` });
      assert.deepEqual(readdirSync(dir).sort(), ["keys.audit.jsonl", "keys.audit.jsonl.1", "keys.audit.jsonl.2"]);
      for (const f of readdirSync(dir)) assert.ok(readFileSync(join(dir, f)).length <= 2048, f);
      const ids = await allIds(log, 7);
      assert.equal(ids[0], 100);
      assert.deepEqual(
        ids,
        Array.from({ length: ids.length }, (_, i) => 100 - i),
        "newest first, no gaps",
      );
      assert.ok(ids.length >= 20 && ids.length < 100, `kept ${ids.length}: only what 3 files hold`);
      const first = await log.page(1);
      assert.equal(first.data[0]?.key_id, "k99");
      const reopened = await FileAuditLog.open(file, { rotateBytes: 2048, keep: 3, maxEntries: 100_000 });
      assert.equal((await reopened.append(EVENT)).id, 101);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("a torn last line is skipped and the next append starts a new line; a withdrawn line is gone", async () => {
    const dir = mkdtempSync(join(tmpdir(), "keyfence-audit-"));
    try {
      const file = join(dir, "a.jsonl");
      const log = await FileAuditLog.open(file);
      await log.append(EVENT);
      await log.append(EVENT);
      appendFileSync(file, '{"id":3,"time":"2026-'); // a crash mid-append
      const after = await FileAuditLog.open(file);
      const e = await after.append({ ...EVENT, key_id: "next" });
      assert.equal(e.id, 3);
      assert.deepEqual(
        (await after.page(10)).data.map((x) => [x.id, x.key_id]),
        [
          [3, "next"],
          [2, "k"],
          [1, "k"],
        ],
      );
      const size = readFileSync(file).length;
      const w = await after.append({ ...EVENT, key_id: "withdrawn" });
      await after.withdraw(w);
      assert.equal(readFileSync(file).length, size, "withdrawn to the byte");
      assert.equal((await after.append(EVENT)).id, w.id, "its id is reused");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("processes sharing one log: unique ids in order, every event paged, across rotations, with concurrent appends", async () => {
    const dir = mkdtempSync(join(tmpdir(), "keyfence-audit-"));
    try {
      const file = join(dir, "keys.audit.jsonl");
      const settings = { rotateBytes: 4096, keep: 20, maxEntries: 100_000 };
      // Three opened before any line, as three processes started together.
      const logs = await Promise.all([0, 1, 2].map(() => FileAuditLog.open(file, settings)));
      const made: AuditEvent[] = [];
      for (let i = 0; i < 30; i++) made.push(await (logs[i % 3] as FileAuditLog).append({ ...EVENT, key_id: `s${i}` }));
      // Then at once: appends of different processes interleave.
      made.push(
        ...(await Promise.all(
          Array.from({ length: 30 }, (_, i) => (logs[i % 3] as FileAuditLog).append({ ...EVENT, key_id: `c${i}` })),
        )),
      );
      const ids = made.map((e) => e.id);
      assert.equal(new Set(ids).size, 60, "no id given twice");
      assert.deepEqual(
        ids.slice(0, 30),
        Array.from({ length: 30 }, (_, i) => i + 1),
        "in order",
      );
      assert.ok(readdirSync(dir).length > 2, "it rotated");
      for (const log of logs) {
        assert.deepEqual(
          await allIds(log, 7),
          Array.from({ length: 60 }, (_, i) => 60 - i),
          "every event, paged",
        );
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("a withdrawal keeps the lines another process appended after it", async () => {
    const dir = mkdtempSync(join(tmpdir(), "keyfence-audit-"));
    try {
      const file = join(dir, "a.jsonl");
      const [a, b] = await Promise.all([FileAuditLog.open(file), FileAuditLog.open(file)]);
      const kept = await a.append({ ...EVENT, key_id: "kept" });
      const withdrawn = await a.append({ ...EVENT, key_id: "withdrawn" });
      const other = await b.append({ ...EVENT, key_id: "other" });
      await a.withdraw(withdrawn);
      const next = await a.append({ ...EVENT, key_id: "next" });
      assert.deepEqual(
        (await b.page(10)).data.map((x) => [x.id, x.key_id]),
        [
          [next.id, "next"],
          [other.id, "other"],
          [kept.id, "kept"],
        ],
      );
      assert.ok(next.id > other.id, "no id given twice");
      for (const line of readFileSync(file, "utf8").trimEnd().split("\n")) JSON.parse(line);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("admin.audit_rotate_bytes, audit_keep and audit_max_entries: defaults, located errors, warnings", () => {
    const parse = (admin: string, keys = "  file: keys.yaml\n"): ReturnType<typeof parseConfig> =>
      parseConfig(
        "/tmp/k.yaml",
        `upstream: "http://127.0.0.1:1"\nkeys:\n${keys}admin:\n  listen: "127.0.0.1:0"\n${admin}`,
      );
    const d = parse("");
    assert.ok(d.ok);
    assert.deepEqual(d.config.admin?.audit, { rotateBytes: 64 * 1024 * 1024, keep: 8, maxEntries: 100_000 });
    assert.deepEqual(d.config.warnings, []);
    const set = parse("  audit_rotate_bytes: 1048576\n  audit_keep: 3\n");
    assert.ok(set.ok);
    assert.deepEqual(set.config.admin?.audit, { rotateBytes: 1048576, keep: 3, maxEntries: 100_000 });
    const bad = parse('  audit_rotate_bytes: "64M"\n  audit_keep: 0\n  audit_max_entries: 99\n');
    assert.ok(!bad.ok);
    assert.deepEqual(
      bad.problems.map((p) => [p.path, p.line]),
      [
        ["admin.audit_rotate_bytes", 6],
        ["admin.audit_keep", 7],
        ["admin.audit_max_entries", 8],
      ],
    );
    for (const v of ["1.5", "-1", '"1e5"', "100000001", "true"]) {
      const r = parse(`  audit_max_entries: ${v}\n`);
      assert.ok(!r.ok, v);
      assert.match(r.problems[0]?.message ?? "", /integer from 100 to 100000000/, v);
    }
    // A setting for the other kind of log is accepted with a warning saying it has no effect.
    const redis = '  store: redis\n  redis:\n    url: "redis://127.0.0.1:6379"\n';
    const onRedis = parse("  audit_max_entries: 500\n  audit_keep: 2\n", redis);
    assert.ok(onRedis.ok);
    assert.equal(onRedis.config.admin?.audit.maxEntries, 500);
    assert.equal(onRedis.config.warnings.length, 1);
    assert.match(onRedis.config.warnings[0] ?? "", /admin\.audit_keep has no effect with keys\.store: redis/);
    const onFile = parse("  audit_max_entries: 500\n");
    assert.ok(onFile.ok);
    assert.match(onFile.config.warnings.join("\n"), /admin\.audit_max_entries has no effect with keys\.store: file/);
  });

  test("journal entries: decode(encode(event)) is the event with its number, for any event (fast-check)", () => {
    const text = fc.string({ unit: "binary", maxLength: 30 });
    const list = fc.option(fc.array(text, { maxLength: 4 }), { nil: null });
    const event = fc.record(
      {
        time: fc.date({ noInvalidDate: true, min: new Date(0), max: new Date(4e12) }).map((d) => d.toISOString()),
        action: fc.constantFrom(...AUDIT_ACTIONS),
        actor: fc.oneof(
          fc.record({
            type: fc.constant("operator" as const),
            id: text,
            via: fc.constantFrom("token" as const, "session" as const),
          }),
          fc.record({ type: fc.constantFrom("key" as const, "cli" as const), id: text }),
        ),
        client_ip: text,
        key_id: text,
        ip_allow_list: fc.record({ before: list, after: list }),
        changes: fc.dictionary(
          fc.constantFrom("name", "scopes", "mode", "__proto__", "constructor"),
          fc.record({ before: fc.jsonValue(), after: fc.jsonValue() }),
        ),
        confirmed: fc.boolean(),
        import: fc.record({ from: text, key_ids: fc.array(text, { maxLength: 5 }) }),
      },
      { requiredKeys: ["time", "action", "actor", "client_ip", "key_id", "ip_allow_list", "changes", "confirmed"] },
    );
    fc.assert(
      fc.property(fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }), event, (id, e) => {
        const back = decodeJournalEntry(id, encodeJournalEntry(e));
        // JSON is the reference: what a JSON round trip keeps is what a reader of the file log gets too.
        assert.deepEqual(back, { id, ...(JSON.parse(JSON.stringify(e)) as object) });
        assert.equal(Object.keys(back ?? {})[0], "id");
      }),
    );
  });

  test("journal entries: anything else decodes to undefined, never throws", () => {
    const good = encodeJournalEntry({ ...EVENT, time: "2026-11-30T10:00:00.000Z" });
    const broken = [
      "",
      "{",
      "null",
      "[]",
      '"x"',
      good.slice(0, -1),
      good.replace('"action":"update"', '"action":"rename"'),
      good.replace('"type":"operator"', '"type":"root"'),
      good.replace('"via":"token"', '"via":"magic"'),
      good.replace('"client_ip":"127.0.0.1"', '"client_ip":7'),
      good.replace('"before":["10.0.0.1"]', '"before":"10.0.0.1"'),
      good.replace('"changes":{}', '"changes":{"name":1}'),
      good.replace('"confirmed":false', '"confirmed":"no"'),
      good.replace('"confirmed":false', '"confirmed":false,"import":{"from":1,"key_ids":[]}'),
      `{"id":3,${good.slice(1)}`,
    ];
    assert.ok(decodeJournalEntry(1, good));
    for (const b of broken) assert.equal(decodeJournalEntry(1, b), undefined, b);
    fc.assert(
      fc.property(fc.string({ unit: "binary" }), (s) => {
        decodeJournalEntry(1, s);
      }),
    );
  });

  test("JournalAuditLog pages: the well-formed entries newest first, whatever the page size (fast-check against a list)", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.boolean(), { maxLength: 40 }),
        fc.integer({ min: 1, max: 12 }),
        async (wellFormed, limit) => {
          // Entries numbered 1..n, oldest first; some malformed (as a hand-edited stream may hold).
          const entries = wellFormed.map((ok, i) => ({
            seq: i + 1,
            text: ok
              ? encodeJournalEntry({ ...EVENT, key_id: `k${i + 1}`, time: "2026-11-30T10:00:00.000Z" })
              : "{oops",
          }));
          const journal: Journal = {
            append: () => Promise.reject(new Error("not in this test")),
            page: (max, before) =>
              Promise.resolve(
                entries
                  .filter((e) => before === undefined || e.seq < before)
                  .reverse()
                  .slice(0, max),
              ),
          };
          const log = new JournalAuditLog(journal);
          const got: number[] = [];
          let cursor: number | undefined;
          for (let i = 0; i < 100; i++) {
            const page = await log.page(limit, cursor);
            assert.ok(page.data.length <= limit);
            got.push(...page.data.map((e) => e.id));
            if (page.next_cursor === null) break;
            cursor = Number(page.next_cursor);
          }
          const expected = entries
            .filter((_, i) => wellFormed[i])
            .map((e) => e.seq)
            .reverse();
          assert.deepEqual(got, expected);
        },
      ),
    );
  });
});

const OPS = bearer("tok_ops");

async function startWithAudit(up: string): Promise<TestSidecar> {
  return startTestSidecar({
    upstream: up,
    keys: [{ id: "k_restricted", secret: "s_r", allow: ["10.0.0.1"] }],
    admin: { operators: [{ name: "ops", token_sha256: sha("tok_ops") }] },
  });
}

function post(kf: TestSidecar, name: string): Promise<Reply> {
  return send(`${kf.adminUrl}/v1/api-keys`, {
    method: "POST",
    headers: [OPS, ["Content-Type", "application/json"]],
    body: JSON.stringify({ name, ip_allow_list: ["10.1.1.1"] }),
  });
}

describe("audit log over HTTP", () => {
  test("a change whose audit line cannot be written is refused and nothing changes (a directory, then /dev/full)", async () => {
    const up = await startUpstream();
    const kf = await startWithAudit(up.url);
    try {
      const audit = join(kf.dir, "keys.audit.jsonl");
      assert.equal((await post(kf, "first")).status, 201);
      const auditBefore = readFileSync(audit, "utf8");
      unlinkSync(audit);
      for (const breakIt of [() => mkdirSync(audit), () => symlinkSync("/dev/full", audit)]) {
        breakIt();
        const keysBefore = readFileSync(kf.keysFile, "utf8");
        const created = await post(kf, "refused");
        assert.equal(created.status, 503, created.body);
        assert.equal(created.headers["x-keyfence-reason"], "audit_unavailable");
        const del = await send(`${kf.adminUrl}/v1/api-keys/k_restricted`, { method: "DELETE", headers: [OPS] });
        assert.equal(del.status, 503);
        assert.equal(readFileSync(kf.keysFile, "utf8"), keysBefore, "nothing changed");
        const list = (await send(`${kf.adminUrl}/v1/api-keys`, { headers: [OPS] })).json() as {
          data: Array<{ name: string }>;
        };
        assert.ok(!list.data.some((k) => k.name === "refused"));
        assert.ok(list.data.some((k) => k.name === "k_restricted"));
        assert.equal(
          (await send(`${kf.url}/_keyfence/ping`, { headers: [bearer("s_r")] })).status,
          403,
          "the restriction is still enforced",
        );
        rmSync(audit, { recursive: true, force: true });
      }
      writeFileSync(audit, auditBefore);
      assert.equal((await post(kf, "again")).status, 201, "writable again: changes go through");
      assert.ok(kf.logs.some((l) => l["event"] === "audit_write_failed"));
      const lines = readFileSync(audit, "utf8").trim().split("\n");
      assert.equal(lines.length, 2);
      assert.deepEqual(
        lines.map((l) => (JSON.parse(l) as { id: number }).id),
        [1, 2],
      );
    } finally {
      await kf.stop();
      await up.close();
    }
  });

  test("a 60 MB audit log: limit=1 reads fast and the proxy is not stalled; the oldest page still answers", async () => {
    const up = await startUpstream();
    const kf = await startWithAudit(up.url);
    try {
      const audit = join(kf.dir, "keys.audit.jsonl");
      await kf.sidecar.stop();
      const line = (id: number): string =>
        `${JSON.stringify({ id, time: "2026-11-30T00:00:00.000Z", ...EVENT, ip_allow_list: { before: Array.from({ length: 20 }, (_, i) => `10.0.${i}.0/24`), after: [] } })}\n`;
      const per = Buffer.byteLength(line(100_000));
      const count = Math.ceil((60 * 1024 * 1024) / per);
      // Written in small batches: one 60 MB string would leave a major GC for the measured part.
      writeFileSync(audit, "");
      for (let id = 1; id <= count; id += 1000) {
        let batch = "";
        for (let k = id; k < Math.min(id + 1000, count + 1); k++) batch += line(k);
        appendFileSync(audit, batch);
      }
      const again = await kf.restart();
      try {
        const t0 = performance.now();
        const r = await send(`${again.adminUrl}/v1/audit?limit=1`, { headers: [OPS] });
        const ms = performance.now() - t0;
        assert.equal(r.status, 200);
        assert.equal((r.json() as { data: Array<{ id: number }> }).data[0]?.id, count);
        assert.ok(ms < 250, `limit=1 took ${ms.toFixed(0)} ms`);
        // The oldest page scans back through the whole file (without parsing it);
        // meanwhile proxied requests keep being answered quickly.
        // While 20 clients read the newest page, the process (proxy, admin and this
        // test's client) never stops for long: parsing the whole file would stop it
        // for hundreds of milliseconds per read.
        const loop = monitorEventLoopDelay({ resolution: 5 });
        loop.enable();
        const reads = Promise.all(
          Array.from({ length: 20 }, () => send(`${again.adminUrl}/v1/audit?limit=1`, { headers: [OPS] })),
        );
        let done = false;
        void reads.finally(() => (done = true));
        let probes = 0;
        while (!done && probes < 500) {
          assert.equal((await send(`${again.url}/probe`)).status, 200);
          probes++;
        }
        assert.ok((await reads).every((x) => x.status === 200));
        loop.disable();
        const worst = loop.max / 1e6;
        assert.ok(worst < 200, `the event loop stalled ${worst.toFixed(0)} ms during 20 newest-page reads`);
        // The oldest page scans back through every line (reading ids only) and still answers.
        const oldest = await send(`${again.adminUrl}/v1/audit?limit=1&cursor=2`, { headers: [OPS], timeoutMs: 60_000 });
        assert.equal((oldest.json() as { data: Array<{ id: number }> }).data[0]?.id, 1);
        assert.equal((await post(again, "after")).status, 201);
        assert.equal(
          (JSON.parse(readFileSync(audit, "utf8").trimEnd().split("\n").at(-1) ?? "{}") as { id: number }).id,
          count + 1,
          "the next id comes from the end of the file",
        );
      } finally {
        await again.stop();
      }
    } finally {
      if (existsSync(kf.dir)) rmSync(kf.dir, { recursive: true, force: true });
      await up.close();
    }
  });
});

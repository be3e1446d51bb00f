/** Keys pages (API and dashboard) from the snapshot's sorted ids, against a sort and filter of every record per request. */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import fc from "fast-check";
import pino from "pino";
import { FileAuditLog, type AuditLog } from "../../src/admin/audit.js";
import { KeysService } from "../../src/admin/keys.js";
import type { KeyChange } from "../../src/store/change.js";
import type { KeyRecord } from "../../src/store/keysfile.js";
import { MatcherCache, Snapshot } from "../../src/store/snapshot.js";
import { SortedIds } from "../../src/store/sorted.js";
import type { KeyStore } from "../../src/store/store.js";
import { rec } from "../helpers/records.js";
import { secretDigest } from "../../src/store/digest.js";

const IDS = ["a", "b", "B", "c", "key_1", "key_10", "key_2", "z-9", "_x"];

const recordArb = fc
  .record({
    id: fc.constantFrom(...IDS),
    secret: fc.constantFrom("s0", "s1", "s2", "s3", "s4", "s5", "s6"),
    name: fc.constantFrom("x", "Alpha", "beta"),
    scope: fc.constantFrom("messages:send", "api_keys:read"),
  })
  .map((r): KeyRecord => ({
    id: r.id,
    name: r.name,
    secretDigest: secretDigest(r.secret),
    scopes: [r.scope],
    ipAllowList: [],
    mode: undefined,
    createdAt: undefined,
    updatedAt: undefined,
  }));

const changeArb: fc.Arbitrary<KeyChange> = fc.oneof(
  recordArb.map((record) => ({ kind: "update" as const, record })),
  fc.constantFrom(...IDS).map((id) => ({ kind: "delete" as const, id })),
);

const byCodeUnit = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

describe("KeysService pages over the sorted ids", () => {
  const dir = mkdtempSync(join(tmpdir(), "keyfence-snapshot-"));
  after(() => rmSync(dir, { recursive: true, force: true }));
  let audit: AuditLog;
  before(async () => {
    audit = await FileAuditLog.open(join(dir, "audit.log"));
  });

  function service(snap: Snapshot): KeysService {
    // Paging reads the store's snapshot only.
    const store = { snapshot: snap } as unknown as KeyStore;
    return new KeysService({
      store,
      audit,
      maxEntries: 100,
      globalMode: "enforce",
      log: pino({ level: "silent" }),
    });
  }

  test("property: list pages and dashboard searches equal a sort and filter of every record per request", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(recordArb, { maxLength: 9 }),
        fc.array(changeArb, { maxLength: 6 }),
        fc.integer({ min: 1, max: 4 }),
        fc.constantFrom("", "a", "ALPHA", "key_1", "send", "READ", "zz"),
        fc.oneof(fc.integer({ min: -1, max: 5 }), fc.double({ min: -1, max: 6 }), fc.constant(Number.NaN)),
        async (initial, changes, limit, needle, page) => {
          let snap = new Snapshot(initial, new MatcherCache());
          await snap.sortedIds();
          for (const c of changes) snap = snap.withChange(c);
          const all = snap.records().sort((a, b) => byCodeUnit(a.id, b.id));
          const keys = service(snap);
          // Walk every page by cursor, as a client does; also from cursors that name no key.
          for (const cursor of [undefined, "", "a", "key_1", "key_15", "zzz", ...all.map((r) => r.id)]) {
            const got = await keys.list(limit, cursor);
            const rest = cursor === undefined ? all : all.filter((r) => r.id > cursor);
            assert.deepEqual(
              got.data.map((k) => k.id),
              rest.slice(0, limit).map((r) => r.id),
            );
            assert.equal(got.next_cursor, rest.length > limit ? (rest[limit - 1]?.id ?? null) : null);
          }
          const hits = all.filter(
            (r) =>
              needle === "" || [r.name, r.id, ...r.scopes].some((f) => f.toLowerCase().includes(needle.toLowerCase())),
          );
          const pages = Math.max(1, Math.ceil(hits.length / limit));
          const at = Math.min(pages, Math.max(1, Math.trunc(page) || 1));
          const found = await keys.search(needle, page, limit);
          assert.deepEqual(
            { ids: found.data.map((k) => k.id), page: found.page, pages: found.pages, total: found.total },
            { ids: hits.slice((at - 1) * limit, at * limit).map((r) => r.id), page: at, pages, total: hits.length },
          );
        },
      ),
      { numRuns: 100 },
    );
  });

  test("a fractional page (as ?page=1.09 gives) answers the whole page it falls in", async () => {
    // 0.09 × 50 is 4.5000000000000036 in floating point: a slice whose bounds kept their fractions never ended.
    const many = Array.from({ length: 120 }, (_, i) => rec(`key_${String(i).padStart(3, "0")}`));
    const keys = service(new Snapshot(many, new MatcherCache()));
    for (const [page, want] of [
      [1.09, 1],
      [2.99, 2],
      [0.5, 1],
      [Number.NaN, 1],
      [Number.POSITIVE_INFINITY, 3],
    ] as const) {
      const found = await keys.search("", page, 50);
      assert.equal(found.page, want, `page ${page}`);
      assert.equal(found.data.length, want === 3 ? 20 : 50);
      const filtered = await keys.search("key", page, 50);
      assert.equal(filtered.page, want, `page ${page}, filtered`);
    }
  });

  test("upperBound finds the first id after a cursor", () => {
    const ids = SortedIds.of(["a", "b", "d"], 2);
    assert.deepEqual(
      ["", "a", "b", "c", "d", "e"].map((c) => ids.upperBound(c)),
      [0, 1, 2, 2, 3, 3],
    );
  });
});

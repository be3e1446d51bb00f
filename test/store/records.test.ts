/**
 * The lean record constructor against the straightforward object spread it
 * replaces: the same fields, values and key order for every combination of
 * optional fields; and the Redis record codec read back against the record
 * it stored.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import { digestOfHex } from "../../src/store/digest.js";
import { leanRecord, type KeyRecord } from "../../src/store/keysfile.js";
import { decodeRecord, encodeRecord } from "../../src/store/redis/record.js";
import { parseAllowList } from "../../src/ip/list.js";

const DETAILS = { "10.0.0.0/8": { note: "n", expiresAt: "2030-01-01T00:00:00Z" } };

const recordArb: fc.Arbitrary<KeyRecord> = fc
  .record({
    id: fc.string({ minLength: 1 }),
    name: fc.string(),
    secretDigest: fc
      .uint8Array({ minLength: 32, maxLength: 32 })
      .map((b) => digestOfHex(Buffer.from(b).toString("hex"))),
    scopes: fc.array(fc.string(), { maxLength: 3 }),
    ipAllowList: fc.array(fc.constantFrom("10.0.0.0/8", "192.0.2.1", "2001:db8::/32"), { maxLength: 3 }),
    details: fc.constantFrom("absent", "undefined", "set"),
    modeKey: fc.boolean(),
    mode: fc.constantFrom(undefined, "enforce" as const, "report" as const),
    sandbox: fc.constantFrom(undefined, true, false),
    createdAt: fc.option(fc.constant("2026-11-30T00:00:00Z"), { nil: undefined }),
    updatedAt: fc.option(fc.constant("2026-11-30T01:00:00Z"), { nil: undefined }),
  })
  .map(({ details, modeKey, sandbox, ...r }): KeyRecord => ({
    id: r.id,
    name: r.name,
    secretDigest: r.secretDigest,
    scopes: r.scopes,
    ipAllowList: r.ipAllowList,
    ...(details === "absent" ? {} : ({ entryDetails: details === "set" ? DETAILS : undefined } as KeyRecord)),
    // A record built without its mode field (as some tests do) keeps lacking it.
    ...(modeKey ? { mode: r.mode } : ({} as { mode: undefined })),
    ...(sandbox === undefined ? {} : { sandbox }),
    createdAt: r.createdAt,
    updatedAt: r.updatedAt,
  }));

test("leanRecord: equal to the record, same key order, a new object sharing the lists", () => {
  fc.assert(
    fc.property(recordArb, (r) => {
      // The reference: the spread the snapshot used before.
      const want: KeyRecord = { ...r };
      const got = leanRecord(r, r.name, r.ipAllowList, r.scopes, r.updatedAt);
      assert.deepStrictEqual(got, want);
      assert.deepStrictEqual(Object.keys(got), Object.keys(want));
      assert.equal(JSON.stringify(got), JSON.stringify(want));
      assert.notEqual(got, r);
      assert.equal(got.scopes, r.scopes);
      assert.equal(got.ipAllowList, r.ipAllowList);
    }),
    { numRuns: 500 },
  );
});

test("leanRecord with replacements: equal to the spread that replaces them, same key order", () => {
  fc.assert(
    fc.property(
      recordArb,
      fc.string(),
      fc.array(fc.constantFrom("10.0.0.0/8", "192.0.2.1"), { maxLength: 2 }),
      fc.array(fc.string(), { maxLength: 2 }),
      fc.option(fc.constant("2026-11-30T02:00:00Z"), { nil: undefined }),
      (r, name, ipAllowList, scopes, updatedAt) => {
        const want: KeyRecord = { ...r, name, ipAllowList, scopes, updatedAt };
        const got = leanRecord(r, name, ipAllowList, scopes, updatedAt);
        assert.deepStrictEqual(got, want);
        assert.deepStrictEqual(Object.keys(got), Object.keys(want));
        assert.equal(got.ipAllowList, ipAllowList);
        assert.equal(got.scopes, scopes);
      },
    ),
    { numRuns: 500 },
  );
});

test("decodeRecord reads back what encodeRecord stored: every field, the eight every key has first", () => {
  fc.assert(
    fc.property(recordArb, (r) => {
      const details = r.entryDetails !== undefined && r.ipAllowList.includes("10.0.0.0/8") ? DETAILS : undefined;
      const stored = { ...r, entryDetails: details };
      const want: KeyRecord = {
        id: r.id,
        name: r.name,
        secretDigest: r.secretDigest,
        scopes: r.scopes,
        ipAllowList: r.ipAllowList,
        mode: r.mode,
        createdAt: r.createdAt,
        updatedAt: r.updatedAt,
        ...(details === undefined ? {} : { entryDetails: details }),
        ...(r.sandbox === true ? { sandbox: true } : {}),
      };
      const got = decodeRecord(r.id, encodeRecord(stored));
      assert.deepStrictEqual(got, want);
      assert.deepStrictEqual(Object.keys(got ?? {}), Object.keys(want));
    }),
    { numRuns: 500 },
  );
});

// Lists written into Redis by other means than keyfence: each entry the keys file would refuse makes the record
// unreadable (an outage), never a list a request first finds it cannot compile (that crashed the process).
const stored = (list: unknown[]): string => JSON.stringify(["n", "a".repeat(64), [], list, 0, 0, 0]);

test("decodeRecord refuses a list entry the keys file would refuse", () => {
  const refused = [
    "garbage",
    "0.0.0.0/0",
    "::/0",
    "198.51.100.7/24",
    "300.1.2.3",
    "1.2.3",
    "0177.0.0.1",
    "10.0.0.1/33",
    "",
  ];
  for (const entry of refused) {
    assert.equal(decodeRecord("k", stored(["192.0.2.1", entry])), undefined, JSON.stringify(entry));
  }
  for (const entry of ["192.0.2.1", "10.0.0.0/8", "2001:db8::/32", "::1"]) {
    assert.deepEqual(decodeRecord("k", stored([entry]))?.ipAllowList, [entry], entry);
  }
});

test("decodeRecord reads a stored list exactly when the keys file's validator accepts every entry", () => {
  const entryArb = fc.oneof(
    fc.constantFrom("192.0.2.1", "10.0.0.0/8", "2001:db8::/32", "0.0.0.0/0", "10.0.0.1/8", "::ffff:1.2.3.4"),
    fc.ipV4(),
    fc.ipV6(),
    fc.string({ maxLength: 12 }),
    fc.tuple(fc.ipV4(), fc.integer({ min: 0, max: 40 })).map(([ip, p]) => `${ip}/${p}`),
  );
  fc.assert(
    fc.property(fc.array(entryArb, { maxLength: 4 }), (list) => {
      const accepted = !Array.isArray(parseAllowList(list, Infinity));
      assert.equal(decodeRecord("k", stored(list)) !== undefined, accepted);
    }),
  );
});

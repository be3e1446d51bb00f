import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fc from "fast-check";
import { formatIp, parseIp, type Ip } from "../../src/ip/address.js";
import { activeEntries, expiryInstant, nextExpiry, parseEntries, type ParsedEntries } from "../../src/store/entries.js";
import { parseKeysFile, type KeyRecord } from "../../src/store/keysfile.js";
import { decodeRecord, encodeRecord, readable, readableReusing } from "../../src/store/redis/record.js";
import { MatcherCache, Snapshot } from "../../src/store/snapshot.js";
import { formatProblem } from "../../src/util/yaml.js";
import { digestOfHex } from "../../src/store/digest.js";

function ip(s: string): Ip {
  const r = parseIp(s);
  if (!r) throw new Error(`bad test address ${s}`);
  return r;
}

function ok(raw: unknown[]): ParsedEntries {
  const r = parseEntries(raw, 1000);
  if (Array.isArray(r)) throw new Error(`rejected: ${JSON.stringify(r)}`);
  return r;
}

const T0 = Date.UTC(2026, 10, 30, 12, 0, 0);

describe("entries: expires_at format", () => {
  const good: Array<[string, number]> = [
    ["2026-11-30T12:00:00Z", T0],
    ["2026-11-30t12:00:00z", T0],
    ["2026-11-30T13:00:00+01:00", T0],
    ["2026-11-30T06:30:00-05:30", T0],
    ["2026-11-30T12:00:00+00:00", T0],
    ["2026-11-30T12:00:00-00:00", T0],
    ["2028-02-29T00:00:00Z", Date.UTC(2028, 1, 29)],
    ["1999-12-31T23:59:59Z", Date.UTC(1999, 11, 31, 23, 59, 59)],
  ];
  for (const [s, at] of good) test(`accepts ${s}`, () => assert.equal(expiryInstant(s), at));
  const bad = [
    "2026-11-30T12:00:00", // no offset: which zone?
    "2026-11-30 12:00:00Z",
    "2026-11-30T12:00Z",
    "2026-11-30T12:00:00.5Z", // fractions: an expiry is a whole second
    "2026-11-30T12:00:00.000Z",
    "2026-02-29T00:00:00Z",
    "2026-04-31T00:00:00Z",
    "2026-13-01T00:00:00Z",
    "2026-00-10T00:00:00Z",
    "2026-11-30T24:00:00Z",
    "2026-11-30T23:60:00Z",
    "2026-11-30T23:59:60Z",
    "2026-11-30T12:00:00+24:00",
    "2026-11-30T12:00:00+01:60",
    "2026-11-30T12:00:00+0100",
    "1764504000",
    "tomorrow",
    "",
    " 2026-11-30T12:00:00Z",
    "2026-11-30T12:00:00Z\n",
    "２０２６-11-30T12:00:00Z",
  ];
  for (const s of bad) test(`rejects ${JSON.stringify(s)}`, () => assert.ok(Number.isNaN(expiryInstant(s))));

  test("property: agrees with Date for every whole-second instant and offset", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: Date.UTC(1970, 0, 2) / 1000, max: Date.UTC(9998, 11, 30) / 1000 }),
        fc.integer({ min: -23 * 60 - 59, max: 23 * 60 + 59 }),
        (sec, offsetMin) => {
          const at = sec * 1000;
          const local = new Date(at + offsetMin * 60_000).toISOString().slice(0, 19);
          const sign = offsetMin < 0 ? "-" : "+";
          const abs = Math.abs(offsetMin);
          const off = `${sign}${String(Math.floor(abs / 60)).padStart(2, "0")}:${String(abs % 60).padStart(2, "0")}`;
          assert.equal(expiryInstant(`${local}${off}`), at);
          assert.equal(expiryInstant(`${local}${off}`), Date.parse(`${local}${off}`));
        },
      ),
    );
  });
});

describe("entries: items", () => {
  test("strings and objects, canonical, in order, details only where given", () => {
    const r = ok([
      "10.0.0.0/8",
      { entry: "2001:DB8::1", note: "office" },
      { entry: "::ffff:192.0.2.1", expires_at: "2026-12-01T00:00:00Z" },
      { entry: "198.51.100.7", note: null, expires_at: null },
      "10.0.0.0/8",
    ]);
    assert.deepEqual(r.entries, ["10.0.0.0/8", "2001:db8::1", "192.0.2.1", "198.51.100.7"]);
    assert.deepEqual(r.details, {
      "2001:db8::1": { note: "office" },
      "192.0.2.1": { expiresAt: "2026-12-01T00:00:00Z" },
    });
  });

  test("plain strings have no details at all", () => {
    assert.equal(ok(["10.0.0.1", { entry: "10.0.0.2" }]).details, undefined);
  });

  test("notes are kept exactly, any Unicode text", () => {
    const notes = ["Ünïcödé ✓", "contractor: Jane (until Friday)", "😀".repeat(200), "a b", "'\"<script>"];
    for (const note of notes) assert.equal(ok([{ entry: "10.0.0.1", note }]).details?.["10.0.0.1"]?.note, note);
  });

  const reject: Array<{
    desc: string;
    items: unknown[];
    field: string | undefined;
    index: number | null;
    says: RegExp;
  }> = [
    {
      desc: "unknown field",
      items: [{ entry: "10.0.0.1", comment: "x" }],
      field: "comment",
      index: 0,
      says: /unknown field/,
    },
    {
      desc: "misspelt field",
      items: [{ entry: "10.0.0.1", expires: "2026-12-01T00:00:00Z" }],
      field: "expires",
      index: 0,
      says: /unknown field/,
    },
    {
      desc: "prototype field",
      items: [JSON.parse('{"entry":"10.0.0.1","__proto__":{"note":"x"}}')],
      field: "__proto__",
      index: 0,
      says: /unknown field/,
    },
    { desc: "missing entry", items: [{ note: "x" }], field: undefined, index: 0, says: /missing field "entry"/ },
    { desc: "entry not a string", items: [{ entry: 167772161 }], field: "entry", index: 0, says: /must be a string/ },
    { desc: "entry not an address", items: [{ entry: "10.0.0.300" }], field: "entry", index: 0, says: /./ },
    { desc: "entry null", items: [{ entry: null }], field: "entry", index: 0, says: /must be a string/ },
    { desc: "note blank", items: [{ entry: "10.0.0.1", note: "  " }], field: "note", index: 0, says: /blank/ },
    { desc: "note empty", items: [{ entry: "10.0.0.1", note: "" }], field: "note", index: 0, says: /blank/ },
    {
      desc: "note too long",
      items: [{ entry: "10.0.0.1", note: "x".repeat(201) }],
      field: "note",
      index: 0,
      says: /at most 200/,
    },
    { desc: "note newline", items: [{ entry: "10.0.0.1", note: "a\nb" }], field: "note", index: 0, says: /control/ },
    { desc: "note tab", items: [{ entry: "10.0.0.1", note: "a\tb" }], field: "note", index: 0, says: /control/ },
    { desc: "note NUL", items: [{ entry: "10.0.0.1", note: "a\u0000" }], field: "note", index: 0, says: /control/ },
    { desc: "note DEL", items: [{ entry: "10.0.0.1", note: "a\u007f" }], field: "note", index: 0, says: /control/ },
    { desc: "note U+FFFF", items: [{ entry: "10.0.0.1", note: "a\uffff" }], field: "note", index: 0, says: /FFFF/ },
    {
      desc: "note lone surrogate",
      items: [{ entry: "10.0.0.1", note: "a\ud800" }],
      field: "note",
      index: 0,
      says: /surrogate/,
    },
    { desc: "note number", items: [{ entry: "10.0.0.1", note: 5 }], field: "note", index: 0, says: /string/ },
    { desc: "note object", items: [{ entry: "10.0.0.1", note: { a: 1 } }], field: "note", index: 0, says: /string/ },
    {
      desc: "expiry without offset",
      items: [{ entry: "10.0.0.1", expires_at: "2026-12-01T00:00:00" }],
      field: "expires_at",
      index: 0,
      says: /RFC 3339/,
    },
    {
      desc: "expiry as number",
      items: [{ entry: "10.0.0.1", expires_at: 1764547200 }],
      field: "expires_at",
      index: 0,
      says: /RFC 3339/,
    },
    {
      desc: "expiry impossible date",
      items: [{ entry: "10.0.0.1", expires_at: "2026-02-30T00:00:00Z" }],
      field: "expires_at",
      index: 0,
      says: /RFC 3339/,
    },
    {
      desc: "duplicate with a note",
      items: ["10.0.0.1", { entry: "10.0.0.1", note: "x" }],
      field: undefined,
      index: 1,
      says: /repeats 10.0.0.1 \(ip_allow_list\[0\]\)/,
    },
    {
      desc: "duplicate spelt differently",
      items: [{ entry: "10.0.0.1/32", note: "x" }, "::ffff:10.0.0.1"],
      field: undefined,
      index: 1,
      says: /repeats 10.0.0.1/,
    },
    {
      desc: "duplicate objects",
      items: [
        { entry: "2001:db8::/32", expires_at: "2026-12-01T00:00:00Z" },
        { entry: "2001:DB8::0/32", expires_at: "2026-12-02T00:00:00Z" },
      ],
      field: undefined,
      index: 1,
      says: /repeats/,
    },
    { desc: "item a list", items: [["10.0.0.1"]], field: undefined, index: 0, says: /must be a string/ },
    { desc: "item null", items: [null], field: undefined, index: 0, says: /must be a string/ },
  ];
  for (const c of reject) {
    test(`rejects: ${c.desc}`, () => {
      const r = parseEntries(c.items, 1000);
      assert.ok(Array.isArray(r), "rejected");
      const p = r.find((x) => x.index === c.index && x.field === c.field);
      assert.ok(p, `a problem at [${c.index}] ${c.field ?? ""}: ${JSON.stringify(r)}`);
      assert.match(p.reason, c.says);
    });
  }

  test("every problem at once", () => {
    const r = parseEntries([{ entry: "x", note: "", expires_at: "soon", extra: 1 }, "10.0.0.999"], 1000);
    assert.ok(Array.isArray(r));
    assert.deepEqual(r.map((p) => `${p.index}.${p.field ?? ""}`).sort(), [
      "0.entry",
      "0.expires_at",
      "0.extra",
      "0.note",
      "1.",
    ]);
  });

  test("the entry limit counts distinct entries", () => {
    assert.ok(Array.isArray(parseEntries(["10.0.0.1", { entry: "10.0.0.2", note: "n" }], 1)));
    assert.ok(!Array.isArray(parseEntries(["10.0.0.1", "10.0.0.1/32"], 1)));
  });
});

describe("entries: the keys file", () => {
  test("objects load, problems name file:line:col of the field at fault", () => {
    const text = [
      "keys:",
      "  - id: k1",
      `    secret_sha256: ${"a".repeat(64)}`,
      "    ip_allow_list:",
      "      - 10.0.0.0/8",
      "      - {entry: 192.0.2.1, note: office, expires_at: 2026-12-01T00:00:00Z}",
      "      - entry: 2001:db8::/32",
      "        note: VPN",
      "",
    ].join("\n");
    const r = parseKeysFile("keys.yaml", text, 1000);
    assert.ok(r.ok, JSON.stringify(r));
    assert.deepEqual(r.keys[0]?.entryDetails, {
      "192.0.2.1": { note: "office", expiresAt: "2026-12-01T00:00:00Z" },
      "2001:db8::/32": { note: "VPN" },
    });
    const bad = [
      "keys:",
      "  - id: k1",
      `    secret_sha256: ${"a".repeat(64)}`,
      "    ip_allow_list:",
      "      - {entry: 192.0.2.1, expires_at: 2026-12-01T00:00:00}",
      "      - entry: 2001:db8::/32",
      '        note: "a\\nb"',
      "        until: 2026-12-01T00:00:00Z",
      "      - {entry: 10.0.0.300}",
      "      - {entry: 192.0.2.1/32, note: again}",
      "",
    ].join("\n");
    const b = parseKeysFile("keys.yaml", bad, 1000);
    assert.ok(!b.ok);
    const lines = b.problems.map(formatProblem);
    const at = (re: RegExp): string => lines.find((l) => re.test(l)) ?? `(none in ${lines.join(" | ")})`;
    assert.match(at(/expires_at/), /^keys\.yaml:5:\d+: keys\[0\]\.ip_allow_list\[0\]\.expires_at.*RFC 3339/);
    assert.match(at(/note/), /^keys\.yaml:7:15: .*control characters/);
    assert.match(at(/until/), /^keys\.yaml:8:9: .*unknown field/);
    assert.match(at(/300/), /^keys\.yaml:9:\d+: keys\[0\]\.ip_allow_list\[2\]\.entry/);
    assert.match(at(/repeats/), /^keys\.yaml:10:\d+: keys\[0\]\.ip_allow_list\[3\]/);
  });
});

function record(list: unknown[]): KeyRecord {
  const p = ok(list);
  return {
    id: "k",
    name: "k",
    secretDigest: digestOfHex("a".repeat(64)),
    scopes: [],
    ipAllowList: p.entries,
    ...(p.details ? { entryDetails: p.details } : {}),
    mode: undefined,
    createdAt: undefined,
    updatedAt: undefined,
  };
}

describe("entries: matching with a clock", () => {
  const at = (ms: number): string => new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z");

  test("an entry stops matching at its expires_at second, not before", () => {
    let now = T0;
    const cache = new MatcherCache(100, () => now);
    const snap = new Snapshot(
      [record(["10.0.0.1", { entry: "192.0.2.0/24", expires_at: at(T0 + 3 * 86400_000), note: "contractor" }])],
      cache,
    );
    const key = snap.lookup(digestOfHex("a".repeat(64)));
    assert.ok(key);
    assert.ok(key.contains(ip("192.0.2.9")));
    now = T0 + 3 * 86400_000 - 1;
    assert.ok(key.contains(ip("192.0.2.9")), "still in force 1 ms before");
    now = T0 + 3 * 86400_000;
    assert.ok(!key.contains(ip("192.0.2.9")), "gone at the second");
    assert.ok(key.contains(ip("10.0.0.1")), "the other entry stays");
    assert.ok(key.restricted);
    now = T0;
    assert.ok(!key.contains(ip("192.0.2.9")), "a clock going back does not revive it (expiry is one-way per snapshot)");
  });

  test("a key whose entries all expired admits nobody (it stays restricted)", () => {
    let now = T0;
    const cache = new MatcherCache(100, () => now);
    const snap = new Snapshot(
      [
        record([
          { entry: "0.0.0.0/1", expires_at: at(T0 + 1000) },
          { entry: "128.0.0.0/1", expires_at: at(T0 + 1000) },
        ]),
      ],
      cache,
    );
    const key = snap.lookup(digestOfHex("a".repeat(64)));
    assert.ok(key);
    assert.ok(key.contains(ip("203.0.113.1")));
    now = T0 + 1000;
    assert.ok(key.restricted);
    assert.ok(!key.contains(ip("203.0.113.1")));
  });

  test("an entry already expired when the snapshot is built never matches", () => {
    const cache = new MatcherCache(100, () => T0);
    const snap = new Snapshot([record(["10.0.0.1", { entry: "10.0.0.2", expires_at: at(T0) }])], cache);
    const key = snap.lookup(digestOfHex("a".repeat(64)));
    assert.ok(key && !key.contains(ip("10.0.0.2")) && key.contains(ip("10.0.0.1")));
  });

  test("keys without expiries never read the clock", () => {
    let reads = 0;
    const cache = new MatcherCache(100, () => {
      reads++;
      return T0;
    });
    const snap = new Snapshot([record(["10.0.0.1", { entry: "10.0.0.2", note: "no expiry" }])], cache);
    const key = snap.lookup(digestOfHex("a".repeat(64)));
    for (let i = 0; i < 10; i++) key?.contains(ip("10.0.0.2"));
    assert.equal(reads, 0);
  });

  test("the compiled list is swapped once per expiry, not rebuilt per request", () => {
    let now = T0;
    const cache = new MatcherCache(100, () => now);
    const snap = new Snapshot(
      [
        record([
          { entry: "10.0.0.1", expires_at: at(T0 + 1000) },
          { entry: "10.0.0.2", expires_at: at(T0 + 2000) },
        ]),
      ],
      cache,
    );
    const key = snap.lookup(digestOfHex("a".repeat(64)));
    for (let i = 0; i < 5; i++) key?.contains(ip("10.0.0.1"));
    now = T0 + 1500;
    for (let i = 0; i < 5; i++) key?.contains(ip("10.0.0.1"));
    assert.equal(cache.misses, 2, "one compile per list in force");
  });

  test("property: matches the naive rule (an entry counts while now < expires_at)", () => {
    const entry = fc.tuple(
      fc.integer({ min: 0, max: 15 }),
      fc.option(fc.integer({ min: -5, max: 5 }), { nil: undefined }),
    );
    fc.assert(
      fc.property(
        fc.uniqueArray(entry, { selector: ([a]) => a, maxLength: 8 }),
        fc.array(fc.integer({ min: -6, max: 6 }), { minLength: 1, maxLength: 6 }),
        fc.integer({ min: 0, max: 15 }),
        (entries, times, probe) => {
          const sorted = [...times].sort((a, b) => a - b); // time moves forward
          let now = T0 + (sorted[0] ?? 0) * 1000;
          const cache = new MatcherCache(100, () => now);
          const items = entries.map(([a, e]) =>
            e === undefined ? `10.0.0.${a}` : { entry: `10.0.0.${a}`, expires_at: at(T0 + e * 1000) },
          );
          const key = new Snapshot([record(items)], cache).lookup(digestOfHex("a".repeat(64)));
          for (const t of sorted) {
            now = T0 + t * 1000;
            const naive = entries.some(([a, e]) => a === probe && (e === undefined || now < T0 + e * 1000));
            assert.equal(key?.contains(ip(formatIp(ip(`10.0.0.${probe}`)))), naive);
          }
        },
      ),
    );
  });

  test("activeEntries and nextExpiry", () => {
    const r = record([
      "10.0.0.1",
      { entry: "10.0.0.2", expires_at: at(T0 + 1000) },
      { entry: "10.0.0.3", expires_at: at(T0) },
    ]);
    assert.deepEqual(activeEntries(r.ipAllowList, r.entryDetails, T0), ["10.0.0.1", "10.0.0.2"]);
    assert.equal(nextExpiry(r.entryDetails, T0), T0 + 1000);
    assert.equal(nextExpiry(r.entryDetails, T0 + 1000), Infinity);
  });
});

describe("entries: the Redis record carries details beside the sandbox flag", () => {
  const base: KeyRecord = {
    id: "k",
    name: "n",
    secretDigest: digestOfHex("a".repeat(64)),
    scopes: ["s"],
    ipAllowList: ["10.0.0.1", "192.0.2.0/24"],
    mode: undefined,
    createdAt: undefined,
    updatedAt: undefined,
  };
  const details = { "10.0.0.1": { note: "temp", expiresAt: "2030-01-01T00:00:00Z" }, "192.0.2.0/24": { note: "x" } };

  test("7, 8 and 9 elements: plain, sandbox, details (0 or 1 in the sandbox place)", () => {
    const len = (r: KeyRecord): number => (JSON.parse(encodeRecord(r)) as unknown[]).length;
    assert.equal(len(base), 7);
    assert.equal(len({ ...base, sandbox: true }), 8);
    assert.equal(len({ ...base, entryDetails: details }), 9);
    assert.equal(len({ ...base, sandbox: true, entryDetails: details }), 9);
    assert.equal(len({ ...base, entryDetails: {} }), 7, "no details is no element");
  });

  const bad: Array<[string, unknown[]]> = [
    ["0 without details", [0]],
    ["true as the flag", [true]],
    ["2 as the flag", [2, { "10.0.0.1": { note: "n" } }]],
    ["null details", [0, null]],
    ["empty details", [0, {}]],
    ["details as a list", [0, [["10.0.0.1", { note: "n" }]]]],
    ["details of an entry not in the list", [0, { "10.9.9.9": { note: "n" } }]],
    ["a non-string note", [0, { "10.0.0.1": { note: 5 } }]],
    ["a bad expires_at", [1, { "10.0.0.1": { expires_at: "tomorrow" } }]],
    ["details that are not an object", [0, { "10.0.0.1": "n" }]],
    ["a tenth element", [0, { "10.0.0.1": { note: "n" } }, 0]],
  ];
  for (const [desc, tail] of bad) {
    test(`a malformed record is no record: ${desc}`, () => {
      const text = JSON.stringify(["n", "a".repeat(64), [], ["10.0.0.1"], 0, 0, 0, ...tail]);
      assert.equal(decodeRecord("k", text), undefined);
    });
  }

  test("property: readableReusing reads a text as readable does, and keeps the previous record only when it is stored as that text", () => {
    const recArb = fc
      .record({
        id: fc.constantFrom("k", "k2"),
        name: fc.constantFrom("n", "m"),
        list: fc.constantFrom([], ["10.0.0.1"], ["10.0.0.1", "192.0.2.0/24"]),
        sandbox: fc.boolean(),
        mode: fc.constantFrom(undefined, "enforce" as const),
        noted: fc.boolean(),
      })
      .map((x): KeyRecord => ({
        ...base,
        id: x.id,
        name: x.name,
        ipAllowList: x.list,
        mode: x.mode,
        ...(x.sandbox ? { sandbox: true } : {}),
        ...(x.noted && x.list[0] !== undefined ? { entryDetails: { [x.list[0]]: { note: "n" } } } : {}),
      }));
    const textArb = fc.oneof(
      recArb.map((r) => encodeRecord(r)),
      fc.constant("not json"),
      fc.constant(JSON.stringify(["n", "a".repeat(64), [], ["10.0.0.1"], 0, 0, 0, 2])),
    );
    fc.assert(
      fc.property(fc.option(recArb, { nil: undefined }), textArb, (previous, text) => {
        const read = (f: () => KeyRecord): KeyRecord | "unreadable" => {
          try {
            return f();
          } catch {
            return "unreadable";
          }
        };
        const got = read(() => readableReusing(previous, "k", text));
        assert.deepEqual(
          got,
          read(() => readable("k", text)),
        );
        assert.equal(got === previous, previous?.id === "k" && encodeRecord(previous) === text);
      }),
    );
  });

  test("property: every record round-trips, sandbox and details alike", () => {
    const entryArb = fc.constantFrom("10.0.0.1", "192.0.2.0/24", "2001:db8::/32", "198.51.100.7");
    const detailArb = fc.record(
      {
        note: fc.string({ minLength: 1, maxLength: 20, unit: "grapheme" }),
        expiresAt: fc
          .integer({ min: T0 / 1000, max: T0 / 1000 + 10 ** 8 })
          .map((s) => new Date(s * 1000).toISOString().replace(/\.\d{3}Z$/, "Z")),
      },
      { requiredKeys: [] },
    );
    fc.assert(
      fc.property(
        fc.uniqueArray(entryArb, { maxLength: 4 }),
        fc.array(detailArb, { maxLength: 4 }),
        fc.boolean(),
        fc.constantFrom(undefined, "enforce" as const, "report" as const),
        fc.constantFrom(undefined, "2026-11-30T00:00:00Z"),
        (list, ds, sandbox, mode, at) => {
          const entryDetails: Record<string, { note?: string; expiresAt?: string }> = {};
          list.forEach((e, i) => {
            // As the parser gives them: a plain object, only for an entry with a note or an expiry.
            const d = ds[i];
            if (d?.note !== undefined || d?.expiresAt !== undefined) entryDetails[e] = { ...d };
          });
          const r: KeyRecord = {
            ...base,
            ipAllowList: list,
            mode,
            createdAt: at,
            updatedAt: at,
            ...(sandbox ? { sandbox: true } : {}),
            ...(Object.keys(entryDetails).length > 0 ? { entryDetails } : {}),
          };
          assert.deepEqual(decodeRecord("k", encodeRecord(r)), r);
        },
      ),
    );
  });
});

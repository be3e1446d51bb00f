/** In-place edits of the keys file: the entry index and the splice of one change. */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fc from "fast-check";
import { secretHash } from "../../src/policy/credential.js";
import { indexEntries, spliceChange, type EntryIndex } from "../../src/store/splice.js";
import type { KeyChange } from "../../src/store/store.js";
import { rec, records } from "../helpers/records.js";

/** {@link spliceChange} with its parts joined. */
function splice(...args: Parameters<typeof spliceChange>): { bytes: Buffer; index: EntryIndex } | undefined {
  const out = spliceChange(...args);
  return out && { bytes: Buffer.concat(out.parts), index: out.index };
}

const USUAL = `# top comment
keys:
  # the first key
  - id: a # trailing
    secret_sha256: "${secretHash("secret-a")}"
    ip_allow_list: [10.0.0.1] # office

  - id: b
    name: Bée 🐝 # ünïcode before the entries that follow
    secret_sha256: "${secretHash("secret-b")}"
    scopes:
      - x:y
  # the last key
  - id: c
    secret_sha256: "${secretHash("secret-c")}"
`;

describe("in-place edits of the keys file", () => {
  test("indexes the usual layout, with leading comments attached to their entry", () => {
    const bytes = Buffer.from(USUAL);
    const idx = indexEntries(bytes, ["a", "b", "c"]);
    assert.ok(idx);
    assert.equal(idx.indent, 2);
    assert.ok(bytes.toString("utf8", idx.starts[0], idx.bodies[0]).includes("# the first key"));
    assert.equal(bytes.toString("utf8", idx.starts[2], idx.bodies[2]), "  # the last key\n");
    assert.ok(bytes.toString("utf8", idx.bodies[2]).startsWith("  - id: c\n"));
    assert.equal(idx.end, bytes.length, "offsets are bytes, past the multi-byte characters");
  });

  test("refuses layouts it does not understand (the document path takes them)", () => {
    const h = secretHash("x");
    for (const [text, ids] of [
      [`keys: [{id: a, secret_sha256: "${h}"}]\n`, ["a"]],
      [`keys:\n- {id: a, secret_sha256: "${h}"}\n`, ["a"]],
      [`keys:\n\t- id: a\n`, ["a"]],
      [`keys: []\n`, []],
      [`keys:\n  - id: a\n    secret_sha256: "${h}"\n`, ["b"]],
      [`keys:\n  - secret_sha256: "${h}"\n    id: a\n  - id: b\n`, ["a"]],
    ] as Array<[string, string[]]>) {
      assert.equal(indexEntries(Buffer.from(text), ids), undefined, text);
    }
  });

  test("update, create and delete touch only their entry", () => {
    const ids = ["a", "b", "c"];
    const usual = Buffer.from(USUAL);
    const idx = indexEntries(usual, ids)!;
    const b = records(USUAL)[1]!;
    const up = splice(usual, idx, 1, {
      kind: "update",
      record: { ...b, name: "Bee 2 ✓", ipAllowList: ["192.0.2.0/24"] },
    })!;
    assert.deepEqual(
      records(up.bytes).map((r) => [r.id, r.name, r.ipAllowList]),
      [
        ["a", "a", ["10.0.0.1"]],
        ["b", "Bee 2 ✓", ["192.0.2.0/24"]],
        ["c", "c", []],
      ],
    );
    const upText = up.bytes.toString();
    for (const kept of [
      "# top comment",
      "# the first key",
      "- id: a # trailing",
      "ip_allow_list: [10.0.0.1] # office",
      "# the last key",
      "\n\n  - id: b",
    ]) {
      assert.ok(upText.includes(kept), `lost ${JSON.stringify(kept)}:\n${upText}`);
    }
    assert.deepEqual(indexEntries(up.bytes, ids), up.index, "the index follows an edit that changes byte lengths");
    const del = splice(up.bytes, up.index, 2, { kind: "delete", id: "c" })!;
    assert.deepEqual(
      records(del.bytes).map((r) => r.id),
      ["a", "b"],
    );
    assert.ok(!del.bytes.toString().includes("# the last key"), "a deleted entry takes its leading comment");
    const add = splice(del.bytes, del.index, -1, {
      kind: "create",
      record: rec("d", { name: "Dé", ipAllowList: ["::1"] }),
    })!;
    assert.deepEqual(
      records(add.bytes).map((r) => r.id),
      ["a", "b", "d"],
    );
    assert.deepEqual(indexEntries(add.bytes, ["a", "b", "d"]), add.index, "the index follows the edits");
    assert.equal(splice(usual, idx, 3, { kind: "delete", id: "zz" }), undefined, "a position out of range");
    assert.equal(splice(usual, idx, 0, { kind: "delete", id: "b" }), undefined, "a position holding another key");
    assert.equal(
      splice(usual, idx, 2, { kind: "update", record: { ...b, name: "wrong place" } }),
      undefined,
      "an update at a position holding another key",
    );
  });

  test("names with Unicode line and paragraph separators survive an edit and a create", () => {
    // Found by the property below once its names went beyond ASCII: the
    // re-indent used a multiline regex, which also starts a line after U+2028.
    const usual = Buffer.from(USUAL);
    const ids = ["a", "b", "c"];
    const name = "line\u2028sep\u2029para\u0085nel\u00a0nbsp";
    const up = splice(usual, indexEntries(usual, ids)!, 0, {
      kind: "update",
      record: { ...records(USUAL)[0]!, name },
    })!;
    const add = splice(up.bytes, up.index, -1, { kind: "create", record: rec("d", { name }) })!;
    assert.deepEqual(
      records(add.bytes).map((r) => r.name),
      [name, "Bée 🐝", "c", name],
    );
  });

  test("property: any sequence of changes done in place equals the records it describes", () => {
    const change = fc.oneof(
      fc.record({
        kind: fc.constant("create" as const),
        n: fc.nat(1000),
        list: fc.array(fc.constantFrom("10.0.0.1", "192.0.2.0/24", "2001:db8::/48"), { maxLength: 3 }),
      }),
      fc.record({
        kind: fc.constant("update" as const),
        pick: fc.nat(),
        name: fc
          .string({ minLength: 1, maxLength: 12, unit: "grapheme" })
          .filter((s) => s.trim() !== "" && [...s].every((ch) => ch.charCodeAt(0) >= 32)),
        list: fc.array(fc.constantFrom("10.0.0.2", "198.51.100.0/24"), { maxLength: 2 }),
      }),
      fc.record({ kind: fc.constant("delete" as const), pick: fc.nat() }),
    );
    fc.assert(
      fc.property(fc.array(change, { maxLength: 12 }), (changes) => {
        let text: Buffer = Buffer.from(USUAL);
        let expected = records(USUAL);
        let idx = indexEntries(
          text,
          expected.map((r) => r.id),
        );
        let created = 0;
        for (const c of changes) {
          const ids = expected.map((r) => r.id);
          let kc: KeyChange;
          if (c.kind === "create") {
            kc = { kind: "create", record: rec(`n${created++}_${c.n}`, { ipAllowList: [...new Set(c.list)] }) };
            expected = [...expected, kc.record];
          } else if (expected.length === 0) continue;
          else if (c.kind === "update") {
            const target = expected[c.pick % expected.length]!;
            kc = { kind: "update", record: { ...target, name: c.name, ipAllowList: [...new Set(c.list)] } };
            const r = kc.record;
            expected = expected.map((x) => (x.id === r.id ? r : x));
          } else {
            const target = expected[c.pick % expected.length]!;
            kc = { kind: "delete", id: target.id };
            expected = expected.filter((x) => x.id !== target.id);
          }
          if (idx === undefined) return; // an emptied file is the document path's job
          const out = splice(
            text,
            idx,
            kc.kind === "create" ? -1 : ids.indexOf(kc.kind === "update" ? kc.record.id : kc.id),
            kc,
          );
          assert.ok(out, "splice refused a usual layout");
          text = out.bytes;
          idx = expected.length > 0 ? out.index : undefined;
          if (expected.length > 0)
            assert.deepEqual(
              indexEntries(
                text,
                expected.map((r) => r.id),
              ),
              idx,
            );
        }
        assert.deepEqual(
          records(text).map((r) => [r.id, r.name, r.ipAllowList]),
          expected.map((r) => [r.id, r.name, r.ipAllowList]),
        );
      }),
      { numRuns: 300 },
    );
  });
});

/** The keys file as blocks of entries: the same bytes as splicing the whole file, copying one block per change. */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fc from "fast-check";
import { secretHash } from "../../src/policy/credential.js";
import { EntryBlocks } from "../../src/store/blocks.js";
import { indexEntries, spliceChange, type EntryIndex } from "../../src/store/splice.js";
import type { KeyChange } from "../../src/store/store.js";
import { rec, records } from "../helpers/records.js";

/** A keys file of `n` keys in the usual layout, some with comments and blank lines, then `tail`. */
function file(n: number, tail: string, finalNewline: boolean): string {
  let out = "# keys\nkeys:\n";
  for (let i = 0; i < n; i++) {
    if (i % 3 === 1) out += `  # key ${i}\n`;
    out += `  - id: k${i}\n    name: Clé ${i} ✓\n    secret_sha256: "${secretHash(`s${i}`)}"\n`;
    if (i % 4 === 2) out += "\n";
  }
  out += tail;
  return finalNewline || tail !== "" ? out : out.replace(/\n$/, "");
}

/** The whole-file splice (the reference): one buffer, one index, the ids in order. */
interface Whole {
  bytes: Buffer;
  index: EntryIndex;
  ids: string[];
}

function spliceWhole(w: Whole, change: KeyChange): Whole | undefined {
  const id = change.kind === "delete" ? change.id : change.record.id;
  const out = spliceChange(w.bytes, w.index, change.kind === "create" ? -1 : w.ids.indexOf(id), change);
  if (out === undefined) return undefined;
  const ids =
    change.kind === "create" ? [...w.ids, id] : change.kind === "delete" ? w.ids.filter((x) => x !== id) : w.ids;
  return { bytes: Buffer.concat(out.parts), index: out.index, ids };
}

describe("EntryBlocks", () => {
  test("property: any change sequence gives the bytes the whole-file splice gives, at any block size", async () => {
    const change = fc.oneof(
      fc.record({ kind: fc.constant("create" as const), list: fc.boolean() }),
      fc.record({
        kind: fc.constant("update" as const),
        pick: fc.nat(),
        name: fc.string({ minLength: 1, maxLength: 6 }),
      }),
      fc.record({ kind: fc.constant("delete" as const), pick: fc.nat() }),
    );
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 12 }),
        fc.integer({ min: 1, max: 5 }),
        fc.constantFrom("", "...\n", "# the end\n"),
        fc.boolean(),
        fc.array(change, { maxLength: 25 }),
        async (n, size, tail, finalNewline, changes) => {
          const bytes = Buffer.from(file(n, tail, finalNewline));
          const ids = Array.from({ length: n }, (_, i) => `k${i}`);
          const index = indexEntries(bytes, ids);
          assert.ok(index, "the usual layout is indexed");
          let whole: Whole | undefined = { bytes, index, ids };
          let blocks = await EntryBlocks.build(bytes, index, ids, size);
          assert.deepEqual(blocks.joined(), bytes, "the blocks are the file");
          let expected = records(bytes);
          let created = 0;
          for (const c of changes) {
            let kc: KeyChange;
            if (c.kind === "create") {
              kc = { kind: "create", record: rec(`new${created++}`, { ipAllowList: c.list ? ["192.0.2.0/24"] : [] }) };
              expected = [...expected, kc.record];
            } else if (expected.length === 0) continue;
            else if (c.kind === "update") {
              const target = expected[c.pick % expected.length]!;
              const r = { ...target, name: `${c.name.trim() || "x"}!` };
              kc = { kind: "update", record: r };
              expected = expected.map((x) => (x.id === r.id ? r : x));
            } else {
              const target = expected[c.pick % expected.length]!;
              kc = { kind: "delete", id: target.id };
              expected = expected.filter((x) => x.id !== target.id);
            }
            const next = blocks.apply(kc);
            whole = whole && spliceWhole(whole, kc);
            assert.ok(whole && next, `both splice ${kc.kind}`);
            assert.deepEqual(Buffer.concat(next.parts), whole.bytes);
            assert.deepEqual(next.next.joined(), whole.bytes);
            blocks = next.next;
          }
          assert.deepEqual(
            records(blocks.joined()).map((r) => [r.id, r.name]),
            expected.map((r) => [r.id, r.name]),
          );
        },
      ),
      { numRuns: 300 },
    );
  });

  test("a change copies one block: every other part is the same buffer; creates start a new block when the last is full", async () => {
    const bytes = Buffer.from(file(10, "", true));
    const ids = Array.from({ length: 10 }, (_, i) => `k${i}`);
    const blocks = await EntryBlocks.build(bytes, indexEntries(bytes, ids)!, ids, 4);
    assert.equal(blocks.blockCount, 3);
    const before = blocks.parts();
    const up = blocks.apply({ kind: "update", record: { ...records(bytes)[5]!, name: "five" } })!;
    const changed = up.parts.filter((p, i) => p !== before[i]);
    assert.equal(changed.length, 1, "one part is new");
    assert.ok(changed[0]!.length < bytes.length / 2);
    let b = up.next;
    for (let i = 0; i < 3; i++) b = b.apply({ kind: "create", record: rec(`c${i}`) })!.next;
    assert.equal(b.blockCount, 4, "the last block (2 entries) took 2 creates, the third began a block");
  });

  test("a change that was never written leaves the blocks it came from as they were", async () => {
    const bytes = Buffer.from(file(6, "", true));
    const ids = Array.from({ length: 6 }, (_, i) => `k${i}`);
    const blocks = await EntryBlocks.build(bytes, indexEntries(bytes, ids)!, ids, 2);
    const recs = records(bytes);
    // A delete and a create applied but not kept (their write failed).
    assert.ok(blocks.apply({ kind: "delete", id: "k3" }));
    assert.ok(blocks.apply({ kind: "create", record: rec("ghost") }));
    assert.deepEqual(blocks.joined(), bytes);
    const up = blocks.apply({ kind: "update", record: { ...recs[3]!, name: "three" } });
    assert.ok(up, "the key deleted by the unkept change is still there");
    assert.equal(records(up.next.joined()).find((r) => r.id === "k3")?.name, "three");
    assert.equal(blocks.apply({ kind: "delete", id: "ghost" }), undefined, "the unkept create is not");
  });
});

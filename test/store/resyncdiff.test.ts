/**
 * ResyncDiff (store/redis/diff.ts) against the naive reference: the
 * snapshot a replica holds, with the changes the diff finds applied, reads
 * exactly as a snapshot built afresh from what the full read returned
 * (repeated ids included, the later text winning); and it gives up, rather
 * than returning part of the changes, past its limit.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import type { KeyRecord } from "../../src/store/keysfile.js";
import { ResyncDiff } from "../../src/store/redis/diff.js";
import { encodeRecord } from "../../src/store/redis/record.js";
import { MatcherCache, Snapshot } from "../../src/store/snapshot.js";
import { rec as record } from "../helpers/records.js";
import { secretDigest } from "../../src/store/digest.js";

/** Key `i` in variant `v` (variants differ in list, name or secret, so a diff has something to find). */
function rec(i: number, v: number): KeyRecord {
  return record(`key_${i}`, {
    name: v % 3 === 2 ? `renamed ${i}` : `key_${i}`,
    secretDigest: secretDigest(`secret-${i}-${v % 2}`),
    ipAllowList: v % 3 === 1 ? ["192.0.2.1"] : [`10.0.0.${i}`],
  });
}

/** What a snapshot reads as: every record's stored text by id, and which id each secret finds. */
function contents(s: Snapshot): { texts: Map<string, string>; owners: Map<string, string> } {
  const texts = new Map<string, string>();
  const owners = new Map<string, string>();
  for (const r of s.iterate()) {
    texts.set(r.id, encodeRecord(r));
    owners.set(r.secretDigest, s.recordByHash(r.secretDigest)?.id ?? "");
  }
  return { texts, owners };
}

const keysArb = fc.uniqueArray(fc.record({ i: fc.nat({ max: 40 }), v: fc.nat({ max: 5 }) }), {
  selector: (k) => k.i,
  maxLength: 30,
});

test("property: the snapshot held, with the diff's changes, reads as the snapshot of what was read", async () => {
  await fc.assert(
    fc.asyncProperty(keysArb, keysArb, fc.array(fc.nat({ max: 29 }), { maxLength: 5 }), async (held, read, repeats) => {
      const cache = new MatcherCache();
      const previous = new Snapshot(
        held.map((k) => rec(k.i, k.v)),
        cache,
      );
      // A scan may return an id twice; the store holds one record per id, so the later text is the one that counts.
      const scanned = [...read, ...repeats.flatMap((r) => (read[r] === undefined ? [] : [read[r]]))];
      const diff = await ResyncDiff.over(previous, 1_000);
      for (const k of scanned) assert.equal(diff.see(`key_${k.i}`, encodeRecord(rec(k.i, k.v))), true);
      const changes = await diff.finish();
      assert.ok(changes !== undefined);
      const got = contents(previous.withChanges(changes));
      const want = contents(
        new Snapshot(
          read.map((k) => rec(k.i, k.v)),
          new MatcherCache(),
        ),
      );
      assert.deepEqual(got.texts, want.texts);
      assert.deepEqual(got.owners, want.owners);
      // Only what differs is a change: each read of a record the snapshot does not hold as read, and each id gone.
      const heldText = new Map(held.map((h) => [h.i, encodeRecord(rec(h.i, h.v))]));
      const differing = scanned.filter((k) => heldText.get(k.i) !== encodeRecord(rec(k.i, k.v))).length;
      const gone = held.filter((h) => !read.some((k) => k.i === h.i)).length;
      assert.equal(changes.length, differing + gone);
    }),
  );
});

test("table: past its limit the diff gives up (see() turns false, or finish() yields nothing); a repeated id counts once", async () => {
  const previous = new Snapshot([rec(1, 0), rec(2, 0), rec(3, 0), rec(4, 0)], new MatcherCache());
  // Two updates, within a limit of 2; two deletes found at the end make four.
  const diff = await ResyncDiff.over(previous, 2);
  assert.equal(diff.see("key_1", encodeRecord(rec(1, 1))), true);
  assert.equal(diff.see("key_2", encodeRecord(rec(2, 1))), true);
  assert.equal(await diff.finish(), undefined);
  const updates = await ResyncDiff.over(previous, 2);
  assert.equal(updates.see("key_1", encodeRecord(rec(1, 1))), true);
  assert.equal(updates.see("key_2", encodeRecord(rec(2, 1))), true);
  assert.equal(updates.see("key_3", encodeRecord(rec(3, 1))), false);
  // A key read twice counts once: key_2, never read, is still found gone.
  const twice = await ResyncDiff.over(new Snapshot([rec(1, 0), rec(2, 0)], new MatcherCache()), 10);
  assert.equal(twice.see("key_1", encodeRecord(rec(1, 0))), true);
  assert.equal(twice.see("key_1", encodeRecord(rec(1, 0))), true);
  assert.deepEqual(await twice.finish(), [{ kind: "delete", id: "key_2" }]);
  // Nothing differs: no changes at all.
  const none = await ResyncDiff.over(previous, 0);
  for (const i of [1, 2, 3, 4]) assert.equal(none.see(`key_${i}`, encodeRecord(rec(i, 0))), true);
  assert.deepEqual(await none.finish(), []);
});

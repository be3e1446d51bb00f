/**
 * ShardedMap against a plain Map (fast-check over set/delete sequences), and
 * the spread of real-looking keys over its parts: a part that held most keys
 * would rehash most of the store in one insertion again.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import { secretHash } from "../../src/policy/credential.js";
import { ShardedMap, SHARDS, shardOfDigest, shardOfText } from "../../src/store/shards.js";

const byCodeUnit = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

type Op =
  | { readonly op: "set"; readonly key: string; readonly value: number }
  | { readonly op: "delete"; readonly key: string };

const keyArb = fc.oneof(
  fc.constantFrom("a", "b", "key_1", "key_10", "", "é", "\u{1F600}"),
  fc.string({ maxLength: 6 }),
);
const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ op: fc.constant("set" as const), key: keyArb, value: fc.integer() }),
  fc.record({ op: fc.constant("delete" as const), key: keyArb }),
);

test("property: ShardedMap reads as a Map after any sequence of sets and deletes", () => {
  fc.assert(
    fc.property(
      fc.array(opArb, { maxLength: 60 }),
      fc.array(keyArb, { maxLength: 10 }),
      fc.boolean(),
      (ops, probes, digest) => {
        const model = new Map<string, number>();
        const sharded = new ShardedMap<number>(digest ? shardOfDigest : shardOfText);
        for (const o of ops) {
          if (o.op === "set") {
            model.set(o.key, o.value);
            assert.equal(sharded.set(o.key, o.value), sharded);
          } else assert.equal(sharded.delete(o.key), model.delete(o.key));
        }
        assert.equal(sharded.size, model.size);
        for (const k of [...probes, ...model.keys()]) {
          assert.equal(sharded.get(k), model.get(k));
          assert.equal(sharded.has(k), model.has(k));
        }
        const sorted = (entries: Iterable<[string, number]>): [string, number][] =>
          [...entries].sort((a, b) => byCodeUnit(a[0], b[0]));
        assert.deepEqual(sorted(sharded), sorted(model));
        assert.deepEqual(sorted(sharded.entries()), sorted(model));
        assert.deepEqual([...sharded.keys()].sort(byCodeUnit), [...model.keys()].sort(byCodeUnit));
        assert.deepEqual(
          [...sharded.values()].sort((a, b) => a - b),
          [...model.values()].sort((a, b) => a - b),
        );
        const seen: [string, number][] = [];
        sharded.forEach((v, k, m) => {
          assert.equal(m, sharded);
          seen.push([k, v]);
        });
        assert.deepEqual(sorted(seen), sorted(model));
      },
    ),
  );
});

test("ids (by all their text) and secret hashes (by their first digits) spread evenly: no part holds twice its share", () => {
  const n = 100_000;
  const cases: [string, (i: number) => string, (key: string) => number][] = [
    ["key_N", (i) => `key_${i}`, shardOfText],
    ["N", (i) => `${i}`, shardOfText],
    ["customer-NNNNNN-production", (i) => `customer-${String(i).padStart(6, "0")}-production`, shardOfText],
    ["secret hash", (i) => secretHash(`secret-${i}`), shardOfDigest],
  ];
  for (const [what, make, shard] of cases) {
    const counts = new Array<number>(SHARDS).fill(0);
    for (let i = 0; i < n; i++) {
      const at = shard(make(i));
      counts[at] = (counts[at] ?? 0) + 1;
    }
    assert.ok(Math.max(...counts) < (2 * n) / SHARDS, `${what}: largest part ${Math.max(...counts)}`);
    assert.ok(Math.min(...counts) > n / SHARDS / 2, `${what}: smallest part ${Math.min(...counts)}`);
  }
});

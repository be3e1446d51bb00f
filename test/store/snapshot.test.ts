/**
 * The overlay snapshot against a naive Map-copy reference (records with
 * expiring entries, SPEC §9, matched by an injected clock), and its sorted
 * ids against a sort.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fc from "fast-check";
import { parseIp, type Ip } from "../../src/ip/address.js";
import type { KeyChange } from "../../src/store/change.js";
import type { KeyRecord } from "../../src/store/keysfile.js";
import { Compactor, MatcherCache, Snapshot } from "../../src/store/snapshot.js";
import { editSorted, sortIds, SortedIds } from "../../src/store/sorted.js";
import { secretDigest } from "../../src/store/digest.js";

const IDS = ["a", "b", "B", "c", "key_1", "key_10", "key_2", "z-9", "_x"];
const SECRETS = ["s0", "s1", "s2", "s3", "s4", "s5", "s6"];
const LISTS: ReadonlyArray<readonly string[]> = [[], ["10.0.0.0/8"], ["10.0.0.0/8"], ["192.0.2.1", "2001:db8::/32"]];

/** When the expiring entry of {@link rec}'s records expires. */
const EXPIRY = Date.UTC(2030, 0, 1);
/** Addresses whose match the reference checks. */
const PROBES = ["192.0.2.1", "10.1.2.3", "2001:db8::1", "198.51.100.7"];

function rec(id: string, secret: string, list: readonly string[], name = id, at?: string, expiring = false): KeyRecord {
  const r: KeyRecord = {
    id,
    name,
    secretDigest: secretDigest(secret),
    scopes: ["messages:send"],
    ipAllowList: [...list],
    mode: undefined,
    createdAt: at,
    updatedAt: at,
  };
  const first = list[0];
  if (!expiring || first === undefined) return r;
  return {
    ...r,
    entryDetails: { [first]: { note: "temp", expiresAt: new Date(EXPIRY).toISOString().replace(/\.\d{3}Z$/, "Z") } },
  };
}

/** The naive rule of SPEC §9: an entry counts while `now` is before its `expires_at`. */
function naiveContains(r: KeyRecord, probe: string, now: number): boolean {
  const ip = parseIp(probe) as Ip;
  const active = r.ipAllowList.filter((e) => {
    const exp = r.entryDetails?.[e]?.expiresAt;
    return exp === undefined || now < Date.parse(exp);
  });
  return new MatcherCache(1).get(active).contains(ip);
}

const recordArb = fc
  .record({
    id: fc.constantFrom(...IDS),
    secret: fc.constantFrom(...SECRETS),
    list: fc.constantFrom(...LISTS),
    // undefined: named by its id (the keys file's default), which the snapshot stores as the id's string.
    name: fc.constantFrom("x", "Alpha", "beta", undefined),
    at: fc.constantFrom(undefined, "2026-11-30T00:00:00Z"),
    expiring: fc.boolean(),
  })
  .map((r) => rec(r.id, r.secret, r.list, r.name, r.at, r.expiring));

const changeArb: fc.Arbitrary<KeyChange> = fc.oneof(
  recordArb.map((record) => ({ kind: "create" as const, record })),
  recordArb.map((record) => ({ kind: "update" as const, record })),
  fc.constantFrom(...IDS).map((id) => ({ kind: "delete" as const, id })),
);

/** What a test does next to the snapshot under test. */
type Step =
  | { readonly op: "changes"; readonly changes: KeyChange[] }
  | { readonly op: "compact" }
  | { readonly op: "compact-while-changing"; readonly changes: KeyChange[] }
  | { readonly op: "sorted" }
  | { readonly op: "tick"; readonly now: number };

const stepArb: fc.Arbitrary<Step> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc
      .array(changeArb, { minLength: 1, maxLength: 4 })
      .map((changes) => ({ op: "changes" as const, changes })),
  },
  { weight: 1, arbitrary: fc.constant({ op: "compact" as const }) },
  {
    weight: 1,
    arbitrary: fc
      .array(changeArb, { minLength: 0, maxLength: 4 })
      .map((changes) => ({ op: "compact-while-changing" as const, changes })),
  },
  { weight: 2, arbitrary: fc.constant({ op: "sorted" as const }) },
  {
    weight: 1,
    arbitrary: fc.constantFrom(EXPIRY - 1, EXPIRY, EXPIRY + 1).map((now) => ({ op: "tick" as const, now })),
  },
);

/** The naive reference: a Map copied for every change. */
function applyNaive(map: ReadonlyMap<string, KeyRecord>, change: KeyChange): Map<string, KeyRecord> {
  const next = new Map(map);
  if (change.kind === "delete") {
    next.delete(change.id);
    return next;
  }
  next.delete(change.record.id);
  for (const [id, r] of next) if (r.secretDigest === change.record.secretDigest) next.delete(id);
  next.set(change.record.id, change.record);
  return next;
}

const byCodeUnit = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);
/** The number of leading elements of `items` for which `before` holds (a linear scan, the reference for binary searches). */
const plainBound = (items: readonly string[], before: (x: string) => boolean): number => {
  let i = 0;
  while (i < items.length && before(items[i] as string)) i++;
  return i;
};

function agrees(snap: Snapshot, model: ReadonlyMap<string, KeyRecord>, now: number): void {
  assert.equal(snap.size, model.size);
  assert.equal(
    snap.entries,
    [...model.values()].reduce((n, r) => n + r.ipAllowList.length, 0),
  );
  for (const id of IDS) {
    assert.deepEqual(snap.record(id), model.get(id), `record ${id}`);
    assert.deepEqual(Object.keys(snap.record(id) ?? {}), Object.keys(model.get(id) ?? {}), `fields of ${id}`);
  }
  for (const s of SECRETS) {
    const holder = [...model.values()].find((r) => r.secretDigest === secretDigest(s));
    assert.deepEqual(snap.recordByHash(secretDigest(s)), holder, `by hash ${s}`);
    assert.equal(snap.lookupToken(s)?.id, holder?.id, `token ${s}`);
    assert.equal(
      snap.lookup(secretDigest(s))?.restricted,
      holder === undefined ? undefined : holder.ipAllowList.length > 0,
    );
    const policy = snap.lookup(secretDigest(s));
    if (holder !== undefined && policy !== undefined) {
      for (const p of PROBES) {
        assert.equal(policy.contains(parseIp(p) as Ip), naiveContains(holder, p, now), `${s} contains ${p}`);
      }
    }
  }
  assert.deepEqual(
    snap
      .records()
      .map((r) => r.id)
      .sort(byCodeUnit),
    [...model.keys()].sort(byCodeUnit),
  );
  const visited: string[] = [];
  snap.forEachRecord((r) => visited.push(r.id));
  assert.deepEqual(visited.sort(byCodeUnit), [...model.keys()].sort(byCodeUnit));
}

/** The snapshot's sorted ids against the model's (building them, or realizing a chain of derivations). */
async function sortedAgree(snap: Snapshot, model: ReadonlyMap<string, KeyRecord>): Promise<void> {
  assert.deepEqual([...(await snap.sortedIds())], [...model.keys()].sort(byCodeUnit));
}

describe("Snapshot (overlay over a shared base)", () => {
  test("property: every change sequence, with compactions and rebases, reads as a Map copied per change", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(recordArb, { maxLength: 6 }),
        fc.array(stepArb, { maxLength: 30 }),
        async (initial, steps) => {
          // The clock only moves forward (an expiry is one-way for a record's policy).
          let now = EXPIRY - 1000;
          const cache = new MatcherCache(undefined, () => now);
          let model = new Map<string, KeyRecord>();
          for (const r of initial) model = applyNaive(model, { kind: "update", record: r });
          let snap = new Snapshot([...model.values()], cache);
          agrees(snap, model, now);
          await sortedAgree(snap, model);
          // Sorted ids are read only at "sorted" steps and at the end: between them, snapshots derive theirs
          // through chains of changes, compactions and rebases, realized at the next read.
          for (const step of steps) {
            if (step.op === "changes") {
              snap =
                step.changes.length === 1
                  ? snap.withChange(step.changes[0] as KeyChange)
                  : snap.withChanges(step.changes);
              for (const c of step.changes) model = applyNaive(model, c);
            } else if (step.op === "compact") {
              snap = await snap.compacted(2);
              assert.equal(snap.overlaySize, 0);
            } else if (step.op === "compact-while-changing") {
              // Changes land while the compaction of `source` runs; the rebase keeps them.
              const source = snap;
              const compacting = source.compacted(1);
              for (const c of step.changes) {
                snap = snap.withChange(c);
                model = applyNaive(model, c);
              }
              const rebased = snap.rebasedOn(await compacting, source);
              assert.ok(rebased !== undefined);
              snap = rebased;
            } else if (step.op === "tick") {
              now = Math.max(now, step.now);
            } else {
              await sortedAgree(snap, model);
            }
            agrees(snap, model, now);
          }
          await sortedAgree(snap, model);
        },
      ),
      { numRuns: 150 },
    );
  });

  test("a change copies only the overlay: the base maps stay shared", () => {
    const cache = new MatcherCache();
    const records = Array.from({ length: 1000 }, (_, i) => rec(`k${i}`, `s${i}`, ["10.0.0.0/8"]));
    const snap = new Snapshot(records, cache);
    const next = snap.withChange({ kind: "update", record: rec("k5", "s5", ["10.0.0.1"]) });
    assert.equal(next.overlaySize, 2); // k5 by id and by its secret hash
    assert.equal(next.record("k6"), snap.record("k6"));
    assert.deepEqual(next.record("k5")?.ipAllowList, ["10.0.0.1"]);
  });

  test("equal lists and scopes share one array (one compiled matcher), and a rebase refuses another base", async () => {
    const cache = new MatcherCache();
    const a = new Snapshot([rec("a", "sa", ["10.0.0.0/8"]), rec("b", "sb", ["10.0.0.0/8"])], cache);
    assert.equal(a.record("a")?.ipAllowList, a.record("b")?.ipAllowList);
    assert.equal(a.record("a")?.scopes, a.record("b")?.scopes);
    const c = a.withChange({ kind: "create", record: rec("c", "sc", ["10.0.0.0/8"]) });
    assert.equal(c.record("c")?.ipAllowList, a.record("a")?.ipAllowList);
    const other = new Snapshot([rec("a", "sa", [])], cache);
    assert.equal(c.rebasedOn(await a.compacted(), other), undefined);
  });

  test("sorted ids survive more changes than a derivation chain keeps (sorted afresh)", async () => {
    const cache = new MatcherCache();
    let model = new Map<string, KeyRecord>();
    let snap = new Snapshot([], cache);
    await snap.sortedIds();
    for (let i = 0; i < 300; i++) {
      const c: KeyChange =
        i % 7 === 3
          ? { kind: "delete", id: `k${(i * 13) % 50}` }
          : { kind: "update", record: rec(`k${(i * 31) % 50}`, `s${i}`, []) };
      snap = snap.withChange(c);
      model = applyNaive(model, c);
    }
    assert.deepEqual([...(await snap.sortedIds())], [...model.keys()].sort(byCodeUnit));
  });

  test("the Compactor folds a large overlay in the background and keeps changes made meanwhile", async () => {
    const cache = new MatcherCache();
    let current = new Snapshot(
      Array.from({ length: 100 }, (_, i) => rec(`k${i}`, `s${i}`, [])),
      cache,
    );
    let model = new Map(current.records().map((r) => [r.id, r] as const));
    const compactor = new Compactor(
      () => current,
      (s) => {
        current = s;
      },
      10,
    );
    for (let i = 0; i < 40; i++) {
      const c: KeyChange = { kind: "update", record: rec(`k${i}`, `t${i}`, ["192.0.2.1"]) };
      current = current.withChange(c);
      model = applyNaive(model, c);
      compactor.changed();
      if (i % 5 === 0) await new Promise((r) => setImmediate(r));
    }
    await compactor.idle();
    assert.ok(current.overlaySize < 40 * 3, `overlay ${current.overlaySize}`);
    for (const [id, r] of model) assert.deepEqual(current.record(id), r);
    assert.equal(current.size, model.size);
  });
});

describe("sorted ids", () => {
  test("property: sortIds sorts groups as Array.prototype.sort by code units, across runs and chunks", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.uniqueArray(fc.string({ maxLength: 4 }), { maxLength: 5_000 }), { maxLength: 4 }),
        fc.integer({ min: 1, max: 5_000 }),
        async (groups, chunk) => {
          const unique = [...new Set(groups.flat())];
          const parts = [unique.slice(0, unique.length / 3), unique.slice(unique.length / 3)];
          const sorted = await sortIds(parts, chunk);
          assert.deepEqual([...sorted], [...unique].sort(byCodeUnit));
          assert.equal(sorted.length, unique.length);
        },
      ),
      { numRuns: 30 },
    );
  });

  test("property: SortedIds answers at, slice, lowerBound, upperBound and indexOf as the plain sorted array", () => {
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.string({ maxLength: 3 }), { maxLength: 300 }),
        fc.integer({ min: 1, max: 40 }),
        fc.array(fc.string({ maxLength: 3 }), { maxLength: 20 }),
        fc.oneof(fc.integer({ min: -320, max: 320 }), fc.double({ min: -320, max: 320 }), fc.constant(Number.NaN)),
        fc.oneof(fc.integer({ min: -320, max: 320 }), fc.double({ min: -320, max: 320 }), fc.constant(Number.NaN)),
        (items, chunk, probes, from, to) => {
          const plain = [...items].sort(byCodeUnit);
          const ids = SortedIds.of(plain, chunk);
          for (let i = -1; i <= plain.length; i++) assert.equal(ids.at(i), plain[i]);
          // Bounds as Array.prototype.slice reads them: fractions truncated, negatives from the end, NaN as 0.
          assert.deepEqual(ids.slice(from, to), plain.slice(from, to));
          assert.deepEqual(ids.slice(from), plain.slice(from));
          for (const p of [...probes, ...plain]) {
            assert.equal(
              ids.lowerBound(p),
              plainBound(plain, (x) => x < p),
            );
            assert.equal(
              ids.upperBound(p),
              plainBound(plain, (x) => x <= p),
            );
            assert.equal(ids.indexOf(p), plain.indexOf(p));
          }
        },
      ),
    );
  });

  test("property: SortedIds.edited equals sorting the edited set, and shares the chunks it did not touch", () => {
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.string({ maxLength: 3 }), { maxLength: 300 }),
        fc.integer({ min: 1, max: 16 }),
        fc.array(fc.array(fc.tuple(fc.string({ maxLength: 3 }), fc.boolean()), { maxLength: 60 }), { maxLength: 4 }),
        (items, chunk, rounds) => {
          const set = new Set(items);
          let ids = SortedIds.of([...items].sort(byCodeUnit), chunk);
          for (const edits of rounds) {
            const present = new Map(edits);
            for (const [id, keep] of present) {
              if (keep) set.add(id);
              else set.delete(id);
            }
            ids = ids.edited(present);
            const plain = [...set].sort(byCodeUnit);
            assert.deepEqual([...ids], plain);
            // Chunks stay at most twice their size: an edit never copies more than that per touched chunk.
            for (let i = 0; i < plain.length; i++) assert.equal(ids.at(i), plain[i]);
          }
        },
      ),
    );
  });

  test("an edit of one id in a large list copies one chunk, not the list", () => {
    const plain = Array.from({ length: 100_000 }, (_, i) => `key_${String(i).padStart(6, "0")}`);
    const ids = SortedIds.of(plain);
    const edited = ids.edited(new Map([["key_050000x", true]]));
    assert.equal(edited.length, 100_001);
    assert.equal(edited.at(50_001), "key_050000x");
    // Untouched chunks are the same arrays: the first id's chunk is shared.
    const chunksOf = (s: SortedIds): readonly (readonly string[])[] =>
      (s as unknown as { chunks: readonly (readonly string[])[] }).chunks;
    const before = chunksOf(ids);
    const after = chunksOf(edited);
    assert.equal(after.length, before.length);
    assert.equal(after.filter((c, i) => c !== before[i]).length, 1);
  });

  test("property: editSorted (few edits and many) equals sorting the edited set", () => {
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.string({ maxLength: 3 }), { maxLength: 200 }),
        fc.array(fc.tuple(fc.string({ maxLength: 3 }), fc.boolean()), { maxLength: 80 }),
        (items, edits) => {
          const sorted = [...items].sort(byCodeUnit);
          const present = new Map(edits);
          const set = new Set(items);
          for (const [id, keep] of present) {
            if (keep) set.add(id);
            else set.delete(id);
          }
          assert.deepEqual(editSorted(sorted, present), [...set].sort(byCodeUnit));
        },
      ),
    );
  });
});

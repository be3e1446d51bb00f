/** The snapshot's caches: token lookup through its per-snapshot cache, and the matcher cache. */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fc from "fast-check";
import type { KeyRecord } from "../../src/store/keysfile.js";
import { IpError, networkOf, parseCidr, parseIp } from "../../src/ip/address.js";
import { MatcherCache, Snapshot, TOKEN_CACHE_MAX } from "../../src/store/snapshot.js";
import { secretDigest } from "../../src/store/digest.js";

describe("Snapshot.lookupToken", () => {
  const rec = (id: string, secret: string): KeyRecord => ({
    id,
    name: id,
    secretDigest: secretDigest(secret),
    scopes: [],
    ipAllowList: [],
    mode: undefined,
    createdAt: undefined,
    updatedAt: undefined,
  });

  test("agrees with lookup of the SHA-256 for known, unknown, repeated and long tokens", () => {
    const snap = new Snapshot([rec("a", "sa"), rec("b", "x".repeat(300))], new MatcherCache());
    for (let round = 0; round < 3; round++) {
      for (const token of ["sa", "sb", "", "x".repeat(300), "x".repeat(299)]) {
        assert.equal(snap.lookupToken(token), snap.lookup(secretDigest(token)), `${token.slice(0, 8)} round ${round}`);
      }
    }
    assert.equal(snap.lookupToken("sa")?.id, "a");
    assert.equal(snap.lookupToken("x".repeat(300))?.id, "b");
  });

  test("a new snapshot answers for the change at once (the cache is per snapshot)", () => {
    const cache = new MatcherCache();
    const before = new Snapshot([rec("a", "sa")], cache);
    assert.equal(before.lookupToken("sa")?.id, "a");
    assert.equal(before.lookupToken("sn"), undefined);
    const rotated = before.withChange({ kind: "update", record: rec("a", "sn") });
    assert.equal(rotated.lookupToken("sa"), undefined);
    assert.equal(rotated.lookupToken("sn")?.id, "a");
    const deleted = rotated.withChange({ kind: "delete", id: "a" });
    assert.equal(deleted.lookupToken("sn"), undefined);
  });

  test("stays correct past its bound (a flood of unknown tokens)", () => {
    const snap = new Snapshot([rec("a", "sa")], new MatcherCache());
    assert.equal(snap.lookupToken("sa")?.id, "a");
    for (let i = 0; i < TOKEN_CACHE_MAX * 2 + 7; i++) assert.equal(snap.lookupToken(`unknown-${i}`), undefined);
    assert.equal(snap.lookupToken("sa")?.id, "a");
  });
});

describe("MatcherCache", () => {
  test("property: answers, hits, misses and what stays cached match a naive LRU of two", () => {
    const lists: ReadonlyArray<readonly string[]> = [
      ["10.0.0.0/8"],
      ["192.0.2.1", "2001:db8::/32"],
      ["198.51.100.0/24"],
      ["::1"],
    ];
    const probes = ["10.1.2.3", "192.0.2.1", "198.51.100.7", "::1", "2001:db8::5"].map((p) => parseIp(p)!);
    fc.assert(
      fc.property(fc.array(fc.nat(lists.length - 1), { maxLength: 40 }), (picks) => {
        const cache = new MatcherCache(2);
        let recent: number[] = []; // most recent last
        let hits = 0;
        let misses = 0;
        for (const k of picks) {
          const list = lists[k]!;
          const m = cache.get(list);
          if (recent.includes(k)) hits++;
          else misses++;
          recent = [...recent.filter((x) => x !== k), k].slice(-2);
          for (const ip of probes) {
            const want = list.some((e) => {
              const c = parseCidr(e);
              if (c instanceof IpError || c.ip.family !== ip.family) return false;
              return JSON.stringify(networkOf(ip, c.prefix)) === JSON.stringify(c.ip);
            });
            assert.equal(m.contains(ip), want);
          }
          assert.equal(cache.hits, hits, `hits after ${picks.join(",")}`);
          assert.equal(cache.misses, misses, `misses after ${picks.join(",")}`);
          assert.equal(cache.size, recent.length);
        }
      }),
      { numRuns: 300 },
    );
  });
});

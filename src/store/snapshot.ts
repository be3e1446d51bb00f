/**
 * The immutable view of the key store the proxy reads on every request:
 * secret hash → key policy. Allow lists compile lazily into matchers held in a
 * bounded LRU shared by all snapshots, so a store of millions of keys never
 * holds millions of compiled matchers, and a reload keeps unchanged lists warm.
 */
import { LRUCache } from "lru-cache";
import { IpError, parseCidr, type Cidr, type Ip } from "../ip/address.js";
import { compileMatcher, type Matcher } from "../ip/matcher.js";
import type { KeyPolicy } from "../policy/decide.js";
import type { KeyRecord } from "./keysfile.js";

/** Default number of compiled allow lists kept in memory. */
export const DEFAULT_MATCHER_CACHE = 50_000;

/** Compiled matchers keyed by the (immutable, shared) allow-list array they were built from. */
export class MatcherCache {
  hits = 0;
  misses = 0;
  private readonly lru: LRUCache<readonly string[], Matcher>;

  constructor(max = DEFAULT_MATCHER_CACHE) {
    this.lru = new LRUCache({ max });
  }

  /** The matcher of `list`, compiled on first use. */
  get(list: readonly string[]): Matcher {
    const hit = this.lru.get(list);
    if (hit !== undefined) {
      this.hits++;
      return hit;
    }
    this.misses++;
    const cidrs: Cidr[] = [];
    for (const entry of list) {
      const c = parseCidr(entry);
      // Entries were validated when the record was built; a failure here is a bug.
      if (c instanceof IpError) throw new Error(`internal: stored entry rejected: ${c.message}`);
      cidrs.push(c);
    }
    const m = compileMatcher(cidrs);
    this.lru.set(list, m);
    return m;
  }

  /** Number of matchers held. */
  get size(): number {
    return this.lru.size;
  }
}

class StoredKey implements KeyPolicy {
  readonly id: string;
  readonly mode: KeyRecord["mode"];
  readonly restricted: boolean;

  constructor(
    readonly record: KeyRecord,
    private readonly cache: MatcherCache,
  ) {
    this.id = record.id;
    this.mode = record.mode;
    this.restricted = record.ipAllowList.length > 0;
  }

  contains(ip: Ip): boolean {
    return this.cache.get(this.record.ipAllowList).contains(ip);
  }
}

function sameList(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** One immutable generation of the key store. */
export class Snapshot {
  private readonly byHash = new Map<string, StoredKey>();
  private readonly byId = new Map<string, StoredKey>();
  /** Total allow-list entries over all keys. */
  readonly entries: number;

  /**
   * Builds a snapshot; records whose list equals the one in `previous` reuse
   * that list's array, so its compiled matcher stays cached.
   */
  constructor(
    records: readonly KeyRecord[],
    readonly cache: MatcherCache,
    previous?: Snapshot,
    /** Monotonic generation number. */
    readonly generation: number = (previous?.generation ?? 0) + 1,
  ) {
    let entries = 0;
    for (let rec of records) {
      const old = previous?.byId.get(rec.id)?.record;
      if (old !== undefined && old.ipAllowList !== rec.ipAllowList && sameList(old.ipAllowList, rec.ipAllowList)) {
        rec = { ...rec, ipAllowList: old.ipAllowList };
      }
      const key = new StoredKey(rec, cache);
      this.byHash.set(rec.secretSha256, key);
      this.byId.set(rec.id, key);
      entries += rec.ipAllowList.length;
    }
    this.entries = entries;
  }

  /** The key whose secret hashes to `secretSha256`, if any. */
  lookup(secretSha256: string): KeyPolicy | undefined {
    return this.byHash.get(secretSha256);
  }

  /** The record of key `id`, if any. */
  record(id: string): KeyRecord | undefined {
    return this.byId.get(id)?.record;
  }

  /** The record whose secret hashes to `secretSha256`, if any. */
  recordByHash(secretSha256: string): KeyRecord | undefined {
    return this.byHash.get(secretSha256)?.record;
  }

  /** All records, in store order. */
  records(): KeyRecord[] {
    return [...this.byId.values()].map((k) => k.record);
  }

  /** Number of keys. */
  get size(): number {
    return this.byId.size;
  }
}

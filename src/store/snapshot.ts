/**
 * The immutable view of the key store the proxy reads on every request:
 * secret hash → key policy. Allow lists compile lazily into matchers held in a
 * bounded LRU shared by all snapshots, so a store of millions of keys never
 * holds millions of compiled matchers, and a reload keeps unchanged lists warm.
 */
import { LRUCache } from "lru-cache";
import { IpError, parseCidr, type Cidr, type Ip } from "../ip/address.js";
import { compileMatcher, type Matcher } from "../ip/matcher.js";
import { secretHash } from "../policy/credential.js";
import type { KeyPolicy } from "../policy/decide.js";
import type { KeyRecord } from "./keysfile.js";
import type { KeyChange } from "./change.js";

/** Most bearer tokens a snapshot remembers (see {@link Snapshot.lookupToken}). */
export const TOKEN_CACHE_MAX = 4096;
/** Longest bearer token remembered: at most ~1 MiB of tokens per process. */
export const TOKEN_CACHE_MAX_LENGTH = 256;

/** Default number of compiled allow lists kept in memory. */
export const DEFAULT_MATCHER_CACHE = 50_000;

/** Compiled matchers keyed by the (immutable, shared) allow-list array they were built from. */
export class MatcherCache {
  hits = 0;
  misses = 0;
  private readonly lru: LRUCache<readonly string[], Matcher>;
  /** The list of the last get and its matcher: already the LRU's most recent entry, so a repeat needs no lookup. */
  private lastList: readonly string[] | undefined;
  private lastMatcher: Matcher | undefined;

  constructor(max = DEFAULT_MATCHER_CACHE) {
    this.lru = new LRUCache({ max });
  }

  /** The matcher of `list`, compiled on first use. */
  get(list: readonly string[]): Matcher {
    if (list === this.lastList && this.lastMatcher !== undefined) {
      this.hits++;
      return this.lastMatcher;
    }
    const hit = this.lru.get(list);
    this.lastList = list;
    this.lastMatcher = hit;
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
    this.lastMatcher = m;
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
  readonly scopes: readonly string[];
  readonly sandbox: boolean;

  constructor(
    readonly record: KeyRecord,
    private readonly cache: MatcherCache,
  ) {
    this.id = record.id;
    this.mode = record.mode;
    this.restricted = record.ipAllowList.length > 0;
    this.scopes = record.scopes;
    this.sandbox = record.sandbox === true;
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

/** `rec` holding `old`'s list array when the entries are the same, so the compiled matcher stays cached. */
function sharingList(rec: KeyRecord, old: KeyRecord | undefined): KeyRecord {
  return old !== undefined && old.ipAllowList !== rec.ipAllowList && sameList(old.ipAllowList, rec.ipAllowList)
    ? { ...rec, ipAllowList: old.ipAllowList }
    : rec;
}

/** The maps of a snapshot. */
interface SnapshotParts {
  readonly byHash: Map<string, StoredKey>;
  readonly byId: Map<string, StoredKey>;
  readonly entries: number;
}

/**
 * Builds a snapshot record by record, so a large store can be built in slices
 * between other work; records whose list equals the one in `previous` reuse
 * that list's array, so its compiled matcher stays cached.
 */
export class SnapshotBuilder {
  private readonly byHash = new Map<string, StoredKey>();
  private readonly byId = new Map<string, StoredKey>();
  private entries = 0;

  constructor(
    private readonly cache: MatcherCache,
    private readonly previous?: Snapshot,
  ) {}

  /** Adds one record (validated, ids and secrets unique); a record with an id already added replaces it. */
  add(record: KeyRecord): void {
    this.remove(record.id);
    const rec = sharingList(record, this.previous?.record(record.id));
    const key = new StoredKey(rec, this.cache);
    this.byHash.set(rec.secretSha256, key);
    this.byId.set(rec.id, key);
    this.entries += rec.ipAllowList.length;
  }

  /** Removes the record of `id`, if added. */
  remove(id: string): void {
    const old = this.byId.get(id);
    if (old === undefined) return;
    this.byId.delete(id);
    this.byHash.delete(old.record.secretSha256);
    this.entries -= old.record.ipAllowList.length;
  }

  /** Number of records added so far. */
  get size(): number {
    return this.byId.size;
  }

  /** The finished snapshot; the builder must not be used afterwards. */
  finish(): Snapshot {
    return new Snapshot([], this.cache, this.previous, this.parts());
  }

  /** The maps built so far (for the Snapshot constructor). */
  parts(): SnapshotParts {
    return { byHash: this.byHash, byId: this.byId, entries: this.entries };
  }
}

/** One immutable generation of the key store. */
export class Snapshot {
  private readonly byHash: Map<string, StoredKey>;
  /** Bearer token → key (null: no such key), see {@link lookupToken}. */
  private readonly tokens = new Map<string, StoredKey | null>();
  private readonly byId: Map<string, StoredKey>;
  /** Total allow-list entries over all keys. */
  readonly entries: number;
  /** Monotonic generation number. */
  readonly generation: number;

  /** Builds a snapshot of `records` at once (see {@link SnapshotBuilder} for large stores). */
  constructor(
    records: readonly KeyRecord[],
    readonly cache: MatcherCache,
    previous?: Snapshot,
    built?: SnapshotParts,
  ) {
    this.generation = (previous?.generation ?? 0) + 1;
    let parts = built;
    if (parts === undefined) {
      const b = new SnapshotBuilder(cache, previous);
      for (const r of records) b.add(r);
      parts = b.parts();
    }
    this.byHash = parts.byHash;
    this.byId = parts.byId;
    this.entries = parts.entries;
  }

  /** A new snapshot with one change applied; every other key keeps its compiled state. */
  withChange(change: KeyChange): Snapshot {
    const byId = new Map(this.byId);
    const byHash = new Map(this.byHash);
    const entries = this.apply(byId, byHash, change);
    return new Snapshot([], this.cache, this, { byHash, byId, entries });
  }

  /** {@link withChange} for large stores: the maps are copied a slice at a time, yielding in between. */
  withChangeSliced(change: KeyChange, slice = 5_000): Promise<Snapshot> {
    return this.withChangesSliced([change], slice);
  }

  /** Every change of `changes` applied in order, on one copy of the maps made a slice at a time. */
  async withChangesSliced(changes: readonly KeyChange[], slice = 5_000): Promise<Snapshot> {
    const first = changes[0];
    if (changes.length === 1 && first !== undefined && this.byId.size <= slice) return this.withChange(first);
    const byId = new Map<string, StoredKey>();
    const byHash = new Map<string, StoredKey>();
    let n = 0;
    for (const [id, key] of this.byId) {
      byId.set(id, key);
      byHash.set(key.record.secretSha256, key);
      if (++n % slice === 0) await new Promise((r) => setImmediate(r));
    }
    let entries = this.entries;
    for (const change of changes) entries = this.apply(byId, byHash, change, entries);
    return new Snapshot([], this.cache, this, { byHash, byId, entries });
  }

  /** Applies `change` to copies of this snapshot's maps; returns the new entry count. */
  private apply(
    byId: Map<string, StoredKey>,
    byHash: Map<string, StoredKey>,
    change: KeyChange,
    entries = this.entries,
  ): number {
    const id = change.kind === "delete" ? change.id : change.record.id;
    const old = byId.get(id);
    if (old !== undefined) {
      byHash.delete(old.record.secretSha256);
      entries -= old.record.ipAllowList.length;
      if (change.kind === "delete") byId.delete(id);
    }
    if (change.kind !== "delete") {
      // A secret moving between ids (possible in an import): the previous holder loses it.
      const holder = byHash.get(change.record.secretSha256);
      if (holder !== undefined && holder.record.id !== id) {
        byId.delete(holder.record.id);
        entries -= holder.record.ipAllowList.length;
      }
    }
    if (change.kind !== "delete") {
      const rec = sharingList(change.record, old?.record);
      const key = new StoredKey(rec, this.cache);
      byId.set(id, key);
      byHash.set(rec.secretSha256, key);
      entries += rec.ipAllowList.length;
    }
    return entries;
  }

  /** The key whose secret hashes to `secretSha256`, if any. */
  lookup(secretSha256: string): KeyPolicy | undefined {
    return this.byHash.get(secretSha256);
  }

  /**
   * The key of bearer token `token`, if any: {@link lookup} of its SHA-256,
   * remembered for this snapshot so a repeated token costs one map lookup
   * instead of a hash (a fifth of what enforcement adds per request). Bounded:
   * tokens longer than {@link TOKEN_CACHE_MAX_LENGTH} are never kept, and the
   * cache empties when it reaches {@link TOKEN_CACHE_MAX} entries. Each
   * snapshot starts empty, so a change of the store is in force at once.
   */
  lookupToken(token: string): KeyPolicy | undefined {
    const hit = this.tokens.get(token);
    if (hit !== undefined) return hit ?? undefined;
    const key = this.byHash.get(secretHash(token));
    if (token.length <= TOKEN_CACHE_MAX_LENGTH) {
      if (this.tokens.size >= TOKEN_CACHE_MAX) this.tokens.clear();
      this.tokens.set(token, key ?? null);
    }
    return key;
  }

  /** The record of key `id`, if any. */
  record(id: string): KeyRecord | undefined {
    return this.byId.get(id)?.record;
  }

  /** The record whose secret hashes to `secretSha256`, if any. */
  recordByHash(secretSha256: string): KeyRecord | undefined {
    return this.byHash.get(secretSha256)?.record;
  }

  /** All records (in no particular order). */
  records(): KeyRecord[] {
    return [...this.byId.values()].map((k) => k.record);
  }

  /** Number of keys. */
  get size(): number {
    return this.byId.size;
  }
}

/**
 * The immutable view of the key store the proxy reads on every request:
 * secret hash → key policy, and the admin's view: id → record, ids in order. Allow lists compile lazily into matchers held in a
 * bounded LRU shared by all snapshots, so a store of millions of keys never
 * holds millions of compiled matchers, and a reload keeps unchanged lists warm.
 */
import { setImmediate as yieldTurn } from "node:timers/promises";
import { LRUCache } from "lru-cache";
import { IpError, parseCidr, type Cidr, type Ip } from "../ip/address.js";
import { compileMatcher, type Matcher } from "../ip/matcher.js";
import { secretDigest, type Digest } from "./digest.js";
import type { KeyPolicy } from "../policy/decide.js";
import { leanRecord, type KeyRecord } from "./keysfile.js";
import { changedId, type KeyChange } from "./change.js";
import { ShardedMap, shardOfDigest } from "./shards.js";
import { sortIds, SortedIds } from "./sorted.js";
import { activeEntries, nextExpiry } from "./entries.js";

/** Most bearer tokens a snapshot remembers (see {@link Snapshot.lookupToken}). */
export const TOKEN_CACHE_MAX = 4096;
/** Longest bearer token remembered: at most ~1 MiB of tokens per process. */
export const TOKEN_CACHE_MAX_LENGTH = 256;

/** Default number of compiled allow lists kept in memory. */
export const DEFAULT_MATCHER_CACHE = 50_000;

/** Most distinct lists {@link MatcherCache.share} remembers. */
const SHARED_LISTS_MAX = 10_000;

/**
 * Compiled matchers keyed by the (immutable, shared) allow-list array they
 * were built from, and what every snapshot of a store shares: one array per
 * distinct list (scopes, allow lists) and one policy object per record.
 * It also holds the clock that entries' expiry is judged by (SPEC §9).
 */
export class MatcherCache {
  hits = 0;
  misses = 0;
  private readonly lru: LRUCache<readonly string[], Matcher>;
  /** The list of the last get and its matcher: already the LRU's most recent entry, so a repeat needs no lookup. */
  private lastList: readonly string[] | undefined;
  private lastMatcher: Matcher | undefined;
  private readonly lists = new Map<string, readonly string[]>();
  private readonly policies = new WeakMap<KeyRecord, KeyPolicy>();

  constructor(
    max = DEFAULT_MATCHER_CACHE,
    /** Milliseconds since the epoch; injected by tests to pass an expiry without waiting. */
    readonly now: () => number = Date.now,
  ) {
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

  /**
   * One array for equal lists (the first {@link SHARED_LISTS_MAX} distinct
   * ones): keys with the same scopes or allow list share them, and so share
   * one compiled matcher.
   */
  share(list: readonly string[]): readonly string[] {
    if (list.length === 0) return EMPTY_LIST;
    const text = list.join("\n");
    const hit = this.lists.get(text);
    if (hit !== undefined) return hit;
    if (this.lists.size < SHARED_LISTS_MAX) this.lists.set(text, list);
    return list;
  }

  /** The policy of `record` (made on first use, then the same object for every snapshot holding the record). */
  policy(record: KeyRecord): KeyPolicy {
    let p = this.policies.get(record);
    if (p === undefined) {
      p = new RecordPolicy(record, this);
      this.policies.set(record, p);
    }
    return p;
  }
}

const EMPTY_LIST: readonly string[] = Object.freeze([]);

/**
 * A key as the request path sees it. A key with expiring entries matches
 * against the entries in force, and knows when the next one expires: the
 * first request at or after that instant swaps in the list without it (no
 * timer, no rebuild of the snapshot). An expired entry keeps the key
 * restricted: a key whose entries have all expired admits no address. Keys
 * without an expiry never read the clock.
 */
class RecordPolicy implements KeyPolicy {
  readonly id: string;
  readonly mode: KeyRecord["mode"];
  readonly restricted: boolean;
  readonly scopes: readonly string[];
  readonly sandbox: boolean;
  /** The entries in force (the record's own array while none has expired). */
  private active: readonly string[];
  /** When the next entry in {@link active} expires (ms), Infinity when none will. */
  private expiresNext: number;

  constructor(
    private readonly record: KeyRecord,
    private readonly cache: MatcherCache,
  ) {
    this.id = record.id;
    this.mode = record.mode;
    this.restricted = record.ipAllowList.length > 0;
    this.scopes = record.scopes;
    this.sandbox = record.sandbox === true;
    this.active = record.ipAllowList;
    this.expiresNext = Infinity;
    const details = record.entryDetails;
    if (details !== undefined && Object.values(details).some((d) => d.expiresAt !== undefined)) {
      this.passExpiries(cache.now());
    }
  }

  contains(ip: Ip): boolean {
    if (this.expiresNext !== Infinity) {
      const now = this.cache.now();
      if (now >= this.expiresNext) this.passExpiries(now);
    }
    return this.cache.get(this.active).contains(ip);
  }

  /** Drops the entries expired at `now` from the list in force. */
  private passExpiries(now: number): void {
    const details = this.record.entryDetails;
    const active = activeEntries(this.record.ipAllowList, details, now);
    if (active.length !== this.active.length) this.active = active;
    this.expiresNext = nextExpiry(details, now);
  }
}

function sameList(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * `rec` made lean: its lists are the shared arrays of equal lists (`old`'s
 * list first, so a compiled matcher stays cached), an `updatedAt` equal to
 * `createdAt` is the same string, and so is a name equal to the id (the
 * keys file's default). A new object only when something changed.
 */
function lean(rec: KeyRecord, old: KeyRecord | undefined, cache: MatcherCache): KeyRecord {
  const list =
    old !== undefined && old.ipAllowList !== rec.ipAllowList && sameList(old.ipAllowList, rec.ipAllowList)
      ? old.ipAllowList
      : cache.share(rec.ipAllowList);
  const scopes = cache.share(rec.scopes);
  const updatedAt = rec.updatedAt !== undefined && rec.updatedAt === rec.createdAt ? rec.createdAt : rec.updatedAt;
  const name = rec.name === rec.id ? rec.id : rec.name;
  if (list === rec.ipAllowList && scopes === rec.scopes && updatedAt === rec.updatedAt && name === rec.name) {
    return rec;
  }
  return leanRecord(rec, name, list, scopes, updatedAt);
}

/** The shared, never-changed maps under a snapshot's overlay ({@link ShardedMap}s: no insertion rehashes the whole store). */
interface Base {
  readonly byHash: ShardedMap<KeyRecord>;
  readonly byId: ShardedMap<KeyRecord>;
}

/** Changes over a base: id (or secret hash) → its record now, or null where the base's entry is gone. */
interface Overlay {
  readonly byId: ReadonlyMap<string, KeyRecord | null>;
  readonly byHash: ReadonlyMap<string, KeyRecord | null>;
}

const NO_OVERLAY: Overlay = { byId: new Map(), byHash: new Map() };

/** How a snapshot's sorted ids follow from another's: for each id changed, whether it is present. */
interface Derivation {
  readonly from: Snapshot;
  readonly present: ReadonlyMap<string, boolean>;
  /** Snapshots between this one and the nearest with its ids sorted. */
  readonly depth: number;
}

/** Longest chain of snapshots whose sorted ids follow from an earlier one's (longer: sorted afresh, so old snapshots are not kept alive). */
const MAX_DERIVATION = 64;

/** The inner state of a snapshot (for {@link SnapshotBuilder} and the snapshot itself). */
export interface SnapshotState {
  readonly base: Base;
  readonly overlay: Overlay;
  readonly size: number;
  readonly entries: number;
  readonly sorted?: SortedIds | undefined;
  readonly derivation?: Derivation | undefined;
}

/**
 * Builds a snapshot record by record, so a large store can be built in slices
 * between other work; records whose list equals the one in `previous` reuse
 * that list's array, so its compiled matcher stays cached.
 */
export class SnapshotBuilder {
  private readonly byHash = new ShardedMap<KeyRecord>(shardOfDigest);
  private readonly byId = new ShardedMap<KeyRecord>();
  private entries = 0;

  constructor(
    private readonly cache: MatcherCache,
    private readonly previous?: Snapshot,
  ) {}

  /** Adds one record (validated, ids and secrets unique); a record with an id already added replaces it. */
  add(record: KeyRecord): void {
    this.remove(record.id);
    const rec = lean(record, this.previous?.record(record.id), this.cache);
    this.byHash.set(rec.secretDigest, rec);
    this.byId.set(rec.id, rec);
    this.entries += rec.ipAllowList.length;
  }

  /** Removes the record of `id`, if added. */
  remove(id: string): void {
    const old = this.byId.get(id);
    if (old === undefined) return;
    this.byId.delete(id);
    this.byHash.delete(old.secretDigest);
    this.entries -= old.ipAllowList.length;
  }

  /** Number of records added so far. */
  get size(): number {
    return this.byId.size;
  }

  /** The finished snapshot; the builder must not be used afterwards. */
  finish(): Snapshot {
    return new Snapshot([], this.cache, this.previous, this.state());
  }

  /** The state built so far (for the Snapshot constructor). */
  state(): SnapshotState {
    return {
      base: { byHash: this.byHash, byId: this.byId },
      overlay: NO_OVERLAY,
      size: this.byId.size,
      entries: this.entries,
    };
  }
}

/**
 * One immutable generation of the key store. A snapshot is a base (two maps
 * shared by every snapshot derived from it) under a small overlay of the
 * changes since; a change copies the overlay only, so it costs the same with
 * a million keys as with ten. {@link compacted} folds the overlay into a new
 * base a slice at a time, off the hot path.
 */
export class Snapshot {
  private readonly base: Base;
  private readonly overlay: Overlay;
  /** Bearer token → key (null: no such key), see {@link lookupToken}. */
  private readonly tokens = new Map<string, KeyPolicy | null>();
  /** Number of keys. */
  readonly size: number;
  /** Total allow-list entries over all keys. */
  readonly entries: number;
  /** Monotonic generation number. */
  readonly generation: number;
  /** Ids in order, once built (see {@link sortedIds}). */
  private sorted: SortedIds | undefined;
  private derivation: Derivation | undefined;

  /** Builds a snapshot of `records` at once (see {@link SnapshotBuilder} for large stores). */
  constructor(
    records: readonly KeyRecord[],
    readonly cache: MatcherCache,
    previous?: Snapshot,
    built?: SnapshotState,
  ) {
    this.generation = (previous?.generation ?? 0) + 1;
    let state = built;
    if (state === undefined) {
      const b = new SnapshotBuilder(cache, previous);
      for (const r of records) b.add(r);
      state = b.state();
    }
    this.base = state.base;
    this.overlay = state.overlay;
    this.size = state.size;
    this.entries = state.entries;
    this.sorted = state.sorted;
    this.derivation = state.derivation;
  }

  /** A new snapshot with one change applied; every other key keeps its compiled state. */
  withChange(change: KeyChange): Snapshot {
    return this.withChanges([change]);
  }

  /** A new snapshot with `changes` applied in order; costs the size of the overlay and the changes, never of the store. */
  withChanges(changes: readonly KeyChange[]): Snapshot {
    const byId = new Map(this.overlay.byId);
    const byHash = new Map(this.overlay.byHash);
    const present = new Map<string, boolean>();
    let size = this.size;
    let entries = this.entries;
    const byIdNow = (id: string): KeyRecord | undefined => {
      const o = byId.get(id);
      return o === undefined ? this.base.byId.get(id) : (o ?? undefined);
    };
    const drop = (rec: KeyRecord): void => {
      byId.set(rec.id, null);
      byHash.set(rec.secretDigest, null);
      entries -= rec.ipAllowList.length;
      size--;
      present.set(rec.id, false);
    };
    for (const change of changes) {
      const id = changedId(change);
      const old = byIdNow(id);
      if (old !== undefined) drop(old);
      if (change.kind === "delete") continue;
      // A secret moving between ids (possible in an import): the previous holder loses it.
      const o = byHash.get(change.record.secretDigest);
      const holder = o === undefined ? this.base.byHash.get(change.record.secretDigest) : (o ?? undefined);
      if (holder !== undefined) drop(holder);
      const rec = lean(change.record, old, this.cache);
      byId.set(id, rec);
      byHash.set(rec.secretDigest, rec);
      entries += rec.ipAllowList.length;
      size++;
      present.set(id, true);
    }
    const depth = this.sorted !== undefined ? 1 : (this.derivation?.depth ?? MAX_DERIVATION) + 1;
    return new Snapshot([], this.cache, this, {
      base: this.base,
      overlay: { byId, byHash },
      size,
      entries,
      derivation: depth <= MAX_DERIVATION ? { from: this, present, depth } : undefined,
    });
  }

  /** Number of ids and secret hashes the overlay holds (a store compacts past a threshold). */
  get overlaySize(): number {
    return this.overlay.byId.size + this.overlay.byHash.size;
  }

  /**
   * The same keys over one new base with an empty overlay, built a slice of
   * `slice` records at a time, yielding to the event loop in between.
   */
  async compacted(slice = 5_000): Promise<Snapshot> {
    const byId = new ShardedMap<KeyRecord>();
    const byHash = new ShardedMap<KeyRecord>(shardOfDigest);
    let n = 0;
    for (const rec of this.iterate()) {
      byId.set(rec.id, rec);
      byHash.set(rec.secretDigest, rec);
      if (++n % slice === 0) await yieldTurn();
    }
    return new Snapshot([], this.cache, this, {
      base: { byId, byHash },
      overlay: NO_OVERLAY,
      size: this.size,
      entries: this.entries,
      ...this.sameIds(),
    });
  }

  /**
   * This snapshot over `compacted`'s base, which folds in `source`'s overlay
   * ({@link compacted} of `source`, an ancestor on the same base): the overlay
   * keeps only what changed since `source`. Undefined when this snapshot is
   * not on `source`'s base (a full reload replaced it meanwhile).
   */
  rebasedOn(compacted: Snapshot, source: Snapshot): Snapshot | undefined {
    if (this.base !== source.base) return undefined;
    const keep = <T>(mine: ReadonlyMap<string, T>, theirs: ReadonlyMap<string, T>): Map<string, T> => {
      const out = new Map<string, T>();
      for (const [k, v] of mine) if (theirs.get(k) !== v) out.set(k, v);
      return out;
    };
    return new Snapshot([], this.cache, this, {
      base: compacted.base,
      overlay: {
        byId: keep(this.overlay.byId, source.overlay.byId),
        byHash: keep(this.overlay.byHash, source.overlay.byHash),
      },
      size: this.size,
      entries: this.entries,
      ...this.sameIds(),
    });
  }

  /** Sorted ids for a snapshot with the same keys as this one. */
  private sameIds(): Pick<SnapshotState, "sorted" | "derivation"> {
    const sorted = this.sortedIdsNow();
    if (sorted !== undefined) return { sorted };
    const depth = (this.derivation?.depth ?? MAX_DERIVATION) + 1;
    return depth <= MAX_DERIVATION ? { derivation: { from: this, present: new Map(), depth } } : {};
  }

  /** The key whose secret's SHA-256 is `digest`, if any. */
  lookup(digest: Digest): KeyPolicy | undefined {
    const rec = this.recordByHash(digest);
    return rec === undefined ? undefined : this.cache.policy(rec);
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
    const key = this.lookup(secretDigest(token));
    if (token.length <= TOKEN_CACHE_MAX_LENGTH) {
      if (this.tokens.size >= TOKEN_CACHE_MAX) this.tokens.clear();
      this.tokens.set(token, key ?? null);
    }
    return key;
  }

  /** The record of key `id`, if any. */
  record(id: string): KeyRecord | undefined {
    if (this.overlay.byId.size > 0) {
      const o = this.overlay.byId.get(id);
      if (o !== undefined) return o ?? undefined;
    }
    return this.base.byId.get(id);
  }

  /** The record whose secret's SHA-256 is `digest`, if any. */
  recordByHash(digest: Digest): KeyRecord | undefined {
    if (this.overlay.byHash.size > 0) {
      const o = this.overlay.byHash.get(digest);
      if (o !== undefined) return o ?? undefined;
    }
    return this.base.byHash.get(digest);
  }

  /** Every record, in no particular order. */
  *iterate(): IterableIterator<KeyRecord> {
    const over = this.overlay.byId;
    for (const [id, rec] of this.base.byId) if (!over.has(id)) yield rec;
    for (const rec of over.values()) if (rec !== null) yield rec;
  }

  /** Calls `visit` for every record, in no particular order, in one turn: at 1,000,000 keys ~10× faster than {@link iterate}. */
  forEachRecord(visit: (record: KeyRecord) => void): void {
    const over = this.overlay.byId;
    this.base.byId.forEach((rec, id) => {
      if (over.size === 0 || !over.has(id)) visit(rec);
    });
    over.forEach((rec) => {
      if (rec !== null) visit(rec);
    });
  }

  /** All records (in no particular order). */
  records(): KeyRecord[] {
    return [...this.iterate()];
  }

  /**
   * The ids in order (UTF-16 code units, as `<` compares), built once per
   * snapshot and only when asked: edited from the snapshot this one was
   * changed from when that one has them, else sorted a slice at a time.
   */
  async sortedIds(): Promise<SortedIds> {
    const now = this.sortedIdsNow();
    if (now !== undefined) return now;
    // The ids a shard at a time, in one array per shard: no array of every id (see sorted.ts).
    const over = this.overlay.byId;
    const groups: string[][] = [];
    let collected = 0;
    for (const shard of this.base.byId.shards()) {
      const ids: string[] = [];
      shard.forEach((_, id) => {
        if (!over.has(id)) ids.push(id);
      });
      groups.push(ids);
      collected += ids.length;
      if (collected >= 20_000) {
        collected = 0;
        await yieldTurn();
      }
    }
    const added: string[] = [];
    for (const [id, rec] of over) if (rec !== null) added.push(id);
    groups.push(added);
    const sorted = await sortIds(groups);
    this.sorted ??= sorted;
    this.derivation = undefined;
    return this.sorted;
  }

  /** The sorted ids when built, or derivable by editing an ancestor's (no sort). */
  private sortedIdsNow(): SortedIds | undefined {
    if (this.sorted !== undefined) return this.sorted;
    const chain: Derivation[] = [];
    let d = this.derivation;
    let base: SortedIds | undefined;
    while (base === undefined) {
      if (d === undefined) return undefined;
      chain.push(d);
      base = d.from.sorted;
      d = d.from.derivation;
    }
    const present = new Map<string, boolean>();
    for (let i = chain.length - 1; i >= 0; i--) {
      for (const [id, keep] of (chain[i] as Derivation).present) present.set(id, keep);
    }
    this.sorted = base.edited(present);
    this.derivation = undefined;
    return this.sorted;
  }
}

/** Overlay size (ids plus secret hashes) past which a store folds its snapshot's overlay into a new base. */
export const COMPACT_AT = 4_096;

/**
 * Keeps a store's overlay small: once a change leaves it past
 * {@link COMPACT_AT}, builds a compacted base in the background and installs
 * the store's then-current snapshot rebased on it (changes applied meanwhile
 * stay in its overlay). One compaction at a time.
 */
export class Compactor {
  private running = false;

  constructor(
    private readonly current: () => Snapshot | undefined,
    private readonly install: (snapshot: Snapshot) => void,
    private readonly threshold = COMPACT_AT,
  ) {}

  /** Called after each change is installed. */
  changed(): void {
    const source = this.current();
    if (this.running || source === undefined || source.overlaySize < this.threshold) return;
    this.running = true;
    void source
      .compacted()
      .then((compacted) => {
        const next = this.current()?.rebasedOn(compacted, source);
        if (next !== undefined) this.install(next);
      })
      .catch(() => undefined) // a failed compaction leaves a correct, larger overlay
      .finally(() => {
        this.running = false;
        this.changed();
      });
  }

  /** Resolves once no compaction runs (for tests and benches). */
  async idle(): Promise<void> {
    while (this.running) await yieldTurn();
  }
}

/**
 * A string-keyed map split into {@link SHARDS} smaller `Map`s by a hash of
 * the key. A `Map` grows by rehashing every entry into a table twice the
 * size, in one call: at 1,048,576 entries one `set` costs about 300 ms of
 * CPU, a stall no slicing between calls can avoid. Split, each part holds a
 * few thousand entries of a million-key store and grows in about a
 * millisecond. Iteration order is by shard, then by insertion.
 */

/** Number of parts (a power of two). */
export const SHARDS = 256;

/** FNV-1a over the first `to` code units of `key`, folded to {@link SHARDS}. */
function fnv(key: string, to: number): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < to; i++) h = Math.imul(h ^ key.charCodeAt(i), 0x01000193);
  return (h ^ (h >>> 16)) & (SHARDS - 1);
}

/** The part of any key (an id): a hash of all its code units. */
export function shardOfText(key: string): number {
  return fnv(key, key.length);
}

/**
 * The part of a digest (a secret's SHA-256, uniformly random): a hash of
 * its first 8 characters only, so the request path's lookup costs a fraction
 * of hashing all 32.
 */
export function shardOfDigest(key: string): number {
  return fnv(key, Math.min(8, key.length));
}

/** A `Map<string, V>` in {@link SHARDS} parts, so that no single insertion costs more than a part's rehash. */
export class ShardedMap<V> implements ReadonlyMap<string, V> {
  /** `shard(key)` picks a key's part: an integer from 0 below {@link SHARDS}, the same every time. */
  constructor(private readonly shard: (key: string) => number = shardOfText) {}

  /** The parts, made on first use (a small store leaves most undefined). */
  private readonly parts: (Map<string, V> | undefined)[] = new Array<Map<string, V> | undefined>(SHARDS).fill(
    undefined,
  );
  private count = 0;

  get size(): number {
    return this.count;
  }

  get(key: string): V | undefined {
    return this.parts[this.shard(key)]?.get(key);
  }

  has(key: string): boolean {
    return this.parts[this.shard(key)]?.has(key) ?? false;
  }

  /** Sets `key` to `value`. */
  set(key: string, value: V): this {
    const at = this.shard(key);
    let part = this.parts[at];
    if (part === undefined) {
      part = new Map();
      this.parts[at] = part;
    }
    const before = part.size;
    part.set(key, value);
    this.count += part.size - before;
    return this;
  }

  /** Removes `key`; true when it was present. */
  delete(key: string): boolean {
    const removed = this.parts[this.shard(key)]?.delete(key) ?? false;
    if (removed) this.count--;
    return removed;
  }

  *entries(): MapIterator<[string, V]> {
    for (const part of this.parts) if (part !== undefined) yield* part;
  }

  *keys(): MapIterator<string> {
    for (const part of this.parts) if (part !== undefined) yield* part.keys();
  }

  *values(): MapIterator<V> {
    for (const part of this.parts) if (part !== undefined) yield* part.values();
  }

  /** The parts made so far: a few thousand entries each at a million keys, a unit of work for one turn. */
  *shards(): IterableIterator<ReadonlyMap<string, V>> {
    for (const part of this.parts) if (part !== undefined) yield part;
  }

  [Symbol.iterator](): MapIterator<[string, V]> {
    return this.entries();
  }

  /** Calls `callback` for every entry; several times faster than iterating (no generator step per entry). */
  forEach(callback: (value: V, key: string, map: ReadonlyMap<string, V>) => void, thisArg?: unknown): void {
    for (const part of this.parts) part?.forEach((v, k) => callback.call(thisArg, v, k, this));
  }
}

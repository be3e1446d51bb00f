/**
 * The snapshot's ids in order, for the admin API's pages and a resync's
 * diff. At a million keys no step may make or copy one array of every id: a
 * fresh array of a million elements costs about 30 ms in the turn that makes
 * it, growing one by `push` up to 45 ms per doubling, and while it is young
 * each scavenge walks all of it. So the ids live in chunks of a few thousand
 * ({@link SortedIds}): an edit copies the chunks it touches, and the sort
 * ({@link sortIds}) sorts small runs, then merges them into chunks, a slice
 * per turn of the event loop.
 */

import { setImmediate as yieldTurn } from "node:timers/promises";

/** Comparisons per turn of the event loop while sorting. */
const SLICE = 20_000;
/** Ids per run sorted by the built-in sort in one turn (a group of up to twice as many is one run): 22,000 to 49,000 comparisons. */
const RUN = 2_048;
/** Ids per chunk of a {@link SortedIds}: what an edit of one id copies. */
export const CHUNK = 4_096;

const byCodeUnit = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

/** Ids sorted by UTF-16 code units (the order of `<`), unique, immutable; held in chunks of at most twice a chunk size ({@link CHUNK}). */
export class SortedIds implements Iterable<string> {
  /** Where each chunk starts in the whole list. */
  private readonly starts: number[] = [];
  /** Number of ids. */
  readonly length: number;

  /** `chunks`: non-empty, each sorted, each wholly before the next; `chunk`: the size an edit splits a chunk to. */
  private constructor(
    private readonly chunks: readonly (readonly string[])[],
    private readonly chunk: number,
  ) {
    let n = 0;
    for (const c of chunks) {
      this.starts.push(n);
      n += c.length;
    }
    this.length = n;
  }

  /** The list of `ids`, which must be sorted and unique. */
  static of(ids: readonly string[], chunk = CHUNK): SortedIds {
    const chunks: string[][] = [];
    for (let i = 0; i < ids.length; i += chunk) chunks.push(ids.slice(i, i + chunk));
    return new SortedIds(chunks, chunk);
  }

  /** The list whose ids are `chunks` in turn: each non-empty and sorted, each wholly before the next. */
  static ofChunks(chunks: readonly (readonly string[])[], chunk = CHUNK): SortedIds {
    return new SortedIds(chunks, chunk);
  }

  /** The id at place `i` (0 ≤ i < length). */
  at(i: number): string | undefined {
    const c = this.chunkAt(i);
    return this.chunks[c]?.[i - (this.starts[c] ?? 0)];
  }

  /**
   * The ids from place `start` up to (not including) `end`, bounds read as
   * `Array.prototype.slice` reads them (truncated; negative: from the end).
   */
  slice(start = 0, end = this.length): string[] {
    const place = (n: number): number => {
      const t = Math.trunc(n) || 0;
      return t < 0 ? Math.max(this.length + t, 0) : Math.min(t, this.length);
    };
    const to = place(end);
    const out: string[] = [];
    for (let i = place(start); i < to;) {
      const c = this.chunkAt(i);
      const chunk = this.chunks[c] as readonly string[];
      const first = this.starts[c] as number;
      const part = chunk.slice(i - first, to - first);
      for (const id of part) out.push(id);
      i += part.length;
    }
    return out;
  }

  /** The first place whose id is not less than `id` (length when none). */
  lowerBound(id: string): number {
    const c = this.chunkFor(id);
    const chunk = this.chunks[c];
    if (chunk === undefined) return this.length;
    return (this.starts[c] as number) + partitionPoint(chunk.length, (k) => (chunk[k] as string) < id);
  }

  /** The first place whose id is greater than `id` (length when none). */
  upperBound(id: string): number {
    const at = this.indexOf(id);
    return at >= 0 ? at + 1 : this.lowerBound(id);
  }

  /** The place of `id`, or -1 when it is not in the list. */
  indexOf(id: string): number {
    const at = this.lowerBound(id);
    return this.at(at) === id ? at : -1;
  }

  /**
   * A new list: these ids after `present`, which says for each id whether it
   * is in the result. Copies only the chunks it touches (and the list of
   * chunks), so a few edits cost a few thousand ids whatever the size.
   */
  edited(present: ReadonlyMap<string, boolean>): SortedIds {
    if (present.size === 0) return this;
    const touched = new Map<number, Map<string, boolean>>();
    for (const [id, keep] of present) {
      const c = Math.min(this.chunkFor(id), Math.max(0, this.chunks.length - 1));
      let edits = touched.get(c);
      if (edits === undefined) {
        edits = new Map();
        touched.set(c, edits);
      }
      edits.set(id, keep);
    }
    const chunks: (readonly string[])[] = [];
    const count = Math.max(1, this.chunks.length);
    for (let c = 0; c < count; c++) {
      const chunk = this.chunks[c] ?? [];
      const edits = touched.get(c);
      if (edits === undefined) {
        chunks.push(chunk);
        continue;
      }
      const next = editSorted(chunk, edits);
      // A chunk grown past twice its size is split; one emptied is dropped.
      const size = this.chunk;
      if (next.length > 2 * size) for (let i = 0; i < next.length; i += size) chunks.push(next.slice(i, i + size));
      else if (next.length > 0) chunks.push(next);
    }
    return new SortedIds(chunks, this.chunk);
  }

  *[Symbol.iterator](): IterableIterator<string> {
    for (const c of this.chunks) yield* c;
  }

  /** The chunk holding place `i` (binary search over the chunks' starts). */
  private chunkAt(i: number): number {
    return partitionPoint(this.starts.length, (c) => (this.starts[c] as number) <= i) - 1;
  }

  /** The first chunk whose last id is not less than `id`: where `id` is, or would go (chunks.length when after all). */
  private chunkFor(id: string): number {
    return partitionPoint(this.chunks.length, (c) => {
      const chunk = this.chunks[c] as readonly string[];
      return (chunk[chunk.length - 1] as string) < id;
    });
  }
}

/**
 * The first of places 0 to `count` - 1 for which `before` is false, `count`
 * when none (a binary search: `before` holds for a prefix of the places).
 */
function partitionPoint(count: number, before: (place: number) => boolean): number {
  let lo = 0;
  let hi = count;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (before(mid)) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/**
 * The ids of `groups` (unique over all groups, in any order; the arrays may
 * be reordered) as a {@link SortedIds} in chunks of `chunkSize`: runs of a
 * few thousand ids ({@link RUN}) sorted about one per turn, then merged
 * through a heap into chunks, yielding to the event loop every
 * {@link SLICE} comparisons.
 */
export async function sortIds(groups: readonly string[][], chunkSize = CHUNK): Promise<SortedIds> {
  const runs: string[][] = [];
  let sorted = 0;
  for (const group of groups) {
    // A group of up to two runs is sorted whole (no copy: at a million ids a shard holds about 3,900).
    const step = group.length <= 2 * RUN ? group.length : RUN;
    for (let i = 0; i < group.length; i += step) {
      const run = step === group.length ? group : group.slice(i, i + step);
      run.sort(byCodeUnit);
      runs.push(run);
      sorted += run.length;
      if (sorted >= RUN) {
        sorted = 0;
        await yieldTurn();
      }
    }
  }
  // A binary min-heap of the runs' cursors, by the id each is at.
  interface Cursor {
    readonly ids: readonly string[];
    at: number;
  }
  const heap: Cursor[] = runs.map((ids) => ({ ids, at: 0 }));
  const cursor = (i: number): Cursor => heap[i] as Cursor;
  const key = (i: number): string => cursor(i).ids[cursor(i).at] as string;
  let size = heap.length;
  let work = 0;
  const sink = (from: number): void => {
    let i = from;
    for (;;) {
      const l = 2 * i + 1;
      let m = i;
      if (l < size && key(l) < key(m)) m = l;
      if (l + 1 < size && key(l + 1) < key(m)) m = l + 1;
      work += 2;
      if (m === i) return;
      [heap[i], heap[m]] = [cursor(m), cursor(i)];
      i = m;
    }
  };
  for (let i = (size >>> 1) - 1; i >= 0; i--) sink(i);
  const chunks: string[][] = [];
  let chunk: string[] = [];
  while (size > 0) {
    const top = cursor(0);
    chunk.push(top.ids[top.at] as string);
    if (chunk.length === chunkSize) {
      chunks.push(chunk);
      chunk = [];
    }
    if (++top.at === top.ids.length) heap[0] = cursor(--size);
    sink(0);
    if (work >= SLICE) {
      work = 0;
      await yieldTurn();
    }
  }
  if (chunk.length > 0) chunks.push(chunk);
  return SortedIds.ofChunks(chunks, chunkSize);
}

/**
 * A new sorted list: `items` (sorted, unique) after `present`, which says for
 * each id whether it is in the result. A few edits splice a copy; many merge
 * in one pass.
 */
export function editSorted(items: readonly string[], present: ReadonlyMap<string, boolean>): string[] {
  if (present.size <= 32) {
    const out = items.slice();
    for (const [id, keep] of present) {
      const at = partitionPoint(out.length, (k) => (out[k] as string) < id);
      const has = out[at] === id;
      if (keep && !has) out.splice(at, 0, id);
      else if (!keep && has) out.splice(at, 1);
    }
    return out;
  }
  const adds = [...present].filter(([, keep]) => keep).map(([id]) => id);
  adds.sort(byCodeUnit);
  const out: string[] = [];
  let k = 0;
  for (const id of items) {
    while (k < adds.length && (adds[k] as string) < id) out.push(adds[k++] as string);
    if (k < adds.length && adds[k] === id) k++;
    if (present.get(id) !== false) out.push(id);
  }
  while (k < adds.length) out.push(adds[k++] as string);
  return out;
}

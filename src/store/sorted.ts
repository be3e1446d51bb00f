/**
 * Sorted id lists for the snapshot's index: a sort that yields to the event
 * loop between slices (a million ids sort in about a second, far too long for
 * one turn of a proxy's loop), and the edit of a sorted list by a few
 * insertions and removals.
 */

/** Comparisons (or elements moved) per turn of the event loop. */
const SLICE = 20_000;

const yieldTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

const byCodeUnit = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

/** `items` sorted by UTF-16 code units (the order of `<`), in place, yielding between slices of work. */
export async function sortSliced(items: string[]): Promise<string[]> {
  const run = 4_096;
  for (let i = 0; i < items.length; i += run) {
    const part = items.slice(i, i + run).sort(byCodeUnit);
    for (let k = 0; k < part.length; k++) items[i + k] = part[k] as string;
    if (i % SLICE < run) await yieldTurn();
  }
  let from = items;
  let to: string[] = new Array<string>(items.length);
  let work = 0;
  for (let width = run; width < items.length; width *= 2) {
    for (let lo = 0; lo < items.length; lo += 2 * width) {
      const mid = Math.min(lo + width, items.length);
      const hi = Math.min(lo + 2 * width, items.length);
      let a = lo;
      let b = mid;
      let o = lo;
      while (a < mid && b < hi) {
        const x = from[a] as string;
        const y = from[b] as string;
        if (y < x) {
          to[o++] = y;
          b++;
        } else {
          to[o++] = x;
          a++;
        }
        if (++work % SLICE === 0) await yieldTurn();
      }
      while (a < mid) to[o++] = from[a++] as string;
      while (b < hi) to[o++] = from[b++] as string;
    }
    [from, to] = [to, from];
  }
  return from;
}

/** The first index of sorted `items` whose element is greater than `id` (binary search). */
export function upperBound(items: readonly string[], id: string): number {
  let lo = 0;
  let hi = items.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if ((items[mid] as string) <= id) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** The first index of sorted `items` whose element is not less than `id`. */
export function lowerBound(items: readonly string[], id: string): number {
  let lo = 0;
  let hi = items.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if ((items[mid] as string) < id) lo = mid + 1;
    else hi = mid;
  }
  return lo;
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
      const at = lowerBound(out, id);
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
    if (!present.has(id)) out.push(id);
    else if (present.get(id) === true) out.push(id);
  }
  while (k < adds.length) out.push(adds[k++] as string);
  return out;
}

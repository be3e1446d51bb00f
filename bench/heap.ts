/**
 * `node --expose-gc dist/bench/heap.js [--keys N] [--name-is-id]`: heap bytes per key of a
 * replica's snapshot. Builds N records as bench/redis.ts stores them, reads
 * each back from its Redis text (so every string is one a replica holds),
 * builds the snapshot and its sorted ids, and prints heap and RSS after a
 * forced collection, against the same process with no snapshot.
 */
import { encodeRecord, readable } from "../src/store/redis/record.js";
import { MatcherCache, SnapshotBuilder, type Snapshot } from "../src/store/snapshot.js";
import { scaleRecord } from "./lib.js";

const i = process.argv.indexOf("--keys");
const N = i >= 0 ? Number(process.argv[i + 1]) : 200_000;
/** `--name-is-id`: keys named by their id (the keys file's default when a key has no name). */
const nameIsId = process.argv.includes("--name-is-id");
const gc = (globalThis as { gc?: () => void }).gc;
if (gc === undefined) throw new Error("run with node --expose-gc");

function measure(): { heap: number; rss: number } {
  for (let k = 0; k < 4; k++) gc?.();
  const m = process.memoryUsage();
  return { heap: m.heapUsed + m.arrayBuffers, rss: m.rss };
}

async function build(n: number): Promise<Snapshot> {
  const b = new SnapshotBuilder(new MatcherCache());
  for (let k = 0; k < n; k++) {
    const text = encodeRecord(scaleRecord(k, nameIsId ? `key_${k}` : `key ${k}`));
    b.add(readable(`key_${k}`, text));
  }
  const s = b.finish();
  await s.sortedIds();
  return s;
}

const before = measure();
const snapshot = await build(N);
const after = measure();
const perKey = (after.heap - before.heap) / N;
console.log(
  `${N} keys: heap ${((after.heap - before.heap) / 1e6).toFixed(1)} MB (${perKey.toFixed(0)} bytes/key), ` +
    `RSS ${(before.rss / 1e6).toFixed(0)} → ${(after.rss / 1e6).toFixed(0)} MB; size ${snapshot.size}`,
);

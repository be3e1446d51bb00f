/** Shared helpers for micro benchmarks: timing loops, machine description, tables, the scale benches' keys. */
import { cpus, totalmem } from "node:os";
import type { KeyRecord } from "../src/store/keysfile.js";
import { secretDigest } from "../src/store/digest.js";

/** Key `i` of the Redis scale benches (bench:redis, bench/heap.ts): one scope, an IPv4 and an IPv6 entry, named `name`. */
export function scaleRecord(i: number, name = `key ${i}`): KeyRecord {
  return {
    id: `key_${i}`,
    name,
    secretDigest: secretDigest(`secret-${i}`),
    scopes: ["messages:send"],
    ipAllowList: [`10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`, `2001:db8:${(i & 0xffff).toString(16)}::/48`],
    mode: undefined,
    createdAt: "2026-11-30T00:00:00Z",
    updatedAt: "2026-11-30T00:00:00Z",
  };
}

/** The timing loop's source; see {@link opsPerSecond} for why it is compiled once per measurement. */
const LOOP = `
  let sink = 0;
  // Warm-up: let the JIT settle.
  const warmEnd = performance.now() + ms / 4;
  let i = 0;
  while (performance.now() < warmEnd) for (let k = 0; k < batch; k++) if (fn(i++)) sink++;
  const start = performance.now();
  const end = start + ms;
  let ops = 0;
  let now = start;
  while (now < end) {
    for (let k = 0; k < batch; k++) if (fn(i++)) sink++;
    ops += batch;
    now = performance.now();
  }
  if (sink === -1) console.log(sink);
  return (ops / (now - start)) * 1000;
`;

type Loop = (fn: (i: number) => unknown, ms: number, batch: number) => number;

/**
 * Runs `fn` in batches until `ms` elapse; returns operations per second.
 * Each call compiles its own copy of the loop: V8 keeps type feedback per
 * function literal, so one shared loop would call every measured function
 * through a megamorphic call site (never inlined), which understated the
 * address parser by half, while a proxy calls it from one monomorphic site.
 */
export function opsPerSecond(fn: (i: number) => unknown, ms = 400, batch = 1000): number {
  // eslint-disable-next-line @typescript-eslint/no-implied-eval -- a fresh function per measurement is the point (see above); the source is the constant LOOP
  const loop = new Function("fn", "ms", "batch", LOOP) as Loop;
  return loop(fn, ms, batch);
}

/** One line describing this machine. */
export function machine(): string {
  const c = cpus();
  return `${c.length} × ${c[0]?.model ?? "unknown CPU"}, ${Math.round(totalmem() / 2 ** 30)} GiB, Node ${process.version}`;
}

/** Formats a number of operations per second as "12.3 M/s". */
export function rate(n: number): string {
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)} M/s`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} k/s`;
  return `${n.toFixed(0)} /s`;
}

/** Renders a Markdown table. */
export function table(head: string[], rows: string[][]): string {
  const line = (cells: string[]): string => `| ${cells.join(" | ")} |`;
  return [line(head), line(head.map(() => "---")), ...rows.map(line)].join("\n");
}

/** A small deterministic PRNG (mulberry32) so runs are repeatable. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Compiled allow-list matcher: the list's ranges, merged and sorted, searched
 * by bisection. Measured against a binary prefix trie and `net.BlockList` in
 * `bench/match.ts` (see BENCHMARKS.md): merged ranges need ~log2(n) typed-array
 * reads per lookup where a trie walks up to 32 or 128 nodes.
 */
import type { Cidr, Ip } from "./address.js";

/** Answers whether an address lies in a fixed set of ranges; immutable once compiled. */
export interface Matcher {
  contains(ip: Ip): boolean;
  /** Number of merged ranges (a measure of the compiled size, not the entry count). */
  readonly ranges: number;
}

const MASK64 = (1n << 64n) - 1n;

function v6Value(ip: Ip): bigint {
  return (BigInt(ip.w0) << 96n) | (BigInt(ip.w1) << 64n) | (BigInt(ip.w2) << 32n) | BigInt(ip.w3);
}

function mergeRanges(ranges: Array<[bigint, bigint]>): Array<[bigint, bigint]> {
  ranges.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  const merged: Array<[bigint, bigint]> = [];
  for (const r of ranges) {
    const last = merged[merged.length - 1];
    if (last !== undefined && r[0] <= last[1] + 1n) {
      if (r[1] > last[1]) last[1] = r[1];
    } else {
      merged.push([r[0], r[1]]);
    }
  }
  return merged;
}

class RangeMatcher implements Matcher {
  readonly ranges: number;

  constructor(
    /** IPv4 [start, end] pairs, flattened. */
    private readonly v4: Uint32Array,
    /** IPv6 starts then ends as four words each: [s0 s1 s2 s3 e0 e1 e2 e3]... */
    private readonly v6: Uint32Array,
  ) {
    this.ranges = v4.length / 2 + v6.length / 8;
  }

  contains(ip: Ip): boolean {
    if (ip.family === 4) {
      const r = this.v4;
      const x = ip.w3;
      let lo = 0;
      let hi = (r.length >> 1) - 1;
      // Find the last range whose start <= x.
      while (lo <= hi) {
        const mid = (lo + hi) >> 1;
        if ((r[mid << 1] as number) <= x) lo = mid + 1;
        else hi = mid - 1;
      }
      return hi >= 0 && x <= (r[(hi << 1) + 1] as number);
    }
    const r = this.v6;
    let lo = 0;
    let hi = (r.length >> 3) - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (compare6(r, mid << 3, ip) <= 0) lo = mid + 1;
      else hi = mid - 1;
    }
    return hi >= 0 && compare6(r, (hi << 3) + 4, ip) >= 0;
  }
}

/** Compares the 128-bit value at r[at..at+3] with ip: negative, zero or positive. */
function compare6(r: Uint32Array, at: number, ip: Ip): number {
  let d = (r[at] as number) - ip.w0;
  if (d !== 0) return d;
  d = (r[at + 1] as number) - ip.w1;
  if (d !== 0) return d;
  d = (r[at + 2] as number) - ip.w2;
  if (d !== 0) return d;
  return (r[at + 3] as number) - ip.w3;
}

/** Compiles ranges (already validated) into a matcher; duplicates and overlaps merge. */
export function compileMatcher(cidrs: readonly Cidr[]): Matcher {
  const r4: Array<[bigint, bigint]> = [];
  const r6: Array<[bigint, bigint]> = [];
  for (const { ip, prefix } of cidrs) {
    if (ip.family === 4) {
      const size = 1n << BigInt(32 - prefix);
      const start = BigInt(ip.w3);
      r4.push([start, start + size - 1n]);
    } else {
      const size = 1n << BigInt(128 - prefix);
      const start = v6Value(ip);
      r6.push([start, start + size - 1n]);
    }
  }
  const m4 = mergeRanges(r4);
  const m6 = mergeRanges(r6);
  const v4 = new Uint32Array(m4.length * 2);
  m4.forEach(([s, e], k) => {
    v4[2 * k] = Number(s);
    v4[2 * k + 1] = Number(e);
  });
  const v6 = new Uint32Array(m6.length * 8);
  const put = (at: number, x: bigint): void => {
    const hi = (x >> 64n) & MASK64;
    const lo = x & MASK64;
    v6[at] = Number(hi >> 32n);
    v6[at + 1] = Number(hi & 0xffffffffn);
    v6[at + 2] = Number(lo >> 32n);
    v6[at + 3] = Number(lo & 0xffffffffn);
  };
  m6.forEach(([s, e], k) => {
    put(8 * k, s);
    put(8 * k + 4, e);
  });
  return new RangeMatcher(v4, v6);
}

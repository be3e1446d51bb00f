/**
 * Names the JIT code in a callgrind profile of a Node process: callgrind sees
 * V8's generated code as bare addresses; `node --perf-basic-prof` writes
 * /tmp/perf-PID.map (start, size, name per code object), which names them.
 * Used by `npm run bench:instructions -- --keep=DIR`.
 */
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";

interface CodeRange {
  readonly start: bigint;
  readonly end: bigint;
  readonly name: string;
}

function readPerfMap(file: string): CodeRange[] {
  const ranges: CodeRange[] = [];
  for (const line of readFileSync(file, "utf8").split("\n")) {
    const m = /^([0-9a-f]+) ([0-9a-f]+) (.*)$/.exec(line);
    if (m === null) continue;
    const start = BigInt(`0x${m[1] as string}`);
    ranges.push({ start, end: start + BigInt(`0x${m[2] as string}`), name: m[3] as string });
  }
  return ranges.sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
}

function nameAt(ranges: readonly CodeRange[], addr: bigint): string {
  let lo = 0;
  let hi = ranges.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const r = ranges[mid] as CodeRange;
    if (addr < r.start) hi = mid - 1;
    else if (addr >= r.end) lo = mid + 1;
    else return r.name;
  }
  return "(unnamed JIT code)";
}

/**
 * Self cost per function in `callgrindOut`, divided by `requests`, most
 * expensive first. Zeroing the counters mid-run leaves the frames open at that
 * moment (main, the event loop, each thread's start) holding everything under
 * them, so functions above half the total are left out.
 */
export function profile(callgrindOut: string, perfMap: string, requests: number, top = 40): string[] {
  const ranges = readPerfMap(perfMap);
  const text = execFileSync("callgrind_annotate", ["--threshold=100", "--inclusive=no", callgrindOut], {
    encoding: "utf8",
    maxBuffer: 256 * 1024 * 1024,
  });
  const total = Number((/([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS/.exec(text)?.[1] ?? "0").replace(/,/g, ""));
  const cost = new Map<string, number>();
  for (const line of text.split("\n")) {
    const m = /^\s*([\d,]+)\s+\([^)]*\)\s+(.*)$/.exec(line);
    if (m === null || line.includes("PROGRAM TOTALS")) continue;
    const n = Number((m[1] as string).replace(/,/g, ""));
    let fn = (m[2] as string).trim();
    if (n > total / 2 || /:(clone|start_thread) /.test(fn)) continue;
    const addr = /^\?\?\?:0x([0-9a-f]+) /.exec(fn);
    fn =
      addr !== null ? nameAt(ranges, BigInt(`0x${addr[1] as string}`)) : fn.replace(/^[^:]*:/, "").replace(/\(.*/, "");
    cost.set(fn, (cost.get(fn) ?? 0) + n);
  }
  return [...cost.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, top)
    .map(
      ([fn, n]) =>
        `${Math.round(n / requests)
          .toLocaleString("en-US")
          .padStart(8)}  ${fn.slice(0, 140)}`,
    );
}

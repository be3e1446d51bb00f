/** Load generators: wrk (when installed) or autocannon, with one result shape. */
import { spawn } from "node:child_process";
import { performance } from "node:perf_hooks";
import autocannon from "autocannon";
import { Pool } from "undici";

/** One load run. */
export interface LoadResult {
  readonly requests: number;
  readonly rps: number;
  readonly p50ms: number;
  readonly p99ms: number;
  /** Responses other than the expected status. */
  readonly unexpected: number;
  /** Connection errors and timeouts. */
  readonly errors: number;
}

/** What to load. */
export interface LoadSpec {
  readonly url: string;
  readonly headers: Record<string, string>;
  readonly seconds: number;
  readonly connections: number;
  readonly expect: number;
}

function toMs(v: string, unit: string): number {
  const n = Number(v);
  return unit === "us" ? n / 1000 : unit === "ms" ? n : unit === "s" ? n * 1000 : n;
}

/** Runs wrk with one thread and parses its report. */
export function runWrk(spec: LoadSpec): Promise<LoadResult> {
  const args = ["-t1", `-c${spec.connections}`, `-d${spec.seconds}s`, "--latency"];
  for (const [k, v] of Object.entries(spec.headers)) args.push("-H", `${k}: ${v}`);
  args.push(spec.url);
  return new Promise((res, rej) => {
    const child = spawn("wrk", args, { stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.on("error", rej);
    child.on("exit", () => {
      const num = (re: RegExp): number => Number(re.exec(out)?.[1] ?? 0);
      const lat = (pct: string): number => {
        const m = new RegExp(`^\\s*${pct}%\\s+([\\d.]+)(us|ms|s)`, "m").exec(out);
        return m ? toMs(m[1] ?? "0", m[2] ?? "ms") : NaN;
      };
      const requests = num(/(\d+) requests in/);
      const non2xx = num(/Non-2xx or 3xx responses: (\d+)/);
      const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
      const errors = sock ? sock.slice(1).reduce((n, x) => n + Number(x), 0) : 0;
      // wrk counts 4xx as "non-2xx": for a denial benchmark every 403 is expected.
      const unexpected = spec.expect >= 300 ? requests - non2xx : non2xx;
      res({ requests, rps: num(/Requests\/sec:\s+([\d.]+)/), p50ms: lat("50"), p99ms: lat("99"), unexpected, errors });
    });
  });
}

/** Runs autocannon in this process. */
export async function runAutocannon(spec: LoadSpec): Promise<LoadResult> {
  const r = await autocannon({
    url: spec.url,
    connections: spec.connections,
    duration: spec.seconds,
    headers: spec.headers,
    expectBody: undefined,
  });
  const ok = spec.expect >= 300 && spec.expect < 500 ? r["4xx"] : r["2xx"];
  return {
    requests: r.requests.total,
    rps: r.requests.average,
    p50ms: r.latency.p50,
    p99ms: r.latency.p99,
    unexpected: r.requests.total - ok,
    errors: r.errors + r.timeouts,
  };
}

/** A run of large uploads. */
export interface UploadSpec {
  readonly url: string;
  readonly headers: Record<string, string>;
  /** Bytes per upload (sent with a Content-Length). */
  readonly bytes: number;
  readonly seconds: number;
  readonly connections: number;
}

/**
 * Posts `bytes`-byte bodies over `connections` keep-alive connections, each
 * starting its next upload when the last is answered, until `seconds` have
 * passed; counts only 200 answers as uploads (anything else is unexpected).
 */
export async function runUploads(spec: UploadSpec): Promise<LoadResult> {
  const body = Buffer.alloc(spec.bytes, 0x61);
  const u = new URL(spec.url);
  const pool = new Pool(u.origin, { connections: spec.connections, bodyTimeout: 60_000, headersTimeout: 60_000 });
  const latencies: number[] = [];
  let unexpected = 0;
  let errors = 0;
  const t0 = performance.now();
  const end = t0 + spec.seconds * 1000;
  await Promise.all(
    Array.from({ length: spec.connections }, async () => {
      while (performance.now() < end) {
        const start = performance.now();
        try {
          const r = await pool.request({
            path: u.pathname + u.search,
            method: "POST",
            headers: { ...spec.headers, "content-type": "application/octet-stream" },
            body,
          });
          await r.body.dump();
          if (r.statusCode === 200) latencies.push(performance.now() - start);
          else unexpected++;
        } catch (err) {
          if (errors++ === 0) process.stderr.write(`upload to ${spec.url}: ${(err as Error).message}\n`);
        }
      }
    }),
  );
  const elapsed = (performance.now() - t0) / 1000;
  await pool.close();
  latencies.sort((a, b) => a - b);
  const pct = (p: number): number => latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * p))] ?? NaN;
  return {
    requests: latencies.length,
    rps: latencies.length / elapsed,
    p50ms: pct(0.5),
    p99ms: pct(0.99),
    unexpected,
    errors,
  };
}

/**
 * `npm run bench:scale`: keyfence at scale: start-up time and RSS with 1,
 * 10,000 and 100,000 keys; allowed-path throughput by store size, by entries
 * per key (1, 100, 10,000) and for an IPv6 client; a reload and an API write
 * of the 100,000-key file under load (failed requests, p99, longest
 * event-loop stall); the admin paths at 100 and 100,000 keys (one keys page,
 * and the longest event-loop stall that each kind of management call causes
 * under load; `--admin` runs only these). Stalls are read inside keyfence by
 * bench/stallprobe.ts. Writes bench/results/scale.json and scale.md (not
 * with `--admin`).
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { secretHash } from "../src/policy/credential.js";
import { ALLOWED, keyfenceConfig, startKeyfence } from "./load.js";
import { machine, table } from "./lib.js";
import { runAutocannon, runWrk, type LoadResult } from "./loadgen.js";
import { cpuSeconds, freePort, have, ROOT, rssMb, startNode, type Proc } from "./procs.js";

const quick = process.argv.includes("--quick");
const adminOnly = process.argv.includes("--admin");
const SECONDS = quick ? 2 : 5;
const run = have("wrk") ? runWrk : runAutocannon;
const OPERATOR = "kf_bench_operator";

/** A keys file of `n` keys (two entries each) plus the benchmark key with `entries` entries around 127.0.0.1 and ::1. */
function keysFile(n: number, entries = 2): string {
  const parts: string[] = ["keys:\n"];
  for (let i = 0; i < n; i++) {
    parts.push(
      `  - id: key_${i}\n    secret_sha256: "${secretHash(`secret-${i}`)}"\n    scopes: [messages:send]\n    ip_allow_list:\n      - 10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}\n      - 2001:db8:${(i & 0xffff).toString(16)}::/48\n`,
    );
  }
  const list: string[] = [];
  for (let i = 0; list.length < entries - 2; i++)
    list.push(`172.${16 + ((i >> 16) & 15)}.${(i >> 8) & 255}.${i & 255}`);
  list.splice(list.length >> 1, 0, "127.0.0.1", "::1");
  parts.push(
    `  - id: bench_allowed\n    secret_sha256: "${secretHash(ALLOWED)}"\n    scopes: [api_keys:write]\n    ip_allow_list:\n${list.map((e) => `      - "${e}"\n`).join("")}`,
  );
  return parts.join("");
}

interface Started {
  kf: Proc & { startMs: number };
  port: number;
  adminPort: number;
  dir: string;
  /** Where bench/stallprobe.js, preloaded into keyfence, writes its readings. */
  stallFile: string;
}

async function start(root: string, name: string, upstream: string, keys: string, host = "127.0.0.1"): Promise<Started> {
  const dir = join(root, name);
  mkdirSync(dir);
  const port = await freePort(host);
  const adminPort = await freePort();
  const config = keyfenceConfig(
    dir,
    upstream,
    port,
    adminPort,
    `  operators:\n    - name: bench\n      token_sha256: "${secretHash(OPERATOR)}"\n`,
    keys,
  );
  if (host !== "127.0.0.1")
    writeFileSync(
      config,
      readFileSync(config, "utf8").replace(`listen: "127.0.0.1:${port}"`, `listen: "[${host}]:${port}"`),
    );
  const stallFile = join(dir, "stall.json");
  const kf = await startKeyfence(dir, config, adminPort, name, {
    nodeArgs: ["--import", join(ROOT, "dist/bench/stallprobe.js")],
    env: { ...process.env, KEYFENCE_STALL_FILE: stallFile },
  });
  return { kf, port, adminPort, dir, stallFile };
}

async function load(url: string, seconds = SECONDS): Promise<LoadResult> {
  return run({ url, headers: { authorization: `Bearer ${ALLOWED}` }, seconds, connections: 50, expect: 200 });
}

/** A reading of {@link Started.stallFile}: its number, and the longest stall (wall and main-thread CPU, ms) since the previous one. */
interface Stall {
  reading: number;
  wallMs: number;
  cpuMs: number;
  /** Of the longest wall stall, the time the thread waited for a core (the machine's share, not the code's). */
  waitMs: number;
}

/** The last reading in `file`; none before the first (or while the probe writes it). */
function lastReading(file: string): Stall | undefined {
  try {
    return JSON.parse(readFileSync(file, "utf8")) as Stall;
  } catch {
    return undefined;
  }
}

/** keyfence's longest event-loop stall since the previous call (the first call starts the count). */
async function stallOfKeyfence(s: Started): Promise<Stall> {
  const before = lastReading(s.stallFile)?.reading ?? 0;
  process.kill(s.kf.pid, "SIGUSR2");
  for (let i = 0; i < 500; i++) {
    await new Promise((res) => setTimeout(res, 10));
    const now = lastReading(s.stallFile);
    if (now !== undefined && now.reading > before) return now;
  }
  throw new Error("keyfence's stall probe did not answer within 5 s");
}

/** A stall as the tables show it. */
function showStall(stall: Stall): string {
  return `${stall.wallMs.toFixed(1)} ms (${stall.waitMs.toFixed(1)} waiting for a core; longest turn ${stall.cpuMs.toFixed(1)} ms CPU)`;
}

async function api(
  adminPort: number,
  method: string,
  path: string,
  body?: unknown,
): Promise<{ status: number; json: unknown }> {
  const r = await fetch(`http://127.0.0.1:${adminPort}${path}`, {
    method,
    headers: { authorization: `Bearer ${OPERATOR}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  return { status: r.status, json: text === "" ? null : (JSON.parse(text) as unknown) };
}

/** Median wall time of `GET /v1/api-keys?limit=100` (from the start and from a cursor), after warm-up. */
async function pageMs(adminPort: number): Promise<number> {
  const times: number[] = [];
  for (let i = 0; i < 45; i++) {
    const t0 = performance.now();
    const r = await api(adminPort, "GET", `/v1/api-keys?limit=100${i % 2 === 0 ? "" : "&cursor=key_5"}`);
    if (r.status !== 200) throw new Error(`keys page answered ${r.status}`);
    if (i >= 5) times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  return times[times.length >> 1] ?? NaN;
}

/** The longest event-loop stall while `op` runs `times` times, under load; and the slowest answer (ms). */
async function stallOf(s: Started, times: number, op: (i: number) => Promise<void>): Promise<[Stall, number]> {
  await stallOfKeyfence(s); // starts the count
  let slowest = 0;
  for (let i = 0; i < times; i++) {
    const t0 = performance.now();
    await op(i);
    slowest = Math.max(slowest, performance.now() - t0);
  }
  return [await stallOfKeyfence(s), slowest];
}

/** The admin paths under load: for each kind of call, the longest event-loop stall and the slowest answer. */
async function adminStalls(s: Started): Promise<string[][]> {
  const running = load(`http://127.0.0.1:${s.port}/`, 25);
  await new Promise((res) => setTimeout(res, 1500));
  const rows: string[][] = [];
  const must = (r: { status: number }, want: number, what: string): void => {
    if (r.status !== want) throw new Error(`${what} answered ${r.status}`);
  };
  const created: string[] = [];
  const ops: Array<[string, (i: number) => Promise<void>]> = [
    [
      "keys page (limit=100)",
      async (i) => must(await api(s.adminPort, "GET", `/v1/api-keys?limit=100&cursor=key_${i}`), 200, "page"),
    ],
    [
      "create",
      async () => {
        const r = await api(s.adminPort, "POST", "/v1/api-keys", { name: "bench created" });
        must(r, 201, "create");
        created.push((r.json as { id: string }).id);
      },
    ],
    [
      "rename (PATCH name)",
      async (i) =>
        must(await api(s.adminPort, "PATCH", `/v1/api-keys/key_${i + 7}`, { name: `renamed ${i}` }), 200, "rename"),
    ],
    [
      "delete",
      async (i) => must(await api(s.adminPort, "DELETE", `/v1/api-keys/${created[i] ?? "missing"}`), 204, "delete"),
    ],
  ];
  for (const [label, op] of ops) {
    const [stall, slowest] = await stallOf(s, 5, op);
    rows.push([label, showStall(stall), `${slowest.toFixed(0)} ms`]);
    process.stderr.write(`${label}: stall ${showStall(stall)}, slowest ${slowest.toFixed(0)} ms\n`);
  }
  const during = await running;
  rows.push([
    "(load meanwhile)",
    `${during.requests} requests, ${during.unexpected} unexpected, ${during.errors} errors`,
    `p99 ${during.p99ms.toFixed(1)} ms`,
  ]);
  return rows;
}

/** Keys pages at 100 and 100,000 keys, and management calls under load at 100,000 keys. */
async function adminPaths(root: string, upstream: string, md: string[], out: Record<string, unknown>): Promise<void> {
  const small = await start(root, "admin-100", upstream, keysFile(100));
  const smallMs = await pageMs(small.adminPort);
  await small.kf.stop();
  const big = await start(root, "admin-100000", upstream, keysFile(100_000));
  try {
    await api(big.adminPort, "GET", "/v1/api-keys?limit=1"); // the sorted index is built on first use
    const bigMs = await pageMs(big.adminPort);
    const stalls = await adminStalls(big);
    out["admin"] = { pageMs100: smallMs, pageMs100000: bigMs, stalls };
    md.push(
      `Keys page (\`GET /v1/api-keys?limit=100\`, median wall time at the client): ${smallMs.toFixed(2)} ms at 100 keys, ${bigMs.toFixed(2)} ms at 100,000 keys (${(bigMs / smallMs).toFixed(2)}×).`,
      "",
      table(
        ["management call at 100,000 keys, under load (5 each)", "longest event-loop stall", "slowest answer"],
        stalls,
      ),
      "",
    );
  } finally {
    await big.kf.stop();
  }
}

async function main(): Promise<void> {
  const root = mkdtempSync(join(tmpdir(), "keyfence-scale-"));
  const procs: Proc[] = [];
  const out: Record<string, unknown> = { machine: machine() };
  const md: string[] = [
    `Machine: ${machine()}. Load: ${have("wrk") ? "wrk" : "autocannon"}, 50 connections, ${SECONDS} s runs.`,
    "",
  ];
  try {
    const up = await startNode("upstream", "dist/bench/servers/upstream.js");
    procs.push(up);
    const upstream = `http://127.0.0.1:${up.port}`;

    if (adminOnly) {
      await adminPaths(root, upstream, md, out);
      process.stdout.write(`${md.join("\n")}\n`);
      return;
    }
    const sizes = quick ? [1, 10_000] : [1, 10_000, 100_000];
    const storeRows: string[][] = [];
    for (const n of sizes) {
      const s = await start(root, `keys-${n}`, upstream, keysFile(n));
      const rss = rssMb(s.kf.pid);
      const cpu0 = cpuSeconds(s.kf.pid);
      const r = await load(`http://127.0.0.1:${s.port}/`);
      const cpu = ((cpuSeconds(s.kf.pid) - cpu0) * 1e6) / Math.max(1, r.requests);
      storeRows.push([
        n.toLocaleString("en-US"),
        `${(s.kf.startMs / 1000).toFixed(2)} s`,
        `${rss.toFixed(0)} MB`,
        r.rps.toFixed(0),
        r.p99ms.toFixed(2),
        cpu.toFixed(1),
      ]);
      process.stderr.write(
        `keys ${n}: start ${s.kf.startMs.toFixed(0)} ms, RSS ${rss.toFixed(0)} MB, ${r.rps.toFixed(0)} req/s\n`,
      );
      if (n === sizes.at(-1)) {
        // Reload and write of the largest file under load.
        const file = join(s.dir, "keys.yaml");
        const baseline = await load(`http://127.0.0.1:${s.port}/`);
        await stallOfKeyfence(s); // starts the count
        const running = load(`http://127.0.0.1:${s.port}/`, 8);
        await new Promise((res) => setTimeout(res, 2000));
        const t0 = Date.now();
        writeFileSync(file, readFileSync(file, "utf8").replace("id: key_5\n", "id: key_5_renamed\n"));
        let reloadMs = NaN;
        for (let i = 0; i < 400; i++) {
          const r = await fetch(`http://127.0.0.1:${s.adminPort}/v1/api-keys/key_5_renamed`, {
            headers: { authorization: `Bearer ${OPERATOR}` },
          });
          await r.text();
          if (r.status === 200) {
            reloadMs = Date.now() - t0;
            break;
          }
          await new Promise((res) => setTimeout(res, 25));
        }
        const t1 = Date.now();
        const patch = await fetch(`http://127.0.0.1:${s.adminPort}/v1/api-keys/key_6`, {
          method: "PATCH",
          headers: { authorization: `Bearer ${OPERATOR}`, "content-type": "application/json" },
          body: JSON.stringify({ name: "renamed through the API" }),
        });
        const writeMs = Date.now() - t1;
        const during = await running;
        const stall = await stallOfKeyfence(s);
        out["reload"] = { keys: n, reloadMs, writeMs, writeStatus: patch.status, baseline, during, stall };
        md.push(
          `Reload of the ${n.toLocaleString("en-US")}-key file under load: in force after ${reloadMs} ms (edit to first answer showing it); an API write (PATCH) answered in ${writeMs} ms (${patch.status}); ` +
            `longest event-loop stall during the run ${showStall(stall)}; requests during: ${during.requests} with ${during.unexpected} unexpected statuses and ${during.errors} errors; p99 ${during.p99ms.toFixed(2)} ms (${baseline.p99ms.toFixed(2)} ms without the reload).`,
          "",
        );
      }
      await s.kf.stop();
    }
    out["stores"] = storeRows;
    md.unshift(table(["keys", "start-up", "RSS", "allowed req/s", "p99 ms", "CPU µs/req"], storeRows), "");

    const entryRows: string[][] = [];
    for (const entries of [1, 100, 10_000]) {
      const s = await start(root, `entries-${entries}`, upstream, keysFile(0, Math.max(2, entries)));
      const r = await load(`http://127.0.0.1:${s.port}/`);
      entryRows.push([entries.toLocaleString("en-US"), r.rps.toFixed(0), r.p99ms.toFixed(2)]);
      process.stderr.write(`entries ${entries}: ${r.rps.toFixed(0)} req/s\n`);
      await s.kf.stop();
    }
    out["entries"] = entryRows;
    md.push(table(["entries in the key's list", "allowed req/s", "p99 ms"], entryRows), "");

    const v6 = await start(root, "ipv6", upstream, keysFile(1000), "::1");
    const r6 = await load(`http://[::1]:${v6.port}/`);
    await v6.kf.stop();
    const v4 = await start(root, "ipv4", upstream, keysFile(1000));
    const r4 = await load(`http://127.0.0.1:${v4.port}/`);
    await v4.kf.stop();
    out["families"] = { ipv4: r4, ipv6: r6 };
    if (!quick) await adminPaths(root, upstream, md, out);
    md.push(
      table(
        ["client", "allowed req/s", "p99 ms"],
        [
          ["IPv4 (127.0.0.1)", r4.rps.toFixed(0), r4.p99ms.toFixed(2)],
          ["IPv6 (::1)", r6.rps.toFixed(0), r6.p99ms.toFixed(2)],
        ],
      ),
      "",
    );
  } finally {
    for (const p of procs.reverse()) await p.stop();
    rmSync(root, { recursive: true, force: true });
  }
  const text = md.join("\n");
  process.stdout.write(`${text}\n`);
  mkdirSync(join(ROOT, "bench/results"), { recursive: true });
  writeFileSync(join(ROOT, "bench/results/scale.json"), JSON.stringify(out, null, 2));
  writeFileSync(join(ROOT, "bench/results/scale.md"), text);
}

main().catch((err: unknown) => {
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
  process.exitCode = 1;
});

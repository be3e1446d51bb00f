/**
 * `npm run bench:redis [-- --keys N]`: the Redis store at scale (default
 * 1,000,000 keys): import time; one replica's start-up time (to /readyz 200)
 * and RSS; the time for a change to be enforced by 3 replicas while their
 * proxies are under load (p50/p99); the longest event-loop stall of a full
 * resync. Needs redis-server on PATH. Prints a Markdown table.
 */
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { request } from "undici";
import { stringify } from "yaml";
import { secretHash } from "../src/policy/credential.js";
import type { KeyRecord } from "../src/store/keysfile.js";
import { connectOnce, importRecords } from "../src/store/redis/io.js";
import { RedisKeyStore } from "../src/store/redis/store.js";
import { machine, scaleRecord, table } from "./lib.js";
import { stallMonitor } from "./stall.js";
import { cpuSeconds, freePort, have, ROOT, rssMb, startLogged, type Proc } from "./procs.js";
import { secretDigest } from "../src/store/digest.js";

const arg = (name: string, def: number): number => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : def;
};
const N = arg("--keys", 1_000_000);
const run = promisify(execFile);
const CHANGES = arg("--changes", 50);
const OPERATOR = "kf_bench_operator";
const PROBE = "kf_bench_probe";

function records(n: number): KeyRecord[] {
  const out: KeyRecord[] = [];
  for (let i = 0; i < n; i++) out.push(scaleRecord(i));
  out.push({
    id: "bench_probe",
    name: "probe",
    secretDigest: secretDigest(PROBE),
    scopes: [],
    ipAllowList: ["127.0.0.1"],
    mode: undefined,
    createdAt: undefined,
    updatedAt: undefined,
  });
  return out;
}

async function status(url: string, headers: Record<string, string> = {}): Promise<number> {
  try {
    const r = await request(url, { headers });
    await r.body.dump();
    return r.statusCode;
  } catch {
    return 0;
  }
}

function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;
}

async function main(): Promise<void> {
  if (!have("redis-server")) throw new Error("redis-server not found: apt-get install redis-server");
  const dir = mkdtempSync(join(tmpdir(), "keyfence-bench-redis-"));
  const procs: Proc[] = [];
  try {
    const redisPort = await freePort();
    const redis = await startLogged(
      "redis-server",
      "redis-server",
      ["--port", String(redisPort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
      join(dir, "redis.log"),
      async () => {
        try {
          const c = await connectOnce(`redis://127.0.0.1:${redisPort}`);
          c.destroy();
          return true;
        } catch {
          return false;
        }
      },
    );
    procs.push(redis);
    const url = `redis://127.0.0.1:${redisPort}`;
    const rows: string[][] = [];

    // Import, in a child process: a million records made and dropped here would leave this process collecting
    // them while the first replica starts, competing with it for the two cores (RSS 738–742 MB against 582 MB).
    const { stdout } = await run(process.execPath, [
      fileURLToPath(import.meta.url),
      "--import-to",
      url,
      "--keys",
      String(N),
    ]);
    const importS = Number(stdout.trim());
    const client = await connectOnce(url);
    const mem = await client.info("memory");
    const redisMb = Number(/used_memory:(\d+)/.exec(mem)?.[1] ?? 0) / 2 ** 20;
    client.destroy();
    process.stderr.write(`import: ${importS.toFixed(1)} s\n`);
    rows.push(["import", `${importS.toFixed(1)} s (${Math.round(N / importS).toLocaleString("en")} keys/s)`, "—"]);
    rows.push(["Redis memory", `${redisMb.toFixed(0)} MB`, "—"]);

    // Replicas.
    const upstreamPort = await freePort();
    const replicas: { proxy: string; admin: string; proc: Proc & { startMs: number } }[] = [];
    const startReplica = async (i: number): Promise<void> => {
      const proxyPort = await freePort();
      const adminPort = await freePort();
      const cfg = join(dir, `r${i}.yaml`);
      writeFileSync(
        cfg,
        stringify({
          listen: `127.0.0.1:${proxyPort}`,
          upstream: `http://127.0.0.1:${upstreamPort}`,
          keys: { store: "redis", redis: { url, prefix: "kf:" }, unknown: "reject" },
          admin: {
            listen: `127.0.0.1:${adminPort}`,
            operators: [{ name: "ops", token_sha256: secretHash(OPERATOR) }],
          },
        }),
      );
      const admin = `http://127.0.0.1:${adminPort}`;
      const proc = await startLogged(
        `replica ${i}`,
        process.execPath,
        [join(ROOT, "dist/src/cli/main.js"), "serve", "--config", cfg],
        join(dir, `r${i}.log`),
        async () => (await status(`${admin}/readyz`)) === 200,
        process.env,
        900_000,
      );
      procs.push(proc);
      replicas.push({ proxy: `http://127.0.0.1:${proxyPort}`, admin, proc });
    };
    // The first alone, timed; the other two at once.
    await startReplica(0);
    const first = replicas[0];
    if (first !== undefined) {
      const s = first.proc.startMs / 1000;
      rows.push([
        "replica start-up (to /readyz 200)",
        `${s.toFixed(1)} s (${cpuSeconds(first.proc.pid).toFixed(1)} s of CPU)`,
        s <= 15 ? "≤ 15 s: met" : "≤ 15 s: missed",
      ]);
      const rss = rssMb(first.proc.pid);
      rows.push(["replica RSS after start", `${rss.toFixed(0)} MB`, rss <= 600 ? "≤ 600 MB: met" : "≤ 600 MB: missed"]);
      process.stderr.write(`start-up: ${s.toFixed(1)} s, RSS ${rss.toFixed(0)} MB\n`);
    }
    await Promise.all([startReplica(1), startReplica(2)]);

    // Propagation under load: each replica's proxy answers the probe key (403 or 401 from keyfence itself).
    let loading = true;
    const load = replicas.flatMap((r) =>
      Array.from({ length: 8 }, async () => {
        while (loading) await status(`${r.proxy}/x`, { authorization: `Bearer ${PROBE}` });
      }),
    );
    const times: number[] = [];
    for (let c = 0; c < CHANGES; c++) {
      const allow = c % 2 === 0 ? ["192.0.2.1"] : ["127.0.0.1"];
      const expect = c % 2 === 0 ? 403 : 502; // 502: allowed, and no upstream listens
      const writer = replicas[c % 3];
      if (writer === undefined) break;
      const start = performance.now();
      const r = await request(`${writer.admin}/v1/api-keys/bench_probe`, {
        method: "PATCH",
        headers: { authorization: `Bearer ${OPERATOR}`, "content-type": "application/json" },
        body: JSON.stringify({ ip_allow_list: allow }),
      });
      await r.body.dump();
      if (r.statusCode !== 200) throw new Error(`PATCH answered ${r.statusCode}`);
      await Promise.all(
        replicas.map(async (rep) => {
          while ((await status(`${rep.proxy}/x`, { authorization: `Bearer ${PROBE}` })) !== expect) {
            if (performance.now() - start > 30_000) throw new Error("a change did not arrive within 30 s");
          }
        }),
      );
      times.push(performance.now() - start);
    }
    loading = false;
    await Promise.all(load);
    times.sort((a, b) => a - b);
    const p99 = pct(times, 99);
    rows.push([
      `change enforced by 3 replicas under load (${times.length} changes)`,
      `p50 ${pct(times, 50).toFixed(0)} ms, p99 ${p99.toFixed(0)} ms`,
      p99 <= 200 ? "p99 ≤ 200 ms: met" : "p99 ≤ 200 ms: missed",
    ]);

    // Full resync in this process: the longest event-loop stall.
    for (const r of replicas) await r.proc.stop();
    // A first load, then resyncs over it (as on a reconnect): each swaps in a snapshot built in slices. The first
    // resync starts while the load's last objects are still young, so its first turns also pay the scavenges
    // that copy them out (a replica pays those in its first turns after /readyz, resync or not); the second is
    // a resync of a replica that has settled, the case a reconnect hours after start meets.
    const store = new RedisKeyStore({ url, displayUrl: url, prefix: "kf:", maxEntries: 1000 });
    for (const what of ["first load", "resync right after the load", "resync"]) {
      const monitor = stallMonitor();
      const r0 = performance.now();
      if (what === "first load") await store.load();
      else {
        // A new generation marker (as after a re-import) makes the next sync a full resync.
        const c = await connectOnce(url);
        await c.set("kf:generation", `bench-${what}`);
        c.destroy();
        await store.refresh();
      }
      const resyncS = (performance.now() - r0) / 1000;
      const stall = monitor.stop();
      rows.push([
        `full resync of ${N.toLocaleString("en")} keys (${what}, in the bench process)`,
        `${resyncS.toFixed(1)} s; longest stall ${stall.wallMs.toFixed(0)} ms wall, ${stall.cpuMs.toFixed(0)} ms of main-thread CPU`,
        what === "first load"
          ? "— (no request waits: the listeners open after it)"
          : what !== "resync"
            ? "— (see the next row)"
            : stall.cpuMs <= 50
              ? "≤ 50 ms (CPU): met"
              : "≤ 50 ms (CPU): missed",
      ]);
      process.stderr.write(`${what}: ${rows.at(-1)?.[1] ?? ""}\n`);
    }
    await store.close();

    process.stdout.write(
      `${machine()}, ${N.toLocaleString("en")} keys\n\n${table(["what", "measured", "target"], rows)}\n`,
    );
  } finally {
    for (const p of procs.reverse()) await p.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** `--import-to URL`: imports the bench's records into the store at URL and prints the seconds it took. */
async function importOnly(url: string): Promise<void> {
  const all = records(N);
  const client = await connectOnce(url);
  const t0 = performance.now();
  await importRecords(client, "kf:", all);
  process.stdout.write(`${((performance.now() - t0) / 1000).toFixed(3)}\n`);
  client.destroy();
}

const importTo = process.argv.indexOf("--import-to");
if (importTo >= 0) await importOnly(process.argv[importTo + 1] ?? "");
else await main();

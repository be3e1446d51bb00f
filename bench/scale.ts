/**
 * `npm run bench:scale`: keyfence at scale: start-up time and RSS with 1,
 * 10,000 and 100,000 keys; allowed-path throughput by store size, by entries
 * per key (1, 100, 10,000) and for an IPv6 client; a reload and an API write
 * of the 100,000-key file under load (failed requests, p99, longest
 * event-loop stall). Writes bench/results/scale.json and scale.md.
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
  const kf = await startKeyfence(dir, config, adminPort, name);
  return { kf, port, adminPort, dir };
}

async function load(url: string, seconds = SECONDS): Promise<LoadResult> {
  return run({ url, headers: { authorization: `Bearer ${ALLOWED}` }, seconds, connections: 50, expect: 200 });
}

async function eventLoopMaxMs(adminPort: number): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
  return Number(/^nodejs_eventloop_lag_max_seconds (\S+)/m.exec(text)?.[1] ?? NaN) * 1000;
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
        await eventLoopMaxMs(s.adminPort); // resets the event-loop histogram
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
        const stallMs = await eventLoopMaxMs(s.adminPort);
        out["reload"] = { keys: n, reloadMs, writeMs, writeStatus: patch.status, baseline, during, stallMs };
        md.push(
          `Reload of the ${n.toLocaleString("en-US")}-key file under load: in force after ${reloadMs} ms (edit to first answer showing it); an API write (PATCH) answered in ${writeMs} ms (${patch.status}); ` +
            `longest event-loop stall during the run ${stallMs.toFixed(1)} ms; requests during: ${during.requests} with ${during.unexpected} unexpected statuses and ${during.errors} errors; p99 ${during.p99ms.toFixed(2)} ms (${baseline.p99ms.toFixed(2)} ms without the reload).`,
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

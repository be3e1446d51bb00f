/**
 * `npm run bench:instructions`: instructions per request under valgrind's
 * callgrind, which counts instructions (all threads, JIT code included) and
 * so gives the same figure whatever the rest of the machine is doing; on a
 * noisy 2-core VM, the one cost figure that repeats. Each contender is warmed
 * up, then measured over several windows of requests by reading callgrind's
 * live counters (callgrind_control) before and after each: the steady
 * per-request cost, start-up and warm-up (JIT compilation) excluded.
 */
import { execFile, spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Pool } from "undici";
import { secretHash } from "../src/policy/credential.js";
import { ALLOWED, benchKeys, DENIED, keyfenceConfig, nginxConfig } from "./load.js";
import { profile } from "./cgnames.js";
import { machine, table } from "./lib.js";
import { freePort, have, ROOT, startNode } from "./procs.js";

const quick = process.argv.includes("--quick");
/** `--only=REGEX` runs the contenders whose label matches (for A/B work); the results files are written only by full runs. */
const only = process.argv.find((a) => a.startsWith("--only="))?.slice("--only=".length);
/**
 * `--keep=DIR` keeps each contender's callgrind output there, for
 * callgrind_annotate: counters zeroed after warm-up, so it covers the measured
 * windows (and the shutdown), and prints its most expensive functions per
 * request; node runs with `--perf-basic-prof`, whose /tmp/perf-PID.map names
 * the JIT code (bench/cgnames.ts).
 */
const keep = process.argv.find((a) => a.startsWith("--keep="))?.slice("--keep=".length);
const WARMUP = quick ? 2000 : 6000;
const WINDOW = quick ? 1000 : 3000;
/** `--windows=N` measures N windows (median reported); 5 by default (the first measured window of a Node process runs about 10% high). */
const WINDOWS = Number(process.argv.find((a) => a.startsWith("--windows="))?.slice("--windows=".length) ?? 5);

/** Sends `n` requests over 8 keep-alive connections, the bearer taken from `secrets` in turn, with `extra` headers. */
async function drive(
  url: string,
  n: number,
  secrets: readonly string[],
  extra: Readonly<Record<string, string>> = {},
): Promise<void> {
  const pool = new Pool(url, { connections: 8 });
  const per = Math.ceil(n / 8);
  let next = 0;
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      for (let i = 0; i < per; i++) {
        const secret = secrets[next++ % secrets.length] ?? "";
        const r = await pool.request({
          path: "/",
          method: "GET",
          headers: { ...extra, authorization: `Bearer ${secret}` },
        });
        await r.body.dump();
      }
    }),
  );
  await pool.close();
}

function callgrindControl(pid: number, ...args: string[]): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    execFile("callgrind_control", [...args, String(pid)], (err, stdout) => {
      if (err) reject(new Error(`callgrind_control: ${err.message}`));
      else resolve(stdout);
    });
  });
}

/** Instructions executed so far by the callgrind run `pid`, all threads (read live with callgrind_control). */
async function instructionsSoFar(pid: number): Promise<number> {
  const out = await callgrindControl(pid, "-e", "Ir");
  let sum = 0;
  for (const m of out.matchAll(/^\s*Th\s*\d+\s+([\d,]+)\s*$/gm)) sum += Number((m[1] ?? "0").replace(/,/g, ""));
  if (sum === 0) throw new Error(`callgrind_control gave no counters:\n${out}`);
  return sum;
}

/**
 * Runs `cmd` under callgrind, waits until it answers, warms it up with WARMUP
 * requests, then measures WINDOWS windows of WINDOW requests each by reading
 * the live instruction counters before and after; returns the median
 * instructions per request, warm-up and start-up excluded.
 */
async function count(
  dir: string,
  cmd: string[],
  port: () => number | undefined,
  secrets: readonly string[],
  label: string,
  extra: Readonly<Record<string, string>> = {},
): Promise<{ perRequest: number; windows: number[]; rates: number[] }> {
  const name = randomUUID();
  const out = join(dir, `cg.${name}`);
  const log = join(dir, `cg.${name}.log`);
  const child = spawn(
    "valgrind",
    ["--tool=callgrind", `--callgrind-out-file=${out}`, "--smc-check=all-non-file", `--log-file=${log}`, ...cmd],
    { stdio: ["ignore", "pipe", "ignore"] },
  );
  let stdout = "";
  child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
  const exited = new Promise((r) => child.once("exit", r));
  try {
    const deadline = Date.now() + 300_000;
    let p: number | undefined;
    while ((p = port() ?? (Number(stdout.split("\n")[0]) || undefined)) === undefined || !(await up(p))) {
      if (Date.now() > deadline) throw new Error(`${cmd.join(" ")} did not start`);
      await new Promise((r) => setTimeout(r, 500));
    }
    const url = `http://127.0.0.1:${p}`;
    await drive(url, WARMUP, secrets, extra);
    // The first counter read attaches vgdb; the window after it measures about
    // twice the steady cost whatever the warm-up (seen with 2,000 to 25,000
    // requests), so it is run and discarded.
    await instructionsSoFar(child.pid as number);
    await drive(url, WINDOW, secrets, extra);
    if (keep !== undefined) await callgrindControl(child.pid as number, "--zero");
    const windows: number[] = [];
    // Requests per second of each window: the fewer requests the server finds per turn of its
    // event loop (a loaded machine slows the client), the more instructions each one costs.
    const rates: number[] = [];
    for (let w = 0; w < WINDOWS; w++) {
      const before = await instructionsSoFar(child.pid as number);
      const t = performance.now();
      await drive(url, WINDOW, secrets, extra);
      rates.push(WINDOW / ((performance.now() - t) / 1000));
      const after = await instructionsSoFar(child.pid as number);
      windows.push((after - before) / WINDOW);
    }
    const sorted = [...windows].sort((x, y) => x - y);
    return { perRequest: sorted[Math.floor(sorted.length / 2)] as number, windows, rates };
  } finally {
    child.kill("SIGTERM");
    await exited;
    if (keep !== undefined) {
      mkdirSync(keep, { recursive: true });
      const kept = join(keep, `${label.replace(/[^a-z0-9]+/gi, "-")}.out`);
      copyFileSync(out, kept);
      const map = `/tmp/perf-${String(child.pid)}.map`;
      if (existsSync(map)) {
        const lines = profile(kept, map, WINDOW * WINDOWS);
        writeFileSync(`${kept}.txt`, `${lines.join("\n")}\n`);
        process.stderr.write(`${label}: functions by instructions per request in ${kept}.txt\n`);
      }
    }
  }
}

async function up(port: number): Promise<boolean> {
  try {
    await fetch(`http://127.0.0.1:${port}/_probe`);
    return true;
  } catch {
    return false;
  }
}

async function main(): Promise<void> {
  if (!have("valgrind")) {
    process.stderr.write("valgrind is not installed (Debian: apt-get install valgrind)\n");
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), "keyfence-cg-"));
  const upstream = await startNode("upstream", "dist/bench/servers/upstream.js");
  try {
    const upstreamUrl = `http://127.0.0.1:${upstream.port}`;
    const kfPort = await freePort();
    const kfDir = join(dir, "kf");
    mkdirSync(kfDir);
    // 100 more keys, which one contender uses in turn.
    const ROTATING = Array.from({ length: 100 }, (_, i) => `kf_bench_rot_${i}`);
    const rotating = ROTATING.map(
      (secret, i) =>
        `  - id: bench_rot_${i}\n    secret_sha256: "${secretHash(secret)}"\n    ip_allow_list: [127.0.0.1, 10.${i}.0.0/16]\n`,
    ).join("");
    // A key whose loopback entry has an expiry (SPEC §9): the request path reads the clock for it.
    const EXPIRING = "kf_bench_expiring";
    const expiring = `  - id: bench_expiring\n    secret_sha256: "${secretHash(EXPIRING)}"\n    ip_allow_list: [{entry: 127.0.0.1, note: bench, expires_at: "2099-01-01T00:00:00Z"}]\n`;
    const kfConfig = keyfenceConfig(kfDir, upstreamUrl, kfPort, await freePort(), "", benchKeys(rotating + expiring));
    const nodeFlags = keep !== undefined ? ["--perf-basic-prof"] : [];
    const node = (script: string, ...args: string[]): string[] => [
      process.execPath,
      ...nodeFlags,
      join(ROOT, script),
      ...args,
    ];
    type Contender = {
      label: string;
      cmd: string[];
      port: () => number | undefined;
      secrets: string[];
      /** Headers besides the bearer (what an ingress adds to its question). */
      extra?: Record<string, string>;
    };
    const keyfence = (label: string, secrets: string[]): Contender => ({
      label,
      cmd: node("dist/src/cli/main.js", "serve", "--config", kfConfig),
      port: () => kfPort,
      secrets,
    });
    // A bench server that prints its own port on stdout.
    const server = (label: string, secret: string, script: string, ...args: string[]): Contender => ({
      label,
      cmd: node(`dist/bench/servers/${script}`, ...args),
      port: () => undefined,
      secrets: [secret],
    });
    // keyfence as a decision endpoint behind nginx on loopback: asked the way
    // deploy/ingress/nginx asks (original method and URI, the client's address).
    const decDir = join(dir, "decision");
    mkdirSync(decDir);
    const decPort = await freePort();
    const decConfig = keyfenceConfig(
      decDir,
      upstreamUrl,
      await freePort(),
      await freePort(),
      `trusted_proxies: [loopback]\ndecision:\n  listen: "127.0.0.1:${decPort}"\n`,
    );
    const asked = {
      "x-original-method": "POST",
      "x-original-uri": "/v1/messages?to=a",
      "x-forwarded-for": "127.0.0.1",
    };
    const decision = (label: string, secret: string): Contender => ({
      label,
      cmd: node("dist/src/cli/main.js", "serve", "--config", decConfig),
      port: () => decPort,
      secrets: [secret],
      extra: asked,
    });
    const contenders: Contender[] = [
      server("keyfence forwarder, no checks", ALLOWED, "bare.js", upstreamUrl),
      keyfence("keyfence, allowed", [ALLOWED]),
      keyfence("keyfence, allowed, 100 keys in turn", ROTATING),
      keyfence("keyfence, allowed, an entry with an expiry", [EXPIRING]),
      server("http-proxy 1.18", ALLOWED, "httpproxy.js", upstreamUrl),
      server("node:http fixed 403", DENIED, "deny403.js"),
      keyfence("keyfence, denied (403)", [DENIED]),
      server("node:http bare 200 answer", ALLOWED, "answer200.js"),
      // The same floor sent the question a decision gets (three more headers for Node to parse and index).
      { ...server("node:http bare 200 answer, asked as nginx asks", ALLOWED, "answer200.js"), extra: asked },
      decision("keyfence decision, allowed", ALLOWED),
      decision("keyfence decision, denied (403)", DENIED),
    ];
    if (have("nginx")) {
      const ngPort = await freePort();
      const ngDir = join(dir, "nginx");
      mkdirSync(ngDir);
      const conf = nginxConfig(ngDir, ngPort, upstream.port, false);
      const nginx = (label: string, secret: string): Contender => ({
        label,
        cmd: ["nginx", "-c", conf, "-p", ngDir],
        port: () => ngPort,
        secrets: [secret],
      });
      contenders.push(nginx("nginx, allowed", ALLOWED), nginx("nginx, denied (403)", DENIED));
    }
    const rows: Array<{ label: string; perRequest: number; windows: number[]; rates: number[] }> = [];
    for (const c of contenders) {
      if (only !== undefined && !new RegExp(only, "i").test(c.label)) continue;
      const { perRequest, windows, rates } = await count(dir, c.cmd, c.port, c.secrets, c.label, c.extra);
      rows.push({ label: c.label, perRequest, windows, rates });
      process.stderr.write(
        `${c.label}: ${Math.round(perRequest).toLocaleString("en-US")} instructions per request (windows: ${windows.map((w) => Math.round(w).toLocaleString("en-US")).join(", ")}; requests per second: ${rates.map((r) => Math.round(r)).join(", ")})\n`,
      );
    }
    const by = new Map(rows.map((r) => [r.label, r.perRequest]));
    const ratio = (a: string, b: string): string => {
      const x = by.get(a);
      const y = by.get(b);
      return x !== undefined && y !== undefined ? `${(x / y).toFixed(3)}×` : "—";
    };
    const md = [
      `Machine: ${machine()}. valgrind callgrind, ${WARMUP} warm-up requests, then the median of ${WINDOWS} windows of ${WINDOW} requests, over 8 keep-alive connections.`,
      "",
      table(
        ["contender", "instructions per request"],
        rows.map((r) => [r.label, Math.round(r.perRequest).toLocaleString("en-US")]),
      ),
      "",
      table(
        ["ratio", "measured", "target (issue #5, in CPU)"],
        [
          [
            "keyfence allowed ÷ no-check forwarder",
            ratio("keyfence, allowed", "keyfence forwarder, no checks"),
            "≤ 1.05×",
          ],
          [
            "keyfence allowed, 100 keys in turn ÷ no-check forwarder",
            ratio("keyfence, allowed, 100 keys in turn", "keyfence forwarder, no checks"),
            "—",
          ],
          ["keyfence allowed ÷ http-proxy", ratio("keyfence, allowed", "http-proxy 1.18"), "—"],
          ["keyfence allowed ÷ nginx", ratio("keyfence, allowed", "nginx, allowed"), "≤ 2×"],
          ["keyfence denied ÷ nginx 403", ratio("keyfence, denied (403)", "nginx, denied (403)"), "≤ 1.5×"],
          ["keyfence denied ÷ node:http fixed 403", ratio("keyfence, denied (403)", "node:http fixed 403"), "—"],
          [
            "keyfence decision allowed ÷ node:http bare 200 answer",
            ratio("keyfence decision, allowed", "node:http bare 200 answer"),
            "≤ 1.3× (issue #14, in instructions)",
          ],
          [
            "keyfence decision allowed ÷ node:http bare 200 answer, asked as nginx asks",
            ratio("keyfence decision, allowed", "node:http bare 200 answer, asked as nginx asks"),
            "—",
          ],
          [
            "keyfence decision denied ÷ node:http fixed 403",
            ratio("keyfence decision, denied (403)", "node:http fixed 403"),
            "—",
          ],
          [
            "keyfence decision allowed ÷ keyfence allowed (proxy)",
            ratio("keyfence decision, allowed", "keyfence, allowed"),
            "—",
          ],
        ],
      ),
    ].join("\n");
    process.stdout.write(`${md}\n`);
    if (only !== undefined) return;
    mkdirSync(join(ROOT, "bench/results"), { recursive: true });
    writeFileSync(join(ROOT, "bench/results/instructions.md"), `${md}\n`);
    writeFileSync(
      join(ROOT, "bench/results/instructions.json"),
      JSON.stringify({ machine: machine(), warmup: WARMUP, window: WINDOW, rows }, null, 2),
    );
  } finally {
    await upstream.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
  process.exitCode = 1;
});

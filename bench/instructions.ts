/**
 * `npm run bench:instructions`: instructions per request under valgrind's
 * callgrind, which counts instructions (all threads, JIT code included) and
 * so gives the same figure whatever the rest of the machine is doing; on a
 * noisy 2-core VM, the one cost figure that repeats. Each contender serves N1
 * then N2 requests in two runs; (I(N2) - I(N1)) / (N2 - N1) is its steady
 * per-request cost, start-up and warm-up excluded.
 */
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Pool } from "undici";
import { ALLOWED, DENIED, keyfenceConfig, nginxConfig } from "./load.js";
import { machine, table } from "./lib.js";
import { freePort, have, ROOT, startNode } from "./procs.js";

const quick = process.argv.includes("--quick");
const N1 = quick ? 500 : 2000;
const N2 = quick ? 1500 : 6000;

/** Sends `n` requests over 8 keep-alive connections. */
async function drive(url: string, n: number, secret: string): Promise<void> {
  const pool = new Pool(url, { connections: 8 });
  const per = Math.ceil(n / 8);
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      for (let i = 0; i < per; i++) {
        const r = await pool.request({ path: "/", method: "GET", headers: { authorization: `Bearer ${secret}` } });
        await r.body.dump();
      }
    }),
  );
  await pool.close();
}

/** Runs `cmd` under callgrind, waits until `port()` answers, sends `n` requests, stops it; returns instructions. */
async function count(
  dir: string,
  cmd: string[],
  port: () => number | undefined,
  n: number,
  secret: string,
): Promise<number> {
  const out = join(dir, `cg.${Date.now()}`);
  const log = join(dir, `cg.${Date.now()}.log`);
  const child = spawn(
    "valgrind",
    ["--tool=callgrind", `--callgrind-out-file=${out}`, "--smc-check=all-non-file", `--log-file=${log}`, ...cmd],
    {
      stdio: ["ignore", "pipe", "ignore"],
    },
  );
  let stdout = "";
  child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
  const exited = new Promise((r) => child.once("exit", r));
  const deadline = Date.now() + 300_000;
  let p: number | undefined;
  while ((p = port() ?? (Number(stdout.split("\n")[0]) || undefined)) === undefined || !(await up(p))) {
    if (Date.now() > deadline) throw new Error(`${cmd.join(" ")} did not start`);
    await new Promise((r) => setTimeout(r, 500));
  }
  if (n > 0) await drive(`http://127.0.0.1:${p}`, n, secret);
  child.kill("SIGTERM");
  await exited;
  const m = /refs:\s+([\d,]+)/.exec(readFileSync(log, "utf8"));
  return Number((m?.[1] ?? "0").replace(/,/g, ""));
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
    const kfConfig = keyfenceConfig(kfDir, upstreamUrl, kfPort, await freePort());
    const node = (script: string, ...args: string[]): string[] => [process.execPath, join(ROOT, script), ...args];
    const contenders: Array<{ label: string; cmd: string[]; port: () => number | undefined; secret: string }> = [
      {
        label: "keyfence forwarder, no checks",
        cmd: node("dist/bench/servers/bare.js", upstreamUrl),
        port: () => undefined,
        secret: ALLOWED,
      },
      {
        label: "keyfence, allowed",
        cmd: node("dist/src/cli/main.js", "serve", "--config", kfConfig),
        port: () => kfPort,
        secret: ALLOWED,
      },
      {
        label: "http-proxy 1.18",
        cmd: node("dist/bench/servers/httpproxy.js", upstreamUrl),
        port: () => undefined,
        secret: ALLOWED,
      },
      {
        label: "node:http fixed 403",
        cmd: node("dist/bench/servers/deny403.js"),
        port: () => undefined,
        secret: DENIED,
      },
      {
        label: "keyfence, denied (403)",
        cmd: node("dist/src/cli/main.js", "serve", "--config", kfConfig),
        port: () => kfPort,
        secret: DENIED,
      },
    ];
    if (have("nginx")) {
      const ngPort = await freePort();
      const ngDir = join(dir, "nginx");
      mkdirSync(ngDir);
      const conf = nginxConfig(ngDir, ngPort, upstream.port, false);
      contenders.push({
        label: "nginx, allowed",
        cmd: ["nginx", "-c", conf, "-p", ngDir],
        port: () => ngPort,
        secret: ALLOWED,
      });
      contenders.push({
        label: "nginx, denied (403)",
        cmd: ["nginx", "-c", conf, "-p", ngDir],
        port: () => ngPort,
        secret: DENIED,
      });
    }
    const rows: Array<{ label: string; perRequest: number }> = [];
    for (const c of contenders) {
      const a = await count(dir, c.cmd, c.port, N1, c.secret);
      const b = await count(dir, c.cmd, c.port, N2, c.secret);
      const perRequest = (b - a) / (N2 - N1);
      rows.push({ label: c.label, perRequest });
      process.stderr.write(`${c.label}: ${Math.round(perRequest).toLocaleString("en-US")} instructions per request\n`);
    }
    const by = new Map(rows.map((r) => [r.label, r.perRequest]));
    const ratio = (a: string, b: string): string => {
      const x = by.get(a);
      const y = by.get(b);
      return x !== undefined && y !== undefined ? `${(x / y).toFixed(2)}×` : "—";
    };
    const md = [
      `Machine: ${machine()}. valgrind callgrind, ${N2 - N1} requests over 8 keep-alive connections (steady state: runs of ${N1} and ${N2} requests, difference).`,
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
          ["keyfence allowed ÷ http-proxy", ratio("keyfence, allowed", "http-proxy 1.18"), "—"],
          ["keyfence allowed ÷ nginx", ratio("keyfence, allowed", "nginx, allowed"), "≤ 2×"],
          ["keyfence denied ÷ nginx 403", ratio("keyfence, denied (403)", "nginx, denied (403)"), "≤ 1.5×"],
          ["keyfence denied ÷ node:http fixed 403", ratio("keyfence, denied (403)", "node:http fixed 403"), "—"],
        ],
      ),
    ].join("\n");
    process.stdout.write(`${md}\n`);
    mkdirSync(join(ROOT, "bench/results"), { recursive: true });
    writeFileSync(join(ROOT, "bench/results/instructions.md"), `${md}\n`);
    writeFileSync(
      join(ROOT, "bench/results/instructions.json"),
      JSON.stringify({ machine: machine(), n1: N1, n2: N2, rows }, null, 2),
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

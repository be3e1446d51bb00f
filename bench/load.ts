/**
 * `npm run bench`: keyfence against the proxies users already have, side by
 * side in one run on loopback: a keep-alive upstream; keyfence (allowed and
 * denied path, 1 and 2 workers); keyfence's own forwarder with no checks (the
 * floor of our stack); http-proxy 1.18 and http-proxy-3 with keep-alive
 * agents; and nginx (geo + map per-key check, upstream keepalive, one worker)
 * when installed; keyfence's decision endpoint (allowed, denied) beside a
 * bare node:http 200 answer, and the shipped nginx ingress asking it (CPU of
 * nginx and keyfence together, and each one's share), with and without its
 * optional decision cache, and the same file asking the bare node:http answer
 * instead (the floor of any Node decision service behind nginx) and asking an
 * nginx that only answers 200 (the floor of any decision service); then 10 MiB
 * uploads through that ingress, keyfence as the proxy and nginx alone. Rounds are interleaved; medians are reported with requests/s,
 * p50/p99 latency and the proxy's CPU microseconds per request. A full run
 * takes about 10 minutes (19 contenders × (1 s warm-up + 5 rounds × 5 s)).
 *
 * Options: --quick (1 s runs, 1 round), --rounds N, --seconds S,
 * --connections C, --tool wrk|autocannon, --only id,id (quick and partial
 * runs print their tables but leave bench/results alone)
 */
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { secretHash } from "../src/policy/credential.js";
import { machine, table } from "./lib.js";
import { runAutocannon, runUploads, runWrk, type LoadResult } from "./loadgen.js";
import { cpuSeconds, freePort, have, ROOT, startLogged, startNode, type Proc } from "./procs.js";
import { nginxIngressConfig, withDecisionCache, writeNginxConf } from "./ingress.js";
import { barChart } from "./svg.js";

const argv = process.argv.slice(2);
const opt = (name: string, fallback: string): string => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? (argv[i + 1] ?? fallback) : fallback;
};
const quick = argv.includes("--quick");
const ROUNDS = Number(opt("rounds", quick ? "1" : "5"));
const SECONDS = Number(opt("seconds", quick ? "1" : "5"));
const CONNECTIONS = Number(opt("connections", "50"));
/** Size of each upload in the upload contenders, and how many run at once. */
const UPLOAD_BYTES = 10 * 1024 * 1024;
const UPLOAD_CONNECTIONS = 4;
const TOOL = opt("tool", have("wrk") ? "wrk" : "autocannon");
const ONLY = opt("only", "")
  .split(",")
  .filter((s) => s !== "");

/** Secrets of the benchmark keys. */
export const ALLOWED = "kf_bench_allowed";
export const DENIED = "kf_bench_denied";

/** One contender in the comparison. */
interface Contender {
  readonly id: string;
  readonly label: string;
  readonly url: string;
  readonly headers: Record<string, string>;
  readonly expect: number;
  /** Processes whose CPU time is the proxy's (none for the upstream itself; nginx and keyfence for an ingress asking keyfence). */
  readonly pids: readonly number[];
  /** Names of `pids` when there are several: the table then shows each one's share. */
  readonly parts?: readonly string[];
  /** Bytes per upload: loaded with POSTs of this size (runUploads) instead of small GETs. */
  readonly upload?: number;
}

/** The benchmark keys file: the allowed key (loopback), the denied key (elsewhere), then `more` (YAML list items). */
export function benchKeys(more = ""): string {
  return `keys:\n  - id: bench_allowed\n    secret_sha256: "${secretHash(ALLOWED)}"\n    ip_allow_list: [127.0.0.1, "::1"]\n  - id: bench_denied\n    secret_sha256: "${secretHash(DENIED)}"\n    ip_allow_list: [203.0.113.0/24]\n${more}`;
}

/** Writes a keyfence configuration for the benchmark in `dir`; returns the config path. */
export function keyfenceConfig(
  dir: string,
  upstream: string,
  port: number,
  adminPort: number,
  extra = "",
  keysYaml?: string,
): string {
  writeFileSync(join(dir, "keys.yaml"), keysYaml ?? benchKeys());
  const config = join(dir, "keyfence.yaml");
  writeFileSync(
    config,
    `listen: "127.0.0.1:${port}"\nupstream: "${upstream}"\nkeys:\n  file: keys.yaml\n  max_entries: 100000\nadmin:\n  listen: "127.0.0.1:${adminPort}"\n${extra}`,
  );
  return config;
}

/** Starts keyfence from the built CLI (with `nodeArgs` and `env` when given), logging to a file; ready when /healthz answers. */
export async function startKeyfence(
  dir: string,
  config: string,
  adminPort: number,
  name = "keyfence",
  { nodeArgs = [], env = process.env }: { nodeArgs?: readonly string[]; env?: NodeJS.ProcessEnv } = {},
): Promise<Proc & { startMs: number }> {
  return startLogged(
    name,
    process.execPath,
    [...nodeArgs, join(ROOT, "dist/src/cli/main.js"), "serve", "--config", config],
    join(dir, `${name}.log`),
    async () => {
      try {
        return (await fetch(`http://127.0.0.1:${adminPort}/healthz`)).ok;
      } catch {
        return false;
      }
    },
    env,
  );
}

/**
 * Writes the nginx contender's configuration in `dir`: one worker (or, with
 * `master: false`, a single process, as callgrind needs), upstream keepalive,
 * and the per-key geo + map check; returns its path.
 */
export function nginxConfig(dir: string, port: number, upstreamPort: number, master = true): string {
  return writeNginxConf(
    dir,
    master,
    `  upstream up { server 127.0.0.1:${upstreamPort}; keepalive 64; }
  # The nginx way to pin a key to networks: geo for the client network, map over key and network.
  geo $kf_net { default other; 127.0.0.1/32 local; }
  map "$http_authorization|$kf_net" $kf_deny { default 1; "Bearer ${ALLOWED}|local" 0; }
  server {
    listen 127.0.0.1:${port};
    # As the shipped ingress: bodies stream to the upstream, never spooled to disk first.
    client_max_body_size 1g;
    proxy_request_buffering off;
    location / {
      if ($kf_deny) { return 403 '{"message":"source IP $remote_addr is not allowed for this API key"}'; }
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }
  }
`,
  );
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? (s[m] ?? NaN) : ((s[m - 1] ?? NaN) + (s[m] ?? NaN)) / 2;
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "keyfence-bench-"));
  const procs: Proc[] = [];
  try {
    const up = await startNode("upstream", "dist/bench/servers/upstream.js");
    procs.push(up);
    const upstream = `http://127.0.0.1:${up.port}`;
    const contenders: Contender[] = [
      { id: "direct", label: "direct to upstream", url: `${upstream}/`, headers: {}, expect: 200, pids: [] },
    ];

    for (const workers of [1, 2]) {
      const port = await freePort();
      const adminPort = await freePort();
      const wdir = join(dir, `kf${workers}`);
      mkdirSync(wdir);
      const config = keyfenceConfig(wdir, upstream, port, adminPort, workers > 1 ? `workers: ${workers}\n` : "");
      let kf: Proc;
      try {
        kf = await startKeyfence(wdir, config, adminPort, `keyfence-${workers}w`);
      } catch (err) {
        process.stderr.write(
          `skipping keyfence with ${workers} workers: ${(err as Error).message.split("\n")[0] ?? ""}\n`,
        );
        continue;
      }
      procs.push(kf);
      const suffix = workers > 1 ? `, ${workers} workers` : "";
      contenders.push({
        id: `keyfence${workers > 1 ? `-${workers}w` : ""}`,
        label: `keyfence, allowed${suffix}`,
        url: `http://127.0.0.1:${port}/`,
        headers: { authorization: `Bearer ${ALLOWED}` },
        expect: 200,
        pids: [kf.pid],
      });
      if (workers === 1) {
        contenders.push({
          id: "keyfence-denied",
          label: "keyfence, denied (403)",
          url: `http://127.0.0.1:${port}/`,
          headers: { authorization: `Bearer ${DENIED}` },
          expect: 403,
          pids: [kf.pid],
        });
      }
    }
    // The Node contenders that print their port: [id, label, script, args, secret, expected status].
    const nodeServers: Array<[string, string, string, string[], string, number]> = [
      ["bare", "keyfence forwarder, no checks", "bare.js", [upstream], ALLOWED, 200],
      ["node-403", "node:http fixed 403, nothing else", "deny403.js", [], DENIED, 403],
      ["node-200", "node:http bare 200 answer, nothing else", "answer200.js", [], ALLOWED, 200],
      ["http-proxy", "http-proxy 1.18 + keep-alive agent", "httpproxy.js", [upstream], ALLOWED, 200],
      ["http-proxy-3", "http-proxy-3 + keep-alive agent", "httpproxy.js", [upstream, "3"], ALLOWED, 200],
    ];
    for (const [id, label, script, args, secret, expect] of nodeServers) {
      const p = await startNode(id, `dist/bench/servers/${script}`, args);
      procs.push(p);
      contenders.push({
        id,
        label,
        url: `http://127.0.0.1:${p.port}/`,
        headers: { authorization: `Bearer ${secret}` },
        expect,
        pids: [p.pid],
      });
    }

    // keyfence as the decision endpoint, asked directly the way nginx asks it, and behind the shipped nginx ingress.
    const decPort = await freePort();
    const decAdmin = await freePort();
    const ddir = join(dir, "decision");
    mkdirSync(ddir);
    const decConfig = keyfenceConfig(
      ddir,
      upstream,
      await freePort(),
      decAdmin,
      `trusted_proxies: [loopback]\ndecision:\n  listen: "127.0.0.1:${decPort}"\n`,
    );
    const dec = await startKeyfence(ddir, decConfig, decAdmin, "keyfence-decision");
    procs.push(dec);
    const asked = {
      "x-original-method": "POST",
      "x-original-uri": "/v1/messages?to=a",
      "x-forwarded-for": "127.0.0.1",
    };
    contenders.push({
      id: "decision",
      label: "keyfence decision, allowed",
      url: `http://127.0.0.1:${decPort}/`,
      headers: { ...asked, authorization: `Bearer ${ALLOWED}` },
      expect: 200,
      pids: [dec.pid],
    });
    contenders.push({
      id: "decision-denied",
      label: "keyfence decision, denied (403)",
      url: `http://127.0.0.1:${decPort}/`,
      headers: { ...asked, authorization: `Bearer ${DENIED}` },
      expect: 403,
      pids: [dec.pid],
    });

    if (have("nginx")) {
      /** Starts nginx on `conf` with prefix `prefix`, ready once `readyUrl` answers at all. */
      const startNginx = async (name: string, conf: string, prefix: string, readyUrl: string): Promise<Proc> => {
        const proc = await startLogged(name, "nginx", ["-c", conf, "-p", prefix], join(prefix, `${name}.out`), () =>
          fetch(readyUrl).then(
            () => true,
            () => false,
          ),
        );
        procs.push(proc);
        return proc;
      };
      /** An allowed request through `url`, whose CPU is that of `pids`, named `parts`. */
      const allowedThrough = (
        id: string,
        label: string,
        url: string,
        pids: readonly number[],
        parts: readonly string[],
      ): Contender => ({ id, label, url, headers: { authorization: `Bearer ${ALLOWED}` }, expect: 200, pids, parts });
      const port = await freePort();
      const ng = await startNginx("nginx", nginxConfig(dir, port, up.port), dir, `http://127.0.0.1:${port}/`);
      contenders.push({
        id: "nginx",
        label: "nginx, allowed (1 worker)",
        url: `http://127.0.0.1:${port}/`,
        headers: { authorization: `Bearer ${ALLOWED}` },
        expect: 200,
        pids: [ng.pid],
      });
      contenders.push({
        id: "nginx-denied",
        label: "nginx, denied (403)",
        url: `http://127.0.0.1:${port}/`,
        headers: { authorization: `Bearer ${DENIED}` },
        expect: 403,
        pids: [ng.pid],
      });
      // The shipped deploy/ingress/nginx configuration in a directory of its own, asking `decisionPort`.
      const startIngress = async (name: string, decisionPort: number, edit?: (site: string) => string) => {
        const ingPort = await freePort();
        const ingDir = join(dir, name);
        mkdirSync(ingDir);
        const conf = nginxIngressConfig(ingDir, { port: ingPort, decisionPort, appPort: up.port, edit });
        const proc = await startNginx(name, conf, ingDir, `http://127.0.0.1:${ingPort}/_keyfence/ping`);
        return { pid: proc.pid, url: `http://127.0.0.1:${ingPort}/` };
      };
      const ing = await startIngress("nginx-ingress", decPort);
      contenders.push(
        allowedThrough(
          "nginx-decision",
          "nginx + keyfence decision, allowed",
          ing.url,
          [ing.pid, dec.pid],
          ["nginx", "keyfence"],
        ),
      );
      // The floor of any Node decision service behind nginx: the same file asking the bare node:http 200 answer.
      const node200 = contenders.find((c) => c.id === "node-200");
      if (node200 !== undefined) {
        const floor = await startIngress("nginx-ingress-node", Number(new URL(node200.url).port));
        contenders.push(
          allowedThrough(
            "nginx-node-200",
            "nginx + node:http bare 200 as the decision",
            floor.url,
            [floor.pid, ...node200.pids],
            ["nginx", "node:http"],
          ),
        );
      }
      // The floor of any decision service at all: the same file asking an nginx that only answers 200.
      const answerPort = await freePort();
      const answerDir = join(dir, "nginx-answer");
      mkdirSync(answerDir);
      const answerConf = writeNginxConf(
        answerDir,
        true,
        `  server { listen 127.0.0.1:${answerPort}; location / { add_header X-Keyfence-Key-Id bench_allowed; return 200; } }\n`,
      );
      const answer = await startNginx("nginx-answer", answerConf, answerDir, `http://127.0.0.1:${answerPort}/`);
      const nginxFloor = await startIngress("nginx-ingress-nginx", answerPort);
      contenders.push(
        allowedThrough(
          "nginx-nginx-200",
          "nginx + nginx's bare 200 as the decision",
          nginxFloor.url,
          [nginxFloor.pid, answer.pid],
          ["nginx", "nginx answering"],
        ),
      );
      // The same with the shipped file's optional decision cache switched on.
      chmodSync(dir, 0o711); // nginx's workers (an unprivileged user when started as root) reach the cache through it
      const cached = await startIngress("nginx-ingress-cached", decPort, (site) =>
        withDecisionCache(site, join(dir, "nginx-ingress-cached", "decisions")),
      );
      contenders.push(
        allowedThrough(
          "nginx-decision-cached",
          "nginx + keyfence decision, cached, allowed",
          cached.url,
          [cached.pid, dec.pid],
          ["nginx", "keyfence"],
        ),
      );
      // 10 MB uploads: through nginx asking keyfence, through keyfence as the proxy, through nginx alone.
      const uploads: Array<[string, string, string, readonly number[]]> = [
        ["upload-nginx-decision", "10 MB upload: nginx + keyfence decision", ing.url, [ing.pid, dec.pid]],
        ["upload-nginx", "10 MB upload: nginx alone", `http://127.0.0.1:${port}/`, [ng.pid]],
      ];
      const kfProxy = contenders.find((c) => c.id === "keyfence");
      if (kfProxy !== undefined)
        uploads.splice(1, 0, ["upload-keyfence", "10 MB upload: keyfence (proxy)", kfProxy.url, kfProxy.pids]);
      for (const [id, label, url, pids] of uploads) {
        contenders.push({
          id,
          label,
          url: `${url}upload`,
          headers: { authorization: `Bearer ${ALLOWED}` },
          expect: 200,
          pids,
          upload: UPLOAD_BYTES,
        });
      }
    } else {
      process.stderr.write("nginx is not installed: skipping it (Debian: apt-get install nginx)\n");
    }

    const selected = ONLY.length > 0 ? contenders.filter((c) => ONLY.includes(c.id)) : contenders;
    const runs = new Map<string, Array<LoadResult & { cpuUsPerReq: number; partsUsPerReq: number[] }>>();
    const run = TOOL === "wrk" ? runWrk : runAutocannon;
    process.stderr.write(
      `${machine()}; ${TOOL}, ${CONNECTIONS} connections, ${SECONDS} s per run, ${ROUNDS} interleaved rounds\n`,
    );
    const load = (c: Contender, seconds: number): Promise<LoadResult> =>
      c.upload !== undefined
        ? runUploads({ url: c.url, headers: c.headers, bytes: c.upload, seconds, connections: UPLOAD_CONNECTIONS })
        : run({ url: c.url, headers: c.headers, seconds, connections: CONNECTIONS, expect: c.expect });
    /** `parts` as "nginx 54.1 + keyfence 40.2" (µs per request); empty for a single process. */
    const split = (c: Contender, parts: readonly number[]): string =>
      c.parts === undefined ? "" : c.parts.map((name, i) => `${name} ${(parts[i] ?? NaN).toFixed(1)}`).join(" + ");
    for (const c of selected) await load(c, 1); // warm-up
    for (let round = 1; round <= ROUNDS; round++) {
      for (const c of selected) {
        const before = c.pids.map(cpuSeconds);
        const r = await load(c, SECONDS);
        const partsUsPerReq = c.pids.map((pid, i) =>
          r.requests > 0 ? ((cpuSeconds(pid) - (before[i] ?? NaN)) * 1e6) / r.requests : NaN,
        );
        const cpuUsPerReq = c.pids.length > 0 ? partsUsPerReq.reduce((a, b) => a + b, 0) : NaN;
        runs.set(c.id, [...(runs.get(c.id) ?? []), { ...r, cpuUsPerReq, partsUsPerReq }]);
        process.stderr.write(
          `round ${round}/${ROUNDS} ${c.label.padEnd(36)} ${r.rps.toFixed(0).padStart(7)} req/s  p50 ${r.p50ms.toFixed(2)} ms  p99 ${r.p99ms.toFixed(2)} ms  ${Number.isNaN(cpuUsPerReq) ? "" : `${cpuUsPerReq.toFixed(1)} µs CPU/req`}${c.parts === undefined ? "" : ` (${split(c, partsUsPerReq)})`}${r.unexpected + r.errors > 0 ? `  (${r.unexpected} unexpected, ${r.errors} errors)` : ""}\n`,
        );
      }
    }
    const summary = selected.map((c) => {
      const rs = runs.get(c.id) ?? [];
      return {
        id: c.id,
        label: c.label,
        rps: median(rs.map((r) => r.rps)),
        p50ms: median(rs.map((r) => r.p50ms)),
        p99ms: median(rs.map((r) => r.p99ms)),
        cpuUsPerReq: median(rs.map((r) => r.cpuUsPerReq)),
        /** Each process's own median, so the parts need not add up to the total's median. */
        cpuSplit: split(
          c,
          c.pids.map((_, i) => median(rs.map((r) => r.partsUsPerReq[i] ?? NaN))),
        ),
        unexpected: rs.reduce((n, r) => n + r.unexpected, 0),
        errors: rs.reduce((n, r) => n + r.errors, 0),
      };
    });
    const by = new Map(summary.map((s) => [s.id, s]));
    const ratio = (a: number | undefined, b: number | undefined): string =>
      a === undefined || b === undefined || !Number.isFinite(a) || !Number.isFinite(b) || b === 0
        ? "—"
        : `${(a / b).toFixed(2)}×`;
    const kf = by.get("keyfence");
    const cpu = (a: string, b: string): string => ratio(by.get(a)?.cpuUsPerReq, by.get(b)?.cpuUsPerReq);
    const ratios = [
      ["keyfence allowed CPU/req ÷ no-check forwarder", cpu("keyfence", "bare"), "≤ 1.05×"],
      ["keyfence allowed req/s ÷ http-proxy", ratio(kf?.rps, by.get("http-proxy")?.rps), "≥ 1.6×"],
      ["keyfence allowed CPU/req ÷ nginx", cpu("keyfence", "nginx"), "≤ 2×"],
      ["keyfence denied CPU/req ÷ nginx 403", cpu("keyfence-denied", "nginx-denied"), "≤ 1.5×"],
      ["keyfence denied CPU/req ÷ node:http fixed 403", cpu("keyfence-denied", "node-403"), "—"],
      ["floor: node:http fixed 403 CPU/req ÷ nginx 403", cpu("node-403", "nginx-denied"), "—"],
      ["floor: no-check forwarder CPU/req ÷ nginx", cpu("bare", "nginx"), "—"],
      ["keyfence 2 workers req/s ÷ 1 worker", ratio(by.get("keyfence-2w")?.rps, kf?.rps), "—"],
      [
        "keyfence decision CPU/req ÷ node:http bare 200 answer",
        cpu("decision", "node-200"),
        "≤ 1.3× (in instructions)",
      ],
      ["keyfence decision denied CPU/req ÷ node:http fixed 403", cpu("decision-denied", "node-403"), "—"],
      ["nginx + keyfence decision CPU/allowed req ÷ keyfence (proxy)", cpu("nginx-decision", "keyfence"), "≤ 0.7×"],
      ["nginx + keyfence decision CPU/allowed req ÷ nginx alone", cpu("nginx-decision", "nginx"), "—"],
      [
        "floor: nginx + node:http bare 200 as the decision CPU/allowed req ÷ keyfence (proxy)",
        cpu("nginx-node-200", "keyfence"),
        "—",
      ],
      [
        "floor: nginx + nginx's bare 200 as the decision CPU/allowed req ÷ keyfence (proxy)",
        cpu("nginx-nginx-200", "keyfence"),
        "—",
      ],
      [
        "nginx + keyfence decision ÷ nginx + node:http bare 200 as the decision",
        cpu("nginx-decision", "nginx-node-200"),
        "—",
      ],
      ["nginx + decision, cached: CPU/allowed req ÷ uncached", cpu("nginx-decision-cached", "nginx-decision"), "—"],
      [
        "nginx + decision, cached: req/s ÷ uncached",
        ratio(by.get("nginx-decision-cached")?.rps, by.get("nginx-decision")?.rps),
        "—",
      ],
      ["10 MB upload CPU: nginx + decision ÷ keyfence (proxy)", cpu("upload-nginx-decision", "upload-keyfence"), "—"],
      ["10 MB upload CPU: nginx + decision ÷ nginx alone", cpu("upload-nginx-decision", "upload-nginx"), "—"],
    ];
    const isUpload = (id: string): boolean => id.startsWith("upload-");
    const md = [
      `Machine: ${machine()}. Load: ${TOOL}, 1 thread, ${CONNECTIONS} connections, ${SECONDS} s per run, ${ROUNDS} interleaved rounds, medians. CPU is the proxy process tree's user+system time per request (from /proc).`,
      "",
      table(
        ["contender", "req/s", "p50 ms", "p99 ms", "proxy CPU µs/req", "per process (medians)"],
        summary
          .filter((s) => !isUpload(s.id))
          .map((s) => [
            s.label,
            s.rps.toFixed(0),
            s.p50ms.toFixed(2),
            s.p99ms.toFixed(2),
            Number.isFinite(s.cpuUsPerReq) ? s.cpuUsPerReq.toFixed(1) : "—",
            s.cpuSplit,
          ]),
      ),
      "",
      `Uploads: ${UPLOAD_BYTES / 1024 / 1024} MiB POST bodies from memory (undici), ${UPLOAD_CONNECTIONS} at once, same rounds.`,
      "",
      table(
        ["contender", "uploads/s", "MiB/s", "p50 ms", "p99 ms", "proxy CPU ms/upload"],
        summary
          .filter((s) => isUpload(s.id))
          .map((s) => [
            s.label,
            s.rps.toFixed(1),
            ((s.rps * UPLOAD_BYTES) / 1024 / 1024).toFixed(0),
            s.p50ms.toFixed(1),
            s.p99ms.toFixed(1),
            Number.isFinite(s.cpuUsPerReq) ? (s.cpuUsPerReq / 1000).toFixed(2) : "—",
          ]),
      ),
      "",
      table(["ratio (same run)", "measured", "target"], ratios),
      "",
    ].join("\n");
    process.stdout.write(`${md}\n`);
    // A partial or quick run is for trying things out: it never replaces the committed results.
    if (ONLY.length > 0 || quick) return;
    const out = join(ROOT, "bench/results");
    mkdirSync(out, { recursive: true });
    writeFileSync(
      join(out, "load.json"),
      JSON.stringify(
        {
          machine: machine(),
          tool: TOOL,
          connections: CONNECTIONS,
          seconds: SECONDS,
          rounds: ROUNDS,
          summary,
          runs: Object.fromEntries(runs),
        },
        null,
        2,
      ),
    );
    writeFileSync(join(out, "load.md"), md);
    writeFileSync(
      join(out, "load.svg"),
      barChart(
        "keyfence vs. other proxies (loopback, 2 cores)",
        summary.filter((s) => s.id !== "direct").map((s) => ({ label: s.label, a: s.rps, b: s.cpuUsPerReq })),
        "requests/s (higher is better)",
        "proxy CPU µs per request (lower is better)",
      ),
    );
  } finally {
    for (const p of procs.reverse()) await p.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1]?.endsWith("load.js")) {
  main().catch((err: unknown) => {
    process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
    process.exitCode = 1;
  });
}

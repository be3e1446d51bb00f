/**
 * `npm run bench:attacks`: the resource-exhaustion attacks of issue 18, from
 * one loopback address (127.0.0.2), against keyfence with its default
 * `limits` and with the limits lifted (as before they existed), while another
 * address (127.0.0.3) sends 20 requests one after another: how many are
 * answered, and how fast. The idle-connection attack runs keyfence as a
 * child with 1,100 descriptors, as a container with a low `nofile` would.
 */
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer, request } from "node:http";
import { connect, type AddressInfo, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { stringify } from "yaml";
import { createLogger, startSidecar } from "../src/cli/sidecar.js";
import { parseConfig } from "../src/config/config.js";
import { machine, table } from "./lib.js";
import { ROOT } from "./procs.js";

const LIFTED = {
  buffer_body_bytes: 0,
  inflight_per_client: 1_000_000,
  queue_ms: 3_600_000,
  connections: 10_000_000,
  connections_per_peer: 10_000_000,
};

async function upstream(): Promise<{ url: string; close(): void }> {
  const server = createServer((req, res) => {
    if (req.url?.startsWith("/trickle")) {
      res.writeHead(200);
      const t = setInterval(() => res.write("x"), 500);
      res.on("close", () => clearInterval(t));
    } else {
      req.resume();
      req.on("end", () => res.end("ok"));
    }
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () => {
      server.closeAllConnections();
      server.close();
    },
  };
}

function open(url: string, text: string): Promise<Socket | undefined> {
  const u = new URL(url);
  return new Promise((resolve) => {
    const s = connect({ host: u.hostname, port: Number(u.port), localAddress: "127.0.0.2" });
    const t = setTimeout(() => {
      s.destroy();
      resolve(undefined);
    }, 3000);
    s.on("error", () => resolve(undefined));
    s.once("connect", () => {
      clearTimeout(t);
      if (text !== "") s.write(text);
      resolve(s);
    });
  });
}

async function attack(url: string, n: number, text: (i: number) => string): Promise<Socket[]> {
  const out: Socket[] = [];
  for (let i = 0; i < n; i += 50) {
    const batch = await Promise.all(Array.from({ length: Math.min(50, n - i) }, (_, k) => open(url, text(i + k))));
    for (const s of batch) if (s) out.push(s);
  }
  await new Promise((r) => setTimeout(r, 1000));
  return out;
}

function once(url: string): Promise<number | undefined> {
  const t0 = performance.now();
  return new Promise((resolve) => {
    const req = request(`${url}/ok`, { localAddress: "127.0.0.3", agent: false, timeout: 5000 }, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode === 200 ? performance.now() - t0 : undefined));
    });
    req.on("timeout", () => req.destroy());
    req.on("error", () => resolve(undefined));
    req.end();
  });
}

async function victim(url: string): Promise<string[]> {
  const times: number[] = [];
  let failed = 0;
  for (let i = 0; i < 20; i++) {
    const ms = await once(url);
    if (ms === undefined) failed++;
    else times.push(ms);
  }
  times.sort((a, b) => a - b);
  const within = times.filter((t) => t < 1000).length;
  const p50 = times[Math.floor(times.length / 2)];
  return [
    `${within} / 20`,
    p50 === undefined ? "—" : `${p50.toFixed(1)} ms`,
    times.length === 0 ? "—" : `${(times[times.length - 1] as number).toFixed(1)} ms`,
    String(failed),
  ];
}

async function inProcess(
  up: string,
  limits: Record<string, unknown>,
  scenario: "uploads" | "downloads",
): Promise<string[]> {
  const dir = mkdtempSync(join(tmpdir(), "keyfence-attack-"));
  writeFileSync(join(dir, "keys.yaml"), "keys: []\n");
  const text = stringify({ listen: "127.0.0.1:0", upstream: up, keys: { file: "keys.yaml" }, limits });
  const parsed = parseConfig(join(dir, "kf.yaml"), text);
  if (!parsed.ok) throw new Error("bad bench config");
  const sink = new Writable({ write: (_c, _e, cb) => cb() });
  const kf = await startSidecar(parsed.config, createLogger(sink));
  const url = `http://127.0.0.1:${kf.proxyAddress?.port ?? 0}`;
  const sockets = await attack(url, 300, (i) =>
    scenario === "uploads"
      ? `POST /up/${i} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nx`
      : `GET /trickle/${i} HTTP/1.1\r\nHost: x\r\n\r\n`,
  );
  sockets.forEach((s) => s.on("error", () => undefined));
  const row = await victim(url);
  for (const s of sockets) s.destroy();
  await kf.stop();
  rmSync(dir, { recursive: true, force: true });
  return row;
}

async function idleConnections(up: string, limits: Record<string, unknown>): Promise<string[]> {
  const dir = mkdtempSync(join(tmpdir(), "keyfence-attack-"));
  writeFileSync(join(dir, "keys.yaml"), "keys: []\n");
  writeFileSync(
    join(dir, "kf.yaml"),
    stringify({ listen: "127.0.0.1:0", upstream: up, keys: { file: "keys.yaml" }, limits }),
  );
  const bin = join(ROOT, "dist/src/cli/main.js");
  const child = spawn(
    "sh",
    ["-c", `ulimit -n 1100 && exec "${process.execPath}" "${bin}" serve --config "${join(dir, "kf.yaml")}"`],
    {
      stdio: ["ignore", "pipe", "ignore"],
    },
  );
  let out = "";
  child.stdout.on("data", (d: Buffer) => (out += d.toString()));
  const end = Date.now() + 20_000;
  while (!/"proxy":"([^"]+)"/.test(out) && Date.now() < end) await new Promise((r) => setTimeout(r, 100));
  const url = `http://${/"proxy":"([^"]+)"/.exec(out)?.[1] ?? ""}`;
  const sockets = await attack(url, 1200, () => "");
  sockets.forEach((s) => s.on("error", () => undefined));
  const row = await victim(url);
  for (const s of sockets) s.destroy();
  child.kill("SIGKILL");
  rmSync(dir, { recursive: true, force: true });
  return row;
}

async function main(): Promise<void> {
  const up = await upstream();
  const rows: string[][] = [];
  try {
    for (const [name, run] of [
      ["300 slow uploads (1 of 1,000 bytes sent)", (l: Record<string, unknown>) => inProcess(up.url, l, "uploads")],
      ["300 slow downloads (1 byte / 500 ms)", (l: Record<string, unknown>) => inProcess(up.url, l, "downloads")],
      ["1,200 idle connections, 1,100 descriptors", (l: Record<string, unknown>) => idleConnections(up.url, l)],
    ] as const) {
      for (const [label, limits] of [
        ["limits lifted", LIFTED],
        ["default limits", {}],
      ] as const) {
        const row = await run(limits);
        rows.push([name, label, ...row]);
        process.stderr.write(`${name}, ${label}: ${row.join(", ")}\n`);
      }
    }
  } finally {
    up.close();
  }
  process.stdout.write(
    `Machine: ${machine()}. Attacker 127.0.0.2; victim 127.0.0.3 sends 20 requests one after another (5 s timeout each).\n\n${table(
      ["attack", "keyfence", "victim answered < 1 s", "p50", "max", "failed"],
      rows,
    )}\n`,
  );
}

main().catch((err: unknown) => {
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
  process.exitCode = 1;
});

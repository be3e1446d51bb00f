/** Process plumbing for load benchmarks: start, find ports, read CPU time, stop. */
import { spawn, type ChildProcess } from "node:child_process";
import { accessSync, constants, openSync, readdirSync, readFileSync } from "node:fs";
import { createServer } from "node:net";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** The repository root (bench scripts run from dist/bench). */
export const ROOT = resolve(fileURLToPath(import.meta.url), "../../..");
/** Clock ticks per second of /proc/PID/stat times. */
export const CLK_TCK = 100;

/** A started process. */
export interface Proc {
  readonly name: string;
  readonly child: ChildProcess;
  readonly pid: number;
  stop(): Promise<void>;
}

/** A free TCP port on loopback (bound, then released). */
export function freePort(host = "127.0.0.1"): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once("error", rej);
    s.listen(0, host, () => {
      const a = s.address();
      const port = typeof a === "object" && a ? a.port : 0;
      s.close(() => res(port));
    });
  });
}

function stopper(child: ChildProcess): () => Promise<void> {
  return () =>
    new Promise((res) => {
      if (child.exitCode !== null || child.signalCode !== null) return res();
      const t = setTimeout(() => child.kill("SIGKILL"), 5000);
      child.once("exit", () => {
        clearTimeout(t);
        res();
      });
      child.kill("SIGTERM");
    });
}

/** Starts `node script args` that prints its port on the first stdout line. */
export function startNode(
  name: string,
  script: string,
  args: string[] = [],
  nodeArgs: string[] = [],
): Promise<Proc & { port: number }> {
  const child = spawn(process.execPath, [...nodeArgs, join(ROOT, script), ...args], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  return new Promise((res, rej) => {
    let out = "";
    const t = setTimeout(() => rej(new Error(`${name} did not start`)), 15_000);
    child.stdout?.on("data", (d: Buffer) => {
      out += d.toString();
      const line = out.split("\n")[0];
      if (out.includes("\n") && line !== undefined) {
        clearTimeout(t);
        child.stdout?.removeAllListeners("data");
        child.stdout?.resume();
        res({ name, child, pid: child.pid ?? 0, port: Number(line), stop: stopper(child) });
      }
    });
    child.once("exit", (code) => rej(new Error(`${name} exited with ${code}`)));
  });
}

/** Starts a long-running command whose stdout and stderr go to `logFile`; `ready` polls until it is up. */
export async function startLogged(
  name: string,
  cmd: string,
  args: string[],
  logFile: string,
  ready: () => Promise<boolean>,
  env: NodeJS.ProcessEnv = process.env,
  timeoutMs = 30_000,
): Promise<Proc & { startMs: number }> {
  const fd = openSync(logFile, "a");
  const t0 = performance.now();
  const child = spawn(cmd, args, { stdio: ["ignore", fd, fd], env });
  let exited = false;
  child.once("exit", () => (exited = true));
  const deadline = Date.now() + timeoutMs;
  while (!(await ready())) {
    if (exited) throw new Error(`${name} exited; see ${logFile}:\n${readFileSync(logFile, "utf8").slice(-2000)}`);
    if (Date.now() > deadline) throw new Error(`${name} not ready after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 10));
  }
  return { name, child, pid: child.pid ?? 0, startMs: performance.now() - t0, stop: stopper(child) };
}

/** The PIDs of `pid` and all its descendants. */
export function processTree(pid: number): number[] {
  const parent = new Map<number, number>();
  for (const e of readdirSync("/proc")) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, "utf8");
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      parent.set(Number(e), Number(fields[1]));
    } catch {
      // gone
    }
  }
  const out = [pid];
  for (let i = 0; i < out.length; i++) for (const [p, pp] of parent) if (pp === out[i]) out.push(p);
  return out;
}

/** CPU seconds (user + system) used so far by `pid` and its descendants. */
export function cpuSeconds(pid: number): number {
  let ticks = 0;
  for (const p of processTree(pid)) {
    try {
      const stat = readFileSync(`/proc/${p}/stat`, "utf8");
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      ticks += Number(fields[11]) + Number(fields[12]);
    } catch {
      // gone
    }
  }
  return ticks / CLK_TCK;
}

/** Resident memory of `pid` in MB (VmRSS). */
export function rssMb(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const m = /VmRSS:\s+(\d+) kB/.exec(status);
  return m ? Number(m[1]) / 1024 : 0;
}

/** True when `cmd` is on the PATH. */
export function have(cmd: string): boolean {
  return (process.env["PATH"] ?? "").split(":").some((d) => {
    try {
      accessSync(join(d, cmd), constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

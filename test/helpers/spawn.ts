/** Runs the real `keyfence` executable as a child process, as an operator would. */
import { spawn, type ChildProcessByStdio } from "node:child_process";
import { resolve } from "node:path";
import type { Readable } from "node:stream";
import { fileURLToPath } from "node:url";

/** The built CLI. */
export const BIN = resolve(fileURLToPath(import.meta.url), "../../../src/cli/main.js");

/** A running `keyfence serve`. */
export interface Running {
  readonly child: ChildProcessByStdio<null, Readable, Readable>;
  /** Everything it printed so far (stdout and stderr). */
  output(): string;
  /** Base URLs parsed from its start-up line. */
  readonly proxy: string;
  readonly admin: string;
  /** Resolves with the exit code. */
  readonly exited: Promise<number | null>;
}

/** Starts `keyfence serve --config FILE` (`env` added to this process's) and waits for its start-up line (up to 15 s). */
export async function spawnKeyfence(config: string, env: Record<string, string> = {}): Promise<Running> {
  const child = spawn(process.execPath, [BIN, "serve", "--config", config], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, ...env },
  });
  let out = "";
  child.stdout.on("data", (d: Buffer) => (out += d.toString()));
  child.stderr.on("data", (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((r) => child.on("exit", (code) => r(code)));
  const ports = await new Promise<{ proxy: string; admin: string }>((res, rej) => {
    const t = setTimeout(() => {
      child.kill("SIGKILL"); // never leave a process behind a failed start
      rej(new Error(`keyfence did not start:\n${out}`));
    }, 15_000);
    const check = (): void => {
      const m = /"event":"listening","proxy":"([^"]+)","admin":(?:"([^"]+)"|null)/.exec(out);
      if (m) {
        clearTimeout(t);
        res({ proxy: `http://${m[1] ?? ""}`, admin: m[2] ? `http://${m[2]}` : "" });
      }
    };
    child.stdout.on("data", check);
    void exited.then((code) => rej(new Error(`keyfence exited with ${code}:\n${out}`)));
  });
  return { child, output: () => out, ...ports, exited };
}

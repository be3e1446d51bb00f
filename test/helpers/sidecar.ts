/**
 * Starts a real sidecar in-process for integration tests: its own temporary
 * config directory, listeners on 127.0.0.1 port 0, and captured log lines.
 */
import { mkdtempSync, rmSync, writeFileSync, renameSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { after, before } from "node:test";
import { stringify } from "yaml";
import { createLogger, startSidecar, type Sidecar } from "../../src/cli/sidecar.js";
import { parseConfig } from "../../src/config/config.js";
import { secretHash } from "../../src/policy/credential.js";
import { formatProblem } from "../../src/util/yaml.js";
import { startUpstream, type Upstream } from "./upstream.js";

/** A key as a test writes it: with its plaintext secret. */
export interface TestKey {
  id: string;
  secret: string;
  allow?: string[];
  mode?: "enforce" | "report";
  scopes?: string[];
  name?: string;
  sandbox?: boolean;
}

/** A running test sidecar. */
export interface TestSidecar {
  url: string;
  adminUrl: string;
  /** The decision listener's base URL ("" without a `decision` section). */
  decisionUrl: string;
  dir: string;
  keysFile: string;
  sidecar: Sidecar;
  logs: Array<Record<string, unknown>>;
  logText(): string;
  /** Replaces the keys file the way editors do (write a temp file, rename). */
  writeKeys(keys: TestKey[] | string): void;
  /** Stops the sidecar; its directory is removed unless `keep`. */
  stop(opts?: { keep?: boolean }): Promise<void>;
  /** Starts a new sidecar on the same directory (a restart); this one must be stopped with `keep`. */
  restart(): Promise<TestSidecar>;
}

/** The keys-file YAML for `keys`. */
export function keysYaml(keys: TestKey[]): string {
  return stringify({
    keys: keys.map((k) => ({
      id: k.id,
      name: k.name ?? k.id,
      secret_sha256: secretHash(k.secret),
      scopes: k.scopes ?? [],
      ip_allow_list: k.allow ?? [],
      ...(k.mode ? { mode: k.mode } : {}),
      ...(k.sandbox ? { sandbox: true } : {}),
    })),
  });
}

/** Starts a sidecar in front of `upstream` with `keys`; `config` adds or overrides top-level fields. */
export async function startTestSidecar(opts: {
  upstream: string;
  keys: TestKey[] | string;
  config?: Record<string, unknown>;
  keysConfig?: Record<string, unknown>;
  admin?: Record<string, unknown> | false;
  /** Reuse this directory and its keys file (a restart). */
  dir?: string;
  /** The sidecar's clock (ms since the epoch), for entries' expiry. */
  now?: () => number;
}): Promise<TestSidecar> {
  const dir = opts.dir ?? mkdtempSync(join(tmpdir(), "keyfence-test-"));
  const keysFile = join(dir, "keys.yaml");
  if (opts.dir === undefined) writeFileSync(keysFile, typeof opts.keys === "string" ? opts.keys : keysYaml(opts.keys));
  const configFile = join(dir, "keyfence.yaml");
  const doc: Record<string, unknown> = {
    listen: "127.0.0.1:0",
    upstream: opts.upstream,
    upstream_timeout_ms: 2000,
    drain_timeout_ms: 2000,
    keys: { file: "keys.yaml", ...(opts.keysConfig ?? {}) },
    ...(opts.admin === false ? {} : { admin: { listen: "127.0.0.1:0", ...(opts.admin ?? {}) } }),
    ...(opts.config ?? {}),
  };
  const text = stringify(doc);
  writeFileSync(configFile, text);
  const parsed = parseConfig(configFile, text);
  if (!parsed.ok) throw new Error(parsed.problems.map(formatProblem).join("\n"));
  const logs: Array<Record<string, unknown>> = [];
  const raw: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString("utf8").split("\n")) {
        if (line.trim() === "") continue;
        raw.push(line);
        logs.push(JSON.parse(line) as Record<string, unknown>);
      }
      cb();
    },
  });
  let sidecar: Sidecar;
  try {
    sidecar = await startSidecar(parsed.config, createLogger(sink), opts.now ? { now: opts.now } : {});
  } catch (err) {
    // A start the test expects to fail leaves no directory behind (one it was given stays).
    if (opts.dir === undefined) rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  let n = 0;
  return {
    url: `http://127.0.0.1:${sidecar.proxyAddress?.port ?? 0}`,
    adminUrl: sidecar.adminAddress ? `http://127.0.0.1:${sidecar.adminAddress.port}` : "",
    decisionUrl: sidecar.decisionAddress ? `http://127.0.0.1:${sidecar.decisionAddress.port}` : "",
    dir,
    keysFile,
    sidecar,
    logs,
    logText: () => raw.join("\n"),
    writeKeys(keys) {
      const tmp = join(dir, `.keys.yaml.tmp${n++}`);
      writeFileSync(tmp, typeof keys === "string" ? keys : keysYaml(keys));
      renameSync(tmp, keysFile);
    },
    async stop(stopOpts) {
      await sidecar.stop();
      if (!stopOpts?.keep) rmSync(dir, { recursive: true, force: true });
    },
    restart() {
      return startTestSidecar({ ...opts, dir });
    },
  };
}

/** Polls `check` until it returns true or `ms` elapse. */
export async function eventually(
  check: () => boolean | Promise<boolean>,
  ms = 3000,
  what = "condition",
): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what}`);
}

/** An upstream and a sidecar in front of it, shared by the tests of one suite. */
export interface SidecarFixture {
  readonly up: Upstream;
  readonly kf: TestSidecar;
}

/**
 * Registers hooks in the calling `describe` block that start an upstream and
 * the sidecar `start(up)` builds before its tests, and stop both after them.
 */
export function sidecarFixture(start: (up: Upstream) => Promise<TestSidecar>): SidecarFixture {
  let up: Upstream | undefined;
  let kf: TestSidecar | undefined;
  before(async () => {
    up = await startUpstream();
    kf = await start(up);
  });
  after(async () => {
    await kf?.stop();
    await up?.close();
  });
  const ready = <T>(v: T | undefined): T => {
    if (v === undefined) throw new Error("sidecarFixture: used outside its suite's tests");
    return v;
  };
  return {
    get up() {
      return ready(up);
    },
    get kf() {
      return ready(kf);
    },
  };
}

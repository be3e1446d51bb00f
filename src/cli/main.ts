#!/usr/bin/env node
/** The `keyfence` command: serve, check-config, hash-key (SPEC §1). */
import { text } from "node:stream/consumers";
import { ENV, formatListen, loadConfig, type Config } from "../config/config.js";
import { limitsSummary } from "../config/limits.js";
import { secretHash } from "../policy/credential.js";
import { parseKeysFile, readKeysText, type KeyRecord } from "../store/keysfile.js";
import { formatStoreProblem, problemFields, StoreLoadError, type StoreProblem } from "../store/store.js";
import type { Problem } from "../util/yaml.js";
import cluster from "node:cluster";
import { runPrimary, runWorker } from "./cluster.js";
import { runHealthcheck } from "./healthcheck.js";
import { keysDirProblem } from "./preflight.js";
import { createLogger, flushLogger, startSidecar, VERSION } from "./sidecar.js";

const USAGE = `usage: keyfence [serve] [--config FILE]
       keyfence check-config [--config FILE]
       keyfence hash-key [SECRET]      (or the secret on stdin)
       keyfence operator add NAME [--totp]
       keyfence healthcheck [--config FILE]   (exit 0 when the configured keyfence answers)
       keyfence keys import [--config FILE] --from KEYS.yaml
       keyfence keys export [--config FILE] [--to OUT.yaml]
       keyfence --version

--config defaults to $${ENV.config}, then config/keyfence.yaml.
Environment overrides: ${ENV.listen}, ${ENV.upstream}, ${ENV.adminListen}.`;

/** Parsed command line. */
interface Args {
  command: string;
  config: string | undefined;
  rest: string[];
}

function parseArgs(argv: readonly string[]): Args | string {
  let command: string | undefined;
  let config: string | undefined;
  const rest: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (a === "--config" || a === "-c") {
      const v = argv[++i];
      if (v === undefined) return "--config needs a file";
      config = v;
    } else if (a.startsWith("--config=")) config = a.slice("--config=".length);
    else if (a === "--help" || a === "-h") command = "help";
    else if (a === "--version" || a === "-v") command = "version";
    else if (a.startsWith("-") && a !== "-") return `unknown option ${a}`;
    else if (command === undefined) command = a;
    else rest.push(a);
  }
  return { command: command ?? "serve", config, rest };
}

function printProblems(problems: readonly StoreProblem[]): void {
  for (const p of problems) process.stderr.write(`${formatStoreProblem(p)}\n`);
}

async function configOrExit(args: Args): Promise<Config | undefined> {
  const path = args.config ?? process.env[ENV.config] ?? "config/keyfence.yaml";
  const r = await loadConfig(path);
  if (!r.ok) {
    printProblems(r.problems);
    return undefined;
  }
  return r.config;
}

/** `n thing` or `n things`. */
function count(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}

/** Checks the configuration and, when it names one, its keys file: every error of both in one run. */
async function checkConfig(args: Args): Promise<number> {
  const r = await loadConfig(args.config ?? process.env[ENV.config] ?? "config/keyfence.yaml");
  const problems: Problem[] = r.ok ? [] : [...r.problems];
  const keysFile = r.ok ? r.config.keys : r.keys;
  let keys: readonly KeyRecord[] = [];
  if (keysFile !== undefined) {
    const read = await readKeysText(keysFile.file, keysFile.displayName);
    const parsed = read.ok ? parseKeysFile(keysFile.displayName, read.text, keysFile.maxEntries) : read;
    if (parsed.ok) keys = parsed.keys;
    else problems.push(...parsed.problems);
  }
  if (!r.ok || problems.length > 0) {
    printProblems(problems);
    return 1;
  }
  const config = r.config;
  for (const w of config.warnings) process.stderr.write(`warning: ${w}\n`);
  const restricted = keys.filter((k) => k.ipAllowList.length > 0).length;
  const entries = keys.reduce((n, k) => n + k.ipAllowList.length, 0);
  const trust = config.trustedProxies;
  process.stdout.write(
    [
      `${config.file}: OK`,
      `  listen           ${formatListen(config.listen)} -> upstream ${config.upstream.href}`,
      `  mode             ${config.mode}`,
      `  trusted_proxies  ${trust.none ? "none" : trust.ranges.length > 0 ? trust.ranges.join(", ") : "hop count"}`,
      `  keys             ${config.keys.displayName}: ${count(keys.length, "key")}, ${restricted} restricted, ${count(entries, "allow-list entry", "allow-list entries")}`,
      `  unknown/missing  ${config.keys.unknown}/${config.keys.missing}`,
      `  route_scopes     ${config.routeScopes.rules.length === 0 ? "none" : count(config.routeScopes.rules.length, "rule")}`,
      `  sandbox          ${config.sandboxUpstream ? `-> ${config.sandboxUpstream.href}` : "off"}, ${count(keys.filter((k) => k.sandbox === true).length, "sandbox key")}; forward_identity ${String(config.forwardIdentity)}`,
      `  limits           ${limitsSummary(config.limits)}`,
      `  admin            ${config.admin ? `${formatListen(config.admin.listen)}, ${count(config.admin.operators.length, "operator")}` : "off"}`,
      "",
    ].join("\n"),
  );
  return 0;
}

async function hashKey(args: Args): Promise<number> {
  let secret = args.rest[0];
  if (secret === undefined || secret === "-") {
    secret = (await text(process.stdin)).replace(/\r?\n$/, "");
  }
  if (secret === "") {
    process.stderr.write("hash-key: the secret is empty\n");
    return 1;
  }
  process.stdout.write(`${secretHash(secret)}\n`);
  return 0;
}

async function serve(args: Args): Promise<number | undefined> {
  const config = await configOrExit(args);
  if (!config) return 1;
  const log = createLogger();
  let sidecar: { stop(): Promise<void> };
  try {
    const unwritable = cluster.isWorker ? undefined : await keysDirProblem(config);
    if (unwritable !== undefined) throw new Error(unwritable);
    if (cluster.isWorker) sidecar = await runWorker(config, log);
    else if (config.workers > 1) sidecar = await runPrimary(config, log);
    else sidecar = await startSidecar(config, log);
  } catch (err) {
    if (err instanceof StoreLoadError) {
      printProblems(err.problems);
      for (const p of err.problems) log.fatal({ event: "start_failed", ...problemFields(p) }, formatStoreProblem(p));
    } else {
      process.stderr.write(`keyfence: cannot start: ${(err as Error).message}\n`);
      log.fatal({ event: "start_failed", err }, "cannot start");
    }
    await flushLogger(log);
    return 1;
  }
  const running = sidecar;
  const stop = (signal: string): void => {
    log.info({ event: "signal", signal }, `received ${signal}`);
    running
      .stop()
      .then(
        () => 0,
        (err: unknown) => {
          log.fatal({ err }, "error while stopping");
          return 1;
        },
      )
      .then(
        async (code) => {
          await flushLogger(log);
          process.exit(code);
        },
        () => process.exit(1),
      );
  };
  process.once("SIGTERM", () => stop("SIGTERM"));
  process.once("SIGINT", () => stop("SIGINT"));
  return undefined;
}

async function main(argv: readonly string[]): Promise<number | undefined> {
  // Loaded on demand: the QR code library costs every other command's start-up nothing.
  if (argv[0] === "operator") return (await import("./operator.js")).operatorCommand(argv.slice(1));
  if (argv[0] === "keys") return (await import("./keys.js")).runKeys(argv.slice(1));
  const args = parseArgs(argv);
  if (typeof args === "string") {
    process.stderr.write(`keyfence: ${args}\n${USAGE}\n`);
    return 2;
  }
  switch (args.command) {
    case "serve":
      return serve(args);
    case "check-config":
      return checkConfig(args);
    case "hash-key":
      return hashKey(args);
    case "healthcheck": {
      const config = await configOrExit(args);
      return config ? runHealthcheck(config) : 1;
    }
    case "version":
      process.stdout.write(`keyfence ${VERSION}\n`);
      return 0;
    case "help":
      process.stdout.write(`${USAGE}\n`);
      return 0;
    default:
      process.stderr.write(`keyfence: unknown command ${args.command}\n${USAGE}\n`);
      return 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    if (code !== undefined) process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`keyfence: ${(err as Error).stack ?? String(err)}\n`);
    process.exitCode = 1;
  },
);

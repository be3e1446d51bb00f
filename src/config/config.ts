/**
 * The configuration file (SPEC §2): schema, defaults, environment overrides and
 * warnings about risky settings. Every problem is returned at once, located.
 */
import { readFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { availableParallelism } from "node:os";
import { isAbsolute, relative, resolve, dirname } from "node:path";
import { compileTrust, type CompiledTrust } from "../clientip/resolve.js";
import { parseIp } from "../ip/address.js";
import { DEFAULT_MAX_ENTRIES } from "../ip/list.js";
import { readLimits, type Limits } from "./limits.js";
import { readProxyProtocol } from "./proxyprotocol.js";
import type { CredentialPlace } from "../policy/credential.js";
import type { Mode } from "../policy/decide.js";
import { parseCredentials } from "./credentials.js";
import { SHA256_HEX } from "../store/digest.js";
import { YamlFile, type Problem, type YamlPath } from "../util/yaml.js";
import { decisionWarnings, readDecision, type DecisionConfig } from "./decision.js";
import { AUDIT_FIELDS, FILE_AUDIT_FIELDS, readAuditSettings, type AuditSettings } from "./audit.js";
import { parseStoreConfig, STORE_FIELDS, type StoreConfig } from "./store.js";
import { readForwardIdentity, readRouteScopes } from "./routes.js";
import type { RouteScopes } from "../policy/routes.js";

/** A host and port to listen on. */
export interface ListenAddress {
  readonly host: string;
  readonly port: number;
}

/** An operator of the management API. */
export interface Operator {
  readonly name: string;
  readonly tokenSha256: string;
  readonly totpSecret: string | undefined;
}

/** The validated configuration, with defaults applied and paths made absolute. */
export interface Config {
  /** Absolute path of the configuration file. */
  readonly file: string;
  readonly listen: ListenAddress;
  readonly upstream: URL;
  /** Where allowed requests of sandbox keys go (SPEC §9); undefined: to `upstream` like any other. */
  readonly sandboxUpstream: URL | undefined;
  /** Send the checked key's identity upstream as X-Keyfence-Key-Id, -Key-Scopes and -Sandbox (SPEC §9). */
  readonly forwardIdentity: boolean;
  /** `route_scopes` (SPEC §9): which routes need which scope; no rules by default. */
  readonly routeScopes: RouteScopes;
  readonly trustedProxies: CompiledTrust;
  readonly pingPath: string;
  readonly mode: Mode;
  readonly upstreamTimeoutMs: number;
  readonly drainTimeoutMs: number;
  /** Log one line per proxied request (off by default). */
  readonly accessLog: boolean;
  /** Proxy processes: 1 runs everything in one process; more (or "auto": one per core) run a cluster. */
  readonly workers: number;
  readonly keys: {
    /** Absolute path of the keys file. */
    readonly file: string;
    /** How messages name the keys file. */
    readonly displayName: string;
    readonly unknown: "forward" | "reject";
    readonly missing: "forward" | "reject";
    readonly maxEntries: number;
    /** Where keys travel (`keys.credentials`). */
    readonly credentials: readonly CredentialPlace[];
    /** Where keys live (SPEC §6); with Redis, `file` is not read (keys, audit log and code state live in Redis). */
    readonly store: StoreConfig;
  };
  readonly admin:
    | {
        readonly listen: ListenAddress;
        readonly operators: readonly Operator[];
        /** Dashboard sessions end after this long without a request. */
        readonly sessionIdleMs: number;
        /** Dashboard sessions end this long after sign-in, whatever happens. */
        readonly sessionMaxAgeMs: number;
        /** How long a dashboard re-confirmation allows allow-list changes. */
        readonly confirmWindowMs: number;
        /** How the audit log is rotated. */
        readonly audit: AuditSettings;
      }
    | undefined;
  /** The decision endpoint for an existing ingress (SPEC §8); undefined: not started. */
  readonly decision: DecisionConfig | undefined;
  /** Peers that must open each connection with a PROXY protocol header (SPEC §7); `none` when nobody. */
  readonly proxyProtocol: CompiledTrust;
  /** Resource limits of the proxy listener (SPEC §4). */
  readonly limits: Limits;
  /** Risky but valid settings, to log at start. */
  readonly warnings: readonly string[];
}

/** Environment variables that override the file (so containers need no file edits). */
export const ENV = {
  config: "KEYFENCE_CONFIG",
  listen: "KEYFENCE_LISTEN",
  upstream: "KEYFENCE_UPSTREAM",
  adminListen: "KEYFENCE_ADMIN_LISTEN",
} as const;

const TOP_FIELDS = [
  "listen",
  "upstream",
  "trusted_proxies",
  "ping_path",
  "mode",
  "upstream_timeout_ms",
  "drain_timeout_ms",
  "access_log",
  "workers",
  "keys",
  "decision",
  "admin",
  "limits",
  "proxy_protocol",
  "route_scopes",
  "sandbox_upstream",
  "forward_identity",
];
/** Allowed operator names (`admin.operators[].name`). */
export const OPERATOR_NAME = /^[A-Za-z0-9_.@-]{1,64}$/;
const BASE32 = /^(?:[A-Z2-7]{8})*(?:[A-Z2-7]{2}={6}|[A-Z2-7]{4}={4}|[A-Z2-7]{5}={3}|[A-Z2-7]{7}=|[A-Z2-7]*)$/;

/** Shows `file` relative to the working directory when it lies below it. */
export function displayPath(file: string): string {
  const rel = relative(process.cwd(), file);
  return rel !== "" && !rel.startsWith("..") && !isAbsolute(rel) ? rel : file;
}

/** Parses `host:port` (`[v6]:port` for IPv6); returns undefined when malformed. */
export function parseListen(s: string): ListenAddress | undefined {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):(0|[1-9][0-9]{0,4})$/.exec(s);
  if (!m) return undefined;
  const port = Number(m[3]);
  if (port > 65535) return undefined;
  if (m[1] !== undefined) {
    const ip = parseIp(m[1]);
    return ip === undefined ? undefined : { host: m[1], port };
  }
  const host = m[2] as string;
  if (/^[0-9.]+$/.test(host) && parseIp(host) === undefined) return undefined;
  return { host, port };
}

/** True for loopback hosts (127.0.0.0/8, ::1, localhost). */
export function isLoopback(host: string): boolean {
  if (host === "localhost") return true;
  const ip = parseIp(host);
  if (ip === undefined) return false;
  if (ip.family === 4) return ip.w3 >>> 24 === 127;
  return ip.w0 === 0 && ip.w1 === 0 && ip.w2 === 0 && ip.w3 === 1;
}

/** How logs and messages name where keys live: the keys file, or the Redis server and prefix. */
export function keyStoreName(config: Config): string {
  const s = config.keys.store;
  return s.kind === "redis" ? `Redis ${s.displayUrl} (prefix ${JSON.stringify(s.prefix)})` : config.keys.displayName;
}

/** Formats a listen address for logs and URLs. */
export function formatListen(a: ListenAddress): string {
  return a.host.includes(":") ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}

/**
 * The result of loading a configuration. A failed one still names its keys
 * file when `keys.file` was readable, so check-config can check that too.
 */
export type ConfigResult =
  | { readonly ok: true; readonly config: Config }
  | { readonly ok: false; readonly problems: Problem[]; readonly keys?: Config["keys"] };

/** Reads and validates a configuration file, applying `env` overrides. */
export async function loadConfig(path: string, env: NodeJS.ProcessEnv = process.env): Promise<ConfigResult> {
  const file = resolve(path);
  const name = displayPath(file);
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    return {
      ok: false,
      problems: [
        { file: name, line: 1, col: 1, path: "", message: `cannot read the configuration: ${(err as Error).message}` },
      ],
    };
  }
  return parseConfig(file, text, env);
}

/** What the section readers of one {@link parseConfig} share. */
interface ParseContext {
  readonly y: YamlFile;
  readonly file: string;
  readonly env: NodeJS.ProcessEnv;
  /** Start-up warnings, in the order they are logged. */
  readonly warnings: string[];
  /** Problems with environment overrides. */
  readonly envProblems: Problem[];
  /** Problems in files the configuration names (admin.operators_file). */
  readonly fileProblems: Problem[];
}

/** `value`, unless the environment variable `key` is set and not empty. */
function fromEnv(cx: ParseContext, key: string, value: unknown): unknown {
  const v = cx.env[key];
  return v === undefined || v === "" ? value : v;
}

function envFail(cx: ParseContext, variable: string, value: string, message: string): void {
  cx.envProblems.push({ file: "(environment)", line: 0, col: 0, path: variable, value, message });
}

/** A listen address at `path`, its problem blamed on `variable` when that overrides it. */
function listenAt(cx: ParseContext, path: YamlPath, raw: unknown, variable: string): ListenAddress | undefined {
  if (typeof raw !== "string" || parseListen(raw) === undefined) {
    const message = 'must be "host:port" (an IPv6 host in brackets: "[::]:8080"), port 0-65535';
    if (cx.env[variable]) envFail(cx, variable, cx.env[variable] ?? "", message);
    else cx.y.fail(path, message, raw);
    return undefined;
  }
  return parseListen(raw);
}

/** Validates configuration text; `file` is its absolute path (paths inside are relative to it). */
export function parseConfig(file: string, text: string, env: NodeJS.ProcessEnv = {}): ConfigResult {
  const y = new YamlFile(displayPath(file), text);
  const root = y.value();
  if (y.problemCount > 0) return { ok: false, problems: y.problems };
  const top = y.mapping([], root ?? {}, TOP_FIELDS) ?? {};
  const cx: ParseContext = { y, file, env, warnings: [], envProblems: [], fileProblems: [] };
  const { warnings } = cx;

  const listen = listenAt(cx, ["listen"], fromEnv(cx, ENV.listen, top["listen"] ?? "127.0.0.1:8080"), ENV.listen);
  const upstream = readUpstream(cx, top["upstream"]);
  const trustedProxies = readTrustedProxies(cx, top["trusted_proxies"] ?? []);
  const { sandboxUpstream, forwardIdentity, routeScopes } = readWhatAndWhere(cx, top);

  const pingPath = top["ping_path"] ?? "/_keyfence/ping";
  if (typeof pingPath !== "string" || !/^\/[\x21-\x7e]*$/.test(pingPath) || /[?#]/.test(pingPath)) {
    y.fail(["ping_path"], "must be an absolute path such as /_keyfence/ping (no query)", pingPath);
  }
  const mode = top["mode"] ?? "enforce";
  if (mode !== "enforce" && mode !== "report") y.fail(["mode"], 'must be "enforce" or "report"', mode);
  if (mode === "report") warnings.push("mode is report: denials are logged and counted but requests are forwarded");

  const positiveInt = (field: string, value: unknown, min: number, max: number): number => {
    if (typeof value !== "number" || !Number.isInteger(value) || value < min || value > max) {
      y.fail([field], `must be an integer from ${min} to ${max}`, value);
      return min;
    }
    return value;
  };
  const upstreamTimeoutMs = positiveInt("upstream_timeout_ms", top["upstream_timeout_ms"] ?? 30000, 1, 3_600_000);
  const drainTimeoutMs = positiveInt("drain_timeout_ms", top["drain_timeout_ms"] ?? 10000, 0, 3_600_000);
  const w = top["workers"] ?? 1;
  let workers = 1;
  if (w === "auto") workers = availableParallelism();
  else if (typeof w === "number" && Number.isInteger(w) && w >= 1 && w <= 64) workers = w;
  else y.fail(["workers"], 'must be "auto" or an integer from 1 to 64', w);
  const accessLog = top["access_log"] ?? false;
  if (typeof accessLog !== "boolean") y.fail(["access_log"], "must be true or false", accessLog);

  const keys = readKeysSection(cx, top["keys"]);
  const admin = readAdminSection(cx, top["admin"], keys?.store.kind);
  const limits = readLimits(y, top["limits"]);
  const proxyProtocol = readProxyProtocol(y, top["proxy_protocol"], warnings);
  const hops = top["trusted_proxies"];
  if (proxyProtocol !== undefined && !proxyProtocol.none && typeof hops === "number" && hops > 0) {
    // The PROXY header's source is the first hop, and a hop count trusts it whatever its address.
    warnings.push(
      `trusted_proxies: ${String(hops)} with proxy_protocol trusts the address the PROXY header names as a proxy hop: right only when another HTTP proxy, which sets X-Forwarded-For, stands in front of the TCP balancer; when clients reach the balancer directly, any client chooses its own IP with X-Forwarded-For. List the proxies' addresses instead (or trusted_proxies: 0)`,
    );
  }

  const decision = readDecision(y, top["decision"], (path, raw) => listenAt(cx, path, raw, ""));
  if (trustedProxies) warnings.push(...decisionWarnings(decision, trustedProxies.none, isLoopback, formatListen));

  const problems = [...y.sortedProblems(), ...cx.fileProblems, ...cx.envProblems];
  if (problems.length > 0 || !listen || !upstream || !trustedProxies || !keys || !proxyProtocol || !routeScopes) {
    return keys ? { ok: false, problems, keys } : { ok: false, problems };
  }
  return {
    ok: true,
    config: {
      file,
      listen,
      upstream,
      sandboxUpstream,
      forwardIdentity,
      routeScopes,
      trustedProxies,
      pingPath: pingPath as string,
      mode: mode as Mode,
      upstreamTimeoutMs,
      drainTimeoutMs,
      accessLog: accessLog === true,
      workers,
      keys,
      admin,
      decision,
      limits,
      proxyProtocol,
      warnings,
    },
  };
}

/** `upstream` (or its environment override): required, an http(s) URL. */
function readUpstream(cx: ParseContext, raw: unknown): URL | undefined {
  const upstreamRaw = fromEnv(cx, ENV.upstream, raw);
  if (upstreamRaw === undefined) {
    cx.y.fail([], 'missing field "upstream" (the URL of the protected service)');
    return undefined;
  }
  const why = checkUpstream(upstreamRaw);
  if (typeof why !== "string") return why;
  if (cx.env[ENV.upstream]) envFail(cx, ENV.upstream, cx.env[ENV.upstream] ?? "", why);
  else cx.y.fail(["upstream"], why, upstreamRaw);
  return undefined;
}

/** The SPEC §9 settings: `sandbox_upstream`, `forward_identity` and `route_scopes` (undefined when invalid). */
function readWhatAndWhere(
  cx: ParseContext,
  top: Record<string, unknown>,
): { sandboxUpstream: URL | undefined; forwardIdentity: boolean; routeScopes: RouteScopes | undefined } {
  const { y } = cx;
  let sandboxUpstream: URL | undefined;
  const raw = top["sandbox_upstream"];
  if (raw !== undefined && raw !== null) {
    const why = checkUpstream(raw);
    if (typeof why === "string") y.fail(["sandbox_upstream"], why, raw);
    else sandboxUpstream = why;
  }
  return {
    sandboxUpstream,
    forwardIdentity: readForwardIdentity(y, top["forward_identity"]),
    routeScopes: readRouteScopes(y, top["route_scopes"], cx.warnings),
  };
}

/** `trusted_proxies`: a hop count or a list of names, addresses and ranges; warns when it trusts everyone. */
function readTrustedProxies(cx: ParseContext, tp: unknown): CompiledTrust | undefined {
  const { y } = cx;
  if (typeof tp === "number") {
    if (!Number.isInteger(tp) || tp < 0 || tp > 64) {
      y.fail(["trusted_proxies"], "a hop count must be an integer from 0 to 64", tp);
      return undefined;
    }
    return compileTrust(tp) as CompiledTrust;
  }
  if (!Array.isArray(tp)) {
    y.fail(["trusted_proxies"], "must be a list of names, addresses and CIDR ranges, or a hop count", tp);
    return undefined;
  }
  const compiled = compileTrust(tp);
  if (Array.isArray(compiled)) {
    for (const p of compiled) y.failAddress(["trusted_proxies", p.index], p.reason, p.value);
    return undefined;
  }
  for (const c of compiled.catchAll) {
    cx.warnings.push(
      `trusted_proxies trusts every address (${c}): any client can then choose its own IP with X-Forwarded-For`,
    );
  }
  return compiled;
}

/** The `keys` section: required, with at least `file` (optional with Redis). */
function readKeysSection(cx: ParseContext, keysRaw: unknown): Config["keys"] | undefined {
  const { y, file } = cx;
  if (keysRaw === undefined) {
    y.fail([], 'missing field "keys" (with at least keys.file)');
    return undefined;
  }
  const k = y.mapping(["keys"], keysRaw, ["file", "unknown", "missing", "max_entries", "credentials", ...STORE_FIELDS]);
  if (k === undefined) return undefined;
  const store = parseStoreConfig(y, k, dirname(file));
  // With Redis the keys file is optional and unused: keys, audit log and code state live in Redis.
  const f = k["file"] ?? (store?.kind === "redis" ? "keys.yaml" : undefined);
  if (f === undefined) y.fail(["keys"], 'missing field "file" (the keys file, relative to this file)');
  else if (typeof f !== "string" || f === "") y.fail(["keys", "file"], "must be a path", f);
  for (const field of ["unknown", "missing"] as const) {
    const v = k[field];
    if (v !== undefined && v !== "forward" && v !== "reject")
      y.fail(["keys", field], 'must be "forward" or "reject"', v);
  }
  let me = k["max_entries"] ?? DEFAULT_MAX_ENTRIES;
  if (typeof me !== "number" || !Number.isInteger(me) || me < 1 || me > 1_000_000) {
    y.fail(["keys", "max_entries"], "must be an integer from 1 to 1000000", me);
    me = DEFAULT_MAX_ENTRIES; // the keys file is still checked (check-config), with the default
  }
  const credentials = parseCredentials(y, k["credentials"]);
  if (typeof f !== "string" || f === "" || credentials === undefined || store === undefined) return undefined;
  const abs = resolve(dirname(file), f);
  return {
    file: abs,
    displayName: displayPath(abs),
    unknown: (k["unknown"] as "forward" | "reject" | undefined) ?? "forward",
    missing: (k["missing"] as "forward" | "reject" | undefined) ?? "forward",
    maxEntries: typeof me === "number" ? me : DEFAULT_MAX_ENTRIES,
    credentials,
    store,
  };
}

/** The optional `admin` section: listener, operators, session lifetimes, audit settings (for the `store` keys live in). */
function readAdminSection(cx: ParseContext, adminRaw: unknown, store: "file" | "redis" | undefined): Config["admin"] {
  const { y, file } = cx;
  if (adminRaw === undefined || adminRaw === null) return undefined;
  const a = y.mapping(["admin"], adminRaw, [
    "listen",
    "operators",
    "operators_file",
    "session_idle_timeout_s",
    "session_max_age_s",
    "confirm_window_s",
    ...AUDIT_FIELDS,
  ]);
  if (a === undefined) return undefined;
  const al = listenAt(
    cx,
    ["admin", "listen"],
    fromEnv(cx, ENV.adminListen, a["listen"] ?? "127.0.0.1:9090"),
    ENV.adminListen,
  );
  const names = new Set<string>();
  const operators = readOperators(y, ["admin", "operators"], a["operators"], names);
  const opsFile = a["operators_file"];
  if (opsFile !== undefined) {
    if (typeof opsFile !== "string" || opsFile === "") y.fail(["admin", "operators_file"], "must be a path", opsFile);
    else operators.push(...readOperatorsFile(resolve(dirname(file), opsFile), names, cx.fileProblems));
  }
  const seconds = (field: string, fallback: number, max: number): number => {
    const v = a[field] ?? fallback;
    if (typeof v !== "number" || !Number.isInteger(v) || v < 1 || v > max) {
      y.fail(["admin", field], `must be an integer number of seconds from 1 to ${max}`, v);
      return fallback * 1000;
    }
    return v * 1000;
  };
  const sessionIdleMs = seconds("session_idle_timeout_s", 1800, 86_400);
  const sessionMaxAgeMs = seconds("session_max_age_s", 43_200, 604_800);
  const confirmWindowMs = seconds("confirm_window_s", 300, 3600);
  const audit = readAuditSettings(y, a);
  // Each audit setting bounds one kind of log: say so when it has no effect.
  const onRedis = store === "redis";
  for (const field of onRedis ? FILE_AUDIT_FIELDS : (["audit_max_entries"] as const)) {
    if (a[field] !== undefined) {
      cx.warnings.push(
        `admin.${field} has no effect with keys.store: ${onRedis ? "redis (the audit log is a Redis stream, capped by admin.audit_max_entries)" : "file (it caps the Redis audit stream)"}`,
      );
    }
  }
  if (al === undefined) return undefined;
  if (!isLoopback(al.host)) {
    cx.warnings.push(
      `the admin listener ${formatListen(al)} is not on loopback: the management API and /metrics are reachable from the network`,
    );
  }
  return { listen: al, operators, sessionIdleMs, sessionMaxAgeMs, confirmWindowMs, audit };
}

function checkUpstream(raw: unknown): URL | string {
  const message = 'must be an http:// or https:// URL such as "http://127.0.0.1:3000"';
  if (typeof raw !== "string") return message;
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    return message;
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") return message;
  if (url.username || url.password) return "must not carry credentials";
  if (url.search || url.hash || raw.includes("?") || raw.includes("#")) return "must not have a query or fragment";
  return url;
}

/**
 * Reads `admin.operators_file`: a YAML list of operators as under
 * `admin.operators` (so a Kubernetes Secret or a file readable only by
 * keyfence can hold them). Read once at start; problems are located in it.
 */
function readOperatorsFile(file: string, names: Set<string>, problems: Problem[]): Operator[] {
  const name = displayPath(file);
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    problems.push({
      file: name,
      line: 1,
      col: 1,
      path: "",
      message: `cannot read the operators file: ${(err as Error).message}`,
    });
    return [];
  }
  const y = new YamlFile(name, text);
  const operators = y.problemCount > 0 ? [] : readOperators(y, [], y.value(), names);
  problems.push(...y.sortedProblems());
  return operators;
}

function readOperators(y: YamlFile, base: YamlPath, raw: unknown, names: Set<string>): Operator[] {
  if (raw === undefined || raw === null) return [];
  if (!Array.isArray(raw)) {
    y.fail(base, "must be a list of operators", raw);
    return [];
  }
  const out: Operator[] = [];
  raw.forEach((o: unknown, i) => {
    const at = [...base, i];
    const m = y.mapping(at, o, ["name", "token_sha256", "totp_secret"]);
    if (m === undefined) return;
    const name = m["name"];
    if (typeof name !== "string" || !OPERATOR_NAME.test(name)) {
      y.fail([...at, "name"], "must be 1 to 64 characters of A-Z, a-z, 0-9, _ . @ -", name);
    } else if (names.has(name)) y.fail([...at, "name"], "duplicate operator name", name);
    else names.add(name);
    const token = m["token_sha256"];
    if (typeof token !== "string" || !SHA256_HEX.test(token)) {
      y.fail(
        [...at, "token_sha256"],
        "must be 64 lowercase hex digits, the SHA-256 of the token (see `keyfence hash-key`)",
      );
    }
    const totp = m["totp_secret"];
    if (totp !== undefined && (typeof totp !== "string" || !BASE32.test(totp) || totp.replace(/=+$/, "").length < 16)) {
      // Not quoted: it is a secret.
      y.fail(
        [...at, "totp_secret"],
        "must be an RFC 4648 base32 secret (A-Z, 2-7) of at least 16 characters (80 bits)",
      );
    }
    if (typeof name === "string" && typeof token === "string") {
      out.push({ name, tokenSha256: token, totpSecret: typeof totp === "string" ? totp : undefined });
    }
  });
  return out;
}

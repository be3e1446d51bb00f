/**
 * Wiring: one running sidecar (store, metrics, proxy listener, admin listener)
 * from a validated configuration, and its orderly stop.
 */
import { readFileSync } from "node:fs";
import { basename, dirname, extname, join } from "node:path";
import pino, { type Logger } from "pino";
import { Registry } from "prom-client";
import { registerApi } from "../admin/api.js";
import { FileAuditLog, JournalAuditLog, type AuditLog } from "../admin/audit.js";
import { Authenticator } from "../admin/auth.js";
import { MemoryAttemptLimit, type AttemptLimit } from "../admin/attempts.js";
import { Confirmations, FileCodeState, type CodeState } from "../admin/confirm.js";
import { ExpiryWatcher, FileExpiryMarks, RedisExpiryMarks, type ExpiryMarks } from "../admin/expiry.js";
import { KeysService } from "../admin/keys.js";
import { AdminServer, type RouteInfo } from "../admin/server.js";
import { registerDashboard } from "../admin/dashboard/routes.js";
import { RedisAttemptLimit, RedisCodeState, RedisSessionStore } from "../admin/redis-state.js";
import { MemorySessionStore, type SessionStore } from "../admin/sessions.js";
import { formatListen, isLoopback, keyStoreName, type Config } from "../config/config.js";
import { DecisionServer } from "../decision/server.js";
import { Metrics } from "../metrics/metrics.js";
import { SourceTracker, type ObservedSource } from "../metrics/sources.js";
import { ProxyServer } from "../proxy/server.js";
import { FileKeyStore } from "../store/filestore.js";
import { DEFAULT_MATCHER_CACHE, MatcherCache, type Snapshot } from "../store/snapshot.js";
import { formatStoreProblem, problemFields, type KeyStore } from "../store/store.js";
import { isoTimestamp } from "../util/logline.js";
import { LineSink } from "../util/logsink.js";

/** The package version, read once. */
export const VERSION: string = (() => {
  try {
    const pkg = JSON.parse(readFileSync(new URL("../../../package.json", import.meta.url), "utf8")) as {
      version?: string;
    };
    return pkg.version ?? "0.0.0";
  } catch {
    return "0.0.0";
  }
})();

/** Files kept next to the keys file: the audit log, the confirmation-code state and the expiry marks (a directory). */
export function sideFiles(keysFile: string): { audit: string; otpState: string; expiries: string } {
  const stem = basename(keysFile, extname(keysFile));
  return {
    audit: join(dirname(keysFile), `${stem}.audit.jsonl`),
    otpState: join(dirname(keysFile), `${stem}.otp-state.json`),
    expiries: join(dirname(keysFile), `${stem}.expiries`),
  };
}

/**
 * The Redis store's module, loaded only when the keys live in Redis: the
 * `redis` client defines a class extending `String`, after which V8 keeps
 * `String.prototype` in dictionary mode for good, and every string method
 * called in optimised code (`charCodeAt`, `slice`...) costs a generic
 * property load: about 10,000 instructions per decision (BENCHMARKS.md).
 */
function redisStoreModule(): Promise<typeof import("../store/redis/store.js")> {
  return import("../store/redis/store.js");
}

/**
 * The key store `config` names; `log` receives what the store reports on its
 * own; `now` is the clock entries' expiry is judged by (tests inject one).
 */
export async function openStore(config: Config, log?: Logger, now: () => number = Date.now): Promise<KeyStore> {
  const cache = new MatcherCache(DEFAULT_MATCHER_CACHE, now);
  const where = config.keys.store;
  if (where.kind === "redis") {
    const { RedisKeyStore } = await redisStoreModule();
    return new RedisKeyStore({
      url: where.url,
      displayUrl: where.displayUrl,
      prefix: where.prefix,
      snapshotFile: where.snapshotFile,
      maxEntries: config.keys.maxEntries,
      journalMaxLen: config.admin?.audit.maxEntries,
      notice: (event, message, fields) => log?.warn({ event, ...fields }, message),
      cache,
    });
  }
  return new FileKeyStore({
    file: config.keys.file,
    displayName: config.keys.displayName,
    maxEntries: config.keys.maxEntries,
    cache,
  });
}

/** Verifications (of credentials, codes, sign-ins) allowed per client IP per minute before 429, successes refunded. */
export const AUTH_FAILURES_PER_MINUTE = 10;

/** A running sidecar (or one process of a cluster). */
export interface Sidecar {
  /** The proxy listener's address (undefined in a cluster primary, whose workers proxy). */
  readonly proxyAddress: { host: string; port: number } | undefined;
  /** The decision listener's address (undefined without `decision`, and in a cluster primary: workers decide). */
  readonly decisionAddress: { host: string; port: number } | undefined;
  readonly adminAddress: { host: string; port: number } | undefined;
  /** The admin listener's declared routes with their authentication (empty without one). */
  readonly adminRoutes: readonly RouteInfo[];
  readonly store: KeyStore;
  readonly metrics: Metrics;
  readonly registry: Registry;
  readonly sources: SourceTracker;
  /** Drains in-flight requests (bounded by `drain_timeout_ms`) and closes everything. */
  stop(): Promise<void>;
}

/**
 * What this process does: `single` runs the proxy and the admin listener;
 * in a cluster the `primary` runs the admin listener and the workers proxy.
 */
export type Role = "single" | "primary" | "worker";

/** How a cluster primary reaches its workers. */
export interface ClusterLink {
  /** `/metrics` of every process, merged. */
  metrics(): Promise<string>;
  /** A key's observed sources, merged over the workers. */
  sources(keyId: string): Promise<ObservedSource[]>;
  /** Makes every worker load the keys file now; resolves when all have. */
  syncWorkers(): Promise<void>;
}

/**
 * Creates the JSON-lines logger: lines go to stdout through a {@link LineSink}
 * (queued, written together once per event-loop turn), so a burst of denials
 * costs the request path no syscall each; what is still queued when the
 * process exits is written then.
 */
export function createLogger(destination?: NodeJS.WritableStream): Logger {
  const level = process.env["KEYFENCE_LOG_LEVEL"] ?? "info";
  const options = { level, base: { service: "keyfence" }, timestamp: isoTimestamp };
  if (destination !== undefined) return pino(options, destination);
  let log: Logger | undefined = undefined;
  const sink = new LineSink(1, {
    dropped: (n) => log?.error({ event: "log_lines_dropped", lines: n }, "log lines dropped: stdout did not keep up"),
  });
  process.once("exit", () => sink.flushSync());
  log = pino(options, sink);
  return log;
}

/** Writes out buffered log lines (call before the process exits). */
export function flushLogger(log: Logger): Promise<void> {
  return new Promise((resolve) => {
    log.flush(() => resolve());
  });
}

/** Starts a sidecar; rejects (after logging each problem) when the keys file is invalid or a port is taken. */
export async function startSidecar(
  config: Config,
  log: Logger,
  options: {
    role?: Role;
    cluster?: ClusterLink;
    /**
     * Milliseconds since the epoch, for entries' expiry (SPEC §9), confirmation codes and dashboard sessions
     * (SPEC §5); tests inject one to pass an expiry or a confirmation window at once, or to compute codes for
     * a known step.
     */
    now?: () => number;
  } = {},
): Promise<Sidecar> {
  const role = options.role ?? "single";
  const now = options.now ?? Date.now;
  const store = await openStore(config, log, now);
  const registry = new Registry();
  const metrics = new Metrics(registry, { version: VERSION, cache: store.matcherCache });
  watchStore(store, metrics, config, log);
  const snap = await store.load();
  metrics.storeHealth(store.health.up);
  const sources = new SourceTracker();
  const cluster = options.cluster;
  if (cluster) store.onCommit(() => cluster.syncWorkers());

  let proxy: ProxyServer | undefined;
  let proxyAddress: { host: string; port: number } | undefined;
  if (role !== "primary") {
    proxy = new ProxyServer({ config, store, metrics, sources, log });
    proxyAddress = await proxy.listen(config.listen.host, config.listen.port);
  }
  let decision: DecisionServer | undefined;
  let decisionAddress: { host: string; port: number } | undefined;
  let admin: AdminServer | undefined;
  let adminAddress: { host: string; port: number } | undefined;
  let expiries: ExpiryWatcher | undefined;
  try {
    if (config.decision && role !== "primary") {
      decision = new DecisionServer({ config, store, metrics, sources, log });
      decisionAddress = await decision.listen(config.decision.listen.host, config.decision.listen.port);
    }
    if (config.admin && role !== "worker") {
      ({ admin, expiries } = await buildAdmin(config, config.admin, { store, registry, sources, log, cluster, now }));
      adminAddress = await admin.listen(config.admin.listen.host, config.admin.listen.port);
    }
  } catch (err) {
    await proxy?.drain(0);
    await decision?.drain(0);
    throw err;
  }
  store.watch();
  expiries?.start();
  if (role !== "worker") {
    for (const w of config.warnings) log.warn({ event: "risky_setting" }, w);
  }
  if (role === "single") {
    logListening(log, config, {
      proxy: proxyAddress,
      admin: adminAddress,
      decision: decisionAddress,
      snapshot: snap,
      workers: 1,
    });
  }

  let stopping: Promise<void> | undefined;
  return {
    proxyAddress,
    decisionAddress,
    adminAddress,
    adminRoutes: admin?.routeTable() ?? [],
    store,
    metrics,
    registry,
    sources,
    stop() {
      stopping ??= (async () => {
        if (proxy || decision) {
          log.info({ event: "draining", timeout_ms: config.drainTimeoutMs }, "stopping: draining in-flight requests");
        }
        const [proxied, decided] = await Promise.all([
          proxy ? proxy.drain(config.drainTimeoutMs) : { cut: 0 },
          decision ? decision.drain(config.drainTimeoutMs) : { cut: 0 },
        ]);
        const cut = proxied.cut + decided.cut;
        await admin?.close();
        await expiries?.close();
        await store.close();
        log.info({ event: "stopped", cut_connections: cut }, "stopped");
      })();
      return stopping;
    },
  };
}

/** Logs and counts what the key store reports: reloads, health changes, refused reloads. */
function watchStore(store: KeyStore, metrics: Metrics, config: Config, log: Logger): void {
  store.subscribe({
    change: (snap, cause) => {
      metrics.snapshotInstalled(snap.size, snap.entries, cause === "reload");
      if (cause === "reload" && config.keys.store.kind === "file")
        log.info({ event: "store_reloaded", keys: snap.size, entries: snap.entries }, "keys file reloaded");
    },
    health: (h) => {
      metrics.storeHealth(h.up);
      if (h.up) log.info({ event: "store_up", store: store.description }, `key store ${store.description} is back`);
      else log.error({ event: "store_down", store: store.description }, h.reason);
    },
    reloadFailed: (problems) => {
      metrics.reloadFailed();
      for (const p of problems) {
        log.error({ event: "store_reload_failed", ...problemFields(p) }, formatStoreProblem(p));
      }
      log.error(
        { event: "store_reload_failed", problems: problems.length },
        "keys file change refused; the last good version keeps serving",
      );
    },
  });
}

/** What the admin listener is built from. */
interface AdminParts {
  readonly store: KeyStore;
  readonly registry: Registry;
  readonly sources: SourceTracker;
  readonly log: Logger;
  readonly cluster: ClusterLink | undefined;
  /** The clock of entries' expiry, the keys' timestamps, confirmation codes and dashboard sessions. */
  readonly now: () => number;
}

/**
 * Builds the admin listener (not yet listening): health, metrics, the
 * management API and the dashboard; and the watcher that audits expiries.
 */
async function buildAdmin(
  config: Config,
  adminConfig: NonNullable<Config["admin"]>,
  { store, registry, sources, log, cluster, now }: AdminParts,
): Promise<{ admin: AdminServer; expiries: ExpiryWatcher }> {
  const admin = new AdminServer({
    metrics: cluster ? () => cluster.metrics() : () => registry.metrics(),
    log,
    ready: () => ({ ...store.health, store: store.description }),
  });
  const sourcesOf = cluster
    ? (id: string) => cluster.sources(id)
    : (id: string) => Promise.resolve(sources.sources(id));
  const files = sideFiles(config.keys.file);
  // A store that keeps a journal (Redis) holds the audit log all replicas share.
  const audit: AuditLog = store.journal
    ? new JournalAuditLog(store.journal)
    : await FileAuditLog.open(files.audit, adminConfig.audit);
  const limit = { max: AUTH_FAILURES_PER_MINUTE, windowMs: 60_000 };
  const lifetimes = {
    idleMs: adminConfig.sessionIdleMs,
    maxAgeMs: adminConfig.sessionMaxAgeMs,
    confirmWindowMs: adminConfig.confirmWindowMs,
    now,
  };
  // With Redis, replicas share the limit, the code state and the sessions (SPEC §6).
  let attempts: AttemptLimit;
  // Wrong codes per operator: a limit of its own, so a flood of failures from new addresses (which the per-IP
  // limit forgets the oldest of past its size) never pushes an operator's count out.
  let operatorAttempts: AttemptLimit;
  let sessions: SessionStore;
  let codes: CodeState;
  let marks: ExpiryMarks;
  const redis = config.keys.store.kind === "redis" ? (await redisStoreModule()).RedisKeyStore : undefined;
  if (redis !== undefined && store instanceof redis) {
    attempts = new RedisAttemptLimit(store, limit);
    operatorAttempts = attempts; // keys in Redis expire on their own; none is pushed out by others
    sessions = new RedisSessionStore(store, adminConfig.operators, lifetimes);
    codes = new RedisCodeState(store);
    marks = new RedisExpiryMarks(store);
  } else {
    attempts = new MemoryAttemptLimit(limit);
    operatorAttempts = new MemoryAttemptLimit(limit);
    sessions = new MemorySessionStore(lifetimes);
    codes = new FileCodeState(files.otpState);
    marks = new FileExpiryMarks(files.expiries);
  }
  const expiries = new ExpiryWatcher({ store, audit, marks, log, now });
  const auth = new Authenticator(adminConfig.operators, store, attempts, sessions);
  const keys = new KeysService({
    store,
    audit,
    maxEntries: config.keys.maxEntries,
    globalMode: config.mode,
    log,
    now,
  });
  const confirmations = new Confirmations(codes, now, operatorAttempts, (operator) =>
    log.warn(
      { event: "code_attempts_exhausted", operator },
      `operator ${operator}: ${AUTH_FAILURES_PER_MINUTE} wrong confirmation codes within a minute, from any address; every code is refused until the minute has passed (is its token in someone else's hands?)`,
    ),
  );
  registerApi(admin, { keys, audit, auth, confirmations, sources: sourcesOf, trust: config.trustedProxies });
  registerDashboard(admin, {
    keys,
    audit,
    auth,
    sessions,
    confirmations,
    sources: sourcesOf,
    trust: config.trustedProxies,
    secureCookie: !isLoopback(adminConfig.listen.host),
    globalMode: config.mode,
    log,
  });
  return { admin, expiries };
}

/** How `trusted_proxies` reads in a log line. */
function trustSummary(config: Config): string | readonly string[] {
  const t = config.trustedProxies;
  return t.none ? "none" : t.ranges.length > 0 ? t.ranges : "hop count";
}

/** The start-up line (SPEC §1: the addresses keyfence listens on), for one process or a cluster. */
export function logListening(
  log: Logger,
  config: Config,
  at: {
    proxy: { host: string; port: number } | undefined;
    admin: { host: string; port: number } | undefined;
    decision?: { host: string; port: number } | undefined;
    snapshot: Snapshot;
    workers: number;
  },
): void {
  const proxy = at.proxy ? formatListen(at.proxy) : null;
  const admin = at.admin ? formatListen(at.admin) : null;
  const decision = at.decision ? formatListen(at.decision) : undefined;
  log.info(
    {
      event: "listening",
      proxy,
      admin,
      decision,
      upstream: config.upstream.href,
      mode: config.mode,
      keys: at.snapshot.size,
      allow_list_entries: at.snapshot.entries,
      keys_store: keyStoreName(config),
      workers: at.workers,
      trusted_proxies: trustSummary(config),
    },
    `keyfence ${VERSION} listening on http://${proxy ?? "-"}${at.workers > 1 ? ` with ${at.workers} workers` : ""}${decision ? `, decisions on http://${decision}` : ""}${admin ? `, admin on http://${admin}` : ""}`,
  );
}

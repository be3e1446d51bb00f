/**
 * Prometheus metrics. The registry is injected; every metric is documented
 * where it is created. Labels are bounded enums: never a secret, a key id or
 * a client address.
 */
import { collectDefaultMetrics, Counter, Gauge, type Registry } from "prom-client";
import { HistogramSeries, LeanCounter, LeanHistogram } from "./lean.js";
import type { Outcome } from "../policy/decide.js";
import type { MatcherCache } from "../store/snapshot.js";

/** Every decision label value, so each series exists from the start (at 0). */
export const OUTCOMES: readonly Outcome[] = [
  "allowed",
  "denied",
  "would_deny",
  "unknown_key",
  "missing_key",
  "invalid_client_ip",
  "bad_request",
  "missing_scope",
];

/** How a proxied request ended, the `outcome` label of the request histogram. */
export type RequestOutcome = "forwarded" | "answered" | "upstream_error" | "aborted";

/** Upstream failure kinds. */
export type UpstreamErrorKind = "connect" | "timeout" | "reset";

/** The `limit` label of keyfence_limited_total: which limit of SPEC §4 refused or cut something. */
export const LIMIT_KINDS = [
  "body_idle",
  "inflight_per_client",
  "queue",
  "connections",
  "connections_per_peer",
  "tunnel_idle",
] as const;

/** One of {@link LIMIT_KINDS}. */
export type LimitKind = (typeof LIMIT_KINDS)[number];

/** Sub-millisecond buckets for the enforcement step alone. */
const DECISION_BUCKETS = [1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3];
/** Buckets for whole requests: from 100 µs (keyfence's own answers) to upstream timeouts. */
const REQUEST_BUCKETS = [1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

/** All keyfence metrics on one registry. */
export class Metrics {
  private readonly decisions: LeanCounter<"decision">;
  private readonly decisionSlots: Record<Outcome, number>;
  private readonly requestDuration: Record<RequestOutcome, HistogramSeries>;
  private readonly decisionDuration: HistogramSeries;
  private readonly upstreamErrors: Record<UpstreamErrorKind, Counter.Internal>;
  /** What the in-flight gauge sums at scrape time, one reader per listener (see {@link countInflightWith}). */
  private readonly inflightReaders: Array<() => number> = [];
  /** What the open-connections gauge reads at scrape time. */
  private connectionsNow: () => number = () => 0;
  private readonly limitedBy: Record<LimitKind, Counter.Internal>;
  private readonly reloads: Record<"success" | "failure", Counter.Internal>;
  private readonly lastReload: Gauge;
  private readonly keys: Gauge;
  private readonly entries: Gauge;
  private readonly storeUp: Gauge;

  constructor(
    readonly registry: Registry,
    options: { version: string; cache?: MatcherCache; defaultMetrics?: boolean },
  ) {
    ({
      decisions: this.decisions,
      decisionSlots: this.decisionSlots,
      requestDuration: this.requestDuration,
      decisionDuration: this.decisionDuration,
    } = requestMetrics(registry));
    ({ upstreamErrors: this.upstreamErrors, limitedBy: this.limitedBy } = limitMetrics(
      registry,
      () => this.connectionsNow(),
      () => this.inflightReaders.reduce((n, read) => n + read(), 0),
    ));
    ({
      reloads: this.reloads,
      lastReload: this.lastReload,
      keys: this.keys,
      entries: this.entries,
      storeUp: this.storeUp,
    } = storeMetrics(registry, options.cache));
    /** keyfence_build_info{version,node}: constant 1. */
    new Gauge({
      name: "keyfence_build_info",
      help: "Build information.",
      labelNames: ["version", "node"],
      registers: [registry],
      aggregator: "first",
    })
      .labels(options.version, process.version)
      .set(1);
    if (options.defaultMetrics !== false) collectDefaultMetrics({ register: registry });
  }

  /** Counts one decision and how long it took. */
  decision(outcome: Outcome, seconds: number): void {
    this.decisions.incAt(this.decisionSlots[outcome]);
    this.decisionDuration.observe(seconds);
  }

  /** Records a finished request. */
  request(outcome: RequestOutcome, seconds: number): void {
    this.requestDuration[outcome].observe(seconds);
  }

  /** Counts an upstream failure of a forwarded request. */
  upstreamError(kind: UpstreamErrorKind): void {
    this.upstreamErrors[kind].inc();
  }

  /** Counts one request or connection refused or cut by `limit`. */
  limited(limit: LimitKind): void {
    this.limitedBy[limit].inc();
  }

  /** Makes the open-connections gauge read `count` at scrape time. */
  countConnectionsWith(count: () => number): void {
    this.connectionsNow = count;
  }

  /** Adds `count` (a listener's own count of requests in flight) to what the in-flight gauge sums at scrape time. */
  countInflightWith(count: () => number): void {
    this.inflightReaders.push(count);
  }

  /** Records a snapshot installed (at load, reload or write). */
  snapshotInstalled(keys: number, entries: number, reloaded: boolean): void {
    if (reloaded) this.reloads.success.inc();
    this.lastReload.set(Date.now() / 1000);
    this.keys.set(keys);
    this.entries.set(entries);
  }

  /** Records whether the key store is reachable (SPEC §6). */
  storeHealth(up: boolean): void {
    this.storeUp.set(up ? 1 : 0);
  }

  /** Counts a refused reload. */
  reloadFailed(): void {
    this.reloads.failure.inc();
  }
}

/** The decision counter and the request and decision histograms, registered on `registry`. */
function requestMetrics(registry: Registry): {
  decisions: LeanCounter<"decision">;
  decisionSlots: Record<Outcome, number>;
  requestDuration: Record<RequestOutcome, HistogramSeries>;
  decisionDuration: HistogramSeries;
} {
  /** keyfence_decisions_total{decision}: one per enforcement decision (SPEC §5). */
  const decisions = new LeanCounter(
    registry,
    "keyfence_decisions_total",
    "Enforcement decisions by result.",
    "decision",
    OUTCOMES,
  );
  const decisionSlots = Object.fromEntries(OUTCOMES.map((o) => [o, decisions.slot(o)])) as Record<Outcome, number>;

  /** keyfence_request_duration_seconds{outcome}: the whole proxied request, from headers in to response end. */
  const outcomes: RequestOutcome[] = ["forwarded", "answered", "upstream_error", "aborted"];
  const requestDuration = new LeanHistogram(
    registry,
    "keyfence_request_duration_seconds",
    "Duration of proxied requests, by how they ended.",
    REQUEST_BUCKETS,
    "outcome",
    outcomes,
  );
  const requestDurationOf = Object.fromEntries(outcomes.map((o) => [o, requestDuration.child(o)])) as Record<
    RequestOutcome,
    HistogramSeries
  >;

  /** keyfence_decision_duration_seconds: the enforcement step alone, from the request's arrival in keyfence's handler to the decision (request id, bearer, lookup, client IP, match). */
  const decisionDuration = new LeanHistogram(
    registry,
    "keyfence_decision_duration_seconds",
    "Time spent deciding one request.",
    DECISION_BUCKETS,
  ).child();
  return { decisions, decisionSlots, requestDuration: requestDurationOf, decisionDuration };
}

/** Upstream errors, limits and the gauges read at scrape time (`connectionsNow`, `inflightNow`), registered on `registry`. */
function limitMetrics(
  registry: Registry,
  connectionsNow: () => number,
  inflightNow: () => number,
): {
  upstreamErrors: Record<UpstreamErrorKind, Counter.Internal>;
  limitedBy: Record<LimitKind, Counter.Internal>;
} {
  const registers = [registry];
  /** keyfence_upstream_errors_total{kind}: forwarded requests that failed upstream. */
  const upstreamErrors = new Counter({
    name: "keyfence_upstream_errors_total",
    help: "Upstream failures by kind (connect, timeout, reset).",
    labelNames: ["kind"],
    registers,
  });
  const upstreamErrorsOf = {
    connect: upstreamErrors.labels("connect"),
    timeout: upstreamErrors.labels("timeout"),
    reset: upstreamErrors.labels("reset"),
  };
  for (const c of Object.values(upstreamErrorsOf)) c.inc(0);

  /** keyfence_open_connections: connections open on the proxy listener now (the `limits.connections` cap applies to it). */
  new Gauge({
    name: "keyfence_open_connections",
    help: "Connections open on the proxy listener.",
    registers,
    collect() {
      this.set(connectionsNow());
    },
  });

  /** keyfence_limited_total{limit}: requests refused or ended, and connections closed, by a limit of SPEC §4. */
  const limited = new Counter({
    name: "keyfence_limited_total",
    help: "Requests and connections refused or cut by a resource limit, by limit.",
    labelNames: ["limit"],
    registers,
  });
  const limitedBy = Object.fromEntries(LIMIT_KINDS.map((k) => [k, limited.labels(k)])) as Record<
    LimitKind,
    Counter.Internal
  >;
  for (const c of Object.values(limitedBy)) c.inc(0);

  /** keyfence_inflight_requests: requests being handled by the proxy listener now. */
  new Gauge({
    name: "keyfence_inflight_requests",
    help: "Proxied requests in flight.",
    registers,
    collect() {
      this.set(inflightNow());
    },
  });
  return { upstreamErrors: upstreamErrorsOf, limitedBy };
}

/** The key store's reloads, size and health, and the matcher cache's counters, registered on `registry`. */
function storeMetrics(
  registry: Registry,
  cache: MatcherCache | undefined,
): {
  reloads: Record<"success" | "failure", Counter.Internal>;
  lastReload: Gauge;
  keys: Gauge;
  entries: Gauge;
  storeUp: Gauge;
} {
  const registers = [registry];
  /** keyfence_store_reloads_total{result}: key store reloads after external changes. */
  const reloads = new Counter({
    name: "keyfence_store_reloads_total",
    help: "Key store reloads by result (success, failure).",
    labelNames: ["result"],
    registers,
  });
  const reloadsOf = { success: reloads.labels("success"), failure: reloads.labels("failure") };
  reloadsOf.success.inc(0);
  reloadsOf.failure.inc(0);

  /** keyfence_store_last_reload_timestamp_seconds: when the snapshot in force was installed. */
  const lastReload = new Gauge({
    name: "keyfence_store_last_reload_timestamp_seconds",
    help: "Unix time at which the key snapshot in force was installed.",
    registers,
    aggregator: "max",
  });
  /** keyfence_keys: keys in the snapshot in force. */
  // In a cluster every process holds the same store: merge gauges of it by max, not sum.
  const keys = new Gauge({ name: "keyfence_keys", help: "Keys in the store.", registers, aggregator: "max" });
  /** keyfence_allow_list_entries: allow-list entries over all keys. */
  const entries = new Gauge({
    name: "keyfence_allow_list_entries",
    help: "Allow-list entries over all keys.",
    registers,
    aggregator: "max",
  });

  /** keyfence_matcher_cache_hits_total / _misses_total: compiled allow-list lookups. */
  new Counter({
    name: "keyfence_matcher_cache_hits_total",
    help: "Allow-list matcher lookups served from the cache.",
    registers,
    collect() {
      this.reset();
      if (cache) this.inc(cache.hits);
    },
  });
  new Counter({
    name: "keyfence_matcher_cache_misses_total",
    help: "Allow-list matchers compiled on demand.",
    registers,
    collect() {
      this.reset();
      if (cache) this.inc(cache.misses);
    },
  });
  const storeUp = new Gauge({
    name: "keyfence_store_up",
    help: "1 when the key store's source (keys file or Redis) is reachable and holds its data, 0 during an outage.",
    registers,
    aggregator: "min",
  });
  storeUp.set(1);
  return { reloads: reloadsOf, lastReload, keys, entries, storeUp };
}

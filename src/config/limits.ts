/**
 * The `limits` section (SPEC §4): how much one client may hold of the proxy,
 * so it cannot starve the others. Validated like every section, every problem
 * at once.
 */
import type { YamlFile } from "../util/yaml.js";

/** Resource limits of the proxy listener (SPEC §4, `limits`). */
export interface Limits {
  /** Request bodies up to this size are read whole before an upstream connection is taken. */
  readonly bufferBodyBytes: number;
  /** A request body that sends nothing for this long ends the request (408). */
  readonly bodyIdleMs: number;
  /** Forwarded requests one client address may have in flight at once (more: 429). */
  readonly inflightPerClient: number;
  /** Longest wait for an upstream connection (then 503 upstream_busy). */
  readonly queueMs: number;
  /** Open connections on the proxy listener. */
  readonly connections: number;
  /** Open connections from one peer address. */
  readonly connectionsPerPeer: number;
  /** An upgraded tunnel with no traffic either way for this long is closed. */
  readonly tunnelIdleMs: number;
  /** The per-address counts take an IPv6 client as its network of this prefix length (128: each address alone). */
  readonly ipv6Prefix: number;
}

/** The SPEC's defaults. */
export const DEFAULT_LIMITS: Limits = {
  bufferBodyBytes: 65_536,
  bodyIdleMs: 10_000,
  inflightPerClient: 128,
  queueMs: 5_000,
  connections: 10_000,
  connectionsPerPeer: 1_000,
  tunnelIdleMs: 600_000,
  ipv6Prefix: 64,
};

/** Each YAML field, the Limits property it sets, and its range. */
const FIELDS: ReadonlyArray<readonly [string, keyof Limits, number, number]> = [
  ["buffer_body_bytes", "bufferBodyBytes", 0, 16 * 1024 * 1024],
  ["body_idle_ms", "bodyIdleMs", 1, 3_600_000],
  ["inflight_per_client", "inflightPerClient", 1, 1_000_000],
  ["queue_ms", "queueMs", 1, 3_600_000],
  ["connections", "connections", 1, 10_000_000],
  ["connections_per_peer", "connectionsPerPeer", 1, 10_000_000],
  ["tunnel_idle_ms", "tunnelIdleMs", 1, 86_400_000],
  ["ipv6_prefix", "ipv6Prefix", 32, 128],
];

/** Validates the `limits` mapping (absent: the defaults); problems go to `y`. */
export function readLimits(y: YamlFile, raw: unknown): Limits {
  if (raw === undefined || raw === null) return DEFAULT_LIMITS;
  const m = y.mapping(
    ["limits"],
    raw,
    FIELDS.map((f) => f[0]),
  );
  if (m === undefined) return DEFAULT_LIMITS;
  const out: Record<keyof Limits, number> = { ...DEFAULT_LIMITS };
  for (const [field, key, min, max] of FIELDS) {
    const v = m[field];
    if (v === undefined) continue;
    if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
      y.fail(["limits", field], `must be an integer from ${min} to ${max}`, v);
    } else out[key] = v;
  }
  if (out.connectionsPerPeer > out.connections) {
    y.fail(
      ["limits", "connections_per_peer"],
      `must not exceed limits.connections (${out.connections})`,
      out.connectionsPerPeer,
    );
  }
  return out;
}

/**
 * The share of `limits` one process enforces when `workers` processes share
 * the listener: every count divided (rounded up), so the whole cluster stays
 * within the configured figure; times are not divided.
 */
export function perProcess(limits: Limits, workers: number): Limits {
  if (workers <= 1) return limits;
  const share = (n: number): number => Math.max(1, Math.ceil(n / workers));
  return {
    ...limits,
    inflightPerClient: share(limits.inflightPerClient),
    connections: share(limits.connections),
    connectionsPerPeer: share(limits.connectionsPerPeer),
  };
}

/** One line for `check-config` and the start-up log. */
export function limitsSummary(l: Limits): string {
  return (
    `body buffered up to ${l.bufferBodyBytes} B, body idle ${l.bodyIdleMs} ms, ` +
    `${l.inflightPerClient} in flight per client, queue ${l.queueMs} ms, ` +
    `${l.connections} connections (${l.connectionsPerPeer} per peer), tunnel idle ${l.tunnelIdleMs} ms, ` +
    `an IPv6 client counted per /${l.ipv6Prefix}`
  );
}

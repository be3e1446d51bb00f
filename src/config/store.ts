/** `keys.store` and `keys.redis` (SPEC §6): where keys live. */
import { resolve } from "node:path";
import type { YamlFile } from "../util/yaml.js";

/** Fields of `keys` this module reads. */
export const STORE_FIELDS = ["store", "redis"] as const;

/** The Redis store's settings. */
export interface RedisStoreConfig {
  readonly kind: "redis";
  /** The connection URL as configured (may hold a password). */
  readonly url: string;
  /** The URL with any password replaced by `***`, for logs and messages. */
  readonly displayUrl: string;
  /** Every Redis key keyfence uses starts with it. */
  readonly prefix: string;
  /** Absolute path of the last good snapshot (written while up, read to start while Redis is down). */
  readonly snapshotFile: string | undefined;
}

/** Where keys live: the keys file (default) or Redis. */
export type StoreConfig = { readonly kind: "file" } | RedisStoreConfig;

/** The default `keys.redis.prefix`. */
export const DEFAULT_REDIS_PREFIX = "keyfence:";

/** `url` with its password (if any) replaced by `***`. */
export function redactUrl(url: URL): string {
  if (url.password === "") return url.href;
  const copy = new URL(url.href);
  copy.password = "***";
  return copy.href;
}

/**
 * Reads `keys.store` and `keys.redis` of the `keys` mapping `k` (paths
 * relative to `configDir`); reports problems on `y`; undefined when invalid.
 */
export function parseStoreConfig(y: YamlFile, k: Record<string, unknown>, configDir: string): StoreConfig | undefined {
  const kind = k["store"] ?? "file";
  const redisRaw = k["redis"];
  if (kind !== "file" && kind !== "redis") {
    y.fail(["keys", "store"], 'must be "file" or "redis"', kind);
    return undefined;
  }
  if (kind === "file") {
    if (redisRaw !== undefined && redisRaw !== null) {
      y.fail(["keys", "redis"], 'is only read with store: redis (keys.store is "file")');
      return undefined;
    }
    return { kind: "file" };
  }
  if (redisRaw === undefined || redisRaw === null) {
    y.fail(["keys"], 'missing field "redis" (with at least redis.url) for store: redis');
    return undefined;
  }
  const r = y.mapping(["keys", "redis"], redisRaw, ["url", "prefix", "snapshot_file"]);
  if (r === undefined) return undefined;
  const before = y.problemCount;
  const rawUrl = r["url"];
  let url: URL | undefined;
  if (rawUrl === undefined) y.fail(["keys", "redis"], 'missing field "url" (e.g. redis://127.0.0.1:6379/0)');
  else if (typeof rawUrl !== "string") y.fail(["keys", "redis", "url"], "must be a redis:// or rediss:// URL", rawUrl);
  else {
    try {
      url = new URL(rawUrl);
    } catch {
      url = undefined;
    }
    // Never quote the value: it may hold a password.
    if (url === undefined || (url.protocol !== "redis:" && url.protocol !== "rediss:") || url.hostname === "") {
      y.fail(
        ["keys", "redis", "url"],
        "must be a redis:// or rediss:// URL with a host, e.g. redis://127.0.0.1:6379/0",
      );
      url = undefined;
    }
  }
  const prefix = r["prefix"] ?? DEFAULT_REDIS_PREFIX;
  if (typeof prefix !== "string" || prefix.length > 200) {
    y.fail(["keys", "redis", "prefix"], "must be a string of at most 200 characters", prefix);
  }
  const snap = r["snapshot_file"];
  if (snap !== undefined && snap !== null && (typeof snap !== "string" || snap === "")) {
    y.fail(["keys", "redis", "snapshot_file"], "must be a path", snap);
  }
  if (y.problemCount > before || url === undefined || typeof prefix !== "string") return undefined;
  return {
    kind: "redis",
    url: url.href,
    displayUrl: redactUrl(url),
    prefix,
    snapshotFile: typeof snap === "string" && snap !== "" ? resolve(configDir, snap) : undefined,
  };
}

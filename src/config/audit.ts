/**
 * The audit log's settings under `admin` (SPEC §5, §6): `audit_rotate_bytes`
 * and `audit_keep` bound the file log; `audit_max_entries` caps the Redis
 * stream that replicas share with `keys.store: redis`.
 */
import type { YamlFile } from "../util/yaml.js";

/** How the audit log is bounded. */
export interface AuditSettings {
  /** The current file is rotated before an append would take it past this size. */
  readonly rotateBytes: number;
  /** Files kept in all, the current one included. */
  readonly keep: number;
  /** Entries the Redis stream keeps (about: trimmed with `MAXLEN ~`, so up to a few hundred more stay). */
  readonly maxEntries: number;
}

/** The defaults: rotate at 64 MiB, keep 8 files; 100,000 entries in Redis (tens of MB of Redis memory). */
export const AUDIT_DEFAULTS: AuditSettings = { rotateBytes: 64 * 1024 * 1024, keep: 8, maxEntries: 100_000 };

/** The fields {@link readAuditSettings} reads from the `admin` mapping. */
export const AUDIT_FIELDS = ["audit_rotate_bytes", "audit_keep", "audit_max_entries"] as const;

/** The fields that bound the file log only. */
export const FILE_AUDIT_FIELDS = ["audit_rotate_bytes", "audit_keep"] as const;

const MAX_ROTATE_BYTES = 2 ** 40;

/** Reads the audit settings of the `admin` mapping, recording a problem for each bad field (and using its default). */
export function readAuditSettings(y: YamlFile, admin: Readonly<Record<string, unknown>>): AuditSettings {
  const int = (field: (typeof AUDIT_FIELDS)[number], fallback: number, min: number, max: number): number => {
    const v = admin[field] ?? fallback;
    if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
      y.fail(["admin", field], `must be an integer from ${min} to ${max}`, v);
      return fallback;
    }
    return v;
  };
  return {
    rotateBytes: int("audit_rotate_bytes", AUDIT_DEFAULTS.rotateBytes, 1024, MAX_ROTATE_BYTES),
    keep: int("audit_keep", AUDIT_DEFAULTS.keep, 1, 1000),
    maxEntries: int("audit_max_entries", AUDIT_DEFAULTS.maxEntries, 100, 100_000_000),
  };
}

/** The audit log's settings under `admin` (SPEC §5): `audit_rotate_bytes` and `audit_keep`. */
import type { YamlFile } from "../util/yaml.js";

/** How the audit log is bounded. */
export interface AuditSettings {
  /** The current file is rotated before an append would take it past this size. */
  readonly rotateBytes: number;
  /** Files kept in all, the current one included. */
  readonly keep: number;
}

/** The defaults: rotate at 64 MiB, keep 8 files. */
export const AUDIT_DEFAULTS: AuditSettings = { rotateBytes: 64 * 1024 * 1024, keep: 8 };

/** The fields {@link readAuditSettings} reads from the `admin` mapping. */
export const AUDIT_FIELDS = ["audit_rotate_bytes", "audit_keep"] as const;

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
  };
}

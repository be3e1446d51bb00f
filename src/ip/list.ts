/** Validation of a whole `ip_allow_list`: every entry strict, duplicates merged, size bounded. */
import { formatCidr, IpError, parseCidr, type Cidr } from "./address.js";

/** One rejected entry: `index` is null for a problem of the list as a whole. */
export interface ListProblem {
  readonly index: number | null;
  readonly value: unknown;
  readonly reason: string;
}

/** A valid list: canonical entries in first-seen order and their parsed ranges. */
export interface AllowList {
  readonly entries: readonly string[];
  readonly cidrs: readonly Cidr[];
}

/** Default bound on entries per key (SPEC §2 `keys.max_entries`). */
export const DEFAULT_MAX_ENTRIES = 1000;

/**
 * Validates raw entries; returns the canonical list or every problem found.
 * The entry count is checked after duplicates (also across spellings) merge.
 */
export function parseAllowList(raw: readonly unknown[], maxEntries = DEFAULT_MAX_ENTRIES): AllowList | ListProblem[] {
  const problems: ListProblem[] = [];
  const seen = new Set<string>();
  const entries: string[] = [];
  const cidrs: Cidr[] = [];
  raw.forEach((value, index) => {
    if (typeof value !== "string") {
      problems.push({ index, value, reason: "must be a string (an IP address or CIDR range)" });
      return;
    }
    const parsed = parseCidr(value);
    if (parsed instanceof IpError) {
      problems.push({ index, value, reason: parsed.reason });
      return;
    }
    const canonical = formatCidr(parsed);
    if (seen.has(canonical)) return;
    seen.add(canonical);
    entries.push(canonical);
    cidrs.push(parsed);
  });
  if (problems.length === 0 && entries.length > maxEntries) {
    problems.push({
      index: null,
      value: undefined,
      reason: `has ${entries.length} distinct entries, more than the limit of ${maxEntries} (keys.max_entries)`,
    });
  }
  return problems.length > 0 ? problems : { entries, cidrs };
}

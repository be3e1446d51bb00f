/**
 * Allow-list entries people can live with (SPEC §9): an `ip_allow_list` item
 * is a string or `{entry, note, expires_at}`, in the keys file and the
 * management API alike. One parser for both, so they accept exactly the same
 * items; an entry stops matching at its `expires_at` second.
 */
import { formatCidr, IpError, parseCidr } from "../ip/address.js";
import { parseAllowList, type AllowList } from "../ip/list.js";
import { noteProblem } from "./keyfields.js";

/** The note and expiry of one entry; an entry without either has no details. */
export interface EntryDetails {
  readonly note?: string;
  /** RFC 3339 with whole seconds and an explicit offset, as accepted. */
  readonly expiresAt?: string;
}

/** Details by canonical entry, holding only entries that have a note or an expiry. */
export type EntryDetailsMap = Readonly<Record<string, EntryDetails>>;

/** Fields an object item may have. */
export const ENTRY_FIELDS = ["entry", "note", "expires_at"] as const;

/** One problem with an item: `index` null for the list as a whole; `field` names the item's field at fault. */
export interface EntryProblem {
  readonly index: number | null;
  readonly field?: string;
  /** True when `field` is not a field an item may have. */
  readonly unknownField?: boolean;
  readonly value: unknown;
  readonly reason: string;
}

/** A valid list: the canonical entries and their ranges, plus the details of those that have any. */
export interface ParsedEntries extends AllowList {
  readonly details: EntryDetailsMap | undefined;
}

const EXPIRY = /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:([Zz])|([+-])(\d{2}):(\d{2}))$/;

/**
 * The instant (ms since the epoch) of an `expires_at`, or NaN when it is not
 * RFC 3339 with whole seconds and an explicit `Z` or `±hh:mm` offset naming a
 * real calendar date and time (no leap second, no 24:00).
 */
export function expiryInstant(s: string): number {
  const m = EXPIRY.exec(s);
  if (m === null) return NaN;
  const [y, mo, d, h, mi, sec] = m.slice(1, 7).map(Number) as [number, number, number, number, number, number];
  const utc = Date.UTC(y, mo - 1, d, h, mi, sec);
  const back = new Date(utc);
  if (back.getUTCFullYear() !== y || back.getUTCMonth() !== mo - 1 || back.getUTCDate() !== d) return NaN;
  if (h > 23 || mi > 59 || sec > 59) return NaN;
  if (m[7] !== undefined) return utc;
  const oh = Number(m[9]);
  const om = Number(m[10]);
  if (oh > 23 || om > 59) return NaN;
  return utc - (m[8] === "-" ? -1 : 1) * (oh * 60 + om) * 60_000;
}

/** What `expires_at` must look like, for messages. */
export const EXPIRY_FORMAT = "an RFC 3339 time with seconds and an offset, such as 2026-12-31T18:00:00Z";

/**
 * Validates raw `ip_allow_list` items (strings or `{entry, note, expires_at}`);
 * returns the canonical list with its details, or every problem found. Plain
 * strings that repeat an entry merge as before; an entry repeated where
 * either occurrence carries a note or an expiry is a problem (which one
 * would hold?). `null` note or expiry means none.
 */
export function parseEntries(raw: readonly unknown[], maxEntries: number): ParsedEntries | EntryProblem[] {
  const problems: EntryProblem[] = [];
  const addresses: unknown[] = [];
  /** The details each item gives, by position. */
  const given: (EntryDetails | undefined)[] = [];
  raw.forEach((item, index) => {
    if (item === null || typeof item !== "object" || Array.isArray(item)) {
      addresses.push(item);
      given.push(undefined);
      return;
    }
    const o = item as Record<string, unknown>;
    const before = problems.length;
    for (const k of Object.keys(o)) {
      if (!(ENTRY_FIELDS as readonly string[]).includes(k)) {
        problems.push({
          index,
          field: k,
          unknownField: true,
          value: o[k],
          reason: `unknown field; allowed: ${ENTRY_FIELDS.join(", ")}`,
        });
      }
    }
    if (!("entry" in o))
      problems.push({ index, value: item, reason: 'missing field "entry" (an IP address or CIDR range)' });
    const note = o["note"];
    const noteWhy = note === undefined || note === null ? undefined : noteProblem(note);
    if (noteWhy !== undefined) problems.push({ index, field: "note", value: note, reason: noteWhy });
    const exp = o["expires_at"];
    if (exp !== undefined && exp !== null && (typeof exp !== "string" || Number.isNaN(expiryInstant(exp)))) {
      problems.push({ index, field: "expires_at", value: exp, reason: `must be ${EXPIRY_FORMAT}` });
    }
    addresses.push(o["entry"]);
    if (problems.length > before) {
      given.push(undefined);
      return;
    }
    const details: { note?: string; expiresAt?: string } = {};
    if (typeof note === "string") details.note = note;
    if (typeof exp === "string") details.expiresAt = exp;
    given.push(details.note === undefined && details.expiresAt === undefined ? undefined : details);
  });
  // The addresses themselves: one strict parser, positions kept.
  const list = parseAllowList(addresses, Number.MAX_SAFE_INTEGER);
  if (Array.isArray(list)) {
    for (const p of list) {
      const index = p.index;
      const isObject =
        index !== null && raw[index] !== null && typeof raw[index] === "object" && !Array.isArray(raw[index]);
      if (isObject && p.value === undefined) continue; // "missing entry", said above
      problems.push({ index, field: isObject ? "entry" : undefined, value: p.value, reason: p.reason });
    }
  }
  // Which item gave each canonical entry, and the details that go with it.
  const first = new Map<string, number>();
  const details: Record<string, EntryDetails> = {};
  let any = false;
  addresses.forEach((a, i) => {
    const c = typeof a === "string" ? parseCidr(a) : undefined;
    if (c === undefined || c instanceof IpError) return;
    const entry = formatCidr(c);
    const d = given[i];
    const seen = first.get(entry);
    if (seen !== undefined) {
      if (d !== undefined || details[entry] !== undefined) {
        problems.push({
          index: i,
          value: raw[i],
          reason: `repeats ${entry} (ip_allow_list[${seen}]); give each entry once`,
        });
      }
      return;
    }
    first.set(entry, i);
    if (d !== undefined) {
      details[entry] = d;
      any = true;
    }
  });
  if (problems.length > 0) return problems;
  const ok = list as AllowList;
  if (problems.length === 0 && ok.entries.length > maxEntries) {
    problems.push({
      index: null,
      value: undefined,
      reason: `has ${ok.entries.length} distinct entries, more than the limit of ${maxEntries} (keys.max_entries)`,
    });
  }
  if (problems.length > 0) return problems;
  return { entries: ok.entries, cidrs: ok.cidrs, details: any ? details : undefined };
}

/** The expiry instants (ms) of `details`' entries that have one. */
export function expiries(details: EntryDetailsMap | undefined): { entry: string; at: number }[] {
  if (details === undefined) return [];
  const out: { entry: string; at: number }[] = [];
  for (const [entry, d] of Object.entries(details)) {
    if (d.expiresAt !== undefined) out.push({ entry, at: expiryInstant(d.expiresAt) });
  }
  return out;
}

/** The entries of `list` in force at `now` (ms): those without an expiry or expiring later. */
export function activeEntries(list: readonly string[], details: EntryDetailsMap | undefined, now: number): string[] {
  if (details === undefined) return [...list];
  return list.filter((e) => {
    const at = details[e]?.expiresAt;
    return at === undefined || now < expiryInstant(at);
  });
}

/** The earliest expiry in `details` later than `now`, or Infinity. */
export function nextExpiry(details: EntryDetailsMap | undefined, now: number): number {
  let next = Infinity;
  for (const { at } of expiries(details)) if (at > now && at < next) next = at;
  return next;
}

/** The items of a list as the keys file and exports write them: a string, or an object when it has details. */
export function entryItems(
  list: readonly string[],
  details: EntryDetailsMap | undefined,
): (string | { entry: string; note?: string; expires_at?: string })[] {
  return list.map((entry) => {
    const d = details?.[entry];
    if (d === undefined) return entry;
    const o: { entry: string; note?: string; expires_at?: string } = { entry };
    if (d.note !== undefined) o.note = d.note;
    if (d.expiresAt !== undefined) o.expires_at = d.expiresAt;
    return o;
  });
}

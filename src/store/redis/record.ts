/**
 * A key record as the Redis store holds it: the lean JSON text of
 * {@link encodeRecord} under the key's id, and its reading back.
 */
import { expiryInstant, type EntryDetails, type EntryDetailsMap } from "../entries.js";
import { hexOfDigest, parseDigest } from "../digest.js";
import { IpError, parseCidr } from "../../ip/address.js";
import type { KeyRecord } from "../keysfile.js";

/**
 * A record as stored in Redis: `[name, secret_sha256, scopes, ip_allow_list,
 * mode, created_at, updated_at]`, then `1` for a sandbox key, then the
 * entries' details (`{entry: {note?, expires_at?}}`) when any entry has some,
 * with `0` in the sandbox place for a key outside the sandbox (the id is the
 * field). So 7, 8 (`1`) or 9 elements.
 */
export function encodeRecord(r: KeyRecord): string {
  const fields: unknown[] = [
    r.name,
    hexOfDigest(r.secretDigest),
    r.scopes,
    r.ipAllowList,
    r.mode ?? 0,
    r.createdAt ?? 0,
    r.updatedAt ?? 0,
  ];
  const details = r.entryDetails !== undefined && Object.keys(r.entryDetails).length > 0 ? r.entryDetails : undefined;
  if (r.sandbox === true || details !== undefined) fields.push(r.sandbox === true ? 1 : 0);
  if (details !== undefined) fields.push(encodeDetails(details));
  return JSON.stringify(fields);
}

function encodeDetails(details: EntryDetailsMap): Record<string, { note?: string; expires_at?: string }> {
  const out: Record<string, { note?: string; expires_at?: string }> = {};
  for (const [entry, d] of Object.entries(details)) {
    out[entry] = {
      ...(d.note === undefined ? {} : { note: d.note }),
      ...(d.expiresAt === undefined ? {} : { expires_at: d.expiresAt }),
    };
  }
  return out;
}

/** The details encoded by {@link encodeDetails} for entries of `list`; undefined when malformed. */
function decodeDetails(v: unknown, list: readonly string[]): EntryDetailsMap | undefined {
  if (v === null || typeof v !== "object" || Array.isArray(v) || Object.keys(v).length === 0) return undefined;
  const out: Record<string, EntryDetails> = {};
  for (const [entry, raw] of Object.entries(v as Record<string, unknown>)) {
    if (!list.includes(entry) || raw === null || typeof raw !== "object") return undefined;
    const { note, expires_at: exp } = raw as { note?: unknown; expires_at?: unknown };
    if ((note !== undefined && typeof note !== "string") || (exp !== undefined && typeof exp !== "string")) {
      return undefined;
    }
    if (typeof exp === "string" && Number.isNaN(expiryInstant(exp))) return undefined;
    out[entry] = { ...(note === undefined ? {} : { note }), ...(exp === undefined ? {} : { expiresAt: exp }) };
  }
  return out;
}

/**
 * A stored record that cannot be read (corrupt, or written by a newer
 * version). Never skipped: a skipped key would be unknown, and unknown keys
 * may be forwarded unchecked (`keys.unknown: forward`), so it is an outage.
 */
export class UnreadableRecordError extends Error {}

/** The record of key `id` stored as `text`; throws {@link UnreadableRecordError} when it cannot be read. */
export function readable(id: string, text: string): KeyRecord {
  const rec = decodeRecord(id, text);
  if (rec === undefined)
    throw new UnreadableRecordError(
      `cannot read the record of key ${JSON.stringify(id)} (corrupt, or written by a newer keyfence)`,
    );
  return rec;
}

/**
 * {@link readable} of `text`, or `previous` itself when it is stored as
 * exactly `text` (records round-trip, so it reads the same): a resync of
 * keys that did not change makes no new records, and so neither doubles the
 * heap while the old snapshot serves nor leaves a million records to collect.
 */
export function readableReusing(previous: KeyRecord | undefined, id: string, text: string): KeyRecord {
  return previous !== undefined && previous.id === id && encodeRecord(previous) === text
    ? previous
    : readable(id, text);
}

const isStrings = (x: unknown): x is string[] => Array.isArray(x) && x.every((s) => typeof s === "string");
/**
 * True when every entry is one the keys file and the API accept (an address or
 * a range, no host bits, no catch-all): a list written into Redis by other
 * means is checked where it is read, never first when a request compiles it.
 */
const isEntries = (list: readonly string[]): boolean => list.every((e) => !(parseCidr(e) instanceof IpError));
const isOptional = (x: unknown): x is string | 0 => x === 0 || typeof x === "string";

/** The record of key `id` stored as `text`; undefined when `text` is not a well-formed lean record. */
export function decodeRecord(id: string, text: string): KeyRecord | undefined {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (!Array.isArray(v) || v.length < 7 || v.length > 9) return undefined;
  const [name, sha, scopes, list, mode, created, updated, sandbox, rawDetails] = v as unknown[];
  if (v.length === 8 && sandbox !== 1) return undefined;
  if (v.length === 9 && sandbox !== 0 && sandbox !== 1) return undefined;
  const digest = typeof sha === "string" ? parseDigest(sha) : undefined;
  if (typeof name !== "string" || digest === undefined || !isStrings(scopes) || !isStrings(list)) return undefined;
  if (!isEntries(list)) return undefined;
  if ((mode !== 0 && mode !== "enforce" && mode !== "report") || !isOptional(created) || !isOptional(updated)) {
    return undefined;
  }
  const plain: KeyRecord = {
    id,
    name,
    secretDigest: digest,
    scopes,
    ipAllowList: list,
    mode: mode === 0 ? undefined : mode,
    createdAt: created === 0 ? undefined : created,
    updatedAt: updated === 0 ? undefined : updated,
  };
  // Most records: that one literal, no intermediate object. The rest add their entry details or sandbox flag.
  if (rawDetails === undefined && sandbox !== 1) return plain;
  const entryDetails = rawDetails === undefined ? undefined : decodeDetails(rawDetails, list);
  if (rawDetails !== undefined && entryDetails === undefined) return undefined;
  return {
    ...plain,
    ...(entryDetails === undefined ? {} : { entryDetails }),
    ...(sandbox === 1 ? { sandbox: true } : {}),
  };
}

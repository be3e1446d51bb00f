/** The YAML keys file (SPEC §3): parsing and validation into key records, every problem located. */
import { readFile } from "node:fs/promises";
import type { Mode } from "../policy/decide.js";
import { digestOfHex, SHA256_HEX, type Digest } from "./digest.js";
import { YamlFile, type Problem } from "../util/yaml.js";
import { parseEntries, type EntryDetailsMap } from "./entries.js";
import { isMode, nameProblem, scopesProblems } from "./keyfields.js";

/** One API key as stored: never the secret, only its SHA-256. */
export interface KeyRecord {
  readonly id: string;
  readonly name: string;
  /** The secret's SHA-256 (the keys file's `secret_sha256`), held as its bytes. */
  readonly secretDigest: Digest;
  readonly scopes: readonly string[];
  /** Canonical, deduplicated entries; empty means no restriction. */
  readonly ipAllowList: readonly string[];
  /** Notes and expiries of the entries that have any (SPEC §9); absent when none has. */
  readonly entryDetails?: EntryDetailsMap;
  /** The key's own mode; undefined inherits the global `mode`. */
  readonly mode: Mode | undefined;
  /** A sandbox key (SPEC §9): its allowed requests go to `sandbox_upstream`; absent means false. */
  readonly sandbox?: boolean;
  readonly createdAt: string | undefined;
  readonly updatedAt: string | undefined;
}

/**
 * A copy of `r` with no slack, its name, lists and update time replaced by
 * the ones given (pass its own to keep them): a record of exactly the eight fields
 * every key has (no entry details, no sandbox field) is built as one literal,
 * 88 bytes of heap where an object spread takes 104; any other is spread.
 * Equal to `{ ...r, name, ipAllowList, scopes, updatedAt }`, keys in the same order.
 */
export function leanRecord(
  r: KeyRecord,
  name: string,
  ipAllowList: readonly string[],
  scopes: readonly string[],
  updatedAt: string | undefined,
): KeyRecord {
  const plain = !("entryDetails" in r) && !("sandbox" in r) && "mode" in r && "createdAt" in r && "updatedAt" in r;
  if (!plain) return { ...r, name, ipAllowList, scopes, updatedAt };
  return {
    id: r.id,
    name,
    secretDigest: r.secretDigest,
    scopes,
    ipAllowList,
    mode: r.mode,
    createdAt: r.createdAt,
    updatedAt,
  };
}

/** Allowed key ids. */
export const KEY_ID = /^[A-Za-z0-9_-]{1,64}$/;
const RFC3339 = /^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$/;

/** Field names a key entry may have. */
export const KEY_FIELDS = [
  "id",
  "name",
  "secret_sha256",
  "scopes",
  "ip_allow_list",
  "mode",
  "sandbox",
  "created_at",
  "updated_at",
] as const;

/** True when `s` is an RFC 3339 timestamp that names a real instant. */
export function isRfc3339(s: string): boolean {
  return RFC3339.test(s) && !Number.isNaN(Date.parse(s));
}

/** The result of reading a keys file: records when valid, problems otherwise. */
export type KeysFileResult =
  { readonly ok: true; readonly keys: KeyRecord[] } | { readonly ok: false; readonly problems: Problem[] };

/**
 * Reads a keys file's text; a missing or unreadable file is one problem at
 * 1:1 (every reader — start-up, reload, loader thread, check-config — says it
 * the same way).
 */
export async function readKeysText(
  file: string,
  name: string,
): Promise<{ readonly ok: true; readonly text: string } | { readonly ok: false; readonly problems: Problem[] }> {
  try {
    return { ok: true, text: await readFile(file, "utf8") };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const message =
      code === "ENOENT"
        ? "cannot read the keys file: it does not exist"
        : `cannot read the keys file: ${(err as Error).message}`;
    return { ok: false, problems: [{ file: name, line: 1, col: 1, path: "", message }] };
  }
}

/** Parses and validates the text of a keys file; `name` is how messages refer to it. */
export function parseKeysFile(name: string, text: string, maxEntries: number): KeysFileResult {
  const y = new YamlFile(name, text, { fast: true });
  const root = y.value();
  if (y.problemCount > 0) return { ok: false, problems: y.problems };
  if (root === null || root === undefined) {
    y.fail([], 'the keys file is empty; write "keys: []" for a store without keys');
    return { ok: false, problems: y.problems };
  }
  const top = y.mapping([], root, ["keys"]);
  const keys: KeyRecord[] = [];
  if (top !== undefined) {
    const list = top["keys"];
    if (list === undefined) y.fail([], 'missing field "keys"');
    else if (list === null) {
      // `keys:` with nothing under it: no keys.
    } else if (!Array.isArray(list)) y.fail(["keys"], "must be a list of keys", list);
    else {
      const ids = new Map<string, number>();
      const hashes = new Map<string, number>();
      list.forEach((raw: unknown, i) => {
        const fields = raw !== null && typeof raw === "object" ? (raw as Record<string, unknown>) : {};
        const id = fields["id"];
        const hash = fields["secret_sha256"];
        if (typeof id === "string") {
          const seen = ids.get(id);
          if (seen !== undefined) y.fail(["keys", i, "id"], `duplicate id (also keys[${seen}])`, id);
          else ids.set(id, i);
        }
        if (typeof hash === "string" && SHA256_HEX.test(hash)) {
          const seen = hashes.get(hash);
          if (seen !== undefined) y.fail(["keys", i, "secret_sha256"], `the same secret as keys[${seen}]`);
          else hashes.set(hash, i);
        }
        const rec = readKey(y, i, raw, maxEntries);
        if (rec !== undefined) keys.push(rec);
      });
    }
  }
  if (y.problemCount > 0) return { ok: false, problems: y.sortedProblems() };
  return { ok: true, keys };
}

function readKey(y: YamlFile, i: number, raw: unknown, maxEntries: number): KeyRecord | undefined {
  const at = ["keys", i] as const;
  const before = y.problemCount;
  const m = y.mapping(at, raw, KEY_FIELDS);
  if (m === undefined) return undefined;
  const id = m["id"];
  if (id === undefined) y.fail(at, 'missing field "id"');
  else if (typeof id !== "string" || !KEY_ID.test(id)) {
    y.fail([...at, "id"], "must be 1 to 64 characters of A-Z, a-z, 0-9, _ and -", id);
  }
  const name = m["name"];
  const nameWhy = name === undefined ? undefined : nameProblem(name);
  if (nameWhy !== undefined) y.fail([...at, "name"], nameWhy, name);
  const secret = m["secret_sha256"];
  if (secret === undefined) y.fail(at, 'missing field "secret_sha256"');
  else if (typeof secret !== "string" || !SHA256_HEX.test(secret)) {
    // Never quote it: a plaintext secret pasted here by mistake must not reach a log.
    y.fail(
      [...at, "secret_sha256"],
      "must be 64 lowercase hex digits, the SHA-256 of the secret (see `keyfence hash-key`)",
    );
  }
  const scopes = m["scopes"];
  if (scopes !== undefined && scopes !== null) {
    for (const p of scopesProblems(scopes)) {
      if (p.index === undefined) y.fail([...at, "scopes"], p.message, Array.isArray(scopes) ? undefined : scopes);
      else y.fail([...at, "scopes", p.index], p.message, (scopes as unknown[])[p.index]);
    }
  }
  let ipAllowList: readonly string[] = [];
  let entryDetails: EntryDetailsMap | undefined;
  const list = m["ip_allow_list"];
  if (list !== undefined && list !== null) {
    if (!Array.isArray(list)) {
      y.fail([...at, "ip_allow_list"], "must be a list of addresses and CIDR ranges", list);
    } else {
      const parsed = parseEntries(list, maxEntries);
      if (Array.isArray(parsed)) {
        for (const p of parsed) {
          const path: (string | number)[] =
            p.index === null ? [...at, "ip_allow_list"] : [...at, "ip_allow_list", p.index];
          if (p.field !== undefined) path.push(p.field);
          if (p.field === undefined || p.field === "entry") y.failAddress(path, p.reason, p.value);
          else y.fail(path, p.reason, p.unknownField === true ? undefined : p.value, p.unknownField === true);
        }
      } else {
        ipAllowList = parsed.entries;
        entryDetails = parsed.details;
      }
    }
  }
  const mode = m["mode"];
  if (mode !== undefined && !isMode(mode)) {
    y.fail([...at, "mode"], 'must be "enforce" or "report"', mode);
  }
  const sandbox = m["sandbox"];
  if (sandbox !== undefined && typeof sandbox !== "boolean")
    y.fail([...at, "sandbox"], "must be true or false", sandbox);
  for (const field of ["created_at", "updated_at"] as const) {
    const v = m[field];
    if (v !== undefined && (typeof v !== "string" || !isRfc3339(v))) {
      y.fail([...at, field], "must be an RFC 3339 timestamp such as 2026-11-27T10:00:00Z", v);
    }
  }
  if (y.problemCount > before) return undefined;
  return {
    id: id as string,
    name: typeof name === "string" ? name : (id as string),
    secretDigest: digestOfHex(secret as string),
    scopes: Array.isArray(scopes) ? (scopes as string[]) : [],
    ipAllowList,
    ...(entryDetails === undefined ? {} : { entryDetails }),
    mode: mode as Mode | undefined,
    ...(sandbox === true ? { sandbox: true } : {}),
    createdAt: m["created_at"] as string | undefined,
    updatedAt: m["updated_at"] as string | undefined,
  };
}

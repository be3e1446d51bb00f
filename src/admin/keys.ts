/**
 * The API-key operations behind the management API and the dashboard:
 * validation (every bad field at once, the one strict address parser),
 * self-lockout protection, step-up confirmation, durable writes through the
 * store, and the audit trail (written ahead of the change and withdrawn if it
 * fails, or committed with it by a store that keeps the log: no change
 * without its entry). Checks run in the SPEC order:
 * 404, 400, 409, confirmation; so a failed request never uses up a code.
 */
import { setImmediate as yieldTurn } from "node:timers/promises";
import { randomBytes } from "node:crypto";
import type { Logger } from "pino";
import type { ClientIp } from "../clientip/resolve.js";
import { formatCidr, IpError, parseCidr } from "../ip/address.js";
import { compileMatcher } from "../ip/matcher.js";
import { secretDigest } from "../store/digest.js";
import type { Mode } from "../policy/decide.js";
import {
  activeEntries,
  expiryInstant,
  parseEntries,
  type EntryDetailsMap,
  type ParsedEntries,
} from "../store/entries.js";
import { nameProblem, scopesProblems, isMode } from "../store/keyfields.js";
import { KEY_FIELDS, type KeyRecord } from "../store/keysfile.js";
import type { Snapshot } from "../store/snapshot.js";
import { JournalWriteError, type KeyStore, type Plan } from "../store/store.js";
import type { Actor, AuditLog, PreparedAudit } from "./audit.js";
import { reauthorize, WRITE_SCOPE, type Caller } from "./auth.js";
import { ApiError, invalid, type FieldError } from "./errors.js";

/** A key as the API shows it (never its secret or hash). */
export interface KeyView {
  readonly id: string;
  readonly name: string;
  readonly scopes: readonly string[];
  readonly ip_allow_list: readonly string[];
  /** The same entries with their notes and expiries (SPEC §9). */
  readonly ip_allow_list_entries: readonly EntryView[];
  /** The key's own mode; null inherits the global `mode`. */
  readonly mode: Mode | null;
  /** A sandbox key (SPEC §9): its allowed requests go to `sandbox_upstream`. */
  readonly sandbox: boolean;
  readonly created_at: string | null;
  readonly updated_at: string | null;
}

/** One allow-list entry as the API shows it. */
export interface EntryView {
  readonly entry: string;
  readonly note: string | null;
  readonly expires_at: string | null;
}

/** The entries of a list with their details, in the list's order. */
export function entryViews(list: readonly string[], details: EntryDetailsMap | undefined): EntryView[] {
  return list.map((entry) => {
    const d = details?.[entry];
    return { entry, note: d?.note ?? null, expires_at: d?.expiresAt ?? null };
  });
}

/** The API view of a record. */
export function view(r: KeyRecord): KeyView {
  return {
    id: r.id,
    name: r.name,
    scopes: r.scopes,
    ip_allow_list: r.ipAllowList,
    ip_allow_list_entries: entryViews(r.ipAllowList, r.entryDetails),
    mode: r.mode ?? null,
    sandbox: r.sandbox === true,
    created_at: r.createdAt ?? null,
    updated_at: r.updatedAt ?? null,
  };
}

/**
 * Confirms an allow-list change: throws 403 when it may not proceed; resolves
 * true when a second factor confirmed it, false when none is required.
 */
export type Confirm = () => Promise<boolean>;

/** Who asks, from where, and how they confirm. */
export interface ChangeContext {
  readonly caller: Caller;
  readonly client: ClientIp;
  readonly confirm: Confirm;
}

/** Prefix of generated secrets, so leaked keys are recognisable (like `ghp_`, `sk_live_`). */
export const SECRET_PREFIX = "kf_";
/** Bytes of randomness in a secret (256 bits). */
const SECRET_BYTES = 32;

const CREATE_FIELDS = ["name", "scopes", "ip_allow_list", "mode", "sandbox"];
const PATCH_FIELDS = ["name", "scopes", "ip_allow_list", "mode", "sandbox"];

interface Fields {
  name?: string;
  scopes?: string[];
  list?: ParsedEntries;
  mode?: Mode;
  sandbox?: boolean;
}

/** Most characters of a bad value quoted back in an error message. */
const QUOTE_CHARS = 100;

function quote(v: unknown): string {
  let text: string;
  try {
    text = JSON.stringify(v) ?? String(v);
  } catch {
    text = Array.isArray(v) ? "[...]" : "{...}"; // nested too deep to print
  }
  return text.length > QUOTE_CHARS ? `${text.slice(0, QUOTE_CHARS)}…` : text;
}

/**
 * Validates a create or patch body; returns the fields given or every error.
 * An `expires_at` at or before `now` is refused, unless `before` (the key as
 * it is) already holds that entry expiring at that instant, so a list read
 * from `ip_allow_list_entries` can be sent back with one entry changed.
 */
function readFields(
  body: unknown,
  allowed: readonly string[],
  maxEntries: number,
  now: number,
  before?: KeyRecord,
): Fields | FieldError[] {
  // An unreadable body (415, 413, malformed JSON) is answered at the 400 stage.
  if (body instanceof ApiError) throw body;
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    return [{ field: "(body)", message: "must be a JSON object" }];
  }
  const b = body as Record<string, unknown>;
  const errors: FieldError[] = [];
  const out: Fields = {};
  for (const k of Object.keys(b)) {
    if (!allowed.includes(k)) {
      const hint = (KEY_FIELDS as readonly string[]).includes(k) ? " (read-only)" : "";
      errors.push({ field: k, message: `unknown field${hint}; allowed: ${allowed.join(", ")}` });
    }
  }
  const name = b["name"];
  if (name !== undefined && name !== null) {
    const why = nameProblem(name);
    if (why !== undefined) errors.push({ field: "name", message: `${why}, got ${quote(name)}` });
    else out.name = name as string;
  }
  const scopes = b["scopes"];
  if (scopes !== undefined && scopes !== null) {
    const problems = scopesProblems(scopes);
    for (const p of problems) {
      errors.push(
        p.index === undefined
          ? { field: "scopes", message: Array.isArray(scopes) ? p.message : `${p.message}, got ${quote(scopes)}` }
          : { field: `scopes[${p.index}]`, message: `${quote((scopes as unknown[])[p.index])}: ${p.message}` },
      );
    }
    if (problems.length === 0) out.scopes = [...new Set(scopes as string[])];
  }
  const list = b["ip_allow_list"];
  if (list !== undefined && list !== null) {
    if (!Array.isArray(list)) {
      errors.push({
        field: "ip_allow_list",
        message: `must be a list of addresses and CIDR ranges, got ${quote(list)}`,
      });
    } else {
      const parsed = parseEntries(list, maxEntries);
      if (Array.isArray(parsed)) {
        for (const p of parsed) {
          const field =
            p.index === null
              ? "ip_allow_list"
              : `ip_allow_list[${p.index}]${p.field === undefined ? "" : `.${p.field}`}`;
          const message =
            p.index === null ? p.reason : p.unknownField === true ? p.reason : `${quote(p.value)}: ${p.reason}`;
          errors.push({ field, message });
        }
      } else {
        const past = pastExpiries(list, now, before);
        errors.push(...past);
        if (past.length === 0) out.list = parsed;
      }
    }
  }
  const mode = b["mode"];
  if (mode !== undefined && mode !== null) {
    if (!isMode(mode)) errors.push({ field: "mode", message: `must be "enforce" or "report", got ${quote(mode)}` });
    else out.mode = mode;
  }
  const sandbox = b["sandbox"];
  if (sandbox !== undefined && sandbox !== null) {
    if (typeof sandbox !== "boolean")
      errors.push({ field: "sandbox", message: `must be true or false, got ${quote(sandbox)}` });
    else out.sandbox = sandbox;
  }
  return errors.length > 0 ? errors : out;
}

/** The items of a valid `list` whose `expires_at` is not later than `now` and not already so on `before`. */
function pastExpiries(list: readonly unknown[], now: number, before: KeyRecord | undefined): FieldError[] {
  const errors: FieldError[] = [];
  list.forEach((item, i) => {
    if (item === null || typeof item !== "object" || Array.isArray(item)) return;
    const { entry, expires_at: exp } = item as { entry: string; expires_at?: unknown };
    if (typeof exp !== "string" || expiryInstant(exp) > now) return;
    const c = parseCidr(entry);
    const canonical = c instanceof IpError ? entry : formatCidr(c);
    const held = before?.entryDetails?.[canonical]?.expiresAt;
    if (held !== undefined && expiryInstant(held) === expiryInstant(exp)) return;
    errors.push({
      field: `ip_allow_list[${i}].expires_at`,
      message: `${quote(exp)}: is not in the future; an entry must expire later than now (${new Date(now).toISOString().replace(/\.\d{3}Z$/, "Z")})`,
    });
  });
  return errors;
}

/**
 * Whether `after` lets some entry match for longer than `before` does: an
 * entry kept whose expiry is removed or moved later (SPEC §9: a loosening).
 */
function extendsExpiry(before: KeyRecord, after: KeyRecord): boolean {
  const was = before.entryDetails;
  if (was === undefined) return false;
  for (const [entry, d] of Object.entries(was)) {
    if (d.expiresAt === undefined || !after.ipAllowList.includes(entry)) continue;
    const next = after.entryDetails?.[entry]?.expiresAt;
    if (next === undefined || expiryInstant(next) > expiryInstant(d.expiresAt)) return true;
  }
  return false;
}

function sameSet(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  const s = new Set(a);
  return b.every((x) => s.has(x));
}

/**
 * Whether a change sets, alters or loosens enforcement, so that a second
 * factor must confirm it (SPEC §5): a create with a non-empty list, a change
 * of the set of entries (to [] too), a delete of a key with a non-empty list,
 * a mode change of a restricted key that ends in report mode (also by
 * returning to a global `report`), gaining `api_keys:write` (a create with it
 * too), a sandbox key leaving the sandbox (it then reaches the real
 * upstream), and removing or postponing an entry's expiry (SPEC §9). Adding
 * or bringing forward an expiry, and notes, need none. `before` is undefined
 * for a create, `after` for a delete.
 */
export function needsConfirmation(
  before: KeyRecord | undefined,
  after: KeyRecord | undefined,
  globalMode: Mode,
): boolean {
  if (after === undefined) return before !== undefined && before.ipAllowList.length > 0;
  const gainsWrite = after.scopes.includes(WRITE_SCOPE) && !(before?.scopes.includes(WRITE_SCOPE) ?? false);
  if (before === undefined) return after.ipAllowList.length > 0 || gainsWrite;
  if (!sameSet(before.ipAllowList, after.ipAllowList) || gainsWrite || extendsExpiry(before, after)) return true;
  if (before.sandbox === true && after.sandbox !== true) return true;
  return after.ipAllowList.length > 0 && before.mode !== after.mode && (after.mode ?? globalMode) === "report";
}

function timestamp(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z");
}

/** The audit actor of a caller. */
export function actorOf(caller: Caller): Actor {
  return caller.kind === "operator"
    ? { type: "operator", id: caller.operator.name, via: caller.via }
    : { type: "key", id: caller.record.id };
}

/** A page of keys. */
export interface KeyPage {
  readonly data: KeyView[];
  readonly next_cursor: string | null;
}

/** Keys a dashboard search checks per turn of the event loop. */
const SEARCH_SLICE = 2_000;

/** A page of the keys that match a search, with the count of pages and matches. */
export interface SearchPage {
  readonly data: KeyView[];
  /** The page shown (from 1). */
  readonly page: number;
  readonly pages: number;
  readonly total: number;
}

/** API-key operations over a store. */
export class KeysService {
  constructor(
    private readonly deps: {
      readonly store: KeyStore;
      readonly audit: AuditLog;
      readonly maxEntries: number;
      /** The configuration's `mode`, which keys without their own inherit. */
      readonly globalMode: Mode;
      readonly log: Logger;
      /** Milliseconds since the epoch (entries' expiry, timestamps); injected by tests. */
      readonly now?: () => number;
    },
  ) {}

  private now(): number {
    return (this.deps.now ?? Date.now)();
  }

  /**
   * Runs a change through the store, its caller authorized again against the
   * store as the change is made (see {@link reauthorize}); a store that could
   * not write the change's audit entry made no change: 503.
   */
  private async transact<T>(ctx: ChangeContext, plan: (snap: Snapshot) => Promise<Plan<T>>): Promise<T> {
    try {
      return await this.deps.store.transact(async (snap) => {
        const caller = reauthorize(snap, ctx.caller, ctx.client);
        const p = await plan(snap);
        // A store without a lock (Redis) commits only if the key is still as authorized.
        return caller === undefined ? p : { ...p, reads: [{ id: caller.id, record: caller }] };
      });
    } catch (err) {
      if (err instanceof JournalWriteError) throw this.auditFailed(err, "change", "");
      throw err;
    }
  }

  /** Logs why an audit entry could not be written and answers 503 `audit_unavailable`. */
  private auditFailed(err: unknown, action: string, keyId: string): ApiError {
    this.deps.log.error(
      { err, event: "audit_write_failed", key_id: keyId || undefined, action },
      `cannot write the audit log; the ${action}${keyId ? ` of key ${keyId}` : ""} was refused`,
    );
    return new ApiError("audit_unavailable", undefined, { cause: err });
  }

  /** Keys ordered by id, `limit` at a time, after `cursor` (an id) when given: a binary search in the snapshot's sorted ids. */
  async list(limit: number, cursor?: string): Promise<KeyPage> {
    const snap = this.deps.store.snapshot;
    const ids = await snap.sortedIds();
    const from = cursor === undefined ? 0 : ids.upperBound(cursor);
    const data = this.records(snap, ids.slice(from, from + limit)).map(view);
    return { data, next_cursor: ids.length - from > limit ? (data.at(-1)?.id ?? null) : null };
  }

  /**
   * Keys ordered by id whose name, id or a scope contains `needle` (any
   * case; every key when empty), `size` per page: page `page` (a whole
   * number from 1, clamped to the last), the number of pages and of matches. A scan of the
   * sorted ids, in slices, that keeps only the page's keys.
   */
  async search(needle: string, page: number, size: number): Promise<SearchPage> {
    const snap = this.deps.store.snapshot;
    const ids = await snap.sortedIds();
    const want = needle.toLowerCase();
    // A whole page number from 1 (a query's page=1.5 or page=x reads as 1 and 1).
    const asked = Math.max(1, Math.trunc(page) || 1);
    if (want === "") {
      const pages = Math.max(1, Math.ceil(ids.length / size));
      const at = Math.min(pages, asked);
      const data = this.records(snap, ids.slice((at - 1) * size, at * size)).map(view);
      return { data, page: at, pages, total: ids.length };
    }
    const matches = (r: KeyRecord): boolean => [r.name, r.id, ...r.scopes].some((f) => f.toLowerCase().includes(want));
    const start = (asked - 1) * size;
    let total = 0;
    const hits: KeyRecord[] = [];
    let i = 0;
    for (const id of ids) {
      // A scan of every key: in slices, so proxied requests never wait for all of it.
      if (i++ % SEARCH_SLICE === SEARCH_SLICE - 1) await yieldTurn();
      const r = snap.record(id);
      if (r === undefined || !matches(r)) continue;
      if (total >= start && hits.length < size) hits.push(r);
      total++;
    }
    const pages = Math.max(1, Math.ceil(total / size));
    // A page past the last shows the last.
    if (asked > pages) return this.search(needle, pages, size);
    return { data: hits.map(view), page: asked, pages, total };
  }

  /** The records of `ids` in `snap` (each present: the ids come from its own index). */
  private records(snap: Snapshot, ids: readonly string[]): KeyRecord[] {
    const out: KeyRecord[] = [];
    for (const id of ids) {
      const r = snap.record(id);
      if (r !== undefined) out.push(r);
    }
    return out;
  }

  /** One key, or 404. */
  get(id: string): KeyView {
    const r = this.deps.store.snapshot.record(id);
    if (r === undefined) throw notFound(id);
    return view(r);
  }

  /** Creates a key with a fresh secret; the secret is in the result only. */
  create(body: unknown, ctx: ChangeContext): Promise<KeyView & { secret: string }> {
    return this.transact(ctx, async (snap) => {
      const f = readFields(body, CREATE_FIELDS, this.deps.maxEntries, this.now());
      const errors = Array.isArray(f) ? f : f.name === undefined ? [{ field: "name", message: "is required" }] : [];
      if (errors.length > 0 || Array.isArray(f)) throw invalid(errors);
      let id: string;
      do id = `key_${randomBytes(10).toString("hex")}`;
      while (snap.record(id) !== undefined);
      const secret = SECRET_PREFIX + randomBytes(SECRET_BYTES).toString("base64url");
      const at = timestamp(this.now());
      const record: KeyRecord = {
        id,
        name: f.name ?? id,
        secretDigest: secretDigest(secret),
        scopes: f.scopes ?? [],
        ipAllowList: f.list?.entries ?? [],
        ...(f.list?.details === undefined ? {} : { entryDetails: f.list.details }),
        mode: f.mode,
        ...(f.sandbox === true ? { sandbox: true } : {}),
        createdAt: at,
        updatedAt: at,
      };
      return this.planChange("create", ctx, undefined, record, { ...view(record), secret });
    });
  }

  /** Updates name, scopes, list and mode; omitted or null fields stay; a list replaces the old one whole. */
  update(id: string, body: unknown, ctx: ChangeContext): Promise<KeyView> {
    return this.transact(ctx, async (snap) => {
      const before = snap.record(id);
      if (before === undefined) throw notFound(id);
      const now = this.now();
      const f = readFields(body, PATCH_FIELDS, this.deps.maxEntries, now, before);
      if (Array.isArray(f)) throw invalid(f);
      if (
        f.list !== undefined &&
        f.list.entries.length > 0 &&
        ctx.caller.kind === "key" &&
        ctx.caller.record.id === id
      ) {
        // An entry counts while it is in force, however soon it expires.
        const inForce = new Set(activeEntries(f.list.entries, f.list.details, now));
        const cidrs = f.list.cidrs.filter((_, i) => inForce.has(f.list?.entries[i] ?? ""));
        const ip = ctx.client.ip;
        if (ip === undefined || !compileMatcher(cidrs).contains(ip)) {
          throw new ApiError(
            "self_lockout",
            `the new ip_allow_list does not admit ${ctx.client.text}, the IP this key is calling from: the key would lock itself out (include that address, or make the change with another credential)`,
          );
        }
      }
      const { entryDetails: oldDetails, ...rest } = before;
      const details = f.list === undefined ? oldDetails : f.list.details;
      let after: KeyRecord = {
        ...rest,
        name: f.name ?? before.name,
        scopes: f.scopes ?? before.scopes,
        ipAllowList: f.list?.entries ?? before.ipAllowList,
        ...(details === undefined ? {} : { entryDetails: details }),
        mode: f.mode ?? before.mode,
        updatedAt: timestamp(now),
      };
      if (f.sandbox !== undefined) {
        after = { ...after, sandbox: f.sandbox };
        if (!f.sandbox) delete (after as { sandbox?: boolean }).sandbox;
      }
      const same = (a: unknown, b: unknown): boolean => JSON.stringify(a) === JSON.stringify(b);
      if (
        after.name === before.name &&
        same(after.scopes, before.scopes) &&
        same(after.ipAllowList, before.ipAllowList) &&
        same(view(after).ip_allow_list_entries, view(before).ip_allow_list_entries) &&
        after.mode === before.mode &&
        (after.sandbox === true) === (before.sandbox === true)
      ) {
        // Nothing to change: no write, no audit line, updated_at stays.
        return { result: view(before) };
      }
      return this.planChange("update", ctx, before, after, view(after));
    });
  }

  /** Deletes a key; a restricted key needs confirmation. */
  delete(id: string, ctx: ChangeContext): Promise<void> {
    return this.transact(ctx, async (snap) => {
      const before = snap.record(id);
      if (before === undefined) throw notFound(id);
      return this.planChange("delete", ctx, before, undefined, undefined);
    });
  }

  /**
   * The last steps of every change, under the store's lock: confirmation when
   * the change needs it, then the audit line, written ahead of the change
   * (a change whose line cannot be written is refused) and withdrawn if the
   * change then fails.
   */
  private async planChange<T>(
    action: "create" | "update" | "delete",
    ctx: ChangeContext,
    before: KeyRecord | undefined,
    after: KeyRecord | undefined,
    result: T,
  ): Promise<Plan<T>> {
    const confirmed = needsConfirmation(before, after, this.deps.globalMode) ? await ctx.confirm() : false;
    const audit = await this.audit(action, ctx, before, after, confirmed);
    const actor = actorOf(ctx.caller);
    const keyId = (after ?? before)?.id ?? "";
    return {
      change: action === "delete" ? { kind: "delete", id: keyId } : { kind: action, record: after as KeyRecord },
      result,
      journal: audit.journal,
      onAbort: () => audit.withdraw(),
      afterCommit: (committed) => {
        this.deps.log.info(
          {
            event: `key_${action}d`,
            audit_id: audit.id ?? committed.journalSeq,
            key_id: keyId,
            actor: `${actor.type}:${actor.id}`,
            client_ip: ctx.client.text,
            ip_allow_list_before: before ? before.ipAllowList : null,
            ip_allow_list_after: after ? after.ipAllowList : null,
          },
          `key ${keyId} ${action}d by ${actor.type} ${actor.id}`,
        );
        return Promise.resolve();
      },
    };
  }

  private async audit(
    action: "create" | "update" | "delete",
    ctx: ChangeContext,
    before: KeyRecord | undefined,
    after: KeyRecord | undefined,
    confirmed: boolean,
  ): Promise<PreparedAudit> {
    const changes: Record<string, { before: unknown; after: unknown }> = {};
    const fields = [
      ["name", (r: KeyRecord) => r.name],
      ["scopes", (r: KeyRecord) => r.scopes],
      ["mode", (r: KeyRecord) => r.mode ?? null],
      ["sandbox", (r: KeyRecord) => r.sandbox === true],
    ] as const;
    for (const [name, get] of fields) {
      const b = before ? get(before) : null;
      const a = after ? get(after) : null;
      if (JSON.stringify(b) !== JSON.stringify(a)) changes[name] = { before: b, after: a };
    }
    // Notes and expiries, when either side has any and they differ (the entries alone are in ip_allow_list).
    const entriesOf = (r: KeyRecord | undefined): EntryView[] | null =>
      r ? entryViews(r.ipAllowList, r.entryDetails) : null;
    const [eb, ea] = [entriesOf(before), entriesOf(after)];
    if ((before?.entryDetails ?? after?.entryDetails) !== undefined && JSON.stringify(eb) !== JSON.stringify(ea)) {
      changes["ip_allow_list_entries"] = { before: eb, after: ea };
    }
    const keyId = (after ?? before)?.id ?? "";
    try {
      return await this.deps.audit.prepare({
        action,
        actor: actorOf(ctx.caller),
        client_ip: ctx.client.text,
        key_id: keyId,
        ip_allow_list: {
          before: before ? [...before.ipAllowList] : null,
          after: after ? [...after.ipAllowList] : null,
        },
        changes,
        confirmed,
      });
    } catch (err) {
      throw this.auditFailed(err, action, keyId);
    }
  }
}

function notFound(id: string): ApiError {
  return new ApiError("not_found", `no API key with id ${quote(id)}`);
}

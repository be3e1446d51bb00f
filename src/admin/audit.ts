/**
 * The audit log (SPEC §5, §6): one event per change, never a secret, read
 * newest first. Two implementations behind {@link AuditLog}:
 *
 * - {@link FileAuditLog}: one JSON line per change, appended and fsynced to a
 *   file next to the keys file ahead of the change (withdrawn if the change
 *   fails), rotated by size (`keys.audit.jsonl`, then `.1`, `.2` ... up to
 *   `keep` files in all). An append never reads the file; a page is read from
 *   the newest end, parsing only the lines it returns.
 * - {@link JournalAuditLog}: the journal of a shared store (Redis: a capped
 *   stream), whose entry the store commits in the same atomic write as the
 *   change; every replica reads the same log.
 */
import { open, rename, stat, unlink, type FileHandle } from "node:fs/promises";
import { dirname } from "node:path";
import { AUDIT_DEFAULTS, type AuditSettings } from "../config/audit.js";
import type { Journal } from "../store/store.js";
import { withLockBeside } from "../util/lock.js";

/** Who made a change. */
export interface Actor {
  /** `cli`: `keyfence keys import`, as the operating-system user on a host; `system`: keyfence itself (an entry's expiry). */
  readonly type: "operator" | "key" | "cli" | "system";
  /** Operator name, key id, `user@host`, or `keyfence` for the system. */
  readonly id: string;
  /** How the operator was signed in (`token` or a dashboard `session`). */
  readonly via?: "token" | "session";
}

/** The actions an audit event records. */
export const AUDIT_ACTIONS = ["create", "update", "delete", "import", "expire"] as const;

/** One audit event as stored and served. */
export interface AuditEvent {
  /** Sequence number, increasing; also the pagination cursor. */
  readonly id: number;
  readonly time: string;
  /**
   * `import`: a batch of `keyfence keys import` into a shared store (see `import`);
   * `expire`: an entry reached its `expires_at` (`expired` says which; the list shows the entries in force before and after).
   */
  readonly action: (typeof AUDIT_ACTIONS)[number];
  readonly actor: Actor;
  readonly client_ip: string;
  readonly key_id: string;
  readonly ip_allow_list: { readonly before: readonly string[] | null; readonly after: readonly string[] | null };
  /** Other fields changed: name, scopes, mode. */
  readonly changes: Record<string, { readonly before: unknown; readonly after: unknown }>;
  /** Whether a second factor confirmed the change. */
  readonly confirmed: boolean;
  /** The entry that expired (`expire` events only). */
  readonly expired?: { readonly entry: string; readonly note: string | null; readonly expires_at: string };
  /** Of an `import` only: the file imported and the ids of the keys it wrote (new or different). */
  readonly import?: { readonly from: string; readonly key_ids: readonly string[] };
}

/** An event before the log numbers and times it. */
export type AuditDraft = Omit<AuditEvent, "id" | "time">;

/** The entry of a change about to be made, ready before the change is committed. */
export interface PreparedAudit {
  /** The event's id when it is already written (ahead of the change). */
  readonly id?: number;
  /** The entry for the store to commit in the same atomic write as the change (a store's journal). */
  readonly journal?: string;
  /** Withdraws an entry written ahead, because its change could not be made. */
  withdraw(): Promise<void>;
}

/** Where audit events are kept and read back. */
export interface AuditLog {
  /**
   * Prepares the entry of a change about to be made: written ahead of it, or
   * handed to the store to commit with it. Rejects when it cannot be
   * written; the change is then refused.
   */
  prepare(draft: AuditDraft): Promise<PreparedAudit>;
  /**
   * Writes an event that goes with no change of a key (an entry's expiry),
   * numbered after every event before it; resolves with its id, rejects when
   * it cannot be written.
   */
  record(draft: AuditDraft): Promise<number>;
  /** Events newest first, `limit` at a time, older than `cursor` (an event id) when given. */
  page(limit: number, cursor?: number): Promise<AuditPage>;
}

/** A page of events, newest first. */
export interface AuditPage {
  readonly data: AuditEvent[];
  readonly next_cursor: string | null;
}

/** Bytes read at a time from the end of a file. */
const CHUNK_BYTES = 64 * 1024;

/**
 * The id of a stored line: read from its start (`{"id":N,...`, as every
 * append writes it) without parsing the line; any other line is parsed.
 */
function lineId(line: Buffer): number | undefined {
  const m = /^\{"id":([0-9]{1,15})[,}]/.exec(line.toString("latin1", 0, 24));
  if (m) return Number(m[1]);
  try {
    const id = (JSON.parse(line.toString("utf8")) as { id?: unknown }).id;
    return typeof id === "number" && Number.isSafeInteger(id) ? id : undefined;
  } catch {
    return undefined;
  }
}

/** Lines of `file` from its last to its first (a missing file has none), read a chunk at a time. */
async function* linesBackwards(file: string): AsyncGenerator<Buffer> {
  let fh: FileHandle;
  try {
    fh = await open(file, "r");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return;
    throw err;
  }
  try {
    let pos = (await fh.stat()).size;
    let carry = Buffer.alloc(0);
    while (pos > 0) {
      const size = Math.min(CHUNK_BYTES, pos);
      pos -= size;
      const chunk = Buffer.allocUnsafe(size);
      const { bytesRead } = await fh.read(chunk, 0, size, pos);
      let buf = carry.length > 0 ? Buffer.concat([chunk.subarray(0, bytesRead), carry]) : chunk.subarray(0, bytesRead);
      let end = buf.length;
      for (let nl = buf.lastIndexOf(10, end - 1); nl >= 0; nl = buf.lastIndexOf(10, end - 1)) {
        if (nl + 1 < end) yield buf.subarray(nl + 1, end);
        end = nl;
        if (end === 0) break;
      }
      buf = buf.subarray(0, end);
      carry = Buffer.from(buf);
    }
    if (carry.length > 0) yield carry;
  } finally {
    await fh.close();
  }
}

/**
 * Append-only, size-rotated audit file, written ahead of each change.
 * Processes sharing a keys file share it too: appends, withdrawals and
 * rotations take the file's lock (see {@link withLockBeside}), and an append
 * reads the newest id from the file's end again only when the file is not
 * as this process left it (another process wrote or rotated it).
 */
export class FileAuditLog implements AuditLog {
  private nextId = 1;
  /** The last line was torn (a crash mid-append): the next append starts a new line first. */
  private torn = false;
  /** The current file as this process last left it (inode and size); undefined: read its end again. */
  private seen: { ino: number; size: number } | undefined;
  /** Where the last append went, so a change that then fails can withdraw its line. */
  private last: { id: number; ino: number; offset: number; length: number } | undefined;
  /** Appends and withdrawals of this process run one at a time. */
  private queue: Promise<unknown> = Promise.resolve();

  private constructor(
    readonly file: string,
    readonly options: AuditSettings,
  ) {}

  /** Opens the log: reads the end of its newest file once, for the next id. */
  static async open(file: string, options: AuditSettings = AUDIT_DEFAULTS): Promise<FileAuditLog> {
    const log = new FileAuditLog(file, options);
    await log.readEnd();
    return log;
  }

  /** The current file's inode and size (0 and 0 when it does not exist). */
  private async fileNow(): Promise<{ ino: number; size: number }> {
    try {
      const st = await stat(this.file);
      return { ino: st.ino, size: st.size };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return { ino: 0, size: 0 };
      throw err;
    }
  }

  /** Reads the next id and whether the last line is torn from the newest file's end (older files when it has none). */
  private async readEnd(): Promise<void> {
    this.seen = await this.fileNow();
    this.torn = await endsTorn(this.file);
    this.nextId = 1;
    for (const f of this.files()) {
      for await (const line of linesBackwards(f)) {
        const id = lineId(line);
        if (id !== undefined && parses(line)) {
          this.nextId = id + 1;
          return;
        }
      }
    }
  }

  /** Runs `task` under the log's lock ({@link withLockBeside}), after this process's earlier tasks. */
  private locked<T>(task: (stillHeld: () => void) => Promise<T>): Promise<T> {
    return this.serial(() => withLockBeside(this.file, task));
  }

  /** The files, newest first. */
  private files(): string[] {
    return Array.from({ length: this.options.keep }, (_, i) => (i === 0 ? this.file : `${this.file}.${i}`));
  }

  private serial<T>(task: () => Promise<T>): Promise<T> {
    const run = this.queue.then(task, task);
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** Shifts every file one place older, dropping the oldest; the current file starts empty. */
  private async rotate(): Promise<void> {
    const files = this.files();
    if (files.length === 1) await unlink(this.file).catch(ignoreMissing);
    for (let i = files.length - 1; i >= 1; i--) {
      await rename(files[i - 1] as string, files[i] as string).catch(ignoreMissing);
    }
    const dir = await open(dirname(this.file), "r");
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
    this.torn = false;
  }

  async prepare(draft: AuditDraft): Promise<PreparedAudit> {
    const event = await this.append(draft);
    return { id: event.id, withdraw: () => this.withdraw(event) };
  }

  async record(draft: AuditDraft): Promise<number> {
    return (await this.append(draft)).id;
  }

  /**
   * Appends one event (assigning its id and time) and fsyncs before
   * resolving; rejects, leaving no line behind, when it cannot be written.
   */
  append(event: AuditDraft): Promise<AuditEvent> {
    return this.locked(async (stillHeld) => {
      const now = await this.fileNow();
      if (this.seen === undefined || now.ino !== this.seen.ino || now.size !== this.seen.size) await this.readEnd();
      const full: AuditEvent = { id: this.nextId, time: new Date().toISOString(), ...event };
      const line = Buffer.from(`${this.torn ? "\n" : ""}${JSON.stringify(full)}\n`);
      let fh = await open(this.file, "a", 0o600);
      let offset = (await fh.stat()).size;
      if (offset > 0 && offset + line.length > this.options.rotateBytes) {
        await fh.close();
        await this.rotate();
        fh = await open(this.file, "a", 0o600);
        offset = (await fh.stat()).size;
      }
      let ino: number;
      try {
        ino = (await fh.stat()).ino;
        stillHeld();
        await fh.writeFile(line);
        await fh.sync();
      } catch (err) {
        await fh.truncate(offset).catch(() => undefined);
        throw err;
      } finally {
        await fh.close();
      }
      this.torn = false;
      this.last = { id: full.id, ino, offset, length: line.length };
      this.seen = { ino, size: offset + line.length };
      this.nextId++;
      return full;
    });
  }

  /**
   * Removes `event`, the last one this process appended, because its change
   * could not be made; lines other processes appended after it stay.
   */
  withdraw(event: AuditEvent): Promise<void> {
    return this.locked(async (stillHeld) => {
      const last = this.last;
      if (last?.id !== event.id) return;
      this.last = undefined;
      // The file it went to, also when another process has rotated it since.
      let file: string | undefined;
      for (const f of this.files()) {
        const st = await stat(f).catch(() => undefined);
        if (st?.ino === last.ino) {
          file = f;
          break;
        }
      }
      if (file === undefined) return;
      const fh = await open(file, "r+");
      try {
        const size = (await fh.stat()).size;
        const end = last.offset + last.length;
        const after = Buffer.alloc(Math.max(0, size - end));
        if (after.length > 0) await fh.read(after, 0, after.length, end);
        stillHeld();
        // The lines after it move up first, then the end is cut: a crash in between leaves a line twice, never one lost.
        if (after.length > 0) await fh.write(after, 0, after.length, last.offset);
        await fh.truncate(last.offset + after.length);
        await fh.sync();
      } finally {
        await fh.close();
      }
      // The next append reads the end again: the id is free only if no line followed.
      this.seen = undefined;
    });
  }

  /** Events newest first, `limit` at a time, older than `cursor` (an event id) when given. */
  async page(limit: number, cursor?: number): Promise<AuditPage> {
    const data: AuditEvent[] = [];
    let more = false;
    outer: for (const f of this.files()) {
      for await (const line of linesBackwards(f)) {
        const id = lineId(line);
        if (id === undefined || (cursor !== undefined && id >= cursor)) continue;
        let event: AuditEvent;
        try {
          event = JSON.parse(line.toString("utf8")) as AuditEvent;
        } catch {
          continue; // a torn line (crash mid-append) is skipped, never fatal
        }
        if (data.length === limit) {
          more = true;
          break outer;
        }
        data.push(event);
      }
    }
    const last = data.at(-1);
    return { data, next_cursor: more && last ? String(last.id) : null };
  }
}

/** The text of `event` in a journal: its JSON without the id (the journal numbers its entries). */
export function encodeJournalEntry(event: Omit<AuditEvent, "id">): string {
  return JSON.stringify(event);
}

const isStrings = (v: unknown): v is string[] => Array.isArray(v) && v.every((x) => typeof x === "string");
const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

/** The event numbered `id` stored as `text`; undefined when `text` is not a well-formed entry. */
export function decodeJournalEntry(id: number, text: string): AuditEvent | undefined {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (!isRecord(v) || "id" in v) return undefined;
  const { time, action, actor, client_ip, key_id, ip_allow_list: list, changes, confirmed } = v;
  if (typeof time !== "string" || !(AUDIT_ACTIONS as readonly unknown[]).includes(action)) return undefined;
  if (
    !isRecord(actor) ||
    typeof actor["id"] !== "string" ||
    !["operator", "key", "cli", "system"].includes(String(actor["type"]))
  ) {
    return undefined;
  }
  if (actor["via"] !== undefined && actor["via"] !== "token" && actor["via"] !== "session") return undefined;
  if (typeof client_ip !== "string" || typeof key_id !== "string" || typeof confirmed !== "boolean") return undefined;
  const listOk = (x: unknown): boolean => x === null || isStrings(x);
  if (!isRecord(list) || !listOk(list["before"]) || !listOk(list["after"])) return undefined;
  if (!isRecord(changes) || !Object.values(changes).every((c) => isRecord(c) && "before" in c && "after" in c)) {
    return undefined;
  }
  const exp = v["expired"];
  if (
    exp !== undefined &&
    !(
      isRecord(exp) &&
      typeof exp["entry"] === "string" &&
      (exp["note"] === null || typeof exp["note"] === "string") &&
      typeof exp["expires_at"] === "string"
    )
  ) {
    return undefined;
  }
  const imp = v["import"];
  if (imp !== undefined && !(isRecord(imp) && typeof imp["from"] === "string" && isStrings(imp["key_ids"]))) {
    return undefined;
  }
  return { id, ...(v as Omit<AuditEvent, "id">) };
}

/**
 * The audit log kept in a shared store's journal (Redis: a capped stream):
 * the store commits each entry in the same atomic write as its change, so
 * nothing is written ahead and nothing needs withdrawing. Reads fail with
 * the store (503 `store_unavailable` while it cannot be reached).
 */
export class JournalAuditLog implements AuditLog {
  constructor(
    private readonly journal: Journal,
    private readonly now: () => Date = () => new Date(),
  ) {}

  prepare(draft: AuditDraft): Promise<PreparedAudit> {
    const journal = encodeJournalEntry({ time: this.now().toISOString(), ...draft });
    return Promise.resolve({ journal, withdraw: () => Promise.resolve() });
  }

  record(draft: AuditDraft): Promise<number> {
    return this.journal.append(encodeJournalEntry({ time: this.now().toISOString(), ...draft }));
  }

  async page(limit: number, cursor?: number): Promise<AuditPage> {
    // One more than asked for, to know whether there is an older page.
    const entries = await this.journal.page(limit + 1, cursor);
    const data: AuditEvent[] = [];
    let more = false;
    let last: number | undefined;
    for (const e of entries) {
      if (data.length === limit) {
        more = true;
        break;
      }
      last = e.seq;
      const event = decodeJournalEntry(e.seq, e.text);
      if (event !== undefined) data.push(event); // a malformed entry is skipped, never fatal
    }
    // Entries skipped as malformed may leave a short page with more behind it.
    if (!more && entries.length > limit) more = true;
    return { data, next_cursor: more && last !== undefined ? String(last) : null };
  }
}

function parses(line: Buffer): boolean {
  try {
    JSON.parse(line.toString("utf8"));
    return true;
  } catch {
    return false;
  }
}

/** Whether `file` ends inside a line (a crash mid-append). */
async function endsTorn(file: string): Promise<boolean> {
  let fh: FileHandle;
  try {
    fh = await open(file, "r");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return false;
    throw err;
  }
  try {
    const size = (await fh.stat()).size;
    if (size === 0) return false;
    const last = Buffer.alloc(1);
    await fh.read(last, 0, 1, size - 1);
    return last[0] !== 10;
  } finally {
    await fh.close();
  }
}

function ignoreMissing(err: NodeJS.ErrnoException): void {
  if (err.code !== "ENOENT") throw err;
}

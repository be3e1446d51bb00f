/**
 * The audit log: one JSON line per change, appended and fsynced to a file
 * next to the keys file, rotated by size (`keys.audit.jsonl`, then `.1`, `.2`
 * ... up to `keep` files in all). An append never reads the file; a page is
 * read from the newest end, parsing only the lines it returns. It never holds
 * a secret.
 */
import { open, rename, unlink, type FileHandle } from "node:fs/promises";
import { dirname } from "node:path";
import { AUDIT_DEFAULTS, type AuditSettings } from "../config/audit.js";

/** Who made a change. */
export interface Actor {
  readonly type: "operator" | "key";
  /** Operator name or key id. */
  readonly id: string;
  /** How the operator was signed in (`token` or a dashboard `session`). */
  readonly via?: "token" | "session";
}

/** One audit event as stored and served. */
export interface AuditEvent {
  /** Sequence number, increasing; also the pagination cursor. */
  readonly id: number;
  readonly time: string;
  readonly action: "create" | "update" | "delete";
  readonly actor: Actor;
  readonly client_ip: string;
  readonly key_id: string;
  readonly ip_allow_list: { readonly before: readonly string[] | null; readonly after: readonly string[] | null };
  /** Other fields changed: name, scopes, mode. */
  readonly changes: Record<string, { readonly before: unknown; readonly after: unknown }>;
  /** Whether a second factor confirmed the change. */
  readonly confirmed: boolean;
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

/** Append-only, size-rotated audit file. */
export class AuditLog {
  private nextId = 1;
  /** The last line was torn (a crash mid-append): the next append starts a new line first. */
  private torn = false;
  /** Where the last append began, so a change that then fails can withdraw its line. */
  private last: { id: number; offset: number } | undefined;
  /** Appends and withdrawals run one at a time. */
  private queue: Promise<unknown> = Promise.resolve();

  private constructor(
    readonly file: string,
    readonly options: AuditSettings,
  ) {}

  /** Opens the log: reads the end of its newest file once, for the next id. */
  static async open(file: string, options: AuditSettings = AUDIT_DEFAULTS): Promise<AuditLog> {
    const log = new AuditLog(file, options);
    log.torn = await endsTorn(file);
    for (const f of log.files()) {
      for await (const line of linesBackwards(f)) {
        const id = lineId(line);
        if (id !== undefined && parses(line)) {
          log.nextId = id + 1;
          return log;
        }
      }
    }
    return log;
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

  /**
   * Appends one event (assigning its id and time) and fsyncs before
   * resolving; rejects, leaving no line behind, when it cannot be written.
   */
  append(event: Omit<AuditEvent, "id" | "time">): Promise<AuditEvent> {
    return this.serial(async () => {
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
      try {
        await fh.writeFile(line);
        await fh.sync();
      } catch (err) {
        await fh.truncate(offset).catch(() => undefined);
        throw err;
      } finally {
        await fh.close();
      }
      this.torn = false;
      this.last = { id: full.id, offset };
      this.nextId++;
      return full;
    });
  }

  /** Removes `event`, the last one appended, because its change could not be made. */
  withdraw(event: AuditEvent): Promise<void> {
    return this.serial(async () => {
      if (this.last?.id !== event.id) return;
      const fh = await open(this.file, "r+");
      try {
        await fh.truncate(this.last.offset);
        await fh.sync();
      } finally {
        await fh.close();
      }
      this.nextId = event.id;
      this.last = undefined;
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

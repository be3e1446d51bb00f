/**
 * The audit log: one JSON line per change, appended and fsynced to a file
 * next to the keys file; read back newest first. It never holds a secret.
 */
import { open, readFile } from "node:fs/promises";

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

/** Append-only audit file. */
export class AuditLog {
  private nextId: number | undefined;

  constructor(readonly file: string) {}

  private async readAll(): Promise<AuditEvent[]> {
    let text: string;
    try {
      text = await readFile(this.file, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
      throw err;
    }
    const out: AuditEvent[] = [];
    for (const line of text.split("\n")) {
      if (line.trim() === "") continue;
      try {
        out.push(JSON.parse(line) as AuditEvent);
      } catch {
        // A torn last line (crash mid-append) is skipped, never fatal.
      }
    }
    return out;
  }

  /** Appends one event (assigning its id and time) and fsyncs before resolving. */
  async append(event: Omit<AuditEvent, "id" | "time">): Promise<AuditEvent> {
    if (this.nextId === undefined) {
      const all = await this.readAll();
      this.nextId = (all.at(-1)?.id ?? 0) + 1;
    }
    const full: AuditEvent = { id: this.nextId++, time: new Date().toISOString(), ...event };
    const fh = await open(this.file, "a", 0o600);
    try {
      await fh.appendFile(`${JSON.stringify(full)}\n`, "utf8");
      await fh.sync();
    } finally {
      await fh.close();
    }
    return full;
  }

  /** Events newest first, `limit` at a time, after `cursor` (an event id) when given. */
  async page(limit: number, cursor?: number): Promise<AuditPage> {
    const all = await this.readAll();
    const older = cursor === undefined ? all : all.filter((e) => e.id < cursor);
    const data = older.slice(-limit).reverse();
    const last = data.at(-1);
    return { data, next_cursor: older.length > limit && last ? String(last.id) : null };
  }
}

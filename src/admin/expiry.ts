/**
 * The audit trail of expiries (SPEC §9): when an allow-list entry reaches its
 * `expires_at`, one `expire` event is written, once, also when several
 * processes share the keys file or several replicas share a Redis store: each
 * process watches, and a shared mark decides which one writes. The proxy does
 * not wait for this: a key stops matching an expired entry on its own
 * (src/store/snapshot.ts); this only tells the audit log.
 */
import { createHash } from "node:crypto";
import { mkdir, open, readdir, stat, unlink } from "node:fs/promises";
import { join } from "node:path";
import type { Logger } from "pino";
import { changedId } from "../store/change.js";
import { activeEntries, expiries } from "../store/entries.js";
import type { KeyRecord } from "../store/keysfile.js";
import type { Snapshot } from "../store/snapshot.js";
import type { KeyStore } from "../store/store.js";
import type { AuditLog } from "./audit.js";
import type { RedisConnection } from "./redis-state.js";

/** How far back an expiry is still written when a process starts (expiries while every process was down). */
export const EXPIRY_CATCH_UP_MS = 24 * 60 * 60 * 1000;
/** How long a mark is kept: longer than {@link EXPIRY_CATCH_UP_MS}, so an expiry is never written twice. */
export const EXPIRY_MARK_TTL_MS = 2 * EXPIRY_CATCH_UP_MS;
/** Wait before trying again when the audit log or the mark cannot be written. */
const RETRY_MS = 5_000;
/** Longest timer Node allows (about 24.8 days); a later expiry is looked at again then. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** Who writes an expiry's event: the first process to claim its mark. */
export interface ExpiryMarks {
  /** True for exactly one of all claims of `mark` (across processes sharing the store) within the mark's lifetime. */
  claim(mark: string): Promise<boolean>;
  /** Gives up a claim whose event could not be written, so a later try (here or elsewhere) may claim it again. */
  release(mark: string): Promise<void>;
}

/** Marks as files created exclusively in a directory next to the keys file (processes sharing the file share it). */
export class FileExpiryMarks implements ExpiryMarks {
  private pruned = 0;

  constructor(private readonly dir: string) {}

  async claim(mark: string): Promise<boolean> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    await this.prune();
    try {
      const fh = await open(join(this.dir, mark), "wx", 0o600);
      await fh.close();
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "EEXIST") return false;
      throw err;
    }
  }

  async release(mark: string): Promise<void> {
    await unlink(join(this.dir, mark)).catch(() => undefined);
  }

  /** Removes marks older than {@link EXPIRY_MARK_TTL_MS} (by the files' times, so by the real clock), at most once an hour. */
  private async prune(): Promise<void> {
    const now = Date.now();
    if (now - this.pruned < 60 * 60 * 1000) return;
    this.pruned = now;
    for (const name of await readdir(this.dir)) {
      const file = join(this.dir, name);
      try {
        if (now - (await stat(file)).mtimeMs > EXPIRY_MARK_TTL_MS) await unlink(file);
      } catch {
        // Removed by another process meanwhile.
      }
    }
  }
}

/** Marks as Redis keys set with NX and a lifetime, under the store's prefix (`<prefix>expired:<mark>`). */
export class RedisExpiryMarks implements ExpiryMarks {
  constructor(private readonly store: RedisConnection) {}

  async claim(mark: string): Promise<boolean> {
    const key = `${this.store.prefix}expired:${mark}`;
    const reply = await this.store.command((c) =>
      c.set(key, "1", { condition: "NX", expiration: { type: "PX", value: EXPIRY_MARK_TTL_MS } }),
    );
    return reply === "OK";
  }

  async release(mark: string): Promise<void> {
    await this.store.command((c) => c.del(`${this.store.prefix}expired:${mark}`));
  }
}

/** One expiry to write. */
interface Pending {
  readonly keyId: string;
  readonly entry: string;
  readonly expiresAt: string;
  readonly at: number;
}

/** The mark of one expiry: the key, the entry and the instant, hashed to a file-safe name. */
function markOf(p: Pending): string {
  return createHash("sha256").update(`${p.keyId}\0${p.entry}\0${p.at}`).digest("hex").slice(0, 40);
}

/**
 * Watches a store's entries with an expiry and writes each expiry's audit
 * event once it has passed (on a timer, or when {@link check} is called).
 */
export class ExpiryWatcher {
  /** Pending expiries by key id. */
  private readonly pending = new Map<string, Pending[]>();
  private timer: NodeJS.Timeout | undefined;
  private unsubscribe: (() => void) | undefined;
  private running: Promise<void> = Promise.resolve();
  private closed = false;

  constructor(
    private readonly deps: {
      readonly store: KeyStore;
      readonly audit: AuditLog;
      readonly marks: ExpiryMarks;
      readonly log: Logger;
      /** Milliseconds since the epoch; injected by tests. */
      readonly now?: () => number;
    },
  ) {}

  private now(): number {
    return (this.deps.now ?? Date.now)();
  }

  /** Reads every key's expiries, follows changes, and writes what is already due (within {@link EXPIRY_CATCH_UP_MS}). */
  start(): void {
    this.trackAll(this.deps.store.snapshot);
    this.unsubscribe = this.deps.store.subscribe({
      change: (snap, _cause, changes) => {
        if (changes !== undefined) {
          const now = this.now();
          for (const id of changes.map(changedId)) this.track(id, snap.record(id), now);
        } else this.trackAll(snap);
        this.schedule();
      },
    });
    void this.check();
  }

  /** Writes the events of every expiry passed by now; resolves when written (one check at a time). */
  check(): Promise<void> {
    this.running = this.running
      .then(() => this.writeDue())
      .then(
        () => this.schedule(),
        (err: unknown) => {
          this.deps.log.error(
            { err, event: "expiry_audit_failed" },
            `cannot write an expiry to the audit log; retrying in ${RETRY_MS / 1000} s`,
          );
          this.schedule(RETRY_MS);
        },
      );
    return this.running;
  }

  /** Stops watching. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    this.unsubscribe?.();
    await this.running;
  }

  /**
   * Tracks the expiries of every key of `snap` afresh: one pass without a
   * copy, reading the clock once, tracking only records with entry details
   * (at 1,000,000 keys ~45 ms of CPU in one turn; a copy, then every key
   * tracked, took ~370 ms).
   */
  private trackAll(snap: Snapshot): void {
    this.pending.clear();
    const now = this.now();
    snap.forEachRecord((r) => {
      if (r.entryDetails !== undefined) this.track(r.id, r, now);
    });
  }

  private track(id: string, record: KeyRecord | undefined, now: number): void {
    const list: Pending[] = [];
    for (const { entry, at } of expiries(record?.entryDetails)) {
      if (at <= now - EXPIRY_CATCH_UP_MS) continue;
      const expiresAt = record?.entryDetails?.[entry]?.expiresAt ?? "";
      list.push({ keyId: id, entry, expiresAt, at });
    }
    if (list.length > 0) this.pending.set(id, list);
    else this.pending.delete(id);
  }

  /** Sets the timer for the next expiry, at least `minDelay` ms away. */
  private schedule(minDelay = 0): void {
    clearTimeout(this.timer);
    if (this.closed) return;
    let next = Infinity;
    for (const list of this.pending.values()) for (const p of list) if (p.at < next) next = p.at;
    if (next === Infinity) return;
    const delay = Math.min(Math.max(next - this.now(), minDelay), MAX_TIMER_MS);
    this.timer = setTimeout(() => void this.check(), delay);
    this.timer.unref();
  }

  private async writeDue(): Promise<void> {
    const now = this.now();
    for (const [id, list] of [...this.pending]) {
      const due = list.filter((p) => p.at <= now);
      if (due.length === 0) continue;
      for (const p of due) {
        // The key as it is now: the entry may have been removed or its expiry changed meanwhile.
        const record = this.deps.store.snapshot.record(id);
        const details = record?.entryDetails?.[p.entry];
        const mark = markOf(p);
        if (record !== undefined && details?.expiresAt === p.expiresAt && (await this.deps.marks.claim(mark))) {
          try {
            await this.write(record, p, details.note ?? null);
          } catch (err) {
            await this.deps.marks.release(mark).catch(() => undefined);
            throw err;
          }
        }
        const left = (this.pending.get(id) ?? []).filter((q) => q !== p);
        if (left.length > 0) this.pending.set(id, left);
        else this.pending.delete(id);
      }
    }
  }

  private async write(record: KeyRecord, p: Pending, note: string | null): Promise<void> {
    const before = activeEntries(record.ipAllowList, record.entryDetails, p.at - 1);
    const after = activeEntries(record.ipAllowList, record.entryDetails, p.at);
    const id = await this.deps.audit.record({
      action: "expire",
      actor: { type: "system", id: "keyfence" },
      client_ip: "",
      key_id: record.id,
      ip_allow_list: { before, after },
      changes: {},
      confirmed: false,
      expired: { entry: p.entry, note, expires_at: p.expiresAt },
    });
    this.deps.log.info(
      { event: "entry_expired", audit_id: id, key_id: record.id, entry: p.entry, expires_at: p.expiresAt },
      `entry ${p.entry} of key ${record.id} expired at ${p.expiresAt}`,
    );
  }
}

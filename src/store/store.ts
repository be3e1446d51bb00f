/**
 * The key store contract, shared by the file-backed store and the Redis
 * store: an async load, a synchronous current snapshot for the hot path,
 * change and availability events, and transactions. Nothing here knows of
 * files: a problem is a message, and a store that has positions (the file
 * store) adds them.
 */
import { formatProblem, type Problem } from "../util/yaml.js";
import type { KeyChange } from "./change.js";
import type { KeyRecord } from "./keysfile.js";
import type { MatcherCache, Snapshot } from "./snapshot.js";

export type { KeyChange } from "./change.js";

/** Why a snapshot changed: the first load, an external change (file edit, another replica), or a write of this process. */
export type ChangeCause = "load" | "reload" | "write";

/** A problem with a store's content or its source; a file store's problems also carry file, line and col. */
export interface StoreProblem {
  readonly message: string;
}

/** True when `p` names a place in a file (a file store's problems do). */
export function isLocated(p: StoreProblem): p is Problem {
  const l = p as Partial<Problem>;
  return (
    typeof l.file === "string" && typeof l.line === "number" && typeof l.col === "number" && typeof l.path === "string"
  );
}

/** One line for `p`: `file:line:col: ...` when located, else its message. */
export function formatStoreProblem(p: StoreProblem): string {
  return isLocated(p) ? formatProblem(p) : p.message;
}

/** Log fields locating `p` (none when it has no place). */
export function problemFields(p: StoreProblem): { file?: string; line?: number; col?: number } {
  return isLocated(p) ? { file: p.file, line: p.line, col: p.col } : {};
}

/** Whether the store's source can be read and written, and if not why. */
export interface StoreHealth {
  readonly up: boolean;
  /** What is down, e.g. "redis://10.0.0.5:6379/0: connection refused" (empty when up). */
  readonly reason: string;
}

/** Events a store reports; the shell logs and counts them. */
export interface StoreListener {
  /**
   * A new snapshot is in force; `changes` are the changes that made it from
   * the one before, in order, when it follows from that one by them
   * (undefined: a snapshot read afresh, to be taken whole).
   */
  change?(snapshot: Snapshot, cause: ChangeCause, changes?: readonly KeyChange[]): void;
  /** A reload was refused; the last good snapshot keeps serving. */
  reloadFailed?(problems: readonly StoreProblem[]): void;
  /** The store went down or came back (a file store is always up). */
  health?(health: StoreHealth): void;
}

/** One entry of a store's journal, numbered by the store. */
export interface JournalEntry {
  /** Sequence number: increasing, never reused. */
  readonly seq: number;
  /** The entry as its writer encoded it (opaque to the store). */
  readonly text: string;
}

/**
 * A journal a shared store keeps beside its keys (the audit log of SPEC §6):
 * each entry is committed in the same atomic write as its change, so no
 * change is made without it, and every instance reads the same entries.
 */
export interface Journal {
  /**
   * Entries newest first: at most `limit`, numbered below `before` when
   * given. Rejects with {@link StoreUnavailableError} when the store cannot be reached.
   */
  page(limit: number, before?: number): Promise<JournalEntry[]>;
  /**
   * Appends an entry that goes with no change of a key (an entry's expiry),
   * numbered after every entry before it; resolves with its number. Rejects
   * with {@link JournalWriteError} when it cannot be written, or
   * {@link StoreUnavailableError} when the store cannot be reached.
   */
  append(text: string): Promise<number>;
}

/** What a committed change reports to its plan's `afterCommit`. */
export interface Committed {
  /** The number the store gave the plan's journal entry (none without one). */
  readonly journalSeq?: number;
}

/** What a transaction's plan decided: an optional change, its result, and work to do once the change is durable. */
export interface Plan<T> {
  readonly change?: KeyChange;
  readonly result: T;
  /**
   * An entry for the store's {@link KeyStore.journal}, committed in the same
   * atomic write as `change` (ignored without a change); only for a store
   * that keeps a journal. When it cannot be written the change is not made
   * and the transaction rejects with {@link JournalWriteError}.
   */
  readonly journal?: string;
  /** Runs after the change is durable and in force, before the transaction resolves (e.g. the audit log line). */
  readonly afterCommit?: (committed: Committed) => Promise<void>;
  /**
   * Runs, still under the store's lock, when the change could not be made
   * (e.g. to withdraw the audit line written ahead of it); the transaction
   * then rejects with the original error.
   */
  readonly onAbort?: () => Promise<void>;
  /**
   * Records the plan relied on as it read them (undefined: absent): the
   * change is made only if each is still so when it commits, else the plan
   * runs again on the newer snapshot. A store that plans under a lock no
   * other writer passes (the keys file) has nothing to check.
   */
  readonly reads?: ReadonlyArray<{ readonly id: string; readonly record: KeyRecord | undefined }>;
}

/** A source of key records that the proxy and the management API share. */
export interface KeyStore {
  /** Loads the initial snapshot; rejects with {@link StoreLoadError} when the source is invalid or unreachable. */
  load(): Promise<Snapshot>;
  /** The snapshot in force (valid after `load`); reading it never waits. */
  readonly snapshot: Snapshot;
  /** The compiled allow lists shared by every snapshot of this store (for metrics). */
  readonly matcherCache: MatcherCache;
  /** Whether the source is reachable now. */
  readonly health: StoreHealth;
  /** The journal the store keeps beside its keys (Redis: the shared audit log); undefined when it keeps none. */
  readonly journal?: Journal;
  /** How logs and messages name the store (a file's path, a Redis URL without its password). */
  readonly description: string;
  /** Subscribes to changes; returns the unsubscribe function. */
  subscribe(listener: StoreListener): () => void;
  /** Starts following external changes (file edits, other instances). */
  watch(): void;
  /** Brings the snapshot up to date with the source now; resolves once it is. */
  refresh(): Promise<void>;
  /**
   * Adds work to finish after each committed change of this process, before
   * its transaction resolves (a cluster primary makes every worker refresh).
   */
  onCommit(hook: () => Promise<void>): void;
  /**
   * Runs `plan` with the freshest snapshot and commits its change; the change
   * is durable and in force on this process before the returned promise
   * resolves, and no concurrent writer (in this process or another) loses an
   * update. Rejects with {@link StoreConflictError} when the source holds an
   * invalid external edit that a write would overwrite, and with
   * {@link StoreUnavailableError} when the source cannot be reached. A shared
   * store may run `plan` again on a fresher snapshot when another writer got
   * there first, so a plan's side effects belong in `afterCommit`.
   */
  transact<T>(plan: (snapshot: Snapshot) => Plan<T> | Promise<Plan<T>>): Promise<T>;
  /** Stops watching and releases resources. */
  close(): Promise<void>;
}

/** A store that could not be loaded, with every problem. */
export class StoreLoadError extends Error {
  constructor(readonly problems: readonly StoreProblem[]) {
    super(`key store is invalid (${problems.length} problem${problems.length === 1 ? "" : "s"})`);
    this.name = "StoreLoadError";
  }
}

/** A write refused because the store's source changed underneath and is invalid. */
export class StoreConflictError extends Error {
  constructor(
    message: string,
    readonly problems: readonly StoreProblem[],
  ) {
    super(message);
    this.name = "StoreConflictError";
  }
}

/** A write refused because the store's source cannot be reached (SPEC §6: 503 `store_unavailable`). */
export class StoreUnavailableError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "StoreUnavailableError";
  }
}

/** A write refused because its journal entry could not be written: nothing was changed. */
export class JournalWriteError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "JournalWriteError";
  }
}

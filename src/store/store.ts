/**
 * The key store contract, shared by the file-backed store and any future
 * shared backend (e.g. Redis): an async load, a synchronous current snapshot
 * for the hot path, and change events.
 */
import type { Problem } from "../util/yaml.js";
import type { KeyRecord } from "./keysfile.js";
import type { Snapshot } from "./snapshot.js";

/** Why a snapshot changed. */
export type ChangeCause = "load" | "reload" | "write";

/** Events a store reports; the shell logs and counts them. */
export interface StoreListener {
  /** A new snapshot is in force. */
  change?(snapshot: Snapshot, cause: ChangeCause): void;
  /** A reload was refused; the last good snapshot keeps serving. */
  reloadFailed?(problems: readonly Problem[]): void;
}

/** One change to the store; `update` carries the whole new record. */
export type KeyChange =
  | { readonly kind: "create"; readonly record: KeyRecord }
  | { readonly kind: "update"; readonly record: KeyRecord }
  | { readonly kind: "delete"; readonly id: string };

/** What a transaction's plan decided: an optional change, its result, and work to do once the change is durable. */
export interface Plan<T> {
  readonly change?: KeyChange;
  readonly result: T;
  /** Runs after the change is durable and in force, still under the store's lock. */
  readonly afterCommit?: () => Promise<void>;
  /**
   * Runs, still under the store's lock, when the change could not be made
   * (e.g. to withdraw the audit line written ahead of it); the transaction
   * then rejects with the original error.
   */
  readonly onAbort?: () => Promise<void>;
}

/** A source of key records that the proxy and the management API share. */
export interface KeyStore {
  /** Loads the initial snapshot; rejects with {@link StoreLoadError} when the source is invalid. */
  load(): Promise<Snapshot>;
  /** The snapshot in force (valid after `load`); reading it never waits. */
  readonly snapshot: Snapshot;
  /** Subscribes to changes; returns the unsubscribe function. */
  subscribe(listener: StoreListener): () => void;
  /** Starts following external changes (file edits, other instances). */
  watch(): void;
  /**
   * Runs `plan` under the store's write lock with the freshest snapshot (an
   * external edit is loaded first); its change is durable and in force on the
   * proxy before the returned promise resolves. Transactions never interleave.
   * Rejects with {@link StoreConflictError} when the source holds an invalid
   * external edit that a write would overwrite.
   */
  transact<T>(plan: (snapshot: Snapshot) => Plan<T> | Promise<Plan<T>>): Promise<T>;
  /** Stops watching and releases resources. */
  close(): Promise<void>;
}

/** A store that could not be loaded, with every problem located. */
export class StoreLoadError extends Error {
  constructor(readonly problems: readonly Problem[]) {
    super(`key store is invalid (${problems.length} problem${problems.length === 1 ? "" : "s"})`);
    this.name = "StoreLoadError";
  }
}

/** A write refused because the store's source changed underneath and is invalid. */
export class StoreConflictError extends Error {
  constructor(
    message: string,
    readonly problems: readonly Problem[],
  ) {
    super(message);
    this.name = "StoreConflictError";
  }
}

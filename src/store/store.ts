/**
 * The key store contract, shared by the file-backed store and any future
 * shared backend (e.g. Redis): an async load, a synchronous current snapshot
 * for the hot path, and change events.
 */
import type { Problem } from "../util/yaml.js";
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

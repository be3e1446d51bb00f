/**
 * The YAML-file key store: loads the keys file, follows edits (the directory
 * is watched, since editors and Kubernetes replace files by rename), validates
 * each new version off the hot path and swaps the snapshot in one assignment.
 * An invalid or missing file never replaces the last good snapshot.
 */
import { createHash } from "node:crypto";
import { watch, type FSWatcher } from "node:fs";
import { readFile } from "node:fs/promises";
import { dirname } from "node:path";
import type { Problem } from "../util/yaml.js";
import { parseKeysFile } from "./keysfile.js";
import { MatcherCache, Snapshot } from "./snapshot.js";
import { StoreLoadError, type ChangeCause, type KeyStore, type StoreListener } from "./store.js";

/** How long file events are collected before one reload (editors write in bursts). */
export const RELOAD_DEBOUNCE_MS = 100;

/** Options of {@link FileKeyStore}. */
export interface FileKeyStoreOptions {
  /** Absolute path of the keys file. */
  readonly file: string;
  /** How messages name the file (e.g. relative to the working directory). */
  readonly displayName: string;
  readonly maxEntries: number;
  readonly cache?: MatcherCache;
}

function digest(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}

/** Key store backed by one YAML keys file. */
export class FileKeyStore implements KeyStore {
  private current: Snapshot | undefined;
  private contentHash = "";
  private readonly listeners = new Set<StoreListener>();
  private watcher: FSWatcher | undefined;
  private timer: NodeJS.Timeout | undefined;
  private reloading: Promise<void> = Promise.resolve();
  private readonly cache: MatcherCache;

  constructor(private readonly options: FileKeyStoreOptions) {
    this.cache = options.cache ?? new MatcherCache();
  }

  get snapshot(): Snapshot {
    if (this.current === undefined) throw new Error("key store used before load()");
    return this.current;
  }

  /** The shared matcher cache (for metrics). */
  get matcherCache(): MatcherCache {
    return this.cache;
  }

  async load(): Promise<Snapshot> {
    const read = await this.read();
    if (!read.ok) throw new StoreLoadError(read.problems);
    this.install(read.snapshot, read.hash, "load");
    return read.snapshot;
  }

  subscribe(listener: StoreListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  watch(): void {
    if (this.watcher !== undefined) return;
    // Any event in the directory may be our file (rename-replace, symlink swaps);
    // the content hash decides whether anything changed.
    this.watcher = watch(dirname(this.options.file), { persistent: false }, () => this.schedule());
    this.watcher.on("error", (err) => {
      this.emitFailed([this.problem(`cannot watch the keys file's directory: ${err.message}`)]);
    });
  }

  /** Re-reads the file now (also what a file event triggers after the debounce). */
  reload(): Promise<void> {
    this.reloading = this.reloading.then(() => this.reloadNow());
    return this.reloading;
  }

  async close(): Promise<void> {
    this.watcher?.close();
    this.watcher = undefined;
    if (this.timer) clearTimeout(this.timer);
    await this.reloading;
  }

  private schedule(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.reload();
    }, RELOAD_DEBOUNCE_MS);
    this.timer.unref();
  }

  private async reloadNow(): Promise<void> {
    const read = await this.read(true);
    if (read.ok) {
      if (read.hash !== this.contentHash) this.install(read.snapshot, read.hash, "reload");
    } else if (read.problems.length > 0) {
      this.emitFailed(read.problems);
    }
  }

  private async read(
    skipUnchanged = false,
  ): Promise<{ ok: true; snapshot: Snapshot; hash: string } | { ok: false; problems: Problem[] }> {
    let text: string;
    try {
      text = await readFile(this.options.file, "utf8");
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      const why =
        code === "ENOENT" ? "the keys file does not exist" : `cannot read the keys file: ${(err as Error).message}`;
      return { ok: false, problems: [this.problem(why)] };
    }
    const hash = digest(text);
    if (skipUnchanged && hash === this.contentHash) return { ok: false, problems: [] };
    const parsed = parseKeysFile(this.options.displayName, text, this.options.maxEntries);
    if (!parsed.ok) return { ok: false, problems: parsed.problems };
    return { ok: true, snapshot: new Snapshot(parsed.keys, this.cache, this.current), hash };
  }

  private install(snapshot: Snapshot, hash: string, cause: ChangeCause): void {
    this.current = snapshot;
    this.contentHash = hash;
    for (const l of this.listeners) l.change?.(snapshot, cause);
  }

  private emitFailed(problems: readonly Problem[]): void {
    for (const l of this.listeners) l.reloadFailed?.(problems);
  }

  private problem(message: string): Problem {
    return { file: this.options.displayName, line: 1, col: 1, path: "", message };
  }
}

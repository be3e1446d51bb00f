/**
 * The YAML-file key store: loads the keys file, follows edits (the directory
 * is watched, since editors and Kubernetes replace files by rename), validates
 * each new version off the hot path and swaps the snapshot in one assignment.
 * An invalid or missing file never replaces the last good snapshot.
 *
 * Writes (management API) are serialized with reloads on one queue, re-read
 * the file first so an external edit is never silently lost, edit the YAML
 * document in place (comments and order of untouched entries survive), and
 * replace the file atomically (temp file, fsync, rename, fsync directory).
 */
import { createHash } from "node:crypto";
import { watch, type FSWatcher } from "node:fs";
import { open, readFile, rename, stat, unlink } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { isMap, isSeq, parseDocument } from "yaml";
import type { Problem } from "../util/yaml.js";
import { parseKeysFile, type KeyRecord } from "./keysfile.js";
import { MatcherCache, Snapshot } from "./snapshot.js";
import {
  StoreConflictError,
  StoreLoadError,
  type ChangeCause,
  type KeyChange,
  type KeyStore,
  type Plan,
  type StoreListener,
} from "./store.js";

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

type ReadResult =
  | { ok: true; snapshot: Snapshot; hash: string; text: string }
  | { ok: false; problems: Problem[]; unchanged?: boolean };

/** Writes `text` to `file` atomically: temp file, fsync, rename over, fsync the directory. */
export async function writeFileAtomic(file: string, text: string): Promise<void> {
  const dir = dirname(file);
  const tmp = join(dir, `.${basename(file)}.${process.pid}.${Date.now()}.tmp`);
  let mode = 0o600;
  try {
    mode = (await stat(file)).mode & 0o777;
  } catch {
    // a new file: owner-only
  }
  const fh = await open(tmp, "w", mode);
  try {
    await fh.writeFile(text, "utf8");
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    await rename(tmp, file);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
  const dh = await open(dir, "r");
  try {
    await dh.sync();
  } finally {
    await dh.close();
  }
}

/** Key store backed by one YAML keys file. */
export class FileKeyStore implements KeyStore {
  private current: Snapshot | undefined;
  private contentHash = "";
  private text = "";
  private readonly listeners = new Set<StoreListener>();
  private watcher: FSWatcher | undefined;
  private timer: NodeJS.Timeout | undefined;
  /** Reloads and transactions run one at a time, in order. */
  private queue: Promise<unknown> = Promise.resolve();
  private readonly cache: MatcherCache;
  private afterWrite: (() => Promise<void>) | undefined;

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

  /**
   * Sets work to finish after each write and before the transaction resolves
   * (a cluster primary makes every worker load the new file there).
   */
  onWrite(hook: () => Promise<void>): void {
    this.afterWrite = hook;
  }

  /** Absolute path of the keys file. */
  get file(): string {
    return this.options.file;
  }

  async load(): Promise<Snapshot> {
    const read = await this.read();
    if (!read.ok) throw new StoreLoadError(read.problems);
    this.install(read, "load");
    return read.snapshot;
  }

  subscribe(listener: StoreListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  watch(): void {
    if (this.watcher !== undefined) return;
    // Any event in the directory may be our file (rename-replace, symlink swaps);
    // the content hash decides whether anything changed, so our own writes are no-ops.
    this.watcher = watch(dirname(this.options.file), { persistent: false }, () => this.schedule());
    this.watcher.on("error", (err) => {
      this.emitFailed([this.problem(`cannot watch the keys file's directory: ${err.message}`)]);
    });
  }

  /** Re-reads the file now (also what a file event triggers after the debounce). */
  reload(): Promise<void> {
    return this.enqueue(async () => {
      const read = await this.read(true);
      if (read.ok) this.install(read, "reload");
      else if (!read.unchanged) this.emitFailed(read.problems);
    });
  }

  transact<T>(plan: (snapshot: Snapshot) => Plan<T> | Promise<Plan<T>>): Promise<T> {
    return this.enqueue(async () => {
      // An external edit not yet picked up is loaded first, so the change
      // applies on top of it instead of overwriting it.
      const read = await this.read(true);
      if (read.ok) this.install(read, "reload");
      else if (!read.unchanged) {
        this.emitFailed(read.problems);
        throw new StoreConflictError(
          `the keys file ${this.options.displayName} was edited and is now invalid; fix or revert that edit before changing keys through the API`,
          read.problems,
        );
      }
      const p = await plan(this.snapshot);
      if (p.change) {
        await this.commit(p.change);
        await this.afterWrite?.();
      }
      if (p.afterCommit) await p.afterCommit();
      return p.result;
    });
  }

  async close(): Promise<void> {
    this.watcher?.close();
    this.watcher = undefined;
    if (this.timer) clearTimeout(this.timer);
    await this.queue.catch(() => undefined);
  }

  private enqueue<T>(task: () => Promise<T>): Promise<T> {
    const run = this.queue.then(task, task);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private schedule(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.reload();
    }, RELOAD_DEBOUNCE_MS);
    this.timer.unref();
  }

  private async read(skipUnchanged = false): Promise<ReadResult> {
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
    if (skipUnchanged && hash === this.contentHash) return { ok: false, problems: [], unchanged: true };
    return this.parse(text, hash);
  }

  private parse(text: string, hash: string): ReadResult {
    const parsed = parseKeysFile(this.options.displayName, text, this.options.maxEntries);
    if (!parsed.ok) return { ok: false, problems: parsed.problems };
    return { ok: true, snapshot: new Snapshot(parsed.keys, this.cache, this.current), hash, text };
  }

  private install(read: { snapshot: Snapshot; hash: string; text: string }, cause: ChangeCause): void {
    this.current = read.snapshot;
    this.contentHash = read.hash;
    this.text = read.text;
    for (const l of this.listeners) l.change?.(read.snapshot, cause);
  }

  /** Applies `change` to the YAML document, writes it atomically, then installs it. */
  private async commit(change: KeyChange): Promise<void> {
    const doc = parseDocument(this.text);
    let seq = doc.get("keys", true);
    if (!isSeq(seq)) {
      seq = doc.createNode([]);
      doc.set("keys", seq);
    }
    if (!isSeq(seq)) throw new Error("internal: keys is not a sequence");
    const items = seq.items;
    const indexOf = (id: string): number => items.findIndex((item) => isMap(item) && item.get("id") === id);
    if (change.kind === "create") {
      seq.add(doc.createNode(toYaml(change.record)));
    } else if (change.kind === "update") {
      const i = indexOf(change.record.id);
      const item = items[i];
      if (!isMap(item)) throw new Error(`internal: key ${change.record.id} vanished`);
      const before = item.toJSON() as Record<string, unknown>;
      const defaults: Record<string, unknown> = { name: change.record.id, scopes: [], ip_allow_list: [] };
      for (const [k, v] of Object.entries(toYaml(change.record))) {
        const same = (x: unknown): boolean => JSON.stringify(x) === JSON.stringify(v);
        // Untouched fields keep their node (and comments); absent defaults stay absent.
        if (k in before ? !same(before[k]) : !same(defaults[k])) item.set(k, doc.createNode(v));
      }
      if (change.record.mode === undefined) item.delete("mode");
    } else {
      seq.delete(indexOf(change.id));
    }
    const text = doc.toString({ flowCollectionPadding: false });
    const read = this.parse(text, digest(text));
    if (!read.ok) {
      // A change that would not load again is a bug: never write it.
      throw new Error(
        `internal: the edited keys file does not validate: ${read.problems.map((p) => p.message).join("; ")}`,
      );
    }
    await writeFileAtomic(this.options.file, text);
    this.install(read, "write");
  }

  private emitFailed(problems: readonly Problem[]): void {
    for (const l of this.listeners) l.reloadFailed?.(problems);
  }

  private problem(message: string): Problem {
    return { file: this.options.displayName, line: 1, col: 1, path: "", message };
  }
}

/** A record as keys-file fields, in the file's usual order. */
function toYaml(r: KeyRecord): Record<string, unknown> {
  const out: Record<string, unknown> = {
    id: r.id,
    name: r.name,
    secret_sha256: r.secretSha256,
    scopes: [...r.scopes],
    ip_allow_list: [...r.ipAllowList],
  };
  if (r.mode !== undefined) out["mode"] = r.mode;
  if (r.createdAt !== undefined) out["created_at"] = r.createdAt;
  if (r.updatedAt !== undefined) out["updated_at"] = r.updatedAt;
  return out;
}

/**
 * The YAML-file key store: loads the keys file, follows edits (the directory
 * is watched, since editors and Kubernetes replace files by rename), validates
 * each new version off the hot path and swaps the snapshot in one assignment.
 * An invalid or missing file never replaces the last good snapshot.
 *
 * Writes (management API) are serialized with reloads on one queue and, across
 * processes sharing the file, by a lock in the file's directory
 * (`.NAME.lock`, proper-lockfile: an atomic mkdir whose mtime the holder
 * refreshes, so a lock left by a killed process goes stale and is taken
 * over). Under both, a write first checks the file: unless its signature
 * (device, inode, size, mtime and ctime in nanoseconds) is still the one we
 * last read or wrote, it is re-read, so a change made by another process or
 * an editor is never lost. The write then edits the YAML in place (comments
 * and order of untouched entries survive; the usual layout is spliced one
 * block of entries at a time, see blocks.ts) and replaces the file atomically
 * (random temp name, fsync, rename, fsync directory).
 */
import { createHash } from "node:crypto";
import { watch, type FSWatcher } from "node:fs";
import type { BigIntStats } from "node:fs";
import { stat } from "node:fs/promises";
import { dirname } from "node:path";
import { isMap, isSeq, parseDocument } from "yaml";
import { writeFileAtomic } from "../util/atomic.js";
import { lockBeside } from "../util/lock.js";
import type { Problem } from "../util/yaml.js";
import { Worker } from "node:worker_threads";
import { parseKeysFile, readKeysText, type KeyRecord } from "./keysfile.js";
import { editEntry, indexEntries, toYaml, WRITE_OPTIONS, type EntryIndex } from "./splice.js";
import { EntryBlocks } from "./blocks.js";
import type { LoaderInput, LoaderMessage } from "./loader.js";
import { Compactor, MatcherCache, Snapshot, SnapshotBuilder } from "./snapshot.js";
import type { KeyChange } from "./change.js";
import {
  JournalWriteError,
  StoreConflictError,
  StoreLoadError,
  type ChangeCause,
  type KeyStore,
  type Plan,
  type StoreHealth,
  type StoreListener,
} from "./store.js";

/** How long file events are collected before one reload (editors write in bursts). */
export const RELOAD_DEBOUNCE_MS = 100;

/** Files at least this large are parsed in a worker thread and installed in slices. */
export const WORKER_THRESHOLD_BYTES = 512 * 1024;

/** Records per message from the loader thread (each takes a few milliseconds to receive). */
const CHUNK = 2000;

/** Options of {@link FileKeyStore}. */
export interface FileKeyStoreOptions {
  /** Absolute path of the keys file. */
  readonly file: string;
  /** How messages name the file (e.g. relative to the working directory). */
  readonly displayName: string;
  readonly maxEntries: number;
  readonly cache?: MatcherCache;
  /** Milliseconds since the epoch, to judge whether the file changed too recently to trust its signature (tests move it). */
  readonly now?: () => number;
}

/**
 * What identifies one version of the file without reading it: device,
 * inode, size, and mtime and ctime in nanoseconds. A replacement (a new
 * inode), a write that changes the size, and any write in a later clock tick
 * of the file system change it (ctime cannot be set back by a tool); a
 * same-size rewrite in place within the tick of the version we saw does not.
 */
function signature(st: BigIntStats): string {
  return `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
}

/**
 * A version changed less than this long ago may still change within the
 * same timestamp tick (coarse clocks, 2 s on FAT): its signature is not
 * trusted to stand for its content, so the next write reads it again.
 */
const RACY_MS = 2_000;

/** The signature of `st`, when old enough at `now` to stand for the content read after it (see {@link RACY_MS}). */
function settledSignature(st: BigIntStats, now: number): string | undefined {
  return Number(st.ctimeMs) < now - RACY_MS ? signature(st) : undefined;
}

function digest(data: string | Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

/** The file's bytes in force: as read (indexed on the first write), or as blocks once indexed. */
type Source =
  { readonly bytes: Buffer; readonly ids: readonly string[]; readonly index?: EntryIndex | undefined } | EntryBlocks;

/** A version of the file, read and validated: its snapshot, bytes, and signature as seen before reading. */
interface Read {
  readonly snapshot: Snapshot;
  readonly hash: string;
  readonly source: Source;
  readonly seen: string | undefined;
}

type ReadResult = ({ ok: true } & Read) | { ok: false; problems: Problem[]; unchanged?: boolean };

/** Key store backed by one YAML keys file. */
export class FileKeyStore implements KeyStore {
  private current: Snapshot | undefined;
  private contentHash = "";
  /** The file's bytes in force (writes edit them in place). */
  private source: Source = { bytes: Buffer.alloc(0), ids: [] };
  private readonly listeners = new Set<StoreListener>();
  private watcher: FSWatcher | undefined;
  private timer: NodeJS.Timeout | undefined;
  /** Reloads and transactions run one at a time, in order. */
  private queue: Promise<unknown> = Promise.resolve();
  private readonly cache: MatcherCache;
  private readonly commitHooks: (() => Promise<void>)[] = [];
  /**
   * The {@link signature} of the file as we last read it (taken before
   * reading; none while racy, see {@link RACY_MS}) or as our last write left
   * it (trusted at once: the residual risk is an edit in place that keeps the
   * size within the same timestamp tick as our rename).
   */
  private seen: string | undefined;
  private readonly compactor = new Compactor(
    () => this.current,
    (s) => {
      this.current = s;
    },
  );

  constructor(private readonly options: FileKeyStoreOptions) {
    this.cache = options.cache ?? new MatcherCache();
  }

  get snapshot(): Snapshot {
    if (this.current === undefined) throw new Error("key store used before load()");
    return this.current;
  }

  get matcherCache(): MatcherCache {
    return this.cache;
  }

  /** A local file is always reachable; a problem with it is a refused reload, not an outage. */
  get health(): StoreHealth {
    return { up: true, reason: "" };
  }

  get description(): string {
    return this.options.displayName;
  }

  onCommit(hook: () => Promise<void>): void {
    this.commitHooks.push(hook);
  }

  refresh(): Promise<void> {
    return this.reload();
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
      const release = await this.lockFile();
      try {
        return await this.transactLocked(plan);
      } finally {
        await release().catch(() => undefined);
      }
    });
  }

  /** Takes the lock other processes writing this file take too (waits up to ~30 s for it). */
  private lockFile(): Promise<() => Promise<void>> {
    return lockBeside(this.options.file, (err) => {
      this.emitFailed([this.problem(`the keys file lock was lost: ${err.message}`)]);
    });
  }

  private transactLocked<T>(plan: (snapshot: Snapshot) => Plan<T> | Promise<Plan<T>>): Promise<T> {
    return (async () => {
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
      if (p.change && p.journal !== undefined) {
        await p.onAbort?.().catch(() => undefined);
        throw new JournalWriteError("the file store keeps no journal: its audit log is written ahead of each change");
      }
      if (p.change) {
        try {
          await this.commit(p.change);
        } catch (err) {
          await p.onAbort?.().catch(() => undefined);
          throw err;
        }
        for (const hook of this.commitHooks) await hook();
      }
      if (p.afterCommit) await p.afterCommit({});
      return p.result;
    })();
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

  /**
   * Reads and validates the file. With `skipUnchanged`, a file whose
   * signature is the one we last saw, or whose content is the one in force,
   * is reported unchanged without being parsed.
   */
  private async read(skipUnchanged = false): Promise<ReadResult> {
    let seen: string | undefined;
    try {
      // Taken before reading: a change after this point changes the signature, so it is read next time.
      const st = await stat(this.options.file, { bigint: true });
      if (skipUnchanged && signature(st) === this.seen) return { ok: false, problems: [], unchanged: true };
      seen = settledSignature(st, (this.options.now ?? Date.now)());
      if (st.size >= WORKER_THRESHOLD_BYTES) return await this.readInWorker(skipUnchanged, seen);
    } catch {
      // Missing or unreadable: the inline path reports it.
    }
    const read = await readKeysText(this.options.file, this.options.displayName);
    if (!read.ok) return read;
    const text = read.text;
    const hash = digest(text);
    if (skipUnchanged && hash === this.contentHash) return this.unchanged(seen);
    return this.parse(text, hash, seen);
  }

  /** The file holds the content in force: remember its signature, so the next check needs no read. */
  private unchanged(seen: string | undefined): ReadResult {
    this.seen = seen;
    return { ok: false, problems: [], unchanged: true };
  }

  /** Parses in a worker thread; records arrive in chunks and go into the next snapshot as they come. */
  private readInWorker(skipUnchanged: boolean, seen: string | undefined): Promise<ReadResult> {
    return new Promise((resolve) => {
      const input: LoaderInput = {
        file: this.options.file,
        displayName: this.options.displayName,
        maxEntries: this.options.maxEntries,
        knownHash: skipUnchanged ? this.contentHash : "",
        chunkSize: CHUNK,
      };
      const worker = new Worker(new URL("./loader.js", import.meta.url), { workerData: input });
      const builder = new SnapshotBuilder(this.cache, this.current);
      const ids: string[] = [];
      let settled = false;
      const settle = (r: ReadResult): void => {
        if (settled) return;
        settled = true;
        resolve(r);
        void worker.terminate();
      };
      worker.on("message", (m: LoaderMessage) => {
        switch (m.type) {
          case "chunk":
            for (const r of m.records as KeyRecord[]) {
              builder.add(r);
              ids.push(r.id);
            }
            // Ask for the next chunk only after the event loop had its turn.
            setImmediate(() => worker.postMessage("next"));
            break;
          case "done": {
            const source = { bytes: Buffer.from(m.bytes), ids, index: m.index };
            settle({ ok: true, snapshot: builder.finish(), hash: m.hash, source, seen });
            break;
          }
          case "unchanged":
            settle(this.unchanged(seen));
            break;
          case "invalid":
            settle({ ok: false, problems: m.problems as Problem[] });
            break;
        }
      });
      worker.on("error", (err) =>
        settle({ ok: false, problems: [this.problem(`cannot load the keys file: ${err.message}`)] }),
      );
      worker.on("exit", () =>
        settle({ ok: false, problems: [this.problem("the keys file loader stopped unexpectedly")] }),
      );
    });
  }

  private parse(text: string, hash: string, seen: string | undefined): ReadResult {
    const parsed = parseKeysFile(this.options.displayName, text, this.options.maxEntries);
    if (!parsed.ok) return { ok: false, problems: parsed.problems };
    return {
      ok: true,
      snapshot: new Snapshot(parsed.keys, this.cache, this.current),
      hash,
      source: { bytes: Buffer.from(text), ids: parsed.keys.map((k) => k.id) },
      seen,
    };
  }

  private install(read: Read, cause: ChangeCause, changes?: readonly KeyChange[]): void {
    this.current = read.snapshot;
    this.contentHash = read.hash;
    this.source = read.source;
    this.seen = read.seen;
    for (const l of this.listeners) l.change?.(read.snapshot, cause, changes);
    this.compactor.changed();
  }

  /**
   * Applies `change` to the file's bytes, writes them atomically, then
   * installs them. The usual layout is edited in place (one block of entries
   * is spliced, only the changed entry is parsed); any other layout goes
   * through the whole `yaml` Document.
   */
  private async commit(change: KeyChange): Promise<void> {
    const blocks = await this.blocks();
    const applied = blocks?.apply(change);
    let parts: Buffer[];
    let source: Source;
    if (applied !== undefined) {
      parts = applied.parts;
      source = applied.next;
    } else {
      const edited = this.editDocument(change);
      parts = [edited.bytes];
      source = edited;
    }
    let size = 0;
    for (const p of parts) size += p.length;
    const small = size < WORKER_THRESHOLD_BYTES;
    let hash = "";
    let snapshot: Snapshot;
    if (small) {
      // Small files: validate the whole result, as a reload would.
      const text = Buffer.concat(parts).toString("utf8");
      hash = digest(text);
      const read = this.parse(text, hash, undefined);
      if (!read.ok) {
        throw new Error(
          `internal: the edited keys file does not validate: ${read.problems.map((p) => p.message).join("; ")}`,
        );
      }
      snapshot = read.snapshot;
    } else {
      // Large files: the entry was validated by the caller; the change goes into the snapshot's overlay.
      snapshot = this.snapshot.withChange(change);
    }
    await writeFileAtomic(this.options.file, parts);
    const seen = signature(await stat(this.options.file, { bigint: true }));
    this.install({ snapshot, hash, source, seen }, "write", [change]);
  }

  /** The source as blocks (indexed, then split a slice at a time, on the first write); undefined for a layout the blocks do not handle. */
  private async blocks(): Promise<EntryBlocks | undefined> {
    const source = this.source;
    if (source instanceof EntryBlocks) return source;
    const index = source.index ?? indexEntries(source.bytes, source.ids);
    if (index === undefined) return undefined;
    // The same bytes, split (transactions and reloads run one at a time: nothing replaced the source meanwhile).
    this.source = await EntryBlocks.build(source.bytes, index, source.ids);
    return this.source;
  }

  /** The whole-document edit, for layouts the in-place edit does not handle: the new file and its ids in order. */
  private editDocument(change: KeyChange): { bytes: Buffer; ids: string[] } {
    const text = (this.source instanceof EntryBlocks ? this.source.joined() : this.source.bytes).toString("utf8");
    const doc = parseDocument(text);
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
      const item = items[indexOf(change.record.id)];
      if (!isMap(item)) throw new Error(`internal: key ${change.record.id} vanished`);
      editEntry(doc, item, change.record);
    } else {
      seq.delete(indexOf(change.id));
    }
    const ids = seq.items.map((item) => (isMap(item) ? String(item.get("id")) : ""));
    return { bytes: Buffer.from(doc.toString(WRITE_OPTIONS)), ids };
  }

  private emitFailed(problems: readonly Problem[]): void {
    for (const l of this.listeners) l.reloadFailed?.(problems);
  }

  private problem(message: string): Problem {
    return { file: this.options.displayName, line: 1, col: 1, path: "", message };
  }
}

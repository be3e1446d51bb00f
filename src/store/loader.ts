/**
 * Worker thread that reads, parses and validates a large keys file off the
 * main thread, then sends the records in chunks (each a few milliseconds to
 * receive), one per request of the main thread, so a reload of 100,000 keys
 * never stalls the proxy.
 */
import { createHash } from "node:crypto";
import { parentPort, workerData } from "node:worker_threads";
import { parseKeysFile, readKeysText } from "./keysfile.js";
import { indexEntries, type EntryIndex } from "./splice.js";

/** What the worker is asked to load. */
export interface LoaderInput {
  readonly file: string;
  readonly displayName: string;
  readonly maxEntries: number;
  /** Content hash of the version in force: an identical file is reported unchanged. */
  readonly knownHash: string;
  readonly chunkSize: number;
}

/** Messages the worker sends, in order: chunks, then one of the others. */
export type LoaderMessage =
  | { readonly type: "chunk"; readonly records: unknown[] }
  | {
      readonly type: "done";
      readonly hash: string;
      /** The file's UTF-8 bytes, transferred (not copied). */
      readonly bytes: ArrayBuffer;
      readonly index: EntryIndex | undefined;
    }
  | { readonly type: "unchanged" }
  | { readonly type: "invalid"; readonly problems: unknown[] };

async function run(input: LoaderInput): Promise<void> {
  const post = (m: LoaderMessage): void => parentPort?.postMessage(m);
  const read = await readKeysText(input.file, input.displayName);
  if (!read.ok) {
    post({ type: "invalid", problems: read.problems });
    return;
  }
  const text = read.text;
  const hash = createHash("sha256").update(text).digest("hex");
  if (hash === input.knownHash) {
    post({ type: "unchanged" });
    return;
  }
  const parsed = parseKeysFile(input.displayName, text, input.maxEntries);
  if (!parsed.ok) {
    post({ type: "invalid", problems: parsed.problems });
    return;
  }
  // One chunk at a time, each when the main thread asks: Node delivers every
  // queued message in one go, which would stall the proxy as long as all of them.
  for (let i = 0; i < parsed.keys.length; i += input.chunkSize) {
    post({ type: "chunk", records: parsed.keys.slice(i, i + input.chunkSize) });
    await new Promise((resolve) => parentPort?.once("message", resolve));
  }
  const bytes = new TextEncoder().encode(text);
  const index = indexEntries(
    bytes,
    parsed.keys.map((k) => k.id),
  );
  const buffer = bytes.buffer;
  const done: LoaderMessage = { type: "done", hash, bytes: buffer, index };
  const transfer = [buffer];
  if (index !== undefined) transfer.push(index.starts.buffer, index.bodies.buffer);
  parentPort?.postMessage(done, transfer);
}

if (parentPort !== null) void run(workerData as LoaderInput);

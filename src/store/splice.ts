/**
 * Edits of a keys file in place, one entry at a time, for the usual block
 * layout (`keys:` at column 0, one `- id: ...` item per key). Only the entry
 * that changes is parsed and re-serialized (with the `yaml` Document API, so
 * its comments survive); every other byte of the file stays as it was. A file
 * laid out any other way is left to the whole-document path.
 *
 * The file is handled as bytes, and an edit returns the new file as parts
 * (views of the old bytes around the edited entry): a 100,000-key file is
 * never decoded, concatenated as a string or re-encoded on the event loop,
 * and the caller copies the 21 MB a slice at a time.
 */
import { isMap, isSeq, parseDocument, stringify, type Document, type YAMLMap } from "yaml";
import { hexOfDigest } from "./digest.js";
import type { KeyRecord } from "./keysfile.js";
import type { KeyChange } from "./change.js";
import { entryItems } from "./entries.js";

/** Where each entry's bytes lie: `starts[k]` (with its leading comments) to `starts[k+1]` or `end`. */
export interface EntryIndex {
  /** Spaces before each item's `-`. */
  readonly indent: number;
  /** Byte offset of each item, its leading comments included. */
  readonly starts: Float64Array<ArrayBuffer>;
  /** Byte offset of each item's `- ` line (after leading comments). */
  readonly bodies: Float64Array<ArrayBuffer>;
  readonly end: number;
}

/**
 * How keyfence writes YAML: compact flow lists, and never a folded line (the
 * writer would fold long strings at 80 columns, once between the halves of a
 * surrogate pair, which came back as U+FFFD).
 */
export const WRITE_OPTIONS = { flowCollectionPadding: false, lineWidth: 0 } as const;

const ID_LINE = /^[ ]*(?:- )?id:[ ]*(["']?)([A-Za-z0-9_-]{1,64})\1[ ]*(?:#.*)?$/m;

/**
 * Indexes the entries of the UTF-8 file `bytes`, checking that they are
 * exactly `ids` in order; undefined when the layout is not the usual one.
 */
export function indexEntries(bytes: Uint8Array, ids: readonly string[]): EntryIndex | undefined {
  // One character per byte: offsets are byte offsets, and every character the
  // layout depends on is ASCII, which never occurs inside a UTF-8 sequence.
  const text = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("latin1");
  const head = /^keys:[ ]*(?:#.*)?$/m.exec(text);
  if (head === null || text.includes("\t")) return undefined;
  let pos = head.index + head[0].length + 1;
  let indent = -1;
  const starts: number[] = [];
  const bodies: number[] = [];
  let commentRun = -1; // start of the comment lines right above the next item
  let end = text.length;
  while (pos < text.length) {
    const nl = text.indexOf("\n", pos);
    const lineEnd = nl < 0 ? text.length : nl;
    let i = pos;
    while (i < lineEnd && text.charCodeAt(i) === 32) i++;
    const c = i < lineEnd ? text.charCodeAt(i) : -1;
    if (c === -1 || c === 13) {
      commentRun = -1; // a blank line detaches comments above it
    } else if (c === 35) {
      if (commentRun < 0) commentRun = pos;
    } else if (i === pos) {
      end = pos; // a top-level line: the sequence is over
      break;
    } else if (c === 45 && text.charCodeAt(i + 1) === 32 && (indent < 0 || i - pos === indent)) {
      if (indent < 0) indent = i - pos;
      starts.push(commentRun >= 0 ? commentRun : pos);
      bodies.push(pos);
      commentRun = -1;
    } else {
      if (indent < 0 || i - pos <= indent) return undefined; // not an item, not inside one
      commentRun = -1;
    }
    pos = lineEnd + 1;
  }
  if (starts.length !== ids.length || starts.length === 0) return undefined;
  for (let k = 0; k < ids.length; k++) {
    const body = text.slice(bodies[k], starts[k + 1] ?? end);
    if (ID_LINE.exec(body)?.[2] !== ids[k]) return undefined;
  }
  return { indent, starts: Float64Array.from(starts), bodies: Float64Array.from(bodies), end };
}

/** A record as keys-file fields, in the file's usual order. */
export function toYaml(r: KeyRecord): Record<string, unknown> {
  const out: Record<string, unknown> = {
    id: r.id,
    name: r.name,
    secret_sha256: hexOfDigest(r.secretDigest),
    scopes: [...r.scopes],
    ip_allow_list: entryItems(r.ipAllowList, r.entryDetails),
  };
  if (r.mode !== undefined) out["mode"] = r.mode;
  if (r.sandbox === true) out["sandbox"] = true;
  if (r.createdAt !== undefined) out["created_at"] = r.createdAt;
  if (r.updatedAt !== undefined) out["updated_at"] = r.updatedAt;
  return out;
}

/**
 * Rewrites the fields of one entry node to `record`: untouched fields keep
 * their node (and comments); fields absent from the file that hold their
 * default stay absent.
 */
export function editEntry(doc: Document, item: YAMLMap, record: KeyRecord): void {
  const before = item.toJSON() as Record<string, unknown>;
  const defaults: Record<string, unknown> = { name: record.id, scopes: [], ip_allow_list: [] };
  for (const [k, v] of Object.entries(toYaml(record))) {
    const same = (x: unknown): boolean => JSON.stringify(x) === JSON.stringify(v);
    if (k in before ? !same(before[k]) : !same(defaults[k])) item.set(k, doc.createNode(v));
  }
  if (record.mode === undefined) item.delete("mode");
  if (record.sandbox !== true) item.delete("sandbox");
}

/** Indents every non-empty line; lines end at "\n" only (a regex `^` with the m flag also starts one after U+2028 and U+2029, inside a value). */
function reindent(text: string, indent: number): string {
  const pad = " ".repeat(indent);
  return text
    .split("\n")
    .map((l) => (l === "" ? l : pad + l))
    .join("\n");
}

function dedent(text: string, indent: number): string {
  const pad = " ".repeat(indent);
  return text
    .split("\n")
    .map((l) => (l.startsWith(pad) ? l.slice(indent) : l.trimStart()))
    .join("\n");
}

/** `xs` with `delta` added after position `k`, and position `k` removed when `drop`. */
function shift(xs: Float64Array, k: number, delta: number, drop: boolean): Float64Array<ArrayBuffer> {
  const out = new Float64Array(drop ? xs.length - 1 : xs.length);
  out.set(xs.subarray(0, drop ? k : k + 1));
  for (let j = k + 1; j < xs.length; j++) out[drop ? j - 1 : j] = (xs[j] ?? 0) + delta;
  return out;
}

/** `xs` with `x` appended. */
function append(xs: Float64Array, x: number): Float64Array<ArrayBuffer> {
  const out = new Float64Array(xs.length + 1);
  out.set(xs);
  out[xs.length] = x;
  return out;
}

/**
 * The new file's bytes after `change`, in parts, and their index, editing
 * only the affected entry; `position` is the changed key's place in the file
 * (ignored for a create). Undefined when it cannot be done in place, or when
 * the entry at `position` is not that key.
 */
export function spliceChange(
  bytes: Buffer,
  index: EntryIndex,
  position: number,
  change: KeyChange,
): { parts: Uint8Array[]; index: EntryIndex } | undefined {
  const { indent, starts, bodies, end } = index;
  if (change.kind === "create") {
    const newline = end > 0 && bytes[end - 1] !== 10 ? "\n" : "";
    const item = Buffer.from(newline + reindent(stringify([toYaml(change.record)], WRITE_OPTIONS), indent));
    const at = end + newline.length;
    return {
      parts: [bytes.subarray(0, end), item, bytes.subarray(end)],
      index: { indent, starts: append(starts, at), bodies: append(bodies, at), end: end + item.length },
    };
  }
  const k = position;
  if (k < 0 || k >= starts.length) return undefined;
  const to = starts[k + 1] ?? end;
  // The entry at `position` must be the key that changes: a wrong position
  // falls back to the whole-document path instead of editing another key.
  const id = change.kind === "delete" ? change.id : change.record.id;
  if (ID_LINE.exec(bytes.toString("latin1", bodies[k], to))?.[2] !== id) return undefined;
  if (change.kind === "delete") {
    const from = starts[k] ?? 0;
    const delta = from - to;
    return {
      parts: [bytes.subarray(0, from), bytes.subarray(to)],
      index: { indent, starts: shift(starts, k, delta, true), bodies: shift(bodies, k, delta, true), end: end + delta },
    };
  }
  const from = bodies[k] ?? 0;
  const segment = bytes.toString("utf8", from, to);
  // Blank lines after the entry stay exactly as they are.
  const trailing = /\n*$/.exec(segment)?.[0] ?? "";
  const core = segment.slice(0, segment.length - trailing.length);
  const doc = parseDocument(dedent(core, indent));
  const seq = doc.contents;
  if (doc.errors.length > 0 || !isSeq(seq) || seq.items.length !== 1) return undefined;
  const item = seq.items[0];
  if (!isMap(item)) return undefined;
  editEntry(doc, item, change.record);
  const edited = Buffer.from(reindent(doc.toString(WRITE_OPTIONS).replace(/\n$/, ""), indent) + trailing);
  const delta = edited.length - (to - from);
  return {
    parts: [bytes.subarray(0, from), edited, bytes.subarray(to)],
    index: { indent, starts: shift(starts, k, delta, false), bodies: shift(bodies, k, delta, false), end: end + delta },
  };
}

/**
 * Edits of a keys file in place, one entry at a time, for the usual block
 * layout (`keys:` at column 0, one `- id: ...` item per key). Only the entry
 * that changes is parsed and re-serialized (with the `yaml` Document API, so
 * its comments survive); every other byte of the file stays as it was. A file
 * laid out any other way is left to the whole-document path.
 */
import { isMap, isSeq, parseDocument, stringify, type Document, type YAMLMap } from "yaml";
import type { KeyRecord } from "./keysfile.js";
import type { KeyChange } from "./store.js";

/** Where each entry's text lies: `starts[k]` (with its leading comments) to `starts[k+1]` or `end`. */
export interface EntryIndex {
  /** Spaces before each item's `-`. */
  readonly indent: number;
  readonly starts: readonly number[];
  /** Offset of each item's `- ` line (after leading comments). */
  readonly bodies: readonly number[];
  readonly end: number;
}

const ID_LINE = /^[ ]*(?:- )?id:[ ]*(["']?)([A-Za-z0-9_-]{1,64})\1[ ]*(?:#.*)?$/m;

/**
 * Indexes the entries of `text`, checking that they are exactly `ids` in
 * order; undefined when the layout is not the usual one.
 */
export function indexEntries(text: string, ids: readonly string[]): EntryIndex | undefined {
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
  return { indent, starts, bodies, end };
}

/** A record as keys-file fields, in the file's usual order. */
export function toYaml(r: KeyRecord): Record<string, unknown> {
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
}

function reindent(text: string, indent: number): string {
  const pad = " ".repeat(indent);
  return text.replace(/^(?=[^\n])/gm, pad);
}

function dedent(text: string, indent: number): string {
  const pad = " ".repeat(indent);
  return text
    .split("\n")
    .map((l) => (l.startsWith(pad) ? l.slice(indent) : l.trimStart()))
    .join("\n");
}

/** The new text after `change` and its index, editing only the affected entry; undefined when it cannot be done in place. */
export function spliceChange(
  text: string,
  index: EntryIndex,
  ids: readonly string[],
  change: KeyChange,
): { text: string; index: EntryIndex } | undefined {
  const shifted = (k: number, delta: number, drop: boolean): EntryIndex => {
    const move = (xs: readonly number[]): number[] => {
      const out = xs.map((x, j) => (j > k ? x + delta : x));
      if (drop) out.splice(k, 1);
      return out;
    };
    return { indent: index.indent, starts: move(index.starts), bodies: move(index.bodies), end: index.end + delta };
  };
  if (change.kind === "create") {
    const newline = index.end > 0 && text.charCodeAt(index.end - 1) !== 10 ? "\n" : "";
    const item = newline + reindent(stringify([toYaml(change.record)], { flowCollectionPadding: false }), index.indent);
    const at = index.end + newline.length;
    return {
      text: text.slice(0, index.end) + item + text.slice(index.end),
      index: {
        indent: index.indent,
        starts: [...index.starts, at],
        bodies: [...index.bodies, at],
        end: index.end + item.length,
      },
    };
  }
  const k = ids.indexOf(change.kind === "update" ? change.record.id : change.id);
  if (k < 0) return undefined;
  const to = index.starts[k + 1] ?? index.end;
  if (change.kind === "delete") {
    const from = index.starts[k] ?? 0;
    return { text: text.slice(0, from) + text.slice(to), index: shifted(k, from - to, true) };
  }
  const from = index.bodies[k] ?? 0;
  const segment = text.slice(from, to);
  // Blank lines after the entry stay exactly as they are.
  const trailing = /\n*$/.exec(segment)?.[0] ?? "";
  const core = segment.slice(0, segment.length - trailing.length);
  const doc = parseDocument(dedent(core, index.indent));
  const seq = doc.contents;
  if (doc.errors.length > 0 || !isSeq(seq) || seq.items.length !== 1) return undefined;
  const item = seq.items[0];
  if (!isMap(item)) return undefined;
  editEntry(doc, item, change.record);
  const edited = reindent(doc.toString({ flowCollectionPadding: false }).replace(/\n$/, ""), index.indent) + trailing;
  return {
    text: text.slice(0, from) + edited + text.slice(to),
    index: shifted(k, edited.length - segment.length, false),
  };
}

/**
 * YAML files with positions: parse once, then validate plain values by path and
 * report each problem as `FILE:LINE:COL: PATH ("VALUE"): MESSAGE`.
 */
import { isMap, isPair, isScalar, isSeq, LineCounter, parseDocument, type Document } from "yaml";

/** A path into a YAML document: map keys and sequence indexes. */
export type YamlPath = ReadonlyArray<string | number>;

/** One validation problem, located in its file. */
export interface Problem {
  readonly file: string;
  readonly line: number;
  readonly col: number;
  readonly path: string;
  /** The offending value, when there is one to quote. */
  readonly value?: unknown;
  readonly message: string;
}

/** Formats a path as `keys[0].ip_allow_list[1]`. */
export function formatPath(path: YamlPath): string {
  let out = "";
  for (const seg of path) {
    if (typeof seg === "number") out += `[${seg}]`;
    else out += out === "" ? seg : `.${seg}`;
  }
  return out;
}

function quote(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value);
  return JSON.stringify(JSON.stringify(value) ?? String(value));
}

/** Renders a problem on one line, the way compilers do. */
export function formatProblem(p: Problem): string {
  const where = `${p.file}:${p.line}:${p.col}`;
  const what = p.path === "" ? "" : p.value === undefined ? `${p.path}: ` : `${p.path} (${quote(p.value)}): `;
  return `${where}: ${what}${p.message}`;
}

/** A parsed YAML file that can locate any path and collect problems about it. */
export class YamlFile {
  readonly doc: Document.Parsed;
  readonly problems: Problem[] = [];
  private readonly lines = new LineCounter();

  constructor(
    /** The file name as shown in messages. */
    readonly name: string,
    text: string,
  ) {
    this.doc = parseDocument(text, { lineCounter: this.lines, prettyErrors: false, uniqueKeys: true });
    for (const e of [...this.doc.errors]) {
      const { line, col } = this.lines.linePos(e.pos[0]);
      this.problems.push({
        file: name,
        line,
        col,
        path: "",
        message: `YAML syntax: ${e.message.split("\n")[0] ?? e.message}`,
      });
    }
  }

  /** The document as plain values (undefined when the syntax is broken). */
  value(): unknown {
    if (this.problems.length > 0) return undefined;
    return this.doc.toJS({ maxAliasCount: 100 }) as unknown;
  }

  /** Line and column of the node at `path` (its key when `atKey`), or of the nearest existing parent. */
  locate(path: YamlPath, atKey = false): { line: number; col: number } {
    let node: unknown = this.doc.contents;
    let offset = 0;
    const rangeOf = (n: unknown): number | undefined => {
      if (n && typeof n === "object" && "range" in n) {
        const r = (n as { range?: [number, number, number] | null }).range;
        return r ? r[0] : undefined;
      }
      return undefined;
    };
    offset = rangeOf(node) ?? 0;
    for (let k = 0; k < path.length; k++) {
      const seg = path[k];
      const last = k === path.length - 1;
      if (isMap(node)) {
        const pair = node.items.find((p) => isPair(p) && isScalar(p.key) && p.key.value === seg);
        if (!pair) break;
        if (last && atKey) {
          offset = rangeOf(pair.key) ?? offset;
          break;
        }
        node = pair.value;
        offset = rangeOf(node) ?? rangeOf(pair.key) ?? offset;
      } else if (isSeq(node) && typeof seg === "number") {
        const item: unknown = node.items[seg];
        if (item === undefined) break;
        node = item;
        offset = rangeOf(node) ?? offset;
      } else {
        break;
      }
    }
    return this.lines.linePos(offset);
  }

  /** The problems in file order. */
  sortedProblems(): Problem[] {
    return [...this.problems].sort((a, b) => a.line - b.line || a.col - b.col);
  }

  /** Records a problem at `path`, quoting `value` when given. */
  fail(path: YamlPath, message: string, value?: unknown, atKey = false): void {
    const { line, col } = this.locate(path, atKey);
    this.problems.push({ file: this.name, line, col, path: formatPath(path), value, message });
  }

  /** Checks that `value` is a mapping with only `allowed` keys; returns it, or undefined after recording a problem. */
  mapping(path: YamlPath, value: unknown, allowed: readonly string[]): Record<string, unknown> | undefined {
    if (value === null || typeof value !== "object" || Array.isArray(value)) {
      this.fail(path, "must be a mapping", value);
      return undefined;
    }
    const record = value as Record<string, unknown>;
    for (const key of Object.keys(record)) {
      if (!allowed.includes(key)) {
        this.fail([...path, key], `unknown field (allowed: ${allowed.join(", ")})`, undefined, true);
      }
    }
    return record;
  }
}

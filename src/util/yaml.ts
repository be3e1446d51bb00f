/**
 * YAML files with positions: parse once, then validate plain values by path and
 * report each problem as `FILE:LINE:COL: PATH ("VALUE"): MESSAGE`.
 */
import jsyaml from "js-yaml";
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

/**
 * What YAML made of a scalar written where an address (a string) belongs —
 * a number, boolean, null or date — as a message that says so; undefined for
 * strings and collections. `written` is the scalar as it stands in the file.
 */
export function addressReadAs(written: string, value: unknown): string | undefined {
  if (typeof value === "number") {
    // 127.1, 10, 2130706433: the short and integer IPv4 forms the strict parser refuses as strings too.
    const short = /^[0-9]+(?:\.[0-9]+)*$/.test(written);
    return `YAML read ${written} as a number; write addresses as strings — and ${
      short ? `short forms like ${written} are refused anyway` : `${written} is not an address either`
    }`;
  }
  if (typeof value === "boolean") return `YAML read ${written} as a boolean; write addresses as strings`;
  if (value === null) {
    return written === ""
      ? "the entry is empty (YAML read it as null); write an address or remove the line"
      : `YAML read ${written} as null; write addresses as strings`;
  }
  if (value instanceof Date) return `YAML read ${written} as a date; write addresses as strings`;
  return undefined;
}

interface Pending {
  readonly path: YamlPath;
  readonly message: string;
  readonly value: unknown;
  readonly atKey: boolean;
}

/**
 * A parsed YAML file that collects problems by path and locates them.
 *
 * With `fast`, the text is parsed by js-yaml (YAML 1.2 core schema, about 20×
 * faster and 7× smaller in memory than a `yaml` Document on a 100,000-key
 * file); the `yaml` Document with its line counter is built only when a
 * problem must be located. Without it, the Document is built at once.
 */
export class YamlFile {
  private built: { doc: Document.Parsed; lines: LineCounter } | undefined;
  private readonly syntax: Problem[] = [];
  private readonly pending: Pending[] = [];
  private readonly parsed: unknown;

  constructor(
    /** The file name as shown in messages. */
    readonly name: string,
    private readonly text: string,
    options: { fast?: boolean } = {},
  ) {
    if (options.fast) {
      try {
        this.parsed = jsyaml.load(text, { schema: jsyaml.CORE_SCHEMA, filename: name });
      } catch (err) {
        const e = err as { reason?: string; message: string; mark?: { line: number; column: number } };
        this.syntax.push({
          file: name,
          line: (e.mark?.line ?? 0) + 1,
          col: (e.mark?.column ?? 0) + 1,
          path: "",
          message: `YAML syntax: ${e.reason ?? e.message.split("\n")[0] ?? e.message}`,
        });
      }
      return;
    }
    const { doc, lines } = this.document();
    for (const e of doc.errors) {
      const { line, col } = lines.linePos(e.pos[0]);
      this.syntax.push({
        file: name,
        line,
        col,
        path: "",
        message: `YAML syntax: ${e.message.split("\n")[0] ?? e.message}`,
      });
    }
    this.parsed = this.syntax.length > 0 ? undefined : (doc.toJS({ maxAliasCount: 100 }) as unknown);
  }

  private document(): { doc: Document.Parsed; lines: LineCounter } {
    if (this.built === undefined) {
      const lines = new LineCounter();
      const doc = parseDocument(this.text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
      this.built = { doc, lines };
    }
    return this.built;
  }

  /** The document as plain values (undefined when the syntax is broken). */
  value(): unknown {
    return this.parsed;
  }

  /** How many problems were found so far. */
  get problemCount(): number {
    return this.syntax.length + this.pending.length;
  }

  /** Every problem, located (file order is not guaranteed; see {@link sortedProblems}). */
  get problems(): Problem[] {
    return [
      ...this.syntax,
      ...this.pending.map((p) => {
        const { line, col } = this.locate(p.path, p.atKey);
        return { file: this.name, line, col, path: formatPath(p.path), value: p.value, message: p.message };
      }),
    ];
  }

  /** Line and column of the node at `path` (its key when `atKey`), or of the nearest existing parent. */
  locate(path: YamlPath, atKey = false): { line: number; col: number } {
    const { doc, lines } = this.document();
    let node: unknown = doc.contents;
    const rangeOf = (n: unknown): number | undefined => {
      if (n && typeof n === "object" && "range" in n) {
        const r = (n as { range?: [number, number, number] | null }).range;
        return r ? r[0] : undefined;
      }
      return undefined;
    };
    let offset = rangeOf(node) ?? 0;
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
    return lines.linePos(offset);
  }

  /** The problems in file order. */
  sortedProblems(): Problem[] {
    return this.problems.sort((a, b) => a.line - b.line || a.col - b.col);
  }

  /** Records a problem at `path`, quoting `value` when given; it is located when read. */
  fail(path: YamlPath, message: string, value?: unknown, atKey = false): void {
    this.pending.push({ path, message, value, atKey });
  }

  /** The scalar at `path` as written in the file (without quotes' meaning applied), or undefined. */
  written(path: YamlPath): string | undefined {
    const node: unknown = this.document().doc.getIn(path, true);
    return isScalar(node) && node.range ? this.text.slice(node.range[0], node.range[1]) : undefined;
  }

  /**
   * Records `reason` for an entry that should be an address; a number,
   * boolean, null or date instead gets a message saying what YAML read
   * (`- 127.1` is the number 127.1), quoting the entry as written.
   */
  failAddress(path: YamlPath, reason: string, value: unknown): void {
    const written = typeof value === "string" ? undefined : this.written(path);
    const readAs = written === undefined ? undefined : addressReadAs(written, value);
    if (readAs === undefined) this.fail(path, reason, value);
    else this.fail(path, readAs, written);
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

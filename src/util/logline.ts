/**
 * Log lines of the request path, formatted without pino's generic
 * serializer: the same JSON text pino writes for `log[level](fields, msg)`
 * (level, time, the logger's bindings, the fields, msg), at under half its
 * cost per line (BENCHMARKS.md). Everything else logs through pino.
 */
import pino, { type Level, type Logger } from "pino";

let cachedSecond = -1;
let cachedPrefix = "";

/**
 * pino's `timestamp` option: `,"time":"<ISO 8601 UTC, milliseconds>"`, the
 * same text as `pino.stdTimeFunctions.isoTime` at a fraction of its cost
 * (`Date.prototype.toISOString` formats through printf; this formats once per second).
 */
export function isoTimestamp(): string {
  const now = Date.now();
  const second = Math.floor(now / 1000);
  if (second !== cachedSecond) {
    cachedSecond = second;
    cachedPrefix = `,"time":"${new Date(second * 1000).toISOString().slice(0, 20)}`;
  }
  const ms = now - second * 1000;
  return `${cachedPrefix}${ms < 10 ? "00" : ms < 100 ? "0" : ""}${ms}Z"`;
}

/** A field of a line: strings are JSON-escaped, finite numbers written as they are, undefined fields left out. */
export type LineValue = string | number | undefined;

/**
 * `JSON.stringify(v)` for a string value: the common short, plain-ASCII
 * values (ids, addresses, methods, paths) are quoted as they are, which costs
 * a fraction of a call into the JSON serializer.
 */
function jsonString(v: string): string {
  if (v.length > 128) return JSON.stringify(v);
  for (let i = 0; i < v.length; i++) {
    const c = v.charCodeAt(i);
    if (c < 0x20 || c === 0x22 || c === 0x5c || c > 0x7e) return JSON.stringify(v);
  }
  return `"${v}"`;
}

interface PinoInternals {
  [key: symbol]: unknown;
}

/** One kind of log line with fixed field names, written as pino would write it. */
export class LineFormat<K extends string> {
  private readonly prefixes: string[];
  private readonly level: Level;
  private readonly names: readonly K[];
  private readonly msgText: string;

  constructor(level: Level, names: readonly K[], msg: string) {
    this.level = level;
    this.names = names;
    this.prefixes = names.map((n) => `,${JSON.stringify(n)}:`);
    this.msgText = `,"msg":${JSON.stringify(msg)}}\n`;
  }

  /** Writes the line to `log`'s destination when its level is enabled. */
  write(log: Logger, fields: Readonly<Record<K, LineValue>>): void {
    if (!log.isLevelEnabled(this.level)) return;
    const internals = log as unknown as PinoInternals;
    let line = `{"level":${String(log.levels.values[this.level])}${isoTimestamp()}${internals[pino.symbols.chindingsSym] as string}`;
    for (let i = 0; i < this.names.length; i++) {
      const v = fields[this.names[i] as K];
      if (v === undefined) continue;
      line +=
        (this.prefixes[i] as string) +
        (typeof v === "number" ? (Number.isFinite(v) ? String(v) : "null") : jsonString(v));
    }
    (internals[pino.symbols.streamSym] as { write(s: string): void }).write(line + this.msgText);
  }
}

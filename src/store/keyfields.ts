/**
 * The one validator of a key's free fields (name, scopes, mode), shared by
 * the keys file and the management API so both accept exactly the same
 * values (SPEC §3, §5: bounded sizes, strings stored exactly as accepted).
 */
import type { Mode } from "../policy/decide.js";

/** Most characters (Unicode code points) in a key's name. */
export const MAX_NAME_CHARS = 200;
/** Most characters (Unicode code points) in an allow-list entry's note. */
export const MAX_NOTE_CHARS = 200;
/** Most scopes on one key. */
export const MAX_SCOPES = 100;
/** Most characters in one scope name. */
export const MAX_SCOPE_CHARS = 100;
/** Allowed scope names (e.g. `messages:send`, `api_keys:write`). */
export const SCOPE = new RegExp(`^[A-Za-z0-9_.:*-]{1,${MAX_SCOPE_CHARS}}$`);

/** One problem with a list field: `index` names the element, or undefined for the list itself. */
export interface ListProblem {
  readonly index: number | undefined;
  readonly message: string;
}

/** Control characters (U+0000–U+001F, U+007F), and U+FFFE/U+FFFF, which YAML cannot hold. */
function hasControl(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 32 || c === 127 || c === 0xfffe || c === 0xffff) return true;
  }
  return false;
}

/** Number of Unicode code points in `s`, or -1 when it holds an unpaired surrogate. */
function codePoints(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++, n++) {
    const c = s.charCodeAt(i);
    if (c < 0xd800 || c > 0xdfff) continue;
    const d = s.charCodeAt(i + 1);
    if (c > 0xdbff || !(d >= 0xdc00 && d <= 0xdfff)) return -1;
    i++;
  }
  return n;
}

/**
 * Why `v` is not a valid name, or undefined: a string that is not blank, of
 * at most {@link MAX_NAME_CHARS} characters, without control characters
 * (U+0000–U+001F, U+007F), the noncharacters U+FFFE and U+FFFF (which YAML
 * cannot hold) or unpaired surrogates (not Unicode text, not storable as UTF-8).
 */
export function nameProblem(v: unknown): string | undefined {
  return textProblem(v, MAX_NAME_CHARS);
}

function textProblem(v: unknown, max: number): string | undefined {
  if (typeof v !== "string") return "must be a string";
  if (v.trim() === "") return "must not be blank";
  const length = codePoints(v);
  if (length < 0) return "must be Unicode text (it holds an unpaired surrogate)";
  if (length > max) return `must be at most ${max} characters long`;
  if (hasControl(v)) return "must not contain control characters (tabs, newlines...) or U+FFFE/U+FFFF";
  return undefined;
}

/**
 * Why `v` is not a valid allow-list entry note, or undefined: the rules of a
 * name (see {@link nameProblem}) with at most {@link MAX_NOTE_CHARS} characters.
 */
export function noteProblem(v: unknown): string | undefined {
  const why = textProblem(v, MAX_NOTE_CHARS);
  return why === "must not be blank" ? "must not be blank (omit it, or give null, for no note)" : why;
}

/** Every problem of a scopes list, or none: at most {@link MAX_SCOPES} names matching {@link SCOPE}. */
export function scopesProblems(v: unknown): ListProblem[] {
  if (!Array.isArray(v)) return [{ index: undefined, message: "must be a list of scope names" }];
  const out: ListProblem[] = [];
  if (v.length > MAX_SCOPES) out.push({ index: undefined, message: `at most ${MAX_SCOPES} scopes, got ${v.length}` });
  v.forEach((s: unknown, i) => {
    if (typeof s !== "string" || !SCOPE.test(s)) {
      out.push({
        index: i,
        message: `must be a scope name such as messages:send (1 to ${MAX_SCOPE_CHARS} of A-Z a-z 0-9 _ . : * -)`,
      });
    }
  });
  return out;
}

/** True for a valid key mode. */
export function isMode(v: unknown): v is Mode {
  return v === "enforce" || v === "report";
}

/**
 * Scopes by route (SPEC §9): which `route_scopes` rule a request falls under.
 *
 * keyfence cannot know how the upstream reads a path, so it asks every
 * reading that real upstreams use and requires the scope of the first
 * matching rule under each of them: percent-decoded or raw (Express routes on
 * the raw path, nginx on the decoded one), `;params` cut or kept (Tomcat and
 * Spring cut them), empty segments and a trailing slash merged or kept (nginx
 * merges, Express ignores one trailing slash), and case folded or kept
 * (Express and ASP.NET match case-insensitively), and a format suffix cut or
 * kept (Rails and Spring route `/x.json` as `/x`). A request is refused as
 * ambiguous (400) when no such set of readings can cover it: dot segments
 * (also `%2e`, `..;`), a leading `//` (the WHATWG URL parser reads
 * `//v2/x` relative to a base as host `v2`, path `/x`), encoded slashes and backslashes (`%2F`, `%5C`), a raw
 * backslash, a fragment, double encoding (`%25` + hex), malformed or non-UTF-8
 * percent-encoding, encoded control characters, and bytes that must be
 * encoded. Method overrides (`X-HTTP-Method-Override`, `X-HTTP-Method`,
 * `X-Method-Override`, `?_method=`, in every spelling upstreams read alike)
 * count as methods of the request too, the paths in `X-Original-URL` and
 * `X-Rewrite-URL` as its paths, and
 * a rule for GET also covers HEAD, which GET handlers answer.
 */

import { normalizeQueryName, upstreamHeaderName } from "./credential.js";

/** One `route_scopes` rule, validated and compiled. */
export interface RouteRule {
  /** Upper-case methods, HEAD added when GET is listed; undefined: every method. */
  readonly methods: ReadonlySet<string> | undefined;
  /** The path as configured, without a trailing `/*` ("" for `/*`). */
  readonly path: string;
  /** True for a rule ending in `/*`: the path itself and everything below it. */
  readonly prefix: boolean;
  readonly scope: string;
  /** `path` in lowercase, for upstreams that ignore case. */
  readonly lower: string;
}

/** The compiled `route_scopes` list, in order. */
export interface RouteScopes {
  readonly rules: readonly RouteRule[];
  /** Every method some rule lists; any other matches the same rules as each other (those without `methods`). */
  readonly listed: ReadonlySet<string>;
}

/** The `route_scopes` made of `rules`, in order. */
export function routeScopes(rules: readonly RouteRule[]): RouteScopes {
  return { rules, listed: new Set(rules.flatMap((r) => (r.methods === undefined ? [] : [...r.methods]))) };
}

/** What a request needs: the rules it falls under (deduplicated, in order), or why its path cannot be classified. */
export type RouteNeed =
  | { readonly kind: "rules"; readonly rules: readonly RouteRule[] }
  | { readonly kind: "ambiguous"; readonly why: string };

/** Headers by which upstream frameworks let a request claim another method (lowercase). */
export const METHOD_OVERRIDE_HEADERS: readonly string[] = [
  "x-http-method-override",
  "x-http-method",
  "x-method-override",
];

/**
 * Headers by which some upstreams take the request's path from the request
 * instead of its line (lowercase): Symfony and Zend before their 2018 fixes,
 * IIS URL Rewrite's own. Their paths count as readings of the request too.
 */
export const PATH_OVERRIDE_HEADERS: readonly string[] = ["x-original-url", "x-rewrite-url"];

/** Characters a rule path may hold: RFC 3986 `pchar` and `/`, without `%` and `;` (rules are written decoded). */
const RULE_PATH = /^\/[A-Za-z0-9\-._~!$&'()*+,=:@/]*$/;

/** Why `path` is not a valid rule path, or undefined. */
export function rulePathProblem(path: string): string | undefined {
  if (!RULE_PATH.test(path)) {
    return "must be an absolute path of letters, digits and -._~!$&'()*+,=:@/ (no %, ;, ?, #, \\ or spaces), such as /v2/messages or /v2/messages/*";
  }
  const body = path.endsWith("/*") ? path.slice(0, -2) : path;
  if (body.includes("*")) return "a * may only end the path, as /*";
  if (body.includes("//")) return "must not hold an empty segment (//)";
  if (body.length > 1 && body.endsWith("/")) {
    return `must not end with a slash: ${body.slice(0, -1)} also matches ${body} (write ${body}* for everything below it)`;
  }
  for (const seg of body.split("/")) if (seg === "." || seg === "..") return "must not hold . or .. segments";
  return undefined;
}

/** Compiles one validated rule. */
export function compileRule(rule: { methods?: readonly string[]; path: string; scope: string }): RouteRule {
  let methods: Set<string> | undefined;
  if (rule.methods !== undefined) {
    methods = new Set(rule.methods.map((m) => m.toUpperCase()));
    if (methods.has("GET")) methods.add("HEAD");
  }
  const prefix = rule.path.endsWith("/*");
  const path = prefix ? rule.path.slice(0, -2) : rule.path;
  return { methods, path, prefix, scope: rule.scope, lower: path.toLowerCase() };
}

function hex(c: number): number {
  if (c >= 48 && c <= 57) return c - 48;
  const l = c | 32;
  if (l >= 97 && l <= 102) return l - 87;
  return -1;
}

const UTF8 = new TextDecoder("utf-8", { fatal: true });

/** True when `bytes` is well-formed UTF-8 (no overlong forms, surrogates or values past U+10FFFF). */
function isUtf8(bytes: readonly number[]): boolean {
  try {
    UTF8.decode(Uint8Array.from(bytes));
    return true;
  } catch {
    return false;
  }
}

/** A segment percent-decoded, or why it cannot be. */
function decodeSegment(seg: string): string | { why: string } {
  if (!seg.includes("%")) return seg;
  const bytes: number[] = [];
  for (let i = 0; i < seg.length; i++) {
    const c = seg.charCodeAt(i);
    if (c !== 37) {
      bytes.push(c);
      continue;
    }
    const h = hex(seg.charCodeAt(i + 1));
    const l = hex(seg.charCodeAt(i + 2));
    if (h < 0 || l < 0) return { why: "malformed percent-encoding" };
    const b = h * 16 + l;
    if (b === 0x2f || b === 0x5c) return { why: "an encoded slash or backslash (%2F, %5C)" };
    if (b < 0x20 || b === 0x7f) return { why: "an encoded control character" };
    if (b === 0x25 && hex(seg.charCodeAt(i + 3)) >= 0 && hex(seg.charCodeAt(i + 4)) >= 0) {
      return { why: "double percent-encoding (%25 followed by hex)" };
    }
    bytes.push(b);
    i += 2;
  }
  if (!isUtf8(bytes)) return { why: "percent-encoding that is not UTF-8" };
  return Buffer.from(bytes).toString("latin1");
}

/** Fast path: a path every reading sees alike (lowercase unreserved characters, no empty segment, no trailing slash). */
const PLAIN = /^(?:\/[a-z0-9\-_~]+(?:\.+[a-z0-9\-_~]+)*)*$|^\/$/;

function cutParams(seg: string): string {
  const i = seg.indexOf(";");
  return i < 0 ? seg : seg.slice(0, i);
}

/** One reading of a path: the text an upstream routes by, and whether it compares it ignoring case. */
export interface Reading {
  readonly path: string;
  readonly folded: boolean;
}

/**
 * Every reading of `path` (the request path, without its query) that some
 * upstream may route by, deduplicated; or why the path is ambiguous. Rule
 * paths contain only bytes that mean themselves, so comparing them with these
 * readings is exact.
 */
export function pathReadings(path: string): Reading[] | { why: string } {
  const readings = spellings(path);
  return Array.isArray(readings) ? withFormatSuffixesCut(readings) : readings;
}

/** The readings of `path` that differ in spelling alone (encoding, `;params`, slashes, case), or why it is ambiguous. */
function spellings(path: string): Reading[] | { why: string } {
  if (PLAIN.test(path))
    return [
      { path, folded: false },
      { path, folded: true },
    ];
  for (let i = 0; i < path.length; i++) {
    const c = path.charCodeAt(i);
    if (c <= 0x20 || c >= 0x7f) return { why: "a byte that must be percent-encoded" };
    if (c === 0x5c) return { why: "a backslash" };
    if (c === 0x23) return { why: "a fragment (#)" };
  }
  if (path.charCodeAt(0) !== 47) return { why: "not an absolute path" };
  if (path.charCodeAt(1) === 47) return { why: "a leading // (URL parsers read what follows as a host)" };
  const raw = path.slice(1).split("/");
  const decoded: string[] = [];
  for (const seg of raw) {
    const d = decodeSegment(seg);
    if (typeof d !== "string") return d;
    const bare = cutParams(d);
    if (bare === "." || bare === "..") return { why: "a dot segment (. or ..)" };
    decoded.push(d);
  }
  const seen = new Set<string>();
  const out: Reading[] = [];
  for (const segs of [raw, decoded]) {
    for (const cut of [false, true]) {
      const s1 = cut ? segs.map(cutParams) : segs;
      for (const merge of [false, true]) {
        const s2 = merge ? s1.filter((s) => s !== "") : s1;
        const p = `/${s2.join("/")}`;
        for (const folded of [false, true]) {
          const text = folded ? p.toLowerCase() : p;
          const id = `${folded ? "i" : "s"}${text}`;
          if (seen.has(id)) continue;
          seen.add(id);
          out.push({ path: text, folded });
        }
      }
    }
  }
  return out;
}

/**
 * `readings` plus each with the format suffix of its last segment cut, at the
 * first dot (Rails' `(.:format)`, Django REST's format suffixes) and at the
 * last (Spring's suffix pattern match): those route `/v2/messages.json` as
 * `/v2/messages`.
 */
function withFormatSuffixesCut(readings: Reading[]): Reading[] {
  const out = [...readings];
  const seen = new Set(readings.map((r) => `${r.folded ? "i" : "s"}${r.path}`));
  for (const r of readings) {
    const base = r.path.length > 1 && r.path.endsWith("/") ? r.path.slice(0, -1) : r.path;
    const slash = base.lastIndexOf("/");
    const first = base.indexOf(".", slash);
    if (first < 0) continue;
    for (const dot of [first, base.lastIndexOf(".")]) {
      if (dot === slash + 1) continue;
      const cut = base.slice(0, dot);
      const id = `${r.folded ? "i" : "s"}${cut}`;
      if (seen.has(id)) continue;
      seen.add(id);
      out.push({ path: cut, folded: r.folded });
    }
  }
  return out;
}

function pathMatches(rule: RouteRule, r: Reading): boolean {
  const want = r.folded ? rule.lower : rule.path;
  const path = r.path;
  if (!rule.prefix) return path === want;
  return path === want || (path.startsWith(want) && path.charCodeAt(want.length) === 47);
}

/**
 * What the route check reads of a request, in one pass over its headers: the
 * methods it may be taken for (its own, any method-override header's, and
 * `?_method=`) and the paths it may be routed by (`target`'s, then any
 * {@link PATH_OVERRIDE_HEADERS} value's), each path without its query or
 * fragment. Header names count with `_` or `.` for `-` (CGI, WSGI, PHP and
 * Rack read `X_HTTP_Method_Override` as `HTTP_X_HTTP_METHOD_OVERRIDE`), and a
 * query name counts as `_method` under every spelling a loose parser takes
 * for it ({@link normalizeQueryName}: `%5Fmethod`, `_METHOD`, `+_method`, `_method[]`).
 */
export function requestRoute(
  method: string,
  rawHeaders: readonly string[],
  target: string,
): { methods: string[]; paths: string[] } {
  const q = target.indexOf("?");
  const methods = [method.toUpperCase()];
  const paths = [q < 0 ? target : target.slice(0, q)];
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i] as string;
    // Every override header's name starts with X and has at least 13 characters.
    if (name.length < 13 || (name.charCodeAt(0) | 32) !== 120) continue;
    const dashed = upstreamHeaderName(name);
    if (METHOD_OVERRIDE_HEADERS.includes(dashed)) {
      for (const m of (rawHeaders[i + 1] as string).split(",")) methods.push(m.trim().toUpperCase());
    } else if (PATH_OVERRIDE_HEADERS.includes(dashed)) {
      const value = (rawHeaders[i + 1] as string).trim();
      const end = value.search(/[?#]/);
      paths.push(end < 0 ? value : value.slice(0, end));
    }
  }
  const query = q < 0 ? "" : target.slice(q + 1);
  if (/method|%/i.test(query)) {
    for (const part of query.split(/[&;]/)) {
      const eq = part.indexOf("=");
      if (eq < 0 || normalizeQueryName(part.slice(0, eq)) !== "_method") continue;
      methods.push(
        decodeQueryValue(part.slice(eq + 1))
          .trim()
          .toUpperCase(),
      );
    }
  }
  return { methods, paths };
}

/** A query value as form decoders read it: `+` as space, then %XX (each valid escape as its byte, the rest kept). */
function decodeQueryValue(raw: string): string {
  const spaced = raw.replace(/\+/g, " ");
  try {
    return decodeURIComponent(spaced);
  } catch {
    return spaced.replace(/%([0-9A-Fa-f]{2})/g, (_m, h: string) => String.fromCharCode(parseInt(h, 16)));
  }
}

/**
 * `methods` with repeats dropped and every method no rule lists folded into
 * one (they all match the same rules, those without `methods`), so a request
 * claiming thousands of override values costs no more than one claiming each
 * listed method once.
 */
function distinctMethods(routes: RouteScopes, methods: readonly string[]): string[] {
  const listed = routes.listed;
  const out: string[] = [];
  let unlisted = false;
  for (const m of methods) {
    if (listed.has(m)) {
      if (!out.includes(m)) out.push(m);
    } else if (!unlisted) {
      unlisted = true;
      out.push(m);
    }
  }
  return out;
}

/**
 * {@link routeNeed} over every path a request may be routed by: its own and
 * those its path-override headers name ({@link requestRoute}), the rules
 * of all of them; ambiguous when any is, or when an override names no
 * absolute path (an upstream would then route by a path no rule can judge).
 */
export function routeNeedOf(routes: RouteScopes, methods: readonly string[], paths: readonly string[]): RouteNeed {
  const found: RouteRule[] = [];
  for (const [i, path] of paths.entries()) {
    if (i > 0 && !path.startsWith("/")) {
      return { kind: "ambiguous", why: "X-Original-URL or X-Rewrite-URL names no absolute path" };
    }
    const need = routeNeed(routes, methods, path);
    if (need.kind === "ambiguous") return need;
    for (const rule of need.rules) if (!found.includes(rule)) found.push(rule);
  }
  return { kind: "rules", rules: found };
}

/**
 * The rules a request falls under: for each of its methods and each reading
 * of its path, the first rule that matches. `path` excludes the query.
 */
export function routeNeed(routes: RouteScopes, methods: readonly string[], path: string): RouteNeed {
  const readings = pathReadings(path);
  if (!Array.isArray(readings)) return { kind: "ambiguous", why: readings.why };
  const found: RouteRule[] = [];
  for (const method of distinctMethods(routes, methods)) {
    for (const reading of readings) {
      for (const rule of routes.rules) {
        if (rule.methods !== undefined && !rule.methods.has(method)) continue;
        if (pathMatches(rule, reading)) {
          if (!found.includes(rule)) found.push(rule);
          break;
        }
      }
    }
  }
  return { kind: "rules", rules: found };
}

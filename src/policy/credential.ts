/**
 * Reading the API key of a request from every place `keys.credentials` lists
 * (SPEC §4), strictly: one value, one syntax, so that no upstream parser,
 * however loose, can read a key out of a request that keyfence did not check.
 * Raw headers are read (Node keeps only the first of repeated Authorization
 * headers in `req.headers`); header values are latin1 strings, one char per byte.
 */
import { hash } from "node:crypto";

/** One place a key may travel (`keys.credentials`). Header names are lowercase. */
export type CredentialPlace =
  | { readonly kind: "bearer" }
  | { readonly kind: "header"; readonly name: string }
  | { readonly kind: "basic"; readonly half: "username" | "password" }
  | { readonly kind: "query"; readonly name: string };

/** Why a request's credentials are refused (400), as `X-Keyfence-Reason`. */
export type CredentialFailure =
  "multiple_authorization" | "malformed_authorization" | "multiple_credentials" | "malformed_credential";

/** The key as sent, or why there is none. */
export type CredentialResult =
  | { readonly kind: "missing" }
  | { readonly kind: "invalid"; readonly reason: CredentialFailure }
  | { readonly kind: "token"; readonly token: string };

/** The bearer key of the Authorization header alone (what the management API reads). */
export type BearerResult =
  | { readonly kind: "missing" }
  | { readonly kind: "invalid"; readonly reason: "multiple_authorization" | "malformed_authorization" }
  | { readonly kind: "token"; readonly token: string };

/** The places compiled once for the request path. */
export interface CompiledPlaces {
  readonly list: readonly CredentialPlace[];
  readonly bearer: boolean;
  readonly basicUser: boolean;
  readonly basicPassword: boolean;
  /** Lowercase header names. */
  readonly headers: readonly string[];
  /** Query parameter names, normalised by {@link normalizeQueryName}. */
  readonly queries: readonly string[];
  /** True when only `bearer` is listed (the default): the fast path. */
  readonly bearerOnly: boolean;
}

const MISSING = { kind: "missing" } as const;
const MULTIPLE_AUTH = { kind: "invalid", reason: "multiple_authorization" } as const;
const MALFORMED_AUTH = { kind: "invalid", reason: "malformed_authorization" } as const;
const MULTIPLE = { kind: "invalid", reason: "multiple_credentials" } as const;
const MALFORMED = { kind: "invalid", reason: "malformed_credential" } as const;

/**
 * A header name as upstreams tell headers apart: case folded, and `_` and `.`
 * read as `-`, because CGI, WSGI, PHP and Rack hand `X_API_Key` to the
 * application as `HTTP_X_API_KEY`, the same variable as `X-API-Key`, and PHP
 * does the same with `X.API.Key` (it turns `.` in a variable name into `_`).
 */
export function upstreamHeaderName(name: string): string {
  const lower = name.toLowerCase();
  // Called for request headers on the request path: most names have neither, and need no copy.
  return lower.includes("_") || lower.includes(".") ? lower.replace(/[_.]/g, "-") : lower;
}

/** Compiles a `keys.credentials` list. */
export function compilePlaces(list: readonly CredentialPlace[]): CompiledPlaces {
  const headers: string[] = [];
  const queries: string[] = [];
  for (const p of list) {
    if (p.kind === "header") headers.push(upstreamHeaderName(p.name));
    if (p.kind === "query") queries.push(normalizeQueryName(p.name));
  }
  const bearer = list.some((p) => p.kind === "bearer");
  return {
    list,
    bearer,
    basicUser: list.some((p) => p.kind === "basic" && p.half === "username"),
    basicPassword: list.some((p) => p.kind === "basic" && p.half === "password"),
    headers,
    queries,
    bearerOnly: bearer && list.length === 1,
  };
}

/** The default `keys.credentials: [bearer]`, compiled. */
export const BEARER_ONLY: CompiledPlaces = compilePlaces([{ kind: "bearer" }]);

// token68 (RFC 9110 §11.2): ALPHA DIGIT - . _ ~ + / then "=" padding only.
const TOKEN68 = new Uint8Array(128);
for (let c = 0; c < 128; c++) {
  const ch = String.fromCharCode(c);
  if (/[A-Za-z0-9._~+/-]/.test(ch)) TOKEN68[c] = 1;
}

/** True when `s` from `from` on is one token68: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`. */
export function isToken68(s: string, from = 0): boolean {
  const n = s.length;
  let i = from;
  while (i < n) {
    const c = s.charCodeAt(i);
    if (c >= 128 || TOKEN68[c] !== 1) break;
    i++;
  }
  if (i === from) return false;
  while (i < n && s.charCodeAt(i) === 61) i++;
  return i === n;
}

function isAuthorizationName(name: string): boolean {
  return (
    name === "Authorization" ||
    name === "authorization" ||
    (name.length === 13 && name.toLowerCase() === "authorization")
  );
}

/** True when every char is printable ASCII, SP or HTAB (the only bytes an Authorization value may hold). */
function cleanBytes(v: string): boolean {
  for (let i = 0; i < v.length; i++) {
    const c = v.charCodeAt(i);
    if ((c < 0x20 && c !== 9) || c > 0x7e) return false;
  }
  return true;
}

function startsWithFold(v: string, lower: string): boolean {
  if (v.length < lower.length) return false;
  for (let i = 0; i < lower.length; i++) if ((v.charCodeAt(i) | 0x20) !== lower.charCodeAt(i)) return false;
  return true;
}

/**
 * Reads the key from `rawHeaders` (name, value, name, value...) with the
 * default places (`bearer` only). More than one Authorization header is an error.
 */
export function readBearer(rawHeaders: readonly string[]): BearerResult {
  let value: string | undefined;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    if (isAuthorizationName(rawHeaders[i] as string)) {
      if (value !== undefined) return MULTIPLE_AUTH;
      value = rawHeaders[i + 1];
    }
  }
  if (value === undefined) return MISSING;
  return parseAuthorization(value);
}

/**
 * Parses one Authorization value (SPEC §4). A bearer key only as `Bearer`,
 * one SP or HTAB, one token68, nothing else; any other value whose first six
 * letters are `bearer` in any case, any value holding a byte outside printable
 * ASCII, SP and HTAB, and any other scheme's value that holds `bearer`
 * anywhere (loose parsers search for it) is malformed. Another scheme is no
 * bearer key.
 */
export function parseAuthorization(value: string): BearerResult {
  const n = value.length;
  if (n >= 8 && startsWithFold(value, "bearer")) {
    const sep = value.charCodeAt(6);
    if ((sep === 32 || sep === 9) && isToken68(value, 7)) return { kind: "token", token: value.slice(7) };
    return MALFORMED_AUTH;
  }
  if (!cleanBytes(value) || /bearer/i.test(value)) return MALFORMED_AUTH;
  return MISSING;
}

/** The keys of an `Authorization: Basic` value in the configured halves, or why it is refused. */
function basicKeys(value: string, places: CompiledPlaces, out: string[]): CredentialResult | undefined {
  const sep = value.charCodeAt(5);
  if (!((sep === 32 || sep === 9) && isToken68(value, 6))) return MALFORMED_AUTH;
  const b64 = value.slice(6);
  let decoded: string;
  try {
    decoded = atob(b64);
  } catch {
    return MALFORMED_AUTH;
  }
  // Only canonical base64 (padding and zero trailing bits): decoders that differ on the rest cannot disagree.
  if (btoa(decoded) !== b64) return MALFORMED_AUTH;
  const colon = decoded.indexOf(":");
  if (colon < 0) return MALFORMED_AUTH;
  for (const half of [
    places.basicUser ? decoded.slice(0, colon) : "",
    places.basicPassword ? decoded.slice(colon + 1) : "",
  ]) {
    if (half === "") continue;
    if (!isToken68(half)) return MALFORMED_AUTH;
    out.push(half);
  }
  return undefined;
}

/**
 * Normalises a query parameter name the way the loosest common parsers read
 * it, so every spelling an upstream may take for NAME counts as NAME: `+` as
 * space, %XX decoded, cut at a NUL (PHP reads `api_key%00x` as `api_key`),
 * leading spaces dropped, ASCII lowercase, a `[...]` suffix dropped (PHP and
 * qs arrays), and space, `.` and `[` as `_` (PHP).
 */
export function normalizeQueryName(raw: string): string {
  let s = percentDecodeLoose(raw.replace(/\+/g, " "));
  const nul = s.indexOf("\0");
  if (nul >= 0) s = s.slice(0, nul);
  s = s.replace(/^ +/, "").toLowerCase();
  const open = s.indexOf("[");
  if (open > 0 && s.indexOf("]", open) > open) s = s.slice(0, open);
  return s.replace(/[ .[]/g, "_");
}

/** Decodes each valid %XX as one char (byte), leaving anything else as it is. */
function percentDecodeLoose(s: string): string {
  if (!s.includes("%")) return s;
  return s.replace(/%([0-9A-Fa-f]{2})/g, (_m, h: string) => String.fromCharCode(parseInt(h, 16)));
}

/** The keys in the query of `target` under the configured names, or why they are refused. */
function queryKeys(target: string, places: CompiledPlaces, out: string[]): CredentialResult | undefined {
  const q = target.indexOf("?");
  if (q < 0) return undefined;
  let count = 0;
  let i = q + 1;
  const n = target.length;
  while (i <= n) {
    let end = i;
    while (end < n && target.charCodeAt(end) !== 38 && target.charCodeAt(end) !== 59) end++;
    const part = target.slice(i, end);
    i = end + 1;
    if (part === "") continue;
    const eq = part.indexOf("=");
    const name = normalizeQueryName(eq < 0 ? part : part.slice(0, eq));
    if (!places.queries.includes(name)) continue;
    if (++count > 1) return MULTIPLE;
    const raw = eq < 0 ? "" : part.slice(eq + 1);
    // `+` is a space to form decoders and a plus to others: ambiguous, refused.
    if (raw.includes("+")) return MALFORMED;
    let value: string;
    try {
      value = decodeURIComponent(raw);
    } catch {
      return MALFORMED;
    }
    if (value === "") continue;
    if (!isToken68(value)) return MALFORMED;
    out.push(value);
  }
  return undefined;
}

/**
 * Reads the one key of a request from every place `places` lists: the
 * headers in `rawHeaders` and the query of `target`. Keys in two places, or
 * one place twice, are refused (`multiple_credentials`); the Authorization
 * rules of {@link parseAuthorization} hold whatever is listed.
 */
export function readCredential(
  rawHeaders: readonly string[],
  target: string,
  places: CompiledPlaces,
): CredentialResult {
  if (places.bearerOnly) return readBearer(rawHeaders);
  let auth: string | undefined;
  const headerCounts = places.headers.length > 0 ? new Array<number>(places.headers.length).fill(0) : undefined;
  const headerValues: string[] = [];
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i] as string;
    if (isAuthorizationName(name)) {
      if (auth !== undefined) return MULTIPLE_AUTH;
      auth = rawHeaders[i + 1];
    } else if (headerCounts !== undefined) {
      const k = places.headers.indexOf(upstreamHeaderName(name));
      if (k >= 0) {
        headerCounts[k] = (headerCounts[k] as number) + 1;
        headerValues[k] = rawHeaders[i + 1] as string;
      }
    }
  }
  const found: string[] = [];
  if (auth !== undefined) {
    if ((places.basicUser || places.basicPassword) && auth.length >= 6 && startsWithFold(auth, "basic")) {
      if (!cleanBytes(auth)) return MALFORMED_AUTH;
      const bad = basicKeys(auth, places, found);
      if (bad !== undefined) return bad;
    } else {
      const r = parseAuthorization(auth);
      if (r.kind === "invalid") return r;
      if (r.kind === "token" && places.bearer) found.push(r.token);
    }
  }
  if (headerCounts !== undefined) {
    for (let k = 0; k < headerCounts.length; k++) {
      if (headerCounts[k] === 0) continue;
      if ((headerCounts[k] as number) > 1) return MULTIPLE;
      const v = headerValues[k] as string;
      if (v === "") continue;
      if (!isToken68(v)) return MALFORMED;
      found.push(v);
    }
  }
  if (places.queries.length > 0) {
    const bad = queryKeys(target, places, found);
    if (bad !== undefined) return bad;
  }
  if (found.length > 1) return MULTIPLE;
  return found.length === 1 ? { kind: "token", token: found[0] as string } : MISSING;
}

/** The lowercase hex SHA-256 of a secret, as the keys file stores it. */
export function secretHash(secret: string): string {
  return hash("sha256", secret, "hex");
}

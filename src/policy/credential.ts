/** Reading the bearer key from raw request headers (SPEC §4), without trusting Node's header folding. */
import { hash } from "node:crypto";

/** The bearer token as sent, or why there is none. */
export type BearerResult =
  | { readonly kind: "missing" }
  | { readonly kind: "invalid"; readonly reason: "multiple_authorization" | "malformed_authorization" }
  | { readonly kind: "token"; readonly token: string };

const MISSING: BearerResult = { kind: "missing" };
const MULTIPLE: BearerResult = { kind: "invalid", reason: "multiple_authorization" };
const MALFORMED: BearerResult = { kind: "invalid", reason: "malformed_authorization" };

function isAuthorizationName(name: string): boolean {
  return (
    name === "Authorization" ||
    name === "authorization" ||
    (name.length === 13 && name.toLowerCase() === "authorization")
  );
}

/**
 * Finds the bearer token in `rawHeaders` (name, value, name, value...).
 * Node keeps only the first of repeated Authorization headers in
 * `req.headers`, so this reads the raw list: more than one is an error.
 */
export function readBearer(rawHeaders: readonly string[]): BearerResult {
  let value: string | undefined;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    if (isAuthorizationName(rawHeaders[i] as string)) {
      if (value !== undefined) return MULTIPLE;
      value = rawHeaders[i + 1];
    }
  }
  if (value === undefined) return MISSING;
  return parseAuthorization(value);
}

/** Parses one Authorization value: another scheme is no bearer key; a Bearer value must be one token without whitespace or commas. */
export function parseAuthorization(value: string): BearerResult {
  let i = 0;
  while (i < value.length && value.charCodeAt(i) !== 32 && value.charCodeAt(i) !== 9) i++;
  if (i !== 6) return MISSING;
  const scheme = value.slice(0, 6);
  if (scheme !== "Bearer" && scheme !== "bearer" && scheme.toLowerCase() !== "bearer") return MISSING;
  while (i < value.length && (value.charCodeAt(i) === 32 || value.charCodeAt(i) === 9)) i++;
  const token = value.slice(i);
  if (token.length === 0 || /[\s,]/.test(token)) return MALFORMED;
  return { kind: "token", token };
}

/** The lowercase hex SHA-256 of a secret, as the keys file stores it. */
export function secretHash(secret: string): string {
  return hash("sha256", secret, "hex");
}

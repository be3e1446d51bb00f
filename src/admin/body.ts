/** Reading JSON request bodies with a size limit. */
import type { IncomingMessage } from "node:http";
import { ApiError } from "./errors.js";

/** Largest accepted JSON body (a 1,000-entry allow list is about 40 KiB). */
export const MAX_BODY_BYTES = 1024 * 1024;

/** Deepest nesting of arrays and objects accepted in a JSON body (a key needs 2). */
export const MAX_JSON_DEPTH = 32;

/** Whether the JSON text `text` nests arrays and objects deeper than `max` (strings are skipped). */
export function nestsDeeper(text: string, max: number): boolean {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 92)
        i++; // backslash: skip the escaped character
      else if (c === 34) inString = false;
    } else if (c === 34) inString = true;
    else if (c === 91 || c === 123) {
      if (++depth > max) return true;
    } else if (c === 93 || c === 125) depth--;
  }
  return false;
}

/** Decodes UTF-8 strictly (a BOM is kept, so JSON.parse refuses it as before): bytes that are not UTF-8 throw. */
const UTF8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** The `charset` parameter of a Content-Type value, lowercased and unquoted; undefined when absent. */
function charsetOf(contentType: string): string | undefined {
  for (const param of contentType.split(";").slice(1)) {
    const eq = param.indexOf("=");
    if (eq < 0 || param.slice(0, eq).trim().toLowerCase() !== "charset") continue;
    return param
      .slice(eq + 1)
      .trim()
      .replace(/^"(.*)"$/, "$1")
      .toLowerCase();
  }
  return undefined;
}

/**
 * Reads and parses a JSON body: 415 for another media type or a charset
 * other than UTF-8 (RFC 8259 §8.1), 413 beyond `limit`, 400 for bytes that
 * are not UTF-8 or malformed JSON, so text is stored exactly as sent or not
 * at all (never with replacement characters).
 */
export async function readJson(req: IncomingMessage, limit = MAX_BODY_BYTES): Promise<unknown> {
  const contentType = req.headers["content-type"] ?? "";
  const type = contentType.split(";")[0]?.trim().toLowerCase();
  const charset = charsetOf(contentType);
  if (type !== "application/json" || (charset !== undefined && charset !== "utf-8" && charset !== "utf8")) {
    req.resume();
    throw new ApiError("unsupported_media_type");
  }
  const declared = Number(req.headers["content-length"] ?? "0");
  if (declared > limit) {
    throw new ApiError("payload_too_large", `the body is larger than ${limit} bytes`);
  }
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > limit) throw new ApiError("payload_too_large", `the body is larger than ${limit} bytes`);
    chunks.push(chunk);
  }
  let text: string;
  try {
    text = UTF8.decode(Buffer.concat(chunks));
  } catch (err) {
    throw new ApiError("invalid_request", "malformed JSON: the body is not UTF-8", { cause: err });
  }
  // Deep nesting is refused before parsing: every later step may recurse.
  if (nestsDeeper(text, MAX_JSON_DEPTH)) {
    throw new ApiError("invalid_request", `malformed JSON: nested deeper than ${MAX_JSON_DEPTH} levels`);
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new ApiError("invalid_request", `malformed JSON: ${(err as Error).message}`, { cause: err });
  }
}

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

/** Reads and parses a JSON body: 415 for another media type, 413 beyond `limit`, 400 for malformed JSON. */
export async function readJson(req: IncomingMessage, limit = MAX_BODY_BYTES): Promise<unknown> {
  const type = (req.headers["content-type"] ?? "").split(";")[0]?.trim().toLowerCase();
  if (type !== "application/json") {
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
  const text = Buffer.concat(chunks).toString("utf8");
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

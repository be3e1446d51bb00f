/** Reading JSON request bodies with a size limit. */
import type { IncomingMessage } from "node:http";
import { ApiError } from "./errors.js";

/** Largest accepted JSON body (a 1,000-entry allow list is about 40 KiB). */
export const MAX_BODY_BYTES = 1024 * 1024;

/** Reads and parses a JSON body: 415 for another media type, 413 beyond `limit`, 400 for malformed JSON. */
export async function readJson(req: IncomingMessage, limit = MAX_BODY_BYTES): Promise<unknown> {
  const type = (req.headers["content-type"] ?? "").split(";")[0]?.trim().toLowerCase();
  if (type !== "application/json") {
    req.resume();
    throw new ApiError(415, "unsupported_media_type", "the body must be JSON (Content-Type: application/json)");
  }
  const declared = Number(req.headers["content-length"] ?? "0");
  if (declared > limit) {
    throw new ApiError(413, "payload_too_large", `the body is larger than ${limit} bytes`);
  }
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > limit) throw new ApiError(413, "payload_too_large", `the body is larger than ${limit} bytes`);
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString("utf8");
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new ApiError(
      400,
      "invalid_request",
      `malformed JSON: ${(err as Error).message}`,
      undefined,
      {},
      { cause: err },
    );
  }
}

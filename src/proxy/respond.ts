/** Writing the answers keyfence makes itself, with the `X-Keyfence-Reason` header on each. */
import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from "node:http";
import type { Duplex } from "node:stream";
import { messageOf, statusOf, type AnswerReason } from "../policy/answers.js";
import { sendJson } from "../util/http.js";

/** What an answer may carry besides its reason. */
export interface AnswerOptions {
  /** Fills the ip_not_allowed message. */
  readonly clientIp?: string;
  /** Replaces the default `{"message": ...}` body. */
  readonly body?: Record<string, unknown>;
  readonly requestId?: string;
}

/** Writes a keyfence answer: JSON body, reason header, request id, never cached. */
export function answer(res: ServerResponse, reason: AnswerReason, opts: AnswerOptions = {}): void {
  const status = statusOf(reason);
  const body = opts.body ?? { message: messageOf(reason, opts.clientIp) };
  const headers: OutgoingHttpHeaders = { "x-keyfence-reason": reason };
  if (opts.requestId !== undefined) headers["x-request-id"] = opts.requestId;
  if (status === 401) headers["www-authenticate"] = 'Bearer realm="keyfence"';
  else if (status === 429 || status === 503) headers["retry-after"] = "1";
  const req = res.req as IncomingMessage | undefined;
  // An unread request body would be drained before the next request on this
  // connection; refuse to read (possibly huge) bodies of rejected requests.
  if (req !== undefined && !req.complete && hasBody(req.headers)) res.shouldKeepAlive = false;
  sendJson(res, status, body, headers);
}

/** True when a request announces a body. */
export function hasBody(headers: {
  "content-length"?: string | undefined;
  "transfer-encoding"?: string | undefined;
}): boolean {
  if (headers["transfer-encoding"] !== undefined) return true;
  const cl = headers["content-length"];
  return cl !== undefined && cl !== "0";
}

/** Writes a complete HTTP/1.1 answer on a raw socket (upgrade and client-error paths), then closes it. */
export function answerSocket(
  socket: Duplex,
  status: number,
  reason: string,
  message: string,
  statusText: string,
): void {
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  const text = JSON.stringify({ message });
  socket.end(
    `HTTP/1.1 ${status} ${statusText}\r\n` +
      "Content-Type: application/json\r\n" +
      `Content-Length: ${Buffer.byteLength(text)}\r\n` +
      "Cache-Control: no-store\r\n" +
      `X-Keyfence-Reason: ${reason}\r\n` +
      "Connection: close\r\n\r\n" +
      text,
  );
}

/**
 * Every answer keyfence makes itself: one table from reason to status and
 * message, one writer, the `X-Keyfence-Reason` header on each.
 */
import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from "node:http";
import type { Duplex } from "node:stream";
import type { Reason } from "../policy/decide.js";
import { sendJson } from "../util/http.js";

/** Machine-readable reasons (SPEC §4), the decision's plus the proxy's own. */
export type AnswerReason = Reason | "upstream_unavailable" | "upstream_timeout" | "pong" | "bad_request";

const TABLE: Record<AnswerReason, { status: number; message: string }> = {
  ip_not_allowed: { status: 403, message: "source IP %s is not allowed for this API key" },
  invalid_api_key: { status: 401, message: "invalid API key" },
  missing_api_key: { status: 401, message: "missing API key" },
  multiple_authorization: { status: 400, message: "multiple Authorization headers" },
  malformed_authorization: { status: 400, message: "malformed Authorization header" },
  invalid_client_ip: { status: 400, message: "client IP address could not be determined" },
  upstream_unavailable: { status: 502, message: "upstream unavailable" },
  upstream_timeout: { status: 504, message: "upstream timed out" },
  pong: { status: 200, message: "pong" },
  bad_request: { status: 400, message: "bad request" },
};

/** The status code keyfence answers `reason` with. */
export function statusOf(reason: AnswerReason): number {
  return TABLE[reason].status;
}

/** The message of `reason`; `clientIp` fills the ip_not_allowed message. */
export function messageOf(reason: AnswerReason, clientIp = ""): string {
  const m = TABLE[reason].message;
  return reason === "ip_not_allowed" ? m.replace("%s", clientIp) : m;
}

/** Writes a keyfence answer: JSON body, reason header, never cached. */
export function answer(
  res: ServerResponse,
  reason: AnswerReason,
  clientIp = "",
  body: Record<string, unknown> = { message: messageOf(reason, clientIp) },
  status = statusOf(reason),
): void {
  const headers: OutgoingHttpHeaders = { "x-keyfence-reason": reason };
  if (status === 401) headers["www-authenticate"] = 'Bearer realm="keyfence"';
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

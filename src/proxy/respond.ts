/** Writing the answers keyfence makes itself, with the `X-Keyfence-Reason` header on each. */
import { STATUS_CODES, type IncomingMessage, type OutgoingHttpHeaders, type ServerResponse } from "node:http";
import type { Duplex } from "node:stream";
import type { AnswerReason } from "../policy/answers.js";
import { answerPlan, type JsonAnswer } from "../policy/enforce.js";
import { hasBody, sendJson } from "../util/http.js";

function bodyOf(plan: JsonAnswer): Readonly<Record<string, unknown>> {
  return plan.body ?? { message: plan.message };
}

/** What an answer may carry besides its reason. */
export interface AnswerOptions {
  /** Fills the ip_not_allowed message. */
  readonly clientIp?: string;
  /** Replaces the default `{"message": ...}` body. */
  readonly body?: Record<string, unknown>;
  readonly requestId?: string;
}

/** Writes a keyfence answer for `reason` (see {@link answerPlanned}). */
export function answer(res: ServerResponse, reason: AnswerReason, opts: AnswerOptions = {}): void {
  answerPlanned(res, answerPlan(reason, opts.clientIp, opts.body), opts.requestId);
}

/** Writes a plan's JSON answer: JSON body, reason header, request id, never cached. */
export function answerPlanned(res: ServerResponse, plan: JsonAnswer, requestId?: string): void {
  const headers: OutgoingHttpHeaders = { "x-keyfence-reason": plan.reason };
  if (requestId !== undefined) headers["x-request-id"] = requestId;
  if (plan.status === 401) headers["www-authenticate"] = 'Bearer realm="keyfence"';
  else if (plan.status === 429 || plan.status === 503) headers["retry-after"] = "1";
  const req = res.req as IncomingMessage | undefined;
  // An unread request body would be drained before the next request on this
  // connection; refuse to read (possibly huge) bodies of rejected requests.
  if (req !== undefined && !req.complete && hasBody(req.headers)) res.shouldKeepAlive = false;
  sendJson(res, plan.status, bodyOf(plan), headers);
}

/** Writes a plan's JSON answer on a raw socket (the upgrade path) with the same headers as {@link answer}, then closes it. */
export function answerPlanOnSocket(socket: Duplex, plan: JsonAnswer, requestId: string): void {
  let extra = `X-Request-Id: ${requestId}\r\n`;
  if (plan.status === 401) extra += 'WWW-Authenticate: Bearer realm="keyfence"\r\n';
  writeAnswer(
    socket,
    plan.status,
    STATUS_CODES[plan.status] ?? "Unknown",
    plan.reason,
    JSON.stringify(bodyOf(plan)),
    extra,
  );
}

/** Writes a complete HTTP/1.1 answer on a raw socket (client-error path), then closes it. */
export function answerSocket(
  socket: Duplex,
  status: number,
  reason: string,
  message: string,
  statusText: string,
): void {
  writeAnswer(socket, status, statusText, reason, JSON.stringify({ message }), "");
}

function writeAnswer(
  socket: Duplex,
  status: number,
  statusText: string,
  reason: string,
  text: string,
  extra: string,
): void {
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  socket.end(
    `HTTP/1.1 ${String(status)} ${statusText}\r\n` +
      "Content-Type: application/json\r\n" +
      `Content-Length: ${String(Buffer.byteLength(text))}\r\n` +
      "Cache-Control: no-store\r\n" +
      `X-Keyfence-Reason: ${reason}\r\n` +
      extra +
      "Connection: close\r\n\r\n" +
      text,
  );
}

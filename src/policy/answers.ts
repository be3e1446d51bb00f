/**
 * The answers keyfence gives itself: one table from machine-readable reason
 * (`X-Keyfence-Reason`) to status code and message, shared by both listeners.
 */
import type { Reason } from "./decide.js";

/** Machine-readable reasons (SPEC §4): the decision's plus the proxy's own. */
export type AnswerReason =
  | Reason
  | "upstream_unavailable"
  | "upstream_timeout"
  | "pong"
  | "client_ip"
  | "bad_request"
  | "too_many_requests"
  | "upstream_busy"
  | "body_timeout";

const TABLE: Record<AnswerReason, { status: number; message: string }> = {
  ip_not_allowed: { status: 403, message: "source IP %s is not allowed for this API key" },
  invalid_api_key: { status: 401, message: "invalid API key" },
  missing_api_key: { status: 401, message: "missing API key" },
  multiple_authorization: { status: 400, message: "multiple Authorization headers" },
  malformed_authorization: { status: 400, message: "malformed Authorization header" },
  multiple_credentials: { status: 400, message: "multiple API keys" },
  malformed_credential: { status: 400, message: "malformed API key" },
  invalid_client_ip: { status: 400, message: "client IP address could not be determined" },
  missing_scope: { status: 403, message: "API key lacks scope %s" },
  ambiguous_path: { status: 400, message: "ambiguous request path: %s" },
  upstream_unavailable: { status: 502, message: "upstream unavailable" },
  upstream_timeout: { status: 504, message: "upstream timed out" },
  pong: { status: 200, message: "pong" },
  client_ip: { status: 200, message: "%s" },
  too_many_requests: { status: 429, message: "too many requests in flight from this client" },
  upstream_busy: { status: 503, message: "upstream busy" },
  body_timeout: { status: 408, message: "request body timed out" },
  bad_request: { status: 400, message: "bad request" },
};

/** The status code keyfence answers `reason` with. */
export function statusOf(reason: AnswerReason): number {
  return TABLE[reason].status;
}

/** The message of `reason`; `detail` fills its blank (the client IP, the scope lacked, why a path is ambiguous). */
export function messageOf(reason: AnswerReason, detail = ""): string {
  const m = TABLE[reason].message;
  return m.includes("%s") ? m.replace("%s", () => detail) : m;
}

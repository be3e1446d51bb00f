/**
 * The enforcement decision as a value: one pure function from (credential,
 * key policy, client IP, settings) to what happens and why.
 */
import type { ClientIp } from "../clientip/resolve.js";
import type { Ip } from "../ip/address.js";
import type { CredentialFailure } from "./credential.js";
import { routeNeedOf, type RouteScopes } from "./routes.js";

/** Enforcement mode: `report` forwards would-be rejections and counts them. */
export type Mode = "enforce" | "report";

/** What keyfence needs to know of a key to decide. */
export interface KeyPolicy {
  readonly id: string;
  /** The key's own mode; undefined inherits the global one. */
  readonly mode: Mode | undefined;
  /** True when the key has a non-empty allow list. */
  readonly restricted: boolean;
  /** Whether the allow list admits `ip` (only asked when restricted). */
  contains(ip: Ip): boolean;
  /** The key's scopes (SPEC §3), checked against `route_scopes`. */
  readonly scopes: readonly string[];
  /** True for a sandbox key (SPEC §9): its allowed requests go to `sandbox_upstream` when one is set. */
  readonly sandbox: boolean;
}

/** What the route check reads of a request: its methods (own and overrides) and its paths without the query. */
export interface RouteQuestion {
  readonly methods: readonly string[];
  /** The request line's path, then any a path-override header names. */
  readonly paths: readonly string[];
}

/** The credential a request carries, as read from its Authorization header(s). */
export type Credential =
  | { readonly kind: "missing" }
  | { readonly kind: "invalid"; readonly reason: CredentialFailure }
  | { readonly kind: "key"; readonly key: KeyPolicy | undefined };

/** Settings that shape decisions (SPEC §2). */
export interface DecisionSettings {
  readonly mode: Mode;
  readonly unknown: "forward" | "reject";
  readonly missing: "forward" | "reject";
  /** True on the management API: a key's own report mode never softens a decision there. */
  readonly enforceAlways?: boolean;
  /** `route_scopes` (SPEC §9); undefined or empty: no route needs a scope. */
  readonly routes?: RouteScopes;
}

/** The `keyfence_decisions_total{decision}` label of a decision. */
export type Outcome =
  | "allowed"
  | "denied"
  | "would_deny"
  | "unknown_key"
  | "missing_key"
  | "invalid_client_ip"
  | "bad_request"
  | "missing_scope";

/** Why keyfence answered (or would have answered) itself: the `X-Keyfence-Reason` value. */
export type Reason =
  | "ip_not_allowed"
  | "invalid_api_key"
  | "missing_api_key"
  | "multiple_authorization"
  | "malformed_authorization"
  | "multiple_credentials"
  | "malformed_credential"
  | "invalid_client_ip"
  | "missing_scope"
  | "ambiguous_path";

/** A decision: forward or answer with `reason`; `reason` is also set for report-mode would-be denials. */
export interface Decision {
  readonly outcome: Outcome;
  readonly forward: boolean;
  readonly reason: Reason | undefined;
  readonly keyId: string | undefined;
  /** The mode that applied (the key's own, else the global one). */
  readonly mode: Mode;
  readonly client: ClientIp;
  /** The known key, if any (its scopes and sandbox flag travel to the upstream with `forward_identity`). */
  readonly key: KeyPolicy | undefined;
  /** For `missing_scope` the scope lacked; for `ambiguous_path` why the path is ambiguous. */
  readonly detail: string | undefined;
}

/** Decides one request; `route` is asked only for a known key past the IP check. Never throws. */
export function decide(
  credential: Credential,
  client: ClientIp,
  settings: DecisionSettings,
  route?: RouteQuestion,
): Decision {
  switch (credential.kind) {
    case "invalid":
      return result("bad_request", false, credential.reason, undefined, settings.mode, client);
    case "missing": {
      const forward = settings.missing === "forward";
      return result("missing_key", forward, forward ? undefined : "missing_api_key", undefined, settings.mode, client);
    }
    case "key":
      break;
  }
  const key = credential.key;
  if (key === undefined) {
    const forward = settings.unknown === "forward";
    return result("unknown_key", forward, forward ? undefined : "invalid_api_key", undefined, settings.mode, client);
  }
  const mode = settings.enforceAlways === true ? "enforce" : (key.mode ?? settings.mode);
  let reason: keyof typeof OUTCOME_OF;
  let detail: string | undefined;
  if (key.restricted && client.ip === undefined) reason = "invalid_client_ip";
  else if (key.restricted && !key.contains(client.ip as Ip)) reason = "ip_not_allowed";
  else {
    const routes = settings.routes;
    if (routes === undefined || routes.rules.length === 0 || route === undefined) {
      return result("allowed", true, undefined, key, mode, client);
    }
    const need = routeNeedOf(routes, route.methods, route.paths);
    if (need.kind === "ambiguous") {
      reason = "ambiguous_path";
      detail = need.why;
    } else {
      const lacking = need.rules.find((r) => !key.scopes.includes(r.scope));
      if (lacking === undefined) return result("allowed", true, undefined, key, mode, client);
      reason = "missing_scope";
      detail = lacking.scope;
    }
  }
  if (mode === "report") return result("would_deny", true, reason, key, mode, client, detail);
  return result(OUTCOME_OF[reason], false, reason, key, mode, client, detail);
}

const OUTCOME_OF: Record<"ip_not_allowed" | "invalid_client_ip" | "missing_scope" | "ambiguous_path", Outcome> = {
  ip_not_allowed: "denied",
  invalid_client_ip: "invalid_client_ip",
  missing_scope: "missing_scope",
  ambiguous_path: "bad_request",
};

function result(
  outcome: Outcome,
  forward: boolean,
  reason: Reason | undefined,
  key: KeyPolicy | undefined,
  mode: Mode,
  client: ClientIp,
  detail?: string,
): Decision {
  return { outcome, forward, reason, keyId: key?.id, mode, client, key, detail };
}

/**
 * The enforcement decision as a value: one pure function from (credential,
 * key policy, client IP, settings) to what happens and why.
 */
import type { ClientIp } from "../clientip/resolve.js";
import type { Ip } from "../ip/address.js";
import type { CredentialFailure } from "./credential.js";

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
}

/** The `keyfence_decisions_total{decision}` label of a decision. */
export type Outcome =
  "allowed" | "denied" | "would_deny" | "unknown_key" | "missing_key" | "invalid_client_ip" | "bad_request";

/** Why keyfence answered (or would have answered) itself: the `X-Keyfence-Reason` value. */
export type Reason =
  | "ip_not_allowed"
  | "invalid_api_key"
  | "missing_api_key"
  | "multiple_authorization"
  | "malformed_authorization"
  | "multiple_credentials"
  | "malformed_credential"
  | "invalid_client_ip";

/** A decision: forward or answer with `reason`; `reason` is also set for report-mode would-be denials. */
export interface Decision {
  readonly outcome: Outcome;
  readonly forward: boolean;
  readonly reason: Reason | undefined;
  readonly keyId: string | undefined;
  /** The mode that applied (the key's own, else the global one). */
  readonly mode: Mode;
  readonly client: ClientIp;
}

/** Decides one request; never throws. */
export function decide(credential: Credential, client: ClientIp, settings: DecisionSettings): Decision {
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
  if (!key.restricted) return result("allowed", true, undefined, key.id, mode, client);
  let reason: Reason;
  if (client.ip === undefined) reason = "invalid_client_ip";
  else if (key.contains(client.ip)) return result("allowed", true, undefined, key.id, mode, client);
  else reason = "ip_not_allowed";
  if (mode === "report") return result("would_deny", true, reason, key.id, mode, client);
  return result(reason === "ip_not_allowed" ? "denied" : "invalid_client_ip", false, reason, key.id, mode, client);
}

function result(
  outcome: Outcome,
  forward: boolean,
  reason: Reason | undefined,
  keyId: string | undefined,
  mode: Mode,
  client: ClientIp,
): Decision {
  return { outcome, forward, reason, keyId, mode, client };
}

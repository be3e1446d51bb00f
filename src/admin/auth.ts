/**
 * Who is calling the management API: an operator (token matched by SHA-256 in
 * constant time) or an API key with `api_keys:write`, itself held to its own
 * allow list (never softened by report mode). Failed attempts are throttled
 * per client IP.
 */
import { timingSafeEqual } from "node:crypto";
import type { IncomingMessage } from "node:http";
import type { ClientIp } from "../clientip/resolve.js";
import type { Operator } from "../config/config.js";
import { BEARER_ONLY, readBearer, secretHash } from "../policy/credential.js";
import { messageOf } from "../policy/answers.js";
import { enforceCredential, type StepSettings } from "../policy/enforce.js";
import type { KeyRecord } from "../store/keysfile.js";
import type { KeyStore } from "../store/store.js";
import { ApiError } from "./errors.js";
import { readCookie, SESSION_COOKIE, type Session, type SessionStore } from "./sessions.js";
import type { FailureThrottle } from "./throttle.js";

/** The scope that lets an API key manage keys. */
export const WRITE_SCOPE = "api_keys:write";

/** An authenticated caller. */
export type Caller =
  | { readonly kind: "operator"; readonly operator: Operator; readonly via: "token" }
  | { readonly kind: "operator"; readonly operator: Operator; readonly via: "session"; readonly session: Session }
  | { readonly kind: "key"; readonly record: KeyRecord };

const SAFE_METHODS = new Set(["GET", "HEAD", "OPTIONS"]);

/**
 * True unless the request names another origin. Browsers send `Origin: null`
 * for form posts from pages with `Referrer-Policy: no-referrer`; that proves
 * nothing either way, so the CSRF token decides.
 */
export function sameOrigin(req: IncomingMessage): boolean {
  const origin = req.headers.origin;
  if (origin === undefined || origin === "null") return true;
  try {
    return new URL(origin).host === req.headers.host;
  } catch {
    return false;
  }
}

/**
 * Checks a cookie-authenticated change: the CSRF token must match and the
 * Origin, when the browser sends one, must be this admin listener's.
 */
export function checkCsrf(req: IncomingMessage, session: Session, formToken?: string): void {
  if (!sameOrigin(req)) throw new ApiError(403, "csrf_failed", "cross-origin request refused");
  const sent = formToken ?? req.headers["x-csrf-token"];
  const token = typeof sent === "string" ? Buffer.from(sent) : Buffer.alloc(0);
  const expected = Buffer.from(session.csrf);
  if (token.length !== expected.length || !timingSafeEqual(token, expected)) {
    throw new ApiError(403, "csrf_failed", "missing or wrong CSRF token; reload the page");
  }
}

/** The enforcement step's settings for API keys on the management API: report mode never softens it. */
const ADMIN_POLICY: StepSettings = {
  mode: "enforce",
  unknown: "reject",
  missing: "reject",
  enforceAlways: true,
  pingPath: undefined,
  places: BEARER_ONLY,
};

/** Authenticates management API callers. */
export class Authenticator {
  private readonly operatorHashes: Array<{ operator: Operator; hash: Buffer }>;

  constructor(
    operators: readonly Operator[],
    private readonly store: KeyStore,
    readonly throttle: FailureThrottle,
    readonly sessions: SessionStore,
  ) {
    this.operatorHashes = operators.map((operator) => ({ operator, hash: Buffer.from(operator.tokenSha256, "hex") }));
  }

  /** Throws 429 while `client` is throttled. */
  checkThrottle(client: ClientIp): void {
    const wait = this.throttle.retryAfter(client.text);
    if (wait > 0) {
      throw new ApiError(429, "too_many_attempts", "too many failed attempts; try again later", undefined, {
        "retry-after": String(wait),
      });
    }
  }

  /** The operator whose token hashes to `tokenHash`, compared in constant time against every operator. */
  operatorByTokenHash(tokenHash: string): Operator | undefined {
    const candidate = Buffer.from(tokenHash, "hex");
    let found: Operator | undefined;
    for (const { operator, hash } of this.operatorHashes) {
      if (timingSafeEqual(hash, candidate) && found === undefined) found = operator;
    }
    return found;
  }

  /** Authenticates a bearer token from `req`; throws the 400/401/403/429 to answer otherwise. */
  authenticate(req: IncomingMessage, client: ClientIp): Caller {
    this.checkThrottle(client);
    const bearer = readBearer(req.rawHeaders);
    if (bearer.kind === "invalid") {
      throw new ApiError(400, bearer.reason, messageOf(bearer.reason));
    }
    if (bearer.kind === "missing") {
      const session = this.sessions.get(readCookie(req.headers.cookie, SESSION_COOKIE));
      if (session !== undefined) {
        if (!SAFE_METHODS.has(req.method ?? "GET")) checkCsrf(req, session);
        return { kind: "operator", operator: session.operator, via: "session", session };
      }
      throw new ApiError(
        401,
        "missing_credential",
        "missing credential: send Authorization: Bearer <token>",
        undefined,
        {
          "www-authenticate": 'Bearer realm="keyfence-admin"',
        },
      );
    }
    const hash = secretHash(bearer.token);
    const operator = this.operatorByTokenHash(hash);
    if (operator) return { kind: "operator", operator, via: "token" };
    const snapshot = this.store.snapshot;
    const record = snapshot.recordByHash(hash);
    const plan = record === undefined ? undefined : enforceCredential(bearer, "/", client, snapshot, ADMIN_POLICY).plan;
    if (record === undefined || plan === undefined) {
      this.throttle.fail(client.text);
      throw new ApiError(401, "invalid_credential", "invalid credential", undefined, {
        "www-authenticate": 'Bearer realm="keyfence-admin"',
      });
    }
    if (plan.kind === "answer") {
      const reason = plan.reason === "ip_not_allowed" ? plan.reason : "invalid_client_ip";
      throw new ApiError(plan.status, reason, plan.message);
    }
    if (!record.scopes.includes(WRITE_SCOPE)) {
      throw new ApiError(403, "missing_scope", `this API key lacks the ${WRITE_SCOPE} scope`);
    }
    return { kind: "key", record };
  }
}

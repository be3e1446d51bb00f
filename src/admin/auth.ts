/**
 * Who is calling the management API: an operator (token matched by SHA-256 in
 * constant time) or an API key with `api_keys:write`, itself held to its own
 * allow list (never softened by report mode). Every verification is an
 * attempt under the per-client limit, counted when it starts.
 */
import { timingSafeEqual } from "node:crypto";
import type { IncomingMessage } from "node:http";
import { resolveClientIp, type ClientIp, type CompiledTrust } from "../clientip/resolve.js";
import type { Operator } from "../config/config.js";
import { BEARER_ONLY, readBearer } from "../policy/credential.js";
import { hexOfDigest, secretDigest } from "../store/digest.js";
import { messageOf } from "../policy/answers.js";
import type { KeyPolicy } from "../policy/decide.js";
import { enforceCredential, type StepSettings } from "../policy/enforce.js";
import type { KeyRecord } from "../store/keysfile.js";
import type { Snapshot } from "../store/snapshot.js";
import type { KeyStore } from "../store/store.js";
import { forwardedFor } from "../util/http.js";
import { ApiError, invalidCredential, missingCredential, tooManyAttempts } from "./errors.js";
import type { AttemptLimit } from "./attempts.js";
import type { RouteAuth } from "./server.js";
import { readCookie, SESSION_COOKIE, type Session, type SessionStore } from "./sessions.js";

/** The scope that lets an API key manage keys. */
export const WRITE_SCOPE = "api_keys:write";

/** An authenticated caller. */
export type Caller =
  | { readonly kind: "operator"; readonly operator: Operator; readonly via: "token" }
  | { readonly kind: "operator"; readonly operator: Operator; readonly via: "session"; readonly session: Session }
  | { readonly kind: "key"; readonly record: KeyRecord };

const SAFE_METHODS = new Set(["GET", "HEAD", "OPTIONS"]);

/**
 * True unless the request names another origin. `Origin: null` (sandboxed
 * frames, `data:` pages, some redirects) counts as foreign when `nullIsForeign`;
 * otherwise it proves nothing either way and the CSRF token decides.
 */
export function sameOrigin(req: IncomingMessage, nullIsForeign = false): boolean {
  const origin = req.headers.origin;
  if (origin === undefined) return true;
  if (origin === "null") return !nullIsForeign;
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
  if (!sameOrigin(req)) throw new ApiError("csrf_failed", "cross-origin request refused");
  const sent = formToken ?? req.headers["x-csrf-token"];
  const token = typeof sent === "string" ? Buffer.from(sent) : Buffer.alloc(0);
  const expected = Buffer.from(session.csrf);
  if (token.length !== expected.length || !timingSafeEqual(token, expected)) {
    throw new ApiError("csrf_failed");
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
    readonly attempts: AttemptLimit,
    readonly sessions: SessionStore,
  ) {
    this.operatorHashes = operators.map((operator) => ({ operator, hash: Buffer.from(operator.tokenSha256, "hex") }));
  }

  /**
   * Runs `verify` as one attempt of `client` (see {@link AttemptLimit});
   * throws 429 `too_many_attempts` with `Retry-After` instead of running it
   * when the client has no attempt left.
   */
  async attempt<T>(client: ClientIp, verify: () => T | Promise<T>, succeeded: (result: T) => boolean): Promise<T> {
    const outcome = await this.attempts.attempt(client.text, verify, succeeded);
    if (outcome.limited) throw tooManyAttempts(outcome.retryAfterS);
    return outcome.result;
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

  /** Authenticates a bearer token or session cookie from `req`; throws the 400/401/403/429 to answer otherwise. */
  async authenticate(req: IncomingMessage, client: ClientIp): Promise<Caller> {
    const bearer = readBearer(req.rawHeaders);
    if (bearer.kind === "invalid") {
      throw new ApiError(bearer.reason, messageOf(bearer.reason));
    }
    if (bearer.kind === "missing") {
      const session = await this.sessions.get(readCookie(req.headers.cookie, SESSION_COOKIE));
      if (session !== undefined) {
        if (!SAFE_METHODS.has(req.method ?? "GET")) checkCsrf(req, session);
        return { kind: "operator", operator: session.operator, via: "session", session };
      }
      throw missingCredential();
    }
    const digest = secretDigest(bearer.token);
    type Found = { operator: Operator } | { policy: KeyPolicy; record: KeyRecord } | undefined;
    const lookup = (): Found => {
      const operator = this.operatorByTokenHash(hexOfDigest(digest));
      if (operator) return { operator };
      const snapshot = this.store.snapshot;
      const record = snapshot.recordByHash(digest);
      return record === undefined ? undefined : { policy: snapshot.cache.policy(record), record };
    };
    // A token's lookup is local and has no side effect, so it runs first: a
    // known token holds no attempt (concurrent API calls of one script, also
    // through replicas sharing a Redis limit, are never limited) but is still
    // refused while the client is locked out; an unknown one is counted
    // atomically before its answer, so only 10 a minute get a verdict.
    let found = lookup();
    if (found !== undefined) {
      const wait = await this.attempts.retryAfter(client.text);
      if (wait > 0) throw tooManyAttempts(wait);
    } else {
      found = await this.attempt(client, lookup, (r) => r !== undefined);
    }
    if (found !== undefined && "operator" in found) return { kind: "operator", operator: found.operator, via: "token" };
    if (found === undefined) {
      throw invalidCredential();
    }
    authorizeKey(found.policy, found.record, client);
    return { kind: "key", record: found.record };
  }
}

/** Throws the API error a key gets unless it may manage keys from `client`: allowed from there, holding {@link WRITE_SCOPE}. */
function authorizeKey(policy: KeyPolicy, record: KeyRecord, client: ClientIp): void {
  const token = { kind: "token", token: "" } as const;
  const plan = enforceCredential(token, "/", client, { lookupToken: () => policy }, ADMIN_POLICY).plan;
  if (plan.kind === "answer") {
    const reason = plan.reason === "ip_not_allowed" ? plan.reason : "invalid_client_ip";
    throw new ApiError(reason, plan.message);
  }
  if (!record.scopes.includes(WRITE_SCOPE)) {
    throw new ApiError("missing_scope", `this API key lacks the ${WRITE_SCOPE} scope`);
  }
}

/**
 * Authorizes a key caller again against `snapshot`, the store as a change is
 * about to be made (under its lock): a key deleted, narrowed away from
 * `client` or stripped of {@link WRITE_SCOPE} since its request was
 * authenticated gets the answer it would get now, so a change queued behind
 * its own revocation never undoes it. Returns the key's record as
 * authorized (undefined for an operator, who is not affected).
 */
export function reauthorize(snapshot: Snapshot, caller: Caller, client: ClientIp): KeyRecord | undefined {
  if (caller.kind !== "key") return undefined;
  const record = snapshot.recordByHash(caller.record.secretDigest);
  if (record === undefined || record.id !== caller.record.id) throw invalidCredential();
  authorizeKey(snapshot.cache.policy(record), record, client);
  return record;
}

/** Resolves the client IP of an admin request exactly as the proxy does. */
export function clientOf(req: IncomingMessage, trust: CompiledTrust): ClientIp {
  return resolveClientIp(req.socket.remoteAddress, forwardedFor(req), trust);
}

/** A management API caller and the client IP it calls from. */
export interface ApiCaller {
  readonly caller: Caller;
  readonly client: ClientIp;
}

/**
 * The management API's authentication: an operator token, an API key with
 * {@link WRITE_SCOPE}, or a session cookie (CSRF-checked on changes); refused
 * with 400/401/403/429 (see {@link Authenticator.authenticate}).
 */
export function credentialAuth(auth: Authenticator, trust: CompiledTrust): RouteAuth<ApiCaller> {
  return {
    name: "credential",
    check: async (req) => {
      const client = clientOf(req, trust);
      return { caller: await auth.authenticate(req, client), client };
    },
  };
}

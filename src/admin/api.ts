/**
 * The management API routes (SPEC §5) on the admin listener: authentication,
 * pagination, confirmation headers, and the mapping of service results to
 * status codes.
 */
import type { IncomingMessage } from "node:http";
import type { ClientIp, CompiledTrust } from "../clientip/resolve.js";
import { StoreConflictError } from "../store/store.js";
import { sendJson } from "../util/http.js";
import type { AuditLog } from "./audit.js";
import { credentialAuth, type ApiCaller, type Authenticator, type Caller } from "./auth.js";
import { readJson } from "./body.js";
import type { ObservedSource } from "../metrics/sources.js";
import type { Confirmations } from "./confirm.js";
import { ApiError, invalid } from "./errors.js";
import type { ChangeContext, KeysService } from "./keys.js";
import type { AdminServer } from "./server.js";

/** Header carrying the RFC 6238 code for confirmed changes. */
export const OTP_HEADER = "x-keyfence-otp";

/** What the API routes need. */
export interface ApiDeps {
  readonly keys: KeysService;
  readonly audit: AuditLog;
  readonly auth: Authenticator;
  readonly confirmations: Confirmations;
  /** Observed sources of a key (in a cluster: merged from every worker). */
  readonly sources: (keyId: string) => Promise<ObservedSource[]>;
  readonly trust: CompiledTrust;
}

/** Reads `limit` (1–1000, default 100) and `cursor` from the query. */
export function pageParams(url: URL): { limit: number; cursor: string | undefined } {
  const raw = url.searchParams.get("limit");
  const limit = raw === null ? 100 : /^[1-9][0-9]{0,3}$/.test(raw) ? Number(raw) : NaN;
  if (!(limit >= 1 && limit <= 1000)) {
    throw invalid([{ field: "limit", message: `must be an integer from 1 to 1000, got ${JSON.stringify(raw)}` }]);
  }
  return { limit, cursor: url.searchParams.get("cursor") ?? undefined };
}

/**
 * The confirmation step of a caller: a dashboard session must have re-confirmed
 * within the window; a token operator with a TOTP secret sends a code in
 * `X-Keyfence-OTP`, verified as one attempt under the client's limit;
 * everyone else needs none.
 */
export function confirmFor(
  req: IncomingMessage,
  caller: Caller,
  client: ClientIp,
  deps: Pick<ApiDeps, "confirmations" | "auth">,
): () => Promise<boolean> {
  // A write that loses a race to another replica is planned again and asks
  // again: the code this request already used stays its confirmation.
  let confirmedByCode = false;
  return async () => {
    if (confirmedByCode) return true;
    if (caller.kind === "operator" && caller.via === "session") {
      if (!deps.auth.sessions.recentlyConfirmed(caller.session)) {
        throw new ApiError("confirmation_required");
      }
      return true;
    }
    const secret = caller.kind === "operator" ? caller.operator.totpSecret : undefined;
    if (caller.kind !== "operator" || secret === undefined) return false;
    const raw = req.headers[OTP_HEADER];
    const code = (Array.isArray(raw) ? raw[0] : raw)?.trim() ?? "";
    if (code === "") throw new ApiError("confirmation_required");
    const check = await deps.auth.attempt(
      client,
      () => deps.confirmations.consume(caller.operator.name, secret, code),
      (c) => c === "ok",
    );
    if (check !== "ok") throw new ApiError("invalid_confirmation_code");
    confirmedByCode = true;
    return true;
  };
}

/** Keeps a body error as the body, for the service to raise after its 404 check (SPEC §5 check order). */
function deferred(err: unknown): ApiError {
  if (err instanceof ApiError) return err;
  throw err;
}

/** Maps store conflicts to 409. */
async function conflictsAs409<T>(work: Promise<T>): Promise<T> {
  try {
    return await work;
  } catch (err) {
    if (err instanceof StoreConflictError) throw new ApiError("conflict", err.message, { cause: err });
    throw err;
  }
}

/** Registers `/v1/api-keys` and `/v1/audit` on the admin listener, each behind {@link credentialAuth}. */
export function registerApi(admin: AdminServer, deps: ApiDeps): void {
  const auth = { auth: credentialAuth(deps.auth, deps.trust) };
  const change = (req: IncomingMessage, { caller, client }: ApiCaller): ChangeContext => ({
    caller,
    client,
    confirm: confirmFor(req, caller, client, deps),
  });

  admin.route("GET", "/v1/api-keys", auth, async (_req, res, { url }) => {
    const { limit, cursor } = pageParams(url);
    sendJson(res, 200, await deps.keys.list(limit, cursor));
  });
  admin.route("POST", "/v1/api-keys", auth, async (req, res, { caller }) => {
    const ctx = change(req, caller);
    const body = await readJson(req).catch(deferred);
    sendJson(res, 201, await conflictsAs409(deps.keys.create(body, ctx)));
  });
  admin.route("GET", "/v1/api-keys/:id", auth, (_req, res, { params }) => {
    sendJson(res, 200, deps.keys.get(params["id"] ?? ""));
  });
  admin.route("PATCH", "/v1/api-keys/:id", auth, async (req, res, { params, caller }) => {
    const ctx = change(req, caller);
    const body = await readJson(req).catch(deferred);
    sendJson(res, 200, await conflictsAs409(deps.keys.update(params["id"] ?? "", body, ctx)));
  });
  admin.route("DELETE", "/v1/api-keys/:id", auth, async (req, res, { params, caller }) => {
    await conflictsAs409(deps.keys.delete(params["id"] ?? "", change(req, caller)));
    res.writeHead(204, { "cache-control": "no-store" });
    res.end();
  });
  admin.route("GET", "/v1/api-keys/:id/sources", auth, async (_req, res, { params }) => {
    const id = params["id"] ?? "";
    deps.keys.get(id); // 404 when absent
    sendJson(res, 200, { data: await deps.sources(id) });
  });
  admin.route("GET", "/v1/audit", auth, async (_req, res, { url }) => {
    const { limit, cursor } = pageParams(url);
    const before = cursor === undefined ? undefined : /^[1-9][0-9]*$/.test(cursor) ? Number(cursor) : NaN;
    if (Number.isNaN(before))
      throw invalid([{ field: "cursor", message: `not a cursor from this endpoint: ${JSON.stringify(cursor)}` }]);
    sendJson(res, 200, await deps.audit.page(limit, before));
  });
}

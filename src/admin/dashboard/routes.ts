/**
 * The dashboard on the admin listener: sign-in with an operator token (and
 * code), server-rendered pages, hashed assets, strict security headers. Pages
 * change keys through the same management API, authenticated by the session
 * cookie plus a CSRF token; allow-list changes need a recent re-confirmation.
 */
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Logger } from "pino";
import type { CompiledTrust } from "../../clientip/resolve.js";
import type { Operator } from "../../config/config.js";
import type { ObservedSource } from "../../metrics/sources.js";
import { secretHash } from "../../policy/credential.js";
import type { Mode } from "../../policy/decide.js";
import type { AuditLog } from "../audit.js";
import { checkCsrf, clientOf, sameOrigin, type Authenticator } from "../auth.js";
import { readJson } from "../body.js";
import type { Confirmations } from "../confirm.js";
import { ApiError, tooManyAttempts } from "../errors.js";
import type { KeysService } from "../keys.js";
import { PUBLIC, type AdminServer, type RouteAuth } from "../server.js";
import { readCookie, SESSION_COOKIE, type Session, type SessionStore } from "../sessions.js";
import type { SafeHtml } from "./html.js";
import { auditPage, keyFormPage, keysPage, signInPage, type Assets, type PageContext } from "./pages.js";
import { STYLES } from "./styles.js";

/** What the dashboard needs. */
export interface DashboardDeps {
  readonly keys: KeysService;
  readonly audit: AuditLog;
  readonly auth: Authenticator;
  readonly sessions: SessionStore;
  readonly confirmations: Confirmations;
  readonly sources: (keyId: string) => Promise<ObservedSource[]>;
  readonly trust: CompiledTrust;
  /** Mark the session cookie Secure (any admin listener but plain loopback HTTP). */
  readonly secureCookie: boolean;
  readonly globalMode: Mode;
  readonly log: Logger;
}

/**
 * Headers on every dashboard page: no inline script, no framing, no referrer
 * to other origins (`same-origin`, not `no-referrer`: under `no-referrer`
 * browsers send `Origin: null` on the page's own form posts, which sign-in
 * refuses), nothing cached.
 */
export const PAGE_HEADERS = {
  "content-security-policy":
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
  "x-frame-options": "DENY",
  "referrer-policy": "same-origin",
  "x-content-type-options": "nosniff",
  "cache-control": "no-store",
} as const;

/** Keys shown per page of the keys list. */
const PAGE_SIZE = 50;

function sendHtml(res: ServerResponse, status: number, page: SafeHtml, headers: Record<string, string> = {}): void {
  const body = page.text;
  res.writeHead(status, {
    ...PAGE_HEADERS,
    "content-type": "text/html; charset=utf-8",
    "content-length": Buffer.byteLength(body),
    ...headers,
  });
  res.end(body);
}

function redirect(res: ServerResponse, to: string, headers: Record<string, string> = {}): void {
  res.writeHead(303, { ...PAGE_HEADERS, location: to, "content-length": 0, ...headers });
  res.end();
}

function asset(name: string, type: string, body: Buffer): { url: string; type: string; body: Buffer } {
  const hash = createHash("sha256").update(body).digest("hex").slice(0, 12);
  return { url: `/assets/${name}.${hash}.${type === "text/css" ? "css" : "js"}`, type, body };
}

async function readForm(req: IncomingMessage): Promise<URLSearchParams> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req as AsyncIterable<Buffer>) {
    size += c.length;
    if (size > 8192) throw new ApiError("payload_too_large", "form too large");
    chunks.push(c);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString("utf8"));
}

/** A dashboard page: the session of a signed-in operator; anyone else is redirected to sign in. */
function sessionAuth(sessions: SessionStore): RouteAuth<Session> {
  return {
    name: "session",
    check: async (req, res) => {
      const s = await sessions.get(readCookie(req.headers.cookie, SESSION_COOKIE));
      if (s === undefined) redirect(res, "/");
      return s;
    },
  };
}

/** A dashboard call that changes the session: a session (else 401), its CSRF token and origin (else 403). */
function sessionChangeAuth(sessions: SessionStore): RouteAuth<Session> {
  return {
    name: "session+csrf",
    check: async (req) => {
      const s = await sessions.get(readCookie(req.headers.cookie, SESSION_COOKIE));
      if (s === undefined) throw new ApiError("missing_credential", "session expired; sign in again");
      checkCsrf(req, s);
      return s;
    },
  };
}

/** Public, with the caller's session when it has one (the sign-in page doubles as the keys list). */
function optionalSessionAuth(sessions: SessionStore): RouteAuth<Session | null> {
  return {
    name: "public",
    check: async (req) => (await sessions.get(readCookie(req.headers.cookie, SESSION_COOKIE))) ?? null,
  };
}

/** What the dashboard's route groups share. */
interface Dashboard {
  readonly deps: DashboardDeps;
  readonly assets: Assets;
  /** The `Set-Cookie` value of a session cookie (`maxAge` 0 clears it). */
  cookie(value: string, maxAge?: number): string;
  /** What every signed-in page shows. */
  context(req: IncomingMessage, s: Session): PageContext;
  /** The operator a token belongs to, when its code is also right (a right code is used up); undefined otherwise. */
  verify(token: string, code: string): Promise<Operator | undefined>;
}

/** Registers the dashboard routes and assets. */
export function registerDashboard(admin: AdminServer, deps: DashboardDeps): void {
  const js = asset("app", "text/javascript", readFileSync(new URL("./client/app.js", import.meta.url)));
  const css = asset("app", "text/css", Buffer.from(STYLES));
  const d: Dashboard = {
    deps,
    assets: { js: js.url, css: css.url },
    cookie: (value, maxAge) =>
      `${SESSION_COOKIE}=${value}; Path=/; HttpOnly; SameSite=Strict${deps.secureCookie ? "; Secure" : ""}${maxAge === undefined ? "" : `; Max-Age=${maxAge}`}`,
    context: (req, s) => ({
      assets: { js: js.url, css: css.url },
      operator: s.operator.name,
      csrf: s.csrf,
      clientIp: clientOf(req, deps.trust).text,
      totp: s.operator.totpSecret !== undefined,
    }),
    verify: async (token, code) => {
      const operator = token === "" ? undefined : deps.auth.operatorByTokenHash(secretHash(token));
      const ok =
        operator !== undefined &&
        (operator.totpSecret === undefined ||
          (await deps.confirmations.consume(operator.name, operator.totpSecret, code)) === "ok");
      return ok ? operator : undefined;
    },
  };
  registerAssets(admin, new Map([js, css].map((a) => [a.url, a])));
  registerSessionRoutes(admin, d);
  registerConfirm(admin, d);
  registerPages(admin, d);
}

function registerAssets(admin: AdminServer, files: ReadonlyMap<string, { type: string; body: Buffer }>): void {
  admin.route("GET", "/assets/:file", { auth: PUBLIC }, (_req, res, { params }) => {
    const a = files.get(`/assets/${params["file"] ?? ""}`);
    if (a === undefined) throw new ApiError("not_found");
    res.writeHead(200, {
      "content-type": `${a.type}; charset=utf-8`,
      "content-length": a.body.length,
      "cache-control": "public, max-age=31536000, immutable",
      "x-content-type-options": "nosniff",
    });
    res.end(a.body);
  });
  admin.route("GET", "/favicon.ico", { auth: PUBLIC }, (_req, res) => {
    res.writeHead(204, { "cache-control": "public, max-age=86400" });
    res.end();
  });
}

/** Sign-in (`POST /session`) and sign-out (`POST /session/end`). */
function registerSessionRoutes(admin: AdminServer, d: Dashboard): void {
  const { deps, assets } = d;
  admin.route("POST", "/session", { auth: PUBLIC }, async (req, res) => {
    const client = clientOf(req, deps.trust);
    if (!sameOrigin(req, true)) {
      sendHtml(res, 403, signInPage(assets, "Cross-origin sign-in refused."));
      return;
    }
    // One attempt, counted before the body is even read.
    const outcome = await deps.auth.attempts.attempt(
      client.text,
      async () => {
        const form = await readForm(req);
        return d.verify(form.get("token") ?? "", (form.get("code") ?? "").trim());
      },
      (op) => op !== undefined,
    );
    if (outcome.limited) {
      res.shouldKeepAlive = false; // the body is never read
      const wait = outcome.retryAfterS;
      sendHtml(res, 429, signInPage(assets, `Too many failed attempts. Try again in ${wait} s.`), {
        "retry-after": String(wait),
      });
      return;
    }
    const operator = outcome.result;
    if (operator === undefined) {
      deps.log.warn({ event: "signin_failed", client_ip: client.text }, "dashboard sign-in failed");
      sendHtml(res, 401, signInPage(assets, "Invalid token or code."));
      return;
    }
    const { cookie: value } = await deps.sessions.create(operator);
    deps.log.info(
      { event: "signin", operator: operator.name, client_ip: client.text },
      `operator ${operator.name} signed in`,
    );
    redirect(res, "/", { "set-cookie": d.cookie(value) });
  });

  admin.route("POST", "/session/end", { auth: optionalSessionAuth(deps.sessions) }, async (req, res, { caller }) => {
    const s = caller;
    if (s !== null) {
      const form = await readForm(req);
      checkCsrf(req, s, form.get("csrf") ?? "");
      await deps.sessions.end(readCookie(req.headers.cookie, SESSION_COOKIE));
      deps.log.info({ event: "signout", operator: s.operator.name }, `operator ${s.operator.name} signed out`);
    }
    redirect(res, "/", { "set-cookie": d.cookie("", 0) });
  });
}

/** `POST /session/confirm`: re-confirms a session with the operator's token (and code) before allow-list changes. */
function registerConfirm(admin: AdminServer, d: Dashboard): void {
  const { deps } = d;
  admin.route("POST", "/session/confirm", { auth: sessionChangeAuth(deps.sessions) }, async (req, res, ctx) => {
    const s = ctx.caller;
    const client = clientOf(req, deps.trust);
    type Confirmed = "ok" | "used" | "invalid";
    const outcome = await deps.auth.attempts.attempt(
      client.text,
      async (): Promise<Confirmed> => {
        const body = (await readJson(req)) as { token?: unknown; code?: unknown } | null;
        const token = typeof body?.token === "string" ? body.token : "";
        const code = typeof body?.code === "string" ? body.code.trim() : "";
        if ((await d.verify(token, code))?.name === s.operator.name) return "ok";
        // The right token with a current code that was refused: it was used already (to sign in, say).
        const secret = s.operator.totpSecret;
        const used =
          secret !== undefined &&
          deps.auth.operatorByTokenHash(secretHash(token))?.name === s.operator.name &&
          deps.confirmations.isCurrent(secret, code);
        return used ? "used" : "invalid";
      },
      (r) => r === "ok",
    );
    if (outcome.limited) {
      res.shouldKeepAlive = false;
      throw tooManyAttempts(outcome.retryAfterS);
    }
    if (outcome.result === "used") throw new ApiError("confirmation_code_used");
    if (outcome.result !== "ok") throw new ApiError("invalid_confirmation_code", "invalid token or code");
    await deps.sessions.confirm(s);
    res.writeHead(204, { "cache-control": "no-store" });
    res.end();
  });
}

/** The pages: the keys list (or sign-in), a key's form, the audit log. */
function registerPages(admin: AdminServer, d: Dashboard): void {
  const { deps, assets } = d;
  const signedIn = { auth: sessionAuth(deps.sessions) };

  admin.route("GET", "/", { auth: optionalSessionAuth(deps.sessions) }, async (req, res, { url, caller: s }) => {
    if (s === null) {
      sendHtml(res, 200, signInPage(assets));
      return;
    }
    const q = (url.searchParams.get("q") ?? "").trim();
    const found = await deps.keys.search(q, Number(url.searchParams.get("page")) || 1, PAGE_SIZE);
    sendHtml(
      res,
      200,
      keysPage(d.context(req, s), found.data, {
        q,
        page: found.page,
        pages: found.pages,
        total: found.total,
        globalMode: deps.globalMode,
      }),
    );
  });
  admin.route("GET", "/keys/new", signedIn, (req, res, { caller: s }) =>
    sendHtml(res, 200, keyFormPage(d.context(req, s), undefined, [])),
  );
  admin.route("GET", "/keys/:id", signedIn, async (req, res, { caller: s, params }) => {
    const id = params["id"] ?? "";
    const key = deps.keys.get(id);
    sendHtml(res, 200, keyFormPage(d.context(req, s), key, await deps.sources(id)));
  });
  admin.route("GET", "/audit", signedIn, async (req, res, { caller: s, url }) => {
    const cursor = url.searchParams.get("cursor");
    const before = cursor !== null && /^[1-9][0-9]*$/.test(cursor) ? Number(cursor) : undefined;
    const page = await deps.audit.page(50, before);
    const nameOf = (id: string): string | undefined => {
      try {
        return deps.keys.get(id).name;
      } catch {
        return undefined; // deleted since
      }
    };
    sendHtml(res, 200, auditPage(d.context(req, s), page.data, page.next_cursor, nameOf));
  });
}

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
import { clientOf } from "../api.js";
import type { AuditLog } from "../audit.js";
import { checkCsrf, sameOrigin, tooManyAttempts, type Authenticator } from "../auth.js";
import { readJson } from "../body.js";
import type { Confirmations } from "../confirm.js";
import { ApiError } from "../errors.js";
import type { KeysService } from "../keys.js";
import type { AdminServer } from "../server.js";
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
    if (size > 8192) throw new ApiError(413, "payload_too_large", "form too large");
    chunks.push(c);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString("utf8"));
}

/** Registers the dashboard routes and assets. */
export function registerDashboard(admin: AdminServer, deps: DashboardDeps): void {
  const js = asset("app", "text/javascript", readFileSync(new URL("./client/app.js", import.meta.url)));
  const css = asset("app", "text/css", Buffer.from(STYLES));
  const files = new Map([js, css].map((a) => [a.url, a]));
  const assets: Assets = { js: js.url, css: css.url };

  const cookie = (value: string, maxAge?: number): string =>
    `${SESSION_COOKIE}=${value}; Path=/; HttpOnly; SameSite=Strict${deps.secureCookie ? "; Secure" : ""}${maxAge === undefined ? "" : `; Max-Age=${maxAge}`}`;
  const sessionOf = (req: IncomingMessage): Promise<Session | undefined> =>
    deps.sessions.get(readCookie(req.headers.cookie, SESSION_COOKIE));
  const context = (req: IncomingMessage, s: Session): PageContext => ({
    assets,
    operator: s.operator.name,
    csrf: s.csrf,
    clientIp: clientOf(req, deps.trust).text,
    totp: s.operator.totpSecret !== undefined,
  });
  /** The operator a token belongs to, when its code is also right (a right code is used up); undefined otherwise. */
  const verify = async (token: string, code: string): Promise<Operator | undefined> => {
    const operator = token === "" ? undefined : deps.auth.operatorByTokenHash(secretHash(token));
    const ok =
      operator !== undefined &&
      (operator.totpSecret === undefined ||
        (await deps.confirmations.consume(operator.name, operator.totpSecret, code)) === "ok");
    return ok ? operator : undefined;
  };
  /** Runs `page` for a signed-in operator; sends others to the sign-in page. */
  const signedIn =
    (
      page: (
        req: IncomingMessage,
        res: ServerResponse,
        s: Session,
        params: Readonly<Record<string, string>>,
        url: URL,
      ) => void | Promise<void>,
    ) =>
    async (
      req: IncomingMessage,
      res: ServerResponse,
      params: Readonly<Record<string, string>>,
      url: URL,
    ): Promise<void> => {
      const s = await sessionOf(req);
      if (s === undefined) {
        redirect(res, "/");
        return;
      }
      await page(req, res, s, params, url);
    };

  admin.route("/assets/:file", "GET", (_req, res, p) => {
    const a = files.get(`/assets/${p["file"] ?? ""}`);
    if (a === undefined) throw new ApiError(404, "not_found", "not found");
    res.writeHead(200, {
      "content-type": `${a.type}; charset=utf-8`,
      "content-length": a.body.length,
      "cache-control": "public, max-age=31536000, immutable",
      "x-content-type-options": "nosniff",
    });
    res.end(a.body);
  });

  admin.route("/favicon.ico", "GET", (_req, res) => {
    res.writeHead(204, { "cache-control": "public, max-age=86400" });
    res.end();
  });

  admin.route("/", "GET", async (req, res, _p, url) => {
    const s = await sessionOf(req);
    if (s === undefined) {
      sendHtml(res, 200, signInPage(assets));
      return;
    }
    const q = (url.searchParams.get("q") ?? "").trim();
    const needle = q.toLowerCase();
    const all = deps.keys
      .list(1_000_000)
      .data.filter((k) => needle === "" || [k.name, k.id, ...k.scopes].some((f) => f.toLowerCase().includes(needle)));
    const pages = Math.max(1, Math.ceil(all.length / PAGE_SIZE));
    const page = Math.min(pages, Math.max(1, Number(url.searchParams.get("page")) || 1));
    sendHtml(
      res,
      200,
      keysPage(context(req, s), all.slice((page - 1) * PAGE_SIZE, page * PAGE_SIZE), {
        q,
        page,
        pages,
        total: all.length,
        globalMode: deps.globalMode,
      }),
    );
  });

  admin.route("/session", "POST", async (req, res) => {
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
        return verify(form.get("token") ?? "", (form.get("code") ?? "").trim());
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
    redirect(res, "/", { "set-cookie": cookie(value) });
  });

  admin.route("/session/end", "POST", async (req, res) => {
    const value = readCookie(req.headers.cookie, SESSION_COOKIE);
    const s = await deps.sessions.get(value);
    if (s !== undefined) {
      const form = await readForm(req);
      checkCsrf(req, s, form.get("csrf") ?? "");
      await deps.sessions.end(value);
      deps.log.info({ event: "signout", operator: s.operator.name }, `operator ${s.operator.name} signed out`);
    }
    redirect(res, "/", { "set-cookie": cookie("", 0) });
  });

  admin.route("/session/confirm", "POST", async (req, res) => {
    const s = await sessionOf(req);
    if (s === undefined) throw new ApiError(401, "missing_credential", "session expired; sign in again");
    checkCsrf(req, s);
    const client = clientOf(req, deps.trust);
    const outcome = await deps.auth.attempts.attempt(
      client.text,
      async () => {
        const body = (await readJson(req)) as { token?: unknown; code?: unknown } | null;
        const token = typeof body?.token === "string" ? body.token : "";
        const code = typeof body?.code === "string" ? body.code.trim() : "";
        return (await verify(token, code))?.name === s.operator.name;
      },
      (ok) => ok,
    );
    if (outcome.limited) {
      res.shouldKeepAlive = false;
      throw tooManyAttempts(outcome.retryAfterS);
    }
    if (!outcome.result) throw new ApiError(403, "invalid_confirmation_code", "invalid token or code");
    await deps.sessions.confirm(s);
    res.writeHead(204, { "cache-control": "no-store" });
    res.end();
  });

  admin.route(
    "/keys/new",
    "GET",
    signedIn((req, res, s) => sendHtml(res, 200, keyFormPage(context(req, s), undefined, []))),
  );
  admin.route(
    "/keys/:id",
    "GET",
    signedIn(async (req, res, s, p) => {
      const id = p["id"] ?? "";
      const key = deps.keys.get(id);
      sendHtml(res, 200, keyFormPage(context(req, s), key, await deps.sources(id)));
    }),
  );
  admin.route(
    "/audit",
    "GET",
    signedIn(async (req, res, s, _p, url) => {
      const cursor = url.searchParams.get("cursor");
      const before = cursor !== null && /^[1-9][0-9]*$/.test(cursor) ? Number(cursor) : undefined;
      const page = await deps.audit.page(50, before);
      sendHtml(res, 200, auditPage(context(req, s), page.data, page.next_cursor));
    }),
  );
}

/**
 * Dashboard sessions: a random id in a cookie, kept server-side (by its
 * SHA-256) with idle and absolute expiry, a CSRF token, and the time the
 * operator last re-confirmed who they are (for allow-list changes).
 */
import { randomBytes } from "node:crypto";
import { LRUCache } from "lru-cache";
import type { Operator } from "../config/config.js";
import { secretHash } from "../policy/credential.js";

/** The session cookie's name. */
export const SESSION_COOKIE = "kf_session";

/** One signed-in operator. */
export interface Session {
  readonly operator: Operator;
  /** Sent back by the page in `X-CSRF-Token` (or a form field) on every change. */
  readonly csrf: string;
  readonly created: number;
  seen: number;
  /** When the operator last re-entered their token (and code), if ever. */
  confirmedAt: number | undefined;
}

/** Session lifetimes. */
export interface SessionOptions {
  readonly idleMs: number;
  readonly maxAgeMs: number;
  /** How long a re-confirmation allows allow-list changes. */
  readonly confirmWindowMs: number;
  readonly now?: () => number;
}

/** In-memory session store (a restart signs everyone out). */
export class SessionStore {
  private readonly sessions = new LRUCache<string, Session>({ max: 10_000 });
  private readonly now: () => number;

  constructor(readonly options: SessionOptions) {
    this.now = options.now ?? Date.now;
  }

  /** Starts a session; returns the cookie value (never stored as such). */
  create(operator: Operator): { cookie: string; session: Session } {
    const cookie = randomBytes(32).toString("base64url");
    const t = this.now();
    const session: Session = {
      operator,
      csrf: randomBytes(24).toString("base64url"),
      created: t,
      seen: t,
      confirmedAt: undefined,
    };
    this.sessions.set(secretHash(cookie), session);
    return { cookie, session };
  }

  /** The live session behind a cookie value, touched; undefined when unknown or expired. */
  get(cookie: string | undefined): Session | undefined {
    if (cookie === undefined || cookie === "") return undefined;
    const key = secretHash(cookie);
    const s = this.sessions.get(key);
    if (s === undefined) return undefined;
    const t = this.now();
    if (t - s.seen > this.options.idleMs || t - s.created > this.options.maxAgeMs) {
      this.sessions.delete(key);
      return undefined;
    }
    s.seen = t;
    return s;
  }

  /** Ends the session behind a cookie value. */
  end(cookie: string | undefined): void {
    if (cookie) this.sessions.delete(secretHash(cookie));
  }

  /** Records a successful re-confirmation. */
  confirm(session: Session): void {
    session.confirmedAt = this.now();
  }

  /** Whether the session re-confirmed within the confirmation window. */
  recentlyConfirmed(session: Session): boolean {
    return session.confirmedAt !== undefined && this.now() - session.confirmedAt <= this.options.confirmWindowMs;
  }
}

/** Reads one cookie from a Cookie header. */
export function readCookie(header: string | undefined, name: string): string | undefined {
  if (header === undefined) return undefined;
  for (const part of header.split(";")) {
    const eq = part.indexOf("=");
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return undefined;
}

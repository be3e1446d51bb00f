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
  /** The SHA-256 of its cookie: how the store names it. */
  readonly id: string;
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

/** Where dashboard sessions live (in this process, or shared by replicas). */
export interface SessionStore {
  /** Session lifetimes. */
  readonly options: SessionOptions;
  /** Starts a session; returns the cookie value (never stored as such). */
  create(operator: Operator): Promise<{ cookie: string; session: Session }>;
  /** The live session behind a cookie value, touched; undefined when unknown or expired. */
  get(cookie: string | undefined): Promise<Session | undefined>;
  /** Ends the session behind a cookie value. */
  end(cookie: string | undefined): Promise<void>;
  /** Records a successful re-confirmation. */
  confirm(session: Session): Promise<void>;
  /** Whether the session re-confirmed within the confirmation window. */
  recentlyConfirmed(session: Session): boolean;
}

/** In-memory session store (a restart signs everyone out). */
export class MemorySessionStore implements SessionStore {
  private readonly sessions = new LRUCache<string, Session>({ max: 10_000 });
  private readonly now: () => number;

  constructor(readonly options: SessionOptions) {
    this.now = options.now ?? Date.now;
  }

  create(operator: Operator): Promise<{ cookie: string; session: Session }> {
    const made = newSession(operator, this.now());
    this.sessions.set(made.session.id, made.session);
    return Promise.resolve(made);
  }

  get(cookie: string | undefined): Promise<Session | undefined> {
    if (cookie === undefined || cookie === "") return Promise.resolve(undefined);
    const key = secretHash(cookie);
    const s = this.sessions.get(key);
    if (s === undefined) return Promise.resolve(undefined);
    const t = this.now();
    if (sessionExpired(s, t, this.options)) {
      this.sessions.delete(key);
      return Promise.resolve(undefined);
    }
    s.seen = t;
    return Promise.resolve(s);
  }

  end(cookie: string | undefined): Promise<void> {
    if (cookie) this.sessions.delete(secretHash(cookie));
    return Promise.resolve();
  }

  confirm(session: Session): Promise<void> {
    session.confirmedAt = this.now();
    return Promise.resolve();
  }

  recentlyConfirmed(session: Session): boolean {
    return confirmedWithin(session, this.now(), this.options);
  }
}

/** A new session of `operator` at time `t`, and its cookie value (256 random bits; only its SHA-256 is kept). */
export function newSession(operator: Operator, t: number): { cookie: string; session: Session } {
  const cookie = randomBytes(32).toString("base64url");
  const session: Session = {
    id: secretHash(cookie),
    operator,
    csrf: randomBytes(24).toString("base64url"),
    created: t,
    seen: t,
    confirmedAt: undefined,
  };
  return { cookie, session };
}

/** Whether a session last seen at `seen` and created at `created` has expired at `t` (idle or too old). */
export function sessionExpired(s: { seen: number; created: number }, t: number, options: SessionOptions): boolean {
  return t - s.seen > options.idleMs || t - s.created > options.maxAgeMs;
}

/** Whether `session` re-confirmed within the confirmation window before `t`. */
export function confirmedWithin(session: Session, t: number, options: SessionOptions): boolean {
  return session.confirmedAt !== undefined && t - session.confirmedAt <= options.confirmWindowMs;
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

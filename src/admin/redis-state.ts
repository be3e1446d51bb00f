/**
 * The admin state replicas share through the Redis key store (SPEC §6):
 * confirmation-code state, the failed-attempt limit and dashboard sessions,
 * under the store's prefix and on its connection. Every check is one atomic
 * script; when Redis cannot be reached they throw StoreUnavailableError
 * (503 `store_unavailable`) rather than skip the limit or the one-use check.
 */
import { createHash, randomBytes } from "node:crypto";
import type { Operator } from "../config/config.js";
import { secretHash } from "../policy/credential.js";
import { StoreUnavailableError } from "../store/store.js";
import type { createClient } from "redis";
import type { AttemptLimit, AttemptLimitOptions, AttemptOutcome } from "./attempts.js";
import type { CodeState } from "./confirm.js";
import {
  confirmedWithin,
  newSession,
  sessionExpired,
  type Session,
  type SessionOptions,
  type SessionStore,
} from "./sessions.js";

/**
 * The connection and key prefix of the Redis key store (which implements
 * this), lent to the state shared beside it: `command` throws
 * StoreUnavailableError when Redis cannot be reached.
 */
export interface RedisConnection {
  readonly prefix: string;
  command<T>(command: (client: ReturnType<typeof createClient>) => Promise<T>): Promise<T>;
}

/**
 * KEYS: the operator's last-step key, the store's generation marker. ARGV:
 * step. Compare-and-set: 1 when `step` is later than the stored one; -1 when
 * the store's data is gone (the last used step may have gone with it).
 */
const CLAIM = `
if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
local last = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) <= last then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
return 1
`;

/** The store's generation marker, gone with the store's data (`redisKeys` in src/store/redis/store.ts, not imported: it loads the Redis client). */
function generationKey(store: RedisConnection): string {
  return `${store.prefix}generation`;
}

/**
 * The error for a one-use check or an attempt count whose record the store
 * may have lost with its data: fail closed, as when Redis is unreachable,
 * until the keys are restored under a new generation.
 */
function dataGone(): StoreUnavailableError {
  return new StoreUnavailableError("the key store holds no keyfence data (its generation marker is gone)");
}

/** The last accepted TOTP step per operator, at `<prefix>otp:<operator>`. */
export class RedisCodeState implements CodeState {
  constructor(private readonly store: RedisConnection) {}

  async claim(operator: string, step: number): Promise<boolean> {
    const key = `${this.store.prefix}otp:${operator}`;
    const reply = await this.store.command((c) =>
      c.eval(CLAIM, { keys: [key, generationKey(this.store)], arguments: [String(step)] }),
    );
    if (reply === -1) throw dataGone();
    return reply === 1;
  }
}

/**
 * KEYS: the client's attempt log (a sorted set, start time → random member),
 * the store's generation marker. ARGV: now in ms (empty: Redis's own clock,
 * one for every replica), window ms, max, member. Drops starts older than the
 * window; reserves one when fewer than max remain and returns {1}, else
 * {0, ms until the oldest leaves the window}; {-1} when the store's data is
 * gone (the log may have gone with it).
 */
const RESERVE = `
if redis.call('EXISTS', KEYS[2]) == 0 then return {-1, 0} end
local now = tonumber(ARGV[1])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local window, max = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= max then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, tonumber(oldest[2]) + window - now}
end
if ARGV[4] ~= '' then
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], window)
end
return {1, 0}
`;

/**
 * The failed-attempt limit shared by replicas, at `<prefix>attempts:<client>`:
 * the same sliding log as {@link MemoryAttemptLimit}, reserved atomically
 * in Redis before the verification runs and refunded (removed) after a
 * success or an error. Its window runs on Redis's clock (`options.now` only
 * where a test injects one): replicas whose clocks disagree by more than a
 * window would otherwise each clear the others' attempts as old.
 */
export class RedisAttemptLimit implements AttemptLimit {
  constructor(
    private readonly store: RedisConnection,
    private readonly options: AttemptLimitOptions,
  ) {}

  private key(client: string): string {
    return `${this.store.prefix}attempts:${client}`;
  }

  /** Reserves an attempt (`member` non-empty) or only checks; the seconds to wait, 0 when reserved or free. */
  private async reserve(client: string, member: string): Promise<number> {
    const now = this.options.now?.();
    const reply = await this.store.command((c) =>
      c.eval(RESERVE, {
        keys: [this.key(client), generationKey(this.store)],
        arguments: [
          now === undefined ? "" : String(now),
          String(this.options.windowMs),
          String(this.options.max),
          member,
        ],
      }),
    );
    if (!Array.isArray(reply)) throw new Error("internal: unexpected reply from the attempt script");
    const [ok, waitMs] = reply as unknown[];
    if (ok === -1) throw dataGone();
    if (ok === 1) return 0;
    return Math.max(1, Math.ceil(Number(waitMs) / 1000));
  }

  async attempt<T>(
    client: string,
    verify: () => T | Promise<T>,
    succeeded: (result: T) => boolean,
  ): Promise<AttemptOutcome<T>> {
    const member = randomBytes(12).toString("base64url");
    const wait = await this.reserve(client, member);
    if (wait > 0) return { limited: true, retryAfterS: wait };
    const refund = (): Promise<unknown> => this.store.command((c) => c.zRem(this.key(client), member));
    let result: T;
    try {
      result = await verify();
    } catch (err) {
      await refund().catch(() => undefined);
      throw err;
    }
    if (succeeded(result)) await refund();
    return { limited: false, result };
  }

  async retryAfter(client: string): Promise<number> {
    return this.reserve(client, "");
  }
}

/** KEYS: the session. ARGV: seen, ttl ms. Touches a session that still exists. */
const TOUCH = `
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'seen', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
`;

/** KEYS: the session. ARGV: confirmed at. Records a re-confirmation of a session that still exists. */
const CONFIRM = `
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'confirmed', ARGV[1])
return 1
`;

/** A digest of an operator's configured credentials, kept with each of its sessions. */
function credentialsOf(operator: Operator): string {
  return createHash("sha256")
    .update(`${operator.tokenSha256}\n${operator.totpSecret ?? ""}`)
    .digest("hex");
}

/**
 * Dashboard sessions shared by replicas: a hash per session at
 * `<prefix>session:<SHA-256 of the cookie>` (operator name, a digest of its
 * credentials, CSRF token, times), expiring after the idle time or at the
 * maximum age, whichever comes first. A session whose operator left the
 * configuration, or whose token or TOTP secret changed since, is gone.
 */
export class RedisSessionStore implements SessionStore {
  private readonly now: () => number;
  /** Each configured operator by name, with the digest of its credentials (computed once, not per request). */
  private readonly operators: ReadonlyMap<string, { operator: Operator; credentials: string }>;

  constructor(
    private readonly store: RedisConnection,
    operators: readonly Operator[],
    readonly options: SessionOptions,
  ) {
    this.now = options.now ?? Date.now;
    this.operators = new Map(operators.map((o) => [o.name, { operator: o, credentials: credentialsOf(o) }]));
  }

  private key(id: string): string {
    return `${this.store.prefix}session:${id}`;
  }

  /** How long the session may live from `t` on. */
  private ttl(created: number, t: number): number {
    return Math.max(1, Math.min(this.options.idleMs, created + this.options.maxAgeMs - t));
  }

  async create(operator: Operator): Promise<{ cookie: string; session: Session }> {
    const t = this.now();
    const { cookie, session } = newSession(operator, t);
    const key = this.key(session.id);
    await this.store.command((c) =>
      c
        .multi()
        .hSet(key, {
          operator: operator.name,
          credentials: credentialsOf(operator),
          csrf: session.csrf,
          created: String(t),
          seen: String(t),
        })
        .pExpire(key, this.ttl(t, t))
        .exec(),
    );
    return { cookie, session };
  }

  async get(cookie: string | undefined): Promise<Session | undefined> {
    if (cookie === undefined || cookie === "") return undefined;
    const id = secretHash(cookie);
    const key = this.key(id);
    const h = await this.store.command((c) => c.hGetAll(key));
    // A session ends with the credentials it was opened with: a token or TOTP secret changed since (a rotation
    // after a leak, on any replica's restart) signs it out, as the restart of a process holding sessions would.
    const named = this.operators.get(h["operator"] ?? "");
    const operator = named !== undefined && h["credentials"] === named.credentials ? named.operator : undefined;
    if (named !== undefined && operator === undefined) {
      await this.store.command((c) => c.del(key));
      return undefined;
    }
    const created = Number(h["created"]);
    const seen = Number(h["seen"]);
    const csrf = h["csrf"];
    const t = this.now();
    if (operator === undefined || csrf === undefined || !Number.isFinite(created) || !Number.isFinite(seen)) {
      return undefined;
    }
    if (sessionExpired({ seen, created }, t, this.options)) {
      await this.store.command((c) => c.del(key));
      return undefined;
    }
    const touched = await this.store.command((c) =>
      c.eval(TOUCH, { keys: [key], arguments: [String(t), String(this.ttl(created, t))] }),
    );
    if (touched !== 1) return undefined;
    const confirmed = h["confirmed"] === undefined ? undefined : Number(h["confirmed"]);
    return {
      id,
      operator,
      csrf,
      created,
      seen: t,
      confirmedAt: confirmed !== undefined && Number.isFinite(confirmed) ? confirmed : undefined,
    };
  }

  async end(cookie: string | undefined): Promise<void> {
    if (!cookie) return;
    const key = this.key(secretHash(cookie));
    await this.store.command((c) => c.del(key));
  }

  async confirm(session: Session): Promise<void> {
    const t = this.now();
    await this.store.command((c) => c.eval(CONFIRM, { keys: [this.key(session.id)], arguments: [String(t)] }));
    session.confirmedAt = t;
  }

  recentlyConfirmed(session: Session): boolean {
    return confirmedWithin(session, this.now(), this.options);
  }
}

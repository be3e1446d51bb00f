/**
 * The Redis-backed admin state classes against a real redis-server, with a
 * controllable clock: the attempt limit behaves exactly as the in-process
 * one (fast-check, same operations on both), code claims as a naive "last
 * step per operator" reference, sessions expire when idle or too old; two
 * instances on one prefix (two replicas) share everything, concurrent
 * reservations never exceed the limit, and a closed store fails closed.
 */
import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import fc from "fast-check";
import { MemoryAttemptLimit } from "../../src/admin/attempts.js";
import { RedisAttemptLimit, RedisCodeState, RedisSessionStore } from "../../src/admin/redis-state.js";
import type { Operator } from "../../src/config/config.js";
import { RedisKeyStore } from "../../src/store/redis/store.js";
import { StoreUnavailableError } from "../../src/store/store.js";
import { needBinary } from "../helpers/binary.js";
import { redisFixture } from "../helpers/redis.js";

const redisBin = needBinary("redis-server", "redis-server");
const OPS: Operator = { name: "ops", tokenSha256: "0".repeat(64), totpSecret: undefined };
const OTHER: Operator = { name: "other", tokenSha256: "1".repeat(64), totpSecret: undefined };

describe("Redis admin state", { skip: redisBin.skip }, () => {
  const stores: RedisKeyStore[] = [];
  /** Two connected stores ("replicas") on a fresh prefix. */
  const replicas = async (): Promise<[RedisKeyStore, RedisKeyStore]> => {
    const prefix = redis.newPrefix();
    await redis.seed(prefix);
    const open = async (): Promise<RedisKeyStore> => {
      const s = new RedisKeyStore({ url: redis.url, displayUrl: redis.url, prefix, maxEntries: 1000 });
      stores.push(s);
      await s.load();
      return s;
    };
    return [await open(), await open()];
  };

  after(async () => {
    await Promise.all(stores.map((s) => s.close()));
  });
  const redis = redisFixture(redisBin.path, "as");

  test("attempt limit: the same outcomes as the in-process limit for any sequence (fast-check)", async () => {
    const [a, b] = await replicas();
    let run = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.record({
            // Steps that often add up to the window exactly (its boundary), and any others.
            advance: fc.oneof(
              fc.constantFrom(0, 1, 15_000, 20_000, 30_000, 59_999, 60_000),
              fc.integer({ min: 0, max: 20_000 }),
            ),
            client: fc.constantFrom("10.0.0.1", "2001:db8::1"),
            on: fc.boolean(),
            ok: fc.boolean(),
            check: fc.boolean(),
          }),
          { maxLength: 40 },
        ),
        async (ops) => {
          let t = 1_000_000;
          const now = (): number => t;
          const settings = { max: 2, windowMs: 60_000, now };
          const tag = `r${++run}/`;
          const ref = new MemoryAttemptLimit(settings);
          const onA = new RedisAttemptLimit(a, settings);
          const onB = new RedisAttemptLimit(b, settings);
          for (const op of ops) {
            t += op.advance;
            const limit = op.on ? onA : onB;
            if (op.check) {
              assert.equal(await limit.retryAfter(tag + op.client), await ref.retryAfter(op.client));
              continue;
            }
            const expected = await ref.attempt(op.client, () => op.ok, Boolean);
            const got = await limit.attempt(tag + op.client, () => op.ok, Boolean);
            assert.deepEqual(got, expected);
          }
        },
      ),
      { numRuns: 100 },
    );
  });

  test("attempt limit: window edges (table)", async () => {
    const [a] = await replicas();
    let t = 0;
    const limit = new RedisAttemptLimit(a, { max: 2, windowMs: 60_000, now: () => t });
    const fail = (): Promise<unknown> => limit.attempt("c", () => false, Boolean);
    // [clock, outcome of a failing attempt then]
    const table: Array<[number, unknown]> = [
      [1_000, { limited: false, result: false }],
      [2_000, { limited: false, result: false }],
      [2_001, { limited: true, retryAfterS: 59 }],
      [60_999, { limited: true, retryAfterS: 1 }],
      [61_000, { limited: false, result: false }], // the first start left the window exactly now
      [61_001, { limited: true, retryAfterS: 1 }],
      [62_000, { limited: false, result: false }],
    ];
    for (const [at, expected] of table) {
      t = at;
      assert.deepEqual(await fail(), expected, `at ${at}`);
    }
  });

  test("attempt limit: on Redis's clock, a replica whose clock is hours off still counts the others' attempts", async () => {
    const [a, b] = await replicas();
    const settings = { max: 2, windowMs: 60_000 };
    const onA = new RedisAttemptLimit(a, settings);
    for (let i = 0; i < 2; i++) {
      assert.deepEqual(await onA.attempt("skewed", () => false, Boolean), { limited: false, result: false });
    }
    const realNow = Date.now;
    for (const skew of [2 * 3_600_000, -2 * 3_600_000, 61_000]) {
      // This process's clock as a replica on a badly set machine reads it.
      Date.now = () => realNow() + skew;
      try {
        const onB = new RedisAttemptLimit(b, settings);
        const got = await onB.attempt("skewed", () => false, Boolean);
        assert.equal(got.limited, true, `clock ${skew} ms off`);
        const wait = await onB.retryAfter("skewed");
        assert.ok(wait >= 1 && wait <= 60, `clock ${skew} ms off: retry after ${wait} s`);
      } finally {
        Date.now = realNow;
      }
    }
  });

  test("attempt limit: of 20 concurrent failing attempts on two replicas, exactly max run", async () => {
    const [a, b] = await replicas();
    const settings = { max: 10, windowMs: 60_000 };
    const limits = [new RedisAttemptLimit(a, settings), new RedisAttemptLimit(b, settings)];
    let ran = 0;
    const outcomes = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        limits[i % 2]!.attempt(
          "192.0.2.7",
          async () => {
            ran++;
            await new Promise((r) => setImmediate(r));
            return false;
          },
          Boolean,
        ),
      ),
    );
    assert.equal(ran, 10);
    assert.equal(outcomes.filter((o) => o.limited).length, 10);
    assert.ok((await limits[1]!.retryAfter("192.0.2.7")) > 0);
    assert.equal(await limits[1]!.retryAfter("192.0.2.8"), 0);
  });

  test("attempt limit: a verification that throws is refunded", async () => {
    const [a] = await replicas();
    const limit = new RedisAttemptLimit(a, { max: 1, windowMs: 60_000 });
    await assert.rejects(
      limit.attempt(
        "c",
        () => {
          throw new Error("boom");
        },
        Boolean,
      ),
      /boom/,
    );
    assert.deepEqual(await limit.attempt("c", () => false, Boolean), { limited: false, result: false });
    assert.equal((await limit.attempt("c", () => true, Boolean)).limited, true);
  });

  test("code state: claims match a naive last-step reference, shared by replicas (fast-check)", async () => {
    let run = 0;
    const [a, b] = await replicas();
    const states = [new RedisCodeState(a), new RedisCodeState(b)];
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.tuple(fc.nat(1), fc.constantFrom("ops", "other", "with:colon"), fc.integer({ min: 0, max: 50 })), {
          maxLength: 30,
        }),
        async (claims) => {
          const tag = `r${++run}/`;
          const last = new Map<string, number>();
          for (const [on, operator, step] of claims) {
            const expected = step > (last.get(operator) ?? -1);
            if (expected) last.set(operator, step);
            assert.equal(await states[on]!.claim(tag + operator, step), expected);
          }
        },
      ),
      { numRuns: 50 },
    );
  });

  test("code state: of concurrent claims of one step on two replicas, exactly one wins", async () => {
    const [a, b] = await replicas();
    const states = [new RedisCodeState(a), new RedisCodeState(b)];
    for (let step = 100; step < 110; step++) {
      const wins = await Promise.all(Array.from({ length: 8 }, (_, i) => states[i % 2]!.claim("ops", step)));
      assert.equal(wins.filter(Boolean).length, 1, `step ${step}`);
    }
  });

  test("sessions: shared by replicas, idle and absolute expiry, confirmation, sign-out", async () => {
    const [a, b] = await replicas();
    let t = 5_000_000;
    const options = { idleMs: 1_000, maxAgeMs: 3_000, confirmWindowMs: 500, now: () => t };
    const onA = new RedisSessionStore(a, [OPS, OTHER], options);
    const onB = new RedisSessionStore(b, [OPS, OTHER], options);
    const { cookie, session } = await onA.create(OPS);
    const seen = await onB.get(cookie);
    assert.deepEqual(seen, session);
    assert.equal(await onB.get("not-a-cookie"), undefined);
    assert.equal(await onB.get(""), undefined);
    assert.equal(await onB.get(undefined), undefined);
    // Touched on every use: alive while used more often than the idle time...
    for (let i = 0; i < 2; i++) {
      t += 900;
      assert.ok(await (i % 2 === 0 ? onA : onB).get(cookie));
    }
    // ...confirmation recorded on one replica is seen on the other...
    await onA.confirm(session);
    const confirmed = await onB.get(cookie);
    assert.ok(confirmed && onB.recentlyConfirmed(confirmed));
    t += 600;
    assert.equal(onB.recentlyConfirmed((await onB.get(cookie))!), false, "the confirmation window passed");
    // ...and gone at the maximum age however busy.
    t += 900;
    assert.equal(await onA.get(cookie), undefined, "older than maxAgeMs");
    // Idle expiry, and the Redis record's own TTL never exceeds the idle time.
    const second = await onB.create(OTHER);
    const ttl = await a.command((c) => c.pTTL(`${a.prefix}session:${second.session.id}`));
    assert.ok(ttl > 0 && ttl <= 1_000, `PTTL ${ttl}`);
    t += 1_001;
    assert.equal(await onA.get(second.cookie), undefined, "idle longer than idleMs");
    // Sign-out on one replica ends it on the other.
    const third = await onA.create(OPS);
    await onB.end(third.cookie);
    assert.equal(await onA.get(third.cookie), undefined);
    // A session whose operator left the configuration is gone.
    const fourth = await onA.create(OTHER);
    const without = new RedisSessionStore(b, [OPS], options);
    assert.equal(await without.get(fourth.cookie), undefined);
  });

  test("sessions end when their operator's token or TOTP secret changes (a replica restarted with rotated credentials)", async () => {
    const [a, b] = await replicas();
    const options = { idleMs: 60_000, maxAgeMs: 600_000, confirmWindowMs: 60_000, now: () => 1_000_000 };
    const withTotp: Operator = { ...OPS, totpSecret: "JBSWY3DPEHPK3PXP" };
    const rotations: Array<[string, Operator, Operator]> = [
      ["a new token", OPS, { ...OPS, tokenSha256: "2".repeat(64) }],
      ["a TOTP secret added", OPS, withTotp],
      ["a new TOTP secret", withTotp, { ...withTotp, totpSecret: "KRSXG5CTMVRXEZLUKRSXG5CTMVRXEZLU" }],
      ["the TOTP secret removed", withTotp, OPS],
    ];
    for (const [what, before, after] of rotations) {
      const opened = await new RedisSessionStore(a, [before], options).create(before);
      assert.ok(await new RedisSessionStore(b, [before], options).get(opened.cookie), `${what}: same credentials`);
      const rotated = new RedisSessionStore(b, [after], options);
      assert.equal(await rotated.get(opened.cookie), undefined, `${what}: signed out`);
      assert.equal(await new RedisSessionStore(a, [before], options).get(opened.cookie), undefined, `${what}: gone`);
    }
  });

  test("a store that cannot reach Redis fails closed", async () => {
    const [a] = await replicas();
    await a.close();
    await assert.rejects(new RedisCodeState(a).claim("ops", 1), StoreUnavailableError);
    let ran = false;
    await assert.rejects(
      new RedisAttemptLimit(a, { max: 10, windowMs: 60_000 }).attempt(
        "c",
        () => (ran = true),
        () => true,
      ),
      StoreUnavailableError,
    );
    assert.equal(ran, false, "no verification without the limit");
    const sessions = new RedisSessionStore(a, [OPS], { idleMs: 1, maxAgeMs: 1, confirmWindowMs: 1 });
    await assert.rejects(sessions.create(OPS), StoreUnavailableError);
    await assert.rejects(sessions.get("x"), StoreUnavailableError);
  });
});

/**
 * SPEC §5/§6 with a real redis-server: replicas sharing a Redis store share
 * the one-use confirmation codes, the failed-attempt limit and dashboard
 * sessions; when Redis cannot be reached these fail closed (503
 * `store_unavailable`), never skipping the limit or the one-use check.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { Secret } from "otpauth";
import { needBinary } from "../helpers/binary.js";
import { bearer, send, type Reply } from "../helpers/http.js";
import { redisFixture, startRelay, type Relay } from "../helpers/redis.js";
import { eventually, startTestSidecar, type TestSidecar } from "../helpers/sidecar.js";
import { code, testClock } from "../helpers/totp.js";
import { startUpstream, type Upstream } from "../helpers/upstream.js";

const redisBin = needBinary("redis-server", "redis-server");
const sha = (s: string): string => createHash("sha256").update(s).digest("hex");
const OTP_SECRET = new Secret({ size: 20 }).base32;
const OPERATORS = [
  { name: "ops", token_sha256: sha("tok_ops") },
  { name: "otp", token_sha256: sha("tok_otp"), totp_secret: OTP_SECRET },
];

/** A restricted key's creation, which needs a code from the TOTP operator. */
function createRestricted(kf: TestSidecar, otp: string): Promise<Reply> {
  return send(`${kf.adminUrl}/v1/api-keys`, {
    method: "POST",
    headers: [bearer("tok_otp"), ["Content-Type", "application/json"], ["X-Keyfence-OTP", otp]],
    body: JSON.stringify({ name: "pinned", ip_allow_list: ["192.0.2.1"] }),
  });
}

/** Signs in to `kf`'s dashboard as `ops`; returns the cookie header value. */
async function signIn(kf: TestSidecar): Promise<string> {
  const r = await send(`${kf.adminUrl}/session`, {
    method: "POST",
    headers: [
      ["Content-Type", "application/x-www-form-urlencoded"],
      ["Origin", `http://${new URL(kf.adminUrl).host}`],
    ],
    body: "token=tok_ops",
  });
  assert.equal(r.status, 303, r.body);
  const cookie = (r.headers["set-cookie"]?.[0] ?? "").split(";")[0] ?? "";
  assert.match(cookie, /^kf_session=./);
  return cookie;
}

function withCookie(kf: TestSidecar, cookie: string): Promise<Reply> {
  return send(`${kf.adminUrl}/v1/audit?limit=1`, { headers: [["Cookie", cookie]] });
}

describe("admin state shared through Redis", { skip: redisBin.skip }, () => {
  // The replicas' clock: codes are computed for it, and it moves only when a test moves it.
  const clock = testClock();
  let up: Upstream;
  const started: TestSidecar[] = [];
  const start = async (url: string, prefix: string): Promise<TestSidecar> => {
    const kf = await startTestSidecar({
      upstream: up.url,
      keys: "keys: []\n",
      keysConfig: { store: "redis", redis: { url, prefix } },
      admin: { operators: OPERATORS },
      now: clock.now,
    });
    started.push(kf);
    return kf;
  };
  /** Two replicas on a fresh prefix. */
  const pair = async (): Promise<[TestSidecar, TestSidecar]> => {
    const prefix = redis.newPrefix();
    await redis.seed(prefix);
    return [await start(redis.url, prefix), await start(redis.url, prefix)];
  };

  before(async () => {
    up = await startUpstream();
  });
  after(async () => {
    await Promise.all(started.map((kf) => kf.stop()));
    await up.close();
  });
  const redis = redisFixture(redisBin.path, "st");

  test("a code used on one replica is refused on the other; a later code still works", async () => {
    const [a, b] = await pair();
    const now = code(OTP_SECRET, clock.now());
    assert.equal((await createRestricted(a, now)).status, 201);
    for (const kf of [b, a]) {
      const again = await createRestricted(kf, now);
      assert.equal(again.status, 403, again.body);
      assert.equal(again.headers["x-keyfence-reason"], "invalid_confirmation_code");
    }
    clock.advance(30_000);
    assert.equal((await createRestricted(b, code(OTP_SECRET, clock.now()))).status, 201, "the next step's code");
    // An earlier step than the last used one is refused too (the last used step only grows), though
    // it is still within the window.
    assert.equal((await createRestricted(a, now)).status, 403);
  });

  test("one code sent to both replicas at once is accepted exactly once", async () => {
    const [a, b] = await pair();
    const c = code(OTP_SECRET, clock.now());
    const replies = await Promise.all([a, b, a, b].map((kf) => createRestricted(kf, c)));
    assert.deepEqual(replies.map((r) => r.status).sort(), [201, 403, 403, 403]);
  });

  test("the store's data gone: a used code is not taken again, and token checks fail closed", async () => {
    // The last used step and the attempt log go with the data: until the keys are restored under a new
    // generation, a code already used could be used again and the limit would start from zero.
    const [a, b] = await pair();
    const c = code(OTP_SECRET, clock.now());
    const signInOtp = (kf: TestSidecar): Promise<Reply> =>
      send(`${kf.adminUrl}/session`, {
        method: "POST",
        headers: [
          ["Content-Type", "application/x-www-form-urlencoded"],
          ["Origin", `http://${new URL(kf.adminUrl).host}`],
        ],
        body: `token=tok_otp&code=${c}`,
      });
    assert.equal((await signInOtp(a)).status, 303);
    await redis.withClient((cl) => cl.flushAll());
    for (const kf of [b, a]) {
      assert.equal((await signInOtp(kf)).status, 503, "the used code");
      const r = await send(`${kf.adminUrl}/v1/api-keys`, { headers: [bearer("tok_ops")] });
      assert.equal(r.status, 503, r.body);
      assert.equal(r.headers["x-keyfence-reason"], "store_unavailable");
    }
  });

  test("failed attempts count across replicas: the 11th gets 429, successes are refunded", async () => {
    const [a, b] = await pair();
    const ok = await send(`${a.adminUrl}/v1/audit?limit=1`, { headers: [bearer("tok_ops")] });
    assert.equal(ok.status, 200, "a success is not counted");
    for (let i = 0; i < 10; i++) {
      const r = await send(`${(i % 2 === 0 ? a : b).adminUrl}/v1/audit`, { headers: [bearer(`wrong${i}`)] });
      assert.equal(r.status, 401, `attempt ${i + 1}`);
    }
    for (const kf of [a, b]) {
      const r = await send(`${kf.adminUrl}/v1/audit`, { headers: [bearer("tok_ops")] });
      assert.equal(r.status, 429, "even the right token waits");
      assert.equal(r.headers["x-keyfence-reason"], "too_many_attempts");
      const wait = Number(r.headers["retry-after"]);
      assert.ok(wait >= 1 && wait <= 60, `Retry-After ${wait}`);
    }
    const other = await send(`${b.adminUrl}/v1/audit`, { headers: [bearer("wrong")], localAddress: "127.0.0.2" });
    assert.equal(other.status, 401, "another client IP has its own count");
  });

  test("a session made on one replica works on the other, and signing out ends it on both", async () => {
    const [a, b] = await pair();
    const cookie = await signIn(a);
    assert.equal((await withCookie(b, cookie)).status, 200);
    assert.equal((await withCookie(a, cookie)).status, 200);
    assert.equal((await withCookie(b, "kf_session=forged")).status, 401);
    const page = await send(`${b.adminUrl}/`, { headers: [["Cookie", cookie]] });
    const csrf = /name="csrf" value="([^"]+)"/.exec(page.body)?.[1] ?? "";
    assert.ok(csrf !== "", "replica b renders the session's page with its CSRF token");
    const out = await send(`${b.adminUrl}/session/end`, {
      method: "POST",
      headers: [
        ["Cookie", cookie],
        ["Content-Type", "application/x-www-form-urlencoded"],
        ["Origin", `http://${new URL(b.adminUrl).host}`],
      ],
      body: `csrf=${encodeURIComponent(csrf)}`,
    });
    assert.ok(out.status < 400, out.body);
    assert.equal((await withCookie(a, cookie)).status, 401);
  });

  test("Redis unreachable: sign-ins, sessions and codes answer 503 store_unavailable", async () => {
    const prefix = redis.newPrefix();
    await redis.seed(prefix);
    const relay: Relay = await startRelay(redis.port);
    try {
      const kf = await start(relay.url, prefix);
      const cookie = await signIn(kf);
      relay.cut();
      await eventually(async () => (await send(`${kf.adminUrl}/readyz`)).status === 503, 3000, "readyz 503");
      const replies = [
        await send(`${kf.adminUrl}/v1/audit`, { headers: [bearer("wrong")] }),
        await send(`${kf.adminUrl}/v1/audit`, { headers: [bearer("tok_ops")] }),
        await withCookie(kf, cookie),
        await createRestricted(kf, code(OTP_SECRET, clock.now())),
      ];
      for (const r of replies) {
        assert.equal(r.status, 503, r.body);
        assert.equal(r.headers["x-keyfence-reason"], "store_unavailable");
      }
      relay.restore();
      await eventually(async () => (await withCookie(kf, cookie)).status === 200, 5000, "the session is back");
    } finally {
      await relay.close();
    }
  });
});

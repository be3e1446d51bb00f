import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { MemorySessionStore, readCookie } from "../../src/admin/sessions.js";

describe("dashboard sessions", () => {
  const operator = { name: "ops", tokenSha256: "a".repeat(64), totpSecret: undefined };

  test("idle and absolute expiry, sign-out, confirmation window", async () => {
    let now = 1_000_000;
    const store = new MemorySessionStore({ idleMs: 1000, maxAgeMs: 5000, confirmWindowMs: 300, now: () => now });
    const { cookie, session } = await store.create(operator);
    assert.equal(await store.get(cookie), session);
    assert.equal(await store.get("not-a-session"), undefined);
    assert.equal(store.recentlyConfirmed(session), false, "signing in is not a confirmation");
    await store.confirm(session);
    now += 299;
    assert.equal(store.recentlyConfirmed(session), true);
    now += 2;
    assert.equal(store.recentlyConfirmed(session), false);
    assert.ok(await store.get(cookie));
    // Activity keeps it alive until the absolute limit (5 s after sign-in).
    for (let i = 0; i < 5; i++) {
      now += 900;
      assert.ok(await store.get(cookie), `alive at ${i}`);
    }
    now += 900;
    assert.equal(await store.get(cookie), undefined, "absolute expiry, though not idle");
    const idle = (await store.create(operator)).cookie;
    now += 1001;
    assert.equal(await store.get(idle), undefined, "idle expiry");
    const ended = (await store.create(operator)).cookie;
    await store.end(ended);
    assert.equal(await store.get(ended), undefined, "sign-out");
  });

  test("the store keeps only a hash of the cookie; cookies parse strictly by name", async () => {
    const store = new MemorySessionStore({ idleMs: 1000, maxAgeMs: 1000, confirmWindowMs: 1000 });
    const { cookie, session } = await store.create(operator);
    assert.match(cookie, /^[A-Za-z0-9_-]{43}$/);
    assert.match(session.id, /^[0-9a-f]{64}$/);
    assert.ok(!session.id.includes(cookie));
    assert.equal(readCookie(`a=1; kf_session=${cookie}; b=2`, "kf_session"), cookie);
    assert.equal(readCookie("xkf_session=1", "kf_session"), undefined);
    assert.equal(readCookie(undefined, "kf_session"), undefined);
  });
});

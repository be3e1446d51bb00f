/**
 * Wrong confirmation codes are limited per operator as well as per client
 * IP: a holder of an operator's token guessing codes from many addresses
 * gets 10 guesses a minute in all, after which even the right code is
 * refused unverified (and a log line says why).
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { test } from "node:test";
import { bearer, send, type Reply } from "../helpers/http.js";
import { sidecarFixture, startTestSidecar } from "../helpers/sidecar.js";
import { code, testClock, wrongCode } from "../helpers/totp.js";

const SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
const sha = (s: string): string => createHash("sha256").update(s).digest("hex");
const clock = testClock();

const fx = sidecarFixture((up) =>
  startTestSidecar({
    upstream: up.url,
    keys: [],
    admin: {
      operators: [
        { name: "ops", token_sha256: sha("tok_ops"), totp_secret: SECRET },
        { name: "other", token_sha256: sha("tok_other"), totp_secret: SECRET },
      ],
    },
    now: clock.now,
  }),
);

/** A confirmed create (its list is not empty) by `token` with `otp`, from the loopback address `from`. */
function create(token: string, otp: string, from: string): Promise<Reply> {
  return send(`${fx.kf.adminUrl}/v1/api-keys`, {
    method: "POST",
    headers: [bearer(token), ["Content-Type", "application/json"], ["X-Keyfence-OTP", otp]],
    body: JSON.stringify({ name: "confirmed", ip_allow_list: ["10.0.0.1"] }),
    localAddress: from,
  });
}

test("ten wrong codes from ten addresses use up the operator's minute; the right code is then refused too", async () => {
  const wrong = wrongCode(SECRET, clock.now());
  for (let i = 0; i < 10; i++) {
    const r = await create("tok_ops", wrong, `127.0.0.${i + 2}`);
    assert.equal(r.status, 403, r.body);
    assert.equal(r.body, '{"message":"invalid confirmation code"}');
  }
  const right = await create("tok_ops", code(SECRET, clock.now()), "127.0.0.20");
  assert.equal(right.status, 403, right.body);
  assert.equal(right.body, '{"message":"invalid confirmation code"}');
  assert.ok(
    fx.kf.logs.some((l) => l["event"] === "code_attempts_exhausted" && l["operator"] === "ops"),
    "a log line says why",
  );
  // Another operator's codes are not affected (the same code is theirs too: one secret).
  assert.equal((await create("tok_other", code(SECRET, clock.now()), "127.0.0.21")).status, 201);
});

test("a flood of failures from 10,050 new addresses does not reset the operator's count", async () => {
  clock.advance(60_000); // a fresh step for codes; the limits run on the real clock, so "ops" is still limited
  const wrong = wrongCode(SECRET, clock.now());
  assert.equal((await create("tok_ops", wrong, "127.0.1.1")).status, 403);
  // Unknown tokens, each from its own address: the per-IP limit keeps 10,000 clients and forgets the oldest.
  const addresses = Array.from({ length: 10_050 }, (_, i) => `127.2.${Math.floor(i / 250)}.${(i % 250) + 1}`);
  for (let i = 0; i < addresses.length; i += 200) {
    await Promise.all(
      addresses.slice(i, i + 200).map(async (from) => {
        const r = await send(`${fx.kf.adminUrl}/v1/api-keys`, { headers: [bearer("not-a-token")], localAddress: from });
        assert.equal(r.status, 401);
      }),
    );
  }
  const right = await create("tok_ops", code(SECRET, clock.now()), "127.0.1.2");
  assert.equal(right.status, 403, `still limited: ${right.body}`);
});

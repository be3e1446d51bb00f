/**
 * SPEC §5 failed-attempt limit under concurrency (counted when an attempt
 * starts), one code one use (also right after a restart), small hostile
 * inputs (deep JSON, `Origin: null`), over real sockets.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { request } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import { MemoryAttemptLimit } from "../../src/admin/attempts.js";
import { FileCodeState } from "../../src/admin/confirm.js";
import { bearer, send } from "../helpers/http.js";
import { sidecarFixture, startTestSidecar, type TestSidecar } from "../helpers/sidecar.js";
import { code, testClock, wrongCode } from "../helpers/totp.js";
import { startUpstream } from "../helpers/upstream.js";
import { sideFiles } from "../../src/cli/sidecar.js";

const sha = (s: string): string => createHash("sha256").update(s).digest("hex");
const SECRET = "JBSWY3DPEHPK3PXPJBSWY3DP";
const OTHER_SECRET = "KRSXG5CTMVRXEZLUKRSXG5CT";
const OPERATORS = [
  { name: "ops", token_sha256: sha("tok_ops") },
  { name: "twofa", token_sha256: sha("tok_2fa"), totp_secret: SECRET },
  { name: "twofb", token_sha256: sha("tok_2fb"), totp_secret: OTHER_SECRET },
];
/** The last code step `operator` used, from the code state file beside the keys file (undefined: none). */
function usedStep(kf: TestSidecar, operator: string): number | undefined {
  try {
    const state = JSON.parse(readFileSync(sideFiles(kf.keysFile).otpState, "utf8")) as {
      last_step?: Record<string, number>;
    };
    return state.last_step?.[operator];
  } catch (err) {
    // No file yet: no code used. Anything else (a wrong path would read as "unused" forever) fails the test.
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw err;
  }
}

/** The sidecars' clock: codes are computed for it, and it stands still. */
const clock = testClock();

interface Pending {
  /** Sends the body (the headers went at once). */
  sendBody(): void;
  readonly reply: Promise<{ status: number; retryAfter: string | undefined; location: string | undefined }>;
}

/** Starts a request whose headers go now and whose body goes when `sendBody` is called. */
function headersFirst(
  url: string,
  method: string,
  headers: Record<string, string>,
  body: string,
  localAddress: string,
): Pending {
  const u = new URL(url);
  const req = request({
    host: u.hostname,
    port: u.port,
    path: u.pathname,
    method,
    agent: false,
    localAddress,
    headers: { ...headers, "content-length": String(Buffer.byteLength(body)) },
  });
  req.on("error", () => undefined); // a 429 may close the connection before the body goes
  req.flushHeaders();
  const reply = new Promise<{ status: number; retryAfter: string | undefined; location: string | undefined }>(
    (resolve, reject) => {
      req.on("response", (res) => {
        res.resume();
        res.on("end", () =>
          resolve({
            status: res.statusCode ?? 0,
            retryAfter: res.headers["retry-after"],
            location: res.headers.location,
          }),
        );
      });
      req.setTimeout(20_000, () => reject(new Error("no answer within 20 s")));
    },
  );
  return {
    sendBody: () => {
      if (!req.destroyed) req.end(body);
    },
    reply,
  };
}

/** Resolves once `n` of `replies` have settled, or after `ms` (so a test without the fix fails instead of hanging). */
function settledCount(replies: ReadonlyArray<Promise<unknown>>, n: number, ms: number): Promise<void> {
  return new Promise((resolve) => {
    let done = 0;
    const timer = setTimeout(resolve, ms);
    for (const r of replies) {
      void r.finally(() => {
        if (++done >= n) {
          clearTimeout(timer);
          resolve();
        }
      });
    }
  });
}

function signInForm(kf: TestSidecar, token: string, c = ""): { headers: Record<string, string>; body: string } {
  return {
    headers: {
      "content-type": "application/x-www-form-urlencoded",
      origin: kf.adminUrl,
    },
    body: new URLSearchParams({ token, code: c }).toString(),
  };
}

describe("attempt limit (unit)", () => {
  test("counted when it starts, refunded on success, sliding window with Retry-After", async () => {
    let now = 0;
    const limit = new MemoryAttemptLimit({ max: 3, windowMs: 60_000, now: () => now });
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let verified = 0;
    const slow = (): Promise<boolean> => {
      verified++;
      return gate.then(() => false);
    };
    const first = [1, 2, 3].map(() => limit.attempt("a", slow, (ok) => ok));
    const fourth = await limit.attempt("a", slow, (ok) => ok);
    assert.deepEqual(fourth, { limited: true, retryAfterS: 60 }, "the 4th concurrent attempt waits, unverified");
    assert.equal(verified, 3);
    assert.equal(
      (
        await limit.attempt(
          "b",
          () => true,
          (ok) => ok,
        )
      ).limited,
      false,
      "other clients are unaffected",
    );
    release();
    await Promise.all(first);
    now = 59_999;
    assert.equal(await limit.retryAfter("a"), 1);
    now = 60_000;
    assert.equal(await limit.retryAfter("a"), 0, "a minute after, the window has slid");
    for (let i = 0; i < 10; i++) {
      assert.equal(
        (
          await limit.attempt(
            "a",
            () => true,
            (ok) => ok,
          )
        ).limited,
        false,
        "successes are refunded",
      );
    }
    await assert.rejects(
      limit.attempt(
        "a",
        () => Promise.reject(new Error("io")),
        () => false,
      ),
    );
    assert.equal(await limit.retryAfter("a"), 0, "an error is refunded");
  });
});

describe("one code, one use", () => {
  test("concurrent claims of one step, from a fresh state over an existing file, succeed once", async () => {
    const dir = mkdtempSync(join(tmpdir(), "keyfence-otp-"));
    try {
      const file = join(dir, "otp.json");
      assert.equal(await new FileCodeState(file).claim("ops", 10), true);
      const fresh = new FileCodeState(file); // a restart
      const claims = await Promise.all(Array.from({ length: 50 }, (_, i) => fresh.claim(i % 2 ? "ops" : "other", 11)));
      assert.equal(claims.filter(Boolean).length, 2, "one per operator");
      assert.equal(await new FileCodeState(file).claim("ops", 11), false, "durable");
      assert.equal(await new FileCodeState(file).claim("other", 10), false, "durable");
      assert.deepEqual(JSON.parse(readFileSync(file, "utf8")), { last_step: { ops: 11, other: 11 } });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("right after a restart, concurrent sign-ins and PATCHes with one code give exactly one success", async () => {
    const up = await startUpstream();
    const first = await startTestSidecar({
      upstream: up.url,
      keys: [],
      admin: { operators: OPERATORS },
      now: clock.now,
    });
    await first.stop({ keep: true });
    const kf = await first.restart();
    try {
      const c = code(SECRET, clock.now());
      const form = signInForm(kf, "tok_2fa", c);
      const signIns = await Promise.all(
        Array.from({ length: 9 }, (_, i) =>
          send(`${kf.adminUrl}/session`, {
            method: "POST",
            headers: Object.entries(form.headers),
            body: form.body,
            localAddress: `127.0.3.${i + 1}`,
          }),
        ),
      );
      assert.deepEqual(
        signIns.map((r) => r.status).sort(),
        [303, 401, 401, 401, 401, 401, 401, 401, 401],
        "one session",
      );
      assert.ok(signIns.every((r) => r.status !== 500));
      const c2 = code(OTHER_SECRET, clock.now());
      const creates = await Promise.all(
        Array.from({ length: 9 }, (_, i) =>
          send(`${kf.adminUrl}/v1/api-keys`, {
            method: "POST",
            headers: [bearer("tok_2fb"), ["X-Keyfence-OTP", c2], ["Content-Type", "application/json"]],
            body: JSON.stringify({ name: `c${i}`, ip_allow_list: ["10.0.0.1"] }),
            localAddress: `127.0.4.${i + 1}`,
          }),
        ),
      );
      assert.deepEqual(creates.map((r) => r.status).sort(), [201, 403, 403, 403, 403, 403, 403, 403, 403]);
    } finally {
      await kf.stop();
      await up.close();
    }
  });
});

describe("attempt limit under concurrency, over HTTP", () => {
  const fx = sidecarFixture((up) =>
    startTestSidecar({ upstream: up.url, keys: [], admin: { operators: OPERATORS }, now: clock.now }),
  );

  test("300 dashboard sign-ins, bodies after headers: 10 are verified, the rest 429 before their body, even the right one", async () => {
    const from = "127.0.5.1";
    const wrong = signInForm(fx.kf, "tok_2fa", wrongCode(SECRET, clock.now()));
    const pending = Array.from({ length: 299 }, () =>
      headersFirst(`${fx.kf.adminUrl}/session`, "POST", wrong.headers, wrong.body, from),
    );
    const replies = pending.map((p) => p.reply);
    let early = 0;
    for (const r of replies) void r.then(() => early++);
    await settledCount(replies, 289, 10_000);
    assert.equal(early, 289, "289 answered 429 before sending their body");
    const right = signInForm(fx.kf, "tok_2fa", code(SECRET, clock.now()));
    const rightOne = headersFirst(`${fx.kf.adminUrl}/session`, "POST", right.headers, right.body, from);
    rightOne.sendBody();
    for (const p of pending) p.sendBody();
    const statuses = (await Promise.all(replies)).map((r) => r.status);
    assert.equal(statuses.filter((s) => s === 401).length, 10, "exactly 10 verified");
    assert.equal(statuses.filter((s) => s === 429).length, 289);
    const last = await rightOne.reply;
    assert.equal(last.status, 429, "the right token and code are not even tried");
    assert.ok(Number(last.retryAfter) >= 1 && Number(last.retryAfter) <= 60);
    assert.equal(usedStep(fx.kf, "twofa"), undefined, "the code the limit refused was never used");
    // From another address it is refused as well: the ten wrong codes used up the operator's own minute.
    const other = await send(`${fx.kf.adminUrl}/session`, {
      method: "POST",
      headers: Object.entries(right.headers),
      body: right.body,
      localAddress: "127.0.5.2",
    });
    assert.equal(other.status, 401);
    assert.equal(usedStep(fx.kf, "twofa"), undefined);
  });

  test("200 PATCHes with wrong codes at once: 10 verified, 190 get 429; the right code then gets 429 unverified", async () => {
    const from = "127.0.6.1";
    const created = await send(`${fx.kf.adminUrl}/v1/api-keys`, {
      method: "POST",
      headers: [bearer("tok_ops"), ["Content-Type", "application/json"]],
      body: JSON.stringify({ name: "t", ip_allow_list: ["10.0.0.1"] }),
    });
    const id = (created.json() as { id: string }).id;
    const wrong = wrongCode(OTHER_SECRET, clock.now());
    const headers = {
      authorization: "Bearer tok_2fb",
      "x-keyfence-otp": wrong,
      "content-type": "application/json",
    };
    const body = JSON.stringify({ ip_allow_list: ["10.0.0.2"] });
    const pending = Array.from({ length: 200 }, () =>
      headersFirst(`${fx.kf.adminUrl}/v1/api-keys/${id}`, "PATCH", headers, body, from),
    );
    for (const p of pending) p.sendBody();
    const statuses = (await Promise.all(pending.map((p) => p.reply))).map((r) => r.status);
    assert.equal(statuses.filter((s) => s === 403).length, 10, "exactly 10 codes verified");
    assert.equal(statuses.filter((s) => s === 429).length, 190);
    const right = await send(`${fx.kf.adminUrl}/v1/api-keys/${id}`, {
      method: "PATCH",
      headers: [
        bearer("tok_2fb"),
        ["X-Keyfence-OTP", code(OTHER_SECRET, clock.now())],
        ["Content-Type", "application/json"],
      ],
      body,
      localAddress: from,
    });
    assert.equal(right.status, 429);
    assert.equal(usedStep(fx.kf, "twofb"), undefined, "the refused code was never used");
    // From another address it is refused as well: the ten wrong codes used up the operator's own minute.
    const elsewhere = await send(`${fx.kf.adminUrl}/v1/api-keys/${id}`, {
      method: "PATCH",
      headers: [
        bearer("tok_2fb"),
        ["X-Keyfence-OTP", code(OTHER_SECRET, clock.now())],
        ["Content-Type", "application/json"],
      ],
      body,
      localAddress: "127.0.6.2",
    });
    assert.equal(elsewhere.status, 403);
    assert.equal(usedStep(fx.kf, "twofb"), undefined);
  });

  test("unknown credentials at once: 10 answered 401, the rest 429; successes are refunded", async () => {
    const from = "127.0.7.1";
    const ok = await Promise.all(
      Array.from({ length: 100 }, () =>
        send(`${fx.kf.adminUrl}/v1/api-keys`, { headers: [bearer("tok_ops")], localAddress: from }),
      ),
    );
    assert.ok(
      ok.every((r) => r.status === 200),
      "100 concurrent right tokens: never limited",
    );
    const guesses = await Promise.all(
      Array.from({ length: 200 }, (_, i) =>
        send(`${fx.kf.adminUrl}/v1/api-keys`, { headers: [bearer(`guess${i}`)], localAddress: from }),
      ),
    );
    assert.equal(guesses.filter((r) => r.status === 401).length, 10);
    assert.equal(guesses.filter((r) => r.status === 429).length, 190);
    assert.ok(guesses.every((r) => r.status !== 429 || r.headers["x-keyfence-reason"] === "too_many_attempts"));
  });

  test("sign-in refuses Origin: null like a foreign origin, before counting an attempt", async () => {
    for (const origin of ["null", "http://evil.example", "http://127.0.0.1:1"]) {
      const r = await send(`${fx.kf.adminUrl}/session`, {
        method: "POST",
        headers: [
          ["Content-Type", "application/x-www-form-urlencoded"],
          ["Origin", origin],
        ],
        body: "token=tok_ops",
        localAddress: "127.0.8.1",
      });
      assert.equal(r.status, 403, origin);
      assert.match(r.body, /Cross-origin sign-in refused/);
    }
    const same = await send(`${fx.kf.adminUrl}/session`, {
      method: "POST",
      headers: [
        ["Content-Type", "application/x-www-form-urlencoded"],
        ["Origin", fx.kf.adminUrl],
      ],
      body: "token=tok_ops",
      localAddress: "127.0.8.1",
    });
    assert.equal(same.status, 303);
  });

  test("JSON nested 400,000 deep: 400 (or the 404 checked first), never 500", async () => {
    const deep = (n: number, open: string, close: string): string => open.repeat(n) + close.repeat(n);
    const bodies = [
      deep(400_000, "[", "]"),
      `{"name":${deep(400_000, "[", "]")}}`,
      `{"scopes":${'{"a":'.repeat(150_000)}1${"}".repeat(150_000)}}`,
      `{"name":"x","ip_allow_list":${deep(33, "[", "]")}}`,
    ];
    for (const body of bodies) {
      for (const [method, path] of [
        ["POST", "/v1/api-keys"],
        ["PATCH", "/v1/api-keys/nope"],
      ] as const) {
        const r = await send(`${fx.kf.adminUrl}${path}`, {
          method,
          headers: [bearer("tok_ops"), ["Content-Type", "application/json"]],
          body,
        });
        assert.equal(r.status, method === "PATCH" ? 404 : 400, `${method} ${body.slice(0, 20)}: ${r.body}`);
      }
    }
    const ok = await send(`${fx.kf.adminUrl}/v1/api-keys`, {
      method: "POST",
      headers: [bearer("tok_ops"), ["Content-Type", "application/json"]],
      body: JSON.stringify({ name: "[[[{{{ not nesting", scopes: ["a:b"] }),
    });
    assert.equal(ok.status, 201, "brackets inside strings are not nesting");
  });
});

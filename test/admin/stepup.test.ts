/**
 * SPEC §5 step-up: every change that sets, alters or loosens enforcement needs
 * confirmation (a code for token operators with a TOTP secret, a recent
 * re-confirmation for dashboard sessions); nothing else does; and a failed
 * request never uses up a code.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { describe, test } from "node:test";
import { Secret } from "otpauth";
import { needsConfirmation } from "../../src/admin/keys.js";
import type { KeyRecord } from "../../src/store/keysfile.js";
import { bearer, send, type Reply } from "../helpers/http.js";
import { rec as record } from "../helpers/records.js";
import { sidecarFixture, startTestSidecar, type TestKey, type TestSidecar } from "../helpers/sidecar.js";
import { code, testClock, wrongCode } from "../helpers/totp.js";

const sha = (s: string): string => createHash("sha256").update(s).digest("hex");

/** Key `k` with `over` applied (needsConfirmation reads neither its secret nor its times). */
function rec(over: Partial<KeyRecord> = {}): KeyRecord {
  return record("k", over);
}

describe("needsConfirmation", () => {
  const L = ["10.0.0.0/8"];
  const W = "api_keys:write";
  // [what, before, after, global mode, needs]
  const table: Array<[string, KeyRecord | undefined, KeyRecord | undefined, "enforce" | "report", boolean]> = [
    ["create without list or scope", undefined, rec({ scopes: ["a:b"] }), "enforce", false],
    ["create in report mode without a list", undefined, rec({ mode: "report" }), "enforce", false],
    ["create with a list", undefined, rec({ ipAllowList: L }), "enforce", true],
    ["create with a list in report mode", undefined, rec({ ipAllowList: L, mode: "report" }), "enforce", true],
    ["create with api_keys:write", undefined, rec({ scopes: ["a:b", W] }), "enforce", true],
    ["delete an unrestricted key", rec(), undefined, "enforce", false],
    ["delete an unrestricted writer", rec({ scopes: [W] }), undefined, "enforce", false],
    ["delete a restricted key", rec({ ipAllowList: L }), undefined, "enforce", true],
    ["rename", rec({ ipAllowList: L }), rec({ ipAllowList: L, name: "n" }), "enforce", false],
    [
      "same set reordered",
      rec({ ipAllowList: ["1.1.1.1", "2.2.2.2"] }),
      rec({ ipAllowList: ["2.2.2.2", "1.1.1.1"] }),
      "enforce",
      false,
    ],
    ["list narrowed", rec({ ipAllowList: ["1.1.1.1", "2.2.2.2"] }), rec({ ipAllowList: ["1.1.1.1"] }), "enforce", true],
    ["list widened", rec({ ipAllowList: ["1.1.1.1"] }), rec({ ipAllowList: ["1.1.1.0/24"] }), "enforce", true],
    ["list cleared", rec({ ipAllowList: L }), rec(), "enforce", true],
    ["list set on an open key", rec(), rec({ ipAllowList: L }), "enforce", true],
    ["restricted key to report", rec({ ipAllowList: L }), rec({ ipAllowList: L, mode: "report" }), "enforce", true],
    [
      "restricted enforce key back to global report",
      rec({ ipAllowList: L, mode: "enforce" }),
      rec({ ipAllowList: L }),
      "report",
      true,
    ],
    [
      "restricted enforce key back to global enforce",
      rec({ ipAllowList: L, mode: "enforce" }),
      rec({ ipAllowList: L }),
      "enforce",
      false,
    ],
    ["a key leaves the sandbox", rec({ sandbox: true }), rec(), "enforce", true],
    ["a key enters the sandbox", rec(), rec({ sandbox: true }), "enforce", false],
    ["create a sandbox key", undefined, rec({ sandbox: true }), "enforce", false],
    [
      "restricted key to enforce",
      rec({ ipAllowList: L, mode: "report" }),
      rec({ ipAllowList: L, mode: "enforce" }),
      "enforce",
      false,
    ],
    [
      "restricted inheriting key to explicit report under global report",
      rec({ ipAllowList: L }),
      rec({ ipAllowList: L, mode: "report" }),
      "report",
      true,
    ],
    [
      "restricted report key unchanged mode, renamed",
      rec({ ipAllowList: L, mode: "report" }),
      rec({ ipAllowList: L, mode: "report", name: "x" }),
      "enforce",
      false,
    ],
    ["unrestricted key to report", rec(), rec({ mode: "report" }), "enforce", false],
    ["gains api_keys:write", rec({ scopes: ["a:b"] }), rec({ scopes: ["a:b", W] }), "enforce", true],
    [
      "gains api_keys:write on a restricted key",
      rec({ ipAllowList: L }),
      rec({ ipAllowList: L, scopes: [W] }),
      "enforce",
      true,
    ],
    ["keeps api_keys:write, gains another", rec({ scopes: [W] }), rec({ scopes: [W, "a:b"] }), "enforce", false],
    ["loses api_keys:write", rec({ scopes: [W] }), rec({ scopes: [] }), "enforce", false],
  ];
  for (const [what, before, after, global, needs] of table) {
    test(`${what}: ${needs ? "needs" : "no"} confirmation`, () => {
      assert.equal(needsConfirmation(before, after, global), needs);
    });
  }
});

/** A change tried over HTTP: `setup` makes the key it works on (as a plain operator), `body` the change. */
interface Case {
  readonly what: string;
  readonly method: "POST" | "PATCH" | "DELETE";
  readonly setup?: { ip_allow_list?: string[]; scopes?: string[]; mode?: "enforce" | "report" };
  readonly body?: Record<string, unknown>;
  readonly needs: boolean;
}

const CASES: Case[] = [
  { what: "create with a list", method: "POST", body: { name: "c", ip_allow_list: ["10.0.0.1"] }, needs: true },
  { what: "create with api_keys:write", method: "POST", body: { name: "c", scopes: ["api_keys:write"] }, needs: true },
  {
    what: "create open, report mode",
    method: "POST",
    body: { name: "c", scopes: ["a:b"], mode: "report" },
    needs: false,
  },
  {
    what: "patch the list",
    method: "PATCH",
    setup: { ip_allow_list: ["10.0.0.1"] },
    body: { ip_allow_list: ["10.0.0.2"] },
    needs: true,
  },
  {
    what: "patch the list to []",
    method: "PATCH",
    setup: { ip_allow_list: ["10.0.0.1"] },
    body: { ip_allow_list: [] },
    needs: true,
  },
  { what: "restrict an open key", method: "PATCH", setup: {}, body: { ip_allow_list: ["10.0.0.1"] }, needs: true },
  {
    what: "the same set respelled",
    method: "PATCH",
    setup: { ip_allow_list: ["10.0.0.1"] },
    body: { ip_allow_list: ["::ffff:10.0.0.1"] },
    needs: false,
  },
  {
    what: "a restricted key to report",
    method: "PATCH",
    setup: { ip_allow_list: ["10.0.0.1"] },
    body: { mode: "report" },
    needs: true,
  },
  {
    what: "a restricted key to report, renamed too",
    method: "PATCH",
    setup: { ip_allow_list: ["10.0.0.1"], mode: "enforce" },
    body: { name: "r", mode: "report" },
    needs: true,
  },
  { what: "an open key to report", method: "PATCH", setup: {}, body: { mode: "report" }, needs: false },
  {
    what: "a restricted report key to enforce",
    method: "PATCH",
    setup: { ip_allow_list: ["10.0.0.1"], mode: "report" },
    body: { mode: "enforce" },
    needs: false,
  },
  {
    what: "gain api_keys:write",
    method: "PATCH",
    setup: { scopes: ["a:b"] },
    body: { scopes: ["a:b", "api_keys:write"] },
    needs: true,
  },
  {
    what: "rename and change other scopes",
    method: "PATCH",
    setup: { ip_allow_list: ["10.0.0.1"], scopes: ["api_keys:write"] },
    body: { name: "n", scopes: ["x:y"] },
    needs: false,
  },
  { what: "delete a restricted key", method: "DELETE", setup: { ip_allow_list: ["10.0.0.1"] }, needs: true },
  { what: "delete an open writer", method: "DELETE", setup: { scopes: ["api_keys:write"] }, needs: false },
];

const OPS_TOKEN = "tok_plain";
/** One TOTP operator per case, so each case has codes of its own. */
const SECRETS = CASES.map(() => new Secret({ size: 20 }).base32);
const OPERATORS = [
  { name: "plain", token_sha256: sha(OPS_TOKEN) },
  ...SECRETS.map((totp_secret, i) => ({ name: `otp${i}`, token_sha256: sha(`tok_otp${i}`), totp_secret })),
];
const KEYS: TestKey[] = [{ id: "k_seed", secret: "s_seed" }];

function json(
  kf: TestSidecar,
  method: string,
  path: string,
  headers: Array<[string, string]>,
  body?: unknown,
  from = "127.0.0.1",
): Promise<Reply> {
  return send(`${kf.adminUrl}${path}`, {
    method,
    headers: body === undefined ? headers : [...headers, ["Content-Type", "application/json"]],
    body: body === undefined ? undefined : JSON.stringify(body),
    localAddress: from,
  });
}

/** Makes the key a case works on, as the plain operator; returns its path. */
async function setUp(kf: TestSidecar, c: Case): Promise<string> {
  if (c.method === "POST") return "/v1/api-keys";
  const r = await json(kf, "POST", "/v1/api-keys", [bearer(OPS_TOKEN)], { name: "target", ...c.setup });
  assert.equal(r.status, 201, r.body);
  return `/v1/api-keys/${(r.json() as { id: string }).id}`;
}

function keysFileOf(kf: TestSidecar): string {
  return readFileSync(kf.keysFile, "utf8");
}

/** Signs in to the dashboard as the plain operator; returns the cookie and CSRF headers. */
async function signIn(kf: TestSidecar): Promise<Array<[string, string]>> {
  const host = new URL(kf.adminUrl).host;
  const r = await send(`${kf.adminUrl}/session`, {
    method: "POST",
    headers: [
      ["Content-Type", "application/x-www-form-urlencoded"],
      ["Origin", `http://${host}`],
    ],
    body: `token=${OPS_TOKEN}`,
    localAddress: "127.0.0.1",
  });
  assert.equal(r.status, 303, r.body);
  const cookie = (r.headers["set-cookie"]?.[0] ?? "").split(";")[0] ?? "";
  const page = await send(`${kf.adminUrl}/`, { headers: [["Cookie", cookie]] });
  const csrf = /name="csrf" value="([^"]+)"/.exec(page.body)?.[1] ?? "";
  assert.ok(csrf !== "", "the page carries a CSRF token");
  return [
    ["Cookie", cookie],
    ["X-CSRF-Token", csrf],
    ["Origin", `http://${host}`],
  ];
}

describe("step-up over HTTP", () => {
  // The sidecar's clock: codes are computed for it, and it stands still.
  const clock = testClock();
  const fx = sidecarFixture((up) =>
    startTestSidecar({ upstream: up.url, keys: KEYS, admin: { operators: OPERATORS }, now: clock.now }),
  );

  describe("token operators with a TOTP secret send a code exactly for the changes that need one", () => {
    CASES.forEach((c, i) => {
      test(c.what, async () => {
        const path = await setUp(fx.kf, c);
        const who = bearer(`tok_otp${i}`);
        const before = keysFileOf(fx.kf);
        const bare = await json(fx.kf, c.method, path, [who], c.body);
        if (!c.needs) {
          assert.ok([200, 201, 204].includes(bare.status), `${bare.status} ${bare.body}`);
          return;
        }
        assert.equal(bare.status, 403, bare.body);
        assert.equal(bare.body, '{"message":"confirmation required"}');
        assert.equal(keysFileOf(fx.kf), before, "nothing changed");
        const wrong = wrongCode(SECRETS[i]!, clock.now());
        const refused = await json(fx.kf, c.method, path, [who, ["X-Keyfence-OTP", wrong]], c.body, `127.0.1.${i + 1}`);
        assert.equal(refused.status, 403);
        assert.equal(refused.body, '{"message":"invalid confirmation code"}');
        assert.equal(keysFileOf(fx.kf), before, "nothing changed");
        const ok = await json(fx.kf, c.method, path, [who, ["X-Keyfence-OTP", code(SECRETS[i]!, clock.now())]], c.body);
        assert.ok([200, 201, 204].includes(ok.status), `${ok.status} ${ok.body}`);
        assert.notEqual(keysFileOf(fx.kf), before);
      });
    });
  });

  describe("dashboard sessions re-confirm for the same changes", () => {
    for (const c of CASES) {
      test(c.what, async () => {
        const path = await setUp(fx.kf, c);
        const session = await signIn(fx.kf);
        const before = keysFileOf(fx.kf);
        const bare = await json(fx.kf, c.method, path, session, c.body);
        if (!c.needs) {
          assert.ok([200, 201, 204].includes(bare.status), `${bare.status} ${bare.body}`);
          return;
        }
        assert.equal(bare.status, 403, bare.body);
        assert.equal(bare.body, '{"message":"confirmation required"}');
        assert.equal(keysFileOf(fx.kf), before, "nothing changed");
        const confirm = await json(fx.kf, "POST", "/session/confirm", session, { token: OPS_TOKEN });
        assert.equal(confirm.status, 204, confirm.body);
        const ok = await json(fx.kf, c.method, path, session, c.body);
        assert.ok([200, 201, 204].includes(ok.status), `${ok.status} ${ok.body}`);
      });
    }
  });

  test("checks run credential, 404, 400, 409, confirmation: a failed request never uses up a code", async () => {
    const i = 0;
    const ORDER_FROM = "127.0.2.1";
    const c = code(SECRETS[i]!, clock.now(), 1);
    const otp: [string, string] = ["X-Keyfence-OTP", c];
    const body = { ip_allow_list: ["10.9.9.9"] };
    const target = await setUp(fx.kf, {
      what: "",
      method: "PATCH",
      setup: { ip_allow_list: ["10.0.0.1"] },
      needs: true,
    });
    const wrongToken = await json(fx.kf, "PATCH", target, [bearer("tok_nobody"), otp], body, ORDER_FROM);
    assert.equal(wrongToken.status, 401);
    const missing = await json(fx.kf, "PATCH", "/v1/api-keys/nope", [bearer(`tok_otp${i}`), otp], body, ORDER_FROM);
    assert.equal(missing.status, 404);
    const bad = await json(
      fx.kf,
      "PATCH",
      target,
      [bearer(`tok_otp${i}`), otp],
      { ip_allow_list: ["10.0.0.0/33"] },
      ORDER_FROM,
    );
    assert.equal(bad.status, 400);
    const good = readFileSync(fx.kf.keysFile, "utf8");
    fx.kf.writeKeys("keys:\n  - id: broken\n");
    const conflict = await json(fx.kf, "PATCH", target, [bearer(`tok_otp${i}`), otp], body, ORDER_FROM);
    assert.equal(conflict.status, 409);
    fx.kf.writeKeys(good);
    const ok = await json(fx.kf, "PATCH", target, [bearer(`tok_otp${i}`), otp], body, ORDER_FROM);
    assert.equal(ok.status, 200, `the code is still unused: ${ok.body}`);
    const replay = await json(fx.kf, "PATCH", target, [bearer(`tok_otp${i}`), otp], { ip_allow_list: [] }, ORDER_FROM);
    assert.equal(replay.body, '{"message":"invalid confirmation code"}');
  });
});

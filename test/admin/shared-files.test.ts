/**
 * SPEC §5, §6: sidecars sharing one keys file share the files beside it: a
 * confirmation code is accepted once across them, in sequence and
 * concurrently, and their changes land in one audit log with distinct ids,
 * every one of them listed by either. Two sidecars in this process on one directory, each with its
 * own store and code state, as two processes would have.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { after, before, test } from "node:test";
import { bearer, send, type Reply } from "../helpers/http.js";
import { startTestSidecar, type TestSidecar } from "../helpers/sidecar.js";
import { code, testClock } from "../helpers/totp.js";
import { startUpstream, type Upstream } from "../helpers/upstream.js";

const SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
const sha = (s: string): string => createHash("sha256").update(s).digest("hex");
const clock = testClock();

let up: Upstream;
let a: TestSidecar;
let b: TestSidecar;

before(async () => {
  up = await startUpstream();
  const opts = {
    upstream: up.url,
    keys: [],
    admin: { operators: [{ name: "ops", token_sha256: sha("tok_ops"), totp_secret: SECRET }] },
    now: clock.now,
  };
  a = await startTestSidecar(opts);
  b = await startTestSidecar({ ...opts, dir: a.dir });
});

after(async () => {
  await b.stop({ keep: true });
  await a.stop();
  await up.close();
});

/** A create that needs confirmation (its list is not empty), confirmed with `otp`. */
function confirmedCreate(kf: TestSidecar, otp: string): Promise<Reply> {
  return send(`${kf.adminUrl}/v1/api-keys`, {
    method: "POST",
    headers: [bearer("tok_ops"), ["Content-Type", "application/json"], ["X-Keyfence-OTP", otp]],
    body: JSON.stringify({ name: "confirmed", ip_allow_list: ["10.0.0.1"] }),
  });
}

test("a code used on one sidecar is refused on another sharing the keys file", async () => {
  const now = clock.now();
  assert.equal((await confirmedCreate(a, code(SECRET, now, -1))).status, 201, "A reads the state: step S-1");
  assert.equal((await confirmedCreate(b, code(SECRET, now))).status, 201, "B uses step S");
  for (const kf of [a, b]) {
    const r = await confirmedCreate(kf, code(SECRET, now));
    assert.equal(r.status, 403, r.body);
    assert.equal(r.body, '{"message":"invalid confirmation code"}');
  }
});

test("of one code sent to two sidecars at once, exactly one use is accepted", async () => {
  clock.advance(30_000);
  const otp = code(SECRET, clock.now());
  const replies = await Promise.all(Array.from({ length: 6 }, (_, i) => confirmedCreate(i % 2 ? b : a, otp)));
  assert.deepEqual(replies.map((r) => r.status).sort(), [201, 403, 403, 403, 403, 403]);
});

test("changes through either sidecar get distinct audit ids, and either lists them all", async () => {
  const rename = (kf: TestSidecar, id: string, name: string): Promise<Reply> =>
    send(`${kf.adminUrl}/v1/api-keys/${id}`, {
      method: "PATCH",
      headers: [bearer("tok_ops"), ["Content-Type", "application/json"]],
      body: JSON.stringify({ name }),
    });
  const made = await confirmedCreate(a, code(SECRET, clock.now(), 1));
  assert.equal(made.status, 201, made.body);
  const id = (made.json() as { id: string }).id;
  const replies = await Promise.all(Array.from({ length: 10 }, (_, i) => rename(i % 2 ? b : a, id, `name ${i}`)));
  for (const r of replies) assert.equal(r.status, 200, r.body);
  for (const kf of [a, b]) {
    const ids: number[] = [];
    let cursor = "";
    for (;;) {
      const page = await send(`${kf.adminUrl}/v1/audit?limit=3${cursor}`, { headers: [bearer("tok_ops")] });
      const body = page.json() as { data: Array<{ id: number }>; next_cursor: string | null };
      ids.push(...body.data.map((e) => e.id));
      if (body.next_cursor === null) break;
      cursor = `&cursor=${body.next_cursor}`;
    }
    assert.equal(new Set(ids).size, ids.length, "no id twice");
    // The creates of the tests before (three) and this one, and the ten renames.
    assert.equal(ids.length, 14);
  }
});

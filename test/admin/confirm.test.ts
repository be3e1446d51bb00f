/**
 * One request, one code: a change that is planned again (a Redis write that
 * lost a race to another replica plans on the winner's result) asks for its
 * confirmation again, and must not try to use the request's code twice.
 */
import assert from "node:assert/strict";
import type { IncomingMessage } from "node:http";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { confirmFor } from "../../src/admin/api.js";
import { MemoryAttemptLimit } from "../../src/admin/attempts.js";
import { Authenticator } from "../../src/admin/auth.js";
import { Confirmations, FileCodeState } from "../../src/admin/confirm.js";
import { MemorySessionStore } from "../../src/admin/sessions.js";
import { compileTrust, resolveClientIp, type CompiledTrust } from "../../src/clientip/resolve.js";
import type { KeyStore } from "../../src/store/store.js";
import { code as codeAt } from "../helpers/totp.js";

const SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
const NOW = 1_800_000_015_000; // the middle of a 30 s step: no boundary to wait for
const dir = mkdtempSync(join(tmpdir(), "keyfence-confirm-"));
after(() => rmSync(dir, { recursive: true, force: true }));

function setup(): { confirm: () => Promise<boolean>; again: () => Promise<boolean> } {
  const operator = { name: "ops", tokenSha256: "00".repeat(32), totpSecret: SECRET };
  const code = codeAt(SECRET, NOW);
  const confirmations = new Confirmations(new FileCodeState(join(dir, `${String(Math.random())}.json`)), () => NOW);
  // The authenticator's key store is never read by an attempt.
  const auth = new Authenticator(
    [operator],
    {} as KeyStore,
    new MemoryAttemptLimit({ max: 10, windowMs: 60_000 }),
    new MemorySessionStore({ idleMs: 60_000, maxAgeMs: 60_000, confirmWindowMs: 60_000 }),
  );
  const client = resolveClientIp("127.0.0.1", undefined, compileTrust([]) as CompiledTrust);
  const req = (): IncomingMessage => ({ headers: { "x-keyfence-otp": code } }) as unknown as IncomingMessage;
  const caller = { kind: "operator", operator, via: "token" } as const;
  return {
    confirm: confirmFor(req(), caller, client, { confirmations, auth }),
    again: confirmFor(req(), caller, client, { confirmations, auth }),
  };
}

test("a request's code confirms each planning of its change, and only that request", async () => {
  const { confirm, again } = setup();
  assert.equal(await confirm(), true);
  assert.equal(await confirm(), true, "planned again after a lost race: the same confirmation");
  await assert.rejects(again(), /invalid/, "another request with the same code is a replay");
});

test("codes are judged by the injected clock: its step ±1, each step once, never one before the last used", async () => {
  let t = NOW;
  const confirmations = new Confirmations(new FileCodeState(join(dir, "window.json")), () => t);
  const at = (offset: number): string => codeAt(SECRET, NOW, offset);
  for (const offset of [-2, 2]) {
    assert.equal(confirmations.isCurrent(SECRET, at(offset)), false, `${offset} steps away`);
    assert.equal(await confirmations.consume("ops", SECRET, at(offset)), "invalid", `${offset} steps away`);
  }
  for (const offset of [-1, 0, 1]) assert.equal(confirmations.isCurrent(SECRET, at(offset)), true, `${offset} steps`);
  assert.equal(await confirmations.consume("ops", SECRET, at(-1)), "ok");
  assert.equal(await confirmations.consume("ops", SECRET, at(-1)), "invalid", "used");
  assert.equal(confirmations.isCurrent(SECRET, at(-1)), true, "current, used or not");
  assert.equal(await confirmations.consume("ops", SECRET, at(1)), "ok");
  assert.equal(await confirmations.consume("ops", SECRET, at(0)), "invalid", "before the last used step");
  t += 60_000; // two steps on: the code of step +1 is now one step old
  assert.equal(confirmations.isCurrent(SECRET, at(1)), true);
  assert.equal(confirmations.isCurrent(SECRET, at(0)), false);
  assert.equal(await confirmations.consume("ops", SECRET, at(3)), "ok", "one step ahead of the moved clock");
});

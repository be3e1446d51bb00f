/** RFC 6238 codes for tests, generated from a known secret as an authenticator app would. */
import { Secret, TOTP } from "otpauth";

/** Waits while the clock is within 3 s of a 30 s step boundary, so codes computed now stay in their step. */
export async function awayFromStepBoundary(): Promise<void> {
  const into = Date.now() % 30_000;
  if (into > 27_000) await new Promise((r) => setTimeout(r, 30_000 - into + 100));
}

/** The code of `secret` for the step `offset` steps from now. */
export function code(secret: string, offset = 0): string {
  return new TOTP({ secret: Secret.fromBase32(secret), algorithm: "SHA1", digits: 6, period: 30 }).generate({
    timestamp: Date.now() + offset * 30_000,
  });
}

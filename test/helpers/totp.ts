/**
 * RFC 6238 codes for tests, generated from a known secret as an authenticator
 * app would, for the clock the sidecar judges codes by (startTestSidecar's
 * `now`): a test moves that clock itself, so no code crosses a step boundary
 * while a request is on its way and no test waits for one.
 */
import { Secret, TOTP } from "otpauth";

const STEP_MS = 30_000;

/** A clock that stands still until the test moves it. */
export interface TestClock {
  /** Milliseconds since the epoch, as `Date.now` (pass it as the sidecar's `now`). */
  readonly now: () => number;
  /** Moves the clock `ms` milliseconds forward (a negative `ms` moves it back). */
  advance(ms: number): void;
}

/**
 * A stopped clock at `at`; by default an hour behind the real time, at the middle of a 30 s step. A
 * code computed for the real time is then never one for this clock, so a sidecar that judged codes by
 * its own wall clock fails the test instead of passing by luck.
 */
export function testClock(at = Math.floor((Date.now() - 3_600_000) / STEP_MS) * STEP_MS + STEP_MS / 2): TestClock {
  let t = at;
  return {
    now: () => t,
    advance(ms) {
      t += ms;
    },
  };
}

function totp(secret: string): TOTP {
  return new TOTP({ secret: Secret.fromBase32(secret.replace(/=+$/, "")), algorithm: "SHA1", digits: 6, period: 30 });
}

/** The code of `secret` for the step `offset` steps from the time `at` (ms since the epoch). */
export function code(secret: string, at: number, offset = 0): string {
  return totp(secret).generate({ timestamp: at + offset * STEP_MS });
}

/** A well-formed code that is not a code of `secret` at `at`, nor one step before or after (the server's window). */
export function wrongCode(secret: string, at: number): string {
  const near = new Set([-1, 0, 1].map((offset) => code(secret, at, offset)));
  // Four candidates, at most three of them taken.
  for (const c of ["000000", "111111", "222222", "333333"]) if (!near.has(c)) return c;
  throw new Error("unreachable");
}

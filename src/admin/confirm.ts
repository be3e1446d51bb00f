/**
 * Step-up confirmation with RFC 6238 codes (otpauth): a code is valid for its
 * 30-second step ±1 step of clock skew, and accepted once per operator. The
 * last accepted step lives in a {@link CodeState}, so a code cannot be
 * replayed after a restart, nor twice by concurrent requests.
 */
import { readFile } from "node:fs/promises";
import { Secret, TOTP } from "otpauth";
import { writeFileAtomic } from "../util/atomic.js";
import type { AttemptLimit } from "./attempts.js";
import { withLockBeside } from "../util/lock.js";

/** The result of checking a code. */
export type CodeCheck = "ok" | "invalid";

/** Where the last accepted step of each operator lives (a file here, or shared by replicas). */
export interface CodeState {
  /**
   * Marks `step` used for `operator` when it is later than every step used
   * before, durably before resolving true; false otherwise. Claims are atomic:
   * of concurrent claims of one step, exactly one gets true.
   */
  claim(operator: string, step: number): Promise<boolean>;
}

/**
 * Code state in a JSON file that processes sharing a keys file share too: a
 * claim takes the file's lock (see {@link withLockBeside}), reads the file
 * afresh, and writes it back before the lock is released, so a code used by
 * one process is refused by every other. Claims of this process run one at
 * a time.
 */
export class FileCodeState implements CodeState {
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    /** JSON file remembering the last accepted step per operator. */
    private readonly file: string,
  ) {}

  private async read(): Promise<Record<string, number>> {
    try {
      const data = JSON.parse(await readFile(this.file, "utf8")) as { last_step?: Record<string, number> };
      return { ...data.last_step };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return {};
      throw err;
    }
  }

  claim(operator: string, step: number): Promise<boolean> {
    const run = this.queue.then(async () => {
      return withLockBeside(this.file, async (stillHeld) => {
        const last = await this.read();
        if (step <= (last[operator] ?? -1)) return false;
        stillHeld();
        await writeFileAtomic(this.file, `${JSON.stringify({ last_step: { ...last, [operator]: step } })}\n`);
        return true;
      });
    });
    this.queue = run.catch(() => undefined);
    return run;
  }
}

/**
 * TOTP verification with replay protection, shared by the API and the
 * dashboard; `now` is the clock codes are judged by (tests inject one).
 * With `limit`, each operator's codes are also one attempt of that operator:
 * SPEC §5 limits attempts per client IP, which a holder of a stolen token
 * with many addresses (an IPv6 /64) would otherwise spread guesses over; past
 * the limit every code is refused unverified, and `limited` hears of it.
 */
export class Confirmations {
  constructor(
    private readonly state: CodeState,
    private readonly now: () => number = Date.now,
    private readonly limit?: AttemptLimit,
    private readonly limited?: (operator: string) => void,
  ) {}

  private totp(secret: string): TOTP {
    return new TOTP({ secret: Secret.fromBase32(secret.replace(/=+$/, "")), algorithm: "SHA1", digits: 6, period: 30 });
  }

  /** Checks `code` for `operator` and, when valid and unused, marks it used (durably) before answering ok. */
  async consume(operator: string, secret: string, code: string): Promise<CodeCheck> {
    if (!/^\d{6}$/.test(code)) return "invalid";
    if (this.limit === undefined) return this.check(operator, secret, code);
    const outcome = await this.limit.attempt(
      `operator ${operator}`,
      () => this.check(operator, secret, code),
      (c) => c === "ok",
    );
    if (!outcome.limited) return outcome.result;
    this.limited?.(operator);
    return "invalid";
  }

  private async check(operator: string, secret: string, code: string): Promise<CodeCheck> {
    const totp = this.totp(secret);
    const timestamp = this.now();
    const delta = totp.validate({ token: code, timestamp, window: 1 });
    if (delta === null) return "invalid";
    const step = totp.counter({ timestamp }) + delta;
    return (await this.state.claim(operator, step)) ? "ok" : "invalid";
  }

  /** True when `code` is a code of `secret` for now (±1 step), whether or not it was used. */
  isCurrent(secret: string, code: string): boolean {
    if (!/^\d{6}$/.test(code)) return false;
    return this.totp(secret).validate({ token: code, timestamp: this.now(), window: 1 }) !== null;
  }
}

/**
 * Step-up confirmation with RFC 6238 codes (otpauth): a code is valid for its
 * 30-second step ±1 step of clock skew, and accepted once per operator. The
 * last accepted step is persisted, so a code cannot be replayed after a restart.
 */
import { readFile } from "node:fs/promises";
import { Secret, TOTP } from "otpauth";
import { writeFileAtomic } from "../store/filestore.js";

/** The result of checking a code. */
export type CodeCheck = "ok" | "invalid";

/** TOTP verification with replay protection, shared by the API and the dashboard. */
export class Confirmations {
  private lastStep: Record<string, number> = {};
  private loaded = false;

  constructor(
    /** JSON file remembering the last accepted step per operator. */
    private readonly stateFile: string,
    private readonly now: () => number = Date.now,
  ) {}

  private totp(secret: string): TOTP {
    return new TOTP({ secret: Secret.fromBase32(secret.replace(/=+$/, "")), algorithm: "SHA1", digits: 6, period: 30 });
  }

  private async load(): Promise<void> {
    if (this.loaded) return;
    try {
      const data = JSON.parse(await readFile(this.stateFile, "utf8")) as { last_step?: Record<string, number> };
      this.lastStep = data.last_step ?? {};
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    }
    this.loaded = true;
  }

  /** Checks `code` for `operator` and, when valid and unused, marks it used (durably) before answering ok. */
  async consume(operator: string, secret: string, code: string): Promise<CodeCheck> {
    if (!/^\d{6}$/.test(code)) return "invalid";
    await this.load();
    const totp = this.totp(secret);
    const timestamp = this.now();
    const delta = totp.validate({ token: code, timestamp, window: 1 });
    if (delta === null) return "invalid";
    const step = totp.counter({ timestamp }) + delta;
    if (step <= (this.lastStep[operator] ?? -1)) return "invalid";
    this.lastStep = { ...this.lastStep, [operator]: step };
    await writeFileAtomic(this.stateFile, `${JSON.stringify({ last_step: this.lastStep })}\n`);
    return "ok";
  }
}

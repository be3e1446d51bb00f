/**
 * `keyfence operator add NAME [--totp]` (SPEC §1): makes a new operator
 * credential and prints it once — the token, the lines to paste under
 * `admin.operators`, and with `--totp` the authenticator's `otpauth://` URI,
 * drawn as a QR code when stdout is a terminal.
 */
import { randomBytes } from "node:crypto";
import { parseArgs } from "node:util";
import { Secret, TOTP } from "otpauth";
import QRCode from "qrcode";
import { OPERATOR_NAME } from "../config/config.js";
import { secretHash } from "../policy/credential.js";

const USAGE = "usage: keyfence operator add NAME [--totp]";

/** A freshly made operator credential; `token` and `totpSecret` exist nowhere else. */
export interface NewOperator {
  readonly name: string;
  /** The bearer token: 256 random bits, base64url, after the `kfo_` prefix. */
  readonly token: string;
  readonly tokenSha256: string;
  /** 160 random bits in RFC 4648 base32 (the size RFC 4226 recommends), with `--totp`. */
  readonly totpSecret: string | undefined;
  /** The `otpauth://totp/keyfence:NAME?...` URI an authenticator app reads, with `--totp`. */
  readonly uri: string | undefined;
}

/** Makes a new credential for operator `name` (which must match {@link OPERATOR_NAME}). */
export function newOperator(name: string, totp: boolean): NewOperator {
  const token = `kfo_${randomBytes(32).toString("base64url")}`;
  if (!totp) return { name, token, tokenSha256: secretHash(token), totpSecret: undefined, uri: undefined };
  const secret = new Secret({ size: 20 });
  // The parameters keyfence verifies with (src/admin/confirm.ts): SHA-1, 6 digits, 30 s.
  const uri = new TOTP({
    issuer: "keyfence",
    label: name,
    secret,
    algorithm: "SHA1",
    digits: 6,
    period: 30,
  }).toString();
  return { name, token, tokenSha256: secretHash(token), totpSecret: secret.base32, uri };
}

/** The YAML list item to paste under `admin.operators:` (indented for the example configuration's layout). */
export function operatorYaml(op: NewOperator): string {
  // Every value double-quoted: a name such as "@ops", "123" or "true" stays a string.
  const lines = [`- name: ${JSON.stringify(op.name)}`, `  token_sha256: ${JSON.stringify(op.tokenSha256)}`];
  if (op.totpSecret !== undefined) lines.push(`  totp_secret: ${JSON.stringify(op.totpSecret)}`);
  return lines.map((l) => `    ${l}\n`).join("");
}

/** Draws `text` as a QR code with half-block characters and ANSI colours (dark on light whatever the terminal's theme). */
export function renderQr(text: string): Promise<string> {
  return QRCode.toString(text, { type: "terminal", small: true, errorCorrectionLevel: "M" });
}

/** Everything `operator add` prints, in order; the QR code only when `terminal`. */
export async function operatorReport(op: NewOperator, terminal: boolean): Promise<string> {
  const out = [
    `New operator ${JSON.stringify(op.name)}.`,
    "",
    "Token (shown this once: keyfence keeps only its SHA-256; sign in to the dashboard with it,",
    'or send it as "Authorization: Bearer TOKEN" to the management API):',
    "",
    `    ${op.token}`,
    "",
    "Paste under admin.operators in the configuration:",
    "",
    "  operators:",
    operatorYaml(op).trimEnd(),
    "",
  ];
  if (op.uri !== undefined) {
    out.push(
      "Authenticator app (RFC 6238: SHA-1, 6 digits, 30 s): scan the QR code or enter this URI:",
      "",
      `    ${op.uri}`,
      "",
    );
    if (terminal) out.push(await renderQr(op.uri), "");
  }
  return `${out.join("\n")}\n`;
}

/** Where the command writes; `isTTY` is true only on a terminal (undefined on a pipe or file). */
export interface Output {
  write(text: string): unknown;
  readonly isTTY?: boolean | undefined;
}

/** Runs `keyfence operator ARGS...`; resolves with the exit code. */
export async function operatorCommand(
  argv: readonly string[],
  stdout: Output = process.stdout,
  stderr: Output = process.stderr,
): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: [...argv],
      options: { totp: { type: "boolean" } },
      allowPositionals: true,
      strict: true,
    });
  } catch (err) {
    stderr.write(`keyfence operator: ${(err as Error).message}\n${USAGE}\n`);
    return 2;
  }
  const [verb, name, ...extra] = parsed.positionals;
  if (verb !== "add" || name === undefined || extra.length > 0) {
    stderr.write(`${USAGE}\n`);
    return 2;
  }
  if (!OPERATOR_NAME.test(name)) {
    stderr.write(
      `keyfence operator: the name ${JSON.stringify(name)} must be 1 to 64 characters of A-Z, a-z, 0-9, _ . @ -\n`,
    );
    return 2;
  }
  const op = newOperator(name, parsed.values.totp === true);
  stdout.write(await operatorReport(op, stdout.isTTY === true));
  return 0;
}

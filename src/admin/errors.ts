/**
 * Management API errors in one place: one table from stable code (sent as
 * `X-Keyfence-Reason`) to status and default message, like the proxy's
 * `policy/answers.ts`. A raising site may give a message that quotes the bad
 * input; the original error travels as `cause`.
 */

/** One invalid field of a request body. */
export interface FieldError {
  readonly field: string;
  readonly message: string;
}

const WWW_AUTHENTICATE = { "www-authenticate": 'Bearer realm="keyfence-admin"' } as const;

const TABLE = {
  missing_credential: { status: 401, message: "missing credential: send Authorization: Bearer <token>" },
  invalid_credential: { status: 401, message: "invalid credential" },
  missing_scope: { status: 403, message: "this API key lacks the required scope" },
  ip_not_allowed: { status: 403, message: "source IP is not allowed for this API key" },
  invalid_client_ip: { status: 400, message: "client IP address could not be determined" },
  too_many_attempts: { status: 429, message: "too many failed attempts; try again later" },
  not_found: { status: 404, message: "not found" },
  method_not_allowed: { status: 405, message: "method not allowed" },
  invalid_request: { status: 400, message: "invalid request" },
  unsupported_media_type: {
    status: 415,
    message: "the body must be JSON in UTF-8 (Content-Type: application/json, no other charset)",
  },
  payload_too_large: { status: 413, message: "the body is too large" },
  self_lockout: { status: 409, message: "the change would lock the calling key out" },
  confirmation_required: { status: 403, message: "confirmation required" },
  invalid_confirmation_code: { status: 403, message: "invalid confirmation code" },
  confirmation_code_used: {
    status: 403,
    message:
      "This code was already used (to sign in or to confirm). Wait for the next code from your authenticator, then confirm with it.",
  },
  csrf_failed: { status: 403, message: "missing or wrong CSRF token; reload the page" },
  conflict: { status: 409, message: "conflicting change" },
  audit_unavailable: {
    status: 503,
    message: "the audit log cannot be written, so nothing was changed; see the server log",
  },
  multiple_authorization: { status: 400, message: "multiple Authorization headers" },
  malformed_authorization: { status: 400, message: "malformed Authorization header" },
  store_unavailable: { status: 503, message: "key store unavailable" },
} as const satisfies Record<string, { status: number; message: string }>;

/** Stable machine-readable codes of management API errors. */
export type ApiErrorCode = keyof typeof TABLE;

/** The status code the management API answers `code` with. */
export function statusOfCode(code: ApiErrorCode): number {
  return TABLE[code].status;
}

/** What an error may carry besides its code and message. */
export interface ApiErrorExtras {
  /** The bad fields of a 400. */
  readonly errors?: readonly FieldError[];
  /** Headers to send with the answer (`Retry-After`, `Allow`, ...). */
  readonly headers?: Record<string, string>;
  readonly cause?: unknown;
}

/** An answer other than success; its status comes from the table, `errors` lists bad fields for 400s. */
export class ApiError extends Error {
  readonly status: number;
  readonly errors?: readonly FieldError[];
  readonly headers: Record<string, string>;

  constructor(
    readonly code: ApiErrorCode,
    message: string = TABLE[code].message,
    extras: ApiErrorExtras = {},
  ) {
    super(message, "cause" in extras ? { cause: extras.cause } : undefined);
    this.name = "ApiError";
    this.status = TABLE[code].status;
    if (extras.errors !== undefined) this.errors = extras.errors;
    this.headers = extras.headers ?? {};
  }

  /** The JSON body: `{message, errors?}`. */
  body(): { message: string; errors?: readonly FieldError[] } {
    return this.errors ? { message: this.message, errors: this.errors } : { message: this.message };
  }
}

/** 400 naming every bad field. */
export function invalid(errors: readonly FieldError[]): ApiError {
  const first = errors[0];
  const summary =
    errors.length === 1 && first ? `invalid ${first.field}: ${first.message}` : `${errors.length} invalid fields`;
  return new ApiError("invalid_request", summary, { errors });
}

/** 401 for a request without a credential, with the `WWW-Authenticate` challenge. */
export function missingCredential(): ApiError {
  return new ApiError("missing_credential", undefined, { headers: { ...WWW_AUTHENTICATE } });
}

/** 401 for a credential that matches nothing, with the `WWW-Authenticate` challenge. */
export function invalidCredential(): ApiError {
  return new ApiError("invalid_credential", undefined, { headers: { ...WWW_AUTHENTICATE } });
}

/** 429 `too_many_attempts`, telling the client when to try again. */
export function tooManyAttempts(retryAfterS: number): ApiError {
  return new ApiError("too_many_attempts", undefined, { headers: { "retry-after": String(retryAfterS) } });
}

/** 503 for a write while the key store is unreachable (SPEC §6). */
export function storeUnavailable(cause?: unknown): ApiError {
  return new ApiError("store_unavailable", undefined, { cause });
}

/**
 * Management API errors in one place: each has a status, a stable code (sent
 * as `X-Keyfence-Reason`) and a message that quotes the bad input; the
 * original error travels as `cause`.
 */

/** One invalid field of a request body. */
export interface FieldError {
  readonly field: string;
  readonly message: string;
}

/** Stable machine-readable codes of management API errors. */
export type ApiErrorCode =
  | "missing_credential"
  | "invalid_credential"
  | "missing_scope"
  | "ip_not_allowed"
  | "invalid_client_ip"
  | "too_many_attempts"
  | "not_found"
  | "method_not_allowed"
  | "invalid_request"
  | "unsupported_media_type"
  | "payload_too_large"
  | "self_lockout"
  | "confirmation_required"
  | "invalid_confirmation_code"
  | "csrf_failed"
  | "conflict"
  | "audit_unavailable"
  | "multiple_authorization"
  | "malformed_authorization";

/** An answer other than success; `errors` lists bad fields for 400s. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: ApiErrorCode,
    message: string,
    readonly errors?: readonly FieldError[],
    readonly headers: Record<string, string> = {},
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "ApiError";
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
  return new ApiError(400, "invalid_request", summary, errors);
}

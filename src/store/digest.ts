/**
 * A secret's SHA-256 as keyfence holds it in memory: its 32 bytes as a
 * one-byte string (each character one byte), 48 bytes of heap where the
 * 64 hex digits the keys file, Redis and the API use take 80; at a million
 * keys, 32 MB of a replica's RSS. The branded type keeps the two apart: a
 * hex text is never taken for a digest, and converting at every boundary
 * is the compiler's to enforce.
 */
import { hash } from "node:crypto";

/** A SHA-256 in lowercase hex, as the keys file, Redis and the configuration write it. */
export const SHA256_HEX = /^[0-9a-f]{64}$/;

declare const digestBrand: unique symbol;

/** The 32 bytes of a SHA-256 as a one-byte string; only {@link secretDigest} and {@link digestOfHex} make one. */
export type Digest = string & { readonly [digestBrand]: true };

/** The digest of a secret (what a request's key is looked up by). */
export function secretDigest(secret: string): Digest {
  // "binary" is Node's other name for latin1: one character per byte.
  return hash("sha256", secret, "binary") as Digest;
}

/** The digest written as `hex` (64 lowercase hex digits, as the keys file stores it); undefined for anything else. */
export function parseDigest(hex: string): Digest | undefined {
  return SHA256_HEX.test(hex) ? (Buffer.from(hex, "hex").toString("latin1") as Digest) : undefined;
}

/** {@link parseDigest} of hex already validated; throws on anything else. */
export function digestOfHex(hex: string): Digest {
  const digest = parseDigest(hex);
  if (digest === undefined) throw new Error("internal: a secret_sha256 that is not 64 lowercase hex digits");
  return digest;
}

/** The 64 lowercase hex digits of `digest`, as the keys file, Redis and the API write it. */
export function hexOfDigest(digest: Digest): string {
  return Buffer.from(digest, "latin1").toString("hex");
}

/**
 * A secret's SHA-256 as keyfence holds it in memory: its 32 bytes as a
 * one-byte string (each character one byte), 48 bytes of heap where the
 * 64 hex digits the keys file, Redis and the API use take 80; at a million
 * keys, 32 MB of a replica's RSS. The branded type keeps the two apart: a
 * hex text is never taken for a digest, and converting at every boundary
 * is the compiler's to enforce.
 */
import { hash } from "node:crypto";
import { SHA256_HEX } from "./keysfile.js";

declare const digestBrand: unique symbol;

/** The 32 bytes of a SHA-256 as a one-byte string; only {@link secretDigest} and {@link digestOfHex} make one. */
export type Digest = string & { readonly [digestBrand]: true };

/** The digest of a secret (what a request's key is looked up by). */
export function secretDigest(secret: string): Digest {
  // "binary" is Node's other name for latin1: one character per byte.
  return hash("sha256", secret, "binary") as Digest;
}

/** The digest written as `hex` (64 lowercase hex digits, as the keys file stores it); throws on anything else. */
export function digestOfHex(hex: string): Digest {
  if (!SHA256_HEX.test(hex)) throw new Error("internal: a secret_sha256 that is not 64 lowercase hex digits");
  return Buffer.from(hex, "hex").toString("latin1") as Digest;
}

/** The 64 lowercase hex digits of `digest`, as the keys file, Redis and the API write it. */
export function hexOfDigest(digest: Digest): string {
  return Buffer.from(digest, "latin1").toString("hex");
}

/**
 * A secret's SHA-256 held as its bytes: the hex text round-trips through it
 * for every byte, it agrees with an independent SHA-256, and hex that is not
 * a lowercase SHA-256 is never taken for one.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { test } from "node:test";
import fc from "fast-check";
import { digestOfHex, hexOfDigest, secretDigest } from "../../src/store/digest.js";

const sha256Hex = (s: string): string => createHash("sha256").update(s, "utf8").digest("hex");

test("the hex text of any 32 bytes round-trips through a digest of 32 one-byte characters", () => {
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 32, maxLength: 32 }), (bytes) => {
      const hex = Buffer.from(bytes).toString("hex");
      const d = digestOfHex(hex);
      assert.equal(d.length, 32);
      for (let i = 0; i < 32; i++) assert.equal(d.charCodeAt(i), bytes[i]);
      assert.equal(hexOfDigest(d), hex);
    }),
  );
});

test("a secret's digest is its SHA-256 over UTF-8, as the keys file's secret_sha256 says", () => {
  assert.equal(hexOfDigest(secretDigest("abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  fc.assert(
    fc.property(fc.string({ unit: "binary" }), (s) => {
      assert.equal(hexOfDigest(secretDigest(s)), sha256Hex(s));
      assert.equal(secretDigest(s), digestOfHex(sha256Hex(s)));
    }),
  );
});

test("anything but 64 lowercase hex digits is refused, never read as a digest", () => {
  const good = sha256Hex("x");
  for (const bad of [
    "",
    good.slice(1),
    `${good}0`,
    good.toUpperCase(),
    `${good.slice(0, 63)}g`,
    `${good.slice(0, 62)} 0`,
    `0x${good.slice(2)}`,
    `${good.slice(0, 63)}\n`,
  ]) {
    assert.throws(() => digestOfHex(bad), /not 64 lowercase hex digits/, JSON.stringify(bad));
  }
});

/** Request-id UUIDs: RFC 9562 version 4 text, random, each its own string. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { randomUuid } from "../../src/util/uuid.js";

const V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

test("version 4 text, unique across several refills of the random pool", () => {
  const first = randomUuid();
  const seen = new Set<string>();
  for (let i = 0; i < 5000; i++) {
    const id = randomUuid();
    assert.match(id, V4);
    assert.ok(!seen.has(id), `repeated ${id}`);
    seen.add(id);
  }
  assert.ok(!seen.has(first));
});

test("every random digit takes every value (the version and variant digits keep theirs)", () => {
  const values = Array.from({ length: 36 }, () => new Set<string>());
  for (let i = 0; i < 3000; i++) {
    const id = randomUuid();
    for (let k = 0; k < 36; k++) values[k]?.add(id[k] ?? "");
  }
  for (let k = 0; k < 36; k++) {
    const n = values[k]?.size ?? 0;
    if ([8, 13, 18, 23].includes(k)) assert.equal(n, 1, `position ${k} is a dash`);
    else if (k === 14) assert.deepEqual([...(values[k] ?? [])], ["4"]);
    else if (k === 19) assert.equal(n, 4, "variant digit is one of 8 9 a b");
    else assert.equal(n, 16, `position ${k} took ${n} of 16 hex values`);
  }
});

/** Atomic file replacement. */
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import fc from "fast-check";
import { writeFileAtomic } from "../../src/util/atomic.js";

test("property: a file written as parts (more than one writev holds) is their concatenation", async () => {
  const dir = mkdtempSync(join(tmpdir(), "keyfence-parts-"));
  try {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.uint8Array({ maxLength: 8 }), { maxLength: 2100 }),
        fc.array(fc.string({ maxLength: 4 }), { maxLength: 3 }),
        async (buffers, strings) => {
          const parts: (string | Uint8Array)[] = [...strings, ...buffers];
          const file = join(dir, "f");
          await writeFileAtomic(file, parts);
          assert.deepEqual(readFileSync(file), Buffer.concat(parts.map((p) => Buffer.from(p))));
        },
      ),
      { numRuns: 30 },
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

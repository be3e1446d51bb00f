// Runs every compiled *.test.js under dist/test with the quiet reporter.
// (Node 20's `node --test DIR` would also run helper modules as test files.)
import { spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { join } from "node:path";

const root = "dist/test";
const files = readdirSync(root, { recursive: true })
  .map(String)
  .filter(
    (f) => f.endsWith(".test.js") && (process.argv.length <= 2 || process.argv.slice(2).some((a) => f.includes(a))),
  )
  .sort()
  .map((f) => join(root, f));
const r = spawnSync(
  process.execPath,
  [
    "--test",
    "--test-concurrency=2",
    "--test-timeout=120000",
    "--test-force-exit",
    "--test-reporter=./test/reporter.mjs",
    ...files,
  ],
  { stdio: "inherit" },
);
process.exit(r.status ?? 1);

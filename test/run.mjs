// Runs every compiled *.test.js under dist/test with the quiet reporter.
// (Node 20's `node --test DIR` would also run helper modules as test files.)
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const root = "dist/test";
const wanted = process.argv.slice(2);
const all = readdirSync(root, { recursive: true })
  .map(String)
  .filter((f) => f.endsWith(".test.js"))
  .sort();
// An argument that matches no file is a typo, not a request for the whole suite.
const unmatched = wanted.filter((a) => !all.some((f) => f.includes(a)));
if (unmatched.length > 0) {
  process.stderr.write(`✖ no test file under ${root} matches ${unmatched.map((a) => JSON.stringify(a)).join(", ")}\n`);
  process.exit(1);
}
const files = all.filter((f) => wanted.length === 0 || wanted.some((a) => f.includes(a))).map((f) => join(root, f));
const seenDir = mkdtempSync(join(tmpdir(), "keyfence-tests-"));
const seenFile = join(seenDir, "seen");
const r = spawnSync(
  process.execPath,
  ["--test", "--test-concurrency=2", "--test-timeout=120000", "--test-reporter=./test/reporter.mjs", ...files],
  { stdio: "inherit", env: { ...process.env, KEYFENCE_TEST_SEEN: seenFile } },
);
// Every file must have reported results: a test file whose results never
// reach the runner would otherwise pass silently (seen once on CI: a whole
// file missing from the counts, with "fail 0"). No --test-force-exit: it
// ended test processes before their last results reached the runner (a
// run's counts lost a whole suite of 14 tests); a test file that leaves a
// handle open now fails by its timeout instead.
let seen = [];
try {
  seen = readFileSync(seenFile, "utf8").split("\n").filter(Boolean);
} catch {
  // no file: the reporter saw nothing at all
}
rmSync(seenDir, { recursive: true, force: true });
const missing = files.map((f) => resolve(f)).filter((f) => !seen.includes(f));
if (missing.length > 0) {
  process.stdout.write(
    `✖ no results from ${missing.length} test file(s):\n${missing.map((f) => `    ${f}\n`).join("")}`,
  );
  process.exit(1);
}
process.exit(r.status ?? 1);

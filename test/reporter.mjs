// Quiet test reporter: prints each failure in full (a test file that died
// before reporting gets the end of its stderr), one line per skip with its
// reason (such as which peer binary to install), then the closing summary
// (tests, pass, fail, ...) that CI reads. Nothing else. It also writes the
// files that reported results to $KEYFENCE_TEST_SEEN, which test/run.mjs checks.
import { appendFileSync } from "node:fs";
import { inspect } from "node:util";

export default async function* quiet(source) {
  const failures = [];
  const skips = new Set();
  const stderr = new Map();
  const files = new Set();
  for await (const event of source) {
    if ((event.type === "test:pass" || event.type === "test:fail") && event.data.file && !files.has(event.data.file)) {
      // Written as seen, so a runner that dies early still leaves the list of files that reported.
      files.add(event.data.file);
      if (process.env.KEYFENCE_TEST_SEEN) appendFileSync(process.env.KEYFENCE_TEST_SEEN, `${event.data.file}\n`);
    }
    if (event.type === "test:pass" && event.data.skip) {
      const reason = typeof event.data.skip === "string" ? `: ${event.data.skip}` : "";
      skips.add(`- skipped ${event.data.name}${reason}\n`);
    } else if (event.type === "test:stderr" && event.data.file) {
      // Kept per file (the last 4 KiB) for a file that fails without a test to blame.
      stderr.set(event.data.file, ((stderr.get(event.data.file) ?? "") + event.data.message).slice(-4096));
    }
    if (event.type === "test:fail") {
      const { name, nesting, details, file } = event.data;
      // Suites fail when a child does; report the leaf only. A suite's own failure (a hook) is reported.
      if (details?.type === "suite" && details.error?.failureType === "subtestsFailed") continue;
      failures.push({ name, nesting, file, error: details?.error, stderr: stderr.get(name) });
    } else if (event.type === "test:diagnostic" && event.data.nesting === 0) {
      if (failures.length > 0) {
        yield "\nFailed tests:\n\n";
        for (const f of failures.splice(0)) {
          const cause = f.error?.cause ?? f.error;
          yield `✖ ${f.name}${f.file ? ` (${f.file})` : ""}\n${inspect(cause, { depth: 4 }).replace(/^/gm, "    ")}\n\n`;
          if (f.stderr) yield `${f.stderr.replace(/^/gm, "    ")}\n`;
        }
      }
      if (skips.size > 0) {
        yield "\n";
        for (const line of skips) yield line;
        skips.clear();
      }
      yield `ℹ ${event.data.message}\n`;
    }
  }
}

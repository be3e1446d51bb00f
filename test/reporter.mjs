// Quiet test reporter: prints each failure in full, then the closing summary
// (tests, pass, fail, ...) that CI reads. Nothing else.
import { inspect } from "node:util";

export default async function* quiet(source) {
  const failures = [];
  for await (const event of source) {
    if (event.type === "test:fail") {
      const { name, nesting, details, file } = event.data;
      // Suites fail when a child does; report the leaf only.
      if (details?.type === "suite") continue;
      failures.push({ name, nesting, file, error: details?.error });
    } else if (event.type === "test:diagnostic" && event.data.nesting === 0) {
      if (failures.length > 0) {
        yield "\nFailed tests:\n\n";
        for (const f of failures.splice(0)) {
          const cause = f.error?.cause ?? f.error;
          yield `✖ ${f.name}${f.file ? ` (${f.file})` : ""}\n${inspect(cause, { depth: 4 }).replace(/^/gm, "    ")}\n\n`;
        }
      }
      yield `ℹ ${event.data.message}\n`;
    }
  }
}

/**
 * `keyfence check-config` (SPEC §1) through the real executable: the errors of
 * the configuration and of its keys file in one run, each as
 * `FILE:LINE:COL: PATH ("VALUE"): MESSAGE` on stderr, the summary on stdout,
 * and what YAML made of an unquoted address.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { createHash } from "node:crypto";
import { parseKeysFile } from "../../src/store/keysfile.js";
import { formatProblem } from "../../src/util/yaml.js";
import { BIN } from "../helpers/spawn.js";

const HASH = createHash("sha256").update("s").digest("hex");
/** One error line: FILE:LINE:COL: then PATH ("VALUE"): or PATH: (or nothing for the whole file), then the message. */
const ERROR_LINE = /^[^:\s]+:\d+:\d+: (?:[A-Za-z_][\w.[\]]*(?: \("(?:[^"\\]|\\.)*"\))?: )?\S.*$/;

function check(
  dir: string,
  config: string,
  env: NodeJS.ProcessEnv = {},
): { code: number | null; out: string; err: string } {
  const r = spawnSync(process.execPath, [BIN, "check-config", ...(config === "" ? [] : ["--config", config])], {
    cwd: dir,
    env: { ...process.env, KEYFENCE_CONFIG: "", ...env },
    encoding: "utf8",
    timeout: 20_000,
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

function keysWith(entries: string): string {
  return `keys:\n  - id: k1\n    secret_sha256: "${HASH}"\n    ip_allow_list:\n${entries}`;
}

describe("keyfence check-config", () => {
  let dir: string;
  const write = (name: string, text: string): string => {
    writeFileSync(join(dir, name), text);
    return name;
  };
  before(() => {
    dir = mkdtempSync(join(tmpdir(), "keyfence-check-"));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  test("a broken configuration does not hide a broken keys file it still names: every error of both, in one run", () => {
    write("bad-keys.yaml", keysWith("      - 10.0.0.1/8\n      - 1.2.3\n"));
    const config = write(
      "both.yaml",
      'upstream: "ftp://x"\ntrusted_proxies: [10.0.0.1/8]\nkeys:\n  file: bad-keys.yaml\n  unknown: maybe\n  max_entries: 0\n',
    );
    const r = check(dir, config);
    assert.equal(r.code, 1);
    assert.equal(r.out, "", "no summary on stdout");
    const lines = r.err.trimEnd().split("\n");
    assert.deepEqual(
      lines.map((l) => l.replace(/(\("[^"]*"\)): .*$/, "$1")),
      [
        'both.yaml:1:11: upstream ("ftp://x")',
        'both.yaml:2:19: trusted_proxies[0] ("10.0.0.1/8")',
        'both.yaml:5:12: keys.unknown ("maybe")',
        'both.yaml:6:16: keys.max_entries ("0")',
        'bad-keys.yaml:5:9: keys[0].ip_allow_list[0] ("10.0.0.1/8")',
        'bad-keys.yaml:6:9: keys[0].ip_allow_list[1] ("1.2.3")',
      ],
      r.err,
    );
    for (const l of lines) assert.match(l, ERROR_LINE);
  });

  test("the keys file is checked with the default max_entries when the configured one is invalid", () => {
    write("many.yaml", keysWith("      - 10.0.0.1\n      - 10.0.0.2\n"));
    const r = check(dir, write("many-cfg.yaml", 'upstream: "http://x"\nkeys:\n  file: many.yaml\n  max_entries: -1\n'));
    assert.equal(r.code, 1);
    assert.equal(r.err.trimEnd().split("\n").length, 1, r.err);
  });

  test("a missing keys file is reported beside the configuration's own errors", () => {
    const r = check(dir, write("gone.yaml", "upstream: 5\nkeys:\n  file: nowhere.yaml\n"));
    assert.equal(r.code, 1);
    assert.match(r.err, /^gone\.yaml:1:11: upstream \("5"\): must be an http/m);
    assert.match(r.err, /^nowhere\.yaml:1:1: cannot read the keys file: it does not exist$/m);
  });

  test("a configuration that names no keys file (or cannot be parsed) reports only its own errors", () => {
    for (const text of ['upstream: "http://x"\n', 'upstream: "http://x"\nkeys:\n  file: [a]\n', "upstream: [\n"]) {
      const r = check(dir, write("nokeys.yaml", text));
      assert.equal(r.code, 1, text);
      assert.match(r.err, /^nokeys\.yaml:\d+:\d+: /, text);
      assert.doesNotMatch(r.err, /keys file/, text);
    }
  });

  test("the summary counts in words: 1 key, 1 operator, 1 allow-list entry; 0 and 2 in plurals", () => {
    const op = (n: string): string => `    - name: ${n}\n      token_sha256: "${HASH}"\n`;
    write("one.yaml", keysWith("      - 10.0.0.1\n"));
    const one = check(
      dir,
      write("one-cfg.yaml", `upstream: "http://x"\nkeys:\n  file: one.yaml\nadmin:\n  operators:\n${op("a")}`),
    );
    assert.equal(one.code, 0, one.err);
    assert.match(one.out, /: 1 key, 1 restricted, 1 allow-list entry$/m);
    assert.match(one.out, /, 1 operator$/m);
    write(
      "two.yaml",
      `${keysWith("      - 10.0.0.1\n      - 10.0.0.2\n")}  - id: k2\n    secret_sha256: "${"1".repeat(64)}"\n`,
    );
    const two = check(
      dir,
      write(
        "two-cfg.yaml",
        `upstream: "http://x"\nkeys:\n  file: two.yaml\nadmin:\n  operators:\n${op("a")}${op("b")}`,
      ),
    );
    assert.equal(two.code, 0, two.err);
    assert.match(two.out, /: 2 keys, 1 restricted, 2 allow-list entries$/m);
    assert.match(two.out, /, 2 operators$/m);
    write("none.yaml", "keys: []\n");
    const none = check(dir, write("none-cfg.yaml", 'upstream: "http://x"\nkeys:\n  file: none.yaml\nadmin: {}\n'));
    assert.equal(none.code, 0, none.err);
    assert.match(none.out, /: 0 keys, 0 restricted, 0 allow-list entries$/m);
    assert.match(none.out, /, 0 operators$/m);
  });

  test("--config wins over KEYFENCE_CONFIG, which names the file otherwise", () => {
    write("k.yaml", "keys: []\n");
    const good = write("good.yaml", 'upstream: "http://x"\nkeys:\n  file: k.yaml\n');
    const bad = write("bad.yaml", 'upstream: "http://x"\nkeys:\n  file: k.yaml\nmode: maybe\n');
    assert.equal(check(dir, good, { KEYFENCE_CONFIG: bad }).code, 0);
    const r = check(dir, bad, { KEYFENCE_CONFIG: good });
    assert.equal(r.code, 1);
    assert.match(r.err, /^bad\.yaml:4:7: mode/m);
    assert.equal(check(dir, "", { KEYFENCE_CONFIG: good }).code, 0);
    assert.equal(check(dir, "", { KEYFENCE_CONFIG: bad }).code, 1);
  });

  test("an address YAML reads as a number, boolean or null says so, in the keys file and in trusted_proxies", () => {
    write("typed.yaml", keysWith("      - 127.1\n      - true\n      - 8.8.8.8\n"));
    const r = check(
      dir,
      write(
        "typed-cfg.yaml",
        'upstream: "http://x"\ntrusted_proxies: [10, "10.0.0.0/8", ~]\nkeys:\n  file: typed.yaml\n',
      ),
    );
    assert.equal(r.code, 1);
    assert.deepEqual(r.err.trimEnd().split("\n"), [
      'typed-cfg.yaml:2:19: trusted_proxies[0] ("10"): YAML read 10 as a number; write addresses as strings — and short forms like 10 are refused anyway',
      'typed-cfg.yaml:2:37: trusted_proxies[2] ("~"): YAML read ~ as null; write addresses as strings',
      'typed.yaml:5:9: keys[0].ip_allow_list[0] ("127.1"): YAML read 127.1 as a number; write addresses as strings — and short forms like 127.1 are refused anyway',
      'typed.yaml:6:9: keys[0].ip_allow_list[1] ("true"): YAML read true as a boolean; write addresses as strings',
    ]);
  });
});

describe("keys file entries that YAML does not read as strings", () => {
  const cases: Array<{ written: string; message: RegExp }> = [
    { written: "127.1", message: /^YAML read 127\.1 as a number; .* short forms like 127\.1 are refused anyway$/ },
    { written: "127.10", message: /^YAML read 127\.10 as a number; .* short forms like 127\.10 are refused anyway$/ },
    { written: "10", message: /^YAML read 10 as a number; .*short forms like 10 are refused anyway$/ },
    { written: "2130706433", message: /^YAML read 2130706433 as a number; .*short forms like 2130706433 are/ },
    { written: "0x7f000001", message: /^YAML read 0x7f000001 as a number; .*0x7f000001 is not an address either$/ },
    { written: "0o17", message: /^YAML read 0o17 as a number; / },
    { written: "1e3", message: /^YAML read 1e3 as a number; .*1e3 is not an address either$/ },
    { written: "-1", message: /^YAML read -1 as a number; .*-1 is not an address either$/ },
    { written: ".inf", message: /^YAML read \.inf as a number; / },
    { written: ".nan", message: /^YAML read \.nan as a number; / },
    { written: "true", message: /^YAML read true as a boolean; write addresses as strings$/ },
    { written: "False", message: /^YAML read False as a boolean; / },
    { written: "null", message: /^YAML read null as null; write addresses as strings$/ },
    { written: "~", message: /^YAML read ~ as null; / },
    { written: "", message: /^the entry is empty \(YAML read it as null\); write an address or remove the line$/ },
  ];
  for (const { written, message } of cases) {
    for (const style of ["block", "flow"] as const) {
      test(`${style}: ${JSON.stringify(written)}`, () => {
        if (style === "flow" && written === "") return; // `[ , ]` is a syntax error, not an empty entry
        const list = style === "block" ? `\n      - 10.0.0.1\n      - ${written}\n` : ` [10.0.0.1, ${written}]\n`;
        const r = parseKeysFile(
          "k.yaml",
          `keys:\n  - id: k1\n    secret_sha256: "${HASH}"\n    ip_allow_list:${list}`,
          10,
        );
        assert.equal(r.ok, false);
        if (r.ok) return;
        assert.equal(r.problems.length, 1, r.problems.map(formatProblem).join("\n"));
        const p = r.problems[0];
        assert.equal(p?.path, "keys[0].ip_allow_list[1]");
        assert.equal(p?.value, written, "the entry is quoted as written");
        assert.match(p?.message ?? "", message);
        assert.equal(p?.line, style === "block" ? 6 : 4);
      });
    }
  }

  test("the same entries quoted are strings: the address parser's own message, never 'YAML read'", () => {
    for (const { written } of cases) {
      const r = parseKeysFile(
        "k.yaml",
        `keys:\n  - id: k1\n    secret_sha256: "${HASH}"\n    ip_allow_list: ["${written}"]\n`,
        10,
      );
      assert.equal(r.ok, false, written);
      if (!r.ok) assert.doesNotMatch(r.problems[0]?.message ?? "", /YAML read/, written);
    }
  });
});

/** `admin.operators_file`: operators kept in their own file (a Kubernetes Secret, a file only keyfence reads). */
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { parseConfig } from "../../src/config/config.js";
import { formatProblem } from "../../src/util/yaml.js";

const A = "a".repeat(64);
const B = "b".repeat(64);

describe("admin.operators_file", () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), "keyfence-opsfile-"));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  const parse = (admin: string, files: Record<string, string> = {}) => {
    for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
    return parseConfig(
      join(dir, "keyfence.yaml"),
      `upstream: "http://127.0.0.1:3000"\nkeys: {file: keys.yaml}\nadmin:\n${admin}`,
    );
  };
  const problems = (admin: string, files: Record<string, string> = {}): string[] => {
    const r = parse(admin, files);
    assert.equal(r.ok, false, "expected an invalid configuration");
    return r.ok ? [] : r.problems.map(formatProblem);
  };

  test("operators from the file join those of admin.operators; the path is relative to the configuration", () => {
    mkdirSync(join(dir, "secret"), { recursive: true });
    writeFileSync(
      join(dir, "secret/operators.yaml"),
      `- name: alice\n  token_sha256: "${B}"\n  totp_secret: JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP\n`,
    );
    const ok = parse(`  operators: [{name: ops, token_sha256: "${A}"}]\n  operators_file: secret/operators.yaml\n`);
    assert.ok(ok.ok, ok.ok ? "" : ok.problems.map(formatProblem).join("\n"));
    assert.deepEqual(ok.config.admin?.operators, [
      { name: "ops", tokenSha256: A, totpSecret: undefined },
      { name: "alice", tokenSha256: B, totpSecret: "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP" },
    ]);
  });

  test("an empty file (an empty Secret) adds nobody", () => {
    const r = parse("  operators_file: empty.yaml\n", { "empty.yaml": "" });
    assert.ok(r.ok);
    assert.deepEqual(r.config.admin?.operators, []);
  });

  test("errors are located in the operators file, secrets unquoted", () => {
    const p = problems("  operators_file: ops.yaml\n", {
      "ops.yaml": `- name: alice\n  token_sha256: "${B}"\n- name: bob\n  token_sha256: nothex\n  totp_secret: "not base32!"\n`,
    });
    assert.equal(p.length, 2, p.join("\n"));
    assert.match(p[0] ?? "", /ops\.yaml:4:17: \[1\]\.token_sha256: must be 64 lowercase hex/);
    assert.match(p[1] ?? "", /ops\.yaml:5:16: \[1\]\.totp_secret: must be an RFC 4648 base32/);
    assert.doesNotMatch(p.join("\n"), /not base32!/);
  });

  test("a name in both places is a duplicate", () => {
    const p = problems(`  operators: [{name: alice, token_sha256: "${A}"}]\n  operators_file: dup.yaml\n`, {
      "dup.yaml": `- {name: alice, token_sha256: "${B}"}\n`,
    });
    assert.equal(p.length, 1);
    assert.match(p[0] ?? "", /dup\.yaml:1:10: \[0\]\.name \("alice"\): duplicate operator name/);
  });

  const bad: Array<[string, Record<string, string>, RegExp]> = [
    ["  operators_file: missing.yaml\n", {}, /missing\.yaml:1:1: cannot read the operators file: ENOENT/],
    ["  operators_file: map.yaml\n", { "map.yaml": "name: alice\n" }, /map\.yaml:1:1: must be a list of operators/],
    ["  operators_file: syntax.yaml\n", { "syntax.yaml": "- {name: [\n" }, /syntax\.yaml:\d+:\d+: YAML syntax/],
    ["  operators_file: 42\n", {}, /keyfence\.yaml:4:19: admin\.operators_file \("?42"?\): must be a path/],
    [
      "  operators_file: unknown.yaml\n",
      { "unknown.yaml": "- {name: x, token: y}\n" },
      /unknown\.yaml:1:13: \[0\]\.token/,
    ],
  ];
  for (const [admin, files, expected] of bad) {
    test(`refused: ${admin.trim()} ${JSON.stringify(files)}`, () => {
      assert.match(problems(admin, files).join("\n"), expected);
    });
  }
});

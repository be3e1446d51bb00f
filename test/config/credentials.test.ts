import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { parseConfig } from "../../src/config/config.js";
import { formatProblem } from "../../src/util/yaml.js";

const FILE = "/etc/keyfence/keyfence.yaml";
const doc = (credentials: string): string =>
  `upstream: "http://127.0.0.1:3000"\nkeys:\n  file: keys.yaml\n  credentials: ${credentials}\n`;

describe("keys.credentials", () => {
  test("default: bearer only", () => {
    const r = parseConfig(FILE, 'upstream: "http://127.0.0.1:3000"\nkeys:\n  file: keys.yaml\n');
    assert.ok(r.ok);
    assert.deepEqual(r.config.keys.credentials, [{ kind: "bearer" }]);
  });
  test("every place", () => {
    const r = parseConfig(
      FILE,
      doc("[bearer, {header: X-API-Key}, {basic: username}, {basic: password}, {query: api_key}]"),
    );
    assert.ok(r.ok, r.ok ? "" : r.problems.map(formatProblem).join("\n"));
    assert.deepEqual(r.config.keys.credentials, [
      { kind: "bearer" },
      { kind: "header", name: "x-api-key" },
      { kind: "basic", half: "username" },
      { kind: "basic", half: "password" },
      { kind: "query", name: "api_key" },
    ]);
  });
  const bad: Array<[string, string, RegExp]> = [
    ["an empty list", "[]", /non-empty list/],
    ["not a list", "bearer", /non-empty list/],
    ["an unknown word", "[basic]", /must be bearer/],
    ["two fields in one item", "[{header: X-A, query: a}]", /exactly one/],
    ["an unknown field", "[{cookie: a}]", /unknown field/],
    ["Authorization as a header", "[{header: Authorization}]", /read by the places bearer/],
    ["a hop-by-hop header", "[{header: Connection}]", /cannot carry/],
    ["a header name with a space", '[{header: "X API"}]', /header name/],
    ["a basic half that is neither", "[{basic: both}]", /username.*password/],
    ["a query name with &", '[{query: "a&b"}]', /query parameter name/],
    ["bearer twice", "[bearer, bearer]", /listed twice/],
    ["a header twice in another case", "[{header: X-Key}, {header: x-key}]", /listed twice/],
    ["query names an upstream reads alike", "[{query: api_key}, {query: API.key}]", /listed twice/],
  ];
  for (const [desc, value, message] of bad) {
    test(`refused: ${desc}, located`, () => {
      const r = parseConfig(FILE, doc(value));
      assert.equal(r.ok, false);
      const text = r.ok ? "" : r.problems.map(formatProblem).join("\n");
      assert.match(text, message);
      assert.match(text, /keyfence\.yaml:\d+:\d+: keys\.credentials/);
    });
  }
});

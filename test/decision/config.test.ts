/** The `decision` section of the configuration (SPEC §2, §8): valid forms, every problem located, warnings. */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { parseConfig } from "../../src/config/config.js";
import { formatProblem } from "../../src/util/yaml.js";

const FILE = "/etc/keyfence/keyfence.yaml";
const BASE = 'upstream: "http://127.0.0.1:3000"\nkeys: {file: keys.yaml}\ntrusted_proxies: [loopback]\n';

describe("configuration: decision", () => {
  const valid: Array<[string, string, { host: string; port: number } | undefined]> = [
    ["absent: no listener", "", undefined],
    ["null: no listener", "decision:\n", undefined],
    ["IPv4", 'decision: {listen: "127.0.0.1:8081"}\n', { host: "127.0.0.1", port: 8081 }],
    ["IPv6", 'decision: {listen: "[::1]:0"}\n', { host: "::1", port: 0 }],
    ["a name", 'decision: {listen: "localhost:9"}\n', { host: "localhost", port: 9 }],
  ];
  for (const [desc, yaml, listen] of valid) {
    test(`valid: ${desc}`, () => {
      const r = parseConfig(FILE, BASE + yaml);
      assert.ok(r.ok, r.ok ? "" : r.problems.map(formatProblem).join("\n"));
      assert.deepEqual(r.config.decision, listen === undefined ? undefined : { listen });
      assert.deepEqual(r.config.warnings, []);
    });
  }

  const invalid: Array<[string, string, RegExp]> = [
    ["no listen", "decision: {}\n", /:4:\d+: decision: missing field "listen"/],
    [
      "a port out of range",
      'decision: {listen: "127.0.0.1:65536"}\n',
      /:4:\d+: decision\.listen \("127\.0\.0\.1:65536"\): must be "host:port"/,
    ],
    ["a bare port", "decision: {listen: 8081}\n", /decision\.listen \("8081"\): must be "host:port"/],
    [
      "an unknown field",
      'decision: {listen: "127.0.0.1:1", upstream: x}\n',
      /decision\.upstream: unknown field \(allowed: listen\)/,
    ],
    ["not a mapping", 'decision: "127.0.0.1:8081"\n', /decision \("127\.0\.0\.1:8081"\): must be a mapping/],
  ];
  for (const [desc, yaml, expected] of invalid) {
    test(`invalid: ${desc}`, () => {
      const r = parseConfig(FILE, BASE + yaml);
      assert.equal(r.ok, false);
      const lines = r.ok ? [] : r.problems.map(formatProblem);
      assert.ok(
        lines.some((l) => expected.test(l)),
        lines.join("\n"),
      );
    });
  }

  test("warnings: nobody trusted, and a listener off loopback", () => {
    const r = parseConfig(
      FILE,
      'upstream: "http://127.0.0.1:3000"\nkeys: {file: keys.yaml}\ndecision: {listen: "0.0.0.0:8081"}\n',
    );
    assert.ok(r.ok);
    assert.equal(r.config.warnings.length, 2, r.config.warnings.join("\n"));
    assert.match(r.config.warnings[0] ?? "", /trusted_proxies is empty/);
    assert.match(r.config.warnings[1] ?? "", /decision listener 0\.0\.0\.0:8081 is not on loopback/);
  });
});

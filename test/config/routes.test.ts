/** `route_scopes`, `sandbox_upstream` and `forward_identity` (SPEC §9): defaults, every problem located, warnings. */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { parseConfig } from "../../src/config/config.js";
import { parseKeysFile } from "../../src/store/keysfile.js";
import { formatProblem } from "../../src/util/yaml.js";

const FILE = "/etc/keyfence/keyfence.yaml";
const BASE = 'upstream: "http://127.0.0.1:3000"\nkeys:\n  file: keys.yaml\n';

describe("route_scopes, sandbox_upstream, forward_identity", () => {
  test("defaults: no rules, no sandbox upstream, no identity", () => {
    const r = parseConfig(FILE, BASE);
    assert.ok(r.ok);
    assert.deepEqual(r.config.routeScopes.rules, []);
    assert.equal(r.config.sandboxUpstream, undefined);
    assert.equal(r.config.forwardIdentity, false);
  });

  test("valid rules compile in order; GET covers HEAD; methods upper-cased", () => {
    const text = `${BASE}route_scopes:
  - { methods: [post], path: "/v2/messages/*", scope: "messages:send" }
  - { methods: [GET], path: /v2/reports, scope: reports:read }
  - { path: "/*", scope: any }
sandbox_upstream: "http://127.0.0.1:3001/sb"
forward_identity: true
`;
    const r = parseConfig(FILE, text);
    assert.ok(r.ok, r.ok ? "" : r.problems.map(formatProblem).join("\n"));
    const [a, b, c] = r.config.routeScopes.rules;
    assert.deepEqual([...(a?.methods ?? [])], ["POST"]);
    assert.equal(a?.prefix, true);
    assert.equal(a?.path, "/v2/messages");
    assert.deepEqual([...(b?.methods ?? [])].sort(), ["GET", "HEAD"]);
    assert.equal(b?.prefix, false);
    assert.equal(c?.methods, undefined);
    assert.equal(c?.path, "");
    assert.equal(r.config.sandboxUpstream?.href, "http://127.0.0.1:3001/sb");
    assert.equal(r.config.forwardIdentity, true);
  });

  test("every problem at once, located, with the bad value", () => {
    const text = `${BASE}route_scopes:
  - { path: "/v2/messages/", scope: "messages:send" }
  - { methods: [], path: /x, scope: s }
  - { methods: ["GE T"], path: /x, scope: s }
  - { path: "/v2/*/x", scope: s }
  - { path: "/v2/%61", scope: s }
  - { path: "/v2/../x", scope: s }
  - { path: /x, scope: "bad scope" }
  - { path: /x }
  - { scope: s }
  - { path: /x, scope: s, extra: 1 }
  - "/x"
sandbox_upstream: "ftp://x"
forward_identity: "yes"
`;
    const r = parseConfig(FILE, text);
    assert.equal(r.ok, false);
    const p = r.ok ? [] : r.problems.map(formatProblem);
    const expect = [
      /:5:13: route_scopes\[0\]\.path \("\/v2\/messages\/"\): must not end with a slash/,
      /:6:16: route_scopes\[1\]\.methods \("\[\]"\): must be a non-empty list/,
      /route_scopes\[2\]\.methods\[0\] \("GE T"\): must be a method/,
      /route_scopes\[3\]\.path \("\/v2\/\*\/x"\): a \* may only end the path/,
      /route_scopes\[4\]\.path \("\/v2\/%61"\): must be an absolute path/,
      /route_scopes\[5\]\.path \("\/v2\/\.\.\/x"\): must not hold \. or \.\. segments/,
      /route_scopes\[6\]\.scope \("bad scope"\): must be a scope name/,
      /route_scopes\[7\]: missing field "scope"/,
      /route_scopes\[8\]: missing field "path"/,
      /route_scopes\[9\]\.extra: unknown field/,
      /route_scopes\[10\]/,
      /sandbox_upstream \("ftp:\/\/x"\): must be an http/,
      /forward_identity \("yes"\): must be true or false/,
    ];
    for (const re of expect)
      assert.ok(
        p.some((l) => re.test(l)),
        `missing ${re} in\n${p.join("\n")}`,
      );
  });

  test("a rule an earlier one always matches first is a warning", () => {
    const text = `${BASE}route_scopes:
  - { path: "/v2/*", scope: a }
  - { methods: [POST], path: "/v2/messages/*", scope: b }
  - { methods: [POST], path: "/v3", scope: c }
  - { path: "/v3", scope: d }
`;
    const r = parseConfig(FILE, text);
    assert.ok(r.ok);
    assert.deepEqual(
      r.config.warnings.filter((w) => w.includes("never applies")),
      ["route_scopes[1] (/v2/messages/*) never applies: route_scopes[0] matches all of its requests first"],
    );
  });

  test("keys file: sandbox is a boolean, absent means false", () => {
    const head = `keys:\n  - id: a\n    secret_sha256: "${"a".repeat(64)}"\n`;
    const ok = parseKeysFile("keys.yaml", `${head}    sandbox: true\n`, 10);
    assert.ok(ok.ok);
    assert.equal(ok.keys[0]?.sandbox, true);
    const plain = parseKeysFile("keys.yaml", head, 10);
    assert.ok(plain.ok);
    assert.equal(plain.keys[0]?.sandbox, undefined);
    const bad = parseKeysFile("keys.yaml", `${head}    sandbox: "yes"\n`, 10);
    assert.ok(!bad.ok);
    assert.match(formatProblem(bad.problems[0]!), /keys\[0\]\.sandbox \("yes"\): must be true or false/);
  });
});

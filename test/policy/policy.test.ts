import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fc from "fast-check";
import { compileTrust, resolveClientIp, type CompiledTrust } from "../../src/clientip/resolve.js";
import { IpError, parseCidr, type Cidr } from "../../src/ip/address.js";
import { compileMatcher } from "../../src/ip/matcher.js";
import { parseAuthorization, readBearer, secretHash } from "../../src/policy/credential.js";
import { decide, type DecisionSettings, type KeyPolicy, type Mode } from "../../src/policy/decide.js";

describe("readBearer", () => {
  const cases: Array<[string, string[], ReturnType<typeof readBearer>]> = [
    ["no header", ["Host", "x"], { kind: "missing" }],
    ["bearer", ["Authorization", "Bearer abc"], { kind: "token", token: "abc" }],
    ["scheme case-insensitive", ["authorization", "bEaReR abc"], { kind: "token", token: "abc" }],
    [
      "several spaces after the scheme are malformed (slice(7) would read another token)",
      ["Authorization", "Bearer   abc"],
      { kind: "invalid", reason: "malformed_authorization" },
    ],
    ["basic counts as no bearer key", ["Authorization", "Basic dXNlcjpwYXNz"], { kind: "missing" }],
    ["empty value", ["Authorization", ""], { kind: "missing" }],
    [
      "Bearerx is malformed (first six letters bearer)",
      ["Authorization", "Bearerx abc"],
      { kind: "invalid", reason: "malformed_authorization" },
    ],
    ["bare Bearer is malformed", ["Authorization", "Bearer"], { kind: "invalid", reason: "malformed_authorization" }],
    [
      "Bearer and spaces is malformed",
      ["Authorization", "Bearer   "],
      { kind: "invalid", reason: "malformed_authorization" },
    ],
    ["space inside the token", ["Authorization", "Bearer a b"], { kind: "invalid", reason: "malformed_authorization" }],
    [
      "comma inside the token",
      ["Authorization", "Bearer a,Bearer b"],
      { kind: "invalid", reason: "malformed_authorization" },
    ],
    ["tab inside the token", ["Authorization", "Bearer a\tb"], { kind: "invalid", reason: "malformed_authorization" }],
    [
      "NBSP inside the token",
      ["Authorization", "Bearer a\u00a0b"],
      { kind: "invalid", reason: "malformed_authorization" },
    ],
    ["vertical tab inside", ["Authorization", "Bearer a\vb"], { kind: "invalid", reason: "malformed_authorization" }],
    ["Bearer then a tab", ["Authorization", "Bearer\tabc"], { kind: "token", token: "abc" }],
    ["a name of 13 letters that is not Authorization", ["Cache-Control", "Bearer abc"], { kind: "missing" }],
    ["a scheme differing by a non-letter", ["Authorization", "Bea@er abc"], { kind: "missing" }],
    [
      "two headers",
      ["Authorization", "Bearer a", "X", "y", "AUTHORIZATION", "Bearer a"],
      { kind: "invalid", reason: "multiple_authorization" },
    ],
    [
      "two headers of other schemes too",
      ["Authorization", "Basic a", "authorization", "Basic b"],
      { kind: "invalid", reason: "multiple_authorization" },
    ],
  ];
  for (const [desc, raw, expected] of cases) {
    test(desc, () => assert.deepEqual(readBearer(raw), expected));
  }
  test("parseAuthorization agrees with readBearer on one header", () => {
    assert.deepEqual(parseAuthorization("Bearer t"), { kind: "token", token: "t" });
  });
  test("property: parseAuthorization agrees with a regex reference on any value", () => {
    // SPEC §4 written as regular expressions, independently of the scanner.
    const reference = (value: string): ReturnType<typeof parseAuthorization> => {
      const m = /^bearer[ \t]([A-Za-z0-9._~+/-]+=*)$/i.exec(value);
      if (m !== null) return { kind: "token", token: m[1] as string };
      if (/^bearer/i.test(value) || /[^\x20-\x7e\t]/.test(value) || /bearer/i.test(value)) {
        return { kind: "invalid", reason: "malformed_authorization" };
      }
      return { kind: "missing" };
    };
    const piece = fc.constantFrom(
      "Bearer",
      "bearer",
      "BEARER",
      "Bearer ",
      " ",
      "\t",
      ",",
      "\u00a0",
      "\u2028",
      "\u3000",
      "a",
      "Z",
      "@",
      "`",
      "-._~+/=",
      "\u00e9",
      "\v",
      "\r",
    );
    const value = fc.oneof(
      fc.string({ unit: "binary", maxLength: 12 }),
      fc.array(piece, { maxLength: 8 }).map((a) => a.join("")),
    );
    fc.assert(
      fc.property(value, (v) => assert.deepEqual(parseAuthorization(v), reference(v))),
      { numRuns: 20_000 },
    );
  });
  test("secretHash is lowercase hex SHA-256", () => {
    assert.equal(secretHash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  });
});

function key(id: string, entries: string[], mode?: Mode, scopes: string[] = []): KeyPolicy {
  const cidrs: Cidr[] = entries.map((e) => {
    const c = parseCidr(e);
    if (c instanceof IpError) throw new Error(c.message);
    return c;
  });
  const m = compileMatcher(cidrs);
  return { id, mode, restricted: entries.length > 0, contains: (ip) => m.contains(ip), scopes, sandbox: false };
}

const none = compileTrust([]) as CompiledTrust;
const loop = compileTrust(["loopback"]) as CompiledTrust;

describe("decide", () => {
  const enforce: DecisionSettings = { mode: "enforce", unknown: "forward", missing: "forward" };
  const strict: DecisionSettings = { mode: "enforce", unknown: "reject", missing: "reject" };
  const report: DecisionSettings = { mode: "report", unknown: "forward", missing: "forward" };
  const office = key("k_office", ["203.0.113.0/24"]);
  const open = key("k_open", []);
  const client = (ip: string) => resolveClientIp(ip, undefined, none);
  const garbage = resolveClientIp("127.0.0.1", "not-an-ip", loop);

  const cases = [
    {
      desc: "allowed",
      cred: { kind: "key", key: office },
      client: client("203.0.113.9"),
      s: enforce,
      outcome: "allowed",
      forward: true,
      reason: undefined,
    },
    {
      desc: "denied",
      cred: { kind: "key", key: office },
      client: client("198.51.100.1"),
      s: enforce,
      outcome: "denied",
      forward: false,
      reason: "ip_not_allowed",
    },
    {
      desc: "mapped client allowed",
      cred: { kind: "key", key: office },
      client: client("::ffff:203.0.113.9"),
      s: enforce,
      outcome: "allowed",
      forward: true,
      reason: undefined,
    },
    {
      desc: "empty list: no restriction",
      cred: { kind: "key", key: open },
      client: client("198.51.100.1"),
      s: enforce,
      outcome: "allowed",
      forward: true,
      reason: undefined,
    },
    {
      desc: "empty list ignores an unparseable client",
      cred: { kind: "key", key: open },
      client: garbage,
      s: enforce,
      outcome: "allowed",
      forward: true,
      reason: undefined,
    },
    {
      desc: "restricted key + unparseable client: refused",
      cred: { kind: "key", key: office },
      client: garbage,
      s: enforce,
      outcome: "invalid_client_ip",
      forward: false,
      reason: "invalid_client_ip",
    },
    {
      desc: "report mode: would deny, forwarded",
      cred: { kind: "key", key: office },
      client: client("198.51.100.1"),
      s: report,
      outcome: "would_deny",
      forward: true,
      reason: "ip_not_allowed",
    },
    {
      desc: "report mode + unparseable client: would deny",
      cred: { kind: "key", key: office },
      client: garbage,
      s: report,
      outcome: "would_deny",
      forward: true,
      reason: "invalid_client_ip",
    },
    {
      desc: "key's own report mode overrides enforce",
      cred: { kind: "key", key: key("k", ["10.0.0.0/8"], "report") },
      client: client("1.1.1.1"),
      s: enforce,
      outcome: "would_deny",
      forward: true,
      reason: "ip_not_allowed",
    },
    {
      desc: "key's own enforce mode overrides report",
      cred: { kind: "key", key: key("k", ["10.0.0.0/8"], "enforce") },
      client: client("1.1.1.1"),
      s: report,
      outcome: "denied",
      forward: false,
      reason: "ip_not_allowed",
    },
    {
      desc: "unknown key forwarded",
      cred: { kind: "key", key: undefined },
      client: client("1.1.1.1"),
      s: enforce,
      outcome: "unknown_key",
      forward: true,
      reason: undefined,
    },
    {
      desc: "unknown key rejected",
      cred: { kind: "key", key: undefined },
      client: client("1.1.1.1"),
      s: strict,
      outcome: "unknown_key",
      forward: false,
      reason: "invalid_api_key",
    },
    {
      desc: "missing key forwarded",
      cred: { kind: "missing" },
      client: client("1.1.1.1"),
      s: enforce,
      outcome: "missing_key",
      forward: true,
      reason: undefined,
    },
    {
      desc: "missing key rejected",
      cred: { kind: "missing" },
      client: client("1.1.1.1"),
      s: strict,
      outcome: "missing_key",
      forward: false,
      reason: "missing_api_key",
    },
    {
      desc: "malformed header",
      cred: { kind: "invalid", reason: "malformed_authorization" },
      client: client("1.1.1.1"),
      s: report,
      outcome: "bad_request",
      forward: false,
      reason: "malformed_authorization",
    },
    {
      desc: "multiple headers, even in report mode",
      cred: { kind: "invalid", reason: "multiple_authorization" },
      client: client("1.1.1.1"),
      s: report,
      outcome: "bad_request",
      forward: false,
      reason: "multiple_authorization",
    },
  ] as const;
  for (const c of cases) {
    test(c.desc, () => {
      const d = decide(c.cred, c.client, c.s);
      assert.equal(d.outcome, c.outcome);
      assert.equal(d.forward, c.forward);
      assert.equal(d.reason, c.reason);
    });
  }
});

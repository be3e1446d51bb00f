import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { compileTrust, type CompiledTrust } from "../../src/clientip/resolve.js";
import { IpError, parseCidr, type Cidr } from "../../src/ip/address.js";
import { compileMatcher } from "../../src/ip/matcher.js";
import { BEARER_ONLY, secretHash } from "../../src/policy/credential.js";
import type { KeyPolicy, Mode } from "../../src/policy/decide.js";
import { enforce, ipPathOf, type EnforceSettings, type KeyLookup } from "../../src/policy/enforce.js";
import { compileRule, routeScopes } from "../../src/policy/routes.js";

function key(id: string, entries: string[], mode?: Mode, scopes: string[] = []): KeyPolicy {
  const cidrs: Cidr[] = entries.map((e) => {
    const c = parseCidr(e);
    if (c instanceof IpError) throw new Error(c.message);
    return c;
  });
  const m = compileMatcher(cidrs);
  return { id, mode, restricted: entries.length > 0, contains: (ip) => m.contains(ip), scopes, sandbox: false };
}

const KEYS = new Map<string, KeyPolicy>([
  [secretHash("s_office"), key("k_office", ["203.0.113.0/24"])],
  [secretHash("s_open"), key("k_open", [])],
  [secretHash("s_report"), key("k_report", ["203.0.113.0/24"], "report")],
  [secretHash("s_sender"), key("k_sender", ["203.0.113.0/24"], undefined, ["messages:send"])],
]);
const lookup: KeyLookup = { lookupToken: (t) => KEYS.get(secretHash(t)) };

const base: EnforceSettings = {
  mode: "enforce",
  unknown: "forward",
  missing: "forward",
  trust: compileTrust(["loopback"]) as CompiledTrust,
  pingPath: "/_keyfence/ping",
  places: BEARER_ONLY,
};
const strict: EnforceSettings = { ...base, unknown: "reject", missing: "reject" };
const scoped: EnforceSettings = {
  ...base,
  ipPath: ipPathOf("/_keyfence/ping"),
  routes: routeScopes([compileRule({ methods: ["POST"], path: "/v2/messages/*", scope: "messages:send" })]),
};
const LACKS = "API key lacks scope messages:send";

type Expected =
  | { outcome: string; forward: true; keyId?: string }
  | { outcome: string; status: number; reason: string; message: string; body?: unknown; keyId?: string };

interface Case {
  desc: string;
  headers?: string[];
  method?: string;
  url?: string;
  peer?: string;
  xff?: string;
  settings?: EnforceSettings;
  expect: Expected;
}

const auth = (token: string): string[] => ["Authorization", `Bearer ${token}`];
const DENY_MSG = (ip: string): string => `source IP ${ip} is not allowed for this API key`;

const cases: Case[] = [
  {
    desc: "allowed key forwarded",
    headers: auth("s_office"),
    peer: "203.0.113.9",
    expect: { outcome: "allowed", forward: true, keyId: "k_office" },
  },
  {
    desc: "denied key: 403 with the canonical client IP",
    headers: auth("s_office"),
    peer: "::ffff:198.51.100.7",
    expect: {
      outcome: "denied",
      status: 403,
      reason: "ip_not_allowed",
      message: DENY_MSG("198.51.100.7"),
      keyId: "k_office",
    },
  },
  {
    desc: "client from a trusted proxy's X-Forwarded-For",
    headers: auth("s_office"),
    peer: "127.0.0.1",
    xff: "1.1.1.1, 203.0.113.5",
    expect: { outcome: "allowed", forward: true, keyId: "k_office" },
  },
  {
    desc: "spoofed left entry never counts",
    headers: auth("s_office"),
    peer: "127.0.0.1",
    xff: "203.0.113.5, 198.51.100.1",
    expect: {
      outcome: "denied",
      status: 403,
      reason: "ip_not_allowed",
      message: DENY_MSG("198.51.100.1"),
      keyId: "k_office",
    },
  },
  {
    desc: "unparseable client of a restricted key: 400",
    headers: auth("s_office"),
    peer: "127.0.0.1",
    xff: "0177.0.0.1",
    expect: {
      outcome: "invalid_client_ip",
      status: 400,
      reason: "invalid_client_ip",
      message: "client IP address could not be determined",
      keyId: "k_office",
    },
  },
  {
    desc: "unknown key forwarded",
    headers: auth("nope"),
    peer: "1.1.1.1",
    expect: { outcome: "unknown_key", forward: true },
  },
  {
    desc: "unknown key rejected",
    headers: auth("nope"),
    peer: "1.1.1.1",
    settings: strict,
    expect: { outcome: "unknown_key", status: 401, reason: "invalid_api_key", message: "invalid API key" },
  },
  { desc: "missing key forwarded", peer: "1.1.1.1", expect: { outcome: "missing_key", forward: true } },
  {
    desc: "missing key rejected",
    peer: "1.1.1.1",
    settings: strict,
    expect: { outcome: "missing_key", status: 401, reason: "missing_api_key", message: "missing API key" },
  },
  {
    desc: "two Authorization headers: 400",
    headers: [...auth("s_open"), ...auth("s_open")],
    peer: "1.1.1.1",
    expect: {
      outcome: "bad_request",
      status: 400,
      reason: "multiple_authorization",
      message: "multiple Authorization headers",
    },
  },
  {
    desc: "report mode key: would deny, forwarded",
    headers: auth("s_report"),
    peer: "198.51.100.1",
    expect: { outcome: "would_deny", forward: true, keyId: "k_report" },
  },
  {
    desc: "target that is no path: 400",
    headers: auth("s_open"),
    url: "*",
    peer: "1.1.1.1",
    expect: { outcome: "bad_request", status: 400, reason: "bad_request", message: "request target must be a path" },
  },
  {
    desc: "absolute-form target",
    headers: auth("s_open"),
    url: "http://x/a?b",
    peer: "1.1.1.1",
    expect: { outcome: "allowed", forward: true, keyId: "k_open" },
  },
  // The ping path, whatever the method or upgrade: never forwarded.
  {
    desc: "ping: allowed key pong",
    headers: auth("s_office"),
    url: "/_keyfence/ping?x=1",
    peer: "203.0.113.1",
    expect: { outcome: "allowed", status: 200, reason: "pong", message: "pong", keyId: "k_office" },
  },
  {
    desc: "ping: open key pong",
    headers: auth("s_open"),
    url: "/_keyfence/ping",
    peer: "1.1.1.1",
    expect: { outcome: "allowed", status: 200, reason: "pong", message: "pong", keyId: "k_open" },
  },
  {
    desc: "ping: denied key 403",
    headers: auth("s_office"),
    url: "/_keyfence/ping",
    peer: "1.1.1.1",
    expect: {
      outcome: "denied",
      status: 403,
      reason: "ip_not_allowed",
      message: DENY_MSG("1.1.1.1"),
      keyId: "k_office",
    },
  },
  {
    desc: "ping: missing key 401 even when missing keys are forwarded",
    url: "/_keyfence/ping",
    peer: "1.1.1.1",
    expect: { outcome: "missing_key", status: 401, reason: "missing_api_key", message: "missing API key" },
  },
  {
    desc: "ping: unknown key 401 even when unknown keys are forwarded",
    headers: auth("nope"),
    url: "/_keyfence/ping",
    peer: "1.1.1.1",
    expect: { outcome: "unknown_key", status: 401, reason: "invalid_api_key", message: "invalid API key" },
  },
  {
    desc: "ping: report-mode key says the would-be denial",
    headers: auth("s_report"),
    url: "/_keyfence/ping",
    peer: "1.1.1.1",
    expect: {
      outcome: "would_deny",
      status: 200,
      reason: "pong",
      message: "pong",
      keyId: "k_report",
      body: {
        message: "pong",
        mode: "report",
        would_deny: { reason: "ip_not_allowed", status: 403, message: DENY_MSG("1.1.1.1") },
      },
    },
  },
  {
    desc: "route_scopes: a key lacking the scope",
    headers: auth("s_office"),
    method: "POST",
    url: "/v2/messages/send",
    peer: "203.0.113.9",
    settings: scoped,
    expect: { outcome: "missing_scope", status: 403, reason: "missing_scope", message: LACKS, keyId: "k_office" },
  },
  {
    desc: "route_scopes: the key holding the scope",
    headers: auth("s_sender"),
    method: "POST",
    url: "/v2/messages/send",
    peer: "203.0.113.9",
    settings: scoped,
    expect: { outcome: "allowed", forward: true, keyId: "k_sender" },
  },
  {
    desc: "route_scopes: another method needs nothing",
    headers: auth("s_office"),
    method: "GET",
    url: "/v2/messages/send",
    peer: "203.0.113.9",
    settings: scoped,
    expect: { outcome: "allowed", forward: true, keyId: "k_office" },
  },
  {
    desc: "route_scopes: the IP check comes first",
    headers: auth("s_office"),
    method: "POST",
    url: "/v2/messages/send",
    peer: "1.1.1.1",
    settings: scoped,
    expect: {
      outcome: "denied",
      status: 403,
      reason: "ip_not_allowed",
      message: DENY_MSG("1.1.1.1"),
      keyId: "k_office",
    },
  },
  {
    desc: "route_scopes: report mode forwards a missing scope as would_deny",
    headers: auth("s_report"),
    method: "POST",
    url: "/v2/messages/send",
    peer: "203.0.113.9",
    settings: scoped,
    expect: { outcome: "would_deny", forward: true, keyId: "k_report" },
  },
  {
    desc: "route_scopes: a dot segment is ambiguous",
    headers: auth("s_sender"),
    method: "POST",
    url: "/v2/x/../messages/send",
    peer: "203.0.113.9",
    settings: scoped,
    expect: {
      outcome: "bad_request",
      status: 400,
      reason: "ambiguous_path",
      message: "ambiguous request path: a dot segment (. or ..)",
      keyId: "k_sender",
    },
  },
  {
    desc: "route_scopes: unknown keys follow keys.unknown",
    headers: auth("s_nobody"),
    method: "POST",
    url: "/v2/messages/send",
    peer: "203.0.113.9",
    settings: scoped,
    expect: { outcome: "unknown_key", forward: true },
  },
  {
    desc: "route_scopes: the ping needs no scope",
    headers: auth("s_office"),
    method: "POST",
    url: "/_keyfence/ping",
    peer: "203.0.113.9",
    settings: scoped,
    expect: { outcome: "allowed", status: 200, reason: "pong", message: "pong", keyId: "k_office" },
  },
  {
    desc: "<ping_path>/ip: the client as resolved, whatever the key",
    headers: auth("s_office"),
    url: "/_keyfence/ping/ip?x",
    peer: "127.0.0.1",
    xff: "1.1.1.1",
    settings: scoped,
    expect: { outcome: "allowed", status: 200, reason: "client_ip", message: "1.1.1.1", body: { ip: "1.1.1.1" } },
  },
  {
    desc: "a longer path is no ping",
    headers: auth("s_open"),
    url: "/_keyfence/ping/x",
    peer: "1.1.1.1",
    expect: { outcome: "allowed", forward: true, keyId: "k_open" },
  },
];

describe("enforce: the one enforcement step", () => {
  for (const c of cases) {
    test(c.desc, () => {
      const e = enforce(
        { method: c.method, rawHeaders: c.headers ?? [], url: c.url ?? "/v1/x", peer: c.peer, forwardedFor: c.xff },
        lookup,
        c.settings ?? base,
      );
      assert.equal(e.decision.outcome, c.expect.outcome);
      assert.equal(e.decision.keyId, c.expect.keyId);
      if ("forward" in c.expect) {
        assert.deepEqual(e.plan, { kind: "forward" });
      } else {
        assert.equal(e.plan.kind, "answer");
        if (e.plan.kind !== "answer") return;
        assert.equal(e.plan.status, c.expect.status);
        assert.equal(e.plan.reason, c.expect.reason);
        assert.equal(e.plan.message, c.expect.message);
        assert.deepEqual(e.plan.body, c.expect.body);
      }
    });
  }
  test("the path excludes the query (logs never see it)", () => {
    const e = enforce(
      { rawHeaders: [], url: "/a/b?api_key=secret", peer: "1.1.1.1", forwardedFor: undefined },
      lookup,
      base,
    );
    assert.equal(e.path, "/a/b");
    assert.equal(e.target, "/a/b?api_key=secret");
  });
});

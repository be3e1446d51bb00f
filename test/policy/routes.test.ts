import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fc from "fast-check";
import {
  compileRule,
  pathReadings,
  requestRoute,
  routeNeed,
  routeNeedOf,
  routeScopes,
  rulePathProblem,
  type RouteScopes,
} from "../../src/policy/routes.js";

const ROUTES: RouteScopes = routeScopes([
  compileRule({ methods: ["GET"], path: "/v2/messages/public", scope: "messages:read" }),
  compileRule({ methods: ["POST"], path: "/v2/messages/*", scope: "messages:send" }),
  compileRule({ path: "/v2/messages:batch", scope: "messages:batch" }),
  compileRule({ path: "/admin/*", scope: "admin" }),
  compileRule({ methods: ["DELETE"], path: "/v2/keys", scope: "keys:delete" }),
]);

/** The scopes a request needs, or "400" when its path is refused as ambiguous. */
function need(method: string, path: string, headers: string[] = [], query = ""): string[] | "400" {
  const n = routeNeed(ROUTES, requestRoute(method, headers, query === "" ? path : `${path}?${query}`).methods, path);
  return n.kind === "ambiguous" ? "400" : n.rules.map((r) => r.scope);
}

describe("route_scopes: matching table", () => {
  const cases: Array<[string, string, string[] | "400", string[]?, string?]> = [
    // method, path, scopes needed (every reading's first match), headers, query
    ["POST", "/v2/messages/send", ["messages:send"]],
    ["POST", "/v2/messages", ["messages:send"]],
    ["POST", "/v2/messages/", ["messages:send"]],
    ["POST", "/v2/messagesX", []],
    ["POST", "/v2/messages-archive/x", []],
    ["GET", "/v2/messages/send", []],
    ["GET", "/v2/messages/public", ["messages:read"]],
    ["HEAD", "/v2/messages/public", ["messages:read"]],
    ["POST", "/v2/messages/public", ["messages:send"]],
    ["post", "/v2/messages/send", ["messages:send"]],
    // case: Express and ASP.NET route case-insensitively
    ["POST", "/V2/Messages/send", ["messages:send"]],
    ["POST", "/v2/MESSAGES", ["messages:send"]],
    // percent-encoding of unreserved characters: nginx decodes, Express does not
    ["POST", "/v2/mess%61ges/send", ["messages:send"]],
    ["POST", "/v2/%6D%65ssages", ["messages:send"]],
    ["POST", "/v2/messages%3Abatch", ["messages:batch"]],
    // a decoded reading matches an earlier rule, the raw one a later rule: both needed
    ["GET", "/v2/messages/publi%63", ["messages:read"]],
    ["POST", "/v2/messages/publi%63", ["messages:send"]],
    // empty segments and trailing slashes (nginx merges)
    ["POST", "/v2//messages/send", ["messages:send"]],
    ["POST", "//v2/messages", "400"],
    ["POST", "//x/v2/messages", "400"],
    ["GET", "/admin", ["admin"]],
    ["GET", "/admin/", ["admin"]],
    ["GET", "/admin//x", ["admin"]],
    ["GET", "/administrator", []],
    ["DELETE", "/v2/keys/", ["keys:delete"]],
    ["DELETE", "/v2/keys/x", []],
    // ;params (Tomcat, Spring cut them)
    ["POST", "/v2/messages;jsessionid=1/send", ["messages:send"]],
    ["GET", "/admin;x", ["admin"]],
    ["GET", "/admin%3Bx/y", ["admin"]],
    ["DELETE", "/v2/keys;v=1", ["keys:delete"]],
    // format suffixes: Rails, Spring and Django REST route /x.json as /x
    ["POST", "/v2/messages.json", ["messages:send"]],
    ["POST", "/v2/Messages.JSON/", ["messages:send"]],
    ["POST", "/v2/messages.tar.gz", ["messages:send"]],
    ["GET", "/admin.json", ["admin"]],
    ["DELETE", "/v2/keys.xml", ["keys:delete"]],
    ["GET", "/v2/messages/public.json", ["messages:read"]],
    ["POST", "/v2/messages%2Ejson", ["messages:send"]],
    ["GET", "/v2/keys.xml", []],
    ["GET", "/.json", []],
    // method overrides
    ["POST", "/v2/keys", ["keys:delete"], ["X-HTTP-Method-Override", "DELETE"]],
    ["POST", "/v2/keys", ["keys:delete"], ["x-http-method", "delete"]],
    ["POST", "/v2/keys", ["keys:delete"], ["X-Method-Override", "DELETE"]],
    ["POST", "/v2/keys", ["keys:delete"], [], "_method=DELETE"],
    ["GET", "/v2/messages/x", ["messages:send"], [], "a=1&_method=post"],
    // ...in every spelling an upstream reads as one: `_` for `-` in header names (CGI, WSGI, PHP,
    // Rack: HTTP_X_HTTP_METHOD_OVERRIDE), and loose query-name parsing (PHP, qs, Rack)
    ["POST", "/v2/keys", ["keys:delete"], ["X_HTTP_Method_Override", "DELETE"]],
    ["POST", "/v2/keys", ["keys:delete"], ["X.HTTP.Method.Override", "DELETE"]],
    ["POST", "/v2/keys", ["keys:delete"], ["x-http.method", "delete"]],
    ["POST", "/v2/keys", ["keys:delete"], ["x_http_method", "delete"]],
    ["POST", "/v2/keys", ["keys:delete"], ["X-Method_Override", "DELETE"]],
    ["POST", "/v2/keys", ["keys:delete"], [], "%5Fmethod=DELETE"],
    ["POST", "/v2/keys", ["keys:delete"], [], "%5f%6D%65thod=DELETE"],
    ["POST", "/v2/keys", ["keys:delete"], [], "_METHOD=DELETE"],
    ["POST", "/v2/keys", ["keys:delete"], [], "+_method=DELETE"],
    ["POST", "/v2/keys", ["keys:delete"], [], "_method[]=DELETE"],
    ["POST", "/v2/keys", ["keys:delete"], [], "_method%00=DELETE"],
    ["POST", "/v2/keys", ["keys:delete"], [], "_method%00x=DELETE"],
    ["POST", "/v2/keys", ["keys:delete"], [], "a=1;_method=DELETE"],
    ["POST", "/v2/keys", ["keys:delete"], [], "_method=DEL%45TE"],
    ["POST", "/v2/keys", ["keys:delete"], [], "_method=+DELETE+"],
    ["POST", "/v2/keys", [], [], "x_method=DELETE"],
    ["POST", "/v2/keys", [], ["X-HTTP-Method-Overrid", "DELETE"]],
    // ambiguous: refused
    ["POST", "/v2/x/../messages/send", "400"],
    ["POST", "/v2/messages/../x", "400"],
    ["POST", "/v2/./messages", "400"],
    ["POST", "/v2/%2e%2e/v2/messages", "400"],
    ["POST", "/v2/.%2E/messages", "400"],
    ["POST", "/x/..;/v2/messages", "400"],
    ["POST", "/v2%2Fmessages/send", "400"],
    ["POST", "/v2%2fmessages", "400"],
    ["POST", "/v2%5Cmessages", "400"],
    ["POST", "/v2\\messages", "400"],
    ["POST", "/v2/messages#x", "400"],
    ["POST", "/v2/%252E%252E/messages", "400"],
    ["POST", "/v2/messages%zz", "400"],
    ["POST", "/v2/messages%4", "400"],
    ["POST", "/v2/%c0%afmessages", "400"],
    ["POST", "/v2/messages%00", "400"],
    ["POST", "/v2/messages%0a", "400"],
    ["POST", "/v2/mess\u00e4ges", "400"],
    ["POST", "/v2/messages ", "400"],
    ["POST", "/v2/%u0073", "400"],
    // not ambiguous
    ["GET", "/v2/caf%C3%A9", []],
    ["GET", "/v2/a%20b", []],
    ["GET", "/v2/a.b/c..d/.e", []],
    ["GET", "/", []],
  ];
  for (const [method, path, want, headers, query] of cases) {
    test(`${method} ${path}${query ? `?${query}` : ""}${headers?.length ? ` ${headers.join(": ")}` : ""}`, () => {
      assert.deepEqual(need(method, path, headers, query), want);
    });
  }

  test("thousands of claimed methods cost what the distinct listed ones do (no CPU amplification)", () => {
    let checks = 0;
    class CountingSet extends Set<string> {
      override has(m: string): boolean {
        checks++;
        return super.has(m);
      }
    }
    const rules = Array.from({ length: 100 }, (_, i) => {
      const r = compileRule({ methods: ["DELETE"], path: `/v${String(i)}/things/*`, scope: `s${String(i)}` });
      return { ...r, methods: new CountingSet(r.methods) };
    });
    const routes = routeScopes([...rules, compileRule({ path: "/v2/*", scope: "any" })]);
    const claims = Array.from({ length: 8000 }, (_, i) => (i % 2 === 0 ? "DELETE" : `M${String(i)}`)).join(",");
    const methods = requestRoute("POST", ["X-HTTP-Method-Override", claims], "/").methods;
    assert.equal(methods.length, 8001);
    const got = routeNeed(routes, methods, "/v2/Mess%61ges;x=1//send.json/");
    assert.deepEqual(got.kind === "rules" ? got.rules.map((r) => r.scope) : got, ["any"]);
    checks = 0;
    routeNeed(routes, methods, "/v2/Mess%61ges;x=1//send.json/");
    assert.ok(checks < 20_000, `${String(checks)} method checks for one request`);
    assert.deepEqual(need("POST", "/v2/keys", ["X-HTTP-Method-Override", "GET,PUT,DELETE,DELETE"]), ["keys:delete"]);
  });

  test("a rule for every route: /* covers everything", () => {
    const all = routeScopes([compileRule({ path: "/*", scope: "any" })]);
    for (const p of ["/", "/x", "/X/y/", "/x//"])
      assert.deepEqual(routeNeed(all, ["GET"], p), { kind: "rules", rules: all.rules });
  });
});

describe("route_scopes: rule paths", () => {
  const good = ["/", "/v2/messages", "/v2/messages/*", "/*", "/v2/messages:send", "/a-b_c.d~e/@x"];
  const bad = [
    "v2",
    "/v2/messages/",
    "/v2//x",
    "/v2/*/x",
    "/v2/x*",
    "/v2/%61",
    "/v2;x",
    "/v2/../x",
    "/v2/./x",
    "/v2?x",
    "/v2#x",
    "/v2\\x",
    "/v 2",
    "/v2/é",
    "",
  ];
  for (const p of good) test(`valid ${p}`, () => assert.equal(rulePathProblem(p), undefined));
  for (const p of bad) test(`invalid ${JSON.stringify(p)}`, () => assert.notEqual(rulePathProblem(p), undefined));
});

/*
 * The property: however an upstream reads a path, the rule it would route
 * the request to is one whose scope keyfence requires (or keyfence refuses the
 * path). Each reference router below is written independently of the code
 * under test, after a real server's documented behaviour.
 */
type Router = (path: string) => { path: string; fold: boolean } | undefined;

function naiveDecode(s: string): string {
  let out = "";
  for (let i = 0; i < s.length; i++) {
    const m = /^%([0-9A-Fa-f]{2})/.exec(s.slice(i));
    if (m) {
      out += String.fromCharCode(parseInt(m[1] as string, 16));
      i += 2;
    } else out += s.charAt(i);
  }
  return out;
}

function resolveDots(segments: string[]): string[] {
  const out: string[] = [];
  for (const s of segments) {
    if (s === ".") continue;
    if (s === "..") out.pop();
    else out.push(s);
  }
  return out;
}

const ROUTERS: Record<string, Router> = {
  // Express: the raw path, case-insensitive, one trailing slash ignored.
  express: (p) => ({ path: p.length > 1 && p.endsWith("/") ? p.slice(0, -1) : p, fold: true }),
  // A strict raw router (Go's PathValue-free mux without cleaning, Envoy without normalize_path).
  raw: (p) => ({ path: p, fold: false }),
  // nginx: decode, merge slashes, resolve dot segments; case-sensitive.
  nginx: (p) => {
    const segs = naiveDecode(p)
      .split("/")
      .filter((s) => s !== "");
    return { path: `/${resolveDots(segs).join("/")}`, fold: false };
  },
  // The WHATWG URL parser (what undici and many JS frameworks use), then segment decoding.
  whatwg: (p) => {
    try {
      const u = new URL(p, "http://h");
      return { path: u.pathname.split("/").map(naiveDecode).join("/"), fold: false };
    } catch {
      return undefined;
    }
  },
  // Tomcat/Spring: cut ;params from each segment, decode, resolve dots.
  tomcat: (p) => {
    const segs = p.split("/").map((s) => naiveDecode(s.split(";")[0] as string));
    return { path: `/${resolveDots(segs.slice(1)).join("/")}`.replace(/\/+/g, "/"), fold: false };
  },
  // Rails: a static route also takes a `.format` suffix (no dot in it) on its last segment.
  rails: (p) => {
    const m = /^(.*\/[^/.]+)\.[^/.]+\/?$/.exec(p);
    return { path: m ? (m[1] as string) : p, fold: false };
  },
  // Spring MVC's suffix pattern match: /x also matches /x.* (anything after the first dot of the last segment).
  spring: (p) => {
    const m = /^(.*\/[^/.;]+)\.[^/]*$/.exec(p);
    return { path: m ? (m[1] as string) : p, fold: false };
  },
  // Django REST framework's format_suffix_patterns: `.json` (lowercase letters and digits) at the very end.
  django: (p) => {
    const m = /^(.*)\.[a-z0-9]+\/?$/.exec(p);
    return { path: m ? (m[1] as string) : p, fold: false };
  },
  // IIS/ASP.NET: backslash is a slash, decode, case-insensitive, resolve dots.
  iis: (p) => {
    const segs = naiveDecode(p.replace(/\\/g, "/")).split("/");
    return { path: `/${resolveDots(segs.slice(1)).join("/")}`, fold: true };
  },
};

interface RefRule {
  methods: string[] | undefined;
  path: string;
  prefix: boolean;
  scope: string;
}

function refFirst(rules: RefRule[], method: string, r: { path: string; fold: boolean }): RefRule | undefined {
  const cmp = (s: string): string => (r.fold ? s.toLowerCase() : s);
  for (const rule of rules) {
    if (rule.methods && !rule.methods.includes(method) && !(method === "HEAD" && rule.methods.includes("GET")))
      continue;
    const p = cmp(r.path);
    const want = cmp(rule.path);
    if (rule.prefix ? p === want || p.startsWith(`${want}/`) : p === want) return rule;
  }
  return undefined;
}

const SEGMENTS = [
  "v2",
  "V2",
  "messages",
  "Messages",
  "mess%61ges",
  "%6Dessages",
  "messages;x=1",
  "messages%3Bx",
  "send",
  "public",
  "publi%63",
  "",
  ".",
  "..",
  "%2e",
  "%2E%2e",
  "..;x",
  "a%2Fb",
  "v2%2fmessages",
  "a%5cb",
  "a\\b",
  "%252F",
  "%zz",
  "%c0%af",
  "%C3%A9",
  "x#y",
  "%7E",
  "~",
  "messages:batch",
  "messages%3Abatch",
  "messages.json",
  "send.xml",
  "public.tar.gz",
  ".json",
  "Messages.JSON",
];

const ruleArb = fc.record({
  methods: fc.option(fc.subarray(["GET", "POST", "DELETE"], { minLength: 1 }), { nil: undefined }),
  segs: fc.array(fc.constantFrom("v2", "V2", "messages", "Messages", "send", "public", "messages:batch"), {
    minLength: 1,
    maxLength: 3,
  }),
  prefix: fc.boolean(),
});

describe("route_scopes: property against independent reference routers", () => {
  test("every router's rule is required, or the path is refused", () => {
    let checked = 0;
    fc.assert(
      fc.property(
        fc.array(ruleArb, { minLength: 1, maxLength: 4 }),
        fc.array(
          fc.oneof(
            { weight: 3, arbitrary: fc.constantFrom("v2", "V2", "messages", "Messages", "send", "public") },
            { weight: 2, arbitrary: fc.constantFrom(...SEGMENTS) },
          ),
          { minLength: 1, maxLength: 4 },
        ),
        fc.boolean(),
        fc.constantFrom("GET", "HEAD", "POST", "DELETE"),
        (rawRules, segs, trailing, method) => {
          const refRules: RefRule[] = rawRules.map((r, i) => ({
            methods: r.methods,
            path: `/${r.segs.join("/")}`,
            prefix: r.prefix,
            scope: `s${String(i)}`,
          }));
          const routes = routeScopes(
            refRules.map((r) =>
              compileRule({
                ...(r.methods ? { methods: r.methods } : {}),
                path: r.prefix ? `${r.path}/*` : r.path,
                scope: r.scope,
              }),
            ),
          );
          const path = `/${segs.join("/")}${trailing ? "/" : ""}`;
          const got = routeNeed(routes, [method], path);
          if (got.kind === "ambiguous") return;
          const scopes = new Set(got.rules.map((r) => r.scope));
          for (const [name, router] of Object.entries(ROUTERS)) {
            const reading = router(path);
            if (reading === undefined) continue;
            const rule = refFirst(refRules, method, reading);
            if (rule === undefined) continue;
            checked++;
            assert.ok(
              scopes.has(rule.scope),
              `${name} routes ${method} ${path} (as ${reading.path}) to ${rule.path}${rule.prefix ? "/*" : ""}; keyfence requires ${[...scopes].join(",") || "nothing"}`,
            );
          }
        },
      ),
      { numRuns: 20_000 },
    );
    assert.ok(checked > 2_000, `the generator must reach matching rules (${String(checked)} checked)`);
  });

  test("pathReadings of a plain path is the path itself", () => {
    fc.assert(
      fc.property(fc.array(fc.stringMatching(/^[a-z0-9_~-]{1,8}$/), { maxLength: 5 }), (segs) => {
        const p = `/${segs.join("/")}`;
        const r = pathReadings(p);
        assert.ok(Array.isArray(r));
        assert.ok(r.every((x) => x.path === p));
      }),
    );
  });
});

describe("route_scopes: paths named by path-override headers", () => {
  test("table: each spelling's path joins the request's; a path that is not absolute is ambiguous", () => {
    const cases: Array<[string[], string[] | "400"]> = [
      [[], []],
      [["X-Original-URL", "/admin/x"], ["admin"]],
      [["x-rewrite-url", "/admin/x?q=1"], ["admin"]],
      [["X_ORIGINAL_URL", "/admin"], ["admin"]],
      [["X.Rewrite.Url", " /admin/y "], ["admin"]],
      [
        ["X-Original-URL", "/admin/x", "X-Rewrite-URL", "/v2/messages/public"],
        ["admin", "messages:read"],
      ],
      [["X-Original-URL", "https://host/admin"], "400"],
      [["X-Original-URL", ""], "400"],
      [["X-Original-URL", "/admin/%2e%2e/x"], "400"],
      [["X-Original-URLs", "/admin"], []],
      [["X-Original-UR", "/admin"], []],
    ];
    for (const [headers, want] of cases) {
      const n = routeNeedOf(ROUTES, ["GET"], requestRoute("GET", headers, "/public").paths);
      assert.deepEqual(n.kind === "ambiguous" ? "400" : n.rules.map((r) => r.scope), want, headers.join(" "));
    }
  });

  test("property: the rules of several paths are the union of each path's rules", () => {
    const path = fc.constantFrom("/admin/x", "/v2/messages/public", "/v2/messages/send", "/v2/keys", "/other", "/");
    fc.assert(
      fc.property(
        fc.array(path, { minLength: 1, maxLength: 4 }),
        fc.constantFrom("GET", "POST", "DELETE"),
        (paths, m) => {
          const got = routeNeedOf(ROUTES, [m], paths);
          assert.equal(got.kind, "rules");
          const union = new Set(
            paths.flatMap((p) => {
              const n = routeNeed(ROUTES, [m], p);
              return n.kind === "rules" ? n.rules.map((r) => r.scope) : [];
            }),
          );
          assert.deepEqual(new Set(got.kind === "rules" ? got.rules.map((r) => r.scope) : []), union);
        },
      ),
    );
  });
});

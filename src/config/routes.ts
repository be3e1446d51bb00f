/**
 * The "what and where" settings (SPEC §9): `route_scopes`, `sandbox_upstream`
 * and `forward_identity`, validated with every problem located.
 */
import { compileRule, routeScopes, rulePathProblem, type RouteRule, type RouteScopes } from "../policy/routes.js";
import { SCOPE } from "../store/keyfields.js";
import { isToken } from "../util/http.js";
import type { YamlFile } from "../util/yaml.js";

/** Longest method name accepted. */
const METHOD_MAX = 32;

/** True when every request `later` matches is also matched by `earlier`, which comes first. */
function shadows(earlier: RouteRule, later: RouteRule): boolean {
  if (earlier.methods !== undefined) {
    if (later.methods === undefined) return false;
    for (const m of later.methods) if (!earlier.methods.has(m)) return false;
  }
  if (!earlier.prefix) return !later.prefix && earlier.lower === later.lower;
  return later.lower === earlier.lower || later.lower.startsWith(`${earlier.lower}/`);
}

/**
 * Validates `route_scopes` (absent: no rules). Problems go to `y`; a rule that
 * an earlier one always matches first is a warning, since it can never apply.
 */
export function readRouteScopes(y: YamlFile, raw: unknown, warnings: string[]): RouteScopes | undefined {
  if (raw === undefined || raw === null) return routeScopes([]);
  if (!Array.isArray(raw)) {
    y.fail(
      ["route_scopes"],
      "must be a list of rules such as {methods: [POST], path: /v2/messages/*, scope: messages:send}",
      raw,
    );
    return undefined;
  }
  const before = y.problemCount;
  const rules: RouteRule[] = [];
  raw.forEach((item: unknown, i) => {
    const at = ["route_scopes", i];
    const m = y.mapping(at, item, ["methods", "path", "scope"]);
    if (m === undefined) return;
    const path = m["path"];
    if (path === undefined) y.fail(at, 'missing field "path" (e.g. /v2/messages/*)');
    else if (typeof path !== "string") y.fail([...at, "path"], "must be a path such as /v2/messages/*", path);
    else {
      const why = rulePathProblem(path);
      if (why !== undefined) y.fail([...at, "path"], why, path);
    }
    const scope = m["scope"];
    if (scope === undefined) y.fail(at, 'missing field "scope" (e.g. messages:send)');
    else if (typeof scope !== "string" || !SCOPE.test(scope)) {
      y.fail([...at, "scope"], "must be a scope name such as messages:send (A-Z a-z 0-9 _ . : * -)", scope);
    }
    const methods = m["methods"];
    let methodList: string[] | undefined;
    if (methods !== undefined) {
      if (!Array.isArray(methods) || methods.length === 0) {
        y.fail([...at, "methods"], "must be a non-empty list such as [POST, PUT] (omit it for every method)", methods);
      } else {
        methodList = [];
        methods.forEach((v: unknown, j) => {
          if (typeof v !== "string" || v.length > METHOD_MAX || !isToken(v))
            y.fail([...at, "methods", j], "must be a method such as POST", v);
          else methodList?.push(v);
        });
      }
    }
    if (y.problemCount === before && typeof path === "string" && typeof scope === "string") {
      const rule = compileRule({ ...(methodList ? { methods: methodList } : {}), path, scope });
      const earlier = rules.findIndex((r) => shadows(r, rule));
      if (earlier >= 0) {
        warnings.push(
          `route_scopes[${i}] (${path}) never applies: route_scopes[${earlier}] matches all of its requests first`,
        );
      }
      rules.push(rule);
    }
  });
  return y.problemCount === before ? routeScopes(rules) : undefined;
}

/** Validates `forward_identity` (default false). */
export function readForwardIdentity(y: YamlFile, raw: unknown): boolean {
  if (raw === undefined) return false;
  if (typeof raw !== "boolean") {
    y.fail(["forward_identity"], "must be true or false", raw);
    return false;
  }
  return raw;
}

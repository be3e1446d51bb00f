/**
 * Traefik and Envoy have no Debian package, so their shipped configurations
 * (deploy/ingress/traefik, deploy/ingress/envoy) are checked, not run: against
 * JSON schemas of the documented fields kept in deploy/ingress/schema (unknown
 * fields, wrong types and enums fail, as they fail in Traefik and Envoy), and
 * against what keyfence needs of them (the ping routed to keyfence, the
 * client's forwarding headers ignored, fail closed, the key id not forgeable).
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, test } from "node:test";
import { Ajv, type ValidateFunction } from "ajv";
import { parse } from "yaml";
import { CLIENT_ADDRESS_HEADERS } from "../../src/proxy/forward.js";

const DIR = resolve(fileURLToPath(import.meta.url), "../../../../deploy/ingress");
const load = (file: string): unknown => parse(readFileSync(join(DIR, file), "utf8")) as unknown;
const schema = (file: string): object => JSON.parse(readFileSync(join(DIR, "schema", file), "utf8")) as object;

const ajv = new Ajv({ allErrors: true, strict: true });
ajv.addSchema(schema("traefik.schema.json"), "traefik");
const traefikStatic = ajv.getSchema("traefik#/definitions/static") as ValidateFunction;
const traefikDynamic = ajv.getSchema("traefik#/definitions/dynamic") as ValidateFunction;
const envoy = ajv.compile(schema("envoy.schema.json"));

type Doc = Record<string, unknown>;
const clone = <T>(v: T): T => structuredClone(v);
/** The object at `path` (keys and indexes) in `doc`. */
function at(doc: unknown, ...path: Array<string | number>): Doc {
  let v: unknown = doc;
  for (const p of path) v = (v as Record<string | number, unknown>)[p];
  assert.ok(v !== null && typeof v === "object", `no object at ${path.join(".")}`);
  return v as Doc;
}

/** Headers in which a trusted ingress describes another request: on the ping route, only a client could have sent them. */
const PING_QUESTION = ["x-forwarded-uri", "x-forwarded-method", "x-original-uri", "x-original-method"];

/** What keyfence needs of the Traefik files; every unmet need, named. */
function traefikNeeds(staticDoc: unknown, dynamicDoc: unknown): string[] {
  const out: string[] = [];
  const http = at(dynamicDoc, "http");
  const routers = at(http, "routers") as Record<string, Doc>;
  const middlewares = at(http, "middlewares") as Record<string, Doc>;
  const services = at(http, "services") as Record<string, Doc>;
  const authNames = Object.keys(middlewares).filter((n) => middlewares[n]?.["forwardAuth"] !== undefined);
  if (authNames.length !== 1) out.push("exactly one forwardAuth middleware");
  const auth = (middlewares[authNames[0] ?? ""]?.["forwardAuth"] ?? {}) as Doc;
  if (auth["trustForwardHeader"] !== false) out.push("forwardAuth.trustForwardHeader: false");
  if (auth["forwardBody"] === true) out.push("forwardAuth must not send bodies");
  for (const h of ["X-Keyfence-Key-Id", "X-Keyfence-Key-Scopes", "X-Keyfence-Sandbox"]) {
    if (!((auth["authResponseHeaders"] as string[] | undefined) ?? []).includes(h))
      out.push(`authResponseHeaders lists ${h}`);
  }
  // Traefik removes what the regex matches from the client's request: every spelling a CGI or PHP application
  // reads as one of keyfence's headers (Go's (?i) prefix is JavaScript's i flag here).
  const regex = typeof auth["authResponseHeadersRegex"] === "string" ? auth["authResponseHeadersRegex"] : "";
  const strips = new RegExp(regex.replace(/^\(\?i\)/, ""), regex.startsWith("(?i)") ? "i" : "");
  for (const h of [
    "X-Keyfence-Key-Id",
    "X_Keyfence_Key_Id",
    "x.keyfence.key.id",
    "X-Keyfence_Sandbox",
    "X.Keyfence-Anything",
  ]) {
    if (regex === "" || !strips.test(h)) out.push(`authResponseHeadersRegex strips ${h}`);
  }
  const decisionUrl = typeof auth["address"] === "string" ? auth["address"].replace(/\/$/, "") : "";
  const ping = Object.values(routers).find((r) => String(r["rule"]).startsWith("Path(`/_keyfence/ping`)"));
  if (ping === undefined) out.push("a router for the ping path");
  else {
    if (!String(ping["rule"]).includes("Path(`/_keyfence/ping/ip`)"))
      out.push("the ping router also takes <ping_path>/ip");
    const servers = (at(services, String(ping["service"]), "loadBalancer")["servers"] ?? []) as Doc[];
    if (servers[0]?.["url"] !== decisionUrl) out.push("the ping router goes to keyfence's decision listener");
    if (typeof ping["priority"] !== "number" || ping["priority"] < 100) out.push("the ping router wins by priority");
    for (const h of PING_QUESTION) {
      const removes = ((ping["middlewares"] as string[] | undefined) ?? []).some((m) => {
        const custom = (middlewares[m]?.["headers"] as Doc | undefined)?.["customRequestHeaders"] as Doc | undefined;
        return custom !== undefined && Object.entries(custom).some(([k, v]) => k.toLowerCase() === h && v === "");
      });
      if (!removes) out.push(`the ping router removes a client-sent ${h}`);
    }
  }
  for (const [name, r] of Object.entries(routers)) {
    if (r === ping) continue;
    if (!((r["middlewares"] as string[] | undefined) ?? []).includes(authNames[0] ?? ""))
      out.push(`router ${name} asks keyfence`);
  }
  for (const [name, r] of Object.entries(routers)) {
    if (r === ping) continue;
    // Traefik sets X-Real-Ip itself; every other header the proxy listener drops from clients goes here.
    for (const h of [...CLIENT_ADDRESS_HEADERS].filter((x) => x !== "x-real-ip")) {
      const removes = ((r["middlewares"] as string[] | undefined) ?? []).some((m) => {
        const custom = (middlewares[m]?.["headers"] as Doc | undefined)?.["customRequestHeaders"] as Doc | undefined;
        return custom !== undefined && Object.entries(custom).some(([k, v]) => k.toLowerCase() === h && v === "");
      });
      if (!removes) out.push(`router ${name} removes a client-sent ${h}`);
    }
  }
  const web = at(staticDoc, "entryPoints");
  for (const [name, ep] of Object.entries(web as Record<string, Doc>)) {
    if ((ep["forwardedHeaders"] as Doc | undefined)?.["insecure"] === true)
      out.push(`entry point ${name} must not trust every client's X-Forwarded-For`);
  }
  return out;
}

/** What keyfence needs of the Envoy file; every unmet need, named. */
/** Every spelling of the dashed header name `h` with `.` for one or more of its `-` (PHP reads them all as `h`). */
function dotted(h: string): string[] {
  const parts = h.split("-");
  const out: string[] = [];
  for (let mask = 1; mask < 1 << (parts.length - 1); mask++) {
    out.push(parts.reduce((acc, part, i) => `${acc}${mask & (1 << (i - 1)) ? "." : "-"}${part}`));
  }
  return out;
}

function envoyNeeds(doc: unknown): string[] {
  const out: string[] = [];
  const hcm = at(doc, "static_resources", "listeners", 0, "filter_chains", 0, "filters", 0, "typed_config");
  if (hcm["use_remote_address"] !== true) out.push("use_remote_address: true (Envoy appends the client's address)");
  if ((hcm["xff_num_trusted_hops"] ?? 0) !== 0) out.push("xff_num_trusted_hops: 0 at the edge");
  const underscores = (hcm["common_http_protocol_options"] as Doc | undefined)?.["headers_with_underscores_action"];
  if (underscores !== "DROP_HEADER" && underscores !== "REJECT_REQUEST")
    out.push("headers_with_underscores_action: DROP_HEADER (CGI apps read X_API_Key as X-API-Key)");
  const filters = hcm["http_filters"] as Doc[];
  const names = filters.map((f) => f["name"]);
  const authAt = names.indexOf("envoy.filters.http.ext_authz");
  const stripAt = names.indexOf("envoy.filters.http.header_mutation");
  if (authAt < 0) out.push("an ext_authz filter");
  if (names[names.length - 1] !== "envoy.filters.http.router") out.push("the router filter last");
  const strip = stripAt < 0 ? undefined : at(filters[stripAt], "typed_config", "mutations");
  const removed = ((strip?.["request_mutations"] as Doc[] | undefined) ?? []).map((m) => m["remove"]);
  for (const h of ["x-keyfence-key-id", "x-keyfence-key-scopes", "x-keyfence-sandbox"]) {
    if (!(stripAt >= 0 && stripAt < authAt && removed.includes(h)))
      out.push(`a client-sent ${h} removed before ext_authz`);
  }
  for (const h of ["x-keyfence-reason", "x-keyfence-message", "x-keyfence-otp"]) {
    if (!removed.includes(h)) out.push(`a client-sent ${h} removed (SPEC §9: none reaches the application)`);
  }
  for (const h of CLIENT_ADDRESS_HEADERS) {
    if (!removed.includes(h)) out.push(`a client-sent ${h} removed (the application may read it as the client)`);
  }
  for (const h of [
    "x-keyfence-key-id",
    "x-keyfence-key-scopes",
    "x-keyfence-sandbox",
    ...[...CLIENT_ADDRESS_HEADERS].filter((h) => h !== "forwarded"),
  ]) {
    for (const v of dotted(h)) if (!removed.includes(v)) out.push(`a client-sent ${v} removed (PHP reads it as ${h})`);
  }
  const authz = authAt < 0 ? {} : at(filters[authAt], "typed_config");
  if (authz["failure_mode_allow"] !== false) out.push("failure_mode_allow: false");
  if (authz["with_request_body"] !== undefined) out.push("no request body to keyfence");
  const allowed = ((authz["allowed_headers"] as Doc | undefined)?.["patterns"] as Doc[] | undefined) ?? [];
  if (!allowed.some((p) => p["exact"] === "x-forwarded-for")) out.push("x-forwarded-for sent to keyfence");
  for (const h of ["x-http-method-override", "x-http-method", "x-method-override"]) {
    if (!allowed.some((p) => p["exact"] === h)) out.push(`${h} sent to keyfence (route_scopes)`);
    for (const v of dotted(h)) {
      const sent = allowed.some((p) => {
        const re = (p["safe_regex"] as Doc | undefined)?.["regex"];
        return p["exact"] === v || (typeof re === "string" && new RegExp(`^(?:${re})$`).test(v));
      });
      if (!sent) out.push(`${v} sent to keyfence (PHP reads it as ${h})`);
    }
  }
  const upstreamHeaders = (
    (at(authz, "http_service", "authorization_response", "allowed_upstream_headers")["patterns"] as Doc[]) ?? []
  ).map((p) => p["exact"]);
  for (const h of ["x-keyfence-key-id", "x-keyfence-key-scopes", "x-keyfence-sandbox"]) {
    if (!upstreamHeaders.includes(h)) out.push(`${h} passed to the application`);
  }
  const decisionCluster = String(at(authz, "http_service", "server_uri")["cluster"]);
  const routes = at(hcm, "route_config", "virtual_hosts", 0)["routes"] as Doc[];
  if (!routes.some((r) => (r["match"] as Doc)["path"] === "/_keyfence/ping/ip")) out.push("a route for <ping_path>/ip");
  const ping = routes.find((r) => (r["match"] as Doc)["path"] === "/_keyfence/ping");
  if (ping === undefined || routes.indexOf(ping) !== 0) out.push("the ping route first");
  else {
    if ((ping["route"] as Doc)["cluster"] !== decisionCluster) out.push("the ping route goes to keyfence");
    const perRoute = (ping["typed_per_filter_config"] as Doc | undefined)?.["envoy.filters.http.ext_authz"] as
      Doc | undefined;
    if (perRoute?.["disabled"] !== true) out.push("ext_authz disabled on the ping route (keyfence answers it)");
  }
  for (const r of routes.filter((r) => String((r["match"] as Doc)["path"]).startsWith("/_keyfence/ping"))) {
    const removed = (r["request_headers_to_remove"] as string[] | undefined) ?? [];
    for (const h of PING_QUESTION) {
      if (!removed.includes(h))
        out.push(`the route for ${String((r["match"] as Doc)["path"])} removes a client-sent ${h}`);
    }
  }
  return out;
}

const traefikFiles = (): [unknown, unknown] => [load("traefik/traefik.yml"), load("traefik/keyfence-dynamic.yml")];

describe("deploy/ingress/traefik against Traefik's documented fields", () => {
  test("the shipped files are valid and meet keyfence's needs", () => {
    const [s, d] = traefikFiles();
    assert.ok(traefikStatic(s), ajv.errorsText(traefikStatic.errors));
    assert.ok(traefikDynamic(d), ajv.errorsText(traefikDynamic.errors));
    assert.deepEqual(traefikNeeds(s, d), []);
  });

  // Each breaks the documented schema: Traefik would refuse the file.
  const broken: Array<[string, (d: Doc) => void]> = [
    ["a misspelled field", (d) => (at(d, "http", "middlewares", "keyfence", "forwardAuth")["authResponseHeader"] = [])],
    ["forwardAuth without address", (d) => delete at(d, "http", "middlewares", "keyfence", "forwardAuth")["address"]],
    ["a list given as a string", (d) => (at(d, "http", "routers", "app")["middlewares"] = "keyfence")],
    ["a router without service", (d) => delete at(d, "http", "routers", "app")["service"]],
    ["a server without url", (d) => (at(d, "http", "services", "app", "loadBalancer")["servers"] = [{}])],
    ["an unknown middleware kind", (d) => (at(d, "http", "middlewares")["x"] = { forwardAuthz: {} })],
  ];
  for (const [desc, mutate] of broken) {
    test(`invalid: ${desc}`, () => {
      const d = clone(traefikFiles()[1]) as Doc;
      mutate(d);
      assert.equal(traefikDynamic(d), false);
    });
  }

  // Each is valid Traefik, but unsafe or broken for keyfence.
  const unsafe: Array<[string, (s: Doc, d: Doc) => void, RegExp]> = [
    [
      "trusting the client's X-Forwarded-*",
      (_s, d) => (at(d, "http", "middlewares", "keyfence", "forwardAuth")["trustForwardHeader"] = true),
      /trustForwardHeader/,
    ],
    [
      "no key id copied",
      (_s, d) => (at(d, "http", "middlewares", "keyfence", "forwardAuth")["authResponseHeaders"] = []),
      /X-Keyfence-Key-Id/,
    ],
    [
      "client spellings with `_` or `.` kept",
      (_s, d) => (at(d, "http", "middlewares", "keyfence", "forwardAuth")["authResponseHeadersRegex"] = "^X-Keyfence-"),
      /authResponseHeadersRegex strips X_Keyfence_Key_Id/,
    ],
    ["no ping router", (_s, d) => delete at(d, "http", "routers")["keyfence-ping"], /ping path/],
    [
      "a client's X-Original-URI asked about on the ping",
      (_s, d) => delete at(d, "http", "routers", "keyfence-ping")["middlewares"],
      /the ping router removes a client-sent x-original-uri/,
    ],
    ["an unguarded router", (_s, d) => (at(d, "http", "routers", "app")["middlewares"] = []), /router app asks/],
    [
      "every client trusted",
      (s) => (at(s, "entryPoints", "web")["forwardedHeaders"] = { insecure: true }),
      /must not trust every client/,
    ],
  ];
  for (const [desc, mutate, expected] of unsafe) {
    test(`unsafe for keyfence: ${desc}`, () => {
      const [s, d] = traefikFiles().map(clone) as [Doc, Doc];
      mutate(s, d);
      assert.ok(traefikStatic(s) && traefikDynamic(d), "still valid Traefik");
      const needs = traefikNeeds(s, d);
      assert.ok(
        needs.some((n) => expected.test(n)),
        needs.join("; "),
      );
    });
  }
});

describe("deploy/ingress/envoy against Envoy's documented fields", () => {
  test("the shipped file is valid and meets keyfence's needs", () => {
    const doc = load("envoy/envoy.yaml");
    assert.ok(envoy(doc), ajv.errorsText(envoy.errors));
    assert.deepEqual(envoyNeeds(doc), []);
  });

  const hcmOf = (d: Doc): Doc =>
    at(d, "static_resources", "listeners", 0, "filter_chains", 0, "filters", 0, "typed_config");
  const authzOf = (d: Doc): Doc =>
    at(
      (hcmOf(d)["http_filters"] as Doc[]).find((f) => f["name"] === "envoy.filters.http.ext_authz"),
      "typed_config",
    );
  const broken: Array<[string, (d: Doc) => void]> = [
    ["a misspelled field", (d) => (authzOf(d)["failure_mode_allowed"] = false)],
    ["an unknown status name", (d) => (authzOf(d)["status_on_error"] = { code: 503 })],
    [
      "a wrong @type",
      (d) => (authzOf(d)["@type"] = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v2.ExtAuthz"),
    ],
    ["a timeout without unit", (d) => (at(authzOf(d), "http_service", "server_uri")["timeout"] = "2")],
    ["a name given as a number", (d) => (at(hcmOf(d), "route_config")["name"] = 7)],
    [
      "a route with two matches",
      (d) => (at(hcmOf(d), "route_config", "virtual_hosts", 0, "routes", 1)["match"] = { prefix: "/", path: "/" }),
    ],
  ];
  for (const [desc, mutate] of broken) {
    test(`invalid: ${desc}`, () => {
      const d = clone(load("envoy/envoy.yaml")) as Doc;
      mutate(d);
      assert.equal(envoy(d), false);
    });
  }

  /** Takes the removal of the client's `name` out of the header_mutation filter. */
  const keepHeader = (d: Doc, name: string): void => {
    const strip = (hcmOf(d)["http_filters"] as Doc[]).find((f) => f["name"] === "envoy.filters.http.header_mutation");
    const m = at(strip, "typed_config", "mutations");
    m["request_mutations"] = (m["request_mutations"] as Doc[]).filter((r) => r["remove"] !== name);
  };
  const unsafe: Array<[string, (d: Doc) => void, RegExp]> = [
    ["fail open", (d) => (authzOf(d)["failure_mode_allow"] = true), /failure_mode_allow/],
    ["the client's X-Forwarded-For trusted", (d) => (hcmOf(d)["xff_num_trusted_hops"] = 1), /xff_num_trusted_hops/],
    [
      "no XFF to keyfence",
      (d) => (authzOf(d)["allowed_headers"] = { patterns: [{ exact: "x-request-id" }] }),
      /x-forwarded-for/,
    ],
    ["a client-sent X-Real-IP passed on", (d) => keepHeader(d, "x-real-ip"), /x-real-ip removed/],
    [
      "a client's X-Forwarded-Uri asked about on the ping",
      (d) =>
        delete (at(hcmOf(d), "route_config", "virtual_hosts", 0)["routes"] as Doc[])[0]?.["request_headers_to_remove"],
      /the route for \/_keyfence\/ping removes a client-sent x-forwarded-uri/,
    ],
    [
      "a client-sent X.Keyfence.Key.Id passed on (PHP reads it as X-Keyfence-Key-Id)",
      (d) => keepHeader(d, "x.keyfence.key.id"),
      /x\.keyfence\.key\.id removed/,
    ],
    [
      "a dotted method override kept from keyfence",
      (d) => {
        const allowed = at(authzOf(d), "allowed_headers");
        allowed["patterns"] = (allowed["patterns"] as Doc[]).filter((p) => p["safe_regex"] === undefined);
      },
      /x\.http\.method\.override sent to keyfence/,
    ],
    [
      "header names with underscores passed on",
      (d) => delete hcmOf(d)["common_http_protocol_options"],
      /headers_with_underscores_action/,
    ],
    [
      "a method override kept from keyfence",
      (d) =>
        (authzOf(d)["allowed_headers"] = {
          patterns: [{ exact: "x-forwarded-for" }, { exact: "x-http-method" }, { exact: "x-method-override" }],
        }),
      /x-http-method-override sent to keyfence/,
    ],
    [
      "a forgeable key id",
      (d) =>
        (hcmOf(d)["http_filters"] = (hcmOf(d)["http_filters"] as Doc[]).filter(
          (f) => f["name"] !== "envoy.filters.http.header_mutation",
        )),
      /x-keyfence-key-id removed/,
    ],
    [
      "the ping checked like any request (it would reach the application)",
      (d) => delete at(hcmOf(d), "route_config", "virtual_hosts", 0, "routes", 0)["typed_per_filter_config"],
      /ext_authz disabled on the ping route/,
    ],
  ];
  for (const [desc, mutate, expected] of unsafe) {
    test(`unsafe for keyfence: ${desc}`, () => {
      const d = clone(load("envoy/envoy.yaml")) as Doc;
      mutate(d);
      assert.ok(envoy(d), `still valid Envoy: ${ajv.errorsText(envoy.errors)}`);
      const needs = envoyNeeds(d);
      assert.ok(
        needs.some((n) => expected.test(n)),
        needs.join("; "),
      );
    });
  }
});

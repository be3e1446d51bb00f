/** `keys.credentials` (SPEC §4): where keys travel, validated with every problem located. */
import { normalizeQueryName, type CredentialPlace } from "../policy/credential.js";
import { HOP_BY_HOP, isToken } from "../util/http.js";
import type { YamlFile } from "../util/yaml.js";

/** The default: the bearer token of the Authorization header only. */
export const DEFAULT_CREDENTIALS: readonly CredentialPlace[] = [{ kind: "bearer" }];

/** Longest header name accepted as a key's place. */
const HEADER_NAME_MAX = 100;
/** Headers that cannot carry a key as a whole value: Authorization has its own places, the others are hop-by-hop or routing. */
const NOT_A_KEY_HEADER = new Set(["authorization", "host", "content-length", "x-forwarded-for", ...HOP_BY_HOP]);
const QUERY_NAME = /^[A-Za-z0-9_.~-]{1,100}$/;

/** Validates `keys.credentials` (undefined: the default); problems go to `y`, the result is undefined when there are any. */
export function parseCredentials(y: YamlFile, raw: unknown): readonly CredentialPlace[] | undefined {
  if (raw === undefined) return DEFAULT_CREDENTIALS;
  const at = ["keys", "credentials"];
  if (!Array.isArray(raw) || raw.length === 0) {
    y.fail(
      at,
      "must be a non-empty list of places: bearer, {header: NAME}, {basic: username|password}, {query: NAME}",
      raw,
    );
    return undefined;
  }
  const out: CredentialPlace[] = [];
  const seen = new Set<string>();
  let ok = true;
  raw.forEach((item: unknown, i) => {
    const path = [...at, i];
    let place: CredentialPlace | undefined;
    if (item === "bearer") place = { kind: "bearer" };
    else if (typeof item === "object" && item !== null && !Array.isArray(item)) {
      const m = y.mapping(path, item, ["header", "basic", "query"]);
      const fields = m === undefined ? [] : Object.keys(m);
      if (m !== undefined && fields.length !== 1) {
        y.fail(path, "must have exactly one of header, basic, query", item);
      } else if (m !== undefined) {
        const field = fields[0] as string;
        const v = m[field];
        if (field === "header") {
          if (typeof v !== "string" || v.length > HEADER_NAME_MAX || !isToken(v))
            y.fail([...path, field], "must be a header name such as X-API-Key", v);
          else if (NOT_A_KEY_HEADER.has(v.toLowerCase())) {
            y.fail(
              [...path, field],
              v.toLowerCase() === "authorization"
                ? "the Authorization header is read by the places bearer and {basic: username|password}"
                : "this header cannot carry an API key",
              v,
            );
          } else place = { kind: "header", name: v.toLowerCase() };
        } else if (field === "basic") {
          if (v !== "username" && v !== "password") y.fail([...path, field], 'must be "username" or "password"', v);
          else place = { kind: "basic", half: v };
        } else if (typeof v !== "string" || !QUERY_NAME.test(v)) {
          y.fail([...path, field], "must be a query parameter name of A-Z, a-z, 0-9, _ . ~ -", v);
        } else place = { kind: "query", name: v };
      }
    } else {
      y.fail(path, "must be bearer, {header: NAME}, {basic: username|password} or {query: NAME}", item);
    }
    if (place === undefined) {
      ok = false;
      return;
    }
    const id =
      place.kind === "bearer"
        ? "bearer"
        : place.kind === "basic"
          ? `basic:${place.half}`
          : place.kind === "header"
            ? `header:${place.name}`
            : `query:${normalizeQueryName(place.name)}`;
    if (seen.has(id)) {
      y.fail(path, "listed twice (query names compare as upstreams read them: case, . and _ alike)", item);
      ok = false;
      return;
    }
    seen.add(id);
    out.push(place);
  });
  return ok ? out : undefined;
}

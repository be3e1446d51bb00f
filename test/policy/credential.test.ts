/** Credential places and spellings (SPEC §4): table tests and a differential property against loose real-world parsers. */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fc from "fast-check";
import {
  BEARER_ONLY,
  compilePlaces,
  readCredential,
  type CredentialPlace,
  type CredentialResult,
} from "../../src/policy/credential.js";

const ALL: CredentialPlace[] = [
  { kind: "bearer" },
  { kind: "header", name: "x-api-key" },
  { kind: "basic", half: "username" },
  { kind: "query", name: "api_key" },
];
const all = compilePlaces(ALL);
const b64 = (s: string): string => Buffer.from(s, "latin1").toString("base64");

const TOKEN = (token: string): CredentialResult => ({ kind: "token", token });
const MISSING: CredentialResult = { kind: "missing" };
const MALFORMED_AUTH: CredentialResult = { kind: "invalid", reason: "malformed_authorization" };
const MULTIPLE_AUTH: CredentialResult = { kind: "invalid", reason: "multiple_authorization" };
const MULTIPLE: CredentialResult = { kind: "invalid", reason: "multiple_credentials" };
const MALFORMED: CredentialResult = { kind: "invalid", reason: "malformed_credential" };

describe("Authorization spellings (default places)", () => {
  const cases: Array<[string, string, CredentialResult]> = [
    ["strict bearer", "Bearer k1", TOKEN("k1")],
    ["scheme in any case", "bEARER k1", TOKEN("k1")],
    ["HTAB separator", "Bearer\tk1", TOKEN("k1")],
    ["token68 with padding", "Bearer a-b._~+/c==", TOKEN("a-b._~+/c==")],
    ["colon separator", "Bearer:k1", MALFORMED_AUTH],
    ["equals separator", "Bearer=k1", MALFORMED_AUTH],
    ["no separator", "Bearerk1", MALFORMED_AUTH],
    ["NBSP (latin1 byte A0)", "Bearer\xa0k1", MALFORMED_AUTH],
    ["NEL (byte 85)", "Bearer\x85k1", MALFORMED_AUTH],
    ["U+3000 as UTF-8 bytes", "Bearer\xe3\x80\x80k1", MALFORMED_AUTH],
    ["file separator 1C", "Bearer\x1ck1", MALFORMED_AUTH],
    ["vertical tab", "Bearer\x0bk1", MALFORMED_AUTH],
    ["two spaces", "Bearer  k1", MALFORMED_AUTH],
    ["space then tab", "Bearer \tk1", MALFORMED_AUTH],
    ["two tokens", "Bearer k1 k2", MALFORMED_AUTH],
    ["comma list", "Bearer k1,Bearer k2", MALFORMED_AUTH],
    ["quoted token", 'Bearer "k1"', MALFORMED_AUTH],
    ["padding in the middle", "Bearer k=1", MALFORMED_AUTH],
    ["only padding", "Bearer ==", MALFORMED_AUTH],
    ["bare Bearer", "Bearer", MALFORMED_AUTH],
    ["non-ASCII inside the token", "Bearer k\xe91", MALFORMED_AUTH],
    ["another scheme", "Basic dXNlcjpwYXNz", MISSING],
    ["another scheme with a non-ASCII byte", "Token k\xa0", MALFORMED_AUTH],
    ["another scheme with a control byte", "Digest a=\x01", MALFORMED_AUTH],
    ["a bearer credential after another one", "Basic x, Bearer k1", MALFORMED_AUTH],
    ["bearer inside another scheme", "XBearer k1", MALFORMED_AUTH],
    ["empty value", "", MISSING],
    ["a scheme differing by a non-letter", "Bea@er k1", MISSING],
  ];
  for (const [desc, value, expected] of cases) {
    test(desc, () => assert.deepEqual(readCredential(["Authorization", value], "/", BEARER_ONLY), expected));
  }
  test("two Authorization headers", () =>
    assert.deepEqual(
      readCredential(["Authorization", "Basic a", "authorization", "Bearer k"], "/", BEARER_ONLY),
      MULTIPLE_AUTH,
    ));
});

describe("credential places", () => {
  const cases: Array<{
    desc: string;
    headers?: string[];
    target?: string;
    places?: CredentialPlace[];
    expect: CredentialResult;
  }> = [
    { desc: "bearer", headers: ["Authorization", "Bearer k1"], expect: TOKEN("k1") },
    { desc: "X-API-Key", headers: ["X-Api-Key", "k1"], expect: TOKEN("k1") },
    { desc: "X-API-Key with a space", headers: ["X-API-Key", "k1 k2"], expect: MALFORMED },
    { desc: "X-API-Key with NBSP", headers: ["X-API-Key", "\xa0k1"], expect: MALFORMED },
    { desc: "X-API-Key with a comma", headers: ["X-API-Key", "k1,k2"], expect: MALFORMED },
    { desc: "X-API-Key empty: no key", headers: ["X-API-Key", ""], expect: MISSING },
    { desc: "X-API-Key twice", headers: ["X-API-Key", "k1", "x-api-key", "k1"], expect: MULTIPLE },
    { desc: "X-API-Key twice, one empty", headers: ["X-API-Key", "", "x-api-key", "k1"], expect: MULTIPLE },
    { desc: "basic username", headers: ["Authorization", `Basic ${b64("k1:")}`], expect: TOKEN("k1") },
    {
      desc: "basic username, password ignored",
      headers: ["Authorization", `basic ${b64("k1:whatever x")}`],
      expect: TOKEN("k1"),
    },
    { desc: "basic without a colon", headers: ["Authorization", `Basic ${b64("k1")}`], expect: MALFORMED_AUTH },
    {
      desc: "basic not canonical (no padding)",
      headers: ["Authorization", `Basic ${b64("k12:").replace(/=+$/, "")}`],
      expect: MALFORMED_AUTH,
    },
    { desc: "basic, base64url alphabet", headers: ["Authorization", "Basic a-_6"], expect: MALFORMED_AUTH },
    { desc: "basic with a bad username", headers: ["Authorization", `Basic ${b64("k 1:")}`], expect: MALFORMED_AUTH },
    { desc: "basic with two spaces", headers: ["Authorization", `Basic  ${b64("k1:")}`], expect: MALFORMED_AUTH },
    { desc: "basic empty username: no key", headers: ["Authorization", `Basic ${b64(":pw")}`], expect: MISSING },
    {
      desc: "basic username and password both listed",
      headers: ["Authorization", `Basic ${b64("k1:k2")}`],
      places: [
        { kind: "basic", half: "username" },
        { kind: "basic", half: "password" },
      ],
      expect: MULTIPLE,
    },
    {
      desc: "basic password",
      headers: ["Authorization", `Basic ${b64("acct:k2")}`],
      places: [{ kind: "basic", half: "password" }],
      expect: TOKEN("k2"),
    },
    {
      desc: "basic not listed: another scheme, no key",
      headers: ["Authorization", `Basic ${b64("k1:")}`],
      places: [{ kind: "header", name: "x-api-key" }],
      expect: MISSING,
    },
    {
      desc: "bearer not listed: no key, but still strict",
      headers: ["Authorization", "Bearer:k1"],
      places: [{ kind: "header", name: "x-api-key" }],
      expect: MALFORMED_AUTH,
    },
    {
      desc: "bearer not listed: a strict bearer is no key",
      headers: ["Authorization", "Bearer k1"],
      places: [{ kind: "header", name: "x-api-key" }],
      expect: MISSING,
    },
    { desc: "query", target: "/a?x=1&api_key=k1", expect: TOKEN("k1") },
    { desc: "query percent-encoded value", target: "/a?api_key=k%2D1", expect: TOKEN("k-1") },
    { desc: "query percent-encoded name", target: "/a?api%5Fkey=k1", expect: TOKEN("k1") },
    { desc: "query name in another case", target: "/a?API_KEY=k1", expect: TOKEN("k1") },
    { desc: "query name with a dot (PHP reads api_key)", target: "/a?api.key=k1", expect: TOKEN("k1") },
    { desc: "query array name", target: "/a?api_key[]=k1", expect: TOKEN("k1") },
    { desc: "query name with a leading + (space)", target: "/a?+api_key=k1", expect: TOKEN("k1") },
    // PHP cuts a decoded name at its first NUL: each of these is $_GET['api_key'] there.
    { desc: "query name ending in an encoded NUL", target: "/a?api_key%00=k1", expect: TOKEN("k1") },
    { desc: "query name with an encoded NUL, then more", target: "/a?api_key%00x=k1", expect: TOKEN("k1") },
    { desc: "query name with a NUL, twice", target: "/a?api_key=k1&api%5Fkey%00%00=k2", expect: MULTIPLE },
    { desc: "query name cut to nothing: not the key", target: "/a?%00api_key=k1", expect: MISSING },
    { desc: "query semicolon separator", target: "/a?x=1;api_key=k1", expect: TOKEN("k1") },
    { desc: "query twice", target: "/a?api_key=k1&api_key=k1", expect: MULTIPLE },
    { desc: "query twice, spelled apart", target: "/a?api_key=k1&API%5Fkey=k2", expect: MULTIPLE },
    { desc: "query twice, one empty", target: "/a?api_key=&api_key=k1", expect: MULTIPLE },
    { desc: "query with a raw + (space or plus?)", target: "/a?api_key=k+1", expect: MALFORMED },
    { desc: "query with an encoded space", target: "/a?api_key=k%201", expect: MALFORMED },
    { desc: "query with a bad escape", target: "/a?api_key=k%zz", expect: MALFORMED },
    { desc: "query with double encoding", target: "/a?api_key=k%252D1", expect: MALFORMED },
    { desc: "query empty: no key", target: "/a?api_key=", expect: MISSING },
    { desc: "query name only: no key", target: "/a?api_key", expect: MISSING },
    { desc: "a similar name is another parameter", target: "/a?api_keys=k1&xapi_key=k2", expect: MISSING },
    { desc: "bearer and X-API-Key", headers: ["Authorization", "Bearer k1", "X-API-Key", "k1"], expect: MULTIPLE },
    { desc: "bearer and query", headers: ["Authorization", "Bearer k1"], target: "/?api_key=k2", expect: MULTIPLE },
    {
      desc: "basic and X-API-Key",
      headers: ["Authorization", `Basic ${b64("k1:")}`, "X-API-Key", "k2"],
      expect: MULTIPLE,
    },
    { desc: "a header not listed is invisible", headers: ["X-Other-Key", "k1"], expect: MISSING },
    {
      desc: "query not listed is invisible",
      target: "/a?api_key=k1",
      places: [{ kind: "bearer" }, { kind: "header", name: "x-api-key" }],
      expect: MISSING,
    },
  ];
  for (const c of cases) {
    test(c.desc, () =>
      assert.deepEqual(
        readCredential(c.headers ?? [], c.target ?? "/", c.places ? compilePlaces(c.places) : all),
        c.expect,
      ),
    );
  }
});

// ---------------------------------------------------------------------------
// Differential property: real-world bearer extractors, written as their
// libraries and idioms do it. Values are byte strings (one latin1 char per
// byte, as Node gives header values and as keyfence forwards them).

/** Python's str.isspace() for code points (latin-1, with the information separators 0x1C-0x1F, and the Unicode spaces). */
// eslint-disable-next-line no-control-regex -- those separators are the point
const PY_SPACE = /[\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]/;
/** Go's unicode.IsSpace. */
const GO_SPACE = /[\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]/;

const utf8 = (latin1: string): string => Buffer.from(latin1, "latin1").toString("utf8");
const toBytes = (s: string): string => Buffer.from(s, "utf8").toString("latin1");

function pySplit(s: string): string[] {
  return s.split(new RegExp(`${PY_SPACE.source}+`, "u")).filter((p) => p !== "");
}

/** Go strings.Fields on bytes: UTF-8 runes that are spaces separate; invalid bytes are not spaces. Fields come back as bytes. */
function goFields(bytes: string): string[] {
  const buf = Buffer.from(bytes, "latin1");
  const out: string[] = [];
  let start = -1;
  let i = 0;
  while (i < buf.length) {
    const b = buf[i] as number;
    let len = 1;
    let cp = -1;
    if (b < 0x80) cp = b;
    else if (b >= 0xc2 && b < 0xe0 && i + 1 < buf.length && ((buf[i + 1] as number) & 0xc0) === 0x80) {
      len = 2;
      cp = ((b & 0x1f) << 6) | ((buf[i + 1] as number) & 0x3f);
    } else if (
      b >= 0xe0 &&
      b < 0xf0 &&
      i + 2 < buf.length &&
      ((buf[i + 1] as number) & 0xc0) === 0x80 &&
      ((buf[i + 2] as number) & 0xc0) === 0x80
    ) {
      len = 3;
      cp = ((b & 0x0f) << 12) | (((buf[i + 1] as number) & 0x3f) << 6) | ((buf[i + 2] as number) & 0x3f);
    }
    const space = cp >= 0 && GO_SPACE.test(String.fromCodePoint(cp));
    if (space) {
      if (start >= 0) out.push(buf.subarray(start, i).toString("latin1"));
      start = -1;
    } else if (start < 0) start = i;
    i += len;
  }
  if (start >= 0) out.push(buf.subarray(start).toString("latin1"));
  return out;
}

type Extractor = (h: string) => string | undefined;
const nonEmpty = (t: string | undefined): string | undefined => (t === undefined || t === "" ? undefined : t);

const EXTRACTORS: Record<string, Extractor> = {
  "regex /^Bearer\\s+(\\S+)$/i (latin1)": (h) => /^Bearer\s+(\S+)$/i.exec(h)?.[1],
  "regex /^Bearer\\s+(\\S+)$/i (UTF-8 decoded)": (h) => {
    const m = /^Bearer\s+(\S+)$/iu.exec(utf8(h))?.[1];
    return m === undefined ? undefined : toBytes(m);
  },
  "header.slice(7) after startsWith('Bearer ')": (h) => (h.startsWith("Bearer ") ? nonEmpty(h.slice(7)) : undefined),
  "header.slice(7) after a case-insensitive 'bearer' prefix": (h) =>
    h.slice(0, 6).toLowerCase() === "bearer" ? nonEmpty(h.slice(7)) : undefined,
  "header.substring(7).trim() (Java startsWith('Bearer'))": (h) =>
    h.startsWith("Bearer") ? nonEmpty(h.substring(7).trim()) : undefined,
  "replace(/^Bearer\\s*/i, '')": (h) =>
    /^Bearer\s*/i.test(h) ? nonEmpty(h.replace(/^Bearer\s*/i, "").trim()) : undefined,
  "passport-http-bearer: split(' '), 2 parts, /^Bearer$/i": (h) => {
    const parts = h.split(" ");
    return parts.length === 2 && /^Bearer$/i.test(parts[0] as string) ? nonEmpty(parts[1]) : undefined;
  },
  "const [scheme, token] = h.split(' ')": (h) => {
    const [scheme, token] = h.split(" ");
    return scheme?.toLowerCase() === "bearer" ? nonEmpty(token) : undefined;
  },
  "Spring DefaultBearerTokenResolver regex": (h) =>
    /^Bearer (?<token>[a-zA-Z0-9-._~+/]+=*)$/i.exec(h)?.groups?.["token"],
  "Ruby h[/^Bearer (.*)/i, 1] (^ after any newline)": (h) => nonEmpty(/^Bearer (.*)/im.exec(h)?.[1]),
  "comma list: find a 'bearer ' part": (h) =>
    nonEmpty(
      h
        .split(",")
        .map((p) => p.trim())
        .find((p) => /^bearer /i.test(p))
        ?.slice(7),
    ),
  "h.split('Bearer ')[1]": (h) => nonEmpty(h.split("Bearer ")[1]),
  "Python h.split() (latin-1 decoded), 2 parts": (h) => {
    const p = pySplit(h);
    return p.length === 2 && (p[0] as string).toLowerCase() === "bearer" ? p[1] : undefined;
  },
  "Python h.split()[1] (UTF-8 decoded)": (h) => {
    const p = pySplit(utf8(h));
    return p.length >= 2 && (p[0] as string).toLowerCase() === "bearer" ? toBytes(p[1] as string) : undefined;
  },
  "Python h[7:].strip() after lower().startswith('bearer')": (h) =>
    h.toLowerCase().startsWith("bearer")
      ? nonEmpty(h.slice(7).replace(new RegExp(`^${PY_SPACE.source}+|${PY_SPACE.source}+$`, "g"), ""))
      : undefined,
  "Starlette get_authorization_scheme_param (partition(' '))": (h) => {
    const i = h.indexOf(" ");
    return i >= 0 && h.slice(0, i).toLowerCase() === "bearer" ? nonEmpty(h.slice(i + 1)) : undefined;
  },
  "Go strings.Fields, 2 fields, EqualFold": (h) => {
    const f = goFields(h);
    return f.length === 2 && (f[0] as string).toLowerCase() === "bearer" ? f[1] : undefined;
  },
  "Go strings.Cut(h, ' ')": (h) => {
    const i = h.indexOf(" ");
    return i >= 0 && h.slice(0, i).toLowerCase() === "bearer" ? nonEmpty(h.slice(i + 1)) : undefined;
  },
  "Go strings.TrimPrefix(h, 'Bearer ')": (h) => (h.startsWith("Bearer ") ? nonEmpty(h.slice(7)) : undefined),
};

const PIECES = [
  "Bearer",
  "bearer",
  "BEARER",
  "bEaReR",
  "Basic",
  "Token",
  " ",
  "  ",
  "\t",
  ",",
  ", ",
  '"',
  "=",
  "==",
  ":",
  ";",
  "\n",
  "\r",
  "\x0b",
  "\x0c",
  "\x1c",
  "\x1d",
  "\x1e",
  "\x1f",
  "\x85",
  "\xa0",
  "\x00",
  "\xff",
  toBytes("\u00a0"),
  toBytes("\u0085"),
  toBytes("\u3000"),
  toBytes("\u2028"),
  toBytes("\u2003"),
  toBytes("\u200b"),
  "k",
  "tok",
  "kf_live_3xY",
  "-._~+/",
  "Bearer k",
  "bearer k",
];
const byteString = fc.array(fc.integer({ min: 0, max: 255 }), { maxLength: 14 }).map((a) => String.fromCharCode(...a));
const value = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.array(fc.oneof(fc.constantFrom(...PIECES), byteString), { maxLength: 7 }).map((a) => a.join("")),
  },
  { weight: 1, arbitrary: byteString },
);

describe("differential: loose upstream parsers never read a key keyfence did not decide", () => {
  test("property: whenever an extractor yields a token, keyfence decided exactly that token or refused", () => {
    let tokens = 0;
    fc.assert(
      fc.property(value, (v) => {
        const r = readCredential(["Authorization", v], "/", BEARER_ONLY);
        for (const [name, extract] of Object.entries(EXTRACTORS)) {
          const t = extract(v);
          if (t === undefined) continue;
          tokens++;
          if (r.kind === "invalid") continue;
          assert.ok(
            r.kind === "token" && r.token === t,
            `${name} reads ${JSON.stringify(t)} from ${JSON.stringify(v)}; keyfence: ${JSON.stringify(r)}`,
          );
        }
      }),
      { numRuns: 30_000 },
    );
    assert.ok(tokens > 10_000, `the generator must exercise the extractors (${String(tokens)} tokens read)`);
  });
  test("every extractor reads the strict form (they are live, not vacuous)", () => {
    for (const [name, extract] of Object.entries(EXTRACTORS)) assert.equal(extract("Bearer k1"), "k1", name);
  });
});

/** SPEC §5 over real sockets; every reply is checked against docs/openapi.yaml. */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { parseKeysFile } from "../../src/store/keysfile.js";
import { bearer, send, type Reply, type Send } from "../helpers/http.js";
import { OpenApi } from "../helpers/openapi.js";
import { eventually, sidecarFixture, startTestSidecar, type TestKey, type TestSidecar } from "../helpers/sidecar.js";
import { code, testClock, wrongCode } from "../helpers/totp.js";
import { startUpstream, type Upstream } from "../helpers/upstream.js";

const openapi = new OpenApi();
const sha = (s: string): string => createHash("sha256").update(s).digest("hex");

const TOTP_SECRETS = [
  "JBSWY3DPEHPK3PXPJBSWY3DP",
  "KRSXG5CTMVRXEZLUKRSXG5CT",
  "MFRGGZDFMZTWQ2LKMFRGGZDF",
  "GEZDGNBVGY3TQOJQGEZDGNBV",
];

const WRITER: TestKey = { id: "k_writer", secret: "s_writer", scopes: ["api_keys:write"], allow: ["127.0.0.1"] };
const READER: TestKey = { id: "k_reader", secret: "s_reader", scopes: ["messages:send"] };
const AWAY: TestKey = { id: "k_away", secret: "s_away", scopes: ["api_keys:write"], allow: ["203.0.113.0/24"] };
const OPEN_WRITER: TestKey = { id: "k_openwriter", secret: "s_openwriter", scopes: ["api_keys:write"] };
const REPORT_WRITER: TestKey = {
  id: "k_reportwriter",
  secret: "s_reportwriter",
  scopes: ["api_keys:write"],
  allow: ["203.0.113.0/24"],
  mode: "report",
};

const OPERATORS = [
  { name: "ops", token_sha256: sha("tok_ops") },
  ...TOTP_SECRETS.map((totp_secret, i) => ({ name: `ops2fa${i}`, token_sha256: sha(`tok_2fa${i}`), totp_secret })),
];

/** Calls the management API and checks the reply against the OpenAPI description. */
async function api(
  kf: TestSidecar,
  method: string,
  template: string,
  opts: Send & { path?: string; json?: unknown } = {},
): Promise<Reply> {
  return openapi.call(kf.adminUrl, method, template, opts);
}

const OPS = bearer("tok_ops");
const fa = (i: number): [string, string] => bearer(`tok_2fa${i}`);
const otp = (c: string): [string, string] => ["X-Keyfence-OTP", c];

/** The clock of every sidecar here: codes are computed for it, and it moves only when a test moves it. */
const clock = testClock();

async function startAdmin(
  up: Upstream,
  keys: TestKey[] | string = [WRITER, READER, AWAY, OPEN_WRITER, REPORT_WRITER],
): Promise<TestSidecar> {
  return startTestSidecar({ upstream: up.url, keys, admin: { operators: OPERATORS }, now: clock.now });
}

/**
 * Counts the keys-file watcher's events and reloads on `kf`'s file store, so a test can wait until a reload that
 * started after the latest file event has finished: a positive sign that the watcher looked at the file.
 */
function spyOnWatcher(kf: TestSidecar): { settled: () => boolean; restore: () => void } {
  // schedule (per file event) and reload (after the debounce) are called through the instance, so own
  // properties shadow the prototype's methods until restore deletes them.
  const store = kf.sidecar.store as unknown as { schedule: () => void; reload: () => Promise<void> };
  const schedule = store.schedule.bind(store);
  const reload = store.reload.bind(store);
  let events = 0;
  let handled = 0;
  store.schedule = () => {
    events++;
    schedule();
  };
  store.reload = () => {
    const upTo = events;
    return reload().finally(() => (handled = Math.max(handled, upTo)));
  };
  return {
    settled: () => events > 0 && handled === events,
    restore: () => {
      delete (store as Partial<typeof store>).schedule;
      delete (store as Partial<typeof store>).reload;
    },
  };
}

describe("management API", () => {
  const fx = sidecarFixture((up) => startAdmin(up));

  describe("authentication", () => {
    test("health and metrics need no credential", async () => {
      assert.equal((await api(fx.kf, "GET", "/healthz")).body, '{"status":"ok"}');
      assert.equal((await api(fx.kf, "GET", "/metrics")).status, 200);
    });

    test("no credential or an unknown one: 401", async () => {
      const none = await api(fx.kf, "GET", "/v1/api-keys", { localAddress: "127.0.0.4" });
      assert.equal(none.status, 401);
      assert.equal(none.headers["x-keyfence-reason"], "missing_credential");
      const unknown = await api(fx.kf, "GET", "/v1/api-keys", { headers: [bearer("nope")], localAddress: "127.0.0.4" });
      assert.equal(unknown.status, 401);
      assert.equal(unknown.headers["x-keyfence-reason"], "invalid_credential");
    });

    test("report mode never softens the management API", async () => {
      const r = await api(fx.kf, "GET", "/v1/api-keys", { headers: [bearer("s_reportwriter")] });
      assert.equal(r.status, 403);
      assert.equal(r.body, '{"message":"source IP 127.0.0.1 is not allowed for this API key"}');
      const proxied = await send(`${fx.kf.url}/x`, { headers: [bearer("s_reportwriter")] });
      assert.equal(proxied.status, 200, "while the proxy, in report mode, forwards");
    });

    test("a key without api_keys:write: 403", async () => {
      const r = await api(fx.kf, "GET", "/v1/api-keys", { headers: [bearer("s_reader")] });
      assert.equal(r.status, 403);
      assert.equal(r.headers["x-keyfence-reason"], "missing_scope");
    });

    test("a key caller outside its own allow list: the proxy's 403", async () => {
      const r = await api(fx.kf, "GET", "/v1/api-keys", { headers: [bearer("s_away")] });
      assert.equal(r.status, 403);
      assert.equal(r.body, '{"message":"source IP 127.0.0.1 is not allowed for this API key"}');
      assert.equal(r.headers["x-keyfence-reason"], "ip_not_allowed");
      const other = await api(fx.kf, "GET", "/v1/api-keys", {
        headers: [bearer("s_writer")],
        localAddress: "127.0.0.2",
      });
      assert.equal(other.body, '{"message":"source IP 127.0.0.2 is not allowed for this API key"}');
    });

    test("a key with the scope, inside its list, and an operator may read", async () => {
      assert.equal((await api(fx.kf, "GET", "/v1/api-keys", { headers: [bearer("s_writer")] })).status, 200);
      assert.equal((await api(fx.kf, "GET", "/v1/api-keys", { headers: [OPS] })).status, 200);
    });

    test("several Authorization headers: 400; unknown route 404 and wrong method 405, JSON", async () => {
      const dup = await send(`${fx.kf.adminUrl}/v1/api-keys`, { headers: [OPS, OPS] });
      assert.equal(dup.status, 400);
      assert.equal(dup.body, '{"message":"multiple Authorization headers"}');
      const nf = await send(`${fx.kf.adminUrl}/v2/nothing`, { headers: [OPS] });
      assert.equal(nf.status, 404);
      assert.equal(nf.headers["content-type"], "application/json");
      const wm = await send(`${fx.kf.adminUrl}/v1/api-keys`, { method: "PUT", headers: [OPS] });
      assert.equal(wm.status, 405);
      assert.equal(wm.headers["content-type"], "application/json");
      assert.equal(wm.headers.allow, "GET, POST");
    });

    test("repeated failures from one IP are throttled with 429 and Retry-After", async () => {
      const from = { localAddress: "127.0.0.3" };
      for (let i = 0; i < 10; i++) {
        assert.equal(
          (await api(fx.kf, "GET", "/v1/api-keys", { headers: [bearer(`guess${i}`)], ...from })).status,
          401,
        );
      }
      const r = await api(fx.kf, "GET", "/v1/api-keys", { headers: [bearer("guess10")], ...from });
      assert.equal(r.status, 429);
      assert.ok(Number(r.headers["retry-after"]) > 0 && Number(r.headers["retry-after"]) <= 60);
      const evenRight = await api(fx.kf, "GET", "/v1/api-keys", { headers: [OPS], ...from });
      assert.equal(evenRight.status, 429, "a right token does not bypass the throttle");
      assert.equal(
        (await api(fx.kf, "GET", "/v1/api-keys", { headers: [OPS] })).status,
        200,
        "other IPs are unaffected",
      );
    });
  });

  describe("keys", () => {
    test("create: 201, secret once, canonical list; only the hash is stored; in force on the proxy at once", async () => {
      const r = await api(fx.kf, "POST", "/v1/api-keys", {
        headers: [OPS],
        json: {
          name: "mailer",
          scopes: ["messages:send"],
          ip_allow_list: ["::ffff:127.0.0.1", "2001:DB8::/32", "127.0.0.1/32"],
        },
      });
      assert.equal(r.status, 201);
      const k = r.json() as { id: string; secret: string; ip_allow_list: string[]; mode: null; name: string };
      assert.deepEqual(k.ip_allow_list, ["127.0.0.1", "2001:db8::/32"]);
      assert.match(k.secret, /^kf_[A-Za-z0-9_-]{43}$/);
      assert.equal(k.mode, null);
      const file = readFileSync(fx.kf.keysFile, "utf8");
      assert.ok(!file.includes(k.secret));
      assert.ok(file.includes(sha(k.secret)));
      const allowed = await send(`${fx.kf.url}/_keyfence/ping`, { headers: [bearer(k.secret)] });
      assert.equal(allowed.status, 200);
      const denied = await send(`${fx.kf.url}/_keyfence/ping`, {
        headers: [bearer(k.secret)],
        localAddress: "127.0.0.2",
      });
      assert.equal(denied.status, 403);
      const got = await api(fx.kf, "GET", "/v1/api-keys/{id}", { path: `/v1/api-keys/${k.id}`, headers: [OPS] });
      assert.equal(got.status, 200);
      assert.ok(!got.body.includes("secret"), "a secret never comes back after creation");
    });

    test("patch: omitted and null leave fields, a list replaces the old one, [] clears it", async () => {
      const c = (
        await api(fx.kf, "POST", "/v1/api-keys", {
          headers: [OPS],
          json: { name: "p", scopes: ["a:b"], ip_allow_list: ["10.0.0.0/8"] },
        })
      ).json() as { id: string; secret: string };
      const path = `/v1/api-keys/${c.id}`;
      const auditBefore = readFileSync(join(fx.kf.dir, "keys.audit.jsonl"), "utf8");
      const noop = await api(fx.kf, "PATCH", "/v1/api-keys/{id}", {
        path,
        headers: [OPS],
        json: { name: "p", ip_allow_list: ["10.0.0.0/8"] },
      });
      assert.equal(noop.status, 200);
      assert.equal(
        readFileSync(join(fx.kf.dir, "keys.audit.jsonl"), "utf8"),
        auditBefore,
        "a patch that changes nothing writes nothing",
      );
      const renamed = await api(fx.kf, "PATCH", "/v1/api-keys/{id}", {
        path,
        headers: [OPS],
        json: { name: "renamed", scopes: null },
      });
      assert.equal(renamed.status, 200);
      assert.deepEqual((renamed.json() as { scopes: string[]; ip_allow_list: string[] }).scopes, ["a:b"]);
      assert.deepEqual((renamed.json() as { ip_allow_list: string[] }).ip_allow_list, ["10.0.0.0/8"]);
      const replaced = await api(fx.kf, "PATCH", "/v1/api-keys/{id}", {
        path,
        headers: [OPS],
        json: { ip_allow_list: ["127.0.0.2"], mode: "report" },
      });
      assert.deepEqual((replaced.json() as { ip_allow_list: string[] }).ip_allow_list, ["127.0.0.2"]);
      assert.equal((replaced.json() as { mode: string }).mode, "report");
      assert.equal(
        (await send(`${fx.kf.url}/x`, { headers: [bearer(c.secret)], localAddress: "127.0.0.2" })).status,
        200,
      );
      const cleared = await api(fx.kf, "PATCH", "/v1/api-keys/{id}", {
        path,
        headers: [OPS],
        json: { ip_allow_list: [] },
      });
      assert.deepEqual((cleared.json() as { ip_allow_list: string[] }).ip_allow_list, []);
      assert.equal(
        (await send(`${fx.kf.url}/_keyfence/ping`, { headers: [bearer(c.secret)], localAddress: "127.0.0.9" })).status,
        200,
        "works from anywhere again",
      );
      const watcher = spyOnWatcher(fx.kf);
      const del = await api(fx.kf, "DELETE", "/v1/api-keys/{id}", { path, headers: [OPS] });
      assert.equal(del.status, 204);
      assert.equal((await api(fx.kf, "GET", "/v1/api-keys/{id}", { path, headers: [OPS] })).status, 404);
      assert.equal(
        (await api(fx.kf, "PATCH", "/v1/api-keys/{id}", { path, headers: [OPS], json: { name: "x" } })).status,
        404,
      );
      assert.equal((await api(fx.kf, "DELETE", "/v1/api-keys/{id}", { path, headers: [OPS] })).status, 404);
      assert.equal(
        (await send(`${fx.kf.url}/_keyfence/ping`, { headers: [bearer(c.secret)] })).status,
        401,
        "deleted keys are unknown at once",
      );
      await eventually(watcher.settled, 10_000, "the watcher's reload after the DELETE's file events");
      watcher.restore();
      assert.ok(
        !fx.kf.logs.some((l) => l["event"] === "store_reloaded" || l["event"] === "store_reload_failed"),
        "the watcher does not take keyfence's own writes for edits",
      );
    });

    test("names with Unicode line separators and non-ASCII reach the file exactly as given", async () => {
      // U+2028/U+2029 once gained indentation inside the value on an in-place edit.
      const created = "créé\u2028ligne\u2029para";
      const renamed = "🔑 key\u0085nel\u2028sep\u00a0nbsp";
      const c = (await api(fx.kf, "POST", "/v1/api-keys", { headers: [OPS], json: { name: created } })).json() as {
        id: string;
      };
      const inFile = (): string | undefined => {
        const parsed = parseKeysFile("keys", readFileSync(fx.kf.keysFile, "utf8"), 1000);
        assert.ok(parsed.ok);
        return parsed.keys.find((k) => k.id === c.id)?.name;
      };
      assert.equal(inFile(), created);
      const r = await api(fx.kf, "PATCH", "/v1/api-keys/{id}", {
        path: `/v1/api-keys/${c.id}`,
        headers: [OPS],
        json: { name: renamed },
      });
      assert.equal(r.status, 200);
      assert.equal(inFile(), renamed);
      await api(fx.kf, "DELETE", "/v1/api-keys/{id}", { path: `/v1/api-keys/${c.id}`, headers: [OPS] });
    });

    test("bad input: 400 naming every bad field, quoting values; nothing changes", async () => {
      const before = readFileSync(fx.kf.keysFile, "utf8");
      const r = await api(fx.kf, "POST", "/v1/api-keys", {
        headers: [OPS],
        json: {
          name: "",
          scopes: "all",
          ip_allow_list: [
            "1.2.3.4",
            "300.1.2.3",
            "198.51.100.7/24",
            "0.0.0.0/0",
            42,
            "0177.0.0.1",
            "fe80::1%eth0",
            "::/129",
          ],
          mode: "loud",
          id: "mine",
          colour: "red",
        },
      });
      assert.equal(r.status, 400);
      const b = r.json() as { message: string; errors: Array<{ field: string; message: string }> };
      const byField = new Map(b.errors.map((e) => [e.field, e.message]));
      assert.deepEqual(
        [...byField.keys()].sort(),
        [
          "colour",
          "id",
          "ip_allow_list[1]",
          "ip_allow_list[2]",
          "ip_allow_list[3]",
          "ip_allow_list[4]",
          "ip_allow_list[5]",
          "ip_allow_list[6]",
          "ip_allow_list[7]",
          "mode",
          "name",
          "scopes",
        ].sort(),
      );
      assert.match(byField.get("ip_allow_list[1]")!, /"300\.1\.2\.3".*greater than 255/);
      assert.match(byField.get("ip_allow_list[2]")!, /did you mean 198\.51\.100\.0\/24\?/);
      assert.match(byField.get("ip_allow_list[3]")!, /catch-all/);
      assert.match(byField.get("ip_allow_list[5]")!, /"0177\.0\.0\.1".*leading zero/);
      assert.match(byField.get("ip_allow_list[6]")!, /zone/);
      assert.match(byField.get("id")!, /read-only/);
      assert.equal(readFileSync(fx.kf.keysFile, "utf8"), before);
    });

    test("bad bodies: malformed JSON 400, not JSON 415, too large 413, wrong shapes 400", async () => {
      const path = "/v1/api-keys/k_reader";
      const malformed = await api(fx.kf, "PATCH", "/v1/api-keys/{id}", {
        path,
        headers: [OPS, ["Content-Type", "application/json"]],
        body: "{nope",
      });
      assert.equal(malformed.status, 400);
      assert.match((malformed.json() as { message: string }).message, /malformed JSON/);
      const form = await api(fx.kf, "PATCH", "/v1/api-keys/{id}", {
        path,
        headers: [OPS, ["Content-Type", "text/plain"]],
        body: "{}",
      });
      assert.equal(form.status, 415);
      const huge = await api(fx.kf, "POST", "/v1/api-keys", {
        headers: [OPS],
        json: { name: "x".repeat(2 * 1024 * 1024) },
      });
      assert.equal(huge.status, 413);
      const arr = await api(fx.kf, "PATCH", "/v1/api-keys/{id}", { path, headers: [OPS], json: [1, 2] });
      assert.equal(arr.status, 400);
      const notFoundFirst = await api(fx.kf, "PATCH", "/v1/api-keys/{id}", {
        path: "/v1/api-keys/nope",
        headers: [OPS, ["Content-Type", "application/json"]],
        body: "{nope",
      });
      assert.equal(notFoundFirst.status, 404, "404 is checked before 400");
    });

    test("bodies are UTF-8 or refused, never stored with replacement characters", async () => {
      const path = "/v1/api-keys/k_reader";
      const before = (await api(fx.kf, "GET", "/v1/api-keys/{id}", { path, headers: [OPS] })).body;
      const name = (bytes: number[]): Buffer =>
        Buffer.concat([Buffer.from('{"name":"bad'), Buffer.from(bytes), Buffer.from('"}')]);
      // A lone byte, an overlong slash, an encoded surrogate, a truncated sequence, a code point past U+10FFFF.
      for (const bytes of [[0xff], [0xc0, 0xaf], [0xed, 0xa0, 0x80], [0xe2, 0x82], [0xf4, 0x90, 0x80, 0x80]]) {
        const r = await api(fx.kf, "PATCH", "/v1/api-keys/{id}", {
          path,
          headers: [OPS, ["Content-Type", "application/json"]],
          body: name(bytes),
        });
        assert.equal(r.status, 400, `${bytes.join(",")}: ${r.body}`);
        assert.match((r.json() as { message: string }).message, /not UTF-8/);
      }
      for (const type of [
        "application/json; charset=utf-16",
        "application/json;charset=latin1",
        'application/json; charset="ISO-8859-1"',
      ]) {
        const r = await api(fx.kf, "PATCH", "/v1/api-keys/{id}", {
          path,
          headers: [OPS, ["Content-Type", type]],
          body: '{"name":"x"}',
        });
        assert.equal(r.status, 415, type);
      }
      assert.equal((await api(fx.kf, "GET", "/v1/api-keys/{id}", { path, headers: [OPS] })).body, before, "unchanged");
      for (const type of ['application/json; charset="UTF-8"', "application/json; charset=utf8"]) {
        const r = await api(fx.kf, "PATCH", "/v1/api-keys/{id}", {
          path,
          headers: [OPS, ["Content-Type", type]],
          body: Buffer.from('{"name":"Zürich ✓"}'),
        });
        assert.equal(r.status, 200, type);
        assert.equal((r.json() as { name: string }).name, "Zürich ✓");
      }
    });

    test("max_entries is enforced, counted after duplicates merge", async () => {
      const many = Array.from({ length: 1001 }, (_, i) => `10.${i >> 8}.${i & 255}.1`);
      const r = await api(fx.kf, "POST", "/v1/api-keys", {
        headers: [OPS],
        json: { name: "big", ip_allow_list: many },
      });
      assert.equal(r.status, 400);
      assert.match(JSON.stringify(r.json()), /more than the limit of 1000/);
      const dupes = [...many.slice(0, 1000), "::ffff:10.0.0.1", "10.0.0.1/32"];
      assert.equal(
        (await api(fx.kf, "POST", "/v1/api-keys", { headers: [OPS], json: { name: "ok", ip_allow_list: dupes } }))
          .status,
        201,
      );
    });

    test("list pagination with limit and cursor", async () => {
      const first = (
        await api(fx.kf, "GET", "/v1/api-keys", { path: "/v1/api-keys?limit=2", headers: [OPS] })
      ).json() as {
        data: Array<{ id: string }>;
        next_cursor: string;
      };
      assert.equal(first.data.length, 2);
      assert.ok(first.next_cursor);
      const second = (
        await api(fx.kf, "GET", "/v1/api-keys", {
          path: `/v1/api-keys?limit=2&cursor=${first.next_cursor}`,
          headers: [OPS],
        })
      ).json() as { data: Array<{ id: string }> };
      assert.ok(second.data.every((k) => k.id > first.next_cursor));
      const all = (await api(fx.kf, "GET", "/v1/api-keys", { headers: [OPS] })).json() as {
        data: unknown[];
        next_cursor: null;
      };
      assert.equal(all.next_cursor, null);
      assert.equal(
        (await api(fx.kf, "GET", "/v1/api-keys", { path: "/v1/api-keys?limit=0", headers: [OPS] })).status,
        400,
      );
    });
  });

  describe("self-lockout protection", () => {
    test("a key may not shut out the IP it calls from: 409 naming it, nothing changes", async () => {
      const before = readFileSync(fx.kf.keysFile, "utf8");
      const r = await api(fx.kf, "PATCH", "/v1/api-keys/{id}", {
        path: "/v1/api-keys/k_writer",
        headers: [bearer("s_writer")],
        json: { ip_allow_list: ["203.0.113.0/24"] },
      });
      assert.equal(r.status, 409);
      assert.match((r.json() as { message: string }).message, /127\.0\.0\.1/);
      assert.equal(r.headers["x-keyfence-reason"], "self_lockout");
      assert.equal(readFileSync(fx.kf.keysFile, "utf8"), before);
    });

    test("neighbours are allowed: a list that admits the caller, another key's list, clearing its own list", async () => {
      const admits = await api(fx.kf, "PATCH", "/v1/api-keys/{id}", {
        path: "/v1/api-keys/k_writer",
        headers: [bearer("s_writer")],
        json: { ip_allow_list: ["127.0.0.0/8", "203.0.113.0/24"] },
      });
      assert.equal(admits.status, 200);
      const other = await api(fx.kf, "PATCH", "/v1/api-keys/{id}", {
        path: "/v1/api-keys/k_reader",
        headers: [bearer("s_writer")],
        json: { ip_allow_list: ["203.0.113.0/24"] },
      });
      assert.equal(other.status, 200);
      const self = await api(fx.kf, "PATCH", "/v1/api-keys/{id}", {
        path: "/v1/api-keys/k_openwriter",
        headers: [bearer("s_openwriter")],
        json: { ip_allow_list: ["198.51.100.0/24"] },
      });
      assert.equal(self.status, 409, "an unrestricted key may not restrict itself away either");
      const cleared = await api(fx.kf, "PATCH", "/v1/api-keys/{id}", {
        path: "/v1/api-keys/k_writer",
        headers: [bearer("s_writer")],
        json: { ip_allow_list: [] },
      });
      assert.equal(cleared.status, 200);
      const operator = await api(fx.kf, "PATCH", "/v1/api-keys/{id}", {
        path: "/v1/api-keys/k_writer",
        headers: [OPS],
        json: { ip_allow_list: ["127.0.0.1"] },
      });
      assert.equal(operator.status, 200, "operators are not key callers");
    });
  });

  describe("confirmation (TOTP)", () => {
    const from = { localAddress: "127.0.0.5" };
    test("required for allow-list changes, refused when wrong, accepted once, not needed to rename", async () => {
      const secret = TOTP_SECRETS[0]!;
      const body = { name: "2fa", ip_allow_list: ["127.0.0.1"] };
      const missing = await api(fx.kf, "POST", "/v1/api-keys", { headers: [fa(0)], json: body, ...from });
      assert.equal(missing.status, 403);
      assert.equal(missing.body, '{"message":"confirmation required"}');
      assert.equal(missing.headers["x-keyfence-reason"], "confirmation_required");
      const wrong = await api(fx.kf, "POST", "/v1/api-keys", {
        headers: [fa(0), otp(wrongCode(secret, clock.now()))],
        json: body,
        ...from,
      });
      assert.equal(wrong.status, 403);
      assert.equal(wrong.body, '{"message":"invalid confirmation code"}');
      for (const offset of [-2, 2]) {
        const far = await api(fx.kf, "POST", "/v1/api-keys", {
          headers: [fa(0), otp(code(secret, clock.now(), offset))],
          json: body,
          ...from,
        });
        assert.equal(far.status, 403, `a code ${offset} steps away is outside the window`);
      }
      const c0 = code(secret, clock.now(), -1);
      const ok = await api(fx.kf, "POST", "/v1/api-keys", { headers: [fa(0), otp(c0)], json: body, ...from });
      assert.equal(ok.status, 201, "a code one step old is tolerated (clock skew)");
      const id = (ok.json() as { id: string }).id;
      const replay = await api(fx.kf, "POST", "/v1/api-keys", { headers: [fa(0), otp(c0)], json: body, ...from });
      assert.equal(replay.status, 403);
      assert.equal(replay.body, '{"message":"invalid confirmation code"}');
      const path = `/v1/api-keys/${id}`;
      const rename = await api(fx.kf, "PATCH", "/v1/api-keys/{id}", {
        path,
        headers: [fa(0)],
        json: { name: "renamed", scopes: ["x:y"], mode: "enforce" },
        ...from,
      });
      assert.equal(rename.status, 200, "renaming needs no code");
      const sameSet = await api(fx.kf, "PATCH", "/v1/api-keys/{id}", {
        path,
        headers: [fa(0)],
        json: { ip_allow_list: ["::ffff:127.0.0.1", "127.0.0.1/32"] },
        ...from,
      });
      assert.equal(sameSet.status, 200, "the same set of entries in other spellings is no change");
      const clear = await api(fx.kf, "PATCH", "/v1/api-keys/{id}", {
        path,
        headers: [fa(0)],
        json: { ip_allow_list: [] },
        ...from,
      });
      assert.equal(clear.status, 403, "clearing a list is a change too");
      const cleared = await api(fx.kf, "PATCH", "/v1/api-keys/{id}", {
        path,
        headers: [fa(0), otp(code(secret, clock.now()))],
        json: { ip_allow_list: [] },
        ...from,
      });
      assert.equal(cleared.status, 200);
      const unrestrictedDelete = await api(fx.kf, "DELETE", "/v1/api-keys/{id}", { path, headers: [fa(0)], ...from });
      assert.equal(unrestrictedDelete.status, 204, "deleting an unrestricted key needs no code");
      const noList = await api(fx.kf, "POST", "/v1/api-keys", { headers: [fa(0)], json: { name: "nolist" }, ...from });
      assert.equal(noList.status, 201, "creating without a list needs no code");
    });

    test("a failed request never uses up a code (order: 404, 400, 409, confirmation)", async () => {
      const secret = TOTP_SECRETS[1]!;
      const c = code(secret, clock.now());
      const nf = await api(fx.kf, "PATCH", "/v1/api-keys/{id}", {
        path: "/v1/api-keys/nope",
        headers: [fa(1), otp(c)],
        json: { ip_allow_list: ["1.2.3.4"] },
        ...from,
      });
      assert.equal(nf.status, 404);
      const bad = await api(fx.kf, "POST", "/v1/api-keys", {
        headers: [fa(1), otp(c)],
        json: { name: "x", ip_allow_list: ["1.2.3"] },
        ...from,
      });
      assert.equal(bad.status, 400);
      const created = await api(fx.kf, "POST", "/v1/api-keys", {
        headers: [fa(1), otp(c)],
        json: { name: "x", ip_allow_list: ["1.2.3.4"] },
        ...from,
      });
      assert.equal(created.status, 201, "the code is still unused");
      const id = (created.json() as { id: string }).id;
      const del = await api(fx.kf, "DELETE", "/v1/api-keys/{id}", {
        path: `/v1/api-keys/${id}`,
        headers: [fa(1)],
        ...from,
      });
      assert.equal(del.status, 403, "deleting a restricted key needs a code");
      const del2 = await api(fx.kf, "DELETE", "/v1/api-keys/{id}", {
        path: `/v1/api-keys/${id}`,
        headers: [fa(1), otp(code(secret, clock.now(), 1))],
        ...from,
      });
      assert.equal(del2.status, 204);
    });

    test("key callers and operators without totp_secret need no code", async () => {
      const r = await api(fx.kf, "POST", "/v1/api-keys", {
        headers: [bearer("s_openwriter")],
        json: { name: "by key", ip_allow_list: ["1.2.3.4"] },
      });
      assert.equal(r.status, 201);
      const o = await api(fx.kf, "POST", "/v1/api-keys", {
        headers: [OPS],
        json: { name: "by ops", ip_allow_list: ["1.2.3.4"] },
      });
      assert.equal(o.status, 201);
    });
  });

  describe("audit", () => {
    test("every change is recorded newest first: who, when, from where, the key, the list before and after", async () => {
      const created = (
        await api(fx.kf, "POST", "/v1/api-keys", {
          headers: [bearer("s_openwriter")],
          json: { name: "audited", ip_allow_list: ["198.51.100.0/24"] },
        })
      ).json() as { id: string; secret: string };
      await api(fx.kf, "PATCH", "/v1/api-keys/{id}", {
        path: `/v1/api-keys/${created.id}`,
        headers: [OPS],
        json: { ip_allow_list: ["198.51.100.0/25"], name: "audited2" },
        localAddress: "127.0.0.6",
      });
      await api(fx.kf, "DELETE", "/v1/api-keys/{id}", { path: `/v1/api-keys/${created.id}`, headers: [OPS] });
      const page = (await api(fx.kf, "GET", "/v1/audit", { path: "/v1/audit?limit=3", headers: [OPS] })).json() as {
        data: Array<{
          id: number;
          action: string;
          actor: { type: string; id: string };
          client_ip: string;
          key_id: string;
          ip_allow_list: { before: string[] | null; after: string[] | null };
          changes: Record<string, unknown>;
        }>;
        next_cursor: string;
      };
      assert.deepEqual(
        page.data.map((e) => e.action),
        ["delete", "update", "create"],
      );
      const [del, upd, cre] = page.data;
      assert.deepEqual(cre!.actor, { type: "key", id: "k_openwriter" });
      assert.equal(cre!.key_id, created.id);
      assert.deepEqual(cre!.ip_allow_list, { before: null, after: ["198.51.100.0/24"] });
      assert.deepEqual(upd!.actor, { type: "operator", id: "ops", via: "token" });
      assert.equal(upd!.client_ip, "127.0.0.6");
      assert.deepEqual(upd!.ip_allow_list, { before: ["198.51.100.0/24"], after: ["198.51.100.0/25"] });
      assert.deepEqual(upd!.changes["name"], { before: "audited", after: "audited2" });
      assert.deepEqual(del!.ip_allow_list, { before: ["198.51.100.0/25"], after: null });
      assert.ok(page.data[0]!.id > page.data[1]!.id);
      const next = (
        await api(fx.kf, "GET", "/v1/audit", { path: `/v1/audit?limit=3&cursor=${page.next_cursor}`, headers: [OPS] })
      ).json() as { data: Array<{ id: number }> };
      assert.ok(next.data.every((e) => e.id < page.data[2]!.id));
      const audit = readFileSync(join(fx.kf.dir, "keys.audit.jsonl"), "utf8");
      assert.ok(!audit.includes(created.secret));
      assert.ok(!fx.kf.logText().includes(created.secret), "no secret in the logs");
      assert.ok(!fx.kf.logText().includes("tok_ops"));
    });
  });
});

describe("management API: concurrency, durability, external edits", () => {
  let up: Upstream;
  before(async () => {
    up = await startUpstream();
  });
  after(async () => {
    await up.close();
  });

  test("40 concurrent creates and 40 concurrent patches lose nothing", async () => {
    const targets: TestKey[] = Array.from({ length: 40 }, (_, i) => ({ id: `t${i}`, secret: `st${i}` }));
    const kf = await startAdmin(up, [...targets, WRITER]);
    try {
      const creates = Array.from({ length: 40 }, (_, i) =>
        api(kf, "POST", "/v1/api-keys", { headers: [OPS], json: { name: `c${i}`, ip_allow_list: [`10.1.${i}.0/24`] } }),
      );
      const patches = targets.map((t, i) =>
        api(kf, "PATCH", "/v1/api-keys/{id}", {
          path: `/v1/api-keys/${t.id}`,
          headers: [OPS],
          json: { ip_allow_list: [`10.2.${i}.0/24`] },
        }),
      );
      const replies = await Promise.all([...creates, ...patches]);
      assert.ok(
        replies.every((r) => r.status === 201 || r.status === 200),
        replies.map((r) => r.status).join(","),
      );
      const parsed = parseKeysFile("keys.yaml", readFileSync(kf.keysFile, "utf8"), 1000);
      assert.ok(parsed.ok);
      const byName = new Map(parsed.keys.map((k) => [k.name, k]));
      for (let i = 0; i < 40; i++) {
        assert.deepEqual(byName.get(`c${i}`)?.ipAllowList, [`10.1.${i}.0/24`]);
        assert.deepEqual(parsed.keys.find((k) => k.id === `t${i}`)?.ipAllowList, [`10.2.${i}.0/24`]);
      }
      assert.equal(parsed.keys.length, 81);
      const audit = readFileSync(join(kf.dir, "keys.audit.jsonl"), "utf8").trim().split("\n");
      assert.equal(audit.length, 80);
      assert.deepEqual(
        audit.map((l) => (JSON.parse(l) as { id: number }).id),
        Array.from({ length: 80 }, (_, i) => i + 1),
      );
    } finally {
      await kf.stop();
    }
  });

  test("changes survive a restart; a used code stays used", async () => {
    const kf = await startAdmin(up);
    const c = code(TOTP_SECRETS[2]!, clock.now());
    let k: { id: string; secret: string };
    try {
      const r = await api(kf, "POST", "/v1/api-keys", {
        headers: [fa(2), otp(c)],
        json: { name: "durable", ip_allow_list: ["127.0.0.1"] },
      });
      assert.equal(r.status, 201);
      k = r.json() as { id: string; secret: string };
    } finally {
      await kf.stop({ keep: true });
    }
    const again = await kf.restart();
    try {
      const got = await api(again, "GET", "/v1/api-keys/{id}", { path: `/v1/api-keys/${k.id}`, headers: [OPS] });
      assert.equal(got.status, 200);
      assert.equal((await send(`${again.url}/_keyfence/ping`, { headers: [bearer(k.secret)] })).status, 200);
      const replay = await api(again, "POST", "/v1/api-keys", {
        headers: [fa(2), otp(c)],
        json: { name: "replay", ip_allow_list: ["127.0.0.1"] },
      });
      assert.equal(replay.status, 403);
      assert.equal(replay.body, '{"message":"invalid confirmation code"}');
      const audit = (await api(again, "GET", "/v1/audit", { headers: [OPS] })).json() as {
        data: Array<{ confirmed: boolean; key_id: string }>;
      };
      assert.equal(audit.data[0]?.key_id, k.id);
      assert.equal(audit.data[0]?.confirmed, true);
    } finally {
      await again.stop();
    }
  });

  test("comments and untouched entries of the hand-edited file survive an API write", async () => {
    const text = `# top comment\nkeys:\n  # the writer\n  - id: k_writer # trailing\n    secret_sha256: "${sha("s_writer")}"\n    scopes: [api_keys:write]\n    ip_allow_list: [127.0.0.1] # office\n\n  # the reader\n  - id: k_reader\n    secret_sha256: "${sha("s_reader")}"\n`;
    const kf = await startAdmin(up, text);
    try {
      const r = await api(kf, "PATCH", "/v1/api-keys/{id}", {
        path: "/v1/api-keys/k_reader",
        headers: [OPS],
        json: { name: "Reader" },
      });
      assert.equal(r.status, 200);
      const after = readFileSync(kf.keysFile, "utf8");
      for (const fragment of [
        "# top comment",
        "# the writer",
        "- id: k_writer # trailing",
        "ip_allow_list: [127.0.0.1] # office",
        "# the reader",
        "name: Reader",
      ]) {
        assert.ok(after.includes(fragment), `lost ${JSON.stringify(fragment)} in\n${after}`);
      }
    } finally {
      await kf.stop();
    }
  });

  test("an external edit is never lost to an API write; an invalid one refuses the write with 409", async () => {
    const kf = await startAdmin(up);
    try {
      // Edit the file and write through the API before the watcher's debounce fires.
      kf.writeKeys([
        WRITER,
        READER,
        AWAY,
        OPEN_WRITER,
        { id: "k_external", secret: "s_external", allow: ["192.0.2.1"] },
      ]);
      const r = await api(kf, "POST", "/v1/api-keys", { headers: [OPS], json: { name: "api" } });
      assert.equal(r.status, 201);
      const parsed = parseKeysFile("k", readFileSync(kf.keysFile, "utf8"), 1000);
      assert.ok(parsed.ok);
      assert.ok(
        parsed.keys.some((k) => k.id === "k_external"),
        "the external edit is kept",
      );
      assert.ok(
        parsed.keys.some((k) => k.name === "api"),
        "and so is the API write",
      );

      kf.writeKeys("keys:\n  - id: broken\n");
      const refused = await api(kf, "POST", "/v1/api-keys", { headers: [OPS], json: { name: "api2" } });
      assert.equal(refused.status, 409);
      assert.equal(refused.headers["x-keyfence-reason"], "conflict");
      assert.equal(
        readFileSync(kf.keysFile, "utf8"),
        "keys:\n  - id: broken\n",
        "the operator's edit is not overwritten",
      );
      assert.equal(
        (await send(`${kf.url}/_keyfence/ping`, { headers: [bearer("s_external")], localAddress: "127.0.0.1" })).status,
        403,
        "last good keeps serving",
      );
    } finally {
      await kf.stop();
    }
  });
});

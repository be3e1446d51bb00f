/**
 * The admin listener's route table: every route declares its authentication,
 * and the server (not the handler) enforces it. A route added without the
 * authentication it needs fails here.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { describe, test } from "node:test";
import { bearer, send } from "../helpers/http.js";
import { sidecarFixture, startTestSidecar } from "../helpers/sidecar.js";

const sha = (s: string): string => createHash("sha256").update(s).digest("hex");

/** The only routes anyone may call without a credential or session. */
const PUBLIC_ROUTES = [
  "GET /healthz",
  "GET /readyz",
  "GET /metrics",
  "GET /assets/:file",
  "GET /favicon.ico",
  "POST /session",
  "POST /session/end",
  "GET /",
];

/** A concrete path for a route template. */
const pathOf = (template: string): string => template.replace(/:[a-z]+/g, "k_one");

describe("admin route table", () => {
  const fx = sidecarFixture((up) =>
    startTestSidecar({
      upstream: up.url,
      keys: [{ id: "k_one", secret: "s_one", scopes: ["api_keys:write"] }],
      admin: { operators: [{ name: "ops", token_sha256: sha("tok_ops") }] },
    }),
  );

  test("public routes are exactly the listed ones; every other route names its authentication", () => {
    const routes = fx.kf.sidecar.adminRoutes;
    assert.ok(routes.length > PUBLIC_ROUTES.length, "the API and dashboard routes are declared");
    const pub = routes.filter((r) => r.auth === "public").map((r) => `${r.method} ${r.path}`);
    assert.deepEqual(pub.sort(), [...PUBLIC_ROUTES].sort());
    for (const r of routes) {
      assert.ok(
        ["public", "credential", "session", "session+csrf"].includes(r.auth),
        `${r.method} ${r.path} declares an authentication this test knows: ${r.auth}`,
      );
    }
    const api = routes.filter((r) => r.path.startsWith("/v1/"));
    assert.ok(api.length >= 7);
    for (const r of api) assert.equal(r.auth, "credential", `${r.method} ${r.path}`);
  });

  test("a request without credential or session is refused on every non-public route", async () => {
    for (const r of fx.kf.sidecar.adminRoutes.filter((x) => x.auth !== "public")) {
      const what = `${r.method} ${r.path}`;
      const reply = await send(`${fx.kf.adminUrl}${pathOf(r.path)}`, {
        method: r.method,
        headers: [["Content-Type", "application/json"]],
        body: r.method === "GET" || r.method === "DELETE" ? undefined : "{}",
      });
      if (r.auth === "session") {
        assert.equal(reply.status, 303, what);
        assert.equal(reply.headers.location, "/", what);
      } else {
        assert.equal(reply.status, 401, `${what}: ${reply.body}`);
        assert.equal(reply.headers["x-keyfence-reason"], "missing_credential", what);
      }
    }
  });

  test("a credential route refuses a wrong token and serves the right one", async () => {
    for (const r of fx.kf.sidecar.adminRoutes.filter((x) => x.auth === "credential" && x.method === "GET")) {
      const path = pathOf(r.path);
      const wrong = await send(`${fx.kf.adminUrl}${path}`, { headers: [bearer("tok_wrong")] });
      assert.equal(wrong.status, 401, `${r.method} ${r.path}`);
      assert.equal(wrong.headers["x-keyfence-reason"], "invalid_credential");
      const right = await send(`${fx.kf.adminUrl}${path}`, { headers: [bearer("tok_ops")] });
      assert.equal(right.status, 200, `${r.method} ${r.path}: ${right.body}`);
    }
  });
});

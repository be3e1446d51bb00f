/**
 * A sidecar whose keys live in a file never loads the `redis` client: it
 * defines a class extending `String`, after which V8 keeps `String.prototype`
 * in dictionary mode and every string method called in optimised code takes a
 * generic property load (BENCHMARKS.md, "Instructions per decision"). This
 * file runs in its own process, so what it imports is all that is loaded.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { setFlagsFromString } from "node:v8";
import { runInThisContext } from "node:vm";
import { bearer, send } from "../helpers/http.js";
import { startTestSidecar } from "../helpers/sidecar.js";
import { startUpstream } from "../helpers/upstream.js";

setFlagsFromString("--allow-natives-syntax");
// V8's own answer; the flag above must be set before this source is compiled.
const hasFastProperties = runInThisContext("(o) => %HasFastProperties(o)") as (o: object) => boolean;

test("a file-store sidecar answering decisions leaves String.prototype with fast properties; loading redis would not", async () => {
  const up = await startUpstream();
  const kf = await startTestSidecar({
    upstream: up.url,
    keys: [{ id: "k_local", secret: "s_local", allow: ["127.0.0.1"] }],
    config: { trusted_proxies: ["loopback"], decision: { listen: "127.0.0.1:0" } },
  });
  try {
    const r = await send(kf.decisionUrl, { headers: [bearer("s_local"), ["x-forwarded-for", "127.0.0.1"]] });
    assert.equal(r.status, 200);
    assert.equal(hasFastProperties(String.prototype), true);
    // The check can fail: this is what the Redis store's module does on import (irreversible, so last).
    await import("redis");
    assert.equal(hasFastProperties(String.prototype), false);
  } finally {
    await kf.stop();
    await up.close();
  }
});

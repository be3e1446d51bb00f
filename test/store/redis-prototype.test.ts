/**
 * A sidecar whose keys live in Redis loads the `redis` client, which leaves
 * V8's String.prototype in dictionary mode (test/decision/prototype.test.ts);
 * the Redis store's module puts it back in fast mode, so string methods in
 * optimised code take no generic property load. This file runs in its own
 * process, so the state it checks is its own.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { setFlagsFromString } from "node:v8";
import { runInThisContext } from "node:vm";
import { needBinary } from "../helpers/binary.js";
import { bearer, send } from "../helpers/http.js";
import { rec } from "../helpers/records.js";
import { redisFixture } from "../helpers/redis.js";
import { startTestSidecar } from "../helpers/sidecar.js";
import { startUpstream } from "../helpers/upstream.js";
import { secretDigest } from "../../src/store/digest.js";

setFlagsFromString("--allow-natives-syntax");
// V8's own answer; the flag above must be set before this source is compiled.
const hasFastProperties = runInThisContext("(o) => %HasFastProperties(o)") as (o: object) => boolean;

const redisBin = needBinary("redis-server", "redis-server");

describe("Redis store and V8's String.prototype", { skip: redisBin.skip }, () => {
  const redis = redisFixture(redisBin.path, "kfp");
  test("a Redis-store sidecar answering requests keeps String.prototype with fast properties", async () => {
    const prefix = redis.newPrefix();
    await redis.seed(prefix, [rec("k_local", { secretDigest: secretDigest("s_local"), ipAllowList: ["127.0.0.1"] })]);
    const up = await startUpstream();
    const kf = await startTestSidecar({
      upstream: up.url,
      keys: "keys: []\n",
      keysConfig: { store: "redis", redis: { url: redis.url, prefix }, unknown: "reject" },
      config: { trusted_proxies: ["loopback"], decision: { listen: "127.0.0.1:0" } },
    });
    try {
      assert.equal((await send(`${kf.url}/x`, { headers: [bearer("s_local")] })).status, 200);
      const r = await send(kf.decisionUrl, { headers: [bearer("s_local"), ["x-forwarded-for", "127.0.0.1"]] });
      assert.equal(r.status, 200);
      assert.equal(hasFastProperties(String.prototype), true);
    } finally {
      await kf.stop();
      await up.close();
    }
  });
});

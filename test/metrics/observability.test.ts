/** Issue 4: exact metric deltas, request ids, logs without secrets, observed sources, dashboards against /metrics. */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import fc from "fast-check";
import { parse } from "yaml";
import { parseIp } from "../../src/ip/address.js";
import { SourceTracker } from "../../src/metrics/sources.js";
import { bearer, send } from "../helpers/http.js";
import { eventually, keysYaml, sidecarFixture, startTestSidecar, type TestKey } from "../helpers/sidecar.js";
import { spawnKeyfence } from "../helpers/spawn.js";
import { startUpstream, type Upstream } from "../helpers/upstream.js";

const ROOT = resolve(fileURLToPath(import.meta.url), "../../../..");
const sha = (s: string): string => createHash("sha256").update(s).digest("hex");

/** Parses Prometheus text into `name{labels}` → value. */
async function scrape(adminUrl: string): Promise<Map<string, number>> {
  const r = await send(`${adminUrl}/metrics`);
  assert.equal(r.status, 200);
  const out = new Map<string, number>();
  for (const line of r.body.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const i = line.lastIndexOf(" ");
    out.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return out;
}

const KEYS: TestKey[] = [
  { id: "k_local", secret: "secret-local-123", allow: ["127.0.0.1"] },
  { id: "k_office", secret: "secret-office-456", allow: ["203.0.113.0/24"] },
  { id: "k_report", secret: "secret-report-789", allow: ["203.0.113.0/24"], mode: "report" },
];

describe("metrics and request ids", () => {
  const fx = sidecarFixture((up) =>
    startTestSidecar({
      upstream: up.url,
      keys: KEYS,
      config: { trusted_proxies: ["127.0.0.1"], access_log: true },
      admin: { operators: [{ name: "ops", token_sha256: sha("tok") }] },
    }),
  );

  test("a known sequence of requests moves each counter by exactly its count", async () => {
    const before = await scrape(fx.kf.adminUrl);
    const plan: Array<[number, () => Promise<unknown>]> = [
      [3, () => send(`${fx.kf.url}/a`, { headers: [bearer("secret-local-123")] })],
      [2, () => send(`${fx.kf.url}/a`, { headers: [bearer("secret-office-456")] })],
      [1, () => send(`${fx.kf.url}/a`, { headers: [bearer("secret-report-789")] })],
      [4, () => send(`${fx.kf.url}/a`, { headers: [bearer("nobody")] })],
      [2, () => send(`${fx.kf.url}/a`)],
      [1, () => send(`${fx.kf.url}/a`, { headers: [bearer("a"), bearer("b")] })],
      [1, () => send(`${fx.kf.url}/a`, { headers: [["Authorization", "Bearer a b"]] })],
      [2, () => send(`${fx.kf.url}/a`, { headers: [bearer("secret-office-456"), ["X-Forwarded-For", "0177.0.0.1"]] })],
    ];
    let total = 0;
    for (const [n, fn] of plan) {
      for (let i = 0; i < n; i++) await fn();
      total += n;
    }
    const afterScrape = await scrape(fx.kf.adminUrl);
    const delta = (name: string): number => (afterScrape.get(name) ?? 0) - (before.get(name) ?? 0);
    const d = (decision: string): number => delta(`keyfence_decisions_total{decision="${decision}"}`);
    assert.deepEqual(
      {
        allowed: d("allowed"),
        denied: d("denied"),
        would_deny: d("would_deny"),
        unknown_key: d("unknown_key"),
        missing_key: d("missing_key"),
        bad_request: d("bad_request"),
        invalid_client_ip: d("invalid_client_ip"),
      },
      { allowed: 3, denied: 2, would_deny: 1, unknown_key: 4, missing_key: 2, bad_request: 2, invalid_client_ip: 2 },
    );
    const outcomes = ["forwarded", "answered", "upstream_error", "aborted"];
    const requests = outcomes.reduce((n, o) => n + delta(`keyfence_request_duration_seconds_count{outcome="${o}"}`), 0);
    assert.equal(requests, total, "one request-duration observation per request");
    assert.equal(delta('keyfence_request_duration_seconds_count{outcome="forwarded"}'), 3 + 1 + 4 + 2);
    assert.equal(delta('keyfence_request_duration_seconds_count{outcome="answered"}'), 2 + 1 + 1 + 2);
    assert.equal(delta("keyfence_decision_duration_seconds_count"), total);
    assert.equal(afterScrape.get("keyfence_inflight_requests"), 0);
    assert.equal(afterScrape.get("keyfence_keys"), 3);
    assert.equal(afterScrape.get("keyfence_allow_list_entries"), 3);
    assert.ok((afterScrape.get("keyfence_matcher_cache_hits_total") ?? 0) > 0);
    assert.ok([...afterScrape.keys()].some((k) => k.startsWith("keyfence_build_info{")));
    assert.ok(afterScrape.has("process_resident_memory_bytes"));
    for (const name of afterScrape.keys()) {
      assert.ok(
        !/k_local|k_office|127\.0\.0\.1|secret-/.test(name),
        `a label carries a key id, address or secret: ${name}`,
      );
    }
  });

  test("the in-flight gauge counts a request while it is upstream", async () => {
    const slow = send(`${fx.kf.url}/slow/800`, { headers: [bearer("secret-local-123")] });
    await eventually(
      async () => (await scrape(fx.kf.adminUrl)).get("keyfence_inflight_requests") === 1,
      3000,
      "the gauge at 1 during the request",
    );
    assert.equal((await slow).status, 200);
    assert.equal((await scrape(fx.kf.adminUrl)).get("keyfence_inflight_requests"), 0);
  });

  test("X-Request-Id: kept when sane, generated otherwise, passed upstream and returned", async () => {
    const kept = await send(`${fx.kf.url}/rid`, { headers: [bearer("secret-local-123"), ["X-Request-Id", "abc-123"]] });
    assert.equal(kept.headers["x-request-id"], "abc-123");
    assert.equal(fx.up.seen.at(-1)?.headers["x-request-id"], "abc-123");
    const made = await send(`${fx.kf.url}/rid`, {
      headers: [bearer("secret-local-123"), ["X-Request-Id", "bad id\twith spaces"]],
    });
    assert.match(String(made.headers["x-request-id"]), /^[0-9a-f-]{36}$/);
    assert.equal(fx.up.seen.at(-1)?.headers["x-request-id"], made.headers["x-request-id"]);
    const denied = await send(`${fx.kf.url}/rid`, { headers: [bearer("secret-office-456")] });
    const rid = String(denied.headers["x-request-id"]);
    assert.match(rid, /^[0-9a-f-]{36}$/);
    assert.ok(
      fx.kf.logs.some((l) => l["event"] === "denied" && l["request_id"] === rid),
      "the denial line carries the request id",
    );
    assert.ok(
      fx.kf.logs.some((l) => l["event"] === "access" && l["request_id"] === rid && l["status"] === 403),
      "access log when enabled",
    );
  });

  test("observed sources per key via the management API", async () => {
    await send(`${fx.kf.url}/s`, { headers: [bearer("secret-report-789"), ["X-Forwarded-For", "198.51.100.7"]] });
    await send(`${fx.kf.url}/s`, { headers: [bearer("secret-report-789"), ["X-Forwarded-For", "198.51.100.9"]] });
    await send(`${fx.kf.url}/s`, { headers: [bearer("secret-report-789"), ["X-Forwarded-For", "2001:db8:1:2::5"]] });
    await send(`${fx.kf.url}/s`, { headers: [bearer("secret-report-789"), ["X-Forwarded-For", "203.0.113.5"]] });
    const r = await send(`${fx.kf.adminUrl}/v1/api-keys/k_report/sources`, { headers: [bearer("tok")] });
    assert.equal(r.status, 200);
    const data = (r.json() as { data: Array<{ network: string; requests: number; denied: number }> }).data;
    const byNet = new Map(data.map((s) => [s.network, s]));
    assert.deepEqual(
      { ...byNet.get("198.51.100.0/24"), first_seen: undefined, last_seen: undefined },
      { network: "198.51.100.0/24", requests: 2, denied: 2, first_seen: undefined, last_seen: undefined },
    );
    assert.equal(byNet.get("2001:db8:1:2::/64")?.requests, 1);
    assert.equal(byNet.get("203.0.113.0/24")?.denied, 0);
    assert.equal((await send(`${fx.kf.adminUrl}/v1/api-keys/nope/sources`, { headers: [bearer("tok")] })).status, 404);
  });
});

describe("observed sources stay bounded", () => {
  test("100,000 distinct client IPs of one key keep at most 64 networks; 100,000 keys at most the key bound", () => {
    const t = new SourceTracker({ networksPerKey: 64, maxKeys: 1000 });
    for (let i = 0; i < 100_000; i++) {
      t.record("k", { family: 4, w0: 0, w1: 0, w2: 0, w3: (i * 2654435761) >>> 0 }, false);
    }
    assert.equal(t.size("k"), 64);
    for (let i = 0; i < 100_000; i++) t.record(`key${i}`, parseIp("10.0.0.1")!, false);
    assert.equal(t.sources("key0").length, 0, "evicted");
    assert.equal(t.sources("key99999").length, 1);
  });
});

describe("observed sources against a naive reference", () => {
  test("property: counts, recency and both LRU bounds match plain arrays through records and forgets", () => {
    const NETS: Record<string, string> = {
      "10.0.1.5": "10.0.1.0/24",
      "10.0.1.9": "10.0.1.0/24",
      "10.0.2.1": "10.0.2.0/24",
      "2001:db8:0:1::5": "2001:db8:0:1::/64",
      "2001:db8:0:1::9": "2001:db8:0:1::/64",
      "2001:db8:0:2::1": "2001:db8:0:2::/64",
    };
    const op = fc.oneof(
      fc.record({
        kind: fc.constant("record" as const),
        key: fc.constantFrom("a", "b", "c"),
        ip: fc.constantFrom(...Object.keys(NETS)),
        denied: fc.boolean(),
      }),
      fc.record({ kind: fc.constant("forget" as const), key: fc.constantFrom("a", "b", "c") }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 60 }), (ops) => {
        const t = new SourceTracker({ networksPerKey: 2, maxKeys: 2 });
        // Most recent last, at both levels.
        let ref: Array<{ key: string; nets: Array<{ net: string; requests: number; denied: number }> }> = [];
        let clock = 0;
        for (const o of ops) {
          if (o.kind === "forget") {
            t.forget(o.key);
            ref = ref.filter((k) => k.key !== o.key);
            continue;
          }
          t.record(o.key, parseIp(o.ip)!, o.denied, ++clock);
          let k = ref.find((x) => x.key === o.key);
          ref = ref.filter((x) => x.key !== o.key);
          k ??= { key: o.key, nets: [] };
          ref.push(k);
          if (ref.length > 2) ref.shift();
          const net = NETS[o.ip] as string;
          const n = k.nets.find((x) => x.net === net) ?? { net, requests: 0, denied: 0 };
          k.nets = [...k.nets.filter((x) => x.net !== net), n];
          n.requests++;
          if (o.denied) n.denied++;
          if (k.nets.length > 2) k.nets.shift();
          for (const key of ["a", "b", "c"]) {
            const got = t.sources(key).map((s) => [s.network, s.requests, s.denied]);
            const want = [...(ref.find((x) => x.key === key)?.nets ?? [])]
              .reverse()
              .map((x) => [x.net, x.requests, x.denied]);
            assert.deepEqual(got, want, `key ${key} after ${JSON.stringify(o)}`);
          }
        }
      }),
      { numRuns: 500 },
    );
  });
});

describe("logs never hold a secret", () => {
  let up: Upstream;
  let dir: string;
  before(async () => {
    up = await startUpstream();
    dir = mkdtempSync(join(tmpdir(), "keyfence-logs-"));
  });
  after(async () => {
    await up.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test("stdout of a real process through denials, bad requests, API writes and reload errors", async () => {
    writeFileSync(join(dir, "keys.yaml"), keysYaml(KEYS));
    writeFileSync(
      join(dir, "keyfence.yaml"),
      `listen: "127.0.0.1:0"\nupstream: "${up.url}"\naccess_log: true\nkeys:\n  file: keys.yaml\nadmin:\n  listen: "127.0.0.1:0"\n  operators:\n    - name: ops\n      token_sha256: "${sha("operator-token-xyz")}"\n`,
    );
    const kf = await spawnKeyfence(join(dir, "keyfence.yaml"));
    const { child, proxy, admin } = kf;
    const secrets = [
      "secret-local-123",
      "secret-office-456",
      "secret-report-789",
      "operator-token-xyz",
      "unknown-secret-000",
    ];
    await send(`${proxy}/x?token=q`, { headers: [bearer("secret-local-123")] });
    await send(`${proxy}/x`, { headers: [bearer("secret-office-456")] });
    await send(`${proxy}/x`, { headers: [bearer("secret-report-789")] });
    await send(`${proxy}/x`, { headers: [bearer("unknown-secret-000")] });
    await send(`${proxy}/x`, { headers: [bearer("secret-local-123"), bearer("secret-office-456")] });
    await send(`${proxy}/x`, { headers: [["Authorization", "Bearer secret-local-123 x"]] });
    await send(`${admin}/v1/api-keys`, { headers: [bearer("unknown-secret-000")] });
    const created = await send(`${admin}/v1/api-keys`, {
      method: "POST",
      headers: [bearer("operator-token-xyz"), ["Content-Type", "application/json"]],
      body: JSON.stringify({ name: "new", ip_allow_list: ["10.0.0.0/8"] }),
    });
    assert.equal(created.status, 201);
    secrets.push((created.json() as { secret: string }).secret);
    // A reload error that quotes the file: a plaintext secret pasted into secret_sha256 is not echoed.
    writeFileSync(join(dir, "keys.yaml"), `keys:\n  - id: oops\n    secret_sha256: "secret-pasted-by-mistake"\n`);
    secrets.push("secret-pasted-by-mistake");
    const deadline = Date.now() + 3000;
    while (!kf.output().includes("store_reload_failed") && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 20));
    child.kill("SIGTERM");
    await kf.exited;
    const out = kf.output();
    assert.ok(
      out.includes('"event":"denied"') && out.includes('"event":"key_created"') && out.includes("store_reload_failed"),
      out,
    );
    for (const s of secrets) assert.ok(!out.includes(s), `secret ${s} appears in the logs`);
    assert.ok(!out.includes(sha("secret-local-123")), "not even the hash of a key");
  });
});

describe("dashboards and alerts use only real metric names", () => {
  const fx = sidecarFixture((up) => startTestSidecar({ upstream: up.url, keys: KEYS }));

  test("every metric referenced in docs/grafana-dashboard.json and docs/alerts.yaml exists in /metrics", async () => {
    const metrics = (await send(`${fx.kf.adminUrl}/metrics`)).body;
    const present = new Set(
      metrics
        .split("\n")
        .filter((l) => l && !l.startsWith("#"))
        .map((l) => l.split(/[{ ]/)[0]),
    );
    const dashboard = JSON.parse(readFileSync(join(ROOT, "docs/grafana-dashboard.json"), "utf8")) as {
      panels: Array<{ targets: Array<{ expr: string }> }>;
    };
    const alerts = parse(readFileSync(join(ROOT, "docs/alerts.yaml"), "utf8")) as {
      groups: Array<{ rules: Array<{ expr: string }> }>;
    };
    const exprs = [
      ...dashboard.panels.flatMap((p) => p.targets.map((t) => t.expr)),
      ...alerts.groups.flatMap((g) => g.rules.map((r) => r.expr)),
    ];
    const names = new Set(exprs.flatMap((e) => e.match(/\b(?:keyfence|process|nodejs)_[a-z0-9_]+/g) ?? []));
    assert.ok(names.size >= 12, `only ${names.size} metric names found`);
    for (const n of names) assert.ok(present.has(n), `${n} is referenced but not exported`);
    // Every decision label value they name is a series /metrics exports, and every refusal counts as refused.
    const decisions = exprs.flatMap((e) =>
      [...e.matchAll(/decision=~?"([^"]+)"/g)].flatMap((m) => (m[1] as string).split("|")),
    );
    for (const d of decisions) {
      assert.ok(metrics.includes(`keyfence_decisions_total{decision="${d}"}`), `decision ${d} is not exported`);
    }
    const refused = exprs.find((e) => e.includes('decision=~"denied|'));
    for (const d of ["denied", "invalid_client_ip", "bad_request", "missing_scope"]) {
      assert.ok(refused?.includes(d), `the refused share counts ${d}`);
    }
  });
});

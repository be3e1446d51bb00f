/**
 * `npm run bench:hotpath`: what each per-request step of enforcement costs, in
 * nanoseconds, measured in isolation on one core (no sockets): the bearer
 * header, the SHA-256, the snapshot lookup, client-IP resolution, the
 * decision, the metrics, observed sources and the request id.
 */
import { randomUUID } from "node:crypto";
import { Registry } from "prom-client";
import { compileTrust, resolveClientIp, type CompiledTrust } from "../src/clientip/resolve.js";
import { Metrics } from "../src/metrics/metrics.js";
import { SourceTracker } from "../src/metrics/sources.js";
import { readBearer, secretHash } from "../src/policy/credential.js";
import { decide } from "../src/policy/decide.js";
import { MatcherCache, Snapshot } from "../src/store/snapshot.js";
import { machine, opsPerSecond, table } from "./lib.js";

const MS = process.argv.includes("--quick") ? 150 : 500;
const secret = "kf_4Rr5nQ2bW0s9Xy7uVt1Lk3Jh6Gf8Ds2Aq0Zx9Cv7Bn";
const records = Array.from({ length: 10_000 }, (_, i) => ({
  id: `key_${i}`,
  name: `Key ${i}`,
  secretSha256: secretHash(i === 42 ? secret : `other-${i}`),
  scopes: [],
  ipAllowList: [`10.${i >> 8}.${i & 255}.0/24`, "127.0.0.1"],
  mode: undefined,
  createdAt: undefined,
  updatedAt: undefined,
}));
const snapshot = new Snapshot(records, new MatcherCache());
const none = compileTrust([]) as CompiledTrust;
const behind = compileTrust(["10.0.0.0/8"]) as CompiledTrust;
const rawHeaders = [
  "Host",
  "api.example",
  "User-Agent",
  "curl/8",
  "Accept",
  "*/*",
  "Authorization",
  `Bearer ${secret}`,
];
const metrics = new Metrics(new Registry(), { version: "bench", defaultMetrics: false });
const sources = new SourceTracker();
const settings = { mode: "enforce", unknown: "forward", missing: "forward" } as const;
const hash = secretHash(secret);
const client = resolveClientIp("::ffff:127.0.0.1", undefined, none);
const key = snapshot.lookup(hash);
if (key === undefined || !key.restricted) throw new Error("bench key missing");

const steps: Array<[string, () => unknown]> = [
  ["readBearer (raw headers)", () => readBearer(rawHeaders)],
  ["secretHash (SHA-256 of the token)", () => secretHash(secret)],
  ["snapshot.lookup (10,000 keys)", () => snapshot.lookup(hash)],
  ["resolveClientIp (socket only)", () => resolveClientIp("::ffff:127.0.0.1", undefined, none)],
  ["resolveClientIp (trusted peer + XFF)", () => resolveClientIp("10.0.0.1", "203.0.113.9, 10.0.0.7", behind)],
  ["decide (allow-list match)", () => decide({ kind: "key", key }, client, settings)],
  ["metrics: decision counter + histogram", () => metrics.decision("allowed", 0.000004)],
  ["metrics: request histogram", () => metrics.request("forwarded", 0.0012)],
  ["metrics: in-flight gauge +1/-1", () => (metrics.inflightDelta(1), metrics.inflightDelta(-1))],
  ["observed sources record", () => sources.record("key_42", client.ip ?? client.ip!, false)],
  ["request id (randomUUID)", () => randomUUID()],
  ["performance.now()", () => performance.now()],
];

const rows = steps.map(([name, fn]) => {
  const rate = opsPerSecond(fn, MS);
  return { name, ns: 1e9 / rate };
});
const enforcement = rows.slice(0, 6).filter((r) => !r.name.includes("XFF"));
const total = rows.filter((r) => !r.name.includes("XFF")).reduce((n, r) => n + r.ns, 0);
console.log(`Machine: ${machine()}\n`);
console.log(
  table(
    ["step", "ns per call"],
    [
      ...rows.map((r) => [r.name, r.ns.toFixed(0)]),
      ["enforcement alone (bearer … decide, socket client IP)", enforcement.reduce((n, r) => n + r.ns, 0).toFixed(0)],
      ["everything keyfence adds per request (no XFF)", total.toFixed(0)],
    ],
  ),
);

/**
 * `npm run bench:hotpath`: what each per-request step of enforcement costs, in
 * nanoseconds, measured in isolation on one core (no sockets): the bearer
 * header, the SHA-256, the snapshot lookup, client-IP resolution, the
 * decision, the metrics, observed sources and the request id.
 */
import { Registry } from "prom-client";
import { compileTrust, resolveClientIp, type CompiledTrust } from "../src/clientip/resolve.js";
import { Metrics } from "../src/metrics/metrics.js";
import { SourceTracker } from "../src/metrics/sources.js";
import { readBearer } from "../src/policy/credential.js";
import { decide } from "../src/policy/decide.js";
import { MatcherCache, Snapshot } from "../src/store/snapshot.js";
import { randomUUID } from "node:crypto";
import { machine, opsPerSecond, table } from "./lib.js";
import { secretDigest } from "../src/store/digest.js";

const MS = process.argv.includes("--quick") ? 150 : 500;
const secret = "kf_4Rr5nQ2bW0s9Xy7uVt1Lk3Jh6Gf8Ds2Aq0Zx9Cv7Bn";
const records = Array.from({ length: 10_000 }, (_, i) => ({
  id: `key_${i}`,
  name: `Key ${i}`,
  secretDigest: secretDigest(i === 42 ? secret : `other-${i}`),
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
const hash = secretDigest(secret);
const client = resolveClientIp("::ffff:127.0.0.1", undefined, none);
const key = snapshot.lookup(hash);
if (key === undefined || !key.restricted) throw new Error("bench key missing");
const clientIp = client.ip;
if (clientIp === undefined) throw new Error("bench client address unparsed");

// "enforce": a step of the decision; "adds": other per-request work keyfence
// adds; "alt": an alternative path, not summed (first sight of a token, XFF).
const steps: Array<[string, () => unknown, "enforce" | "adds" | "alt"]> = [
  ["readBearer (raw headers)", () => readBearer(rawHeaders), "enforce"],
  ["snapshot.lookupToken (a token seen before)", () => snapshot.lookupToken(secret), "enforce"],
  ["secretDigest (SHA-256, a token's first request)", () => secretDigest(secret), "alt"],
  ["snapshot.lookup by hash (10,000 keys)", () => snapshot.lookup(hash), "alt"],
  ["resolveClientIp (socket only)", () => resolveClientIp("::ffff:127.0.0.1", undefined, none), "enforce"],
  ["resolveClientIp (trusted peer + XFF)", () => resolveClientIp("10.0.0.1", "203.0.113.9, 10.0.0.7", behind), "alt"],
  ["decide (allow-list match)", () => decide({ kind: "key", key }, client, settings), "enforce"],
  ["metrics: decision counter + histogram", () => metrics.decision("allowed", 0.000004), "adds"],
  ["metrics: request histogram", () => metrics.request("forwarded", 0.0012), "adds"],
  ["observed sources record", () => sources.record("key_42", clientIp, false), "adds"],
  ["request id (crypto.randomUUID)", () => randomUUID(), "adds"],
  ["performance.now()", () => performance.now(), "adds"],
];

const rows = steps.map(([name, fn, kind]) => {
  const rate = opsPerSecond(fn, MS);
  return { name, kind, ns: 1e9 / rate };
});
const sum = (kinds: string[]): number => rows.filter((r) => kinds.includes(r.kind)).reduce((n, r) => n + r.ns, 0);
console.log(`Machine: ${machine()}\n`);
console.log(
  table(
    ["step", "ns per call"],
    [
      ...rows.map((r) => [r.name, r.ns.toFixed(0)]),
      ["enforcement alone (bearer … decide, socket client IP, token seen before)", sum(["enforce"]).toFixed(0)],
      ["everything keyfence adds per request (same)", sum(["enforce", "adds"]).toFixed(0)],
    ],
  ),
);

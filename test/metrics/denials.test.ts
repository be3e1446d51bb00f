/** Denial floods: a line per denial up to 20 a second per key, then one summary per key and second; counts stay exact. */
import assert from "node:assert/strict";
import { Writable } from "node:stream";
import { describe, test } from "node:test";
import { createLogger } from "../../src/cli/sidecar.js";
import { parseIp, type Ip } from "../../src/ip/address.js";
import { DenialLog } from "../../src/metrics/denials.js";
import { bearer, send } from "../helpers/http.js";
import { eventually, sidecarFixture, startTestSidecar } from "../helpers/sidecar.js";

function capture(): { lines: Array<Record<string, unknown>>; log: ReturnType<typeof createLogger> } {
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString("utf8").split("\n"))
        if (l.trim() !== "") lines.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
  return { lines, log: createLogger(sink) };
}

const ip = (s: string): Ip => {
  const v = parseIp(s);
  if (v === undefined) throw new Error(s);
  return v;
};

describe("DenialLog with a controllable clock", () => {
  test("20 lines a second per key, then one summary per key and second with exact counts and the busiest networks", () => {
    const { lines, log } = capture();
    let now = 1_700_000_000_000;
    const timers: Array<() => void> = [];
    const d = new DenialLog(log, { now: () => now, schedule: (fn) => timers.push(fn) });
    let admitted = 0;
    // Second 0: 100 denials of k1 from 3 networks (60/30/10), 5 of k2.
    for (let i = 0; i < 100; i++) {
      const from =
        i < 60 ? `198.51.100.${String(i)}` : i < 90 ? `203.0.113.${String(i)}` : `2001:db8:0:${String(i)}::1`;
      if (d.admit("k1", ip(from), now + i)) admitted++;
    }
    for (let i = 0; i < 5; i++) assert.equal(d.admit("k2", ip("192.0.2.1"), now + i), true);
    assert.equal(admitted, 20);
    assert.equal(timers.length, 1, "one flush scheduled");
    // Nothing is summarised while the second lasts.
    d.flush(now + 999);
    assert.equal(lines.length, 0);
    now += 1000;
    (timers.shift() as () => void)();
    assert.equal(lines.length, 1);
    const s = lines[0] as Record<string, unknown>;
    assert.equal(s["event"], "denied_summary");
    assert.equal(s["key_id"], "k1");
    assert.equal(s["logged"], 20);
    assert.equal(s["count"], 80);
    // The first 20 (logged) were all from 198.51.100.0/24: 40 more from there, 30, then 10 distinct /64s.
    assert.equal(s["networks"], 12);
    const top = s["top"] as Array<{ network: string; count: number }>;
    assert.deepEqual(top.slice(0, 2), [
      { network: "198.51.100.0/24", count: 40 },
      { network: "203.0.113.0/24", count: 30 },
    ]);
    assert.equal(top.length, 5);
    assert.equal(s["level"], 40);
    // A new second starts a new budget.
    for (let i = 0; i < 25; i++) d.admit("k1", ip("198.51.100.1"), now + i);
    now += 1000;
    d.flush(now);
    assert.equal(lines.length, 2);
    assert.equal(lines[1]?.["count"], 5);
    assert.equal(lines[1]?.["networks"], 1);
  });

  test("a key that comes back in a later second writes its pending summary first", () => {
    const { lines, log } = capture();
    const d = new DenialLog(log, { perSecond: 2, schedule: () => undefined });
    for (let i = 0; i < 5; i++) d.admit("k", ip("10.0.0.1"), 5000 + i);
    assert.equal(lines.length, 0);
    assert.equal(d.admit("k", undefined, 7000), true);
    assert.equal(lines.length, 1);
    assert.equal(lines[0]?.["count"], 3);
  });

  test("an unparseable client address is counted apart", () => {
    const { lines, log } = capture();
    const d = new DenialLog(log, { perSecond: 0, schedule: () => undefined });
    d.admit("k", undefined, 0);
    d.admit("k", ip("10.0.0.1"), 1);
    d.flush(1000);
    assert.equal(lines[0]?.["unknown_ip"], 1);
    assert.equal(lines[0]?.["networks"], 2);
    assert.equal(lines[0]?.["count"], 2);
  });
});

/** Waits until `total` denials of k_far since log line `from` are in lines or summaries; at most 20 lines a second since `started`. */
async function linesOrSummaries(
  logs: ReadonlyArray<Record<string, unknown>>,
  from: number,
  total: number,
  started: number,
): Promise<void> {
  const seconds = Math.floor(Date.now() / 1000) - Math.floor(started / 1000) + 1;
  const mine = (): Array<Record<string, unknown>> => logs.slice(from).filter((l) => l["key_id"] === "k_far");
  const logged = (): number => mine().filter((l) => l["event"] === "denied").length;
  const summarised = (): number =>
    mine()
      .filter((l) => l["event"] === "denied_summary")
      .reduce((sum, l) => sum + Number(l["count"]), 0);
  await eventually(() => logged() + summarised() === total, 5000, "every denial in a line or a summary");
  assert.ok(logged() <= 20 * seconds, `${String(logged())} lines in ${String(seconds)} s`);
}

describe("a denial flood through the proxy", () => {
  const fx = sidecarFixture((up) =>
    startTestSidecar({ upstream: up.url, keys: [{ id: "k_far", secret: "s_far", allow: ["203.0.113.0/24"] }] }),
  );
  test("150 denials: at most 20 lines per second, the rest in summaries; metrics and observed sources exact", async () => {
    const n = fx.kf.logs.length;
    const started = Date.now();
    const batch = async (): Promise<void> => {
      const rs = await Promise.all(
        Array.from({ length: 50 }, () => send(`${fx.kf.url}/x`, { headers: [bearer("s_far")] })),
      );
      for (const r of rs) assert.equal(r.status, 403);
    };
    for (let i = 0; i < 3; i++) await batch();
    await linesOrSummaries(fx.kf.logs, n, 150, started);
    const metrics = (await send(`${fx.kf.adminUrl}/metrics`)).body;
    assert.match(metrics, /^keyfence_decisions_total\{decision="denied"\} 150$/m);
    const observed = fx.kf.sidecar.sources.sources("k_far");
    assert.deepEqual(
      observed.map((o) => [o.network, o.requests, o.denied]),
      [["127.0.0.0/24", 150, 150]],
    );
  });
});

describe("a denial flood through the decision listener", () => {
  const fx = sidecarFixture((up) =>
    startTestSidecar({
      upstream: up.url,
      keys: [{ id: "k_far", secret: "s_far", allow: ["203.0.113.0/24"] }],
      config: { decision: { listen: "127.0.0.1:0" } },
    }),
  );
  test("60 denials: at most 20 lines per second, the rest in summaries", async () => {
    const n = fx.kf.logs.length;
    const started = Date.now();
    const rs = await Promise.all(
      Array.from({ length: 60 }, () => send(`${fx.kf.decisionUrl}/x`, { headers: [bearer("s_far")] })),
    );
    for (const r of rs) assert.equal(r.status, 403);
    await linesOrSummaries(fx.kf.logs, n, 60, started);
  });
});

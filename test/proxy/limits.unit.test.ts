/** The limit building blocks alone: config section, upstream gate, client slots, the limit log. */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { describe, test } from "node:test";
import fc from "fast-check";
import pino from "pino";
import { parseConfig } from "../../src/config/config.js";
import { DEFAULT_LIMITS, perProcess } from "../../src/config/limits.js";
import { ClientSlots, LimitLog, UpstreamGate } from "../../src/proxy/limits.js";
import { formatProblem } from "../../src/util/yaml.js";
import { BIN } from "../helpers/spawn.js";

const FILE = "/etc/keyfence/keyfence.yaml";
const BASE = 'upstream: "http://127.0.0.1:3000"\nkeys:\n  file: keys.yaml\n';

describe("limits: configuration", () => {
  test("absent: the SPEC's defaults", () => {
    const r = parseConfig(FILE, BASE);
    assert.ok(r.ok);
    assert.deepEqual(r.config.limits, {
      bufferBodyBytes: 65536,
      bodyIdleMs: 10000,
      inflightPerClient: 128,
      queueMs: 5000,
      connections: 10000,
      connectionsPerPeer: 1000,
      tunnelIdleMs: 600000,
      ipv6Prefix: 64,
    });
  });

  test("each field read; the others keep their default", () => {
    const r = parseConfig(FILE, `${BASE}limits:\n  queue_ms: 250\n  buffer_body_bytes: 0\n`);
    assert.ok(r.ok);
    assert.deepEqual(r.config.limits, { ...DEFAULT_LIMITS, queueMs: 250, bufferBodyBytes: 0 });
  });

  test("every bad field at once, located, quoting the value", () => {
    const text = [
      BASE.trimEnd(),
      "limits:",
      "  body_idle_ms: 0",
      "  inflight_per_client: 1.5",
      '  queue_ms: "5s"',
      "  connections: 10",
      "  connections_per_peer: 20",
      "  tunnel_idle: 5",
      "  ipv6_prefix: 129",
    ].join("\n");
    const r = parseConfig(FILE, text);
    assert.equal(r.ok, false);
    const p = r.ok ? [] : r.problems.map(formatProblem);
    const expect = [
      /:5:17: limits\.body_idle_ms \("0"\): must be an integer from 1 to 3600000/,
      /:6:24: limits\.inflight_per_client \("1\.5"\): must be an integer/,
      /:7:13: limits\.queue_ms \("5s"\): must be an integer/,
      /:9:25: limits\.connections_per_peer \("20"\): must not exceed limits\.connections \(10\)/,
      /:10:3: limits\.tunnel_idle: unknown field/,
      /:11:16: limits\.ipv6_prefix \("129"\): must be an integer from 32 to 128/,
    ];
    assert.equal(p.length, expect.length, p.join("\n"));
    for (const re of expect)
      assert.ok(
        p.some((l) => re.test(l)),
        `${re} in\n${p.join("\n")}`,
      );
  });

  test("not a mapping", () => {
    const r = parseConfig(FILE, `${BASE}limits: 5\n`);
    assert.equal(r.ok, false);
    assert.match(r.ok ? "" : formatProblem(r.problems[0]!), /limits \("5"\): must be a mapping/);
  });

  test("check-config reports the limits in force", () => {
    const dir = mkdtempSync(join(tmpdir(), "keyfence-limits-"));
    try {
      writeFileSync(join(dir, "keys.yaml"), "keys: []\n");
      writeFileSync(join(dir, "kf.yaml"), `${BASE}limits:\n  queue_ms: 250\n  connections_per_peer: 50\n`);
      const r = spawnSync(process.execPath, [BIN, "check-config", "--config", join(dir, "kf.yaml")], {
        encoding: "utf8",
        timeout: 20_000,
      });
      assert.equal(r.status, 0, r.stderr);
      assert.match(
        r.stdout,
        /^ {2}limits {11}body buffered up to 65536 B, body idle 10000 ms, 128 in flight per client, queue 250 ms, 10000 connections \(50 per peer\), tunnel idle 600000 ms, an IPv6 client counted per \/64$/m,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("a cluster's workers share the counts, not the times", () => {
    const l = perProcess(DEFAULT_LIMITS, 3);
    assert.deepEqual(l, {
      ...DEFAULT_LIMITS,
      inflightPerClient: 43,
      connections: 3334,
      connectionsPerPeer: 334,
    });
    assert.equal(perProcess(DEFAULT_LIMITS, 1), DEFAULT_LIMITS);
    assert.equal(perProcess({ ...DEFAULT_LIMITS, inflightPerClient: 1 }, 4).inflightPerClient, 1);
  });
});

describe("limits: upstream gate", () => {
  test("starts at once below capacity, queues above, times out after queue_ms, hands over in order", (t) => {
    t.mock.timers.enable({ apis: ["setTimeout"] });
    const gate = new UpstreamGate(2, 50);
    const events: string[] = [];
    const req = (name: string): (() => void) | undefined =>
      gate.acquire(
        () => events.push(`start ${name}`),
        () => events.push(`busy ${name}`),
      );
    assert.equal(req("a"), undefined);
    assert.equal(req("b"), undefined);
    const withdrawC = req("c");
    assert.ok(withdrawC);
    req("d");
    req("e");
    assert.deepEqual(events, ["start a", "start b"]);
    withdrawC();
    gate.release();
    assert.deepEqual(events, ["start a", "start b", "start d"]);
    assert.equal(gate.queued, 1);
    t.mock.timers.tick(49);
    assert.deepEqual(events, ["start a", "start b", "start d"], "still waiting just before queue_ms");
    t.mock.timers.tick(1);
    assert.deepEqual(events, ["start a", "start b", "start d", "busy e"]);
    assert.equal(gate.queued, 0);
    assert.equal(gate.inUse, 2);
    gate.release();
    gate.release();
    assert.equal(gate.inUse, 0);
  });

  test("property: never more than capacity at once; each request starts or is refused exactly once, in arrival order", (t) => {
    // Time is a mocked clock: a "tick" moves it past queue_ms at once, with no real wait.
    t.mock.timers.enable({ apis: ["setTimeout"] });
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 4 }),
        fc.array(fc.constantFrom("arrive", "release", "leave", "tick"), { maxLength: 60 }),
        (capacity, ops) => {
          const gate = new UpstreamGate(capacity, 5);
          const outcome = new Map<number, string>();
          const running: number[] = [];
          const started: number[] = [];
          const waiting: Array<{ id: number; withdraw: () => void }> = [];
          let next = 0;
          for (const op of ops) {
            if (op === "arrive") {
              const id = next++;
              const w = gate.acquire(
                () => {
                  assert.equal(outcome.has(id), false);
                  outcome.set(id, "start");
                  running.push(id);
                  started.push(id);
                },
                () => {
                  assert.equal(outcome.has(id), false);
                  outcome.set(id, "busy");
                },
              );
              if (w) waiting.push({ id, withdraw: w });
            } else if (op === "release" && running.length > 0) {
              running.shift();
              gate.release();
            } else if (op === "leave") {
              const w = waiting.find((x) => !outcome.has(x.id));
              if (w) {
                w.withdraw();
                outcome.set(w.id, "left");
              }
            } else if (op === "tick") {
              t.mock.timers.tick(8);
            }
            assert.ok(running.length <= capacity);
            assert.equal(gate.inUse, running.length);
          }
          // Started in arrival order (the queue is FIFO).
          assert.deepEqual(
            started,
            [...started].sort((a, b) => a - b),
          );
          while (running.length > 0) {
            running.shift();
            gate.release();
          }
          t.mock.timers.tick(10);
          for (let id = 0; id < next; id++) assert.ok(outcome.has(id), `request ${id} neither started nor refused`);
        },
      ),
      { numRuns: 60 },
    );
  });
});

describe("limits: client slots", () => {
  test("per client, given back, forgotten at zero", () => {
    const s = new ClientSlots(2);
    assert.ok(s.take("a"));
    assert.ok(s.take("a"));
    assert.equal(s.take("a"), false);
    assert.ok(s.take("b"), "another client has its own slots");
    s.give("a");
    assert.ok(s.take("a"));
    s.give("a");
    s.give("a");
    assert.equal(s.held("a"), 0);
  });
});

describe("limits: log once per client per interval", () => {
  test("first hit at once, repeats summed at the end of the interval", () => {
    const lines: Array<Record<string, unknown>> = [];
    const sink = new Writable({
      write(chunk: Buffer, _e, cb) {
        for (const l of chunk.toString().split("\n")) if (l) lines.push(JSON.parse(l) as Record<string, unknown>);
        cb();
      },
    });
    const log = new LimitLog(pino(sink), 60_000);
    for (let i = 0; i < 50; i++) log.hit("inflight_per_client", "192.0.2.1");
    log.hit("inflight_per_client", "192.0.2.2");
    log.hit("queue", "192.0.2.1");
    assert.deepEqual(
      lines.map((l) => [l["limit"], l["client_ip"], l["count"]]),
      [
        ["inflight_per_client", "192.0.2.1", undefined],
        ["inflight_per_client", "192.0.2.2", undefined],
        ["queue", "192.0.2.1", undefined],
      ],
    );
    log.flush();
    assert.deepEqual(
      lines.slice(3).map((l) => [l["limit"], l["client_ip"], l["count"]]),
      [["inflight_per_client", "192.0.2.1", 49]],
    );
    log.hit("inflight_per_client", "192.0.2.1");
    assert.equal(lines.length, 5, "a new interval logs the first hit again");
  });
});

/**
 * The topology of deploy/compose.yaml, run as real processes on loopback:
 * a real HAProxy in TCP mode sending PROXY v2 round-robin to two real
 * `keyfence serve` replicas sharing a real redis-server, in front of an
 * upstream. The keyfence and HAProxy configurations are the shipped files of
 * deploy/compose/ with only addresses, ports and paths rewritten (the
 * balancer's compose address 172.28.0.10 becomes 127.0.0.10, HAProxy's
 * source address here), so the test fails when a shipped file breaks.
 */
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { parse, stringify } from "yaml";
import { needBinary } from "../helpers/binary.js";
import { bearer, send, type Reply } from "../helpers/http.js";
import { freePort, startRedis, type RedisServer } from "../helpers/redis.js";
import { eventually, keysYaml } from "../helpers/sidecar.js";
import { BIN, spawnKeyfence, type Running } from "../helpers/spawn.js";
import { startUpstream, type Upstream } from "../helpers/upstream.js";

const COMPOSE = resolve(fileURLToPath(import.meta.url), "../../../../deploy/compose");
const redisBin = needBinary("redis-server", "redis-server");
const haproxyBin = needBinary("haproxy", "haproxy");
const skip = redisBin.skip || haproxyBin.skip;

/** HAProxy's address here: the stand-in for the balancer's fixed compose address. */
const BALANCER = "127.0.0.10";
const COMPOSE_BALANCER = "172.28.0.10";
const CLIENT = "127.0.0.1";
const TOKEN = "tok_topology_ops";
const OPS = bearer(TOKEN);
const sha = (s: string): string => createHash("sha256").update(s).digest("hex");

type Obj = Record<string, unknown>;
const obj = (v: unknown): Obj => (v !== null && typeof v === "object" && !Array.isArray(v) ? (v as Obj) : {});

/**
 * The shipped deploy/compose/keyfence.yaml with only addresses, ports and
 * paths rewritten: listeners on 127.0.0.1:0, the test upstream, the test
 * Redis, the balancer's compose address mapped to HAProxy's here.
 */
function deriveKeyfenceConfig(shipped: string, upstream: string, redisUrl: string): Obj {
  const doc = obj(parse(shipped));
  assert.equal(doc["listen"], "0.0.0.0:8080", "the shipped proxy listener");
  doc["listen"] = "127.0.0.1:0";
  doc["upstream"] = upstream;
  if (Array.isArray(doc["proxy_protocol"])) {
    doc["proxy_protocol"] = doc["proxy_protocol"].map((a: unknown) => (a === COMPOSE_BALANCER ? BALANCER : a));
  }
  const keys = obj(doc["keys"]);
  const redis = obj(keys["redis"]);
  assert.equal(typeof redis["url"], "string", "the shipped keys.redis.url");
  redis["url"] = redisUrl;
  const admin = obj(doc["admin"]);
  assert.equal(admin["listen"], "0.0.0.0:9090", "the shipped admin listener");
  admin["listen"] = "127.0.0.1:0";
  return doc;
}

/**
 * The shipped deploy/compose/haproxy.cfg with only addresses and ports
 * rewritten: the frontend binds 127.0.0.1:`port`, each server points at a
 * replica's proxy port with its health check on that replica's admin port,
 * connections leave from BALANCER, and Docker's DNS resolver is dropped.
 * Each rewrite must apply exactly as often as expected.
 */
function deriveHaproxyConfig(
  shipped: string,
  port: number,
  replicas: ReadonlyArray<{ proxy: URL; admin: URL }>,
): string {
  let text = shipped;
  const rewrite = (re: RegExp, to: (groups: string[]) => string, times: number): void => {
    let n = 0;
    text = text.replace(re, (...args: unknown[]) => {
      n += 1;
      return to(args.slice(0, -2) as string[]);
    });
    assert.equal(n, times, `haproxy.cfg: ${re.source} matched ${n} times, expected ${times}`);
  };
  rewrite(/^ {4}bind :8080$/gm, () => `    bind 127.0.0.1:${port}`, 1);
  rewrite(/^resolvers docker\n(?: {4}.*\n)+\n/gm, () => "", 1);
  rewrite(/ resolvers docker init-addr [^\n]*$/gm, () => "", 1);
  rewrite(/^( {4}balance roundrobin)$/gm, (m) => `${m[1] ?? ""}\n    source ${BALANCER}`, 1);
  let i = 0;
  rewrite(
    /^( {4}server (keyfence-\d)) \2:8080(.*)$/gm,
    (m) => {
      const r = replicas[i++];
      assert.ok(r, "one server line per replica");
      return `${m[1] ?? ""} 127.0.0.1:${r.proxy.port}${m[3] ?? ""} port ${r.admin.port}`;
    },
    replicas.length,
  );
  return text;
}

function run(args: string[]): Promise<{ code: number | null; err: string }> {
  return new Promise((res) => {
    const child = spawn(process.execPath, [BIN, ...args], { stdio: ["ignore", "ignore", "pipe"] });
    let err = "";
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    const t = setTimeout(() => child.kill("SIGKILL"), 15_000);
    child.on("exit", (code) => {
      clearTimeout(t);
      res({ code, err });
    });
  });
}

/** Whether 127.0.0.1:`port` accepts a TCP connection (HAProxy is up; what it relays is for the tests to judge). */
function accepts(port: number): Promise<boolean> {
  return new Promise((res) => {
    const s = connect(port, "127.0.0.1");
    s.once("connect", () => {
      s.destroy();
      res(true);
    });
    s.once("error", () => res(false));
  });
}

/** keyfence_decisions_total{decision=`d`} on one replica. */
async function decisions(kf: Running, d: string): Promise<number> {
  const text = (await send(`${kf.admin}/metrics`, { timeoutMs: 2000 })).body;
  const m = new RegExp(`^keyfence_decisions_total\\{decision="${d}"\\} (\\d+)$`, "m").exec(text);
  return Number(m?.[1] ?? 0);
}

describe("deploy/compose topology as processes: HAProxy → two keyfence → upstream, on Redis", { skip }, () => {
  let dir = "";
  let up: Upstream | undefined;
  let redis: RedisServer | undefined;
  const replicas: Running[] = [];
  let haproxy: ChildProcess | undefined;
  let haproxyOut = "";
  let front = "";

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "keyfence-topology-"));
    up = await startUpstream();
    redis = await startRedis(redisBin.path ?? "redis-server");
    const config = deriveKeyfenceConfig(readFileSync(join(COMPOSE, "keyfence.yaml"), "utf8"), up.url, redis.url);
    const opsFile = obj(config["admin"])["operators_file"];
    assert.equal(typeof opsFile, "string", "the shipped admin.operators_file");
    assert.deepEqual(parse(readFileSync(join(COMPOSE, "operators.yaml"), "utf8")), [], "no built-in operator");
    writeFileSync(join(dir, String(opsFile)), stringify([{ name: "ops", token_sha256: sha(TOKEN) }]));
    const configFile = join(dir, "keyfence.yaml");
    writeFileSync(configFile, stringify(config));
    writeFileSync(
      join(dir, "seed.yaml"),
      keysYaml([
        { id: "k_here", secret: "s_here", allow: [`${CLIENT}/32`] },
        { id: "k_far", secret: "s_far", allow: ["203.0.113.0/24"] },
      ]),
    );
    const imported = await run(["keys", "import", "--config", configFile, "--from", join(dir, "seed.yaml")]);
    assert.equal(imported.code, 0, imported.err);
    // One by one: a failed start must not leave the other running unrecorded.
    for (let n = 0; n < 2; n++) replicas.push(await spawnKeyfence(configFile));
    const port = await freePort();
    front = `http://127.0.0.1:${port}`;
    const cfg = join(dir, "haproxy.cfg");
    writeFileSync(
      cfg,
      deriveHaproxyConfig(
        readFileSync(join(COMPOSE, "haproxy.cfg"), "utf8"),
        port,
        replicas.map((r) => ({ proxy: new URL(r.proxy), admin: new URL(r.admin) })),
      ),
    );
    const child = spawn(haproxyBin.path ?? "haproxy", ["-f", cfg, "-db"], { stdio: ["ignore", "pipe", "pipe"] });
    haproxy = child;
    child.stdout.on("data", (d: Buffer) => (haproxyOut += d.toString()));
    child.stderr.on("data", (d: Buffer) => (haproxyOut += d.toString()));
    await eventually(
      async () => {
        if (child.exitCode !== null) throw new Error(`haproxy exited with ${child.exitCode}:\n${haproxyOut}`);
        return accepts(port);
      },
      10_000,
      "haproxy accepting connections",
    );
  });

  after(async () => {
    const waits: Array<Promise<unknown>> = [];
    if (haproxy && haproxy.exitCode === null) {
      const h = haproxy;
      waits.push(new Promise((r) => h.once("exit", r)));
      h.kill("SIGKILL");
    }
    for (const r of replicas) {
      if (r.child.exitCode === null) {
        waits.push(r.exited);
        r.child.kill("SIGKILL");
      }
    }
    try {
      // SIGKILL cannot be ignored: every exit event comes. One that does not is a process left behind,
      // which the test reports instead of stepping past.
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error("a process outlived SIGKILL by 5 s")), 5000);
      });
      await Promise.race([Promise.all(waits), late]).finally(() => clearTimeout(timer));
    } finally {
      await redis?.kill();
      await up?.close();
      if (dir !== "") rmSync(dir, { recursive: true, force: true });
    }
  });

  test("both replicas are ready (/readyz 200: Redis reachable)", async () => {
    for (const r of replicas) {
      const ready = await send(`${r.admin}/readyz`, { timeoutMs: 2000 });
      assert.equal(ready.status, 200, `${r.admin}: ${ready.body}`);
    }
  });

  test("an allowed key from 127.0.0.1 is forwarded; the upstream sees the client, not HAProxy", async () => {
    const u: Upstream | undefined = up;
    assert.ok(u);
    const was = await Promise.all(replicas.map((r) => decisions(r, "allowed")));
    for (let n = 0; n < 4; n++) {
      const at: number = u.seen.length;
      const r = await send(`${front}/hello?n=${n}`, { headers: [bearer("s_here")], localAddress: CLIENT });
      assert.equal(r.status, 200, r.body);
      assert.equal(u.seen[at]?.url, `/hello?n=${n}`);
      assert.equal(u.seen[at]?.headers["x-forwarded-for"], CLIENT);
    }
    const now = await Promise.all(replicas.map((r) => decisions(r, "allowed")));
    assert.deepEqual(
      now.map((a, i) => a - (was[i] ?? 0)),
      [2, 2],
      "round robin: each replica decided two of the four requests",
    );
  });

  test("a key pinned to another network: 403 naming the real client IP, on both replicas", async () => {
    assert.ok(up);
    const was = await Promise.all(replicas.map((r) => decisions(r, "denied")));
    const seen = up.seen.length;
    const replies: Reply[] = [];
    for (let n = 0; n < 6; n++) {
      replies.push(await send(`${front}/x`, { headers: [bearer("s_far")], localAddress: CLIENT }));
    }
    for (const r of replies) {
      assert.equal(r.status, 403);
      assert.equal(r.body, `{"message":"source IP ${CLIENT} is not allowed for this API key"}`);
    }
    const now = await Promise.all(replicas.map((r) => decisions(r, "denied")));
    assert.deepEqual(
      now.map((a, i) => a - (was[i] ?? 0)),
      [3, 3],
    );
    assert.equal(up.seen.length, seen, "nothing forwarded");
  });

  test("a change made through replica A's admin API is enforced by replica B within 1 s", async (t) => {
    const [a, b] = replicas;
    assert.ok(a && b);
    const patch = await send(`${a.admin}/v1/api-keys/k_far`, {
      method: "PATCH",
      headers: [OPS, ["Content-Type", "application/json"]],
      body: JSON.stringify({ ip_allow_list: ["203.0.113.0/24", CLIENT] }),
    });
    assert.equal(patch.status, 200, patch.body);
    const changed = Date.now();
    const bAllowed = await decisions(b, "allowed");
    // Through HAProxy until B has allowed the key once; round robin reaches B every other request.
    let tookMs = -1;
    while (Date.now() - changed <= 1000) {
      const r = await send(`${front}/x`, { headers: [bearer("s_far")], localAddress: CLIENT, timeoutMs: 1000 });
      if (r.status === 200 && (await decisions(b, "allowed")) > bAllowed) {
        tookMs = Date.now() - changed;
        break;
      }
    }
    assert.ok(tookMs >= 0, "replica B did not enforce the change within 1 s");
    t.diagnostic(`replica B allowed the key ${tookMs} ms after replica A answered the change`);
    for (let n = 0; n < 4; n++) {
      const r = await send(`${front}/x`, { headers: [bearer("s_far")], localAddress: CLIENT });
      assert.equal(r.status, 200, "both replicas allow it now");
    }
  });
});

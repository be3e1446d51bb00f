import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { dirname, join } from "node:path";
import { isLoopback, parseConfig, parseListen } from "../../src/config/config.js";
import { parseKeysFile } from "../../src/store/keysfile.js";
import { formatProblem } from "../../src/util/yaml.js";

const FILE = "/etc/keyfence/keyfence.yaml";
const HASH = "a".repeat(64);

function problems(text: string, env: NodeJS.ProcessEnv = {}): string[] {
  const r = parseConfig(FILE, text, env);
  assert.equal(r.ok, false, "expected an invalid configuration");
  return r.ok ? [] : r.problems.map(formatProblem);
}

describe("configuration", () => {
  test("minimal file gets the SPEC defaults", () => {
    const r = parseConfig(FILE, 'upstream: "http://127.0.0.1:3000"\nkeys:\n  file: keys.yaml\n');
    assert.ok(r.ok);
    const c = r.config;
    assert.deepEqual(c.listen, { host: "127.0.0.1", port: 8080 });
    assert.equal(c.pingPath, "/_keyfence/ping");
    assert.equal(c.mode, "enforce");
    assert.equal(c.upstreamTimeoutMs, 30000);
    assert.equal(c.drainTimeoutMs, 10000);
    assert.equal(c.keys.file, "/etc/keyfence/keys.yaml");
    assert.equal(c.keys.unknown, "forward");
    assert.equal(c.keys.missing, "forward");
    assert.equal(c.keys.maxEntries, 1000);
    assert.equal(c.trustedProxies.none, true);
    assert.equal(c.admin, undefined);
    assert.deepEqual(c.warnings, []);
  });

  test("every problem at once, each with file:line:col, path and value", () => {
    const text = [
      'listen: "127.0.0.1:99999"',
      'upstream: "ftp://x"',
      "trusted_proxies: [10.0.0.0/8, 0177.0.0.1, 10.0.0.1/8]",
      "mode: strict",
      "colour: blue",
      "keys:",
      "  file: keys.yaml",
      "  unknown: drop",
      "  max_entries: 0",
      "admin:",
      "  operators:",
      "    - name: ops",
      '      token_sha256: "nothex"',
      '      totp_secret: "not base32!"',
    ].join("\n");
    const p = problems(text);
    const expect = [
      /^\/etc\/keyfence\/keyfence\.yaml:1:9: listen \("127\.0\.0\.1:99999"\): must be "host:port"/,
      /:2:11: upstream \("ftp:\/\/x"\): must be an http/,
      /:3:31: trusted_proxies\[1\] \("0177\.0\.0\.1"\): .*leading zero/,
      /:3:43: trusted_proxies\[2\] \("10\.0\.0\.1\/8"\): host bits are set; did you mean 10\.0\.0\.0\/8\?/,
      /:4:7: mode \("strict"\): must be "enforce" or "report"/,
      /:5:1: colour: unknown field/,
      /:8:12: keys\.unknown \("drop"\): must be "forward" or "reject"/,
      /:9:16: keys\.max_entries \("0"\): must be an integer/,
      /:13:21: admin\.operators\[0\]\.token_sha256: must be 64 lowercase hex/,
      /:14:20: admin\.operators\[0\]\.totp_secret: must be an RFC 4648 base32/,
    ];
    for (const re of expect)
      assert.ok(
        p.some((l) => re.test(l)),
        `missing ${re} in\n${p.join("\n")}`,
      );
    assert.ok(!p.some((l) => l.includes("not base32")), "a secret is never quoted");
  });

  test("required fields", () => {
    const p = problems('listen: "127.0.0.1:1"\n');
    assert.ok(p.some((l) => /missing field "upstream"/.test(l)));
    assert.ok(p.some((l) => /missing field "keys"/.test(l)));
  });

  test("YAML syntax errors are located", () => {
    const p = problems("upstream: [\nkeys: {file: a");
    assert.ok(
      p.every((l) => /^\/etc\/keyfence\/keyfence\.yaml:\d+:\d+: YAML syntax/.test(l)),
      p.join("\n"),
    );
  });

  test("environment overrides listen, upstream and admin listen", () => {
    const r = parseConfig(FILE, 'upstream: "http://a:1"\nkeys: {file: k}\nadmin: {}\n', {
      KEYFENCE_LISTEN: "0.0.0.0:80",
      KEYFENCE_UPSTREAM: "https://b:2/base",
      KEYFENCE_ADMIN_LISTEN: "[::]:9090",
    });
    assert.ok(r.ok);
    assert.deepEqual(r.config.listen, { host: "0.0.0.0", port: 80 });
    assert.equal(r.config.upstream.href, "https://b:2/base");
    assert.deepEqual(r.config.admin?.listen, { host: "::", port: 9090 });
    assert.ok(r.config.warnings.some((w) => w.includes("not on loopback")));
  });

  test("a bad environment value is named", () => {
    const p = problems('upstream: "http://a:1"\nkeys: {file: k}\n', { KEYFENCE_LISTEN: "nope" });
    assert.ok(
      p.some((l) => /KEYFENCE_LISTEN \("nope"\)/.test(l)),
      p.join("\n"),
    );
  });

  test("risky trust is a warning, not an error", () => {
    const r = parseConfig(FILE, 'upstream: "http://a:1"\nkeys: {file: k}\ntrusted_proxies: ["0.0.0.0/0"]\n');
    assert.ok(r.ok);
    assert.ok(r.config.warnings.some((w) => w.includes("trusts every address (0.0.0.0/0)")));
  });

  test("hop count", () => {
    const r = parseConfig(FILE, 'upstream: "http://a:1"\nkeys: {file: k}\ntrusted_proxies: 2\n');
    assert.ok(r.ok);
    assert.equal(r.config.trustedProxies.trust(undefined, 1), true);
    assert.equal(r.config.trustedProxies.trust(undefined, 2), false);
  });

  test("listen addresses", () => {
    assert.deepEqual(parseListen("[::1]:0"), { host: "::1", port: 0 });
    assert.deepEqual(parseListen("localhost:8080"), { host: "localhost", port: 8080 });
    for (const bad of ["8080", ":8080", "1.2.3:80", "[::1]", "::1:80", "127.0.0.1:080", "127.0.0.1:65536", "[zz]:1"]) {
      assert.equal(parseListen(bad), undefined, bad);
    }
    assert.equal(isLoopback("127.0.0.2"), true);
    assert.equal(isLoopback("::1"), true);
    assert.equal(isLoopback("0.0.0.0"), false);
  });
});

describe("keys file", () => {
  test("valid file: canonical lists, defaults", () => {
    const r = parseKeysFile(
      "keys.yaml",
      `keys:\n  - id: a\n    secret_sha256: "${HASH}"\n    ip_allow_list: ["::ffff:203.0.113.4", 203.0.113.4/32, 2001:DB8::/32]\n`,
      1000,
    );
    assert.ok(r.ok);
    assert.deepEqual(r.keys[0]?.ipAllowList, ["203.0.113.4", "2001:db8::/32"]);
    assert.equal(r.keys[0]?.name, "a");
    assert.deepEqual(r.keys[0]?.scopes, []);
  });

  test("every problem located, secrets never quoted", () => {
    const text = [
      "keys:",
      "  - id: good",
      `    secret_sha256: "${HASH}"`,
      "  - id: bad id!",
      '    secret_sha256: "hunter2"',
      "    ip_allow_list:",
      "      - 10.0.0.300/8",
      "      - 198.51.100.7/24",
      "    mode: loud",
      "    colour: red",
      "  - id: good",
      `    secret_sha256: "${HASH}"`,
      "    created_at: yesterday",
    ].join("\n");
    const r = parseKeysFile("keys.yaml", text, 1000);
    assert.ok(!r.ok);
    const p = r.problems.map(formatProblem);
    const expect = [
      /^keys\.yaml:4:9: keys\[1\]\.id \("bad id!"\)/,
      /^keys\.yaml:5:20: keys\[1\]\.secret_sha256: must be 64 lowercase hex/,
      /^keys\.yaml:7:9: keys\[1\]\.ip_allow_list\[0\] \("10\.0\.0\.300\/8"\): address part: part "300" is greater than 255/,
      /^keys\.yaml:8:9: keys\[1\]\.ip_allow_list\[1\] \("198\.51\.100\.7\/24"\): host bits are set; did you mean 198\.51\.100\.0\/24\?/,
      /^keys\.yaml:9:11: keys\[1\]\.mode \("loud"\)/,
      /^keys\.yaml:10:5: keys\[1\]\.colour: unknown field/,
      /^keys\.yaml:11:9: keys\[2\]\.id \("good"\): duplicate id \(also keys\[0\]\)/,
      /^keys\.yaml:12:20: keys\[2\]\.secret_sha256: the same secret as keys\[0\]/,
      /^keys\.yaml:13:17: keys\[2\]\.created_at \("yesterday"\): must be an RFC 3339/,
    ];
    for (const re of expect)
      assert.ok(
        p.some((l) => re.test(l)),
        `missing ${re} in\n${p.join("\n")}`,
      );
    assert.ok(!p.some((l) => l.includes("hunter2")));
  });

  test("empty file is an error; keys: [] is an empty store", () => {
    assert.equal(parseKeysFile("k", "", 10).ok, false);
    assert.equal(parseKeysFile("k", "# nothing\n", 10).ok, false);
    const r = parseKeysFile("k", "keys: []\n", 10);
    assert.ok(r.ok && r.keys.length === 0);
  });

  test("max_entries enforced per key", () => {
    const r = parseKeysFile(
      "k",
      `keys:\n  - id: a\n    secret_sha256: "${HASH}"\n    ip_allow_list: [1.1.1.1, 1.1.1.2]\n`,
      1,
    );
    assert.ok(!r.ok);
    assert.match(
      formatProblem(r.problems[0]!),
      /keys\[0\]\.ip_allow_list: has 2 distinct entries, more than the limit of 1/,
    );
  });
});

describe("keys.store and keys.redis", () => {
  const parse = (keys: string): ReturnType<typeof parseConfig> =>
    parseConfig(FILE, `upstream: "http://127.0.0.1:3000"\nkeys:\n${keys}`);
  test("the file store is the default and needs keys.file", () => {
    const r = parse("  file: keys.yaml\n");
    assert.ok(r.ok);
    assert.deepEqual(r.config.keys.store, { kind: "file" });
    const missing = parse("  store: file\n");
    assert.ok(!missing.ok);
    assert.match(missing.problems.map((p) => p.message).join(), /missing field "file"/);
  });
  test("redis: url required, prefix defaulted, snapshot_file relative to the config, password never shown", () => {
    const r = parse(
      '  store: redis\n  redis:\n    url: "redis://u:s3cret@10.0.0.5:6379/0"\n    snapshot_file: snap.yaml\n',
    );
    assert.ok(r.ok, JSON.stringify(!r.ok && r.problems));
    const s = r.config.keys.store;
    assert.equal(s.kind, "redis");
    if (s.kind !== "redis") return;
    assert.equal(s.url, "redis://u:s3cret@10.0.0.5:6379/0");
    assert.equal(s.displayUrl, "redis://u:***@10.0.0.5:6379/0");
    assert.equal(s.prefix, "keyfence:");
    assert.equal(s.snapshotFile, join(dirname(FILE), "snap.yaml"));
  });
  for (const [keys, message] of [
    ["  store: redis\n", /missing field "redis"/],
    ["  store: postgres\n  file: k\n", /must be "file" or "redis"/],
    ["  store: redis\n  redis: {}\n", /missing field "url"/],
    ['  store: redis\n  redis: {url: "http://x:1"}\n', /redis:\/\/ or rediss:\/\/ URL/],
    ['  store: redis\n  redis: {url: "redis://:pw@"}\n', /redis:\/\/ or rediss:\/\/ URL/],
    ['  store: redis\n  redis: {url: "redis://h", prefix: 7}\n', /prefix/],
    ['  store: redis\n  redis: {url: "redis://h", snapshot_file: ""}\n', /snapshot_file.*must be a path/],
    ['  store: redis\n  redis: {url: "redis://h", extra: 1}\n', /extra/],
    ['  file: k\n  redis: {url: "redis://h"}\n', /only read with store: redis/],
  ] as const) {
    test(`refused: ${JSON.stringify(keys)}`, () => {
      const r = parse(keys);
      assert.ok(!r.ok);
      const text = r.problems.map(formatProblem).join("\n");
      assert.match(text, message);
      assert.ok(!text.includes("pw"), "a password is never quoted");
    });
  }
});

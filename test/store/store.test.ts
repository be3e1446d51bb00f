/** The file store: in-place edits, the worker-thread loader for large files, reload safety. */
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { after, before, describe, test } from "node:test";
import { Worker } from "node:worker_threads";
import fc from "fast-check";
import { secretHash } from "../../src/policy/credential.js";
import { FileKeyStore, joinSliced, WORKER_THRESHOLD_BYTES } from "../../src/store/filestore.js";
import { parseKeysFile, type KeyRecord } from "../../src/store/keysfile.js";
import { IpError, networkOf, parseCidr, parseIp } from "../../src/ip/address.js";
import { MatcherCache, Snapshot, TOKEN_CACHE_MAX } from "../../src/store/snapshot.js";
import { indexEntries, spliceChange, type EntryIndex } from "../../src/store/splice.js";
import type { LoaderInput, LoaderMessage } from "../../src/store/loader.js";
import type { KeyChange } from "../../src/store/store.js";
import { formatStoreProblem } from "../../src/store/store.js";

function rec(id: string, over: Partial<KeyRecord> = {}): KeyRecord {
  return {
    id,
    name: id,
    secretSha256: secretHash(`secret-${id}`),
    scopes: [],
    ipAllowList: [],
    mode: undefined,
    createdAt: undefined,
    updatedAt: undefined,
    ...over,
  };
}

function records(file: string | Buffer): KeyRecord[] {
  const r = parseKeysFile("k", String(file), 1000);
  if (!r.ok) throw new Error(r.problems.map(formatStoreProblem).join("\n"));
  return r.keys;
}

/** {@link spliceChange} with its parts joined. */
function splice(...args: Parameters<typeof spliceChange>): { bytes: Buffer; index: EntryIndex } | undefined {
  const out = spliceChange(...args);
  return out && { bytes: Buffer.concat(out.parts), index: out.index };
}

const USUAL = `# top comment
keys:
  # the first key
  - id: a # trailing
    secret_sha256: "${secretHash("secret-a")}"
    ip_allow_list: [10.0.0.1] # office

  - id: b
    name: Bée 🐝 # ünïcode before the entries that follow
    secret_sha256: "${secretHash("secret-b")}"
    scopes:
      - x:y
  # the last key
  - id: c
    secret_sha256: "${secretHash("secret-c")}"
`;

describe("in-place edits of the keys file", () => {
  test("indexes the usual layout, with leading comments attached to their entry", () => {
    const bytes = Buffer.from(USUAL);
    const idx = indexEntries(bytes, ["a", "b", "c"]);
    assert.ok(idx);
    assert.equal(idx.indent, 2);
    assert.ok(bytes.toString("utf8", idx.starts[0], idx.bodies[0]).includes("# the first key"));
    assert.equal(bytes.toString("utf8", idx.starts[2], idx.bodies[2]), "  # the last key\n");
    assert.ok(bytes.toString("utf8", idx.bodies[2]).startsWith("  - id: c\n"));
    assert.equal(idx.end, bytes.length, "offsets are bytes, past the multi-byte characters");
  });

  test("refuses layouts it does not understand (the document path takes them)", () => {
    const h = secretHash("x");
    for (const [text, ids] of [
      [`keys: [{id: a, secret_sha256: "${h}"}]\n`, ["a"]],
      [`keys:\n- {id: a, secret_sha256: "${h}"}\n`, ["a"]],
      [`keys:\n\t- id: a\n`, ["a"]],
      [`keys: []\n`, []],
      [`keys:\n  - id: a\n    secret_sha256: "${h}"\n`, ["b"]],
      [`keys:\n  - secret_sha256: "${h}"\n    id: a\n  - id: b\n`, ["a"]],
    ] as Array<[string, string[]]>) {
      assert.equal(indexEntries(Buffer.from(text), ids), undefined, text);
    }
  });

  test("update, create and delete touch only their entry", () => {
    const ids = ["a", "b", "c"];
    const usual = Buffer.from(USUAL);
    const idx = indexEntries(usual, ids)!;
    const b = records(USUAL)[1]!;
    const up = splice(usual, idx, 1, {
      kind: "update",
      record: { ...b, name: "Bee 2 ✓", ipAllowList: ["192.0.2.0/24"] },
    })!;
    assert.deepEqual(
      records(up.bytes).map((r) => [r.id, r.name, r.ipAllowList]),
      [
        ["a", "a", ["10.0.0.1"]],
        ["b", "Bee 2 ✓", ["192.0.2.0/24"]],
        ["c", "c", []],
      ],
    );
    const upText = up.bytes.toString();
    for (const kept of [
      "# top comment",
      "# the first key",
      "- id: a # trailing",
      "ip_allow_list: [10.0.0.1] # office",
      "# the last key",
      "\n\n  - id: b",
    ]) {
      assert.ok(upText.includes(kept), `lost ${JSON.stringify(kept)}:\n${upText}`);
    }
    assert.deepEqual(indexEntries(up.bytes, ids), up.index, "the index follows an edit that changes byte lengths");
    const del = splice(up.bytes, up.index, 2, { kind: "delete", id: "c" })!;
    assert.deepEqual(
      records(del.bytes).map((r) => r.id),
      ["a", "b"],
    );
    assert.ok(!del.bytes.toString().includes("# the last key"), "a deleted entry takes its leading comment");
    const add = splice(del.bytes, del.index, -1, {
      kind: "create",
      record: rec("d", { name: "Dé", ipAllowList: ["::1"] }),
    })!;
    assert.deepEqual(
      records(add.bytes).map((r) => r.id),
      ["a", "b", "d"],
    );
    assert.deepEqual(indexEntries(add.bytes, ["a", "b", "d"]), add.index, "the index follows the edits");
    assert.equal(splice(usual, idx, 3, { kind: "delete", id: "zz" }), undefined, "a position out of range");
    assert.equal(splice(usual, idx, 0, { kind: "delete", id: "b" }), undefined, "a position holding another key");
    assert.equal(
      splice(usual, idx, 2, { kind: "update", record: { ...b, name: "wrong place" } }),
      undefined,
      "an update at a position holding another key",
    );
  });

  test("names with Unicode line and paragraph separators survive an edit and a create", () => {
    // Found by the property below once its names went beyond ASCII: the
    // re-indent used a multiline regex, which also starts a line after U+2028.
    const usual = Buffer.from(USUAL);
    const ids = ["a", "b", "c"];
    const name = "line\u2028sep\u2029para\u0085nel\u00a0nbsp";
    const up = splice(usual, indexEntries(usual, ids)!, 0, {
      kind: "update",
      record: { ...records(USUAL)[0]!, name },
    })!;
    const add = splice(up.bytes, up.index, -1, { kind: "create", record: rec("d", { name }) })!;
    assert.deepEqual(
      records(add.bytes).map((r) => r.name),
      [name, "Bée 🐝", "c", name],
    );
  });

  test("property: any sequence of changes done in place equals the records it describes", () => {
    const change = fc.oneof(
      fc.record({
        kind: fc.constant("create" as const),
        n: fc.nat(1000),
        list: fc.array(fc.constantFrom("10.0.0.1", "192.0.2.0/24", "2001:db8::/48"), { maxLength: 3 }),
      }),
      fc.record({
        kind: fc.constant("update" as const),
        pick: fc.nat(),
        name: fc
          .string({ minLength: 1, maxLength: 12, unit: "grapheme" })
          .filter((s) => s.trim() !== "" && [...s].every((ch) => ch.charCodeAt(0) >= 32)),
        list: fc.array(fc.constantFrom("10.0.0.2", "198.51.100.0/24"), { maxLength: 2 }),
      }),
      fc.record({ kind: fc.constant("delete" as const), pick: fc.nat() }),
    );
    fc.assert(
      fc.property(fc.array(change, { maxLength: 12 }), (changes) => {
        let text: Buffer = Buffer.from(USUAL);
        let expected = records(USUAL);
        let idx = indexEntries(
          text,
          expected.map((r) => r.id),
        );
        let created = 0;
        for (const c of changes) {
          const ids = expected.map((r) => r.id);
          let kc: KeyChange;
          if (c.kind === "create") {
            kc = { kind: "create", record: rec(`n${created++}_${c.n}`, { ipAllowList: [...new Set(c.list)] }) };
            expected = [...expected, kc.record];
          } else if (expected.length === 0) continue;
          else if (c.kind === "update") {
            const target = expected[c.pick % expected.length]!;
            kc = { kind: "update", record: { ...target, name: c.name, ipAllowList: [...new Set(c.list)] } };
            const r = kc.record;
            expected = expected.map((x) => (x.id === r.id ? r : x));
          } else {
            const target = expected[c.pick % expected.length]!;
            kc = { kind: "delete", id: target.id };
            expected = expected.filter((x) => x.id !== target.id);
          }
          if (idx === undefined) return; // an emptied file is the document path's job
          const out = splice(
            text,
            idx,
            kc.kind === "create" ? -1 : ids.indexOf(kc.kind === "update" ? kc.record.id : kc.id),
            kc,
          );
          assert.ok(out, "splice refused a usual layout");
          text = out.bytes;
          idx = expected.length > 0 ? out.index : undefined;
          if (expected.length > 0)
            assert.deepEqual(
              indexEntries(
                text,
                expected.map((r) => r.id),
              ),
              idx,
            );
        }
        assert.deepEqual(
          records(text).map((r) => [r.id, r.name, r.ipAllowList]),
          expected.map((r) => [r.id, r.name, r.ipAllowList]),
        );
      }),
      { numRuns: 300 },
    );
  });
});

test("property: a write's file assembled in slices equals the parts joined, and yields between slices", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.uint8Array({ maxLength: 40 }), { maxLength: 6 }),
      fc.integer({ min: 1, max: 16 }),
      async (parts, slice) => {
        let turns = 0;
        let counting = true;
        const tick = (): void => {
          if (!counting) return;
          turns++;
          setImmediate(tick);
        };
        setImmediate(tick);
        const joined = await joinSliced(parts, slice);
        counting = false;
        assert.deepEqual(joined, Buffer.concat(parts));
        if (joined.length >= slice * 2)
          assert.ok(turns > 0, `other work never ran while copying ${joined.length} bytes ${slice} at a time`);
      },
    ),
    { numRuns: 100 },
  );
});

describe("a large keys file (worker-thread loader, in-place writes)", () => {
  let dir: string;
  const N = 4000;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), "keyfence-large-"));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  function bigFile(extra = ""): string {
    let out = "keys:\n";
    for (let i = 0; i < N; i++) {
      out += `  - id: key_${i}\n    name: Key number ${i} of the large store\n    secret_sha256: "${secretHash(`s${i}`)}"\n    scopes: [messages:send]\n    ip_allow_list:\n      - 10.${i >> 8}.${i & 255}.0/24\n      - 2001:db8:${i.toString(16)}::/48\n`;
    }
    return out + extra;
  }

  test("byte offsets from the loader thread hold past multi-byte names: edits near the end land on their entry", async () => {
    const file = join(dir, "unicode.yaml");
    writeFileSync(file, bigFile().replace(/name: Key number (\d+)/g, "name: Clé n°$1 ✓"));
    assert.ok(statSync(file).size >= WORKER_THRESHOLD_BYTES, "the file takes the worker path");
    // The loader thread's index is the one indexEntries finds on the file's bytes
    // (an index in characters would be caught by the store's check of the id at
    // the edit's position, and the write would still come out right, slowly).
    const input: LoaderInput = { file, displayName: "unicode.yaml", maxEntries: 1000, knownHash: "", chunkSize: 1000 };
    const loader = new Worker(new URL("../../src/store/loader.js", import.meta.url), { workerData: input });
    const done = await new Promise<LoaderMessage>((resolve, reject) => {
      loader.on("message", (m: LoaderMessage) => (m.type === "chunk" ? loader.postMessage("next") : resolve(m)));
      loader.once("error", reject);
    });
    await loader.terminate();
    assert.equal(done.type, "done");
    const ids = Array.from({ length: N }, (_, i) => `key_${i}`);
    assert.deepEqual(done.type === "done" ? done.index : undefined, indexEntries(readFileSync(file), ids));

    const store = new FileKeyStore({ file, displayName: "unicode.yaml", maxEntries: 1000 });
    await store.load();
    const last = `key_${N - 1}`;
    const updated = { ...store.snapshot.record(last)!, name: "Dernière ✓✓", ipAllowList: ["198.51.100.0/24"] };
    await store.transact(() => ({ change: { kind: "update", record: updated }, result: undefined }));
    await store.transact(() => ({ change: { kind: "delete", id: `key_${N - 2}` }, result: undefined }));
    const onDisk = records(readFileSync(file, "utf8"));
    assert.equal(onDisk.length, N - 1);
    assert.deepEqual(
      onDisk.slice(-2).map((r) => [r.id, r.name, r.ipAllowList]),
      [
        [
          `key_${N - 3}`,
          `Clé n°${N - 3} ✓ of the large store`,
          [`10.${(N - 3) >> 8}.${(N - 3) & 255}.0/24`, `2001:db8:${(N - 3).toString(16)}::/48`],
        ],
        [last, "Dernière ✓✓", ["198.51.100.0/24"]],
      ],
    );
    await store.close();
  });

  test("loads off the main thread, writes in place, refuses a bad edit with located errors", async () => {
    const file = join(dir, "keys.yaml");
    writeFileSync(file, bigFile());
    assert.ok(statSync(file).size >= WORKER_THRESHOLD_BYTES, "the file takes the worker path");
    const store = new FileKeyStore({ file, displayName: "keys.yaml", maxEntries: 1000 });
    const failures: string[] = [];
    store.subscribe({ reloadFailed: (ps) => failures.push(...ps.map(formatStoreProblem)) });
    await store.load();
    assert.equal(store.snapshot.size, N);
    assert.equal(store.snapshot.lookup(secretHash("s7"))?.id, "key_7");

    const updated = { ...store.snapshot.record("key_10")!, name: "Renamed", ipAllowList: ["203.0.113.0/24"] };
    await store.transact(() => ({ change: { kind: "update", record: updated }, result: undefined }));
    await store.transact(() => ({
      change: { kind: "create", record: rec("fresh", { ipAllowList: ["192.0.2.1"] }) },
      result: undefined,
    }));
    await store.transact(() => ({ change: { kind: "delete", id: "key_20" }, result: undefined }));
    assert.equal(store.snapshot.size, N);
    assert.equal(store.snapshot.record("key_10")?.name, "Renamed");
    assert.equal(store.snapshot.record("key_20"), undefined);
    const onDisk = records(readFileSync(file, "utf8"));
    assert.equal(onDisk.length, N);
    assert.deepEqual(onDisk.find((r) => r.id === "key_10")?.ipAllowList, ["203.0.113.0/24"]);
    assert.ok(onDisk.some((r) => r.id === "fresh"));

    // An invalid edit is reported with file:line:col and changes nothing.
    writeFileSync(file, bigFile("  - id: broken\n    secret_sha256: nothex\n    ip_allow_list: [10.0.0.300]\n"));
    const delay = monitorEventLoopDelay({ resolution: 5 });
    delay.enable();
    await store.reload();
    delay.disable();
    assert.equal(store.snapshot.size, N, "the last good version keeps serving");
    assert.ok(
      failures.some((f) =>
        new RegExp(
          `^keys\\.yaml:${N * 7 + 4}:\\d+: keys\\[${N}\\]\\.ip_allow_list\\[0\\] \\("10\\.0\\.0\\.300"\\)`,
        ).test(f),
      ),
      failures.join("\n"),
    );
    assert.ok(delay.max / 1e6 < 200, `the event loop stalled ${delay.max / 1e6} ms`);

    // A good external edit replaces the store.
    writeFileSync(file, bigFile());
    await store.reload();
    assert.equal(store.snapshot.record("key_10")?.name, "Key number 10 of the large store");
    assert.equal(store.snapshot.record("fresh"), undefined);
    await store.close();
  });
});

describe("Snapshot.lookupToken", () => {
  const rec = (id: string, secret: string): KeyRecord => ({
    id,
    name: id,
    secretSha256: secretHash(secret),
    scopes: [],
    ipAllowList: [],
    mode: undefined,
    createdAt: undefined,
    updatedAt: undefined,
  });

  test("agrees with lookup of the SHA-256 for known, unknown, repeated and long tokens", () => {
    const snap = new Snapshot([rec("a", "sa"), rec("b", "x".repeat(300))], new MatcherCache());
    for (let round = 0; round < 3; round++) {
      for (const token of ["sa", "sb", "", "x".repeat(300), "x".repeat(299)]) {
        assert.equal(snap.lookupToken(token), snap.lookup(secretHash(token)), `${token.slice(0, 8)} round ${round}`);
      }
    }
    assert.equal(snap.lookupToken("sa")?.id, "a");
    assert.equal(snap.lookupToken("x".repeat(300))?.id, "b");
  });

  test("a new snapshot answers for the change at once (the cache is per snapshot)", () => {
    const cache = new MatcherCache();
    const before = new Snapshot([rec("a", "sa")], cache);
    assert.equal(before.lookupToken("sa")?.id, "a");
    assert.equal(before.lookupToken("sn"), undefined);
    const rotated = before.withChange({ kind: "update", record: rec("a", "sn") });
    assert.equal(rotated.lookupToken("sa"), undefined);
    assert.equal(rotated.lookupToken("sn")?.id, "a");
    const deleted = rotated.withChange({ kind: "delete", id: "a" });
    assert.equal(deleted.lookupToken("sn"), undefined);
  });

  test("stays correct past its bound (a flood of unknown tokens)", () => {
    const snap = new Snapshot([rec("a", "sa")], new MatcherCache());
    assert.equal(snap.lookupToken("sa")?.id, "a");
    for (let i = 0; i < TOKEN_CACHE_MAX * 2 + 7; i++) assert.equal(snap.lookupToken(`unknown-${i}`), undefined);
    assert.equal(snap.lookupToken("sa")?.id, "a");
  });
});

describe("MatcherCache", () => {
  test("property: answers, hits, misses and what stays cached match a naive LRU of two", () => {
    const lists: ReadonlyArray<readonly string[]> = [
      ["10.0.0.0/8"],
      ["192.0.2.1", "2001:db8::/32"],
      ["198.51.100.0/24"],
      ["::1"],
    ];
    const probes = ["10.1.2.3", "192.0.2.1", "198.51.100.7", "::1", "2001:db8::5"].map((p) => parseIp(p)!);
    fc.assert(
      fc.property(fc.array(fc.nat(lists.length - 1), { maxLength: 40 }), (picks) => {
        const cache = new MatcherCache(2);
        let recent: number[] = []; // most recent last
        let hits = 0;
        let misses = 0;
        for (const k of picks) {
          const list = lists[k]!;
          const m = cache.get(list);
          if (recent.includes(k)) hits++;
          else misses++;
          recent = [...recent.filter((x) => x !== k), k].slice(-2);
          for (const ip of probes) {
            const want = list.some((e) => {
              const c = parseCidr(e);
              if (c instanceof IpError || c.ip.family !== ip.family) return false;
              return JSON.stringify(networkOf(ip, c.prefix)) === JSON.stringify(c.ip);
            });
            assert.equal(m.contains(ip), want);
          }
          assert.equal(cache.hits, hits, `hits after ${picks.join(",")}`);
          assert.equal(cache.misses, misses, `misses after ${picks.join(",")}`);
          assert.equal(cache.size, recent.length);
        }
      }),
      { numRuns: 300 },
    );
  });
});

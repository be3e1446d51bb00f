/** The file store: writes assembled in slices, the worker-thread loader for large files, reload safety. */
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, renameSync, rmSync, statSync, utimesSync, writeFileSync } from "node:fs";
import type { BigIntStats } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { after, before, describe, test } from "node:test";
import { Worker } from "node:worker_threads";
import { secretHash } from "../../src/policy/credential.js";
import { FileKeyStore, WORKER_THRESHOLD_BYTES } from "../../src/store/filestore.js";
import { indexEntries } from "../../src/store/splice.js";
import type { LoaderInput, LoaderMessage } from "../../src/store/loader.js";
import { formatStoreProblem } from "../../src/store/store.js";
import { rec, records } from "../helpers/records.js";
import { secretDigest } from "../../src/store/digest.js";

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
    assert.equal(store.snapshot.lookup(secretDigest("s7"))?.id, "key_7");

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

describe("the file's signature (a write re-reads only a file changed since we last saw it)", () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), "keyfence-seen-"));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  const KEYS = (ids: string[]): string =>
    `keys:\n${ids.map((id) => `  - id: ${id}\n    secret_sha256: "${secretHash(`secret-${id}`)}"\n`).join("")}`;
  const create = (store: FileKeyStore, id: string): Promise<void> =>
    store.transact(() => ({ change: { kind: "create", record: rec(id) }, result: undefined }));
  const onDisk = (file: string): string[] => records(readFileSync(file, "utf8")).map((r) => r.id);
  /** A clock past the racy window, so the signature of a file just written is trusted (as it is for an older file). */
  const later = (): number => Date.now() + 60_000;
  /** A whole second, which utimes sets exactly (a time in nanoseconds does not survive a double). */
  const SECOND = new Date("2026-01-01T00:00:00Z");
  /** A store loaded from `name` holding `ids`, its mtime set to {@link SECOND}, and the file's stat as loaded. */
  const loadedAtSecond = async (
    name: string,
    ids: string[],
  ): Promise<{ file: string; store: FileKeyStore; old: BigIntStats }> => {
    const file = join(dir, name);
    writeFileSync(file, KEYS(ids));
    utimesSync(file, SECOND, SECOND);
    const store = new FileKeyStore({ file, displayName: name, maxEntries: 100, now: later });
    await store.load();
    return { file, store, old: statSync(file, { bigint: true }) };
  };

  test("a write by another writer between two of ours is seen (two stores, one file)", async () => {
    const file = join(dir, "two.yaml");
    writeFileSync(file, KEYS(["k0"]));
    const a = new FileKeyStore({ file, displayName: "two.yaml", maxEntries: 100, now: later });
    const b = new FileKeyStore({ file, displayName: "two.yaml", maxEntries: 100, now: later });
    await a.load();
    await b.load();
    await create(a, "a1");
    await create(b, "b1"); // b last saw the file before a's write
    await create(a, "a2"); // a last saw its own write, before b's
    await create(b, "b2");
    assert.deepEqual(onDisk(file), ["k0", "a1", "b1", "a2", "b2"]);
    assert.ok(a.snapshot.record("b1") !== undefined && b.snapshot.record("a2") !== undefined);
    await a.close();
    await b.close();
  });

  test("a replacement of the same size with the old mtime is seen (another inode)", async () => {
    const { file, store, old } = await loadedAtSecond("replaced.yaml", ["k0", "k1"]);
    writeFileSync(`${file}.new`, KEYS(["k0", "k2"])); // same length, another key
    utimesSync(`${file}.new`, SECOND, SECOND);
    renameSync(`${file}.new`, file);
    const now = statSync(file, { bigint: true });
    assert.deepEqual([now.size, now.mtimeNs], [old.size, old.mtimeNs]);
    await create(store, "k3");
    assert.deepEqual(onDisk(file), ["k0", "k2", "k3"]);
    assert.equal(store.snapshot.record("k1"), undefined);
    await store.close();
  });

  test("a same-size rewrite in place with the mtime set back (cp -p, rsync -t) is seen by its ctime", async () => {
    const { file, store, old } = await loadedAtSecond("inplace.yaml", ["k0", "k1"]);
    // Rewrite until the file system's clock has ticked (ctime cannot be set back; the same tick is the residual risk).
    do {
      writeFileSync(file, KEYS(["k0", "k2"]));
      utimesSync(file, SECOND, SECOND);
    } while (statSync(file, { bigint: true }).ctimeNs === old.ctimeNs);
    const now = statSync(file, { bigint: true });
    assert.deepEqual([now.ino, now.size, now.mtimeNs], [old.ino, old.size, old.mtimeNs]);
    await create(store, "k3");
    assert.deepEqual(onDisk(file), ["k0", "k2", "k3"]);
    await store.close();
  });
});

/** The request-path log lines (LineFormat) against pino itself, and the stdout sink under a slow reader and at exit. */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Readable, Writable } from "node:stream";
import { describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import fc from "fast-check";
import pino from "pino";
import { createLogger } from "../../src/cli/sidecar.js";
import { isoTimestamp, LineFormat } from "../../src/util/logline.js";
import { LineSink } from "../../src/util/logsink.js";

/** A logger built like keyfence's, writing into an array. */
function capture(level = "info"): { log: pino.Logger; lines: string[] } {
  const lines: string[] = [];
  const dest = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(chunk.toString());
      cb();
    },
  });
  const previous = process.env["KEYFENCE_LOG_LEVEL"];
  process.env["KEYFENCE_LOG_LEVEL"] = level;
  const log = createLogger(dest);
  if (previous === undefined) delete process.env["KEYFENCE_LOG_LEVEL"];
  else process.env["KEYFENCE_LOG_LEVEL"] = previous;
  return { log, lines };
}

/** Lone surrogates: pino writes them raw (they reach the file as U+FFFD), JSON.stringify escapes them; both read back as U+FFFD here. */
const LONE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

function withoutTime(line: string): { keys: string[]; value: Record<string, unknown> } {
  const value = JSON.parse(line, (_k, v: unknown) => (typeof v === "string" ? v.replace(LONE, "\ufffd") : v)) as Record<
    string,
    unknown
  >;
  assert.match(String(value["time"]), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  delete value["time"];
  return { keys: Object.keys(value), value };
}

const FORMAT = new LineFormat("warn", ["event", "request_id", "key_id", "path", "status"] as const, "request denied");

describe("LineFormat writes what pino writes", () => {
  test("property: same fields, same order, same values, for any strings (quotes, controls, non-ASCII, lone surrogates)", async () => {
    const text = fc.oneof(
      fc.string(),
      fc.string({ unit: "binary" }),
      fc.constantFrom('"', "\\", "\n", "\u2028", "\ud800", "é"),
    );
    await fc.assert(
      fc.asyncProperty(
        text,
        text,
        fc.option(text, { nil: undefined }),
        fc.oneof(fc.integer(), fc.double()),
        async (event, path, keyId, status) => {
          const ours = capture();
          const theirs = capture();
          const fields = { event, request_id: "r-1", key_id: keyId, path, status };
          FORMAT.write(ours.log, fields);
          theirs.log.warn(fields, "request denied");
          await new Promise((r) => setImmediate(r));
          assert.equal(ours.lines.length, 1);
          assert.equal(theirs.lines.length, 1);
          assert.ok((ours.lines[0] as string).endsWith("}\n"));
          assert.deepEqual(withoutTime(ours.lines[0] as string), withoutTime(theirs.lines[0] as string));
        },
      ),
      { numRuns: 300 },
    );
  });

  test("a child logger's bindings (the cluster worker id) come where pino puts them", async () => {
    const ours = capture();
    const theirs = capture();
    FORMAT.write(ours.log.child({ worker: 2 }), {
      event: "denied",
      request_id: "r",
      key_id: "k",
      path: "/",
      status: 1,
    });
    theirs.log
      .child({ worker: 2 })
      .warn({ event: "denied", request_id: "r", key_id: "k", path: "/", status: 1 }, "request denied");
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(withoutTime(ours.lines[0] as string), withoutTime(theirs.lines[0] as string));
    assert.equal(JSON.parse(ours.lines[0] as string).worker, 2);
  });

  test("nothing is written below the logger's level", async () => {
    const quiet = capture("error");
    FORMAT.write(quiet.log, { event: "denied", request_id: "r", key_id: undefined, path: "/", status: 1 });
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(quiet.lines, []);
  });

  test("isoTimestamp reads the clock like Date#toISOString, across second boundaries (a controlled clock)", (t) => {
    let now = 0;
    t.mock.method(Date, "now", () => now);
    const YEAR_9999 = 253_402_300_799_000;
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: YEAR_9999 }),
        fc.array(fc.integer({ min: -1500, max: 1500 }), { maxLength: 40 }),
        (start, steps) => {
          now = start;
          for (const step of [0, ...steps]) {
            now = Math.min(YEAR_9999, Math.max(0, now + step));
            assert.equal(isoTimestamp(), `,"time":"${new Date(now).toISOString()}"`);
          }
        },
      ),
      { numRuns: 300 },
    );
  });
});

const QUEUED = "keyfence-test: lines queued";
const EXITING = "keyfence-test: exiting";

/** Resolves once `stream` has carried `n` lines reading `marker`; its other output goes to this process's stderr. */
function markers(stream: Readable, marker: string, n: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let seen = 0;
    let partial = "";
    stream.on("data", (d: Buffer) => {
      const lines = (partial + d.toString()).split("\n");
      partial = lines.pop() ?? "";
      for (const line of lines) {
        if (line === marker) seen++;
        else process.stderr.write(`${line}\n`);
      }
      if (seen >= n) resolve();
    });
    stream.on("end", () => {
      if (seen < n) reject(new Error(`stderr ended after ${seen} of ${n} "${marker}" lines`));
    });
  });
}

describe("LineSink", () => {
  test("writes every line, in order, to a file (one write per event-loop turn)", async () => {
    const dir = mkdtempSync(join(tmpdir(), "keyfence-sink-"));
    try {
      const file = join(dir, "out.log");
      const fd = openSync(file, "w");
      const sink = new LineSink(fd);
      const expected: string[] = [];
      for (let i = 0; i < 20_000; i++) {
        const line = `{"i":${i},"s":"${"é€𝄞".repeat(i % 7)}${"x".repeat(i % 300)}"}\n`;
        expected.push(line);
        assert.equal(sink.write(line), true);
        if (i % 1000 === 0) await new Promise((r) => setImmediate(r));
      }
      await new Promise<void>((r) => sink.flush(r));
      closeSync(fd);
      assert.equal(readFileSync(file, "utf8"), expected.join(""));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("past its limit it drops lines, counts them, and reports the count once it writes again", async () => {
    const dir = mkdtempSync(join(tmpdir(), "keyfence-sink-"));
    try {
      const file = join(dir, "out.log");
      const fd = openSync(file, "w");
      const reports: number[] = [];
      const sink = new LineSink(fd, { dropped: (n) => reports.push(n) }, 100);
      const accepted = Array.from({ length: 10 }, (_, i) => sink.write(`line ${String(i).padStart(22, "0")}\n`));
      assert.deepEqual(
        accepted,
        [true, true, true, false, false, false, false, false, false, false],
        "28-character lines, 100 allowed",
      );
      await new Promise<void>((r) => sink.flush(r));
      assert.deepEqual(reports, [7]);
      assert.equal(sink.write("after\n"), true, "takes lines again once written out");
      await new Promise<void>((r) => sink.flush(r));
      closeSync(fd);
      const lines = readFileSync(file, "utf8").trimEnd().split("\n");
      assert.deepEqual(
        lines.map((l) => l.slice(0, 6)),
        ["line 0", "line 0", "line 0", "after"],
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("three processes sharing one stdout pipe (cluster workers) never interleave lines", async () => {
    const sidecar = fileURLToPath(new URL("../../src/cli/sidecar.js", import.meta.url));
    // Each child says on stderr when its lines are queued and its first write was tried.
    const script = `
      import { writeSync } from "node:fs";
      import { createLogger, flushLogger } from ${JSON.stringify(sidecar)};
      void process.stdout;
      const log = createLogger();
      for (let i = 0; i < 15000; i++) log.info({ w: Number(process.env.W), i, pad: "${"q".repeat(300)}" }, "line");
      await new Promise((r) => setImmediate(r));
      writeSync(2, "${QUEUED}\\n");
      await flushLogger(log);
    `;
    const node = JSON.stringify(process.execPath);
    const one = (w: number): string => `W=${w} ${node} --input-type=module -e "$S" &`;
    const child = spawn("sh", ["-c", `${one(1)} ${one(2)} ${one(3)} wait`], {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, S: script },
    });
    child.stdout.pause();
    await markers(child.stderr, QUEUED, 3);
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stdout.resume();
    assert.equal(await new Promise<number | null>((r) => child.on("close", r)), 0);
    const next = new Map<number, number>();
    for (const line of out.trimEnd().split("\n")) {
      const { w, i } = JSON.parse(line) as { w: number; i: number };
      assert.equal(i, next.get(w) ?? 0, `worker ${w} out of order`);
      next.set(w, i + 1);
    }
    assert.deepEqual([...next.entries()].sort(), [
      [1, 15000],
      [2, 15000],
      [3, 15000],
    ]);
  });

  test("a slow reader on a non-blocking pipe loses nothing, and lines queued at exit are written", async () => {
    const sidecar = fileURLToPath(new URL("../../src/cli/sidecar.js", import.meta.url));
    // process.stdout makes fd 1 non-blocking (EAGAIN when the pipe is full);
    // the child exits right after logging, with most lines still queued.
    // The reader stays paused until the child says on stderr that it is exiting.
    const script = `
      import { writeSync } from "node:fs";
      import { createLogger } from ${JSON.stringify(sidecar)};
      void process.stdout;
      const log = createLogger();
      for (let i = 0; i < 30000; i++) log.info({ i, pad: "${"p".repeat(100)}" }, "line");
      writeSync(2, "${EXITING}\\n");
      process.exit(0);
    `;
    const child = spawn(process.execPath, ["--input-type=module", "-e", script], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    child.stdout.pause();
    await markers(child.stderr, EXITING, 1);
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stdout.resume();
    const code = await new Promise<number | null>((r) => child.on("close", r));
    assert.equal(code, 0);
    const lines = out.trimEnd().split("\n");
    assert.equal(lines.length, 30_000);
    lines.forEach((l, i) => assert.equal((JSON.parse(l) as { i: number }).i, i));
  });
});
